"""The backbones shipped in the package load offline and take prompts."""

import pytest
import torch
from transformers import T5ForConditionalGeneration

from softprompt.errors import SoftpromptError
from softprompt.model import PromptedModel, load_backbone, resolve_backbone_name
from softprompt.prompt import SoftPrompt


@pytest.mark.parametrize("name", [None, "packaged:default", "packaged:span-corruption"])
def test_packaged_backbone_loads_and_runs(name):
    backbone, tokenizer = load_backbone(name)
    assert backbone.config.is_encoder_decoder and len(tokenizer) == backbone.config.vocab_size
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    model = PromptedModel(backbone, tokenizer, name or "packaged:default").eval()
    model.add_prompt("p", SoftPrompt(torch.zeros(3, model.width)))
    batch = tokenizer(["sentence: a fine film"], return_tensors="pt")
    out = model.generate(batch.input_ids, batch.attention_mask, torch.tensor([0]), max_new_tokens=3)
    assert out.shape[0] == 1


@pytest.mark.parametrize("name", ["packaged:default", "packaged:span-corruption"])
def test_packaged_backbone_runs_the_gelu_it_was_trained_with(name):
    """Trained with HF's `gelu_new`, shipped with torch's fused tanh GELU (fewer kernels): the logits must agree.

    The exact (erf) GELU would move them by about 2e-3, so the tolerance tells the two forms apart.
    """
    folder = resolve_backbone_name(name)
    shipped, tokenizer = load_backbone(name)
    trained = T5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, dense_act_fn="gelu_new")
    assert shipped.config.dense_act_fn == "gelu_pytorch_tanh"
    inputs = tokenizer(["a gripping , funny film .", "the plot is thin and the acting worse ."], return_tensors="pt", padding=True)
    labels = tokenizer(["positive", "negative"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        difference = shipped(**inputs, labels=labels).logits - trained(**inputs, labels=labels).logits
    assert difference.abs().max() < 1e-4


def test_unknown_packaged_backbone_names_the_shipped_ones():
    with pytest.raises(SoftpromptError, match="default"):
        resolve_backbone_name("packaged:nosuch")
