"""Backbone adapters: one class per kind of model, built from one spec (see loading.py)."""

from .base import Backbone, Prompts, embedding_fingerprint, label_nll
from .causal import DecoderOnly
from .loading import (
                      ADAPTERS,
                      DEFAULT_BACKBONE,
                      PACKAGED_DIR,
                      PACKAGED_PREFIX,
                      SMOLLM2,
                      T5_NANO_LM_ADAPTED,
                      T5_NANO_SPAN_CORRUPTION,
                      BackboneSpec,
                      adapter_for,
                      load_backbone,
                      resolve_backbone_name,
)
from .seq2seq import EncoderDecoder
from .shared_prefix import SharedPrefixDecoderOnly

__all__ = [
    "ADAPTERS", "DEFAULT_BACKBONE", "PACKAGED_DIR", "PACKAGED_PREFIX", "SMOLLM2", "T5_NANO_LM_ADAPTED", "T5_NANO_SPAN_CORRUPTION", "Backbone", "BackboneSpec", "DecoderOnly",
    "EncoderDecoder", "Prompts", "SharedPrefixDecoderOnly", "adapter_for", "embedding_fingerprint", "label_nll", "load_backbone", "resolve_backbone_name",
]
