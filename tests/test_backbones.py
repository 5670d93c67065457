"""The backbones shipped in the package load offline and take prompts."""

import pytest
import torch

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


def test_unknown_packaged_backbone_names_the_shipped_ones():
    with pytest.raises(SoftpromptError, match="default"):
        resolve_backbone_name("packaged:nosuch")
