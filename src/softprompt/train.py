"""The one prompt-tuning loop: Adafactor on the prompt alone, best prompt kept by dev metric.

A run lives in its output directory: `run.json` (the config), `checkpoint.pt` (everything
needed to continue exactly: prompt, optimizer, data position, random states, best so far),
`metrics.jsonl` (loss and evaluations), and the best prompt as `prompt.safetensors` +
`prompt.json`. `resume=True` continues from the checkpoint and ends with the same prompt as an
uninterrupted run.

`ema_decay` (not in the paper) evaluates and saves an exponential moving average of the trained
weights instead of the last step's: at the paper's lr 0.3 each step moves the prompt far, so dev
accuracy swings by several points from one evaluation to the next.

`tune="model"` is the paper's model-tuning baseline: every backbone weight trains too (use a lower
lr, T5 fine-tuning's 1e-3, and `--prompt-length 0` for no prompt), and the best backbone is saved
in `backbone/` beside the prompt.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers.optimization import Adafactor

from .config import TrainConfig
from .data import LENGTH_GROUP_FACTOR, Encoder, Features, collate, length_grouped_batches
from .errors import SoftpromptError
from .evaluate import evaluate, to_device
from .files import append_jsonl, atomic_folder, atomic_path, write_json_atomic
from .model import DEFAULT_BACKBONE, PromptedModel, load_backbone
from .prompt import SoftPrompt, initial_prompt
from .prompt_io import PromptMetadata, save_prompt
from .tasks import get_task, resolve_data_dir
from .tasks.base import Task
from .tasks.custom import CustomTaskSpec, custom_task

RUN_FILE, CHECKPOINT_FILE, LOG_FILE, RESULT_FILE = "run.json", "checkpoint.pt", "metrics.jsonl", "result.json"
TUNED_BACKBONE_DIR = "backbone"
# Fields that may change when a run is resumed; any other difference means a different run.
RESUMABLE_FIELDS = {"max_steps", "max_minutes", "eval_batch_size", "log_every", "device", "compile"}


@dataclass
class TrainResult:
    output: Path
    steps: int
    best_step: int
    best_metrics: dict[str, float]
    seconds: float


def load_task(config: TrainConfig) -> Task:
    """The named task, or a custom task described by `config.task_spec`."""
    if config.task_spec is not None:
        return custom_task(CustomTaskSpec(**config.task_spec))
    return get_task(config.task)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> Adafactor:
    """Adafactor as the paper sets it: constant lr, beta2 decay 0.8, no parameter scaling."""
    return Adafactor(
        params,
        lr=config.lr,
        decay_rate=-config.beta2_decay,
        weight_decay=config.weight_decay,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        beta1=None,
        clip_threshold=1.0,
    )


def prepare_output(output: Path, config: TrainConfig, resume: bool) -> None:
    """Refuse to mix two runs in one directory; allow resuming the same run."""
    run_file = output / RUN_FILE
    if run_file.is_file():
        if not resume:
            raise SoftpromptError(f"{output} already holds a run; pass --resume to continue it, or choose another --output")
        saved = json.loads(run_file.read_text(encoding="utf-8"))
        mine = config.to_dict()
        differing = sorted(k for k in set(saved) | set(mine) if k not in RESUMABLE_FIELDS and saved.get(k) != mine.get(k))
        if differing:
            raise SoftpromptError(f"{output} holds a different run ({', '.join(differing)} differ); choose another --output")
    elif output.exists() and any(output.iterdir()):
        raise SoftpromptError(f"{output} is not empty and holds no softprompt run; choose another --output")
    write_json_atomic(run_file, config.to_dict())


def build_model(config: TrainConfig, task: Task) -> tuple[PromptedModel, Encoder]:
    """The frozen backbone with one freshly initialised prompt named after the task."""
    backbone, tokenizer = load_backbone(config.model)
    model = PromptedModel(backbone, tokenizer, config.model or DEFAULT_BACKBONE)
    generator = torch.Generator().manual_seed(config.seed)
    weight = initial_prompt(config.prompt, model.embeddings.detach(), model.encode_words, model.common_token_ids(), task.class_words, generator)
    model.add_prompt(task.name, SoftPrompt(weight))
    if config.compile:
        model.backbone.compile(dynamic=True)  # in place: weights and saved files keep their names
    encoder = Encoder(tokenizer, model.is_encoder_decoder, config.max_input_length, config.max_target_length, config.target_format)
    return model.to(pick_device(config.device)), encoder


def trainable_parameters(model: PromptedModel, config: TrainConfig) -> list[torch.nn.Parameter]:
    """The prompt alone (prompt tuning), or the prompt and every backbone weight (model tuning)."""
    if config.tune == "model":
        model.backbone.requires_grad_(True)
        return [p for p in model.parameters()]
    return model.prompt_parameters()


class WeightAverage:
    """An exponential moving average of the trained weights, swapped in to evaluate and save them."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.averages = [p.detach().clone() for p in params]  # starts at the initial weights
        self._update = get_ema_multi_avg_fn(decay)

    def update(self) -> None:
        self._update(self.averages, [p.detach() for p in self.params], None)

    @contextmanager
    def swapped_in(self):
        trained = [p.detach().clone() for p in self.params]
        self._copy_into_params(self.averages)
        try:
            yield
        finally:
            self._copy_into_params(trained)

    @torch.no_grad()
    def _copy_into_params(self, values: list[torch.Tensor]) -> None:
        for param, value in zip(self.params, values):
            param.copy_(value)


def save_tuned_backbone(model: PromptedModel, directory: Path) -> None:
    """Model tuning's result: the whole backbone, replaced atomically."""
    with atomic_folder(directory) as tmp:
        model.backbone.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)


def prompt_metadata(model: PromptedModel, config: TrainConfig, task: Task, extra: dict[str, Any]) -> PromptMetadata:
    weight = model.prompt_parameters()[0]
    return PromptMetadata(
        length=weight.shape[0], width=weight.shape[1], init=config.prompt.init, task=task.name,
        labels=list(task.labels) if task.labels else None, backbone=model.backbone_name,
        backbone_fingerprint=model.fingerprint(), target_format=config.target_format,
        extra={"is_encoder_decoder": model.is_encoder_decoder, **extra},
    )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def random_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class BatchStream:
    """Endless batches (length-grouped or random) whose position (epoch, index) can be saved and restored."""

    def __init__(self, features: list[Features], batch_size: int, seed: int, group_by_length: bool):
        self.features, self.batch_size, self.seed = features, batch_size, seed
        self.lengths = [f.length for f in features]
        self.group_factor = LENGTH_GROUP_FACTOR if group_by_length else 1  # 1: each batch is a random draw
        self.epoch, self.index = 0, 0
        self._batches = self._epoch_batches()

    def _epoch_batches(self) -> list[list[int]]:
        return length_grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.group_factor)

    def next(self) -> list[Features]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch_batches()
        batch = self._batches[self.index]
        self.index += 1
        return [self.features[i] for i in batch]

    def position(self) -> tuple[int, int]:
        return self.epoch, self.index

    def seek(self, epoch: int, index: int) -> None:
        self.epoch, self.index = epoch, index
        self._batches = self._epoch_batches()


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Prompt-tune one task. Raises SoftpromptError for bad input or a clashing output directory."""
    start_time = time.monotonic()
    output = Path(config.output)
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise SoftpromptError(f"--ema-decay must lie between 0 and 1, not {config.ema_decay}")
    task = load_task(config)
    data_dir = resolve_data_dir(config.data_dir)
    train_examples = task.load("train", data_dir)[: config.train_examples]
    dev_examples = task.load("validation", data_dir)[: config.eval_examples]
    if not train_examples or not dev_examples:
        raise SoftpromptError(f"task {task.name}: the train and validation splits must both hold examples")
    prepare_output(output, config, resume)

    seed_everything(config.seed)
    model, encoder = build_model(config, task)
    features = encoder.encode_all(train_examples, f"{task.name} train")
    stream = BatchStream(features, config.batch_size, config.seed, config.group_by_length)
    params = trainable_parameters(model, config)
    optimizer = make_optimizer(params, config)
    average = WeightAverage(params, config.ema_decay) if config.ema_decay is not None else None
    step, best_step, best_metrics = 0, -1, {}

    checkpoint = output / CHECKPOINT_FILE
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        step, best_step, best_metrics = state["step"], state["best_step"], state["best_metrics"]
        stream.seek(*state["position"])
        restore_random_states(state["random"])
        if average is not None:
            average.averages = [t.to(model.device) for t in state["average"]]

    def save_state() -> None:
        save_checkpoint(checkpoint, {
            "trainable": {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad},
            "optimizer": optimizer.state_dict(),
            "step": step, "best_step": best_step, "best_metrics": best_metrics,
            "position": stream.position(), "random": random_states(),
            "average": [t.cpu() for t in average.averages] if average is not None else None,
        })

    evaluated_at = -1

    def run_eval() -> None:
        nonlocal best_step, best_metrics, evaluated_at
        evaluated_at = step
        with average.swapped_in() if average is not None else nullcontext():
            model.eval()
            metrics = evaluate(model, task, dev_examples, encoder, 0, config.eval_method, config.eval_batch_size)
            model.train()
            append_jsonl(output / LOG_FILE, {"step": step, "eval": metrics})
            key = next(iter(metrics))
            if not best_metrics or metrics[key] > best_metrics[key]:
                best_step, best_metrics = step, metrics
                save_prompt(output, model.prompt_parameters()[0], prompt_metadata(model, config, task, {"step": step, "metrics": metrics}))
                if config.tune == "model":
                    save_tuned_backbone(model, output / TUNED_BACKBONE_DIR)

    model.train()
    bar = tqdm(total=config.max_steps, initial=step, desc=f"train {task.name}", disable=not progress)
    deadline = start_time + 60 * config.max_minutes if config.max_minutes else None
    while step < config.max_steps and (deadline is None or time.monotonic() < deadline):
        batch = to_device(collate(stream.next(), model.tokenizer.pad_token_id, model.is_encoder_decoder), model.device)
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            average.update()
        step += 1
        bar.update(1)
        if step % config.log_every == 0:
            append_jsonl(output / LOG_FILE, {"step": step, "loss": round(loss.item(), 5), "seconds": round(time.monotonic() - start_time, 2)})
            bar.set_postfix(loss=f"{loss.item():.3f}", **({"dev": f"{next(iter(best_metrics.values())):.3f}"} if best_metrics else {}))
        if step % config.eval_every == 0:
            run_eval()
        if step % config.checkpoint_every == 0:
            save_state()
    bar.close()
    if evaluated_at != step:
        run_eval()
    save_state()
    seconds = time.monotonic() - start_time
    write_json_atomic(output / RESULT_FILE, {"steps": step, "best_step": best_step, "best_metrics": best_metrics, "seconds": round(seconds, 1)})
    return TrainResult(output, step, best_step, best_metrics, seconds)
