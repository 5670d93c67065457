"""Training examples/s and peak memory: softprompt vs Hugging Face PEFT prompt tuning, in one run.

Every row trains the same backbone (a fresh copy loaded from the same files in its own
process), with the same batch size, prompt length p, precision and dropout (the backbone
config's; all rows in train mode), on real SST-2 training examples, for the same number of
warm-up and timed steps over the same examples:

- the warm-up and timed examples are the first batches softprompt's length-grouped order
  (`length_grouped_batches`, what `BatchStream` yields) gives for the seed; the PEFT rows see
  exactly those examples, reshuffled at random into batches (the usual shuffled DataLoader);
- softprompt tokenises through its backbone adapter (`encode_all`); PEFT rows with the tokenizer as HF examples do
  (the token ids are the same: the real-token totals in the output must match).

Rows (see ROWS): softprompt (its defaults are the like-for-like settings, so one row serves
both comparisons), peft (like for like), peft-defaults (PEFT as its prompt-tuning examples set
it up) and, optionally, peft-max-length (plus the fixed-length padding of PEFT's seq2seq notebook).
A check before the rows computes the loss of one identical batch, dropout off, with the same
initial prompt in softprompt and in PEFT (like for like): the two numbers should agree.
Memory: see measurement.py. Writes results/train_speed-<device>.json.

    python benchmarks/train_speed.py                     # T5 v1.1-small-like, batch 32, p 100, 3 + 10 steps
    python benchmarks/train_speed.py --device cuda --dtype bf16
    python benchmarks/train_speed.py --quick             # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from backbones import PRESETS, build_backbone, data_dir
from measurement import PeakMemory, environment, synchronize, write_json
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import DataCollatorForSeq2Seq, default_data_collator, get_linear_schedule_with_warmup

from softprompt.backbones import load_backbone
from softprompt.config import PromptConfig, TrainConfig
from softprompt.data import BatchStream, collate, encode_all, length_grouped_batches
from softprompt.device import to_device
from softprompt.model import build_model
from softprompt.optim import make_optimizer
from softprompt.run import seed_everything
from softprompt.tasks import get_task
from softprompt.tasks.base import Example

HERE = Path(__file__).resolve().parent
ROWS = {
    "softprompt": "PromptedModel (adapter + prompt bank) + encode_all + length-grouped batches + collate + model(batch) + Adafactor (make_optimizer, "
    "paper settings), class-label init: softprompt's training path with its defaults",
    "peft": "like for like: get_peft_model(PromptTuningConfig(num_virtual_tokens=p, num_transformer_submodules=1 for "
    "seq2seq)), softprompt's initial prompt, the same Adafactor; tokenizer + DataCollatorForSeq2Seq over shuffled batches",
    "peft-defaults": "PEFT defaults: PromptTuningConfig(num_virtual_tokens=p, RANDOM init, default num_transformer_submodules), "
    "AdamW(lr=--peft-lr) + linear schedule as PEFT's prompt-tuning examples; DataCollatorForSeq2Seq over shuffled batches",
    "peft-max-length": "as peft-defaults, but inputs padded to --max-length and default_data_collator, as PEFT's seq2seq "
    "prompt-tuning notebook does",
}
DEFAULT_ROWS = "softprompt,peft,peft-defaults"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TASK = "sst2"


# ---- the shared plan: which examples each step sees ----------------------------------------
def make_plan(lengths: list[int], batch_size: int, warmup: int, steps: int, seed: int) -> dict[str, list[list[int]]]:
    """Softprompt's first warmup + steps length-grouped batches, and the same examples reshuffled."""
    grouped = length_grouped_batches(lengths, batch_size, seed, epoch=0)[: warmup + steps]
    rng = random.Random(seed)

    def shuffled(batches: list[list[int]]) -> list[list[int]]:
        pool = [i for batch in batches for i in batch]
        rng.shuffle(pool)
        return [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]

    return {"grouped": grouped, "shuffled": shuffled(grouped[:warmup]) + shuffled(grouped[warmup:])}


def backbone_path(args: argparse.Namespace, work: Path) -> str:
    """The local checkpoint given, else the preset that the parent saved into the work folder."""
    return args.model or str(work / "backbone")


def train_config(args: argparse.Namespace, backbone_dir: str) -> TrainConfig:
    return TrainConfig(
        task=TASK, model=backbone_dir, prompt=PromptConfig(length=args.prompt_length),
        batch_size=args.batch_size, seed=args.seed, device=args.device,
    )


# ---- PEFT's side: the usual Hugging Face path ---------------------------------------------
def hf_features(tokenizer, examples: list[Example], seq2seq: bool, pad_to: int | None = None) -> list[dict[str, list[int]]]:
    """Tokenise as PEFT's examples do: seq2seq inputs and text targets; causal 'input target</s>'
    with the input's labels ignored. `pad_to` pads every input to that length (left for causal)."""
    if seq2seq:
        padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {"max_length": 512}
        inputs = tokenizer([e.input for e in examples], truncation=True, **padding)
        labels = tokenizer(text_target=[e.target for e in examples], truncation=True, max_length=16).input_ids
        rows = [{"input_ids": i, "attention_mask": a, "labels": l} for i, a, l in zip(inputs.input_ids, inputs.attention_mask, labels)]
        if pad_to:  # default_data_collator needs equal lengths: pad labels with -100 too
            width = max(len(r["labels"]) for r in rows)
            for r in rows:
                r["labels"] = r["labels"] + [-100] * (width - len(r["labels"]))
        return rows
    sources = tokenizer([e.input for e in examples]).input_ids
    targets = tokenizer([" " + e.target for e in examples], add_special_tokens=False).input_ids
    rows = []
    for s, t in zip(sources, targets):
        t = t[:15] + [tokenizer.eos_token_id]
        ids, labels = s + t, [-100] * len(s) + t
        if pad_to:  # PEFT's causal prompt-tuning guide left-pads to max_length
            pad = max(pad_to - len(ids), 0)
            ids, labels = [tokenizer.pad_token_id] * pad + ids, [-100] * pad + labels
            rows.append({"input_ids": ids, "attention_mask": [0] * pad + [1] * (len(ids) - pad), "labels": labels})
        else:
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return rows


def peft_model(backbone_dir: str, row: str, prompt_length: int, init_prompt: torch.Tensor | None, device: torch.device, dtype: torch.dtype):
    """The backbone wrapped by get_peft_model; like-for-like rows start from `init_prompt`."""
    adapter = load_backbone(backbone_dir)
    backbone, tokenizer = adapter.model, adapter.tokenizer
    backbone.to(device=device, dtype=dtype)
    seq2seq = bool(backbone.config.is_encoder_decoder)
    like = row == "peft"
    config = PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        num_virtual_tokens=prompt_length,
        prompt_tuning_init=PromptTuningInit.RANDOM,
        **({"num_transformer_submodules": 1} if like and seq2seq else {}),
    )
    model = get_peft_model(backbone, config)
    if like:
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight[:prompt_length] = init_prompt.to(device)  # (p, e)
    return model, tokenizer, seq2seq


def peft_collator(row: str, tokenizer, model) -> Callable:
    if row == "peft-max-length":
        return default_data_collator
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)


# ---- one row, in its own process ---------------------------------------------------------
def batch_tokens(batch: dict[str, torch.Tensor], prompt_length: int, seq2seq: bool) -> dict[str, int]:
    """Token positions computed vs real tokens: the input side (encoder, or the whole causal
    sequence) and, for seq2seq, the decoder side. The prompt's p positions are counted apart."""
    mask = batch["attention_mask"]
    out = {"examples": mask.shape[0], "input_positions": mask.numel(), "input_real": int(mask.sum()),
           "prompt_positions": mask.shape[0] * prompt_length}
    if seq2seq:
        out.update(label_positions=batch["labels"].numel(), label_real=int((batch["labels"] != -100).sum()))
    return out


def timed_training(
    next_batch: Callable[[], dict[str, torch.Tensor]], loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    optimizer: torch.optim.Optimizer, scheduler, args: argparse.Namespace, device: torch.device, seq2seq: bool,
) -> dict[str, Any]:
    """Run warm-up then timed steps (collation included); wall clock, peak memory, tokens, losses."""
    memory = PeakMemory(device)
    losses, tokens = [], []
    memory.start()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        batch = next_batch()  # on the CPU
        if step >= args.warmup:
            tokens.append(batch_tokens(batch, args.prompt_length, seq2seq))
        loss = loss_of(to_device(dict(batch), device))
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    totals = {k: sum(t.get(k, 0) for t in tokens) for k in tokens[0]}
    losses = [float(x) for x in losses]
    return {
        "seconds": round(seconds, 3),
        "process_cpu_seconds": round(cpu_seconds, 3),  # all threads; far above seconds x threads hints at contention
        "load_average_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "examples_per_s": round(totals["examples"] / seconds, 3),
        "memory": memory.stop(),
        "tokens": totals,
        "input_padding_fraction": round(1 - totals["input_real"] / totals["input_positions"], 4),  # prompt excluded
        "padding_fraction_with_prompt": round(1 - (totals["input_real"] + totals["prompt_positions"]) / (totals["input_positions"] + totals["prompt_positions"]), 4),
        "mean_input_width": round(totals["input_positions"] / totals["examples"], 1),  # padded positions per example, prompt excluded
        "mean_width_with_prompt": round((totals["input_positions"] + totals["prompt_positions"]) / totals["examples"], 1),
        "mean_loss_all_steps": round(sum(losses) / len(losses), 4),
        "losses": [round(x, 4) for x in losses],
    }


def run_softprompt(args: argparse.Namespace, work: Path, plan: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Softprompt as `train()` runs it: build_model, encode_all, BatchStream, collate, model(batch)."""
    config = train_config(args, backbone_path(args, work))
    task = get_task(TASK)
    seed_everything(args.seed)
    model, _ = build_model(config, task)
    model.base_model.to(dtype=dtype)
    if not torch.equal(model.prompt_parameters()[0].detach().cpu(), torch.load(work / "init_prompt.pt")):
        raise RuntimeError("softprompt's initial prompt differs from the one given to PEFT")
    features = encode_all(model.adapter, TASK, model.bank[TASK], task.load("train", data_dir(args.data_dir)), f"{TASK} train")
    check = BatchStream(features, args.batch_size, args.seed, group_by_length=True)
    if [check.next() for _ in plan["grouped"]] != [[features[i] for i in b] for b in plan["grouped"]]:
        raise RuntimeError("BatchStream does not yield the planned batches")
    stream = BatchStream(features, args.batch_size, args.seed, group_by_length=True)
    optimizer = make_optimizer(model.prompt_parameters(), config)
    seq2seq = model.adapter.kind == "encoder-decoder"
    model.train()
    return timed_training(lambda: collate(model.adapter, stream.next()), model, optimizer, None, args, device, seq2seq)


def run_peft(args: argparse.Namespace, row: str, work: Path, plan: dict, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """PEFT fed the usual way: tokenised rows, shuffled batches, an HF collator, model(**batch).loss."""
    backbone_dir = backbone_path(args, work)
    seed_everything(args.seed)
    model, tokenizer, seq2seq = peft_model(backbone_dir, row, args.prompt_length, torch.load(work / "init_prompt.pt"), device, dtype)
    train = get_task(TASK).load("train", data_dir(args.data_dir))
    needed = sorted({i for b in plan["shuffled"] for i in b})
    rows = dict(zip(needed, hf_features(tokenizer, [train[i] for i in needed], seq2seq, args.max_length if row == "peft-max-length" else None)))
    collator = peft_collator(row, tokenizer, model)
    batches = iter(plan["shuffled"])
    params = [p for p in model.parameters() if p.requires_grad]
    if row == "peft":
        optimizer, scheduler = make_optimizer(params, train_config(args, backbone_dir)), None
    else:
        optimizer = torch.optim.AdamW(params, lr=args.peft_lr)
        scheduler = get_linear_schedule_with_warmup(optimizer, 0, args.warmup + args.steps)
    model.train()
    return timed_training(lambda: collator([rows[i] for i in next(batches)]), lambda b: model(**b).loss, optimizer, scheduler, args, device, seq2seq)


# ---- the parent: plan, check, one child process per row, report ---------------------------
def same_batch_check(args: argparse.Namespace, work: Path, backbone_dir: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Plan the batches, save the initial prompt, and compare both losses on one identical batch."""
    task = get_task(TASK)
    config = train_config(args, backbone_dir)
    seed_everything(args.seed)
    model, _ = build_model(config, task)
    model.base_model.to(dtype=dtype)
    init = model.prompt_parameters()[0].detach().cpu()
    torch.save(init, work / "init_prompt.pt")
    train = task.load("train", data_dir(args.data_dir))
    features = encode_all(model.adapter, TASK, model.bank[TASK], train, f"{TASK} train")
    plan = make_plan([f.length for f in features], args.batch_size, args.warmup, args.steps, args.seed)
    (work / "plan.json").write_text(json.dumps(plan))

    idx = plan["grouped"][args.warmup][: args.check_examples]
    model.eval()
    with torch.no_grad():
        ours = model(to_device(collate(model.adapter, [features[i] for i in idx]), device))
    del model
    peft, tokenizer, seq2seq = peft_model(backbone_dir, "peft", args.prompt_length, init, device, dtype)
    peft.eval()
    batch = DataCollatorForSeq2Seq(tokenizer, model=peft, label_pad_token_id=-100)(hf_features(tokenizer, [train[i] for i in idx], seq2seq))
    with torch.no_grad():
        theirs = peft(**to_device(dict(batch), device)).loss
    return {
        "examples": len(idx), "dropout": "off (eval mode)", "softprompt_loss": round(float(ours), 5),
        "peft_loss": round(float(theirs), 5), "abs_difference": float(abs(ours.float() - theirs.float())),
    }


def run_child(row: str, work: Path) -> dict[str, Any]:
    result = work / f"{row}.json"
    cmd = [sys.executable, sys.argv[0], *sys.argv[1:], "--only", row, "--work", str(work)]  # this script, as it was run
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def run_rows(rows: list[str], repeats: int, work: Path) -> dict[str, dict[str, Any]]:
    """Each row `repeats` times, interleaved (A B C A B C); the run of median speed is reported with the
    median memory growth, and every run's values are listed. Tokens are the same in every repeat."""
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    for _ in range(repeats):
        for row in rows:
            runs[row].append(run_child(row, work))
    merged = {}
    for row, results in runs.items():
        median_run = sorted(results, key=lambda r: r["examples_per_s"])[(len(results) - 1) // 2]  # the (lower) median
        growths = [r["memory"]["growth_mib"] for r in results]
        merged[row] = {**median_run, "examples_per_s_runs": [r["examples_per_s"] for r in results],
                       "seconds_runs": [r["seconds"] for r in results],
                       "load_average_runs": [r["load_average_1min_start_end"] for r in results],
                       "memory": {**median_run["memory"], "growth_mib": statistics.median_low(growths), "growth_mib_runs": growths}}
    return merged


def report(args: argparse.Namespace, device: torch.device, check: dict, results: dict[str, dict], load: dict) -> dict[str, Any]:
    speed = {row: r["examples_per_s"] for row, r in results.items()}
    ratios = {}
    for other, name in (("peft", "like_for_like"), ("peft-defaults", "defaults"), ("peft-max-length", "vs_peft_max_length")):
        if "softprompt" in results and other in results:
            ratios[name] = {
                "speed": round(speed["softprompt"] / speed[other], 3),
                "memory_growth": round(results["softprompt"]["memory"]["growth_mib"] / max(results[other]["memory"]["growth_mib"], 1e-9), 3),
            }
    return {
        "benchmark": "train_speed",
        "environment": environment(device),
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("only", "work")},
                     "backbone_used": args.model or args.backbone, "task": TASK, "dtype": args.dtype},
        "rows": {row: {"what": ROWS[row], **results[row]} for row in results},
        "softprompt_over_peft": ratios,
        "same_batch_check": check,
        "load_average_before_after": load,
        "method": {
            "examples_per_s": "examples in the timed steps / wall-clock seconds of those steps (collation, forward, backward, "
            "optimizer step; torch.cuda.synchronize at both ends on GPU), after the warm-up steps",
            "memory": results[next(iter(results))]["memory"]["method"] + "; each row in its own process, from before its first warm-up step",
            "same_examples": "the PEFT rows see exactly the examples of softprompt's warm-up and timed batches, reshuffled",
            "softprompt_defaults": "softprompt's default settings are the like-for-like ones: its row serves both comparisons",
        },
    }


def print_table(data: dict[str, Any]) -> None:
    print(f"\n{data['settings']['backbone_used']}, batch {data['settings']['batch_size']}, p {data['settings']['prompt_length']}, "
          f"{data['settings']['dtype']}, {data['environment']['device_name']}")
    print(f"{'row':<16}{'examples/s':>11}{'peak growth MiB':>16}{'input pad %':>12}{'width':>7}{'width+p':>8}"
          f"{'real tokens':>12}{'mean loss':>10}  examples/s of each run")
    for row, r in data["rows"].items():
        print(f"{row:<16}{r['examples_per_s']:>11.2f}{r['memory']['growth_mib']:>16.1f}{100 * r['input_padding_fraction']:>12.1f}"
              f"{r['mean_input_width']:>7.1f}{r['mean_width_with_prompt']:>8.1f}{r['tokens']['input_real']:>12}"
              f"{r['mean_loss_all_steps']:>10.3f}  {r['examples_per_s_runs']}")
    for name, ratio in data["softprompt_over_peft"].items():
        print(f"softprompt / {name}: speed x{ratio['speed']}, peak memory growth x{ratio['memory_growth']}")
    print(f"same-batch check (dropout off): {data['same_batch_check']}")
    print(f"memory: {data['method']['memory']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=sorted(PRESETS), default="t5-small-like", help="random-weight preset (default: t5-small-like)")
    parser.add_argument("--model", help="a local Hugging Face checkpoint instead of a preset")
    parser.add_argument("--data-dir", help="default: $SOFTPROMPT_DATA_DIR, else /work/shared/data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="backbone precision for every row (bf16: CUDA)")
    parser.add_argument("--batch-size", type=int, default=32, help="paper: 32")
    parser.add_argument("--prompt-length", type=int, default=100, help="p; paper: 100")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--repeats", type=int, default=1, help="run every row this many times, interleaved; medians reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--peft-lr", type=float, default=3e-2, help="peft-defaults AdamW lr (PEFT's prompt-tuning guide)")
    parser.add_argument("--max-length", type=int, default=128, help="peft-max-length padding (PEFT's seq2seq notebook)")
    parser.add_argument("--check-examples", type=int, default=8, help="examples in the same-batch loss check")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, p 20, 1 + 2 steps")
    parser.add_argument("--output", help="default: benchmarks/results/train_speed-<device>.json")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.prompt_length, args.warmup, args.steps = 8, 20, 1, 2
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {', '.join(sorted(unknown))}; choose from {', '.join(ROWS)}")
    return args


def main() -> None:
    args = parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.only:  # a child: one row, its result as JSON in the work folder
        work = Path(args.work)
        plan = json.loads((work / "plan.json").read_text())
        run = run_softprompt(args, work, plan, device, dtype) if args.only == "softprompt" else run_peft(args, args.only, work, plan, device, dtype)
        (work / f"{args.only}.json").write_text(json.dumps(run))
        return
    with tempfile.TemporaryDirectory(prefix="train_speed-") as tmp:
        work = Path(tmp)
        backbone_dir = backbone_path(args, work)
        if not args.model:  # saved once, so every process loads the very same weights
            model, tokenizer, _ = build_backbone(args.backbone, None, args.seed, data_dir(args.data_dir))
            model.save_pretrained(backbone_dir)
            tokenizer.save_pretrained(backbone_dir)
            del model
        check = same_batch_check(args, work, backbone_dir, device, dtype)
        load_before = os.getloadavg()
        results = run_rows(args.rows.split(","), args.repeats, work)
        load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    data = report(args, device, check, results, load)
    print_table(data)
    output = Path(args.output) if args.output else HERE / "results" / f"train_speed-{device.type}.json"
    write_json(output, data)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
