"""Loading a backbone from one spec: name or path, storage dtype, device; the adapter follows the model's kind.

`--model` takes a Hugging Face hub name, a local folder, or `packaged:NAME` (a backbone shipped in
the package's `packaged/` folder). Loading never happens anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from ..device import pick_device, torch_dtype
from ..errors import SoftpromptError
from .base import Backbone
from .causal import DecoderOnly
from .seq2seq import EncoderDecoder
from .shared_prefix import SharedPrefixDecoderOnly

PACKAGED_DIR = Path(__file__).resolve().parent.parent / "packaged"
PACKAGED_PREFIX = "packaged:"  # e.g. "packaged:default", "packaged:span-corruption"
DEFAULT_BACKBONE = PACKAGED_PREFIX + "default"
# The adapter of each kind; decoder-only prompts are computed once per batch (shared_prefix.py).
ADAPTERS: dict[str, type[Backbone]] = {EncoderDecoder.kind: EncoderDecoder, DecoderOnly.kind: SharedPrefixDecoderOnly}
AUTO_CLASSES = {EncoderDecoder.kind: AutoModelForSeq2SeqLM, DecoderOnly.kind: AutoModelForCausalLM}


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, stored in which dtype, on which device."""

    name: str | None = None  # hub name, local folder or packaged:NAME; None = the packaged default
    dtype: str = "fp32"  # fp32, bf16, fp16 (CUDA only)
    device: str = "auto"


def resolve_backbone_name(name: str | None) -> str:
    """A hub name or local path; "packaged:NAME" (and no name at all) mean a backbone shipped in the package."""
    name = name or DEFAULT_BACKBONE
    if not name.startswith(PACKAGED_PREFIX):
        return name
    path = PACKAGED_DIR / name.removeprefix(PACKAGED_PREFIX)
    if not (path / "config.json").is_file():
        shipped = sorted(p.parent.name for p in PACKAGED_DIR.glob("*/config.json"))
        raise SoftpromptError(f"no packaged backbone {name!r} at {path}; packaged: {', '.join(shipped) or 'none'}")
    return str(path)


def kind_of(config) -> str:
    return EncoderDecoder.kind if config.is_encoder_decoder else DecoderOnly.kind


def load_backbone(spec: BackboneSpec | str | None = None) -> Backbone:
    """The frozen backbone's adapter; raises SoftpromptError for a name that does not load or a device/dtype it cannot use."""
    spec = spec if isinstance(spec, BackboneSpec) else BackboneSpec(spec)
    device = pick_device(spec.device)
    dtype = torch_dtype(spec.dtype, device)
    path = resolve_backbone_name(spec.name)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        kind = kind_of(config)
        model = AUTO_CLASSES[kind].from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise SoftpromptError(f"cannot load backbone {path!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise SoftpromptError(f"{path}: tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings")
    return adapter_for(model.eval().to(device), tokenizer, spec.name or DEFAULT_BACKBONE)


def adapter_for(model, tokenizer, name: str = "") -> Backbone:
    """Wrap an already loaded model (e.g. a tiny one built in a test) in the adapter of its kind."""
    return ADAPTERS[kind_of(model.config)](model, tokenizer, name)
