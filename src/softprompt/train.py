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
from .data import BatchStream, collate, encode_all
from .device import autocast, enable_tf32, to_device
from .evaluate import evaluate
from .files import atomic_folder, write_json_atomic
from .model import TUNED_BACKBONE_DIR, PromptedModel, build_model
from .optim import WeightAverage, learning_rate, make_optimizer, trainable_parameters
from .prompt_io import WEIGHTS_NAME, load_prompt, save_prompt
from .run import RunDir, Stopper, random_states, restore_random_states, seed_everything
from .tasks import hold_out, load_task, require_examples, resolve_data_dir

CHECKPOINT_FILE, PREDICTIONS_FILE = "checkpoint.pt", "dev_predictions.json"
# Fields that may change when a run is resumed; any other difference means a different run. The run directory and
# the data folder may move (another clone, another machine's mount of a shared filesystem): the run is the same.
RESUMABLE_FIELDS = {"max_steps", "max_minutes", "eval_batch_size", "log_every", "device", "compile", "output", "data_dir"}


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


def save_tuned_backbone(model: PromptedModel, directory: Path) -> None:
    """Model tuning's result: the whole backbone, replaced atomically."""
    with atomic_folder(directory) as tmp:
        model.backbone.save_pretrained(tmp)
        model.adapter.tokenizer.save_pretrained(tmp)


class Loop:
    """One run's moving parts; `train()` builds one and runs it. Each method is one phase."""

    def __init__(self, config: TrainConfig, resume: bool, progress: bool):
        self.config, self.progress = config, progress
        self.run = RunDir(config.output, normalised(config), RESUMABLE_FIELDS, resume,
                          markers=(CHECKPOINT_FILE, WEIGHTS_NAME), checkpoint_name=CHECKPOINT_FILE)
        self.run.check()
        self.task = load_task(config.task, config.task_spec)
        data_dir = resolve_data_dir(config.data_dir)
        load = self.task.load
        train_examples = require_examples(self.task, "train", data_dir, load("train", data_dir))
        self.select_examples = None
        if config.select_examples is not None:
            train_examples, self.select_examples = hold_out(train_examples, config.select_examples, self.task.describe("train", data_dir))
        self.train_examples = train_examples[: config.train_examples]
        self.dev_examples = require_examples(self.task, "validation", data_dir, load("validation", data_dir)[: config.eval_examples])
        seed_everything(config.seed)
        self.model, self.note = build_model(config, self.task)
        self.name = self.task.name
        features = encode_all(self.model.adapter, self.name, self.model.bank[self.name], self.train_examples, f"{self.name} train")
        self.stream = BatchStream(features, config.batch_size, config.seed, config.group_by_length)
        params = trainable_parameters(self.model, config)
        self.lr = learning_rate(config, self.model.adapter)
        self.optimizer = make_optimizer(params, config, self.lr)
        self.average = WeightAverage(params, config.ema_decay) if config.ema_decay is not None else None
        self.state = {"step": 0, "best_step": -1, "best_metrics": {}, "evaluated_at": -1, "final": None}

    def start(self) -> int:
        """Write the run directory and restore its checkpoint, if any; returns the checkpoint's step (or -1)."""
        saved = self.run.start()
        if saved is None:
            self.run.log({"step": 0, "lr": self.lr, "recipe": self.config.recipe})
        if self.note:
            print(f"softprompt: {self.note}", file=sys.stderr)
            self.run.log({"step": 0, "note": self.note})
        if saved is None:
            return -1
        self.model.load_state_dict(saved["trainable"], strict=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state.update({k: saved[k] for k in self.state if k in saved})
        self.stream.seek(*saved["position"])
        restore_random_states(saved["random"])
        if self.average is not None:
            self.average.averages = [t.to(self.model.device) for t in saved["average"]]
        return saved["step"]

    def save_state(self) -> None:
        model, average = self.model, self.average
        self.run.save_checkpoint({
            "trainable": {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad},
            "optimizer": self.optimizer.state_dict(), **self.state,
            "position": self.stream.position(), "random": random_states(),
            "average": [t.cpu() for t in average.averages] if average is not None else None,
        })

    def scores(self, examples: list, outputs: dict[str, list[str]] | None = None) -> dict[str, float]:
        """The task's metrics on `examples` for the weights as they are now."""
        self.model.eval()
        with autocast(self.config.precision, self.model.device):
            metrics = evaluate(self.model, self.task, examples, self.name, self.config.eval_method, self.config.eval_batch_size,
                               outputs=outputs)
        self.model.train()
        return metrics

    def evaluate(self) -> None:
        """Score the selection split (with the average swapped in, if any); keep the prompt if it is the best so far."""
        config, model, step = self.config, self.model, self.state["step"]
        self.state["evaluated_at"] = step
        with self.average.swapped_in() if self.average is not None else nullcontext():
            selection = self.select_examples if self.select_examples is not None else self.dev_examples
            metrics = self.scores(selection)
            self.run.log({"step": step, "eval": metrics, "split": "select" if self.select_examples is not None else "validation"})
            key, best = next(iter(metrics)), self.state["best_metrics"]
            if not best or metrics[key] > best[key]:
                self.state.update(best_step=step, best_metrics=metrics)
                record = model.bank[self.name]
                metadata = replace(record.metadata, step=step, metrics=metrics, backbone_fingerprint=model.adapter.fingerprint())
                save_prompt(self.run.output, record.weight, metadata)
                if config.tune == "model":
                    save_tuned_backbone(model, self.run.output / TUNED_BACKBONE_DIR)

    def score_dev(self) -> None:
        """The full dev set at the last step and at the chosen one (its weights read back from the saved files)."""
        step, best_step = self.state["step"], self.state["best_step"]
        last_outputs: dict[str, list[str]] = {}
        best_outputs: dict[str, list[str]] = {}
        with self.average.swapped_in() if self.average is not None else nullcontext():
            last = self.scores(self.dev_examples, last_outputs)
        current = {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}
        self.load_saved_best()
        best = self.scores(self.dev_examples, best_outputs)
        self.model.load_state_dict(current, strict=False)
        method = next(iter(last_outputs))
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
                    self.model.backbone.load_state_dict(load_file(str(path), device=str(self.model.device)), strict=False)

    def step(self) -> float:
        """One optimizer step on the next batch; returns its loss."""
        batch = to_device(collate(self.model.adapter, self.stream.next()), self.model.device)
        with autocast(self.config.precision, self.model.device):
            loss = self.model(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update()
        self.state["step"] += 1
        return loss.item()

    def loop(self, stopper: Stopper) -> None:
        config = self.config
        while not stopper.should_stop(self.state["step"]):
            loss = self.step()
            step = self.state["step"]
            if step % config.log_every == 0:
                self.run.log({"step": step, "loss": round(loss, 5), "seconds": round(stopper.elapsed(), 2)})
                best = self.state["best_metrics"]
                stopper.advance(step, loss=f"{loss:.3f}", **({"dev": f"{next(iter(best.values())):.3f}"} if best else {}))
            else:
                stopper.advance(step)
            if step % config.eval_every == 0:
                self.evaluate()
            if step % config.checkpoint_every == 0:
                self.save_state()


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Prompt-tune one task. Raises SoftpromptError for bad input or a clashing output directory.

    Everything that can fail on bad input (task, data, backbone, lengths) is checked before the
    run directory is written, so a failed start leaves nothing behind. Resuming a finished run
    changes nothing.
    """
    loop = Loop(config, resume, progress)
    restored_step = loop.start()
    enable_tf32(loop.model.device)
    loop.model.train()
    stopper = Stopper(config.max_steps, config.max_minutes, loop.state["step"], f"train {loop.name}", progress)
    loop.loop(stopper)
    stopper.close()
    changed = loop.state["step"] != restored_step
    if loop.state["evaluated_at"] != loop.state["step"]:
        loop.evaluate()
    final = loop.state["final"]
    if config.select_examples is not None and (final is None or final["at"] != loop.state["step"]):
        loop.score_dev()
        changed = True
    if changed:
        loop.save_state()
    state, seconds, final = loop.state, stopper.elapsed(), loop.state["final"] or {}
    loop.run.write_result({"steps": state["step"], "best_step": state["best_step"], "best_metrics": state["best_metrics"],
                           "metric": next(iter(state["best_metrics"]), None),
                           "seconds": round(seconds, 1), **({k: final[k] for k in ("dev_best", "dev_last")} if final else {})})
    return TrainResult(loop.run.output, state["step"], state["best_step"], state["best_metrics"], seconds,
                       final.get("dev_best"), final.get("dev_last"))
