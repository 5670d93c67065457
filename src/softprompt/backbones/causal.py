"""Decoder-only backbones (GPT-2, Llama family): [BOS; P; X; Y] in one left-padded sequence.

Left padding keeps every sequence ending in the last column, so generation continues from there
and the prompt sits directly before the real tokens. A tokenizer that starts sequences with BOS
(Llama) gets it in front of the prompt, where the model saw it in pretraining, not between the
prompt and the input. Targets follow the input in the same sequence; their positions are the only
ones whose logits are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .base import Backbone, DecodeState, Prompts, label_nll, pad, splice


class DecoderOnly(Backbone):
    kind = "decoder-only"
    padding_side = "left"
    peft_task_type = "CAUSAL_LM"

    def __init__(self, model, tokenizer, name: str = ""):
        super().__init__(model, tokenizer, name)
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self.bos_id = bos if bos is not None and probe and probe[0] == bos else None  # None: the tokenizer adds none
        # Byte-level BPE (GPT-2, SmolLM2) marks a word's leading space in the token itself, so a target
        # word that follows the input needs one; SentencePiece adds its own word boundary.
        first = tokenizer.tokenize("a")
        self.space_before_words = not (first and first[0].startswith("\u2581"))

    @property
    def max_positions(self) -> int:
        config = self.model.config
        return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048)

    def target_positions(self, max_target_length: int) -> int:
        return max_target_length + (self.bos_id is not None)

    def sequence_positions(self, prompt_length: int, input_tokens: int, new_tokens: int) -> int:
        return (self.bos_id is not None) + prompt_length + input_tokens + new_tokens

    def word_ids(self, text: str) -> list[int]:
        prefix = " " if self.space_before_words else ""
        return self.tokenizer(prefix + text, add_special_tokens=False).input_ids

    def input_ids(self, text: str, max_length: int) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids[:max_length]

    def target_ids(self, text: str, max_length: int) -> list[int]:
        return self.word_ids(text)[: max_length - 1] + [self.tokenizer.eos_token_id]

    def collate(self, inputs: Sequence[list[int]], targets: Sequence[list[int]] | None) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        if targets is None:
            return {"input_ids": pad(inputs, pad_id, left=True), "attention_mask": pad([[1] * len(i) for i in inputs], 0, left=True)}
        sequences = [i + t for i, t in zip(inputs, targets)]
        return {
            "input_ids": pad(sequences, pad_id, left=True),  # (b, n + m)
            "attention_mask": pad([[1] * len(s) for s in sequences], 0, left=True),  # (b, n + m)
            "labels": pad([[-100] * len(i) + t for i, t in zip(inputs, targets)], -100, left=True),  # (b, n + m)
        }

    def forward_batch(self, inputs: Sequence[list[int]], targets: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """[BOS; X; Y] in one sequence (BOS where the tokenizer uses one), labels on Y only."""
        bos = [self.bos_id] if self.bos_id is not None else []
        sequences = [bos + i + t for i, t in zip(inputs, targets)]
        return {"input_ids": pad(sequences, self.tokenizer.pad_token_id, left=False),  # (b, n + m)
                "attention_mask": pad([[1] * len(s) for s in sequences], 0, left=False),  # (b, n + m)
                "labels": pad([[-100] * (len(bos) + len(i)) + t for i, t in zip(inputs, targets)], -100, left=False)}

    def forward_nll(self, forward: Callable[..., Any], batch: dict[str, torch.Tensor], offset: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        # Position t predicts token t + 1: only the columns before some label need the output layer.
        predict = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)  # (k,)
        logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         logits_to_keep=predict + offset).logits  # (b, k, V)
        return label_nll(logits, labels[:, 1:][:, predict])

    def _prefixed(self, prompts: Prompts) -> Prompts:
        """Each prompt with the BOS embedding in front, where the tokenizer uses one: (1 + p_k, e)."""
        if self.bos_id is None:
            return prompts
        bos = self.embeddings[self.bos_id].unsqueeze(0)  # (1, e)
        return Prompts([torch.cat([bos.to(w.dtype), w]) for w in prompts.weights], prompts.index)

    def _inputs(self, prompts: Prompts, batch: dict[str, torch.Tensor]):
        token_embeds = self.model.get_input_embeddings()(batch["input_ids"])  # (b, n, e)
        spliced = splice(self._prefixed(prompts), token_embeds, batch["attention_mask"], right_align=True)
        positions = (spliced.mask.cumsum(1) - 1).clamp(min=0)  # (b, w)
        return spliced, positions

    def nll(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        spliced, positions = self._inputs(prompts, batch)
        labels = batch["labels"]
        target = torch.where(spliced.in_tokens, labels.gather(1, spliced.token_col), torch.full_like(spliced.token_col, -100))  # (b, w)
        first = int((target != -100).any(0).nonzero().min())  # left padding puts every label in the last columns
        # Only the positions that predict labels need the output layer: position t predicts t + 1.
        logits = self.model(inputs_embeds=spliced.embeds, attention_mask=spliced.mask, position_ids=positions,
                            logits_to_keep=target.shape[1] - first + 1).logits  # (b, w - first + 1, V)
        return label_nll(logits[:, :-1], target[:, first:])

    def score(self, prompts: Prompts, batch: dict[str, torch.Tensor], pair_example: torch.Tensor,
              candidate_ids: torch.Tensor) -> torch.Tensor:
        """The prefix [P; X] runs once per example; its cache is shared by that example's candidates."""
        spliced, positions = self._inputs(prompts, batch)
        prefix = self.model(inputs_embeds=spliced.embeds, attention_mask=spliced.mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1)
        cache = prefix.cache
        cache.batch_select_indices(pair_example)
        mask = spliced.mask[pair_example]  # (c, w)
        tokens = candidate_ids.clamp(min=0)  # (c, m)
        full_mask = torch.cat([mask, (candidate_ids != -100).long()], 1)  # (c, w + m)
        cand_positions = (full_mask.cumsum(1) - 1).clamp(min=0)[:, mask.shape[1]:]  # (c, m)
        logits = self.model(input_ids=tokens, attention_mask=full_mask, position_ids=cand_positions, cache=cache).logits
        first = prefix.logits[pair_example]  # (c, 1, V): the prefix's last position predicts token 0
        logits = torch.cat([first, logits[:, :-1]], 1)  # (c, m, V)
        nll, _ = label_nll(logits, candidate_ids)
        return -nll

    def generate(self, prompts: Prompts, batch: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        spliced, _ = self._inputs(prompts, batch)  # generate() derives positions from the mask
        return self._generate(inputs_embeds=spliced.embeds, attention_mask=spliced.mask, max_new_tokens=max_new_tokens)

    def begin_decode(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[DecodeState, torch.Tensor]:
        spliced, positions = self._inputs(prompts, batch)
        out = self.model(inputs_embeds=spliced.embeds, attention_mask=spliced.mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        return DecodeState(out.cache, spliced.mask, positions[:, -1:]), out.logits[:, -1]  # (b, V)

    def decode_step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        state.position = state.position + 1  # (b, 1)
        state.mask = torch.cat([state.mask, state.mask.new_ones(state.rows, 1)], 1)  # (b, w + 1)
        out = self.model(input_ids=tokens.unsqueeze(1), attention_mask=state.mask, position_ids=state.position,
                         cache=state.cache, use_cache=True, logits_to_keep=1)
        state.cache = out.cache
        return out.logits[:, -1]  # (b, V)

    def merge_decode(self, states: Sequence[DecodeState]) -> DecodeState | None:
        """Sequences of different lengths in one batch: each cache left-padded to the longest, masked there.

        Positions are explicit per row, so left padding changes nothing for a row, as in any
        left-padded batch. Caches of another type (sliding windows ...) are not merged.
        """
        if not all(type(s.cache) is DynamicCache and s.cache.layers and all(layer.keys is not None for layer in s.cache.layers)
                   and s.cache.layers[0].keys.shape[2] == s.mask.shape[1] for s in states):
            return None
        width = max(s.mask.shape[1] for s in states)
        layers = []
        for per_state in zip(*[s.cache.layers for s in states]):  # one layer of every state, keys (b_i, h, w_i, d)
            keys = torch.cat([F.pad(layer.keys, (0, 0, width - layer.keys.shape[2], 0)) for layer in per_state])  # (b, h, w, d)
            values = torch.cat([F.pad(layer.values, (0, 0, width - layer.values.shape[2], 0)) for layer in per_state])
            layers.append((keys, values))
        mask = torch.cat([F.pad(s.mask, (width - s.mask.shape[1], 0)) for s in states])  # (b, w)
        position = torch.cat([s.position for s in states])  # (b, 1)
        return DecodeState(DynamicCache(layers, config=self.model.config), mask, position)

    def input_logprobs(self, prompts: Prompts, batch: dict[str, torch.Tensor], top: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spliced, positions = self._inputs(prompts, batch)
        n = batch["input_ids"].shape[1]  # left-padded: the input's columns are the last n of the sequence
        logits = self.model(inputs_embeds=spliced.embeds, attention_mask=spliced.mask, position_ids=positions,
                            logits_to_keep=n + 1).logits.float()  # (b, <= n + 1, V): position t predicts t + 1
        if logits.shape[1] < n + 1:  # no prompt and no BOS: nothing predicts the first token
            logits = torch.cat([logits.new_full((logits.shape[0], 1, logits.shape[2]), float("nan")), logits], 1)
        logprobs = logits[:, :-1].log_softmax(-1)  # (b, n, V)
        chosen = logprobs.gather(-1, batch["input_ids"].unsqueeze(-1)).squeeze(-1)  # (b, n)
        values, ids = logprobs.topk(max(top, 1), -1)  # (b, n, top)
        return chosen, values[..., :top], ids[..., :top]
