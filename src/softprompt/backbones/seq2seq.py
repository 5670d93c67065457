"""Encoder-decoder backbones (T5 family): [P; X] goes into the encoder, targets into the decoder.

Inputs are right-padded, so every prompt starts in the encoder's first position; targets are
separate labels. The encoder is bidirectional, so the prompt's states depend on the input and
the concatenation is computed per example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache

from .base import Backbone, DecodeState, Prompts, label_nll, pad, splice

# T5's relative position buckets extend past its 512 training positions, but attention memory
# grows with the square of the length; this bounds prompt + input.
MAX_ENCODER_POSITIONS = 2048


class EncoderDecoder(Backbone):
    kind = "encoder-decoder"
    padding_side = "right"
    peft_task_type = "SEQ_2_SEQ_LM"

    @property
    def max_positions(self) -> int:
        return MAX_ENCODER_POSITIONS

    def word_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def input_ids(self, text: str, max_length: int) -> list[int]:
        return self.tokenizer(text, truncation=True, max_length=max_length).input_ids  # ends with </s>

    def target_ids(self, text: str, max_length: int) -> list[int]:
        return self.tokenizer(text, truncation=True, max_length=max_length).input_ids  # ends with </s>

    def collate(self, inputs: Sequence[list[int]], targets: Sequence[list[int]] | None) -> dict[str, torch.Tensor]:
        out = {
            "input_ids": pad(inputs, self.tokenizer.pad_token_id, left=False),  # (b, n)
            "attention_mask": pad([[1] * len(i) for i in inputs], 0, left=False),  # (b, n)
        }
        if targets is not None:
            out["labels"] = pad(targets, -100, left=False)  # (b, m)
        return out

    def forward_batch(self, inputs: Sequence[list[int]], targets: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        return self.collate(inputs, targets)  # inputs right-padded already, targets the decoder's labels

    def forward_nll(self, forward: Callable[..., Any], batch: dict[str, torch.Tensor], offset: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's logits hold the targets alone: a wrapper's tokens (in the encoder) need no `offset`."""
        logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
        return label_nll(logits, batch["labels"])  # (b, m, V) against (b, m)

    def _encoder_inputs(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        token_embeds = self.model.get_input_embeddings()(batch["input_ids"])  # (b, n, e)
        spliced = splice(prompts, token_embeds, batch["attention_mask"], right_align=False)
        return spliced.embeds, spliced.mask  # (b, w, e), (b, w)

    def nll(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = self._encoder_inputs(prompts, batch)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, labels=batch["labels"]).logits  # (b, m, V)
        return label_nll(logits, batch["labels"])

    def score(self, prompts: Prompts, batch: dict[str, torch.Tensor], pair_example: torch.Tensor,
              candidate_ids: torch.Tensor) -> torch.Tensor:
        """The encoder runs once per example; only the short candidates run once per pair."""
        embeds, mask = self._encoder_inputs(prompts, batch)
        hidden = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (b, w, e)
        logits = self.model(encoder_outputs=(hidden[pair_example],), attention_mask=mask[pair_example],
                            labels=candidate_ids).logits  # (c, m, V)
        nll, _ = label_nll(logits, candidate_ids)
        return -nll

    def generate(self, prompts: Prompts, batch: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        embeds, mask = self._encoder_inputs(prompts, batch)
        ids = self._generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens)
        return ids[:, 1:]  # (b, <= max_new_tokens): without the decoder's start token

    def begin_decode(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[DecodeState, torch.Tensor]:
        """The encoder once, then the decoder's start token: the same steps as `generate`, one at a time."""
        embeds, mask = self._encoder_inputs(prompts, batch)
        hidden = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (b, w, e)
        state = DecodeState(EncoderDecoderCache(DynamicCache(), DynamicCache()), mask, encoder=hidden)
        start = torch.full((state.rows,), self.model.config.decoder_start_token_id, dtype=torch.long, device=self.device)
        return state, self.decode_step(state, start)

    def decode_step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(encoder_outputs=(state.encoder,), attention_mask=state.mask, decoder_input_ids=tokens.unsqueeze(1),
                         cache=state.cache, use_cache=True)
        state.cache = out.cache
        return out.logits[:, -1]  # (b, V)
