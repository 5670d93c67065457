"""What mixing prompts in a batch costs, without HTTP: rank scoring of the same examples, 1 prompt vs 8.

The same SST-2 dev examples are scored by `rank_scores` (what `predict` and the server run) on one
prompted model holding 8 prompts of the same length, once with every example on the first prompt
and once with the examples spread over all 8, interleaved (single, mixed, single, ...), with the
server's prefix cache on and its token budget. Writes results/mixed_prompts-<device>.json.

    python benchmarks/mixed_prompts.py --prompt runs/sst2-seed1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from measurement import environment, write_json

from softprompt.data import encode
from softprompt.evaluate import rank_scores
from softprompt.model import load_prompted_model
from softprompt.tasks import get_task
from softprompt.tasks.base import Example

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", required=True, help="a trained prompt directory; the other 7 are it plus small offsets")
    parser.add_argument("--model", help="default: the prompt's backbone")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=1024, help="the server's --max-batch-tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "mixed_prompts-cpu.json")
    args = parser.parse_args()
    model = load_prompted_model([f"p0={args.prompt}"], args.model).eval()
    first = model.bank["p0"]
    for i in range(1, args.prompts):
        model.add_prompt(f"p{i}", first.weight.detach() + 0.01 * i, first.metadata)
    model.adapter.enable_prefix_cache(1 << 30)
    data_dir = Path(os.environ.get("SOFTPROMPT_DATA_DIR", "../shared/data"))
    texts = [e.input for e in get_task("sst2").load("validation", data_dir)[: args.examples]]
    candidates = [list(first.labels)] * len(texts)
    layouts = {name: [encode(model.adapter, f"p{i % args.prompts if name == 'mixed' else 0}", first, Example(t, ""), with_target=False)
                      for i, t in enumerate(texts)] for name in ("single", "mixed")}
    rank_scores(model, layouts["mixed"], candidates, len(texts), max_tokens=args.max_tokens)  # warm-up: fills the cache
    seconds: dict[str, list[float]] = {"single": [], "mixed": []}
    for _ in range(args.repeats):
        for name, features in layouts.items():
            start = time.perf_counter()
            rank_scores(model, features, candidates, len(texts), max_tokens=args.max_tokens)
            seconds[name].append(round(time.perf_counter() - start, 3))
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    result = {"environment": environment(torch.device("cpu")), "settings": vars(args) | {"output": str(args.output)},
              "seconds": seconds, "median_seconds": medians,
              "examples_per_s": {n: round(len(texts) / s, 2) for n, s in medians.items()},
              "mixed_over_single_speed": round(medians["single"] / medians["mixed"], 3)}
    write_json(args.output, result)
    print(result["examples_per_s"], "mixed/single speed", result["mixed_over_single_speed"])


if __name__ == "__main__":
    main()
