"""Token n-gram tilt: the tilted distribution by hand (boost, renormalize: C2), the table equal to
a naive recount from scored tokens only, at most one hint per position, the eval loop's C1/C3
probes, the gain on a repetitive stream, the token-channel declaration, config validation."""

import math

import pytest
import torch
from golf_plugins.ngram_tilt import Config, NgramTilt, NgramTiltPlugin

import golfcore as golf
from golfcore import audit
from golfcore.errors import ConfigError
from golfcore.eval import ByteLUTs, evaluate
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import CaptureAdapter
from tests.test_audit import ToyPath

V = 8
LUTS = ByteLUTs(torch.ones(V, dtype=torch.int16), torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool))


def tilt(**kw):
    t = NgramTilt(Config(**kw))
    t.start(None, golf.EvalContext.local(V, 10**6))
    return t


def repetitive_stream(n, period=7, noise=0.1, seed=0):
    """A fixed pattern repeated, a fraction `noise` of its tokens replaced at random."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, V, (period,), generator=g)
    out = pattern.repeat(n // period + 1)[:n].clone()
    flip = torch.rand(n, generator=g) < noise
    out[flip] = torch.randint(0, V, (int(flip.sum()),), generator=g)
    return out


def test_tilt_matches_hand_computed_distribution():
    t = tilt(order=3, boost=1.5, threshold=0.6)
    # contexts (a, b) -> next: (1, 2) -> 3 three times, 4 once; (2, 3) -> 1 twice, 2 once, 5 once
    t.observe(torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 4, 1, 2, 3, 2, 3, 5]))
    assert t.table[(1, 2)][1:] == [4, 3, 3] and t.table[(2, 3)][1:] == [4, 1, 2]  # total, top token, top count
    p = torch.tensor([[0.05, 0.1, 0.1, 0.2, 0.25, 0.1, 0.1, 0.1], [0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    history = torch.tensor([[1, 2], [2, 3]])  # hint 3 (3/4 >= 0.6); (2, 3): top 1 at 2/4 < 0.6, none
    out = t.adjust(p.log(), history, torch.tensor([20, 21])).exp()
    z = 1 + 0.2 * (math.exp(1.5) - 1)
    expected = p[0] / z
    expected[3] = 0.2 * math.exp(1.5) / z
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.allclose(out[1], p[1], atol=1e-7)  # no hint: unchanged
    assert torch.allclose(out.sum(-1), torch.ones(2), atol=1e-6)  # C2


def test_at_most_one_token_per_position_is_boosted():
    t = tilt(order=2, boost=3.0, threshold=0.5)
    t.observe(repetitive_stream(300))
    lp = torch.log_softmax(torch.randn(V, V, generator=torch.Generator().manual_seed(1)), -1)
    history = torch.arange(V)[:, None]
    out = t.adjust(lp, history, torch.arange(V))
    hints = t.hints(history)
    assert (hints >= 0).any()
    ratio = out - lp  # -log Z everywhere, + beta at the hint
    for row, h in enumerate(hints.tolist()):
        raised = (ratio[row] > ratio[row].min() + 1e-5).nonzero().flatten().tolist()
        assert raised == ([h] if h >= 0 else [])


def test_table_equals_a_naive_recount_of_the_scored_targets_across_chunks():
    val = repetitive_stream(400, noise=0.3)
    t = tilt(order=4)
    res = evaluate(lambda x, w: torch.zeros(x.size(0), w, V).log_softmax(-1), val, LUTS, seq_len=16, stride=8,
                   adapters=[t], chunk_tokens=37)
    targets = val[1:].tolist()  # val[0] is never observed: the first 3 targets have no full context
    naive = {}
    for i in range(3, len(targets)):
        counts = naive.setdefault(tuple(targets[i - 3 : i]), {})
        counts[targets[i]] = counts.get(targets[i], 0) + 1
    assert {c: e[0] for c, e in t.table.items()} == naive
    assert res.checks["c2_max_deviation"] < 1e-5


def test_passes_the_eval_loops_causality_and_score_first_probes():
    class Tilt(NgramTilt):
        def __init__(self):
            super().__init__(Config(order=3, boost=2.0, threshold=0.5))

    probes = audit.run_probes(ToyPath([Tilt]), repetitive_stream(301, noise=0.2), seed=0)
    assert probes["c1_causal"]["status"] == "pass" and probes["c1_causal"]["worst_deviation"] == 0.0
    assert probes["c3_score_before_update"]["status"] == "pass"


def test_never_uses_the_target_perturbing_later_tokens_leaves_earlier_rows_unchanged():
    val = repetitive_stream(300)
    p = 150
    other = val.clone()
    other[p + 1 :] = torch.randint(0, V, (other.numel() - p - 1,), generator=torch.Generator().manual_seed(9))
    rows = []
    for v in (val, other):
        cap = CaptureAdapter()
        evaluate(lambda x, w: torch.zeros(x.size(0), w, V).log_softmax(-1), v, LUTS, seq_len=16, stride=4,
                 adapters=[tilt(order=3), cap], chunk_tokens=30)
        rows.append(cap.by_position()[1])
    assert torch.equal(rows[0][: p + 1], rows[1][: p + 1])
    assert not torch.equal(rows[0][p + 1 :], rows[1][p + 1 :])


def test_tilt_lowers_the_loss_on_a_repetitive_stream_and_zero_boost_changes_nothing():
    val = repetitive_stream(1500)
    uniform = lambda x, w: torch.zeros(x.size(0), w, V).log_softmax(-1)  # noqa: E731
    kw = dict(seq_len=16, stride=16, chunk_tokens=64)
    plain = evaluate(uniform, val, LUTS, **kw)
    tilted = evaluate(uniform, val, LUTS, adapters=[tilt(order=3, boost=2.0)], **kw)
    off = evaluate(uniform, val, LUTS, adapters=[tilt(order=3, boost=0.0)], **kw)
    assert tilted.val_loss < plain.val_loss - 0.5
    assert off.val_loss == pytest.approx(plain.val_loss, abs=1e-6)


def test_plugin_declares_the_token_channel_and_runs_last():
    from golf_plugins.hedge_mixer import HedgeMixer

    config = resolve({"plugins": {"ngram_tilt": {}}}, discover(), "<test>")
    c = config.plugins["ngram_tilt"]
    assert (c.order, c.boost, c.threshold) == (16, 2.625, 0.8)  # PR #2135's TOKEN_ORDER, TOKEN_BOOST, TOKEN_THRESHOLD
    plugin = NgramTiltPlugin(c)
    a, b = plugin.golf_eval_adapter(config), plugin.golf_eval_adapter(config)
    assert a is not b and a.history_len == 15 and a.order > HedgeMixer.order
    assert a.ngram_channel == "token"


@pytest.mark.parametrize("table, key", [({"order": 1}, "order"), ({"boost": float("nan")}, "boost"),
                                        ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold")])
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.ngram_tilt\].*{key}"):
        resolve({"plugins": {"ngram_tilt": table}}, discover(), "<test>")
