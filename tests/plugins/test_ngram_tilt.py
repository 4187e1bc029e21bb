"""Token n-gram tilt: the tilted distribution by hand (boost, renormalize: C2), the tensor table
equal to a brute-force Python table (counts, top token and its tie rule, hints) on random streams
in random chunks, only scored targets counted, at most one hint per position, the eval loop's
C1/C3 probes, the gain on a repetitive stream, the token-channel declaration, config validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


def entry(t, context):
    """(total, top token, top count) of one context in t's table, None when unseen."""
    (i,) = t.lookup(torch.tensor([context])).tolist()
    return None if i < 0 else (t.total[i].item(), t.top_token[i].item(), t.top_count[i].item())


def test_tilt_matches_hand_computed_distribution():
    t = tilt(order=3, boost=1.5, threshold=0.6)
    # contexts (a, b) -> next: (1, 2) -> 3 three times, 4 once; (2, 3) -> 1 twice, 2 once, 5 once
    t.observe(torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 4, 1, 2, 3, 2, 3, 5]))
    assert entry(t, (1, 2)) == (4, 3, 3) and entry(t, (2, 3)) == (4, 1, 2)  # total, top token, top count
    p = torch.tensor([[0.05, 0.1, 0.1, 0.2, 0.25, 0.1, 0.1, 0.1], [0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    history = torch.tensor([[1, 2], [2, 3]])  # hint 3 (3/4 >= 0.6); (2, 3): top 1 at 2/4 < 0.6, none
    out = t.adjust(p.log(), history, torch.tensor([20, 21])).exp()
    z = 1 + 0.2 * (math.exp(1.5) - 1)
    expected = p[0] / z
    expected[3] = 0.2 * math.exp(1.5) / z
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.allclose(out[1], p[1], atol=1e-7)  # no hint: unchanged
    assert torch.allclose(out.sum(-1), torch.ones(2), atol=1e-6)  # C2


class Reference:
    """The table target by target in Python: counts, total, and the first token to reach the largest count."""

    def __init__(self, k):
        self.k, self.stream, self.table = k, [], {}

    def observe(self, tokens):
        for y in tokens:
            if len(self.stream) >= self.k:
                counts, state = self.table.setdefault(tuple(self.stream[-self.k :]), ({}, [0, None, 0]))
                counts[y] = counts.get(y, 0) + 1
                state[0] += 1
                if counts[y] > state[2]:
                    state[1], state[2] = y, counts[y]
            self.stream.append(y)

    def hint(self, context, threshold):
        found = self.table.get(tuple(context))
        return found[1][1] if found and found[1][2] >= threshold * found[1][0] else -1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.integers(2, 5), st.lists(st.integers(1, 40), min_size=1, max_size=8),
       st.sampled_from([0.3, 0.5, 2 / 3, 0.8, 1.0]), st.integers(0, 2**31 - 1))
def test_table_and_hints_equal_a_brute_force_table_on_random_streams(order, vocab, chunks, threshold, seed):
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, vocab, (sum(chunks),), generator=g)
    t, ref = tilt(order=order, threshold=threshold), Reference(order - 1)
    at = 0
    for size in chunks:  # the adapter sees the targets chunk by chunk; the first k-1 have no full context
        t.observe(stream[at : at + size])
        ref.observe(stream[at : at + size].tolist())
        at += size
        queries = torch.randint(0, vocab, (64, order - 1), generator=g)  # every seen context and unseen ones
        queries[:3, 0] = -1  # histories reaching before the stream start
        seen = torch.tensor(list(ref.table), dtype=torch.long).reshape(-1, order - 1)
        queries = torch.cat([queries, seen])
        assert t.hints(queries).tolist() == [ref.hint(c, threshold) for c in queries.tolist()]
    assert t.total.numel() == len(ref.table) and t.pair_keys.numel() == sum(len(c) for c, _ in ref.table.values())
    assert int(t.pair_counts.sum()) == int(t.total.sum()) == max(len(stream) - (order - 1), 0)
    for context, (counts, (total, top, top_count)) in ref.table.items():
        assert entry(t, context) == (total, top, top_count)
        i = t.lookup(torch.tensor([context])).item()
        for y, n in counts.items():
            (j,) = (t.pair_keys == i * V + y).nonzero().flatten().tolist()
            assert t.pair_counts[j].item() == n


def test_ties_go_to_the_first_token_to_reach_the_count_within_one_chunk_and_across_chunks():
    t = tilt(order=2, threshold=0.5)
    t.observe(torch.tensor([0, 5, 0, 3, 0, 3, 0, 5]))  # after 0: 5, 3, 3, 5 -> 3 reached 2 first
    assert entry(t, (0,)) == (4, 3, 2)
    t.observe(torch.tensor([0, 5, 0, 3]))  # 5 reaches 3 first
    assert entry(t, (0,)) == (6, 5, 3)


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
    ref = Reference(3)
    ref.observe(val[1:].tolist())  # val[0] is never observed: the first 3 targets have no full context
    assert t.total.numel() == len(ref.table)
    assert all(entry(t, c) == tuple(state) for c, (_, state) in ref.table.items())
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
