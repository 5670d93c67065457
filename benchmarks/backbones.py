"""Backbones for the benchmarks: random-weight presets over the real vocabularies, or a local checkpoint.

No network is needed: the presets are built from a config (the published sizes of T5 v1.1 small
and GPT-2 small) with random weights, and the real T5 / GPT-2 tokenizers come from
$SOFTPROMPT_DATA_DIR/tokenizers. Speed and memory depend on the shapes, not on the weights.

    python benchmarks/backbones.py t5-small-like /tmp/t5-small-like   # save one, e.g. to train a prompt on it
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
    T5TokenizerFast,
)

from softprompt.backbones import load_backbone

DEFAULT_DATA_DIR = "/work/shared/data"


def data_dir(given: str | None = None) -> Path:
    """The shared data folder: the argument, else $SOFTPROMPT_DATA_DIR, else /work/shared/data."""
    return Path(given or os.environ.get("SOFTPROMPT_DATA_DIR") or DEFAULT_DATA_DIR)


def t5_small_like(root: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = T5TokenizerFast.from_pretrained(root / "tokenizers" / "t5")
    config = T5Config(  # google/t5-v1_1-small's config.json, except num_heads 6 as published
        vocab_size=32128, d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5ForConditionalGeneration(config), tokenizer


def t5_base_like(root: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = T5TokenizerFast.from_pretrained(root / "tokenizers" / "t5")
    config = T5Config(  # google/t5-v1_1-base's config.json: 12+12 layers, width 768, d_ff 2048, 12 heads (248M)
        vocab_size=32128, d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5ForConditionalGeneration(config), tokenizer


def gpt2_small_like(root: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = GPT2TokenizerFast.from_pretrained(root / "tokenizers" / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; padding is masked anyway
    config = GPT2Config(  # gpt2 (124M): 12 layers, width 768, 12 heads, dropouts 0.1
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=50256, eos_token_id=50256,
    )
    return GPT2LMHeadModel(config), tokenizer


PRESETS = {"t5-small-like": t5_small_like, "t5-base-like": t5_base_like, "gpt2-small-like": gpt2_small_like}


def build_backbone(
    preset: str, model_path: str | None, seed: int, root: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A fresh fp32 backbone: the local checkpoint `model_path` if given, else `preset` with random
    weights drawn from `seed` (the same seed gives the same weights in every process).

    Returns (model, tokenizer, name). Raises KeyError for an unknown preset.
    """
    if model_path:
        backbone = load_backbone(model_path)
        return backbone.model, backbone.tokenizer, model_path
    torch.manual_seed(seed)
    model, tokenizer = PRESETS[preset](root)
    return model, tokenizer, preset


def main() -> None:
    parser = argparse.ArgumentParser(description="Save a random-weight preset backbone in Hugging Face format.")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    model, tokenizer, _ = build_backbone(args.preset, None, args.seed, data_dir(args.data_dir))
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"saved {args.preset} (seed {args.seed}) to {args.output}")


if __name__ == "__main__":
    main()
