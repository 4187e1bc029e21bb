"""The ablation statistics on synthetic numbers (no training)."""

import numpy as np
import pytest

from golf_tools.stats import IDENTICAL, ONE_SEED, Bar, compare, holm, judge

BPB_PER_NAT = 0.85  # any fixed tokens-per-byte ratio: bpb is the loss rescaled


def simulated(rng, seeds: int, effect_nats: float, sign: int = 1, seed_std: float = 0.02, pair_std: float = 0.004):
    """(ref_bpb, ref_nats, var_bpb, var_nats): seed-to-seed spread shared by the pair (same data
    order and init stream), plus a smaller per-run spread, plus the plugin's effect; the
    variant's loss moves by sign * effect (sign -1: the variant is the one with the plugin)."""
    shared = rng.normal(2.5, seed_std, seeds)
    ref = shared + rng.normal(0, pair_std, seeds)
    var = shared + rng.normal(0, pair_std, seeds) + sign * effect_nats
    return list(ref * BPB_PER_NAT), list(ref), list(var * BPB_PER_NAT), list(var)


def test_holm_adjusts_step_down():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_no_true_effect_is_called_significant_at_most_about_one_percent():
    rng = np.random.default_rng(0)
    ablations, variants = 2000, 2
    called = strict_called = 0
    for _ in range(ablations):
        comparisons = [compare(*simulated(rng, 3, 0.0), sign=1) for _ in range(variants)]
        judge(comparisons, Bar())
        called += sum(c.verdict in ("helps", "hurts") for c in comparisons)
        # the p-value bar alone (no minimum Δ) must also hold its level
        judge(comparisons, Bar(min_delta_nats=0.0))
        strict_called += sum(c.verdict in ("helps", "hurts") for c in comparisons)
    assert called / (ablations * variants) <= 0.01
    assert strict_called / (ablations * variants) <= 0.01


@pytest.mark.parametrize("sign", [1, -1])
def test_planted_effect_is_found_with_the_right_sign(sign):
    """A plugin that lowers the loss by 0.01 nats: removing it (sign +1) raises the variant's
    loss, adding it (sign -1) lowers it; either way Δ is +0.01 and the verdict is "helps"."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = compare(*simulated(rng, 5, 0.01, sign=sign, pair_std=0.001), sign=sign)
        judge([c], Bar())
        assert c.verdict == "helps"
        assert c.delta_nats == pytest.approx(0.01, abs=0.003)
        assert c.delta_bpb == pytest.approx(0.01 * BPB_PER_NAT, abs=0.003)
        assert c.ci_nats[0] < c.delta_nats < c.ci_nats[1]
        assert c.p_adjusted == c.p_paired < 0.01 and c.p_welch is not None


def test_harmful_plugin_is_called_hurts():
    rng = np.random.default_rng(2)
    c = compare(*simulated(rng, 5, -0.02, pair_std=0.001), sign=1)
    judge([c], Bar())
    assert c.delta_nats < 0 and c.verdict == "hurts"


def test_small_but_consistent_difference_is_below_the_bar():
    rng = np.random.default_rng(3)
    c = compare(*simulated(rng, 8, 0.002, pair_std=0.0001), sign=1)
    judge([c], Bar())
    assert c.p_adjusted < 0.01 and c.verdict.startswith("significant but |Δ| <")


def test_one_seed_invents_no_p_value():
    c = compare([1.0], [2.0], [1.1], [2.2], sign=1)
    judge([c], Bar())
    assert c.verdict == ONE_SEED and c.p_paired is None and c.p_adjusted is None and c.ci_nats is None
    assert c.delta_nats == pytest.approx(0.2)


def test_identical_runs_have_no_test():
    c = compare([1.0, 1.1], [2.0, 2.1], [1.0, 1.1], [2.0, 2.1], sign=1)
    judge([c], Bar())
    assert c.verdict == IDENTICAL and c.p_paired is None and c.delta_nats == 0
