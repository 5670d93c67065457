"""Decoder-only prompts computed once per batch: each distinct prompt runs once, its examples share its states.

With the prompt first and causal attention, a prompt's hidden states and per-layer keys/values do
not depend on the input after it. So a batch runs its k distinct prompts ([BOS; P], left-padded to
the longest, positions 0..p-1) as a batch of k, expands each layer's keys/values to the examples
that wear them, and runs only the input tokens per example, at positions p..p+n-1. Gradients flow
back through the expanded cache into the prompts. The result equals the concatenated computation
(`DecoderOnly`) within float tolerance, while the prompt's p positions cost one forward per
distinct prompt instead of one per example.

Dropout inside the prompt's layers is drawn once per prompt rather than once per example; with
dropout off (evaluation, or a backbone without it) the two paths compute the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .base import DecodeState, Prompts, greedy, label_nll
from .causal import DecoderOnly
from .prefix_cache import Layers, PrefixCache


class SharedPrefixDecoderOnly(DecoderOnly):
    """The decoder-only adapter with prompt states computed once per distinct prompt of a batch.

    Without any prompt rows (model tuning with p = 0 and no BOS) there is nothing to share, and the
    concatenated path runs instead.
    """

    blocks_sharded = False  # set once the blocks are sharded over ranks (FSDP2): each block then runs once per step

    def _nothing_to_share(self, prompts: Prompts) -> bool:
        """True where the concatenated path must run: no prompt rows, a training forward under gradient checkpointing
        (Hugging Face turns the key/value cache off when it recomputes activations), or sharded blocks (FSDP2
        frees a block's gathered weights after its forward, which the prompt pass and the input pass both need)."""
        recomputing = self.model.training and torch.is_grad_enabled() and getattr(self.model, "is_gradient_checkpointing", False)
        return recomputing or self.blocks_sharded or (self.bos_id is None and all(w.shape[0] == 0 for w in prompts.weights))

    prefix_cache: PrefixCache | None = None  # set by enable_prefix_cache: prompt states kept between batches

    def enable_prefix_cache(self, budget_bytes: int) -> PrefixCache:
        self.prefix_cache = PrefixCache(budget_bytes)
        return self.prefix_cache

    def _prompt_cache(self, prompts: Prompts):
        """Run the distinct prompts once; returns (cache expanded to the batch, prefix mask (b, L), prompt lengths (b,)).

        Without gradients and with a prefix cache, each prompt's states come from the cache
        (computed alone on a miss) instead of being recomputed for every batch.
        """
        prefixed = self._prefixed(prompts)
        lengths = prefixed.lengths()  # (k,) rows per prompt, BOS included
        width = int(lengths.max())
        mask = (torch.arange(width, device=self.device) >= (width - lengths).unsqueeze(1)).long()  # (k, L) left-padded
        if self.prefix_cache is not None and not torch.is_grad_enabled():
            cache = self._cached_states(prompts.weights, prefixed.weights, width)
        else:
            embeds = torch.zeros(len(prefixed.weights), width, self.width, dtype=self.dtype, device=self.device)  # (k, L, e)
            for row, weight in enumerate(prefixed.weights):
                embeds[row, width - weight.shape[0]:] = weight.to(self.dtype)
            positions = (mask.cumsum(1) - 1).clamp(min=0)  # (k, L): 0..p-1 on the real rows
            cache = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                               logits_to_keep=1).cache
        cache.batch_select_indices(prompts.index)  # each layer's keys/values: (k, h, L, d) -> (b, h, L, d)
        return cache, mask[prompts.index], lengths[prompts.index]

    def _cached_states(self, weights: list[torch.Tensor], prefixed: list[torch.Tensor], width: int) -> DynamicCache:
        """Each prompt's states from the cache, left-padded to `width` and stacked: (k, h, L, d) per layer."""
        per_prompt: list[Layers] = []
        for weight, rows in zip(weights, prefixed):
            layers = self.prefix_cache.get(weight)
            if layers is None:
                layers = self._states_alone(rows)
                self.prefix_cache.put(weight, layers)
            per_prompt.append(layers)
        stacked = []
        for layer in zip(*per_prompt):  # one layer's (keys, values) of every prompt, each (1, h, p_k, d)
            keys = torch.cat([F.pad(k, (0, 0, width - k.shape[2], 0)) for k, _ in layer])  # (k, h, L, d)
            values = torch.cat([F.pad(v, (0, 0, width - v.shape[2], 0)) for _, v in layer])  # (k, h, L, d)
            stacked.append((keys, values))
        return DynamicCache(stacked, config=self.model.config)

    def _states_alone(self, rows: torch.Tensor) -> Layers:
        """One prompt's per-layer keys/values, [BOS; P] (p, e) run alone at positions 0..p-1."""
        embeds = rows.to(self.dtype).unsqueeze(0)  # (1, p, e)
        positions = torch.arange(rows.shape[0], device=self.device).unsqueeze(0)  # (1, p)
        cache = self.model(inputs_embeds=embeds, position_ids=positions, use_cache=True, logits_to_keep=1).cache
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _run_tokens(self, prompts: Prompts, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0):
        """The tokens of each example after its prompt's shared states; returns (model output, full mask (b, L + n))."""
        cache, prefix_mask, p = self._prompt_cache(prompts)
        positions = (p.unsqueeze(1) + attention_mask.cumsum(1) - 1).clamp(min=0)  # (b, n): p..p+n-1 on real tokens
        full_mask = torch.cat([prefix_mask, attention_mask], 1)  # (b, L + n)
        out = self.model(input_ids=input_ids, attention_mask=full_mask, position_ids=positions, cache=cache,
                         logits_to_keep=logits_to_keep)
        return out, full_mask, positions

    def nll(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._nothing_to_share(prompts):
            return super().nll(prompts, batch)
        labels = batch["labels"]  # (b, n + m): left-padded, so every label sits in the last columns
        first = int((labels != -100).any(0).nonzero().min())
        keep = labels.shape[1] - first + 1  # the position before the first label predicts it
        out, _, _ = self._run_tokens(prompts, batch["input_ids"], batch["attention_mask"], logits_to_keep=keep)
        return label_nll(out.logits[:, :-1], labels[:, first:])  # (b, keep - 1, V) against (b, keep - 1)

    def score(self, prompts: Prompts, batch: dict[str, torch.Tensor], pair_example: torch.Tensor,
              candidate_ids: torch.Tensor) -> torch.Tensor:
        """Prompts once per distinct prompt, inputs once per example, candidates once per pair."""
        if self._nothing_to_share(prompts):
            return super().score(prompts, batch, pair_example, candidate_ids)
        out, mask, positions = self._run_tokens(prompts, batch["input_ids"], batch["attention_mask"], logits_to_keep=1)
        cache = out.cache
        cache.batch_select_indices(pair_example)  # (b, ...) -> (c, ...)
        tokens = candidate_ids.clamp(min=0)  # (c, m)
        cand_mask = (candidate_ids != -100).long()  # (c, m)
        cand_positions = positions[pair_example, -1:] + cand_mask.cumsum(1)  # (c, m): after the input's last position
        full_mask = torch.cat([mask[pair_example], cand_mask], 1)  # (c, L + n + m)
        logits = self.model(input_ids=tokens, attention_mask=full_mask, position_ids=cand_positions, cache=cache).logits
        logits = torch.cat([out.logits[pair_example], logits[:, :-1]], 1)  # (c, m, V): the input's last position predicts token 0
        nll, _ = label_nll(logits, candidate_ids)
        return -nll

    def begin_decode(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[DecodeState, torch.Tensor]:
        """Inputs over the shared prompt states; the steps after it are the concatenated path's (`decode_step`)."""
        if self._nothing_to_share(prompts):
            return super().begin_decode(prompts, batch)
        out, mask, positions = self._run_tokens(prompts, batch["input_ids"], batch["attention_mask"], logits_to_keep=1)
        return DecodeState(out.cache, mask, positions[:, -1:]), out.logits[:, -1]  # (b, V)

    def generate(self, prompts: Prompts, batch: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding over the shared prompt states: (b, <= max_new_tokens), pad after each end."""
        if self._nothing_to_share(prompts):
            return super().generate(prompts, batch, max_new_tokens)
        return greedy(self, prompts, batch, max_new_tokens)
