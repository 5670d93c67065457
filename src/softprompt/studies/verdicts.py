"""The paper's findings, quoted once, and the rules that turn a study's numbers into a verdict.

A verdict is computed, never typed: **reproduced** when the finding's ordering of means holds and
each gap it relies on exceeds the larger of the two settings' seed standard deviations;
**not reproduced** when the ordering fails or a gap is within the seeds' spread; **not testable
at this scale** when there are fewer than 2 seeds (no spread to compare a gap with) or no setting
beats the majority-class answer by more than `CHANCE_MARGIN` (nothing was learned).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable at this scale"
CHANCE_MARGIN = 0.02  # 2 points above the majority-class score

RULE = ("A finding is **reproduced** when its ordering of means holds and every gap it claims exceeds the larger "
        "standard deviation over seeds of the two settings compared; **not reproduced** when an ordering fails or a gap "
        "is within that spread; **not testable at this scale** with fewer than 2 seeds per setting, or when no setting "
        f"beats the majority-class answer by more than {100 * CHANCE_MARGIN:.0f} points.")


@dataclass(frozen=True)
class Finding:
    """What the paper found (quoted from ../shared/REFERENCE.md) and where."""

    claim: str
    source: str


@dataclass(frozen=True)
class Verdict:
    label: str
    reason: str


# Quoted from ../shared/REFERENCE.md (Lester et al. 2021), one entry per study.
FINDINGS: dict[str, Finding] = {
    "length": Finding("Length {1, 5, 20, 100, 150}: more than one token matters a lot for all but the largest model; "
                      "past 20 tokens the gains are marginal; past 100 slightly worse for large models.", "§3.2, Figure 3(a)"),
    "init": Finding("Init: class label > sampled vocab > random uniform, with the gap largest for small models and gone at XXL.",
                    "§3.2, Figure 3(b)"),
    "ensemble": Finding("Five-prompt ensemble on frozen T5-XXL, SuperGLUE dev average / best single / majority-vote ensemble: "
                        "90.5 / 91.0 / 91.3 (BoolQ 91.1 / 91.3 / 91.7; RTE 92.6 / 93.5 / 93.5; WiC 76.2 / 76.6 / 77.4).",
                        "§6, Table 3"),
    "neighbors": Finding("Interpretability: for each prompt token, the top-5 cosine nearest vocabulary embeddings form tight "
                         "semantic clusters; random vectors do not; class labels often appear among neighbours; long prompts "
                         "have many tokens sharing neighbours.", "§7"),
    "transfer": Finding("Zero-shot domain transfer, T5-XXL, F1, trained on SQuAD (model tuning | prompt tuning): ... RE 88.4 | "
                        "88.8; DuoRC 68.9 | 67.7; DROP 68.9 | 67.1. Paraphrase transfer (accuracy, F1): QQP->MRPC model 73.1, "
                        "81.2; prompt 76.3, 84.3.", "§5, Tables 1 and 2"),
    "objective": Finding("LM adaptation helps at every size; span corruption alone often fails to emit legal labels for "
                         "Base/Large/XL; adding sentinels helps little; longer LM adaptation helps up to ~100K steps; XXL is "
                         "robust to all choices.", "§3.3, Figure 3(c, d)"),
    "scale": Finding("Scale: prompt tuning approaches model tuning as the model grows and matches it at XXL (11B).",
                     "§4, Figure 1"),
    "methods": Finding("Task-specific parameters = p x d_model: T5-Base p=100 is 76,800 (0.031% of 248M); XXL p=100 is "
                       "409,600; Figure 4 puts prompt tuning below every other tuning method it shows. Scale: prompt tuning "
                       "approaches model tuning as the model grows and matches it at XXL (11B).", "§4, Figures 1 and 4"),
}


def exceeds(high_mean: float, high_std: float, low_mean: float, low_std: float) -> bool:
    """Whether `high` beats `low` by more than the larger of their seed spreads."""
    return high_mean - low_mean > max(high_std, low_std)


def untestable(rows: list, seeds_needed: int = 2) -> Verdict | None:
    """NOT_TESTABLE with its reason (too few seeds, all at chance), else None. Rows are summary.Row."""
    if not rows:
        return Verdict(NOT_TESTABLE, "no finished points")
    fewest = min(row.n for row in rows)
    if fewest < seeds_needed:
        return Verdict(NOT_TESTABLE, f"a setting has {fewest} seed(s); a gap needs at least {seeds_needed} to compare with their spread")
    if any(math.isnan(row.mean) for row in rows):
        return Verdict(NOT_TESTABLE, "a setting has no score")
    chances = [row.chance for row in rows if row.chance is not None]
    if chances and all(row.mean <= max(chances) + CHANCE_MARGIN for row in rows):
        return Verdict(NOT_TESTABLE, f"every setting is within {100 * CHANCE_MARGIN:.0f} points of the majority-class score "
                                     f"({100 * max(chances):.1f}%)")
    return None


def ordering(rows_in_claimed_order: list, names: list[str]) -> Verdict:
    """The verdict on a claim "names[0] > names[1] > ...", each step a gap beyond the seeds' spread."""
    failures = []
    for (a, ra), (b, rb) in zip(zip(names, rows_in_claimed_order), zip(names[1:], rows_in_claimed_order[1:])):
        if not exceeds(ra.mean, ra.std, rb.mean, rb.std):
            failures.append(f"{a} {100 * ra.mean:.1f} ± {100 * ra.std:.1f} vs {b} {100 * rb.mean:.1f} ± {100 * rb.std:.1f}")
    claimed = " > ".join(names)
    if failures:
        return Verdict(NOT_REPRODUCED, f"{claimed} fails: " + "; ".join(failures))
    return Verdict(REPRODUCED, f"{claimed} holds, each gap beyond the seeds' spread")
