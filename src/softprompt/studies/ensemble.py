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

import numpy as np
from scipy import stats

from ..data import encode, sorted_batches
from ..errors import SoftpromptError
from ..evaluate import rank_scores
from ..model import PromptedModel
from ..tasks import load_task
from .base import Context, Point, Study, majority_score, model_keys, training_record
from .config import QUICK_BUDGET
from .runs import correct_string
from .stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED, holm, mcnemar, minimum_detectable_effect, t_interval
from .summary import Row, markdown_table, summarise
from .verdicts import Verdict, not_testable, run_learned

BEATS_BEST = "majority vote > the best single prompt (chosen on the held-out selection split)"
BEATS_MEAN = "majority vote > the average single prompt"

SINGLE, ENSEMBLE = "single", "ensemble"
EVAL_BATCH = 64  # examples x prompts per evaluation batch, rounded down to a multiple of N


class EnsembleStudy(Study):
    """Trains N prompts with different seeds, then one point scores them together."""

    name = "ensemble"
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
            best = best_member(records, r)
            rows += [Row(r["model"], "single prompt", scores=tuple(r["singles"]), **common),
                     Row(r["model"], f"best single (seed {best})", scores=(r["singles"][best],), **common),
                     Row(r["model"], "majority vote", scores=(r["score"],), **common)]
        return rows

    def table(self, rows: list[Row], records: list[dict[str, Any]]) -> str:
        """The rows, with each single prompt's dev score at its last step and its held-out score at the chosen step."""
        last: dict[tuple[str, str], str] = {}
        held_out: dict[tuple[str, str], str] = {}
        for vote in (r for r in records if r["setting"] == ENSEMBLE):
            singles = [r for r in records if r["model"] == vote["model"] and r["setting"] == SINGLE]
            if not singles or any(r.get("score_last") is None for r in singles):
                continue
            model, best = vote["model"], best_member(records, vote)
            for key, column in (("score_last", last), ("select_score", held_out)):
                column[(model, "single prompt")] = summarise(singles, key)[0].cell()
                column[(model, f"best single (seed {best})")] = f"{100 * next(r[key] for r in singles if r['seed'] == best):.1f}"
        if not last:
            return markdown_table(rows)
        return markdown_table(rows, {"dev at last step (%)": last, "held-out, chosen step (%)": held_out})

    def sections(self, records: list[dict[str, Any]]) -> str:
        lines = [f"- `{r['model']}`: {len(r['singles'])} prompts scored together; every evaluation batch held "
                 f"{r['prompts_per_batch']} prompts" for r in records if r["setting"] == ENSEMBLE]
        return "\n".join(lines)

    def judge(self, records: list[dict[str, Any]], model: str) -> list[Verdict]:
        """Per example on the dev set: the vote against the best single prompt (exact McNemar) and against the average
        of the single prompts (paired t over examples); Holm across the two."""
        vote = next((r for r in records if r["model"] == model and r["setting"] == ENSEMBLE), None)
        if vote is None or not vote.get("vote_correct"):
            return [not_testable(c, "no ensemble point with per-example outputs (rerun the study)") for c in (BEATS_BEST, BEATS_MEAN)]
        members = [r for r in records if r["model"] == model and r["setting"] == SINGLE]
        if not any(run_learned(r) for r in members):
            why = "budget: no single prompt beats the majority class (one-sided binomial test, p < 0.01)"
            return [not_testable(c, why) for c in (BEATS_BEST, BEATS_MEAN)]
        voted = np.array([int(c) for c in vote["vote_correct"]], dtype=float)  # (E,)
        singles = np.array([[int(c) for c in s] for s in vote["singles_correct"]], dtype=float)  # (N, E)
        best = best_member(records, vote)
        p_best, vote_only, best_only = mcnemar(voted, singles[best])
        diffs = voted - singles.mean(axis=0)  # (E,)
        p_mean = float(stats.ttest_1samp(diffs, 0.0).pvalue) if diffs.std() > 0 else 1.0
        p_best, p_mean = holm([p_best, p_mean])
        low, high = t_interval(diffs)
        gap_best = voted.mean() - singles[best].mean()
        return [
            Verdict(state(p_best, gap_best), f"vote {100 * voted.mean():.1f} vs seed {best} {100 * singles[best].mean():.1f}: "
                    f"{vote_only} examples only the vote gets right, {best_only} only the single prompt; exact McNemar, "
                    f"Holm p = {p_best:.3g}, {len(voted)} dev examples", BEATS_BEST),
            Verdict(state(p_mean, float(diffs.mean())), f"vote − mean single = {100 * diffs.mean():+.1f} points, 95% t over "
                    f"examples [{100 * low:+.1f}, {100 * high:+.1f}], Holm p = {p_mean:.3g}"
                    + (f"; differences under {100 * minimum_detectable_effect(diffs):.1f} points cannot be detected"
                       if state(p_mean, float(diffs.mean())) == INCONCLUSIVE else ""), BEATS_MEAN),
        ]


def state(p: float, difference: float, alpha: float = 0.05) -> str:
    if p < alpha:
        return SUPPORTED if difference > 0 else CONTRADICTED
    return INCONCLUSIVE


def best_member(records: list[dict[str, Any]], vote: dict[str, Any]) -> int:
    """The index of the single prompt with the best held-out selection score (its dev score where there is none).

    Taking the best on the dev set the vote is scored on would select on the test set.
    """
    by_seed = {r["seed"]: r for r in records if r["model"] == vote["model"] and r["setting"] == SINGLE}  # prompt k is seed k
    scores = [by_seed[k].get("select_score", by_seed[k]["score"]) if k in by_seed else None for k in range(len(vote["singles"]))]
    if None in scores:
        return max(range(len(vote["singles"])), key=lambda k: vote["singles"][k])
    return max(range(len(scores)), key=lambda k: scores[k])


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
            "chance": majority_score(task, examples), "parameters": sum(p.numel() for p in model.base_model.parameters())}


def vote(predictions: list[str], scores: list[list[float]], candidates: tuple[str, ...]) -> str:
    """The majority label; a tie goes to the tied label with the highest log-likelihood summed over prompts."""
    counts = Counter(predictions)
    top = max(counts.values())
    tied = [c for c in candidates if counts.get(c) == top]
    return max(tied, key=lambda c: sum(row[candidates.index(c)] for row in scores))
