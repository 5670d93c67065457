"""T5 1.1-style backbone sizes, and building a freshly initialised model from one.

T5 1.1 (Raffel et al. 2020, "T5.1.1" release notes): gated-GELU feed-forward, RMSNorm without bias,
relative attention (32 buckets, max distance 128), no dropout during pretraining.

Output layer: T5 1.1 unties it from the input embedding. `transformers` 5.x (checked: 5.17 and 5.24)
forces T5's `lm_head` to share the input embedding (`T5Config` sets `tie_word_embeddings=True` whatever
it is given), so an untied head cannot be trained or loaded faithfully with the stock class. The
presets therefore tie it the original-T5 way, which every version reads the same: tied weights and
decoder outputs scaled by d_model**-0.5 (HF: `tie_word_embeddings=True`). With the embedding's
std-1.0 init this gives the initial logits of an untied head with std d_model**-0.5, i.e. O(1)
logits, avoiding the huge-logit start in which the decoder learns to ignore the encoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from transformers import T5Config, T5ForConditionalGeneration

from ..errors import SoftpromptError


@dataclass(frozen=True)
class ModelPreset:
    d_model: int
    d_ff: int
    num_layers: int  # encoder; the decoder has as many (T5)
    num_heads: int
    d_kv: int = 64  # T5 1.1
    tie_embeddings: bool = True  # see the module docstring


ModelSize = Literal["tiny", "nano", "micro", "mini"]  # the keys of PRESETS (a test checks), for typed configs

# Parameter counts for an 8,192-id vocabulary (tests/test_pretrain.py prints them): about 3x per step.
PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16),  # tests and smoke runs only
    "nano": ModelPreset(d_model=192, d_ff=512, num_layers=4, num_heads=4, d_kv=48),  # ~5.7M
    "micro": ModelPreset(d_model=256, d_ff=1024, num_layers=6, num_heads=4, d_kv=64),  # ~16M
    "mini": ModelPreset(d_model=512, d_ff=1280, num_layers=6, num_heads=8, d_kv=64),  # ~47M (T5 1.1 Small is 512/1024, 8 layers)
}


def preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise SoftpromptError(f"unknown model size {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def t5_config(name: str, vocab_size: int) -> T5Config:
    """The Hugging Face config of preset `name` for a tokenizer of `vocab_size` ids."""
    p = preset(name)
    return T5Config(
        vocab_size=vocab_size,
        d_model=p.d_model,
        d_kv=p.d_kv,
        d_ff=p.d_ff,
        num_layers=p.num_layers,
        num_decoder_layers=p.num_layers,
        num_heads=p.num_heads,
        relative_attention_num_buckets=32,  # T5
        relative_attention_max_distance=128,  # T5
        dropout_rate=0.0,  # T5 1.1: no dropout in pretraining; fine-tuning may turn it back on
        layer_norm_epsilon=1e-6,  # T5
        feed_forward_proj="gated-gelu_pytorch_tanh",  # T5 1.1's gated GELU (tanh form, as "gelu_new"), in one fused kernel
        tie_word_embeddings=p.tie_embeddings,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,  # T5 starts decoding from <pad>
    )


def build_model(name: str, vocab_size: int, seed: int = 0) -> T5ForConditionalGeneration:
    """A freshly initialised model (HF's T5 init, which follows Mesh TensorFlow's), fp32.

    Raises SoftpromptError if an untied preset is asked of a `transformers` that ties T5's head.
    """
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(t5_config(name, vocab_size))
    if not preset(name).tie_embeddings:
        if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
            raise SoftpromptError(f"model size {name!r} wants an untied output layer; this transformers ties T5's")
        with torch.no_grad():  # HF's std 1.0 would start with logits ~ sqrt(d_model)
            model.lm_head.weight.normal_(0.0, model.config.d_model**-0.5)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_count(name: str, vocab_size: int) -> int:
    """Parameters of preset `name` without allocating its weights."""
    with torch.device("meta"):
        return count_parameters(T5ForConditionalGeneration(t5_config(name, vocab_size)))


def describe(name: str) -> dict:
    return {"name": name, **asdict(preset(name))}
