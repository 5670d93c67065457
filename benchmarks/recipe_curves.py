"""Dev curves of prompt tuning under the scaled and the paper's learning rate, per backbone and seed.

Each (backbone, recipe, seed) trains with softprompt's own `train()` into its own run folder under
`--work` (a rerun resumes or skips finished runs), evaluating on the first `--eval-examples` SST-2
dev examples every `--eval-every` steps. The script writes every curve, the rate each run used,
the prompt's mean row norm against the vocabulary's, and a collapse flag per run to
`results/recipe_curves.json`, and the curves to `results/recipe_curves.png`.

A run "collapses" when, after its best evaluation, an evaluation falls to within 5 points of the
majority-class rate of the evaluated examples: the prompt has stopped telling the classes apart.

    python benchmarks/recipe_curves.py --models packaged:smollm2-135m packaged:default --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from measurement import environment

from softprompt.config import PromptConfig, TrainConfig
from softprompt.device import pick_device
from softprompt.prompt_io import load_prompt
from softprompt.tasks import get_task
from softprompt.train import train

HERE = Path(__file__).resolve().parent
COLLAPSE_MARGIN = 0.05


def curve(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["eval"]["accuracy"]) for r in map(json.loads, lines) if "eval" in r]


def first_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def collapsed(points: list[tuple[int, float]], majority: float) -> bool:
    best = max(range(len(points)), key=lambda i: points[i][1])
    return any(acc <= majority + COLLAPSE_MARGIN for _, acc in points[best + 1:])


def one_run(args: argparse.Namespace, model: str, recipe: str, seed: int) -> dict:
    name = f"{model.replace(':', '_').replace('/', '_')}-{recipe}-seed{seed}"
    config = TrainConfig(task="sst2", model=model, output=str(Path(args.work) / name), data_dir=args.data_dir, recipe=recipe,
                         prompt=PromptConfig(length=args.prompt_length), max_steps=args.max_steps, batch_size=args.batch_size,
                         eval_every=args.eval_every, eval_examples=args.eval_examples, checkpoint_every=args.eval_every,
                         seed=seed, dtype=args.dtype)
    resume = Path(config.output, "checkpoint.pt").is_file()
    result = train(config, resume=resume, progress=not args.quiet)
    weight, _ = load_prompt(result.output)
    return {"model": model, "recipe": recipe, "seed": seed, "lr": first_record(result.output)["lr"], "steps": result.steps,
            "seconds": result.seconds, "curve": curve(result.output), "best": result.best_metrics.get("accuracy"),
            "prompt_row_norm": round(float(weight.norm(dim=1).mean()), 4)}


def vocab_row_norm(model: str) -> float:
    from softprompt.backbones import load_backbone

    return round(float(load_backbone(model).embeddings.detach().float().norm(dim=1).mean()), 4)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in runs})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in runs if r["model"] == model):
            steps, accs = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(steps, accs, marker="o", linestyle="-" if r["recipe"] == "scaled" else "--",
                    label=f"{r['recipe']} (lr {r['lr']:.3g}), seed {r['seed']}")
        ax.set_title(f"{model}: SST-2 dev accuracy")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["packaged:smollm2-135m", "packaged:default"])
    parser.add_argument("--recipes", nargs="+", default=["scaled", "paper"], choices=["scaled", "paper"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--paper-seeds", nargs="+", type=int, default=[0], help="seeds for the paper recipe (it is the contrast)")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work", default="runs/recipe_curves")
    parser.add_argument("--output", default=str(HERE / "results" / "recipe_curves.json"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    dev = get_task("sst2").load("validation", args.data_dir)[: args.eval_examples]
    majority = max(Counter(e.target for e in dev).values()) / len(dev)
    runs = []
    for model in args.models:
        for recipe in args.recipes:
            for seed in args.seeds if recipe == "scaled" else args.paper_seeds:
                run = one_run(args, model, recipe, seed)
                run["collapsed"] = collapsed(run["curve"], majority)
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "curve"}), flush=True)
    out = {"benchmark": "recipe_curves", "environment": environment(pick_device("auto")), "settings": vars(args), "majority_rate": majority,
           "collapse_rule": f"after the best evaluation, one at or below the majority rate + {COLLAPSE_MARGIN}",
           "vocab_row_norm": {m: vocab_row_norm(m) for m in args.models}, "runs": runs}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    plot(runs, Path(args.output).with_suffix(".png"))
    print(f"wrote {args.output} and {Path(args.output).with_suffix('.png')}")


if __name__ == "__main__":
    main()
