"""Evaluation examples/s: rank classification vs greedy generation, same model, prompt and batch size.

Both methods run softprompt's own functions (`rank_texts`, `generate_texts`) over the same SST-2
dev examples with the same prompted model. Generation gets the budget `evaluate()` gives it
(longest target + 2 tokens, at least 4). Each method first runs once on one batch untimed
(warm-up), then once over all the examples, timed. Both accuracies, generation's invalid
outputs and the agreement between the two methods' predictions are reported, so that "at
the same accuracy" can be judged: with a random prompt on a random backbone it cannot be (train
one first, e.g. `softprompt train --model DIR`, and pass `--model DIR --prompt RUN_DIR`).
On a decoder-only backbone, both methods also run on the concatenated path (`DecoderOnly`: the
prompt recomputed for every example) beside the default shared-prefix path (each distinct prompt
once per batch), same weights and prompt: the rows `rank-concatenated` and `generate-concatenated`,
the speed ratios and whether the outputs are identical are reported.
Writes results/eval_speed-<device>.json.

    python benchmarks/eval_speed.py                                  # T5 v1.1-small-like, random prompt
    python benchmarks/eval_speed.py --model DIR --prompt RUN_DIR --examples 872 --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from backbones import PRESETS, build_backbone, data_dir
from measurement import environment, synchronize, write_json

from softprompt.backbones import DecoderOnly
from softprompt.config import PromptConfig, TrainConfig
from softprompt.data import encode_all, target_ids
from softprompt.evaluate import generate_texts, rank_texts
from softprompt.model import PromptedModel, build_model
from softprompt.run import seed_everything
from softprompt.tasks import get_task

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TASK = "sst2"


def timed(run: Callable[[], list[str]], device: torch.device) -> tuple[list[str], float, float | None]:
    """Outputs, wall-clock seconds and (CUDA) peak allocated MiB of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    texts = run()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return texts, seconds, peak


def measure(args: argparse.Namespace, backbone_dir: str, device: torch.device) -> dict[str, Any]:
    task = get_task(TASK)
    config = TrainConfig(task=TASK, model=backbone_dir, prompt=PromptConfig(length=args.prompt_length), seed=args.seed, device=args.device)
    seed_everything(args.seed)
    model, _ = build_model(config, task)  # the backbone with a freshly initialised prompt named after the task
    if args.prompt:
        model.bank.remove(task.name)
        model.load_prompt(args.prompt, name=task.name)  # the trained prompt in its place
    model.base_model.to(dtype=DTYPES[args.dtype])
    model.eval()
    examples = task.load("validation", data_dir(args.data_dir))[: args.examples]
    record = model.bank[task.name]
    features = encode_all(model.adapter, task.name, record, examples, f"{TASK} dev", with_target=False)
    candidates = [e.candidates for e in examples]
    max_new = max(max(len(target_ids(model.adapter, record, e.target)) for e in examples) + 2, 4)  # as evaluate() does
    methods = {
        "rank": lambda f, c: rank_texts(model, f, c, args.batch_size),
        "generate": lambda f, c: generate_texts(model, f, args.batch_size, max_new),
    }
    if model.adapter.kind == DecoderOnly.kind:  # the same weights and prompt bank, prompt recomputed per example
        adapter = model.adapter
        concatenated = PromptedModel(DecoderOnly(adapter.model, adapter.tokenizer, adapter.name), model.bank).eval()
        methods["rank-concatenated"] = lambda f, c: rank_texts(concatenated, f, c, args.batch_size)
        methods["generate-concatenated"] = lambda f, c: generate_texts(concatenated, f, args.batch_size, max_new)
    rows, outputs = {}, {}
    for name, run in methods.items():
        run(features[: args.batch_size], candidates[: args.batch_size])  # warm-up, untimed
        texts, seconds, peak = timed(lambda run=run: run(features, candidates), device)
        outputs[name] = texts
        scores = task.metric(texts, examples)
        rows[name] = {
            "seconds": round(seconds, 3), "examples_per_s": round(len(examples) / seconds, 3),
            "accuracy": round(scores["accuracy"], 4),
            "invalid_outputs": sum(t not in e.candidates for t, e in zip(texts, examples)),
            "output_counts": {t: texts.count(t) for t in sorted(set(texts))[:10]},
            **({"cuda_peak_allocated_mib": round(peak, 1)} if peak is not None else {}),
        }
    agreement = sum(a == b for a, b in zip(outputs["rank"], outputs["generate"])) / len(examples)
    shared = {}
    if "rank-concatenated" in rows:
        shared = {f"{m}_shared_over_concatenated_speed": round(rows[m]["examples_per_s"] / rows[f"{m}-concatenated"]["examples_per_s"], 3)
                  for m in ("rank", "generate")}
        shared |= {f"{m}_outputs_identical": outputs[m] == outputs[f"{m}-concatenated"] for m in ("rank", "generate")}
    return {
        "rows": rows,
        **shared,
        "rank_over_generate_speed": round(rows["rank"]["examples_per_s"] / rows["generate"]["examples_per_s"], 3),
        "agreement": round(agreement, 4),
        "examples": len(examples),
        "max_new_tokens": max_new,
        "prompt": args.prompt or f"random ({config.prompt.init} init, seed {args.seed})",
        "prompt_length": model.prompt_parameters()[0].shape[0],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=sorted(PRESETS), default="t5-small-like", help="random-weight preset (default: t5-small-like)")
    parser.add_argument("--model", help="a local Hugging Face checkpoint instead of a preset")
    parser.add_argument("--prompt", help="a saved prompt directory (a softprompt run); default: a fresh class-label prompt")
    parser.add_argument("--prompt-length", type=int, default=100, help="p of the fresh prompt; paper: 100")
    parser.add_argument("--data-dir", help="default: $SOFTPROMPT_DATA_DIR, else /work/shared/data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="backbone precision (bf16: CUDA)")
    parser.add_argument("--batch-size", type=int, default=64, help="both methods; softprompt's eval default: 64")
    parser.add_argument("--examples", type=int, default=872, help="first N SST-2 dev examples (all: 872)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 examples, batch 16")
    parser.add_argument("--output", help="default: benchmarks/results/eval_speed-<device>.json")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.batch_size = 32, 16
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="eval_speed-") as tmp:
        backbone_dir = args.model
        if not backbone_dir:
            backbone_dir = str(Path(tmp) / "backbone")
            model, tokenizer, _ = build_backbone(args.backbone, None, args.seed, data_dir(args.data_dir))
            model.save_pretrained(backbone_dir)
            tokenizer.save_pretrained(backbone_dir)
            del model
        result = measure(args, backbone_dir, device)
    data = {
        "benchmark": "eval_speed",
        "environment": environment(device),
        "settings": {**vars(args), "backbone_used": args.model or args.backbone, "task": TASK},
        **result,
        "method": "examples / wall-clock seconds of one pass over all examples (after a one-batch warm-up; "
        "torch.cuda.synchronize at both ends on GPU); same model, prompt, batch size and examples for both methods",
    }
    print(f"\n{data['settings']['backbone_used']}, prompt {result['prompt']}, {result['examples']} examples, "
          f"batch {args.batch_size}, {args.dtype}, {data['environment']['device_name']}")
    print(f"{'method':<10}{'examples/s':>11}{'accuracy':>10}{'invalid':>9}")
    for name, r in result["rows"].items():
        print(f"{name:<10}{r['examples_per_s']:>11.2f}{r['accuracy']:>10.4f}{r['invalid_outputs']:>9}")
    print(f"rank / generate speed x{result['rank_over_generate_speed']}, agreement {result['agreement']:.4f}")
    output = Path(args.output) if args.output else HERE / "results" / f"eval_speed-{device.type}.json"
    write_json(output, data)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
