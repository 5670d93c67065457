"""The frozen backbone wearing soft prompts: the one place where [P; X] is built.

Encoder-decoder backbones (T5) take the prompt in front of the encoder input; decoder-only
backbones (GPT-2, Llama) take it in front of the input, right after any left padding, so the
prompt always sits directly before the real tokens. Each example of a batch names its own
prompt, so one frozen model serves many tasks in one batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import SoftpromptError
from .prompt import SoftPrompt, most_common_token_ids
from .prompt_io import PromptMetadata, check_compatible, embedding_fingerprint, load_prompt

PACKAGED_BACKBONES = Path(__file__).parent / "backbones"
PACKAGED_PREFIX = "packaged:"  # e.g. "packaged:default", "packaged:span-corruption"
DEFAULT_BACKBONE = PACKAGED_PREFIX + "default"


def resolve_backbone_name(name: str | None) -> str:
    """A hub name or local path; "packaged:NAME" (and no name at all) mean a backbone shipped in the package."""
    name = name or DEFAULT_BACKBONE
    if not name.startswith(PACKAGED_PREFIX):
        return name
    path = PACKAGED_BACKBONES / name.removeprefix(PACKAGED_PREFIX)
    if not (path / "config.json").is_file():
        shipped = sorted(p.parent.name for p in PACKAGED_BACKBONES.glob("*/config.json")) if PACKAGED_BACKBONES.is_dir() else []
        raise SoftpromptError(f"no packaged backbone {name!r} at {path}; packaged: {', '.join(shipped) or 'none'}")
    return str(path)


def load_backbone(name: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a Hugging Face model and tokenizer by hub name or local path, in fp32."""
    name = resolve_backbone_name(name)
    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SoftpromptError(f"cannot load backbone {name!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:  # GPT-2 has no pad token; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise SoftpromptError(f"{name}: tokenizer has {len(tokenizer)} tokens but the model only {rows} embeddings")
    return model, tokenizer


class PromptedModel(nn.Module):
    """A frozen backbone plus a bank of named soft prompts.

    The backbone's parameters never get gradients; `prompt_parameters()` is all an
    optimizer should see. Batches carry `prompt_index` (b,), an index into `prompt_names`.
    """

    def __init__(self, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.backbone_name = name or getattr(backbone.config, "_name_or_path", "")  # as the user named it
        self.prompts = nn.ModuleDict()
        self.prompt_metadata: dict[str, PromptMetadata] = {}
        self._fingerprint: tuple[int, str] | None = None  # (embedding version, hash)
        backbone.requires_grad_(False)
        tokenizer.padding_side = "right" if self.is_encoder_decoder else "left"

    # ---- facts about the backbone -------------------------------------------------
    @property
    def is_encoder_decoder(self) -> bool:
        return bool(self.backbone.config.is_encoder_decoder)

    @property
    def embeddings(self) -> torch.Tensor:
        return self.backbone.get_input_embeddings().weight  # (V, e)

    @property
    def width(self) -> int:
        return self.embeddings.shape[1]

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def fingerprint(self) -> str:
        """Identifies the embedding table, so prompt files can refuse other backbones.

        Cached until the table changes in place (only model tuning changes it).
        """
        version = self.embeddings._version
        if self._fingerprint is None or self._fingerprint[0] != version:
            self._fingerprint = (version, embedding_fingerprint(self.embeddings))
        return self._fingerprint[1]

    def common_token_ids(self) -> list[int]:
        return most_common_token_ids(len(self.tokenizer), self.tokenizer.all_special_ids, len(self.tokenizer))

    def encode_words(self, text: str) -> list[int]:
        """Token ids of `text` as it appears in a target (GPT-2 targets follow a space)."""
        prefix = "" if self.is_encoder_decoder else " "
        return self.tokenizer(prefix + text, add_special_tokens=False).input_ids

    # ---- the prompt bank -----------------------------------------------------------
    @property
    def prompt_names(self) -> list[str]:
        return list(self.prompts.keys())

    def add_prompt(self, name: str, prompt: SoftPrompt) -> int:
        """Attach a prompt under `name`; returns its index for `prompt_index`."""
        if prompt.width != self.width:
            raise SoftpromptError(f"prompt {name!r} has width {prompt.width}, backbone needs {self.width}")
        self.prompts[name] = prompt.to(self.device)
        return self.prompt_names.index(name)

    def load_prompt(self, directory: str | os.PathLike, name: str | None = None, allow_other_backbone: bool = False) -> str:
        """Attach a saved prompt, named `name` or else after its task; returns the name used.

        Raises SoftpromptError for a bad file or a prompt trained on another backbone.
        """
        weight, metadata = load_prompt(directory)
        check_compatible(metadata, str(directory), self.width, self.fingerprint(), allow_other_backbone)
        name = name or metadata.task or Path(directory).name
        self.add_prompt(name, SoftPrompt(weight))
        self.prompt_metadata[name] = metadata
        return name

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [p.weight for p in self.prompts.values()]

    # ---- the splice ----------------------------------------------------------------
    def splice(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_index: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Build the backbone's inputs with each example's prompt directly before its tokens.

        input_ids, attention_mask (and labels, for decoder-only training): (b, n), with the real
        tokens contiguous (right padding for encoder-decoder, left for decoder-only).
        Returns inputs_embeds (b, w, e) with w = max(p_i + n_i), attention_mask (b, w), and for
        decoder-only position_ids (b, w) and labels (b, w) with the prompt positions ignored.
        """
        b, n = input_ids.shape
        token_embeds = self.backbone.get_input_embeddings()(input_ids)  # (b, n, e)
        weights = [p.weight for p in self.prompts.values()]
        lengths = torch.tensor([w.shape[0] for w in weights], device=input_ids.device)
        offsets = torch.cumsum(lengths, 0) - lengths  # first row of each prompt in the table
        zero = token_embeds.new_zeros(1, self.width)
        table = torch.cat([torch.cat(weights).to(token_embeds.dtype), token_embeds.reshape(b * n, -1), zero])  # (P + b*n + 1, e)
        token_base, zero_row = int(lengths.sum()), table.shape[0] - 1

        p = lengths[prompt_index]  # (b,) prompt length of each example
        real = attention_mask.sum(1)  # (b,) real tokens
        first_real = (attention_mask.cumsum(1) == 0).sum(1)  # (b,) where the real tokens start
        total = p + real  # (b,)
        w = int(total.max())
        j = torch.arange(w, device=input_ids.device).unsqueeze(0)  # (1, w)
        start = (w - total).unsqueeze(1) if not self.is_encoder_decoder else torch.zeros_like(total).unsqueeze(1)  # (b, 1)
        rel = j - start  # (b, w) position relative to the prompt's first row
        in_prompt = (rel >= 0) & (rel < p.unsqueeze(1))
        in_tokens = (rel >= p.unsqueeze(1)) & (rel < total.unsqueeze(1))
        token_col = (first_real.unsqueeze(1) + rel - p.unsqueeze(1)).clamp(0, n - 1)  # (b, w) column in input_ids
        rows = torch.arange(b, device=input_ids.device).unsqueeze(1)  # (b, 1)
        index = torch.full((b, w), zero_row, device=input_ids.device)
        index = torch.where(in_prompt, offsets[prompt_index].unsqueeze(1) + rel, index)
        index = torch.where(in_tokens, token_base + rows * n + token_col, index)

        mask = (in_prompt | in_tokens).long()  # (b, w)
        out = {"inputs_embeds": table[index], "attention_mask": mask}  # (b, w, e), (b, w)
        if not self.is_encoder_decoder:
            out["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)  # (b, w)
            if labels is not None:
                out["labels"] = torch.where(in_tokens, labels.gather(1, token_col), torch.full_like(index, -100))
        return out

    # ---- the three uses: loss, generation, scoring ---------------------------------
    def forward(self, input_ids, attention_mask, prompt_index, labels) -> torch.Tensor:
        """Per-example sums of target-token negative log-likelihood and token counts, (b,) each."""
        logits, target = self.label_logits(input_ids, attention_mask, prompt_index, labels)
        return label_nll(logits, target)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean NLL over all target tokens of the batch (what the optimizer minimises)."""
        nll, count = self(batch["input_ids"], batch["attention_mask"], batch["prompt_index"], batch["labels"])
        return nll.sum() / count.sum().clamp(min=1)

    def label_logits(self, input_ids, attention_mask, prompt_index, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits aligned with the label tokens they predict: (b, m, V) and (b, m)."""
        spliced = self.splice(input_ids, attention_mask, prompt_index, None if self.is_encoder_decoder else labels)
        if self.is_encoder_decoder:
            logits = self.backbone(**spliced, labels=labels).logits  # (b, m, V)
            return logits, labels
        target = spliced.pop("labels")  # (b, w); left padding puts every label in the last columns
        first = int((target != -100).any(0).nonzero().min())
        # Only the positions that predict labels need the output layer: position t predicts t + 1.
        logits = self.backbone(**spliced, logits_to_keep=target.shape[1] - first + 1).logits  # (b, w - first + 1, V)
        return logits[:, :-1], target[:, first:]

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, prompt_index, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation ids (b, <= max_new_tokens), pad after the end."""
        spliced = self.splice(input_ids, attention_mask, prompt_index)
        spliced.pop("position_ids", None)  # generate() derives them from the mask
        return self.backbone.generate(
            **spliced,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )

    @torch.no_grad()
    def score_candidates(
        self, input_ids, attention_mask, prompt_index, pair_example: torch.Tensor, candidate_ids: torch.Tensor
    ) -> torch.Tensor:
        """Log-likelihood (sum over tokens) of each (example, candidate) pair, (c,).

        pair_example (c,) names the example of each pair; candidate_ids (c, m) are the candidate
        target tokens padded with -100. The encoder (or, for decoder-only, the shared prefix)
        runs once per example; only the short candidates run once per pair.
        """
        spliced = self.splice(input_ids, attention_mask, prompt_index)
        if self.is_encoder_decoder:
            encoder = self.backbone.get_encoder()
            hidden = encoder(inputs_embeds=spliced["inputs_embeds"], attention_mask=spliced["attention_mask"]).last_hidden_state
            logits = self.backbone(
                encoder_outputs=(hidden[pair_example],),  # (c, w, e)
                attention_mask=spliced["attention_mask"][pair_example],
                labels=candidate_ids,
            ).logits  # (c, m, V)
            nll, _ = label_nll(logits, candidate_ids)
            return -nll
        prefix = self.backbone(**spliced, use_cache=True)
        cache = prefix.past_key_values
        cache.batch_select_indices(pair_example)
        mask = spliced["attention_mask"][pair_example]  # (c, w)
        tokens = candidate_ids.clamp(min=0)  # (c, m)
        cand_mask = (candidate_ids != -100).long()
        full_mask = torch.cat([mask, cand_mask], 1)  # (c, w + m)
        positions = (full_mask.cumsum(1) - 1).clamp(min=0)[:, mask.shape[1]:]  # (c, m)
        logits = self.backbone(input_ids=tokens, attention_mask=full_mask, position_ids=positions, past_key_values=cache).logits
        first = prefix.logits[:, -1:][pair_example]  # (c, 1, V): the prefix's last position predicts token 0
        logits = torch.cat([first, logits[:, :-1]], 1)  # (c, m, V)
        nll, _ = label_nll(logits, candidate_ids)
        return -nll


def load_prompted_model(prompts: list[str], model: str | None = None, allow_other_backbone: bool = False) -> tuple[PromptedModel, PromptMetadata]:
    """The backbone `model` (else the one the first prompt was trained on) wearing every saved prompt.

    Each entry of `prompts` is a prompt directory or NAME=DIRECTORY; returns the model and the first
    prompt's metadata.
    """
    first = load_prompt(prompts[0].split("=", 1)[-1])[1]
    name = model or first.backbone
    prompted = PromptedModel(*load_backbone(name), name)
    for spec in prompts:
        prompt_name, _, directory = spec.rpartition("=")
        prompted.load_prompt(directory, prompt_name or None, allow_other_backbone)
    return prompted, first


def label_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example NLL sums and token counts, ignoring -100 labels: (b,), (b,)."""
    token_nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (b, m)
    return token_nll.sum(1), (labels != -100).sum(1)
