"""`ensemble`: N prompts (default 5, one per seed) on one frozen model, scored in mixed-prompt batches (Table 3).

The N trained prompts are loaded side by side into one prompt bank and every dev example is
encoded once per prompt; the features are laid out example by example, so each evaluation batch
holds all N prompts (the record says how many prompts the emptiest batch held). Each prompt's
own predictions give the single-prompt scores; the majority vote over the N predictions (ties:
the label with the highest summed log-likelihood) gives the ensemble's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from ..data import encode, sorted_batches
from ..errors import SoftpromptError
from ..evaluate import rank_scores
from ..model import PromptedModel
from ..tasks import load_task
from .base import Context, Point, Study, majority_score, model_keys, training_record
from .config import QUICK_BUDGET
from .runs import correct_string
from .summary import Row
from .verdicts import FINDINGS, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, Verdict, untestable

SINGLE, ENSEMBLE = "single", "ensemble"
EVAL_BATCH = 64  # examples x prompts per evaluation batch, rounded down to a multiple of N


class EnsembleStudy(Study):
    """Trains N prompts with different seeds, then one point scores them together."""

    name = "ensemble"
    finding = FINDINGS["ensemble"]
    default_seeds = 5  # the paper's five prompts
    quick_budget = replace(QUICK_BUDGET, steps=800, eval_every=400)  # 5 runs at p = 100 (about 0.29 s a step): about 20 minutes

    def check(self, ctx: Context) -> None:
        task = load_task(ctx.task)
        if not task.labels:
            raise SoftpromptError(f"study ensemble votes over labels; task {task.name} has none (it is scored by generation)")

    def points(self, ctx: Context) -> list[Point]:
        keys, points = model_keys(ctx.models), []
        for model in ctx.models:
            members = []
            for seed in range(ctx.budget.seeds):
                key = f"{keys[model]}/prompt/seed{seed}"
                points.append(Point(key, SINGLE, model, seed, ctx.train_config(key, model, seed)))
                members.append(key)
            points.append(Point(f"{keys[model]}/ensemble", ENSEMBLE, model, -1, extra={"members": members}))
        return points

    def run_point(self, ctx: Context, point: Point) -> dict[str, Any]:
        if point.setting == SINGLE:
            return training_record(ctx, point)
        return ensemble_record(ctx, point)

    def rows(self, records: list[dict[str, Any]]) -> list[Row]:
        """Per backbone: the single prompts (mean ± std over seeds), the best single prompt, the majority vote."""
        rows = []
        for r in (r for r in records if r["setting"] == ENSEMBLE):
            common = dict(metric=r["metric"], chance=r["chance"], parameters=r["parameters"])
            rows += [Row(r["model"], "single prompt", scores=tuple(r["singles"]), **common),
                     Row(r["model"], "best single", scores=(max(r["singles"]),), **common),
                     Row(r["model"], "majority vote", scores=(r["score"],), **common)]
        return rows

    def sections(self, records: list[dict[str, Any]]) -> str:
        lines = [f"- `{r['model']}`: {len(r['singles'])} prompts scored together; every evaluation batch held "
                 f"{r['prompts_per_batch']} prompts" for r in records if r["setting"] == ENSEMBLE]
        return "\n".join(lines)

    def verdict(self, rows: list[Row], model: str) -> Verdict:
        """Reproduced when the vote is at least the best single prompt and beats their mean by more than their std."""
        settings = {r.setting: r for r in rows if r.model == model}
        single, best, vote = settings["single prompt"], settings["best single"], settings["majority vote"]
        blocked = untestable([single])
        if blocked:
            return Verdict(NOT_TESTABLE, blocked.reason.replace("seed(s)", "prompt(s)"))
        holds = vote.mean >= best.mean and vote.mean - single.mean > single.std
        reason = (f"vote {100 * vote.mean:.1f} vs best single {100 * best.mean:.1f} vs mean "
                  f"{100 * single.mean:.1f} ± {100 * single.std:.1f}")
        return Verdict(REPRODUCED if holds else NOT_REPRODUCED, reason)


def ensemble_record(ctx: Context, point: Point) -> dict[str, Any]:
    """Score the member prompts together on the dev examples; singles, vote and the mixing achieved."""
    task = load_task(ctx.task)
    examples = ctx.dev_examples(task)
    model = PromptedModel(ctx.backbone(point.model)).eval()
    names = [model.load_prompt(ctx.run_dir(key), f"seed{k}") for k, key in enumerate(point.extra["members"])]
    n = len(names)
    features = [encode(model.adapter, name, model.bank[name], e, with_target=False) for e in examples for name in names]  # (E * n)
    candidates = [e.candidates for e in examples for _ in names]
    batch_size = n * max(1, EVAL_BATCH // n)
    scores = rank_scores(model, features, candidates, batch_size, progress=ctx.progress)
    mixing = min(len({features[i].prompt for i in idx}) for idx in sorted_batches(features, batch_size))
    predictions = [[c[row.index(max(row))] for c, row in zip(candidates[k::n], scores[k::n])] for k in range(n)]  # n x E
    metric = next(iter(task.metric(predictions[0], examples)))
    singles = [float(task.metric(p, examples)[metric]) for p in predictions]
    votes = [vote([p[i] for p in predictions], [scores[i * n + k] for k in range(n)], examples[i].candidates)
             for i in range(len(examples))]
    vote_score = float(task.metric(votes, examples)[metric])
    correct = [correct_string(p, [e.target for e in examples]) for p in predictions]
    return {"metric": metric, "score": vote_score, "singles": singles, "prompts_per_batch": mixing,
            "vote_correct": correct_string(votes, [e.target for e in examples]), "singles_correct": correct,
            "chance": majority_score(task, examples), "parameters": sum(p.numel() for p in model.backbone.parameters())}


def vote(predictions: list[str], scores: list[list[float]], candidates: tuple[str, ...]) -> str:
    """The majority label; a tie goes to the tied label with the highest log-likelihood summed over prompts."""
    counts = Counter(predictions)
    top = max(counts.values())
    tied = [c for c in candidates if counts.get(c) == top]
    return max(tied, key=lambda c: sum(row[candidates.index(c)] for row in scores))
