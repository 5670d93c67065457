"""Tiny backbones with random weights and the real T5 / GPT-2 vocabularies from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    T5TokenizerFast,
)

from softprompt.backbones import Backbone, adapter_for
from softprompt.model import PromptedModel

DATA_DIR = Path(os.environ.get("SOFTPROMPT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()
KINDS = ("t5", "gpt2")
ALL_KINDS = ("t5", "gpt2", "llama")  # llama: rotary positions and a tokenizer that starts inputs with BOS


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "glue").is_dir():
        pytest.fail(f"test data not found at {DATA_DIR}; set SOFTPROMPT_DATA_DIR")
    return DATA_DIR


def tiny_backbone(kind: str, seed: int = 0):
    """A 2-layer model of width 32 over the real vocabulary of its family."""
    torch.manual_seed(seed)
    if kind == "t5":
        tokenizer = T5TokenizerFast.from_pretrained(DATA_DIR / "tokenizers" / "t5")
        config = T5Config(
            vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=2,
            num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
        )
        model = T5ForConditionalGeneration(config)
    elif kind == "gpt2":
        tokenizer = GPT2TokenizerFast.from_pretrained(DATA_DIR / "tokenizers" / "gpt2")
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3)
        model = GPT2LMHeadModel(config)
        tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = bos_tokenizer()
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, initializer_range=0.3,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer


def bos_tokenizer() -> GPT2TokenizerFast:
    """The GPT-2 vocabulary with a tokenizer that starts every sequence with BOS, as Llama's does."""
    tokenizer = GPT2TokenizerFast.from_pretrained(DATA_DIR / "tokenizers" / "gpt2")
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def tiny_adapter(kind: str, seed: int = 0) -> Backbone:
    return adapter_for(*tiny_backbone(kind, seed), name=f"tiny-{kind}")


@pytest.fixture
def prompted(kind) -> PromptedModel:
    return PromptedModel(tiny_adapter(kind))


@pytest.fixture
def saved_backbone(kind, tmp_path_factory) -> Path:
    """The tiny backbone saved in Hugging Face format, for the command line."""
    path = tmp_path_factory.mktemp(f"tiny-{kind}")
    model, tokenizer = tiny_backbone(kind)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def saved(kind: str, factory, seed: int = 0) -> Path:
    """A tiny backbone saved in Hugging Face format, in a fresh folder of `factory`."""
    path = factory.mktemp(f"tiny-{kind}-{seed}")
    model, tokenizer = tiny_backbone(kind, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return saved("t5", tmp_path_factory)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return saved("gpt2", tmp_path_factory)
