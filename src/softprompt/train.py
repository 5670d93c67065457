"""The one prompt-tuning loop: Adafactor on the prompt alone, best prompt kept by dev metric.

A run lives in its output directory (run.py): `run.json` (the config), `checkpoint.pt`
(prompt, optimizer, data position, random states, best so far), `metrics.jsonl` (loss and
evaluations), and the best prompt as `prompt.safetensors` + `prompt.json`. `resume=True`
continues from the checkpoint and ends with the same prompt as an uninterrupted run.

With `select_examples`, the best step is chosen on examples held out of the training split and
the dev set is scored once at the end, at the chosen step and at the last one (`result.json`'s
`dev_best` / `dev_last`, each example's output in `dev_predictions.json`), so the reported dev
score was not used to choose the step.

`tune="model"` is the paper's model-tuning baseline: every backbone weight trains too (use a lower
lr, T5 fine-tuning's 1e-3, and `--prompt-length 0` for no prompt), and the best backbone is saved
in `backbone/` beside the prompt.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import TrainConfig, normalised
from .data import BatchStream, Features, collate, encode_all
from .device import autocast, enable_tf32, make_deterministic, to_device
from .distributed import SINGLE, World, barrier, join
from .errors import SoftpromptError
from .evaluate import evaluate
from .files import atomic_folder, write_json_atomic
from .model import TUNED_BACKBONE_DIR, PromptedModel, build_model
from .optim import WeightAverage, learning_rate, make_optimizer, trainable_parameters
from .prompt_io import WEIGHTS_NAME, load_prompt, save_prompt
from .run import RunDir, Stopper, seed_everything
from .sharding import check_shardable, shard_blocks
from .tasks import hold_out, load_task, require_examples, resolve_data_dir
from .trainer import Trainer, seed_rank

CHECKPOINT_FILE, PREDICTIONS_FILE = "checkpoint.pt", "dev_predictions.json"
# Fields that may change when a run is resumed; any other difference means a different run. The run directory and
# the data folder may move (another clone, another machine's mount of a shared filesystem): the run is the same.
# How the work is laid out (micro-batches, recomputed activations, determinism) changes rounding, not the run.
RESUMABLE_FIELDS = {"max_steps", "max_minutes", "eval_batch_size", "log_every", "device", "compile", "output", "data_dir",
                    "micro_batch_size", "gradient_checkpointing", "deterministic", "shard_backbone"}


@dataclass
class TrainResult:
    output: Path
    steps: int
    best_step: int
    best_metrics: dict[str, float]  # on the selection split (held-out training examples, else dev)
    seconds: float
    dev_best: dict[str, float] | None = None  # with select_examples: the full dev set at the best step
    dev_last: dict[str, float] | None = None  # ... and at the last step
    metric: str | None = None  # the task's primary metric, the one the best step was chosen by

    def __post_init__(self) -> None:
        if self.metric is None and self.best_metrics:
            self.metric = next(iter(self.best_metrics))


def upgraded_key(name: str) -> str:
    """A checkpoint's weight name as this version calls it: `PromptedModel.backbone` was renamed `base_model`."""
    return "base_model." + name[len("backbone."):] if name.startswith("backbone.") else name


def save_tuned_backbone(model: PromptedModel, directory: Path) -> None:
    """Model tuning's result: the whole backbone, replaced atomically."""
    with atomic_folder(directory) as tmp:
        model.base_model.save_pretrained(tmp)
        model.adapter.tokenizer.save_pretrained(tmp)


class Loop:
    """One run's moving parts, and the `Objective` the trainer calls; `train()` builds one and runs it."""

    def __init__(self, config: TrainConfig, resume: bool, progress: bool, world: World = SINGLE):
        self.config, self.progress, self.world = config, progress, world
        self.run = RunDir(config.output, normalised(config), RESUMABLE_FIELDS, resume,
                          markers=(CHECKPOINT_FILE, WEIGHTS_NAME), checkpoint_name=CHECKPOINT_FILE, writer=world.writer,
                          defaults=normalised(TrainConfig()))  # only fills fields a saved run.json lacks
        self.run.check()
        if config.deterministic:
            make_deterministic()
        self.task = load_task(config.task, config.task_spec)
        data_dir = resolve_data_dir(config.data_dir)
        load = self.task.load
        train_examples = require_examples(self.task, "train", data_dir, load("train", data_dir))
        self.select_examples = None
        if config.select_examples is not None:
            train_examples, self.select_examples = hold_out(train_examples, config.select_examples, self.task.describe("train", data_dir))
        self.train_examples = train_examples[: config.train_examples]
        self.dev_examples = require_examples(self.task, "validation", data_dir, load("validation", data_dir)[: config.eval_examples])
        if config.shard_backbone:
            selection = self.select_examples or []
            check_shardable(config.tune, config.eval_method, all(e.candidates for e in [*self.dev_examples, *selection]))
        seed_everything(config.seed)
        self.model, self.note = build_model(config, self.task)  # the checks that read the whole embedding run here, unsharded
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        if config.shard_backbone and shard_blocks(self.model.base_model, world, self.model.device):
            self.model.adapter.blocks_sharded = True
        self.name = self.task.name
        features = encode_all(self.model.adapter, self.name, self.model.bank[self.name], self.train_examples, f"{self.name} train")
        self.stream = BatchStream(features, config.batch_size, config.seed, config.group_by_length)
        params = trainable_parameters(self.model, config)
        self.lr = learning_rate(config, self.model.adapter)
        self.optimizer = make_optimizer(params, config, self.lr)
        self.average = WeightAverage(params, config.ema_decay) if config.ema_decay is not None else None
        self.trainer = Trainer(self.run, world, self.stream, self.optimizer, params,
                               micro_batch_size=config.micro_batch_size, device=self.model.device)
        self.module = self.trainer.wrap(self.model) if config.tune == "model" else self.model
        seed_rank(config.seed, world.rank)
        self.state = {"best_step": -1, "best_metrics": {}, "evaluated_at": -1, "final": None, "seconds": 0.0}
        self.clock: Stopper | None = None  # set by train(); a checkpoint keeps its elapsed time for the resumed call

    @property
    def step_count(self) -> int:
        return self.trainer.step_count

    def start(self) -> int:
        """Write the run directory and restore its checkpoint, if any; returns the checkpoint's step (or -1)."""
        saved = self.trainer.start(self)
        if saved is None:
            self.run.log({"step": 0, "lr": self.lr, "recipe": self.config.recipe})
        if self.note:
            if self.world.writer:
                print(f"softprompt: {self.note}", file=sys.stderr)
            self.run.log({"step": 0, "note": self.note})
        return -1 if saved is None else saved["step"]

    # ---- the Objective: what the trainer asks of this loop -------------------------------------------
    def nll(self, items: list[Features]) -> torch.Tensor:
        batch = to_device(collate(self.model.adapter, items), self.model.device)
        with autocast(self.config.precision, self.model.device):
            return self.module(batch, reduction="sum")

    def tokens(self, items: list[Features]) -> int:
        return sum(len(f.target_ids) for f in items)

    def after_step(self, step: int) -> None:
        if self.average is not None:
            self.average.update()

    def state_dict(self) -> dict:
        average = self.average
        if self.clock is not None:
            self.state["seconds"] = self.clock.elapsed()
        return {"trainable": {k: v.detach().cpu() for k, v in self.model.named_parameters() if v.requires_grad},
                "average": [t.cpu() for t in average.averages] if average is not None else None, **self.state}

    def load_state(self, saved: dict) -> None:
        """The checkpoint's trained weights, optimizer-side state and averages; a weight the model lacks is refused."""
        trainable = {upgraded_key(k): v for k, v in saved["trainable"].items()}
        expected = {k for k, v in self.model.named_parameters() if v.requires_grad}
        if set(trainable) != expected:
            odd = sorted(set(trainable) ^ expected)
            raise SoftpromptError(f"{self.run.checkpoint_path}: its trained weights are not this run's "
                                  f"({len(odd)} differ, e.g. {odd[0]!r}); choose another --output")
        self.model.load_state_dict(trainable, strict=False)
        self.state.update({k: saved[k] for k in self.state if k in saved})
        if self.average is not None:
            self.average.averages = [t.to(self.model.device) for t in saved["average"]]

    def scores(self, examples: list, outputs: dict[str, list[str]] | None = None) -> dict[str, float]:
        """The task's metrics on `examples` for the weights as they are now (each rank scores a share)."""
        self.model.eval()
        with autocast(self.config.precision, self.model.device):
            # a sharded backbone runs the same forwards on every rank, so each scores every example
            world = SINGLE if self.config.shard_backbone else self.world
            metrics = evaluate(self.model, self.task, examples, self.name, self.config.eval_method, self.config.eval_batch_size,
                               outputs=outputs, world=world)
        self.model.train()
        return metrics

    def evaluate(self, step: int | None = None) -> None:
        """Score the selection split (with the average swapped in, if any); keep the prompt if it is the best so far."""
        config, model, step = self.config, self.model, self.step_count
        self.state["evaluated_at"] = step
        with self.average.swapped_in() if self.average is not None else nullcontext():
            selection = self.select_examples if self.select_examples is not None else self.dev_examples
            metrics = self.scores(selection)
            self.run.log({"step": step, "eval": metrics, "split": "select" if self.select_examples is not None else "validation"})
            key, best = next(iter(metrics)), self.state["best_metrics"]
            if not best or metrics[key] > best[key]:
                self.state.update(best_step=step, best_metrics=metrics)
                if self.world.writer:
                    record = model.bank[self.name]
                    metadata = replace(record.metadata, step=step, metrics=metrics, backbone_fingerprint=model.adapter.fingerprint())
                    save_prompt(self.run.output, record.weight, metadata)
                    if config.tune == "model":
                        save_tuned_backbone(model, self.run.output / TUNED_BACKBONE_DIR)

    def score_dev(self) -> None:
        """The full dev set at the last step and at the chosen one (its weights read back from the saved files)."""
        step, best_step = self.step_count, self.state["best_step"]
        last_outputs: dict[str, list[str]] = {}
        best_outputs: dict[str, list[str]] = {}
        with self.average.swapped_in() if self.average is not None else nullcontext():
            last = self.scores(self.dev_examples, last_outputs)
        current = {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}
        barrier()  # rank 0 has saved the best weights before any rank reads them
        self.load_saved_best()
        best = self.scores(self.dev_examples, best_outputs)
        self.model.load_state_dict(current, strict=False)
        method = next(iter(last_outputs))
        if self.world.writer:
            write_json_atomic(self.run.output / PREDICTIONS_FILE, {
                "method": method, "best_step": best_step, "last_step": step, "targets": [e.target for e in self.dev_examples],
                "best": best_outputs[method], "last": last_outputs[method]})
        self.state["final"] = {"at": step, "dev_best": best, "dev_last": last}
        self.run.log({"step": step, "dev_best": best, "dev_last": last, "best_step": best_step})

    def load_saved_best(self) -> None:
        """Put the weights `evaluate` saved at the best step back into the model (the prompt; model tuning: the backbone too)."""
        weight, _ = load_prompt(self.run.output)
        with torch.no_grad():
            self.model.bank[self.name].weight.copy_(weight.to(self.model.device))
            if self.config.tune == "model":
                folder = self.run.output / TUNED_BACKBONE_DIR
                for path in sorted(folder.glob("*.safetensors")):
                    self.model.base_model.load_state_dict(load_file(str(path), device=str(self.model.device)), strict=False)

    def postfix(self) -> dict[str, str]:
        best = self.state["best_metrics"]
        return {"dev": f"{next(iter(best.values())):.3f}"} if best else {}


def enable_gradient_checkpointing(model: PromptedModel) -> None:
    """Recompute the backbone's activations in backward; non-reentrant, so gradients reach a prompt spliced into its input."""
    backbone = model.base_model
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise SoftpromptError(f"gradient_checkpointing: {model.adapter.name!r} ({type(backbone).__name__}) does not support it")
    backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Prompt-tune one task, on this process or on every process a launcher started (torchrun, srun).

    Raises SoftpromptError for bad input or a clashing output directory. Everything that can fail
    on bad input (task, data, backbone, lengths) is checked before the run directory is written,
    so a failed start leaves nothing behind. Resuming a finished run changes nothing.
    """
    world, device = join(config.device)
    if device != config.device:
        config = replace(config, device=device)
    loop = Loop(config, resume, progress, world)
    restored_step = loop.start()
    enable_tf32(loop.model.device)
    loop.model.train()
    trainer = loop.trainer
    stopper = Stopper(config.max_steps, config.max_minutes, trainer.step_count, f"train {loop.name}", progress and world.writer,
                      before=loop.state["seconds"])
    loop.clock = stopper
    trainer.fit(loop, stopper, config.log_every, config.eval_every, config.checkpoint_every, loop.postfix)
    stopper.close()
    changed = trainer.step_count != restored_step
    if loop.state["evaluated_at"] != trainer.step_count:
        loop.evaluate()
    final = loop.state["final"]
    if config.select_examples is not None and (final is None or final["at"] != trainer.step_count):
        loop.score_dev()
        changed = True
    if changed:
        trainer.save(loop)
    state, seconds, final = loop.state, stopper.elapsed(), loop.state["final"] or {}
    loop.run.write_result({"steps": trainer.step_count, "best_step": state["best_step"], "best_metrics": state["best_metrics"],
                           "metric": next(iter(state["best_metrics"]), None),
                           "seconds": round(seconds, 1), **({k: final[k] for k in ("dev_best", "dev_last")} if final else {})})
    return TrainResult(loop.run.output, trainer.step_count, state["best_step"], state["best_metrics"], seconds,
                       final.get("dev_best"), final.get("dev_last"))
