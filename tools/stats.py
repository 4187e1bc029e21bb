"""The statistics of an ablation: one variant against the reference, over paired seeds.

Each variant ran on the same seeds as the reference, so seed s of the variant and seed s of
the reference share data order and initialisation stream: the per-seed differences are the
thing to test. Δ is signed so that positive means the plugin helps:

- leave-one-out (the plugin removed in the variant): Δ = variant − reference;
- add (the plugin added in the variant):            Δ = reference − variant.

The primary test is the paired t-test on the per-seed Δ of val_loss (nats per token; val_bpb
is the same loss rescaled by tokens per byte, so its test would agree); Welch's t-test on the
two groups is reported alongside for readers who do not trust the pairing. p-values are
Holm–Bonferroni adjusted across the variants of one ablation; a variant "helps" or "hurts"
only when its adjusted p is below `Bar.alpha` and |Δ| in nats reaches `Bar.min_delta_nats`
(the challenge's bar: p < 0.01 and 0.005 nats). With one seed there is no test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats

ONE_SEED = "1 seed: no test"
IDENTICAL = "identical on every seed"
CONSTANT = "same difference on every seed: no test"


@dataclass
class Bar:
    """What a difference must clear to be called real."""

    alpha: float = 0.01
    min_delta_nats: float = 0.005


@dataclass
class Spread:
    """Mean and sample standard deviation (ddof 1; None for one value) of per-seed values."""

    mean: float
    std: float | None

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None)


@dataclass
class Comparison:
    """One variant against the reference, on the seeds both finished."""

    seeds: int
    delta_bpb: float  # mean paired Δ, positive = the plugin helps
    delta_nats: float
    ci_bpb: tuple[float, float] | None  # 95% CI of the mean Δ (t distribution, n-1 df)
    ci_nats: tuple[float, float] | None
    p_paired: float | None
    p_welch: float | None
    p_adjusted: float | None = None  # Holm–Bonferroni across the ablation's variants
    verdict: str = ""


def compare(ref_bpb: list[float], ref_nats: list[float], var_bpb: list[float], var_nats: list[float],
            sign: int) -> Comparison:
    """Paired comparison; list i of each argument is seed i. `sign` is +1 when the variant
    removes the plugin, -1 when it adds it (see the module docstring)."""
    d_bpb = sign * (np.asarray(var_bpb) - np.asarray(ref_bpb))
    d_nats = sign * (np.asarray(var_nats) - np.asarray(ref_nats))
    out = Comparison(len(d_nats), float(d_bpb.mean()), float(d_nats.mean()), None, None, None, None)
    if len(d_nats) < 2:
        out.verdict = ONE_SEED
        return out
    if np.ptp(d_nats) == 0:  # t is 0/0 or x/0: no test, say what happened instead
        out.verdict = IDENTICAL if d_nats[0] == 0 else CONSTANT
        return out
    paired_bpb = scipy.stats.ttest_rel(var_bpb, ref_bpb)
    paired_nats = scipy.stats.ttest_rel(var_nats, ref_nats)
    out.ci_bpb = _signed_ci(paired_bpb, sign)
    out.ci_nats = _signed_ci(paired_nats, sign)
    out.p_paired = float(paired_nats.pvalue)
    out.p_welch = float(scipy.stats.ttest_ind(var_nats, ref_nats, equal_var=False).pvalue)
    return out


def _signed_ci(paired, sign: int) -> tuple[float, float]:
    """The 95% CI of the mean of (variant - reference), turned into one of Δ."""
    ci = paired.confidence_interval(0.95)
    low, high = sign * float(ci.low), sign * float(ci.high)
    return min(low, high), max(low, high)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (scipy.stats has Benjamini–Hochberg, not Holm): the
    i-th smallest of m p-values is multiplied by m - i, then made monotone and capped at 1."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def judge(comparisons: list[Comparison], bar: Bar) -> None:
    """Fill in adjusted p-values (over the comparisons that have a test) and verdicts."""
    tested = [c for c in comparisons if c.p_paired is not None]
    for c, p in zip(tested, holm([c.p_paired for c in tested])):
        c.p_adjusted = p
        if math.isnan(p) or p >= bar.alpha:
            c.verdict = "not significant"
        elif abs(c.delta_nats) < bar.min_delta_nats:
            c.verdict = f"significant but |Δ| < {bar.min_delta_nats} nats"
        else:
            c.verdict = "helps" if c.delta_nats > 0 else "hurts"
