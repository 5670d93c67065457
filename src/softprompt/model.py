"""The frozen backbone wearing soft prompts: a backbone adapter plus a prompt bank.

`forward(batch)` returns the loss, so a wrapper (accelerate, DDP) can own the module; the bank
gathers only the prompts a batch names and the adapter splices them in, one example at a time
following its own prompt. One frozen model serves many tasks in one batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .backbones import Backbone, BackboneSpec, load_backbone
from .bank import PromptBank, PromptRecord
from .config import TrainConfig
from .errors import SoftpromptError
from .prompt import initial_prompt
from .prompt_io import PromptMetadata, check_compatible, load_prompt
from .tasks.base import Task

TUNED_BACKBONE_DIR = "backbone"  # model tuning saves its backbone here, inside the run directory


class PromptedModel(nn.Module):
    """The backbone's parameters never get gradients (unless model tuning turns them on); the bank's prompts do."""

    def __init__(self, backbone: Backbone, bank: PromptBank | None = None):
        super().__init__()
        self.adapter = backbone
        self.base_model = backbone.model  # the Hugging Face module; registered, so .to() and state_dict() see it
        self.bank = bank if bank is not None else PromptBank(backbone.width)

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    # ---- the bank ---------------------------------------------------------------------
    def add_prompt(self, name: str, weight: torch.Tensor, metadata: PromptMetadata) -> PromptRecord:
        return self.bank.add(name, weight.to(self.device), metadata)

    def load_prompt(self, directory: str | os.PathLike, name: str | None = None, allow_other_backbone: bool = False) -> str:
        """Add a saved prompt, named `name` or else after its task (else its folder); returns the name used.

        Raises SoftpromptError for a bad file or a prompt made for another backbone.
        """
        weight, metadata = load_prompt(directory)
        check_compatible(metadata, str(directory), self.adapter, allow_other_backbone)
        name = name or metadata.task or Path(directory).resolve().name
        if name in self.bank:
            raise SoftpromptError(f"{directory}: a prompt named {name!r} is already loaded; name it with NAME=DIR")
        self.add_prompt(name, weight, metadata)
        return name

    def prompt_parameters(self) -> list[nn.Parameter]:
        return list(self.bank.parameters())

    # ---- the three uses: loss, scores, generation ------------------------------------------
    def forward(self, batch: dict, reduction: str = "mean") -> torch.Tensor:
        """NLL over all target tokens of the batch: their mean, or (`reduction="sum"`) their sum.

        The trainer takes the sum and divides by the global batch's token count, so a batch split
        over ranks or micro-batches takes the same step.
        """
        nll, count = self.nll(batch)
        return nll.sum() if reduction == "sum" else nll.sum() / count.sum().clamp(min=1)

    def nll(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example NLL sums and target-token counts, (b,) each."""
        return self.adapter.nll(self.bank.gather(batch["prompts"], self.device), batch)

    @torch.no_grad()
    def score(self, batch: dict, pair_example: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of each (example, candidate) pair, (c,)."""
        return self.adapter.score(self.bank.gather(batch["prompts"], self.device), batch, pair_example, candidate_ids)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation ids (b, <= max_new_tokens)."""
        return self.adapter.generate(self.bank.gather(batch["prompts"], self.device), batch, max_new_tokens)


def load_prompted_model(prompts: list[str], model: str | None = None, allow_other_backbone: bool = False,
                        dtype: str = "fp32", device: str = "auto") -> PromptedModel:
    """The backbone `model` (else the one the first prompt was trained on) wearing every saved prompt.

    Each entry of `prompts` is a prompt directory or NAME=DIRECTORY.
    """
    backbone_name = model or load_prompt(prompts[0].rpartition("=")[2])[1].backbone  # read only when no model is given
    prompted = PromptedModel(load_backbone(BackboneSpec(backbone_name, dtype, device)))
    for spec in prompts:
        name, _, directory = spec.rpartition("=")
        prompted.load_prompt(directory, name or None, allow_other_backbone)
    return prompted


def prompt_metadata(config: TrainConfig, task: Task, backbone: Backbone, init: str) -> PromptMetadata:
    """A new prompt's record of what it is for; model tuning names the tuned backbone it needs."""
    tuned = config.tune == "model"
    return PromptMetadata(
        length=config.prompt.length, width=backbone.width, init=init, task=task.name, task_spec=config.task_spec,
        labels=list(task.labels) if task.labels else None, target_format=config.target_format,
        max_input_length=config.max_input_length, max_target_length=config.max_target_length,
        backbone=str(Path(config.output).resolve() / TUNED_BACKBONE_DIR) if tuned else backbone.name,
        backbone_kind=backbone.kind, backbone_fingerprint=None if tuned else backbone.fingerprint(),
    )


def build_model(config: TrainConfig, task: Task) -> tuple[PromptedModel, str | None]:
    """The frozen backbone with one freshly initialised prompt named after the task, and a note on its init.

    Raises SoftpromptError for a backbone that does not load, a device or dtype it cannot use, or
    a prompt that leaves no room for input.
    """
    backbone = load_backbone(BackboneSpec(config.model, config.dtype, config.device))
    backbone.input_budget(config.prompt.length, config.max_input_length, config.max_target_length)
    generator = torch.Generator().manual_seed(config.seed)
    initial = initial_prompt(config.prompt, backbone, task.class_words, generator)
    model = PromptedModel(backbone)
    model.add_prompt(task.name, initial.weight, prompt_metadata(config, task, backbone, initial.init))
    if config.compile:
        model.base_model.compile(dynamic=True)  # in place: weights and saved files keep their names
    return model, initial.note
