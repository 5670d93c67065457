"""A trained prompt evaluated with the frozen backbone in fp32 and in bf16: accuracy and examples/s.

The prompt stays fp32 (the bank's master copy); only the backbone's storage dtype changes. Both
runs use `softprompt.inference.eval_prompts`, the library behind `softprompt eval`, on the same
split, one after the other in this process. Writes results/precision-<device>.json.

    python benchmarks/precision.py --prompt runs/sst2-seed1 --method rank
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from measurement import environment, write_json

from softprompt.config import EvalConfig
from softprompt.inference import eval_prompts

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--method", default="rank", choices=("rank", "generate", "both"))
    parser.add_argument("--examples", type=int, help="first N dev examples (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rows = {}
    for dtype in ("fp32", "bf16"):
        config = EvalConfig(prompt=(args.prompt,), method=args.method, examples=args.examples, dtype=dtype, device=args.device,
                            batch_size=args.batch_size)
        start = time.perf_counter()
        (result,) = eval_prompts(config)
        seconds = time.perf_counter() - start  # loading included: the same for both
        rows[dtype] = result | {"seconds": round(seconds, 2), "examples_per_s": round(result["examples"] / seconds, 2)}
        print(dtype, rows[dtype], flush=True)
    out = args.output or HERE / "results" / f"precision-{args.device}.json"
    write_json(out, {"environment": environment(torch.device(args.device)), "settings": vars(args) | {"output": str(out)},
                     "rows": rows, "bf16_over_fp32_speed": round(rows["bf16"]["examples_per_s"] / rows["fp32"]["examples_per_s"], 3)})


if __name__ == "__main__":
    main()
