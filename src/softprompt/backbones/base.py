"""What every backbone adapter is: a frozen Hugging Face model and tokenizer, and everything kind-specific.

An adapter owns tokenising inputs and targets, the collate layout, the loss, rank scores and
generation for its kind of model; callers never branch on the kind. A new kind (or a new way
of computing the prompt's states for one kind) is one new class.

Prompts reach an adapter as `Prompts`: the distinct prompt matrices a batch uses and, for each
example, which of them it wears. The adapter splices them in front of the token embeddings.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import SoftpromptError

FINGERPRINT_VERSION = "v2"
FINGERPRINT_ROWS = 256  # rows hashed, evenly spaced over the table


@dataclass
class Prompts:
    """The prompts one batch uses: `weights[k]` is a (p_k, e) matrix, `index` (b,) picks one per example."""

    weights: list[torch.Tensor]
    index: torch.Tensor

    def lengths(self) -> torch.Tensor:
        return torch.tensor([w.shape[0] for w in self.weights], device=self.index.device)  # (k,)


@dataclass(frozen=True)
class Spliced:
    """[P; X] for a batch: embeddings (b, w, e), attention mask (b, w), and where the tokens went.

    `in_tokens` (b, w) marks the positions holding input tokens; `token_col` (b, w) is the column
    of `input_ids` each such position came from.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    in_tokens: torch.Tensor
    token_col: torch.Tensor


def splice(prompts: Prompts, token_embeds: torch.Tensor, attention_mask: torch.Tensor, right_align: bool) -> Spliced:
    """Put each example's prompt directly before its real tokens, gathering rows from one table.

    token_embeds (b, n, e) and attention_mask (b, n) hold contiguous real tokens (right padding, or
    left padding with `right_align`). With `right_align` the sequence ends in the last column
    (decoder-only: generation continues from there); else it starts in the first (encoder input).
    """
    b, n, e = token_embeds.shape
    device = token_embeds.device
    lengths = prompts.lengths()  # (k,)
    offsets = torch.cumsum(lengths, 0) - lengths  # (k,) first row of each prompt in the table
    zero = token_embeds.new_zeros(1, e)
    weights = [w.to(token_embeds.dtype) for w in prompts.weights]
    table = torch.cat([*weights, token_embeds.reshape(b * n, e), zero])  # (P + b*n + 1, e)
    token_base, zero_row = int(lengths.sum()), table.shape[0] - 1

    p = lengths[prompts.index]  # (b,) prompt length of each example
    real = attention_mask.sum(1)  # (b,) real tokens
    first_real = (attention_mask.cumsum(1) == 0).sum(1)  # (b,) where the real tokens start
    total = p + real  # (b,)
    w = int(total.max())
    j = torch.arange(w, device=device).unsqueeze(0)  # (1, w)
    start = (w - total).unsqueeze(1) if right_align else torch.zeros_like(total).unsqueeze(1)  # (b, 1)
    rel = j - start  # (b, w) position relative to the prompt's first row
    in_prompt = (rel >= 0) & (rel < p.unsqueeze(1))
    in_tokens = (rel >= p.unsqueeze(1)) & (rel < total.unsqueeze(1))
    token_col = (first_real.unsqueeze(1) + rel - p.unsqueeze(1)).clamp(0, n - 1)  # (b, w) column in input_ids
    rows = torch.arange(b, device=device).unsqueeze(1)  # (b, 1)
    index = torch.full((b, w), zero_row, device=device)
    index = torch.where(in_prompt, offsets[prompts.index].unsqueeze(1) + rel, index)
    index = torch.where(in_tokens, token_base + rows * n + token_col, index)
    mask = (in_prompt | in_tokens).long()  # (b, w)
    return Spliced(table[index], mask, in_tokens, token_col)  # embeds (b, w, e)


@dataclass
class DecodeState:
    """What continuing b sequences one token at a time needs, kept between steps (a server interleaves steps).

    `mask` (b, w) is the attention mask so far: the decoder-only sequence [BOS; P; X; generated],
    or the encoder's [P; X] for an encoder-decoder (whose decoder positions the cache counts).
    `position` (b, 1) is each row's last position (decoder-only); `encoder` (b, w, e) the encoder's
    output (encoder-decoder). `select` keeps (or repeats) rows, so finished sequences leave the batch.
    """

    cache: object
    mask: torch.Tensor
    position: torch.Tensor | None = None
    encoder: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.position = None if self.position is None else self.position[rows]
        self.encoder = None if self.encoder is None else self.encoder[rows]

    @property
    def rows(self) -> int:
        return self.mask.shape[0]


def pad(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    """Stack lists of ids into (b, max_len), padding on the left or the right."""
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + list(r)) if left else (list(r) + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def greedy(adapter: Backbone, prompts: Prompts, batch: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding through the adapter's `begin_decode` / `decode_step`: (b, <= max_new_tokens), pad after each end."""
    eos, pad_id = adapter.tokenizer.eos_token_id, adapter.tokenizer.pad_token_id
    state, logits = adapter.begin_decode(prompts, batch)  # logits (b, V)
    done = torch.zeros(state.rows, dtype=torch.bool, device=logits.device)
    new: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits.argmax(-1))  # (b,)
        new.append(token)
        done = done | (token == eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = adapter.decode_step(state, token)
    return torch.stack(new, 1) if new else pad([[]] * state.rows, pad_id, left=False)  # (b, steps)


def label_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example NLL sums and token counts, ignoring -100 labels: (b,), (b,)."""
    token_nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (b, m)
    return token_nll.sum(1), (labels != -100).sum(1)


def embedding_fingerprint(embeddings: torch.Tensor) -> str:
    """A short hash that tells embedding tables apart, cheap at any vocabulary size.

    It hashes the shape and `FINGERPRINT_ROWS` evenly spaced rows rounded to bf16, so it costs the
    same for 8k and 128k vocabularies, and a backbone loaded in fp32, bf16 or fp16 (all rounding to
    the same bf16 values) keeps its fingerprint: a prompt trained in one precision loads in another.
    """
    rows, width = embeddings.shape
    picks = torch.linspace(0, rows - 1, min(rows, FINGERPRINT_ROWS)).round().long().to(embeddings.device)
    sample = embeddings.detach()[picks].to(torch.bfloat16).view(torch.int16).cpu()  # (k, e) raw bf16 bits
    digest = hashlib.sha256(f"{rows}x{width}".encode() + sample.contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{FINGERPRINT_VERSION}:{digest}"


def legacy_fingerprint(embeddings: torch.Tensor) -> str:
    """The fingerprint of prompt files written before v2: a hash of the whole table in fp32."""
    data = embeddings.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _contiguous_input(module, args):
    """The output layer's input made contiguous before the vocabulary projection.

    `logits_to_keep` hands the head a slice of the hidden states; on a CPU in bf16, a linear layer
    over that non-contiguous (b, k, e) slice falls back to a batched matmul that copies the
    (V, e) weight per example (SmolLM2, batch 16, one thread: a training step 7.4 s, against 3.4 s
    with the contiguous input; fp32 unchanged at 4.2 s).
    """
    return (args[0].contiguous(), *args[1:])


class Backbone(ABC):
    """A frozen model and its tokenizer; subclasses implement one kind (`kind`)."""

    kind: ClassVar[str]
    padding_side: ClassVar[str]
    prefix_cache = None  # prompt states kept between batches, where the kind can (enable_prefix_cache)

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "")  # as the user named it
        model.requires_grad_(False)
        if tokenizer.pad_token_id is None:  # GPT-2 and Llama have no pad token; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = self.padding_side
        head = model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(_contiguous_input)
        self._fingerprint: tuple[int, str] | None = None  # (embedding version, hash)

    # ---- facts -----------------------------------------------------------------------
    @property
    def embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight  # (V, e)

    @property
    def width(self) -> int:
        return self.embeddings.shape[1]

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.dtype

    def fingerprint(self) -> str:
        """Identifies the embedding table; cached until the table changes in place (model tuning)."""
        version = self.embeddings._version
        if self._fingerprint is None or self._fingerprint[0] != version:
            self._fingerprint = (version, embedding_fingerprint(self.embeddings))
        return self._fingerprint[1]

    def matches_fingerprint(self, recorded: str) -> bool:
        """Whether a prompt file's fingerprint names this table (v2, or the legacy full-table hash)."""
        if recorded.startswith(FINGERPRINT_VERSION + ":"):
            return recorded == self.fingerprint()
        return recorded == legacy_fingerprint(self.embeddings)

    @property
    @abstractmethod
    def max_positions(self) -> int:
        """The most positions one sequence (prompt + input, + target where it shares them) may take."""

    def common_token_ids(self) -> list[int]:
        """The most common tokens, taken as the lowest non-special ids.

        SentencePiece unigram vocabularies (T5, the project's own) are stored in descending score
        order and byte-level BPE vocabularies (GPT-2, SmolLM2) in merge order: a low id is frequent.
        """
        special = set(self.tokenizer.all_special_ids)
        return [i for i in range(len(self.tokenizer)) if i not in special]

    # ---- tokenising --------------------------------------------------------------------
    @abstractmethod
    def word_ids(self, text: str) -> list[int]:
        """Token ids of `text` as it appears in a target (for class-label init and label words)."""

    @abstractmethod
    def input_ids(self, text: str, max_length: int) -> list[int]:
        """An input's ids, special tokens as the kind needs them, at most `max_length`."""

    @abstractmethod
    def target_ids(self, text: str, max_length: int) -> list[int]:
        """A target's ids ending with the end-of-sequence token, at most `max_length`."""

    def input_budget(self, prompt_length: int, max_input_length: int, max_target_length: int) -> int:
        """Input tokens that fit beside a prompt of `prompt_length`; raises SoftpromptError if none do."""
        room = self.max_positions - prompt_length - self.target_positions(max_target_length)
        if room < 2:
            raise SoftpromptError(
                f"prompt length {prompt_length} leaves no room for input in {self.name!r}'s {self.max_positions} positions; "
                "lower --prompt-length")
        return min(max_input_length, room)

    def target_positions(self, max_target_length: int) -> int:
        """Positions of the input sequence that targets take (decoder-only: all; encoder-decoder: none)."""
        return 0

    # ---- batches and computation ---------------------------------------------------------
    @abstractmethod
    def collate(self, inputs: Sequence[list[int]], targets: Sequence[list[int]] | None) -> dict[str, torch.Tensor]:
        """Padded tensors in this kind's layout: input_ids, attention_mask (and labels with targets)."""

    @abstractmethod
    def nll(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example sums of target-token NLL and token counts, (b,) each."""

    @abstractmethod
    def score(self, prompts: Prompts, batch: dict[str, torch.Tensor], pair_example: torch.Tensor,
              candidate_ids: torch.Tensor) -> torch.Tensor:
        """Log-likelihood (sum over tokens) of each (example, candidate) pair, (c,).

        pair_example (c,) names each pair's example; candidate_ids (c, m) are target ids padded with -100.
        """

    # ---- the model's own forward, run by a wrapper that adds its own tokens (PEFT's prompt learning) ----
    peft_task_type: ClassVar[str]  # PEFT's TaskType for this kind: "CAUSAL_LM" or "SEQ_2_SEQ_LM"

    @abstractmethod
    def forward_batch(self, inputs: Sequence[list[int]], targets: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """(input, target) pairs for the model's own forward, right-padded so each sequence starts in the first
        column (a wrapper's virtual tokens sit directly before it): input_ids, attention_mask, and labels that are
        -100 off the target tokens."""

    @abstractmethod
    def forward_nll(self, forward: Callable[..., Any], batch: dict[str, torch.Tensor], offset: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example target NLL sums and token counts, (b,) each, of a `forward_batch` through `forward` (the
        model, or a wrapper of it such as a PeftModel); `offset`: positions the wrapper puts before the sequence
        in the logits it returns (P-tuning's virtual tokens)."""

    @abstractmethod
    def generate(self, prompts: Prompts, batch: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation ids (b, <= max_new_tokens), pad after the end."""

    @abstractmethod
    def begin_decode(self, prompts: Prompts, batch: dict[str, torch.Tensor]) -> tuple[DecodeState, torch.Tensor]:
        """Read [P; X] once; returns the state to continue from and the logits of the first new token (b, V)."""

    @abstractmethod
    def decode_step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row's last token (b,); returns the logits of the next one (b, V) and advances `state`."""

    def merge_decode(self, states: Sequence[DecodeState]) -> DecodeState | None:
        """One state continuing all of `states`' rows (so one forward steps them all), or None where the kind cannot."""
        return None

    def input_logprobs(self, prompts: Prompts, batch: dict[str, torch.Tensor], top: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probability of every input token given the prompt and the tokens before it (echo).

        Returns (b, n) log-probabilities and the `top` most likely tokens at each position,
        values and ids (b, n, top). Only a decoder-only model predicts its input.
        """
        raise SoftpromptError(f"{self.name!r} is an encoder-decoder model: it reads its input, it does not predict it")

    def sequence_positions(self, prompt_length: int, input_tokens: int, new_tokens: int) -> int:
        """Positions one sequence takes with `new_tokens` generated (checked against `max_positions`)."""
        return prompt_length + input_tokens

    def enable_prefix_cache(self, budget_bytes: int):
        """Keep prompt states between batches, where this kind can (decoder-only); returns the cache or None.

        An encoder-decoder's encoder is bidirectional, so its prompt states depend on the input and
        there is nothing to keep.
        """
        return None

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _generate(self, **inputs) -> torch.Tensor:
        return self.model.generate(**inputs, do_sample=False, num_beams=1, pad_token_id=self.tokenizer.pad_token_id,
                                   eos_token_id=self.tokenizer.eos_token_id)
