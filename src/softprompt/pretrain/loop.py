"""The one pretraining loop, for span corruption and for LM adaptation (prefix LM).

A call trains one stage into a run folder (checkpoint.py's `PretrainFolder`: a Hugging Face
checkpoint plus the trainer state, on the run component's `RunDir`), resuming it exactly when it
holds an unfinished run. Batches depend only on (seed, step), so the data position is the step.
The shared pieces decide the rest: the device and precision (device.py), the resume check, the
log and the writer rank (run.py's `RunDir`), the stop rule and progress bar, the step and the
random states of every rank (trainer.py).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from ..backbones.base import label_nll
from ..device import autocast, enable_tf32, pick_device, to_device, torch_dtype
from ..distributed import SINGLE, World, any_rank, barrier, join
from ..errors import SoftpromptError
from ..run import Stopper
from ..trainer import Trainer, check_world_size, restore_rank_random_states, saved_random_states
from . import presets
from . import tokenizer as tok_lib
from .batches import WindowSampler, eval_batches, make_batch, prefetched, rows, stack
from .checkpoint import STATE_FORMAT, PretrainFolder, check_vocab, is_complete, load_model, read_summary, save_snapshot
from .config import PretrainConfig
from .corpus import CorpusCache, load_cache
from .evaluation import evaluate
from .objectives import Batch, PrefixLM, SpanCorruption, SpanCorruptionConfig
from .optimizer import make_optimizer, make_schedule


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def forward_precision(precision: str, device: torch.device) -> str:
    """The autocast precision of `precision` on `device` ("auto": bf16 on CUDA where supported, else fp32).

    Raises SoftpromptError where the device cannot run it (fp16 on the CPU, bf16 on an old GPU).
    """
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    torch_dtype(precision, device)
    return precision


def make_objective(config: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> SpanCorruption | PrefixLM:
    if config.objective == "span-corruption":
        return SpanCorruption(config.inputs_length, tok_lib.sentinel_id(tokenizer, 0), tokenizer.eos_token_id,
                              tok_lib.num_sentinels(tokenizer),
                              SpanCorruptionConfig(config.noise_density, config.mean_noise_span_length))
    return PrefixLM(config.inputs_length, config.targets_length, tokenizer.eos_token_id, tokenizer.pad_token_id)


# --- starting or resuming --------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything a training call works on; the counters are saved in the trainer state."""

    config: PretrainConfig
    folder: PretrainFolder
    model: T5ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    precision: str
    cache: CorpusCache | None = None
    cache_dir: str = ""
    init_from: str | None = None
    step: int = 0
    input_tokens: int = 0
    target_tokens: int = 0
    elapsed_s: float = 0.0


def _resume(config: PretrainConfig, folder: PretrainFolder, device: torch.device, precision: str,
            world: World) -> tuple[_Run, dict]:
    """The unfinished run in `folder` and its trainer state; refuses one saved by another number of processes.

    Its settings were checked against `config` by `folder.check()`; rank 0 trims the log to the checkpoint.
    """
    state = folder.start(check=lambda saved: check_world_size(saved, world, folder.checkpoint_path))
    out_dir = folder.output
    run = _Run(config, folder, load_model(out_dir), tok_lib.load_tokenizer(out_dir), device, precision,
               init_from=state.get("init_from"), step=state["step"], input_tokens=state["input_tokens"],
               target_tokens=state["target_tokens"], elapsed_s=state["elapsed_s"])
    return run, state


def _new(config: PretrainConfig, folder: PretrainFolder, device: torch.device, precision: str,
         tokenizer_dir: str | os.PathLike | None, init_from: str | os.PathLike | None) -> _Run:
    """A new run (its folder not yet made: `pretrain` makes it once every input is checked)."""
    if config.objective == "lm-adapt" and init_from is None:
        raise SoftpromptError("PretrainConfig.objective='lm-adapt' needs init_from: a span-corruption checkpoint folder")
    tokenizer_dir = tokenizer_dir if tokenizer_dir is not None else init_from
    if tokenizer_dir is None:
        raise SoftpromptError("pretrain needs tokenizer_dir (or init_from, a checkpoint holding its tokenizer)")
    model = load_model(init_from) if init_from is not None else None
    tokenizer = tok_lib.load_tokenizer(tokenizer_dir)
    if model is None:
        model = presets.build_model(config.model, len(tokenizer), config.seed)
    check_vocab(model, tokenizer, f"tokenizer {tokenizer_dir}, model {init_from or 'new ' + config.model}")
    return _Run(config, folder, model, tokenizer, device, precision, init_from=str(init_from) if init_from else None)


def _start(config: PretrainConfig, cache_dir: str | os.PathLike, out_dir: Path, tokenizer_dir: str | os.PathLike | None,
           init_from: str | os.PathLike | None, world: World, device_name: str) -> tuple[_Run, dict | None]:
    """Load a run to resume, or set up a new one (its folder not yet made); returns (run, trainer state or None).

    Raises SoftpromptError for a folder that holds something else, or a run started with other settings.
    """
    device = pick_device(device_name)
    precision = forward_precision(config.precision, device)
    folder = PretrainFolder(out_dir, asdict(config), writer=world.writer)
    folder.check()
    if folder.started:
        run, state = _resume(config, folder, device, precision, world)
        check_vocab(run.model, run.tokenizer, str(out_dir))
    else:
        run, state = _new(config, folder, device, precision, tokenizer_dir, init_from), None
    folder.model, folder.tokenizer = run.model, run.tokenizer
    run.cache, run.cache_dir = load_cache(cache_dir, run.tokenizer), str(cache_dir)
    return run, state


# --- training --------------------------------------------------------------------------------------


class _Trainer:
    """One call's training: optimizer, schedule, loss scaler, the steps, logging, evaluation, checkpoints."""

    def __init__(self, run: _Run, state: dict | None, objective: SpanCorruption | PrefixLM, val_batches: list[Batch],
                 world: World = SINGLE):
        c = run.config
        self.run, self.objective, self.val_batches, self.world = run, objective, val_batches, world
        self.sampler = WindowSampler(run.cache.train, objective.window_length, c.batch_size, c.seed)
        self.model = run.model.to(run.device).train()
        enable_tf32(run.device)
        self.optimizer = make_optimizer(self.model, c, run.device)
        self.schedule = make_schedule(self.optimizer, c)
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")  # fp16 needs loss scaling
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            restore_rank_random_states(state, world)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # The one trainer's step (each rank's share of the batch, loss over the global batch's target tokens, backward,
        # DDP's reduction, loss scaling, clipping); this loop keeps its own folder format and schedule.
        self.trainer = Trainer(None, world, None, self.optimizer, self.params, grad_clip=c.grad_clip, device=run.device,
                               scaler=self.scaler)
        module = self.trainer.wrap(self.model)  # DistributedDataParallel on several ranks
        self.forward = torch.compile(module) if c.compile else module
        self.loss_sum, self.loss_count = torch.zeros((), device=run.device), 0
        self.window_tokens = 0  # tokens of this call's batches, for the speed

    def state(self) -> dict[str, Any]:
        run = self.run
        return {"format": STATE_FORMAT, "step": run.step, "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                **saved_random_states(self.world),  # a collective: all ranks call state()
                "config": asdict(run.config), "input_tokens": run.input_tokens, "target_tokens": run.target_tokens,
                "elapsed_s": run.elapsed_s, "init_from": run.init_from}

    def checkpoint(self, summary: dict | None = None) -> None:
        """Every rank's random state is gathered (a collective), rank 0 writes; the summary after the checkpoint it describes."""
        self.run.folder.save_checkpoint(self.state())
        if summary is not None:
            self.run.folder.write_result(summary)

    def record(self, entry: dict) -> None:
        self.run.folder.log(entry)

    def evaluate(self) -> dict:
        run = self.run
        return {"step": run.step, **evaluate(self.model, self.val_batches, run.device, run.precision)}

    def make(self, step: int) -> Batch:
        return make_batch(self.sampler, self.objective, step)

    # ---- the trainer's Objective: a batch's summed NLL and its target tokens; the schedule after each step ----
    def nll(self, items: list[Batch]) -> torch.Tensor:
        run = self.run
        batch = to_device(stack(items), run.device)
        labels = batch["labels"]
        with autocast(run.precision, run.device):
            logits = self.forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  decoder_input_ids=self.model.prepare_decoder_input_ids_from_labels(labels=labels)).logits
        return label_nll(logits, labels)[0].sum()  # (b, m, V) against (b, m) -> summed over every target token

    def tokens(self, items: list[Batch]) -> int:
        return sum(int((row["labels"] != -100).sum()) for row in items)

    def after_step(self, step: int) -> None:
        self.schedule.step()

    def step(self, batch: Batch) -> None:
        """One optimizer step on `batch` (on the CPU still); counts its tokens and adds its loss to the running mean."""
        run = self.run
        inputs, targets = int(batch["attention_mask"].sum()), int((batch["labels"] != -100).sum())
        run.input_tokens, run.target_tokens = run.input_tokens + inputs, run.target_tokens + targets
        self.window_tokens += inputs + targets
        self.loss_sum += self.trainer.step(self, rows(batch))
        self.loss_count += 1

    def mean_loss(self) -> float:
        """The mean loss since the last call, which starts a new mean."""
        loss = float(self.loss_sum) / self.loss_count
        self.loss_sum, self.loss_count = torch.zeros((), device=self.run.device), 0
        return loss

    def train(self, last: int) -> tuple[float | None, dict]:
        """Steps run.step .. last-1, or until the wall-clock limit; returns (last train loss, last evaluation)."""
        run, c = self.run, self.run.config
        stopper = Stopper(last, c.max_minutes, run.step, c.objective, c.progress and self.world.writer)
        session_start_s, train_loss, evaluation = run.elapsed_s, None, {}
        try:
            for step, batch in prefetched(self.make, run.step, last, c.prefetch):
                self.step(batch)
                run.step, run.elapsed_s = step + 1, session_start_s + stopper.elapsed()
                if run.step % c.log_every == 0 or run.step == last:
                    train_loss = self.mean_loss()
                    self.record({"step": run.step, "loss": train_loss, "lr": self.schedule.get_last_lr()[0],
                                 "tokens_per_s": self.window_tokens / max(1e-9, stopper.elapsed()), "elapsed_s": run.elapsed_s})
                    stopper.advance(run.step, loss=f"{train_loss:.3f}")
                else:
                    stopper.advance(run.step)
                if run.step % c.eval_every == 0 and run.step < last:
                    evaluation = self.evaluate()
                    self.record(evaluation)
                    if c.progress and self.world.writer:  # beside the bar, on stderr: stdout is the caller's
                        stopper.bar.write(f"step {run.step}: val loss {evaluation['val_loss']:.3f}, "
                                          f"encoder gap {evaluation['encoder_gap']:.3f}", file=sys.stderr)
                if any_rank(stopper.should_stop(run.step), run.device):  # one decision, so no rank waits for a peer
                    break
                if run.step % c.checkpoint_every == 0:
                    self.checkpoint()
                if c.snapshot_every and run.step % c.snapshot_every == 0 and self.world.writer:
                    save_snapshot(run.folder.output, self.model, run.tokenizer, run.step, c.objective)
        finally:
            stopper.close()
        if self.loss_count:  # steps since the last record, when stopped early
            train_loss = self.mean_loss()
        return train_loss, evaluation


# --- one call --------------------------------------------------------------------------------------


def _validation_batches(run: _Run, objective: SpanCorruption | PrefixLM, cache_dir: str | os.PathLike) -> list[Batch]:
    c = run.config
    batches = eval_batches(run.cache.val, objective, objective.window_length, c.batch_size, c.eval_batches)
    if not batches:
        raise SoftpromptError(f"{cache_dir}: validation slice of {run.cache.val.size} tokens is shorter than one window "
                              f"({objective.window_length} tokens)")
    return batches


def _summary(run: _Run, complete: bool, train_loss: float | None, evaluation: dict, window_length: int,
             command: str) -> dict:
    c = run.config
    corpus_tokens = run.step * c.batch_size * window_length
    return {
        "complete": complete,
        "objective": c.objective,
        "steps": run.step,
        "planned_steps": c.steps,
        "tokens_seen": {"inputs": run.input_tokens, "targets": run.target_tokens, "corpus": corpus_tokens},
        "epochs": corpus_tokens / max(1, run.cache.meta["tokens"]["train"]),
        "final_train_loss": train_loss,
        **evaluation,
        "wall_time_s": run.elapsed_s,
        "tokens_per_s": (run.input_tokens + run.target_tokens) / max(run.elapsed_s, 1e-9),
        "device": device_name(run.device),
        "precision": run.precision,
        "parameters": presets.count_parameters(run.model),
        "architecture": {k: getattr(run.model.config, k) for k in
                         ("vocab_size", "d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads",
                          "feed_forward_proj", "tie_word_embeddings")},
        "init_from": run.init_from,
        "cache": {"folder": run.cache_dir, "tokens": run.cache.meta["tokens"], "sources": len(run.cache.meta["sources"])},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "config": asdict(c),
        "command": command,
    }


def pretrain(config: PretrainConfig, cache_dir: str | os.PathLike, out_dir: str | os.PathLike,
             tokenizer_dir: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
             stop_at: int | None = None, command: str = "") -> dict:
    """Train one stage into `out_dir`, resuming it exactly if it holds an unfinished run; returns the summary.

    A complete run is not trained again. `init_from`: a checkpoint to start from (required for
    lm-adapt, which also takes its tokenizer from it). `stop_at`: stop after this step (as the
    wall-clock limit does), checkpointed so a later call continues.
    Raises SoftpromptError for a bad setting, a folder that is not a checkpoint or cache, a
    tokenizer whose ids do not match the model's embedding rows or the cache, or a run started with other settings.
    """
    config = replace(config)  # checks the settings again, in case a field was changed after the config was made
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return read_summary(out_dir)
    world, device_name = join(config.device)
    run, state = _start(config, cache_dir, out_dir, tokenizer_dir, init_from, world, device_name)
    objective = make_objective(config, run.tokenizer)
    trainer = _Trainer(run, state, objective, _validation_batches(run, objective, cache_dir), world)
    if state is None:  # every input checked: only now is a new run's folder made (by rank 0)
        run.folder.start()
    barrier()
    last = min(config.steps, stop_at) if stop_at is not None else config.steps
    train_loss, evaluation = trainer.train(last)
    if evaluation.get("step") != run.step:
        evaluation = trainer.evaluate()
        trainer.record(evaluation)
    summary = _summary(run, run.step >= config.steps, train_loss, {k: v for k, v in evaluation.items() if k != "step"},
                       objective.window_length, command)
    trainer.checkpoint(summary)
    barrier()  # the folder is whole before any rank returns
    return summary
