"""Known answers that pin the statistical verdict rule of softprompt.studies.stats: pure numbers, no model."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from softprompt.studies import stats
from softprompt.studies.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_TESTABLE,
    SUPPORTED,
    Arm,
    Claim,
)

EXAMPLES = 872  # SST-2 dev


def arm(name: str, rates: list[float], seed: int, seeds: tuple[int, ...] | None = None, examples: int = EXAMPLES) -> Arm:
    """An arm whose seed s gets 1.0/0.0 per-example correctness drawn at rates[s]; its score is their mean."""
    rng = np.random.default_rng(seed)
    rows = [tuple((rng.random(examples) < rate).astype(float).tolist()) for rate in rates]
    seeds = seeds if seeds is not None else tuple(range(len(rates)))
    return Arm(name, seeds, tuple(float(np.mean(row)) for row in rows), tuple(rows))


def one(arms: list[Arm], claim: Claim) -> stats.Outcome:
    return stats.judge_claims({a.name: a for a in arms}, [claim])[0]


def test_clear_gap_is_supported_and_intervals_exclude_zero():
    high = arm("class-label", [0.85, 0.86, 0.84, 0.85, 0.87], seed=1)
    low = arm("random-uniform", [0.75, 0.74, 0.76, 0.75, 0.73], seed=2)
    out = one([high, low], Claim("class label > random uniform", "class-label", "random-uniform"))
    assert out.state == SUPPORTED, out.reason
    assert out.pairs == 5
    assert 0.08 < out.difference < 0.13
    assert out.t_interval[0] > 0 and out.bootstrap_interval is not None and out.bootstrap_interval[0] > 0
    assert out.p_adjusted < 0.05
    assert out.reason.startswith("class-label − random-uniform = +")
    assert "bootstrap [+" in out.reason and "Holm p" in out.reason and "5 paired seeds" in out.reason


def test_identical_distributions_are_inconclusive_with_an_mde():
    rates = [0.80, 0.83, 0.78, 0.81, 0.82]
    out = one([arm("a", rates, seed=3), arm("b", rates, seed=4)], Claim("a > b", "a", "b"))
    assert out.state == INCONCLUSIVE, out.reason
    assert out.mde is not None and out.mde > 0
    assert f"differences under {100 * out.mde:.1f} points cannot be detected" in out.reason


def test_a_tie_on_every_seed_is_inconclusive_without_a_vacuous_mde():
    """Two arms equal on every seed (a rate over a few prompt positions can tie exactly): no spread, so no MDE to state."""
    out = one([Arm("a", (0, 1), (0.02, 0.02)), Arm("b", (0, 1), (0.02, 0.02))], Claim("a > b", "a", "b"))
    assert out.state == INCONCLUSIVE and out.mde == 0.0
    assert "the same on every paired seed" in out.reason and "differences under" not in out.reason


def test_reversed_gap_is_contradicted():
    high = arm("high", [0.85, 0.86, 0.84, 0.85, 0.87], seed=5)
    low = arm("low", [0.75, 0.74, 0.76, 0.75, 0.73], seed=6)
    out = one([high, low], Claim("low > high", "low", "high"))
    assert out.state == CONTRADICTED, out.reason
    assert out.difference < 0 and out.bootstrap_interval[1] < 0


def test_significant_t_but_bootstrap_straddling_zero_is_inconclusive():
    """Seeds that agree on a tiny gap the dev set cannot resolve: the t-test alone would call it, the bootstrap does not."""
    rng = np.random.default_rng(7)
    rows_a, rows_b = [], []
    for s in range(5):
        a_row = (rng.random(EXAMPLES) < 0.8).astype(float)
        b_row = a_row.copy()
        wins = rng.choice(EXAMPLES, 30 + s % 2, replace=False)  # a alone right on 16 or 17, b alone right on 14
        a_row[wins[:14]], b_row[wins[:14]] = 0.0, 1.0
        a_row[wins[14:]], b_row[wins[14:]] = 1.0, 0.0
        rows_a.append(tuple(a_row)), rows_b.append(tuple(b_row))
    a = Arm("a", tuple(range(5)), tuple(float(np.mean(r)) for r in rows_a), tuple(rows_a))
    b = Arm("b", tuple(range(5)), tuple(float(np.mean(r)) for r in rows_b), tuple(rows_b))
    diffs = [x - y for x, y in zip(a.scores, b.scores)]
    assert stats.paired_t_p(diffs) < 0.001
    out = one([a, b], Claim("a > b", "a", "b"))
    assert out.bootstrap_interval[0] <= 0 <= out.bootstrap_interval[1]
    assert out.state == INCONCLUSIVE, out.reason


def test_equal_claims():
    tight = Arm("x", (0, 1, 2, 3), (0.800, 0.810, 0.805, 0.795))
    twin = Arm("y", (0, 1, 2, 3), (0.801, 0.809, 0.806, 0.796))
    out = one([tight, twin], Claim("x ≈ y", "x", "y", kind="equal", delta=0.02))
    assert out.state == SUPPORTED, out.reason
    assert out.bootstrap_interval is None and "bootstrap" not in out.reason
    assert out.p_adjusted == out.p_value

    far = Arm("z", (0, 1, 2, 3), (0.900, 0.910, 0.905, 0.895))
    out = one([far, tight], Claim("z ≈ x", "z", "x", kind="equal", delta=0.02))
    assert out.state == CONTRADICTED, out.reason

    noisy = Arm("w", (0, 1, 2, 3), (0.85, 0.75, 0.82, 0.78))
    out = one([noisy, tight], Claim("w ≈ x", "w", "x", kind="equal", delta=0.02))
    assert out.state == INCONCLUSIVE and "cannot be detected" in out.reason


def test_one_paired_seed_is_not_testable():
    a = Arm("a", (0, 1), (0.9, 0.91))
    b = Arm("b", (1, 2), (0.7, 0.71))
    out = one([a, b], Claim("a > b", "a", "b"))
    assert out.state == NOT_TESTABLE and out.pairs == 1
    assert out.reason == "1 paired seed(s); a test needs at least 2"
    assert math.isnan(out.t_interval[0]) and out.mde is None and math.isclose(out.difference, 0.91 - 0.70)
    missing = stats.judge_claims({"a": a}, [Claim("a > c", "a", "c")])[0]
    assert missing.state == NOT_TESTABLE and "c" in missing.reason and missing.pairs == 0


def test_pairing_is_by_seed():
    a = Arm("a", (0, 1, 2), (0.1, 0.2, 0.3))
    b = Arm("b", (3, 2, 1), (0.4, 0.5, 0.6))
    assert stats.paired(a, b) == [(1, 2), (2, 1)]
    out = one([a, b], Claim("a > b", "a", "b"))
    assert out.pairs == 2 and math.isclose(out.difference, ((0.2 - 0.6) + (0.3 - 0.5)) / 2)


def test_an_arm_with_fewer_seeds_is_tested_on_the_seeds_both_have():
    """`--seeds-for p=5:2` in a study of 4 seeds: p=5 against p=1 pairs seeds 0 and 1 only."""
    few, full = arm("p=5", [0.9, 0.9], 11), arm("p=1", [0.5, 0.5, 0.5, 0.5], 12)
    (out,) = stats.judge_claims({"p=5": few, "p=1": full}, [Claim("p=5 > p=1", "p=5", "p=1")])
    assert out.state == SUPPORTED and out.pairs == 2 and "2 paired seeds" in out.reason


def test_holm():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    raw = [0.001, 0.2, 0.04, 0.03, 0.5, 0.011]
    adjusted = stats.holm(raw)
    by_raw = [adjusted[i] for i in np.argsort(raw)]
    assert all(x <= y for x, y in zip(by_raw, by_raw[1:])) and all(a >= p for a, p in zip(adjusted, raw))
    with_nan = stats.holm([0.01, math.nan, 0.04])
    assert math.isnan(with_nan[1]) and with_nan[0] == pytest.approx(0.02) and with_nan[2] == pytest.approx(0.04)


def test_holm_applies_across_greater_claims_only():
    a = Arm("a", (0, 1, 2), (0.80, 0.82, 0.81))
    b = Arm("b", (0, 1, 2), (0.78, 0.79, 0.80))
    claims = [Claim("a > b", "a", "b"), Claim("b > a", "b", "a"), Claim("a ≈ b", "a", "b", kind="equal")]
    first, second, equal = stats.judge_claims({"a": a, "b": b}, claims)
    assert first.p_adjusted == pytest.approx(min(1.0, 2 * first.p_value))
    assert equal.p_adjusted == equal.p_value


def test_t_interval_and_p_match_scipy():
    diffs = [0.03, 0.05, 0.01, 0.04, 0.02]
    expected = sps.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=sps.sem(diffs))
    assert stats.t_interval(diffs) == pytest.approx(expected)
    assert stats.paired_t_p(diffs) == pytest.approx(sps.ttest_1samp(diffs, 0.0).pvalue)
    assert stats.paired_t_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(stats.paired_t_p([0.1])) and all(math.isnan(x) for x in stats.t_interval([0.1]))
    mean, low, high = stats.mean_interval([0.8, 0.82, 0.81])
    assert mean == pytest.approx(0.81) and (low, high) == pytest.approx(stats.t_interval([0.8, 0.82, 0.81]))
    assert math.isnan(stats.mean_interval([0.8])[1])


def test_mde_formula():
    diffs = [0.01, 0.03, -0.01, 0.02]  # mean 0.0125, sd 0.0170783
    sd = math.sqrt(sum((d - 0.0125) ** 2 for d in diffs) / 3)
    by_hand = (3.182446305 + 0.978472312) * sd / 2  # t_{.975,3} + t_{.8,3}, sqrt(4) = 2
    assert stats.minimum_detectable_effect(diffs) == pytest.approx(by_hand, rel=1e-6)
    assert stats.minimum_detectable_effect([0.1]) is None
    assert stats.minimum_detectable_effect([0.02, 0.02]) == 0.0


def test_learned_gate():
    assert stats.learned(500, 872, 0.509)
    assert not stats.learned(450, 872, 0.509)
    assert not stats.learned(300, 872, 0.509)  # one-sided: far below the majority class is not learning


def test_mcnemar():
    a = [1.0] * 10 + [1.0] * 50 + [0.0] * 20
    b = [0.0] * 10 + [1.0] * 50 + [0.0] * 20
    p, a_only, b_only = stats.mcnemar(a, b)
    assert (a_only, b_only) == (10, 0) and p == pytest.approx(2 * 0.5**10)
    assert stats.mcnemar(b, a)[1:] == (0, 10)
    assert stats.mcnemar(a, a) == (1.0, 0, 0)


def test_bootstrap_is_paired_and_fast():
    same = arm("a", [0.8] * 5, seed=8)
    twin = Arm("b", same.seeds, same.scores, same.per_example)
    assert stats.bootstrap_interval(same, twin, stats.paired(same, twin)) == (0.0, 0.0)

    # Shared per-example difficulty with a few disagreements: paired resampling keeps the interval narrow,
    # independent resampling of each arm would not.
    rng = np.random.default_rng(9)
    rows_a, rows_b = [], []
    for _ in range(5):
        base = (rng.random(EXAMPLES) < 0.8).astype(float)
        other = base.copy()
        other[rng.choice(EXAMPLES, 20, replace=False)] = 0.0
        rows_a.append(tuple(base)), rows_b.append(tuple(other))
    a = Arm("a", tuple(range(5)), tuple(np.mean(rows_a, axis=1)), tuple(rows_a))
    b = Arm("b", tuple(range(5)), tuple(np.mean(rows_b, axis=1)), tuple(rows_b))
    start = time.perf_counter()
    low, high = stats.bootstrap_interval(a, b, stats.paired(a, b))
    assert time.perf_counter() - start < 2.0
    unpaired = 2 * 1.96 * math.sqrt(2 * 0.8 * 0.2 / (5 * EXAMPLES))  # width if the two arms were resampled independently
    assert 0 < low < high and high - low < unpaired / 2
    assert stats.bootstrap_interval(a, b, stats.paired(a, b)) == (low, high)  # seeded
    assert stats.bootstrap_interval(Arm("c", (0,), (0.5,)), b, [(0, 0)]) is None
