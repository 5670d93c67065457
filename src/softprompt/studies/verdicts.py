"""The paper's findings, quoted once, and the rules that turn a study's runs into verdicts (by test, stats.py).

A study splits its finding into sub-claims ("class-label > random-uniform", "p=100 ≈ p=20") and
each becomes one verdict row quoting only that sub-claim, in one of four states: supported,
contradicted, inconclusive (with the smallest effect this budget could detect) or not testable
(with the reason: data, backbone, budget). Halves of a finding about scale ("... gone at XXL")
cannot be tested on one model size and say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .stats import CONTRADICTED, EQUAL, GREATER, INCONCLUSIVE, NOT_TESTABLE, RULE, SUPPORTED, Arm, Claim, judge_claims, learned

__all__ = ["CONTRADICTED", "EQUAL", "FINDINGS", "GREATER", "INCONCLUSIVE", "NOT_TESTABLE", "RULE", "SUPPORTED", "Claim", "Finding", "Verdict",
           "arms_of", "judged", "learned_gate", "not_testable", "one_size", "run_learned"]

@dataclass(frozen=True)
class Finding:
    """What the paper found (quoted from ../shared/REFERENCE.md) and where."""

    claim: str
    source: str


@dataclass(frozen=True)
class Verdict:
    label: str  # one of the four states
    reason: str
    claim: str = ""  # the sub-claim tested, as quoted in the report


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


def not_testable(claim: str, why: str) -> Verdict:
    return Verdict(NOT_TESTABLE, why, claim)


def one_size(claim: str) -> Verdict:
    """The verdict of a claim about how an effect changes with model size, on a study of one size."""
    return not_testable(claim, "backbone: a claim about scale needs several sizes of one family; this study has one")


def run_learned(record: dict[str, Any]) -> bool | None:
    """Whether a run learned its task (stats.learned on its dev examples); None where that cannot be told.

    Uses the per-example correctness when the record has it; older records give their accuracy and
    the number of dev examples their config scored.
    """
    chance = record.get("majority_rate", record.get("chance"))  # the accuracy of always answering the majority class
    if chance is None:
        return None
    if record.get("dev_correct"):
        correct = record["dev_correct"]
        return learned(correct.count("1"), len(correct), chance)
    n = (record.get("config") or {}).get("eval_examples")
    metrics = record.get("metrics") or {}
    accuracy = metrics.get("accuracy", metrics.get("rank_accuracy"))
    if not n or accuracy is None:
        return None
    return learned(round(accuracy * n), n, chance)


def arms_of(records: Iterable[dict[str, Any]], model: str, score: str = "score", correct: str = "dev_correct") -> dict[str, Arm]:
    """One Arm per setting of `model`: its seeds, their scores and (where every seed kept them) per-example correctness."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["model"] == model and record.get(score) is not None and not math.isnan(float(record[score])):
            groups.setdefault(record["setting"], []).append(record)
    arms = {}
    for setting, group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        per_example = None
        if all(r.get(correct) for r in group) and len({len(r[correct]) for r in group}) == 1:
            per_example = tuple(tuple(float(c) for c in r[correct]) for r in group)
        arms[setting] = Arm(setting, tuple(r["seed"] for r in group), tuple(float(r[score]) for r in group), per_example)
    return arms


def learned_gate(records: Iterable[dict[str, Any]], model: str) -> dict[str, bool | None]:
    """Per setting of `model`: whether any of its runs learned the task (None: no record could tell)."""
    found: dict[str, bool | None] = {}
    for record in records:
        if record["model"] != model:
            continue
        state = run_learned(record)
        previous = found.get(record["setting"])
        found[record["setting"]] = bool(previous) or bool(state) if state is not None or previous is not None else None
    return found


def judged(records: list[dict[str, Any]], model: str, claims: list[Claim], score: str = "score",
           arms: dict[str, Arm] | None = None, gate: dict[str, bool | None] | None = None) -> list[Verdict]:
    """The claims of one figure tested together (Holm across them); a claim neither of whose settings learned the
    task is not testable (budget), whatever its numbers say."""
    arms = arms if arms is not None else arms_of(records, model, score)
    gate = gate if gate is not None else learned_gate(records, model)
    verdicts = []
    for claim, outcome in zip(claims, judge_claims(arms, claims)):
        if gate.get(claim.better) is False and gate.get(claim.worse) is False:
            verdicts.append(not_testable(claim.text, "budget: no run of either setting beats the majority class "
                                                     "(one-sided binomial test, p < 0.01)"))
        else:
            verdicts.append(Verdict(outcome.state, outcome.reason, claim.text))
    return verdicts
