"""The one pretraining loop, for span corruption and for LM adaptation (prefix LM).

Run folder (`out_dir`), a Hugging Face checkpoint that `from_pretrained` loads directly:
  config.json, model.safetensors, generation_config.json   the model (save_pretrained)
  tokenizer.json, tokenizer_config.json                      its tokenizer
  trainer_state.pt        optimizer, schedule, step, RNG, token counts, elapsed time: `resume` is exact
  train_log.jsonl         {"step", "loss", "lr", ...} every `log_every` steps; eval records add "val_loss" etc.
  pretrain_summary.json   written with the last checkpoint of a call; "complete": true once all steps ran
Each checkpoint is built in a temporary folder and swapped in by rename, so a crash leaves the
previous checkpoint whole. Batches depend only on (seed, step), so the data position is the step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from ..errors import SoftpromptError
from ..files import append_jsonl, atomic_folder, recover_folder, write_json_atomic, write_text_atomic
from . import presets
from . import tokenizer as tok_lib
from .batches import WindowSampler, eval_batches, make_batch, prefetched
from .corpus import CorpusCache, load_cache
from .objectives import Batch, PrefixLM, SpanCorruption, SpanCorruptionConfig
from .optimizer import AdamWScale

OBJECTIVES = ("span-corruption", "lm-adapt")
STATE_FILE, LOG_FILE, SUMMARY_FILE = "trainer_state.pt", "train_log.jsonl", "pretrain_summary.json"
STATE_FORMAT = 1
# Settings that may change when a run is resumed: they do not change which updates are made.
RESUMABLE = {"max_minutes", "device", "compile", "prefetch", "progress", "log_every", "eval_every",
             "eval_batches", "checkpoint_every"}


@dataclass
class PretrainConfig:
    """One pretraining stage; saved in pretrain_summary.json and trainer_state.pt."""

    objective: str = "span-corruption"  # or "lm-adapt" (prefix LM from an existing checkpoint; Lester et al. 2021)
    model: str = "micro"  # size preset for a new model (presets.PRESETS); lm-adapt keeps its checkpoint's size
    steps: int = 20_000  # optimizer steps, also the length of the cosine schedule
    batch_size: int = 128  # sequences per step (T5: 128)
    inputs_length: int = 256  # encoder tokens incl. </s> (T5: 512; 256 keeps small-model pretraining cheap)
    targets_length: int = 256  # lm-adapt only: continuation + </s>; span corruption derives its own (58 for 256)
    noise_density: float = 0.15  # span corruption (T5)
    mean_noise_span_length: float = 3.0  # span corruption (T5)
    optimizer: str = "adamw-scale"  # AdamW with Adafactor-style relative steps (optimizer.py; nanoT5), or "adamw"
    lr: float = 2e-2  # peak rate, relative for adamw-scale (nanoT5; beat 1e-2 in a 1k-step H200 check). Plain adamw: ~1e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * 0.1 (Hoffmann et al. 2022)
    warmup_steps: int = 1000  # linear warmup from 0 (T5: 10k steps of constant 1e-2, then inverse-sqrt decay)
    weight_decay: float = 0.0  # T5 and nanoT5 use none; applied to matrices only, not norms or position biases
    beta1: float = 0.9  # Adam
    beta2: float = 0.999  # Adam, nanoT5
    eps: float = 1e-8  # Adam
    grad_clip: float = 1.0  # global norm
    seed: int = 0  # model init, window order, noise masks
    log_every: int = 50  # steps per train_log.jsonl record
    eval_every: int = 2000  # steps between validation passes (and always at the end)
    eval_batches: int = 10  # validation batches per pass
    checkpoint_every: int = 1000  # steps between checkpoints (and always at the end)
    max_minutes: float | None = None  # wall-clock limit for this call: stop cleanly, checkpoint, resume later
    device: str = "auto"  # "auto": cuda if available, else cpu
    compile: bool = False  # torch.compile the training forward
    prefetch: int = 4  # batches built ahead in a background thread (0: none)
    progress: bool = True  # tqdm bar


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SoftpromptError(f"PretrainConfig.device={name!r} but no CUDA device is available")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def validate(config: PretrainConfig) -> None:
    """Raises SoftpromptError naming the first bad field."""
    if config.objective not in OBJECTIVES:
        raise SoftpromptError(f"PretrainConfig.objective={config.objective!r}; use one of {OBJECTIVES}")
    for name in ("steps", "batch_size", "inputs_length", "targets_length", "log_every", "eval_every",
                 "eval_batches", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise SoftpromptError(f"PretrainConfig.{name}={getattr(config, name)} must be at least 1")
    if config.optimizer not in OPTIMIZERS:
        raise SoftpromptError(f"PretrainConfig.optimizer={config.optimizer!r}; use one of {sorted(OPTIMIZERS)}")
    if not 0 < config.noise_density < 0.5:
        raise SoftpromptError(f"PretrainConfig.noise_density={config.noise_density} must be in (0, 0.5)")
    presets.preset(config.model)


# --- model, tokenizer, objective -------------------------------------------------------------------


def is_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in weights)


def load_model(folder: str | os.PathLike) -> T5ForConditionalGeneration:
    """A T5 checkpoint in fp32. Raises SoftpromptError if `folder` is not one."""
    if not is_checkpoint(folder):
        raise SoftpromptError(f"{folder}: not a model checkpoint (config.json and model weights expected)")
    model_type = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "t5":
        raise SoftpromptError(f"{Path(folder) / 'config.json'}: model_type {model_type!r}, pretraining needs 't5'")
    return T5ForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)


def check_vocab(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """The model's embedding rows must be the tokenizer's ids; raises SoftpromptError otherwise."""
    rows = model.get_input_embeddings().num_embeddings
    if rows != len(tokenizer):
        raise SoftpromptError(f"{where}: tokenizer has {len(tokenizer)} ids but the model's embedding has {rows} rows")


def make_objective(config: PretrainConfig, tokenizer: PreTrainedTokenizerBase) -> SpanCorruption | PrefixLM:
    if config.objective == "span-corruption":
        return SpanCorruption(config.inputs_length, tok_lib.sentinel_id(tokenizer, 0), tokenizer.eos_token_id,
                              tok_lib.num_sentinels(tokenizer),
                              SpanCorruptionConfig(config.noise_density, config.mean_noise_span_length))
    return PrefixLM(config.inputs_length, config.targets_length, tokenizer.eos_token_id, tokenizer.pad_token_id)


# --- optimisation ----------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, config: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "relative_attention_bias" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[config.optimizer](groups, config, device)


OPTIMIZERS = {
    "adamw-scale": lambda groups, c, device: AdamWScale(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps),
    "adamw": lambda groups, c, device: torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps,
                                                         fused=device.type == "cuda"),
}


def lr_factor(step: int, config: PretrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_schedule(optimizer: torch.optim.Optimizer, config: PretrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --- evaluation ------------------------------------------------------------------------------------


def _mean_loss(model: torch.nn.Module, batches: list[Batch], device: torch.device, shuffle_encoder: bool) -> float:
    total, count = 0.0, 0
    for batch in batches:
        batch = to_device(batch, device)
        if shuffle_encoder:  # pair every target with another row's input
            batch = {**batch, "input_ids": batch["input_ids"].roll(1, 0), "attention_mask": batch["attention_mask"].roll(1, 0)}
        with autocast(device):
            loss = model(**batch).loss
        n = int((batch["labels"] != -100).sum())
        total, count = total + float(loss) * n, count + n
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Batch], device: torch.device) -> dict[str, float]:
    """Validation loss and perplexity, and the encoder-dependence check.

    `encoder_gap` = loss with encoder inputs shuffled across the batch - loss with the true inputs.
    A decoder that ignores its encoder has a gap near 0, and such a backbone is useless for prompt tuning.
    """
    was_training = model.training
    model.eval()
    val = _mean_loss(model, batches, device, shuffle_encoder=False)
    shuffled = _mean_loss(model, batches, device, shuffle_encoder=True) if batches[0]["input_ids"].shape[0] > 1 else float("nan")
    model.train(was_training)
    return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0)), "val_loss_shuffled_encoder": shuffled,
            "encoder_gap": shuffled - val}


# --- run folder ------------------------------------------------------------------------------------


def is_run(out_dir: str | os.PathLike) -> bool:
    recover_folder(out_dir)
    return (Path(out_dir) / STATE_FILE).is_file()


def read_summary(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_complete(out_dir: str | os.PathLike) -> bool:
    summary = read_summary(out_dir) if is_run(out_dir) else None
    return bool(summary and summary.get("complete"))


def read_log(out_dir: Path, up_to_step: int) -> list[dict]:
    """Log records of a run up to its checkpoint (lines written after it are dropped, they will be redone)."""
    path = out_dir / LOG_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r.get("step", 0) <= up_to_step]


def _log_text(log: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in log)


def save_checkpoint(out_dir: Path, model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerBase,
                    state: dict, log: list[dict], summary: dict | None = None) -> None:
    """Model, tokenizer, trainer state, log (and summary) in a temporary folder, then swapped in."""
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok_lib.save_tokenizer(tokenizer, tmp)
        torch.save(state, tmp / STATE_FILE)
        (tmp / LOG_FILE).write_text(_log_text(log), encoding="utf-8")
        if summary is not None:
            write_json_atomic(tmp / SUMMARY_FILE, summary)


def package_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Copy a finished checkpoint in float16 with its model card and summary, for shipping inside the package.

    Half precision halves the size; `softprompt.backbones.load_backbone` reads it back as float32.
    Raises SoftpromptError if `checkpoint` is not a checkpoint.
    """
    model, checkpoint = load_model(checkpoint), Path(checkpoint)
    with atomic_folder(out_dir) as tmp:
        model.to(torch.float16).save_pretrained(tmp)
        tok_lib.save_tokenizer(tok_lib.load_tokenizer(checkpoint), tmp)
        for name in ("README.md", SUMMARY_FILE, LOG_FILE):
            if (checkpoint / name).is_file():
                (tmp / name).write_bytes((checkpoint / name).read_bytes())
    return Path(out_dir)


def _config_differences(saved: dict, config: PretrainConfig) -> list[str]:
    current = json.loads(json.dumps(asdict(config)))
    return [k for k in current if k not in RESUMABLE and saved.get(k) != current[k]]


def _prepare_out_dir(out_dir: Path) -> None:
    """A new run may start in a missing or empty folder, or one holding only the log of a run that never checkpointed."""
    if out_dir.exists() and any(p.name != LOG_FILE for p in out_dir.iterdir()):
        raise SoftpromptError(f"{out_dir}: exists and is not a pretraining run ({STATE_FILE} missing); choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / LOG_FILE).unlink(missing_ok=True)


# --- the loop --------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything a training call works on."""

    config: PretrainConfig
    out_dir: Path
    model: T5ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    cache: CorpusCache
    device: torch.device
    step: int = 0
    input_tokens: int = 0
    target_tokens: int = 0
    elapsed_s: float = 0.0
    init_from: str | None = None
    cache_dir: str = ""


def _start(config: PretrainConfig, cache_dir: str | os.PathLike, out_dir: Path, tokenizer_dir: str | os.PathLike | None,
           init_from: str | os.PathLike | None) -> tuple[_Run, dict | None, list[dict]]:
    """Load a run to resume, or set up a new one; returns (run, trainer state or None, log records)."""
    device = resolve_device(config.device)
    if is_run(out_dir):
        state = torch.load(out_dir / STATE_FILE, map_location="cpu", weights_only=True)
        changed = _config_differences(state["config"], config)
        if changed:
            raise SoftpromptError(f"{out_dir / STATE_FILE}: run was started with other settings ({', '.join(changed)}); "
                                  "use a new output folder or the same settings")
        model, tokenizer = load_model(out_dir), tok_lib.load_tokenizer(out_dir)
        init = state.get("init_from")
        log = read_log(out_dir, state["step"])
        write_text_atomic(out_dir / LOG_FILE, _log_text(log))  # drop lines written after the checkpoint
        run = _Run(config, out_dir, model, tokenizer, None, device, state["step"], state["input_tokens"],
                   state["target_tokens"], state["elapsed_s"], init, str(cache_dir))
    else:
        if config.objective == "lm-adapt" and init_from is None:
            raise SoftpromptError("PretrainConfig.objective='lm-adapt' needs init_from: a span-corruption checkpoint folder")
        tokenizer_dir = tokenizer_dir if tokenizer_dir is not None else init_from
        if tokenizer_dir is None:
            raise SoftpromptError("pretrain needs tokenizer_dir (or init_from, a checkpoint holding its tokenizer)")
        model = load_model(init_from) if init_from is not None else None
        tokenizer = tok_lib.load_tokenizer(tokenizer_dir)
        if model is None:
            model = presets.build_model(config.model, len(tokenizer), config.seed)
        _prepare_out_dir(out_dir)
        state, log = None, []
        run = _Run(config, out_dir, model, tokenizer, None, device, init_from=str(init_from) if init_from else None,
                   cache_dir=str(cache_dir))
    where = str(out_dir) if state is not None else f"tokenizer {tokenizer_dir}, model {init_from or 'new ' + config.model}"
    check_vocab(run.model, run.tokenizer, where)
    run.cache = load_cache(cache_dir, run.tokenizer)
    return run, state, log


def _trainer_state(run: _Run, optimizer: torch.optim.Optimizer, schedule: Any) -> dict:
    return {
        "format": STATE_FORMAT,
        "step": run.step,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": json.loads(json.dumps(asdict(run.config))),
        "input_tokens": run.input_tokens,
        "target_tokens": run.target_tokens,
        "elapsed_s": run.elapsed_s,
        "init_from": run.init_from,
    }


def _restore(state: dict, optimizer: torch.optim.Optimizer, schedule: Any) -> None:
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])


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
    validate(config)
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return read_summary(out_dir)
    run, state, log = _start(config, cache_dir, out_dir, tokenizer_dir, init_from)
    objective = make_objective(config, run.tokenizer)
    sampler = WindowSampler(run.cache.train, objective.window_length, config.batch_size, config.seed)
    val_batches = eval_batches(run.cache.val, objective, objective.window_length, config.batch_size, config.eval_batches)
    if not val_batches:
        raise SoftpromptError(f"{cache_dir}: validation slice of {run.cache.val.size} tokens is shorter than one window "
                              f"({objective.window_length} tokens)")
    model = run.model.to(run.device).train()
    if run.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = make_optimizer(model, config, run.device)
    schedule = make_schedule(optimizer, config)
    if state is not None:
        _restore(state, optimizer, schedule)
    forward = torch.compile(model) if config.compile else model
    last = min(config.steps, stop_at) if stop_at is not None else config.steps
    train_loss, evaluation = _train(run, forward, optimizer, schedule, sampler, objective, val_batches, log, last)
    if not evaluation or evaluation.get("step") != run.step:
        evaluation = {"step": run.step, **evaluate(model, val_batches, run.device)}
        log.append(evaluation)
    summary = _summary(run, run.step >= config.steps, train_loss, {k: v for k, v in evaluation.items() if k != "step"},
                       objective.window_length, command)
    save_checkpoint(out_dir, model, run.tokenizer, _trainer_state(run, optimizer, schedule), log, summary)
    return summary


def _train(run: _Run, forward: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
           sampler: WindowSampler, objective: Any, val_batches: list[Batch], log: list[dict],
           last: int) -> tuple[float | None, dict]:
    """Steps run.step .. last-1 (or until the wall-clock limit); returns (last logged train loss, last evaluation)."""
    c, model, device = run.config, run.model, run.device
    pin = device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    started, session_start_s = time.monotonic(), run.elapsed_s
    loss_sum, loss_count, train_loss, evaluation = torch.zeros((), device=device), 0, None, {}
    window_tokens = 0
    bar = tqdm(total=c.steps, initial=run.step, disable=not c.progress, desc=c.objective, dynamic_ncols=True)

    def make(step: int) -> Batch:
        batch = make_batch(sampler, objective, step)
        return {k: v.pin_memory() for k, v in batch.items()} if pin else batch

    for step, batch in prefetched(make, run.step, last, c.prefetch):
        run.input_tokens += int(batch["attention_mask"].sum())
        n_targets = int((batch["labels"] != -100).sum())
        run.target_tokens += n_targets
        window_tokens += int(batch["attention_mask"].sum()) + n_targets
        batch = to_device(batch, device)
        with autocast(device):
            loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_count += 1
        run.step = step + 1
        run.elapsed_s = session_start_s + time.monotonic() - started
        bar.update(1)
        if run.step % c.log_every == 0 or run.step == last:
            train_loss = float(loss_sum) / loss_count
            record = {"step": run.step, "loss": train_loss, "lr": schedule.get_last_lr()[0],
                      "tokens_per_s": window_tokens / max(1e-9, run.elapsed_s - session_start_s),
                      "elapsed_s": run.elapsed_s}
            log.append(record)
            append_jsonl(run.out_dir / LOG_FILE, record)
            bar.set_postfix(loss=f"{train_loss:.3f}")
            loss_sum, loss_count = torch.zeros((), device=device), 0
        if run.step % c.eval_every == 0 and run.step < last:
            evaluation = {"step": run.step, **evaluate(model, val_batches, device)}
            log.append(evaluation)
            append_jsonl(run.out_dir / LOG_FILE, evaluation)
            bar.write(f"step {run.step}: val loss {evaluation['val_loss']:.3f}, encoder gap {evaluation['encoder_gap']:.3f}")
        out_of_time = c.max_minutes is not None and time.monotonic() - started > 60 * c.max_minutes
        if out_of_time:
            break
        if run.step % c.checkpoint_every == 0 and run.step < last:
            save_checkpoint(run.out_dir, model, run.tokenizer, _trainer_state(run, optimizer, schedule), log)
    bar.close()
    if loss_count:  # steps since the last record, when stopped early
        train_loss = float(loss_sum) / loss_count
    return train_loss, evaluation
