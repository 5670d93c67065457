"""What limits a trained binary-task prompt: its decision threshold, or how well it ranks the examples.

Rank classification picks the label with the higher log-likelihood, so the prompt's prediction is
the sign of the margin log p(second label) - log p(first label). If dev accuracy swings between
evaluations because the margins drift as a whole (calibration), a better threshold recovers the
accuracy; if the margins order the examples poorly, no threshold does. Per prompt this reports the
accuracy at threshold 0 (what training selected on), the accuracy at the best threshold chosen on
dev itself (an upper bound for any recalibration), ROC AUC (scikit-learn) and the share predicted as
the second label. Writes results/prompt_margins.json.

    python benchmarks/prompt_margins.py runs/sst2 runs/sst2-seed1 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from backbones import data_dir
from measurement import environment, write_json
from sklearn.metrics import roc_auc_score

from softprompt.data import encode_all
from softprompt.evaluate import rank_scores
from softprompt.model import load_prompted_model
from softprompt.tasks import get_task

HERE = Path(__file__).resolve().parent


def margin_report(prompt_dir: str, root: Path, batch_size: int) -> dict:
    model = load_prompted_model([prompt_dir])
    name = model.bank.names[0]
    metadata = model.bank[name].metadata
    if not metadata.labels or len(metadata.labels) != 2:
        raise SystemExit(f"{prompt_dir}: a prompt for a two-label task is needed (labels: {metadata.labels})")
    model.eval()
    task = get_task(metadata.task)
    examples = task.load("validation", root)
    features = encode_all(model.adapter, name, model.bank[name], examples, f"{task.name} dev")
    scores = np.array(rank_scores(model, features, [metadata.labels] * len(examples), batch_size))
    margin = scores[:, 1] - scores[:, 0]
    second = np.array([e.target == metadata.labels[1] for e in examples])
    best_threshold_accuracy = max(((margin > t) == second).mean() for t in np.concatenate([[-np.inf], margin]))
    return {
        "task": task.name, "backbone": metadata.backbone, "step": metadata.extra.get("step"), "examples": len(examples),
        "accuracy": float(((margin > 0) == second).mean()), "best_threshold_accuracy": float(best_threshold_accuracy),
        "roc_auc": float(roc_auc_score(second, margin)), "predicted_second_label": float((margin > 0).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="+", help="saved prompt directories (softprompt train --output) of a two-label task")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default=str(HERE / "results" / "prompt_margins.json"))
    args = parser.parse_args()

    root = data_dir(args.data_dir)
    results = {}
    for prompt_dir in args.prompts:
        results[prompt_dir] = report = margin_report(prompt_dir, root, args.batch_size)
        print(f"{prompt_dir}: accuracy {report['accuracy']:.4f}, best threshold {report['best_threshold_accuracy']:.4f}, "
              f"ROC AUC {report['roc_auc']:.4f}, predicted {report['predicted_second_label']:.2f} second label", flush=True)
    write_json(Path(args.output), {"prompts": results, "environment": environment(torch.device("cpu"))})


if __name__ == "__main__":
    main()
