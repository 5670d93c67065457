"""PEFT adapters and reference `.npy` files: round trips, and PEFT computing what PromptedModel computes."""

import json
import re

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file

from conftest import tiny_backbone
from softprompt.data import collate, encode
from softprompt.errors import SoftpromptError
from softprompt.interop import export_prompt, import_prompt
from softprompt.interop.npy import import_npy
from softprompt.interop.peft import CONFIG_NAME, WEIGHTS_NAME, export_peft, import_peft
from softprompt.prompt_io import PromptMetadata, load_prompt, save_prompt
from softprompt.tasks.base import Example

TEXTS = ["sentence: a gripping , funny film .", "sentence: dull", "sentence: the plot never finds its footing ."]
TARGETS = ["positive", "negative", "negative"]
LABELS = ["negative", "positive"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the Hugging Face hub."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def save_random_prompt(prompted, directory, length=4, kind=None) -> torch.Tensor:
    """A prompt file that records no backbone kind unless `kind` says one."""
    model = prompted.adapter
    weight = torch.rand(length, model.width, generator=torch.Generator().manual_seed(3)) - 0.5  # (p, e)
    metadata = PromptMetadata(
        length=length, width=model.width, init="random-uniform", task="sst2", labels=LABELS,
        backbone=model.name, backbone_fingerprint=model.fingerprint(), backbone_kind=kind,
    )
    save_prompt(directory, weight, metadata)
    return weight


def is_seq2seq(prompted) -> bool:
    return prompted.adapter.kind == "encoder-decoder"


def one_example_batch(prompted, name="x"):
    return collate(prompted.adapter, [encode(prompted.adapter, name, prompted.bank[name], Example(TEXTS[0], TARGETS[0]))])


def assert_same_outputs(prompted, name, peft_model):
    """Equal per-example and mean loss, ours vs PEFT's, on the same inputs.

    T5: one right-padded batch (PEFT and we both put the prompt first, pads last).
    GPT-2: unpadded single sequences (with left padding PEFT puts the prompt before the pads).
    """
    peft_model.eval()
    feats = [encode(prompted.adapter, name, prompted.bank[name], Example(t, y)) for t, y in zip(TEXTS, TARGETS)]
    groups = [feats] if is_seq2seq(prompted) else [[f] for f in feats]
    with torch.no_grad():
        for group in groups:
            batch = collate(prompted.adapter, group)
            out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            torch.testing.assert_close(prompted(batch), out.loss, rtol=1e-5, atol=1e-5)


def test_exported_adapter_runs_in_peft_like_our_model(prompted, kind, tmp_path):
    weight = save_random_prompt(prompted, tmp_path / "prompt")
    export_peft(tmp_path / "prompt", tmp_path / "adapter", is_encoder_decoder=is_seq2seq(prompted))

    config = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert config["peft_type"] == "PROMPT_TUNING"
    assert config["task_type"] == ("SEQ_2_SEQ_LM" if kind == "t5" else "CAUSAL_LM")
    assert (config["num_virtual_tokens"], config["token_dim"], config["num_transformer_submodules"]) == (4, prompted.adapter.width, 1)
    assert config["prompt_tuning_init"] == "RANDOM" and config["base_model_name_or_path"] == prompted.adapter.name
    assert torch.equal(load_file(str(tmp_path / "adapter" / WEIGHTS_NAME))["prompt_embeddings"], weight)

    peft_model = PeftModel.from_pretrained(tiny_backbone(kind)[0], tmp_path / "adapter")
    assert torch.equal(peft_model.prompt_encoder["default"].embedding.weight, weight)
    prompted.add_prompt("sst2", weight, load_prompt(tmp_path / "prompt")[1])
    assert_same_outputs(prompted, "sst2", peft_model)


def test_peft_round_trip_is_bit_identical(prompted, tmp_path):
    weight = save_random_prompt(prompted, tmp_path / "prompt", kind=prompted.adapter.kind)
    export_prompt(tmp_path / "prompt", tmp_path / "adapter", "peft")  # the kind comes from the metadata
    import_prompt(tmp_path / "adapter", tmp_path / "back", "peft", model=prompted.adapter, task="sst2", labels=LABELS)
    back, metadata = load_prompt(tmp_path / "back")
    assert torch.equal(back, weight)
    assert (metadata.task, metadata.labels, metadata.backbone) == ("sst2", LABELS, prompted.adapter.name)
    assert metadata.backbone_fingerprint == prompted.adapter.fingerprint()
    assert metadata.backbone_kind == prompted.adapter.kind


def test_npy_round_trip_is_bit_identical(prompted, tmp_path):
    weight = save_random_prompt(prompted, tmp_path / "prompt")
    export_prompt(tmp_path / "prompt", tmp_path / "prompt.npy", "npy")
    array = np.load(tmp_path / "prompt.npy")
    assert array.dtype == np.float32 and array.shape == (4, prompted.adapter.width)
    import_prompt(tmp_path / "prompt.npy", tmp_path / "back", "npy", model=prompted.adapter, task="sst2")
    back, metadata = load_prompt(tmp_path / "back")
    assert torch.equal(back, weight)
    assert metadata.backbone_fingerprint == prompted.adapter.fingerprint() and metadata.task == "sst2"


def test_adapter_trained_by_peft_imports_and_matches_peft(prompted, kind, tmp_path):
    # PEFT's own defaults: for T5, num_transformer_submodules = 2, so the saved table has 2p rows.
    config = PromptTuningConfig(task_type="SEQ_2_SEQ_LM" if kind == "t5" else "CAUSAL_LM", num_virtual_tokens=5)
    trained = get_peft_model(tiny_backbone(kind)[0], config)
    width = prompted.adapter.width
    prompted.add_prompt("x", torch.zeros(5, width), PromptMetadata(5, width, "random-uniform"))
    batch = one_example_batch(prompted)
    optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.1)
    trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
    optimizer.step()
    trained.save_pretrained(tmp_path / "adapter")
    rows = load_file(str(tmp_path / "adapter" / WEIGHTS_NAME))["prompt_embeddings"].shape[0]
    assert rows == (10 if kind == "t5" else 5)

    import_peft(tmp_path / "adapter", tmp_path / "ours", model=prompted.adapter)
    weight, metadata = load_prompt(tmp_path / "ours")
    assert weight.shape == (5, width) and metadata.backbone_fingerprint == prompted.adapter.fingerprint()
    peft_model = PeftModel.from_pretrained(tiny_backbone(kind)[0], tmp_path / "adapter")
    prompted.add_prompt("peft", weight, metadata)
    assert_same_outputs(prompted, "peft", peft_model)


def test_export_needs_the_backbone_kind(prompted, saved_backbone, tmp_path):
    save_random_prompt(prompted, tmp_path / "prompt")
    with pytest.raises(SoftpromptError, match="is_encoder_decoder"):
        export_peft(tmp_path / "prompt", tmp_path / "adapter")
    save_random_prompt(prompted, tmp_path / "recorded", kind=prompted.adapter.kind)
    with pytest.raises(SoftpromptError, match="was given"):
        export_peft(tmp_path / "recorded", tmp_path / "adapter", is_encoder_decoder=not is_seq2seq(prompted))
    # a local backbone directory's config.json says it
    weight, metadata = load_prompt(tmp_path / "prompt")
    metadata.backbone = str(saved_backbone)
    save_prompt(tmp_path / "local", weight, metadata)
    export_peft(tmp_path / "local", tmp_path / "adapter")
    task_type = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())["task_type"]
    assert task_type == ("SEQ_2_SEQ_LM" if is_seq2seq(prompted) else "CAUSAL_LM")


def test_import_refuses_a_prompt_for_the_other_backbone_kind(prompted, tmp_path):
    save_random_prompt(prompted, tmp_path / "prompt")
    export_peft(tmp_path / "prompt", tmp_path / "adapter", is_encoder_decoder=not is_seq2seq(prompted))
    with pytest.raises(SoftpromptError, match=re.escape(str(tmp_path / "adapter"))):
        import_peft(tmp_path / "adapter", tmp_path / "back", model=prompted.adapter)


@pytest.fixture
def adapter(tmp_path):
    """A valid exported adapter of a [4, 32] prompt, made without a model."""
    weight = torch.rand(4, 32, generator=torch.Generator().manual_seed(0))
    save_prompt(tmp_path / "prompt", weight, PromptMetadata(length=4, width=32, init="random-uniform"))
    return export_peft(tmp_path / "prompt", tmp_path / "adapter", is_encoder_decoder=False)


def edit_config(adapter, **changes):
    path = adapter / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


def test_import_peft_refuses_bad_adapters(adapter, tmp_path):
    weights = adapter / WEIGHTS_NAME
    config = edit_config(adapter, peft_type="LORA", r=8)
    with pytest.raises(SoftpromptError, match=re.escape(str(config)) + ".*PROMPT_TUNING"):
        import_peft(adapter, tmp_path / "out")
    edit_config(adapter, peft_type="PROMPT_TUNING", num_virtual_tokens=5)
    with pytest.raises(SoftpromptError, match=re.escape(str(weights)) + ".*shape"):
        import_peft(adapter, tmp_path / "out")
    edit_config(adapter, num_virtual_tokens=4)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 40])
    with pytest.raises(SoftpromptError, match=re.escape(str(weights)) + ".*truncated"):
        import_peft(adapter, tmp_path / "out")
    save_file({"other": torch.zeros(4, 32)}, str(weights))
    with pytest.raises(SoftpromptError, match=re.escape(str(weights)) + ".*prompt_embeddings"):
        import_peft(adapter, tmp_path / "out")
    weights.unlink()
    with pytest.raises(SoftpromptError, match=re.escape(str(weights)) + ".*not found"):
        import_peft(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_wrong_width(adapter, prompted, tmp_path):
    bad = tmp_path / "wide.npy"
    np.save(bad, np.zeros((4, prompted.adapter.width + 1), np.float32))
    with pytest.raises(SoftpromptError, match=re.escape(str(bad)) + ".*width"):
        import_npy(bad, tmp_path / "out", model=prompted.adapter)
    edit_config(adapter, token_dim=16)
    save_file({"prompt_embeddings": torch.zeros(4, 16)}, str(adapter / WEIGHTS_NAME))
    with pytest.raises(SoftpromptError, match=re.escape(str(adapter / WEIGHTS_NAME)) + ".*width"):
        import_peft(adapter, tmp_path / "out", model=prompted.adapter)


@pytest.mark.parametrize(
    "write, problem",
    [
        (lambda f: np.save(f, np.zeros((2, 4, 32), np.float32)), "shape"),
        (lambda f: np.save(f, np.zeros((4, 32), np.int64)), "dtype"),
        (lambda f: np.save(f, np.full((4, 32), np.nan, np.float32)), "NaN"),
        (lambda f: f.write(b"not a numpy file"), "corrupt"),
    ],
    ids=["3-d", "integers", "nan", "garbage"],
)
def test_import_npy_refuses_bad_files(write, problem, tmp_path):
    path = tmp_path / "prompt.npy"
    with open(path, "wb") as f:
        write(f)
    with pytest.raises(SoftpromptError, match=re.escape(str(path)) + ".*" + problem):
        import_npy(path, tmp_path / "out")


def test_import_npy_refuses_truncated_file(tmp_path):
    path = tmp_path / "prompt.npy"
    np.save(path, np.ones((4, 32), np.float32))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SoftpromptError, match=re.escape(str(path)) + ".*truncated"):
        import_npy(path, tmp_path / "out")


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(SoftpromptError, match="unknown prompt format 'onnx'"):
        export_prompt(tmp_path, tmp_path / "x", "onnx")
    with pytest.raises(SoftpromptError, match="unknown prompt format"):
        import_prompt(tmp_path, tmp_path / "x", "onnx")
