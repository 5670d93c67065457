"""Verdicts by statistical test: a study's runs, paired by seed, against the paper's sub-claims.

This replaces "the gap exceeds the larger seed std", which has no error rate and ignores that two settings
run with the same seed share data order and sampled rows. Here each claim is a paired test on per-seed
differences (95% t interval, paired t-test p), checked by a two-level bootstrap over seeds and dev examples
when per-example scores were kept, with Holm's correction across the claims of one figure. A claim the
budget cannot settle is **inconclusive**, and says the smallest effect the budget could have detected, so
"no difference found" is never read as "no difference". `RULE` states all of this for REPORT.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = "supported", "contradicted", "inconclusive", "not testable"
GREATER, EQUAL = "greater", "equal"

RULE = ("Each sub-claim compares two settings on one backbone, **paired by seed** (the same seed gives both settings the "
        "same data order and sampled rows; seeds only one setting has are left out). On the per-seed differences we "
        "report the mean, its 95% t interval, a paired t-test p and, where per-example dev scores were kept, a 95% "
        "two-level bootstrap interval (2000 resamples: seeds drawn with replacement, then dev examples drawn with "
        "replacement, the same examples for both settings). The p-values of the \"greater\" claims of one figure are "
        "Holm-adjusted together. A claim \"A > B\" is **supported** when the Holm-adjusted p is below 0.05, the mean "
        "difference is positive and the bootstrap interval (if any) lies above 0; **contradicted** when the adjusted p is "
        "below 0.05, the difference is negative and the bootstrap interval (if any) lies below 0; otherwise "
        "**inconclusive**. A claim \"A ≈ B\" (margin ±δ, 2 points unless stated) is **supported** when the 95% t interval "
        "lies inside [−δ, +δ], **contradicted** when it lies entirely outside, otherwise **inconclusive**. With fewer than "
        "2 paired seeds a claim is **not testable**. Every inconclusive verdict gives the minimum detectable effect at "
        "this budget, (t₀.₉₇₅,ₙ₋₁ + t₀.₈,ₙ₋₁)·sd/√n (two-sided α 0.05, power 0.8), or says that the difference is the same "
        "on every seed (sd = 0, no spread to test against). A run counts as having **learned** "
        "the task only if a one-sided exact binomial test puts its accuracy above the majority-class rate at p < 0.01.")


@dataclass(frozen=True)
class Arm:
    """One setting's runs on one backbone: a score per seed and, where kept, each seed's per-example scores on the dev set."""

    name: str
    seeds: tuple[int, ...]
    scores: tuple[float, ...]
    per_example: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class Claim:
    """One sub-claim of the paper: `better` beats `worse` ("greater"), or the two are about equal within ±delta ("equal")."""

    text: str
    better: str
    worse: str
    kind: str = GREATER
    delta: float = 0.02


@dataclass(frozen=True)
class Outcome:
    """A claim's verdict with every number behind it, so the report can show its work."""

    claim: Claim
    state: str
    reason: str
    difference: float
    t_interval: tuple[float, float]
    bootstrap_interval: tuple[float, float] | None
    p_value: float
    p_adjusted: float
    mde: float | None
    pairs: int


def paired(a: Arm, b: Arm) -> list[tuple[int, int]]:
    """Index pairs (i in a, j in b) of the seeds both arms have, in seed order: a seed fixes data order and sampled rows,
    so only same-seed runs differ by the setting alone."""
    where_b = {seed: j for j, seed in reversed(list(enumerate(b.seeds)))}
    where_a = {seed: i for i, seed in reversed(list(enumerate(a.seeds)))}
    return [(where_a[seed], where_b[seed]) for seed in sorted(where_a.keys() & where_b.keys())]


def _mean_sd(values: Sequence[float]) -> tuple[int, float, float]:
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    return n, mean, sd


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean; (nan, nan) below 2 values, since one value has no spread to scale by."""
    n, mean, sd = _mean_sd(diffs)
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_t_p(diffs: Sequence[float]) -> float:
    """Two-sided one-sample t-test of mean 0. All-zero differences give 1.0 (no evidence of any gap); a constant nonzero
    difference gives 0.0 (the t statistic is infinite); nan below 2 values."""
    n, mean, sd = _mean_sd(diffs)
    if n < 2:
        return math.nan
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def bootstrap_interval(a: Arm, b: Arm, pairs: Sequence[tuple[int, int]], level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the mean paired difference under a two-level bootstrap: seeds (pairs) with replacement,
    then, per drawn pair, dev examples with replacement, the same indices for both arms. The second level carries the
    dev set's sampling noise, which the t interval over a handful of seeds cannot see. None without per-example scores."""
    if a.per_example is None or b.per_example is None or not pairs:
        return None
    # mean(a[idx]) - mean(b[idx]) == mean((a - b)[idx]), so the per-example differences carry the example-level pairing.
    rows_a = np.asarray([a.per_example[i] for i, _ in pairs], dtype=float)
    rows_b = np.asarray([b.per_example[j] for _, j in pairs], dtype=float)
    if rows_a.shape != rows_b.shape or rows_a.ndim != 2:
        raise ValueError(f"per-example scores of {a.name!r} and {b.name!r} must cover the same examples in every seed")
    diff = rows_a - rows_b
    k, m = diff.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 4_000_000 // (k * m))  # bounds memory for large dev sets
    for start in range(0, resamples, block):
        r = min(block, resamples - start)
        drawn = rng.integers(0, k, size=(r, k))
        examples = rng.integers(0, m, size=(r, k, m))
        means[start:start + r] = diff[drawn[:, :, None], examples].mean(axis=(1, 2))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values: controls the chance of any false "supported" in a figure without assuming the
    tests are independent. Monotone in the raw p, capped at 1; nan stays nan and does not count towards m."""
    adjusted = [math.nan] * len(p_values)
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def minimum_detectable_effect(diffs: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference a paired t-test at this many seeds and this spread finds with the given power:
    what an inconclusive verdict could not have ruled out. None below 2 values; 0.0 when there is no spread."""
    n, _, sd = _mean_sd(diffs)
    if n < 2:
        return None
    if sd == 0:
        return 0.0
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def learned(correct: int, n: int, majority_rate: float, alpha: float = 0.01) -> bool:
    """Whether a run "learned" the task: a one-sided exact binomial test that its accuracy exceeds the majority-class
    rate gives p < alpha. A run that fails this is indistinguishable from always answering the majority class."""
    return bool(stats.binomtest(int(correct), int(n), majority_rate, alternative="greater").pvalue < alpha)


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _interval(interval: tuple[float, float]) -> str:
    return f"[{_points(interval[0])}, {_points(interval[1])}]"


def _p(p: float) -> str:
    if math.isnan(p):
        return "= n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def judge_claims(arms: dict[str, Arm], claims: list[Claim], alpha: float = 0.05) -> list[Outcome]:
    """The tests of one figure: each claim on its paired seeds, Holm across the "greater" claims given (an "equal" claim
    is a confidence-interval check, so its p_adjusted is its raw p). The states are those `RULE` states."""
    prepared = []
    for claim in claims:
        if claim.kind not in (GREATER, EQUAL):
            raise ValueError(f"claim kind must be {GREATER!r} or {EQUAL!r}, not {claim.kind!r}")
        a, b = arms.get(claim.better), arms.get(claim.worse)
        pairs = paired(a, b) if a is not None and b is not None else []
        diffs = [a.scores[i] - b.scores[j] for i, j in pairs] if pairs else []
        prepared.append((claim, a, b, pairs, diffs, paired_t_p(diffs)))
    greater_p = [p if claim.kind == GREATER else math.nan for claim, *_, p in prepared]
    adjusted = holm(greater_p)

    outcomes = []
    for (claim, a, b, pairs, diffs, p), p_holm in zip(prepared, adjusted):
        n = len(pairs)
        difference = float(np.mean(diffs)) if n else math.nan
        p_adj = p if claim.kind == EQUAL else p_holm
        if n < 2:
            missing = [name for name, arm in ((claim.better, a), (claim.worse, b)) if arm is None]
            reason = f"no runs of {', '.join(missing)}" if missing else f"{n} paired seed(s); a test needs at least 2"
            outcomes.append(Outcome(claim, NOT_TESTABLE, reason, difference, (math.nan, math.nan), None, p, p_adj, None, n))
            continue
        t_int = t_interval(diffs)
        boot = bootstrap_interval(a, b, pairs)
        mde = minimum_detectable_effect(diffs, alpha)
        label = "Holm p" if claim.kind == GREATER else "p"
        numbers = (f"{claim.better} − {claim.worse} = {_points(difference)} points, 95% t {_interval(t_int)}"
                   + (f", bootstrap {_interval(boot)}" if boot is not None else "") + f", {label} {_p(p_adj)}, {n} paired seeds")
        if claim.kind == GREATER:
            significant = p_adj < alpha
            if significant and difference > 0 and (boot is None or boot[0] > 0):
                state = SUPPORTED
            elif significant and difference < 0 and (boot is None or boot[1] < 0):
                state = CONTRADICTED
            else:
                state = INCONCLUSIVE
        else:
            numbers += f", margin ±{100 * claim.delta:.1f} points"
            if -claim.delta <= t_int[0] and t_int[1] <= claim.delta:
                state = SUPPORTED
            elif t_int[0] > claim.delta or t_int[1] < -claim.delta:
                state = CONTRADICTED
            else:
                state = INCONCLUSIVE
        if state == INCONCLUSIVE and mde == 0:  # ties, as in counts over a few positions: no MDE to give
            numbers += "; the difference is the same on every paired seed, so the seeds give no spread to test it against"
        elif state == INCONCLUSIVE:
            numbers += f"; differences under {100 * mde:.1f} points cannot be detected at this budget"
        outcomes.append(Outcome(claim, state, numbers, difference, t_int, boot, p, p_adj, mde, n))
    return outcomes



def mcnemar(a_correct: Sequence[float], b_correct: Sequence[float]) -> tuple[float, int, int]:
    """Exact McNemar test for two classifiers on the same examples (for the ensemble: majority vote vs the best single
    prompt): only the examples they disagree on carry evidence, and under the null each side wins them with
    probability 1/2. Returns (two-sided p, examples only a gets right, examples only b gets right)."""
    a = np.asarray(a_correct, dtype=float) >= 0.5
    b = np.asarray(b_correct, dtype=float) >= 0.5
    if a.shape != b.shape:
        raise ValueError("McNemar needs both classifiers' scores on the same examples")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if a_only + b_only == 0:
        return 1.0, 0, 0
    return float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue), a_only, b_only


def mean_interval(scores: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds and its t interval, for the interval on every mean in a table; nan interval for one seed."""
    _, mean, _ = _mean_sd(scores)
    low, high = t_interval(scores, level)
    return mean, low, high
