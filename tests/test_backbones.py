"""The backbones shipped in the package load offline and take prompts; the fingerprint tells backbones apart cheaply."""

import pytest
import torch
from transformers import T5ForConditionalGeneration

from conftest import ALL_KINDS, tiny_adapter
from softprompt.backbones import BackboneSpec, load_backbone, resolve_backbone_name
from softprompt.backbones.base import legacy_fingerprint
from softprompt.data import collate, encode
from softprompt.errors import SoftpromptError
from softprompt.model import PromptedModel
from softprompt.prompt_io import PromptMetadata
from softprompt.tasks.base import Example

PACKAGED = ["packaged:default", "packaged:span-corruption"]


@pytest.mark.parametrize("name", ["packaged:t5-nano-lm-adapted", *PACKAGED])
def test_packaged_backbone_loads_and_runs(name):
    backbone = load_backbone(name)
    tokenizer = backbone.tokenizer
    assert backbone.kind == "encoder-decoder" and len(tokenizer) == backbone.model.config.vocab_size
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    model = PromptedModel(backbone).eval()
    model.add_prompt("p", torch.zeros(3, backbone.width), PromptMetadata(3, backbone.width, "random-uniform"))
    batch = collate(backbone, [encode(backbone, "p", model.bank["p"], Example("sentence: a fine film", ""), with_target=False)], False)
    assert model.generate(batch, max_new_tokens=3).shape[0] == 1


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_backbone_runs_the_gelu_it_was_trained_with(name):
    """Trained with HF's `gelu_new`, shipped with torch's fused tanh GELU (fewer kernels): the logits must agree.

    The exact (erf) GELU would move them by about 2e-3, so the tolerance tells the two forms apart.
    """
    folder = resolve_backbone_name(name)
    backbone = load_backbone(name)
    shipped, tokenizer = backbone.model, backbone.tokenizer
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


def test_the_package_provides_every_name_it_exports():
    import softprompt.backbones as backbones

    assert [name for name in backbones.__all__ if not hasattr(backbones, name)] == []
    assert backbones.SMOLLM2 == backbones.DEFAULT_BACKBONE


def test_fingerprint_tells_every_backbone_apart_and_survives_precision():
    """Item 6: the cheap fingerprint separates the packaged and tiny backbones, and bf16 storage keeps it."""
    tiny = [tiny_adapter(kind, seed) for kind in ALL_KINDS for seed in (0, 1)]
    packaged = [load_backbone(name) for name in PACKAGED]
    prints = [b.fingerprint() for b in tiny + packaged]
    assert len(set(prints)) == len(prints) and all(p.startswith("v2:") for p in prints)
    bf16 = load_backbone(BackboneSpec(PACKAGED[0], dtype="bf16", device="cpu"))
    assert bf16.dtype == torch.bfloat16 and bf16.fingerprint() == packaged[0].fingerprint()


def test_prompt_files_with_the_old_fingerprint_still_match():
    backbone = tiny_adapter("gpt2")
    assert backbone.matches_fingerprint(legacy_fingerprint(backbone.embeddings))
    assert not tiny_adapter("gpt2", seed=1).matches_fingerprint(legacy_fingerprint(backbone.embeddings))


@pytest.mark.parametrize("spec, needle", [
    (BackboneSpec(PACKAGED[0], dtype="fp16", device="cpu"), "fp16"),
    (BackboneSpec(PACKAGED[0], device="cuda"), "CUDA"),
    (BackboneSpec("/no/such/folder"), "/no/such/folder"),
])
def test_unusable_backbone_specs_are_refused(spec, needle):
    with pytest.raises(SoftpromptError, match=needle):
        load_backbone(spec)
