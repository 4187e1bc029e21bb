"""Hedge mixer: normalized experts and mixture (D1), the Hedge update by hand on newly scored positions only
(D8), warm-up, tables equal to a naive recount across chunk boundaries (D10, D11), batching invariance,
causality, gains on toy streams, two ranks (D9), config validation."""

import math

import pytest
import torch
import torch.multiprocessing as mp
from golf_plugins.hedge_mixer import EXPERTS, Config, HedgeMixer, HedgeMixerPlugin

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.eval import ByteLUTs, evaluate
from golfcore.plugins import discover
from golfcore.recipe import resolve

BOS = golf.SpecialTokens().bos_id  # HedgeMixer's default; a run passes its tokenizer's
from tests.helpers import CaptureAdapter

V = 16
B = 32  # trigram buckets (small: collisions happen and must be counted like the naive recount)
LUTS = ByteLUTs(torch.ones(V, dtype=torch.int16), torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool))


def cfg(**kw):
    base = dict(trigram_buckets=B, warmup_tokens=0)
    base.update(kw)
    return Config(**base)


def mixer(**kw):
    m = HedgeMixer(cfg(**kw))
    m.start(None, golf.EvalContext.local(V, 10**6))
    return m


def bigram_model(seed=0, sharpness=1.0):
    table = torch.log_softmax(sharpness * torch.randn(V, V, generator=torch.Generator().manual_seed(seed)), -1)
    return lambda inputs, width: table[inputs[:, -width:]]


def unigram_model(seed=0):
    row = torch.log_softmax(torch.randn(V, generator=torch.Generator().manual_seed(seed)), -1)
    return lambda inputs, width: row.expand(inputs.size(0), width, V)


def markov2_stream(n, seed=0, concentration=0.1):
    """An order-2 Markov chain with peaked transitions: n-gram experts learn it, a unigram model cannot."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # Dirichlet samples from the global generator
        torch.manual_seed(seed)
        trans = torch.distributions.Dirichlet(torch.full((V,), concentration)).sample((V, V))  # [V,V,V]
    out = [0, 1]
    for _ in range(n - 2):
        out.append(int(torch.multinomial(trans[out[-2], out[-1]], 1, generator=g)))
    return torch.tensor(out)


def run(fn, val, adapter, *, seq_len=16, stride=4, batch_seqs=3, chunk_tokens=50, rank=0, world_size=1):
    cap = CaptureAdapter()
    adapter.start(None, golf.EvalContext.local(V, val.numel() - 1, chunk_tokens, seq_len, rank, world_size))
    res = evaluate(fn, val, LUTS, seq_len=seq_len, stride=stride, batch_seqs=batch_seqs, adapters=[adapter, cap],
                   chunk_tokens=chunk_tokens, rank=rank, world_size=world_size)
    return res, cap


def naive_counts(targets, v=V, buckets=B):
    """The tables recounted by a Python loop over the observed stream (stream start = -1 contexts; a BOS starts a trigram context afresh)."""
    uni = torch.zeros(v, dtype=torch.int64)
    bi = torch.zeros(v + 1, v, dtype=torch.int64)
    tri = torch.zeros(buckets + 1, v, dtype=torch.int64)
    prev, cur = -1, -1
    for y in targets:
        uni[y] += 1
        bi[v if cur < 0 else cur, y] += 1
        h = buckets if prev < 0 or cur < 0 or cur == BOS else ((prev * 36313) ^ (cur * 27191)) % buckets
        tri[h, y] += 1
        prev, cur = cur, y
    return uni, bi, tri


# --- normalization (D1) -------------------------------------------------------------------


def test_there_is_no_entropy_expert():
    assert EXPERTS == ("neural", "unigram", "bigram", "trigram")
    m = mixer()
    assert m.w.tolist() == [2.0, 0.0, 0.0, 0.0]


def test_every_expert_is_normalized_over_v():
    m = mixer()
    m.observe(markov2_stream(500))
    history = torch.tensor([[-1, -1], [-1, 3], [3, 5], [7, 7], [0, 15], [15, 0]] + [[i, j] for i in range(V) for j in range(V)])
    lp = torch.log_softmax(torch.randn(len(history), V), -1)
    for k, e in enumerate(m.experts(lp, history)):
        assert e.shape == (len(history), V)
        assert torch.allclose(torch.logsumexp(e.double(), -1), torch.zeros(len(history), dtype=torch.float64), atol=1e-5), EXPERTS[k]
    assert m.trigram_total.sum() == m.bigram_total.sum() == m.unigram.sum() == 500


@pytest.mark.parametrize("entropy_feature", [False, True])
def test_output_is_normalized_at_every_position(entropy_feature):
    val = markov2_stream(600)
    m = HedgeMixer(cfg(entropy_feature=entropy_feature, entropy_lr=0.5))
    res, cap = run(bigram_model(), val, m)
    _, rows = cap.by_position()
    assert rows.shape == (599, V)
    assert torch.logsumexp(rows.double(), -1).abs().max() < 1e-5
    assert res.checks["c2_max_deviation"] < 1e-5
    if entropy_feature:
        assert m.beta != 0


# --- Hedge update by hand (D8) ------------------------------------------------------------


def test_hedge_update_matches_hand_computation():
    """Two chunks through adjust/observe directly: w and the mixture by hand from the naive counts."""
    eta = 0.5
    m = mixer(eta=eta)
    val = markov2_stream(41, seed=3).tolist()
    neural = torch.log_softmax(torch.randn(40, V, generator=torch.Generator().manual_seed(4)), -1)
    w = [2.0, 0.0, 0.0, 0.0]

    def hist(j):
        return [val[j - 1] if j >= 1 else -1, val[j]]

    def expert_probs(j, y, observed):
        """p_k(y) at position j from the targets observed so far (a Python recount)."""
        uni, bi, tri = naive_counts(observed)
        prev, cur = hist(j)
        h = B if prev < 0 or cur == BOS else ((prev * 36313) ^ (cur * 27191)) % B
        return [
            math.exp(float(neural[j, y])),
            (float(uni[y]) + 0.1) / (len(observed) + 0.1 * V),
            (float(bi[cur, y]) + 0.1) / (float(bi[cur].sum()) + 0.1 * V),
            (float(tri[h, y]) + 0.01) / (float(tri[h].sum()) + 0.01 * V),
        ]

    observed: list[int] = []
    for lo, hi in ((0, 17), (17, 40)):
        pos = torch.arange(lo, hi)
        history = torch.tensor([hist(j) for j in range(lo, hi)])
        out = torch.cat([m.adjust(neural[pos[:5]], history[:5], pos[:5]),  # two batches: order of calls is free
                         m.adjust(neural[pos[5:]], history[5:], pos[5:])])
        pi = [math.exp(x) / sum(math.exp(v) for v in w) for x in w]
        losses = [0.0] * 4
        for r, j in enumerate(range(lo, hi)):
            for y in range(V):
                q = sum(p * e for p, e in zip(pi, expert_probs(j, y, observed)))
                assert float(out[r, y].exp()) == pytest.approx(q, rel=1e-5)
            for k, e in enumerate(expert_probs(j, val[j + 1], observed)):
                losses[k] -= math.log(e)
        m.observe(torch.tensor(val[lo + 1 : hi + 1]))
        observed += val[lo + 1 : hi + 1]
        w = [wk - eta * lk / (hi - lo) for wk, lk in zip(w, losses)]
        assert m.w.tolist() == pytest.approx(w, rel=1e-9)
    assert [u["positions"] for u in m.updates] == [17, 23]


def test_update_uses_only_the_chunks_own_positions():
    """D8: a chunk's update averages over exactly the positions scored in it, each once, whatever the stride."""
    val = markov2_stream(301)
    m = HedgeMixer(cfg())
    run(bigram_model(), val, m, seq_len=32, stride=4, chunk_tokens=64)
    sizes = [u["positions"] for u in m.updates]
    assert sum(sizes) == 300 and all(s <= 64 + 4 for s in sizes)


# --- warm-up ------------------------------------------------------------------------------


def test_warmup_passes_logprobs_through_unchanged():
    val = markov2_stream(400)
    fn = bigram_model()
    plain = evaluate(fn, val, LUTS, seq_len=16, stride=4, batch_seqs=3)
    m = HedgeMixer(cfg(warmup_tokens=10**9))
    res, cap = run(fn, val, m)
    assert res.val_bpb == plain.val_bpb
    pos, rows = cap.by_position()
    assert torch.equal(rows, fn(val[pos][:, None], 1)[:, 0])
    assert m.updates == [] and m.w.tolist() == [2.0, 0.0, 0.0, 0.0]
    lp = torch.log_softmax(torch.randn(3, V), -1)
    assert m.adjust(lp, torch.zeros(3, 2, dtype=torch.long), torch.arange(3)) is lp
    assert int(m.unigram.sum()) == 399  # the tables fill during warm-up


def test_warmup_ends_at_the_first_chunk_after_enough_observed_tokens():
    val = markov2_stream(400)
    fn = bigram_model()
    m = HedgeMixer(cfg(warmup_tokens=120))
    _, cap = run(fn, val, m, stride=10, chunk_tokens=50)
    pos, rows = cap.by_position()
    neural = fn(val[pos][:, None], 1)[:, 0]
    same = (rows == neural).all(-1)
    first_mixed = int((~same).nonzero()[0])
    # chunks hold 0..55, 56..105, 106..155 (windows belong to the chunk of their first target): after 156 observed
    assert first_mixed == 156 and same[:156].all() and not same[156:].any()
    assert m.updates[0]["positions"] == 50


# --- tables (D10, D11) --------------------------------------------------------------------


@pytest.mark.parametrize("stride,chunk_tokens", [(4, 50), (16, 16), (5, 7), (16, 1000)])
def test_counts_equal_a_naive_recount(stride, chunk_tokens):
    val = markov2_stream(503)
    m = HedgeMixer(cfg())
    run(bigram_model(), val, m, stride=stride, chunk_tokens=chunk_tokens)
    uni, bi, tri = naive_counts(val[1:].tolist())
    assert torch.equal(m.unigram.long(), uni) and m.observed == 502
    assert torch.equal(m.bigram.long(), bi) and torch.equal(m.bigram_total, bi.sum(1))
    assert torch.equal(m.trigram.long(), tri) and torch.equal(m.trigram_total, tri.sum(1))


def test_boundary_ngrams_are_counted_once():
    m = mixer()
    m.observe(torch.tensor([3, 4, 5]))
    m.observe(torch.tensor([6, 7]))
    assert m.unigram.tolist()[3:8] == [1, 1, 1, 1, 1] and m.observed == 5
    assert m.bigram[5, 6] == 1 and m.bigram[6, 7] == 1 and m.bigram[V, 3] == 1  # (5,6) spans the boundary
    h = ((4 * 36313) ^ (5 * 27191)) % B
    h2 = ((5 * 36313) ^ (6 * 27191)) % B
    assert m.trigram[h, 6] == 1 and m.trigram[h2, 7] == 1
    assert m.trigram[B].sum() == 2  # 3 and 4 follow the stream start


def test_trigram_context_is_the_real_previous_token():
    """D11: the context comes from the history (the real x_{t-1}), also at window position 0."""
    m = mixer()
    m.observe(torch.tensor([2, 5, 9, 2, 5, 9, 2, 5]))
    lp = torch.full((2, V), -math.log(V))
    tri = m.trigram_logprobs(torch.tensor([[2, 5], [-1, 5]]))
    assert int(tri[0].argmax()) == 9  # (2,5) -> 9 seen twice
    assert set(tri[1].topk(2).indices.tolist()) == {2, 5}  # the stream-start bucket saw only 2 and 5
    assert m.mix(lp, torch.tensor([[2, 5], [7, 5]]))[0, 9] > m.mix(lp, torch.tensor([[2, 5], [7, 5]]))[1, 9]


# --- batching, causality ------------------------------------------------------------------


@pytest.mark.parametrize("entropy_feature", [False, True])
def test_results_identical_for_different_batch_seqs(entropy_feature):
    val = markov2_stream(700)
    out = []
    for bs in (1, 4, 64):
        m = HedgeMixer(cfg(entropy_feature=entropy_feature))
        res, _ = run(bigram_model(), val, m, seq_len=24, stride=6, batch_seqs=bs, chunk_tokens=100)
        out.append((res.val_bpb, m.w.clone(), float(m.beta)))
    for bpb, w, beta in out[1:]:
        assert bpb == pytest.approx(out[0][0], rel=1e-9)
        assert torch.allclose(w, out[0][1], rtol=1e-12) and beta == pytest.approx(out[0][2], rel=1e-9, abs=1e-15)


def test_never_uses_the_target_perturbing_later_tokens_leaves_earlier_rows_unchanged():
    val = markov2_stream(500)
    p = 230
    other = val.clone()
    other[p + 1 :] = torch.randint(0, V, (other.numel() - p - 1,), generator=torch.Generator().manual_seed(9))
    rows = []
    for v in (val, other):
        _, cap = run(bigram_model(), v, HedgeMixer(cfg(entropy_feature=True)), chunk_tokens=50)
        rows.append(cap.by_position()[1])
    assert torch.equal(rows[0][: p + 1], rows[1][: p + 1])  # row p is the distribution of val[p+1]
    assert not torch.equal(rows[0][p + 1 :], rows[1][p + 1 :])


# --- gains on toy streams -----------------------------------------------------------------


def test_mixture_beats_a_weak_model_on_a_markov_stream_and_learns_the_right_weights():
    val = markov2_stream(4001)
    fn = unigram_model()
    plain = evaluate(fn, val, LUTS, seq_len=16, stride=16)
    # a synthetic chain where id 1 is an ordinary state, not a document start
    m = HedgeMixer(cfg(warmup_tokens=200, trigram_buckets=4096, cross_documents=True))
    res, _ = run(fn, val, m, stride=16, chunk_tokens=200)
    assert res.val_bpb < plain.val_bpb - 0.5
    pi = m.weights()
    assert int(pi.argmax()) == 3 and pi[0] < 0.5 * 0.649  # the trigram (true order) leads; the model fades from its prior


def test_mixture_keeps_a_good_model():
    """On a stream sampled from the model itself, the mixture costs little (the n-gram experts' prior share)
    and the neural weight grows at every update."""
    table = torch.log_softmax(3 * torch.randn(V, V, generator=torch.Generator().manual_seed(5)), -1)
    g = torch.Generator().manual_seed(6)
    out = [0]
    for _ in range(3000):
        out.append(int(torch.multinomial(table[out[-1]].exp(), 1, generator=g)))
    val = torch.tensor(out)
    fn = lambda x, width: table[x[:, -width:]]  # noqa: E731
    plain = evaluate(fn, val, LUTS, seq_len=16, stride=16)
    m = HedgeMixer(cfg(warmup_tokens=200))
    res, _ = run(fn, val, m, stride=16, chunk_tokens=200)
    assert res.val_bpb < plain.val_bpb * 1.06
    pi0 = [torch.softmax(torch.tensor(u["w"]), 0)[0] for u in m.updates]
    assert pi0 == sorted(pi0) and pi0[-1] > 0.8


# --- two ranks (D9) -----------------------------------------------------------------------


def _rank_main(rank, world_size, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        m = HedgeMixer(cfg(entropy_feature=True))
        res, _ = run(bigram_model(), markov2_stream(801), m, stride=4, chunk_tokens=100, rank=rank, world_size=world_size)
        torch.save({"bpb": res.val_bpb, "w": m.w, "beta": m.beta, "trigram": m.trigram}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_same_val_bpb_as_one(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    m = HedgeMixer(cfg(entropy_feature=True))
    single, _ = run(bigram_model(), markov2_stream(801), m, stride=4, chunk_tokens=100)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for out in ranks:
        assert out["bpb"] == pytest.approx(single.val_bpb, rel=1e-9)
        assert torch.allclose(out["w"], m.w, rtol=1e-12) and torch.allclose(out["beta"], m.beta, rtol=1e-9)
        assert torch.equal(out["trigram"], m.trigram)
    assert torch.equal(ranks[0]["w"], ranks[1]["w"])


# --- plugin and config --------------------------------------------------------------------


def test_positions_scored_beyond_the_chunk_wait_and_positions_already_observed_are_refused():
    """Document mode observes the scored prefix, which lags: a row scored beyond the observed chunk
    enters the update of the chunk holding it. A position handed over after its target was
    observed breaks C3/C4: refused, not mixed in."""
    m = mixer()
    lp = torch.log_softmax(torch.randn(3, V), -1)
    m.adjust(lp, torch.zeros(3, m.history_len, dtype=torch.long), torch.tensor([0, 1, 7]))
    m.observe(torch.arange(5))
    assert m.updates[-1]["positions"] == 2 and m.records[0][0].tolist() == [7]
    m.observe(torch.arange(5, 10))
    assert m.updates[-1]["positions"] == 1 and m.records[0][0].numel() == 0
    m.adjust(lp[:1], torch.zeros(1, m.history_len, dtype=torch.long), torch.tensor([3]))
    with pytest.raises(golf.ComplianceError, match="1 scored positions are not in the observed chunk 10..14"):
        m.observe(torch.arange(5))


def test_plugin_gives_a_fresh_adapter_ordered_after_ttt():
    from golf_plugins.ttt import TttAdapter

    config = resolve({"plugins": {"hedge_mixer": {}}}, discover(), "<test>")
    c = config.plugins["hedge_mixer"]
    assert (c.eta, c.neural_prior, c.warmup_tokens, c.trigram_buckets) == (0.1, 2.0, 10000, 65536)
    assert (c.unigram_alpha, c.bigram_alpha, c.trigram_alpha, c.entropy_feature) == (0.1, 0.1, 0.01, False)
    plugin = HedgeMixerPlugin(c)
    a, b = plugin.golf_eval_adapter(config), plugin.golf_eval_adapter(config)
    assert a is not b and a.order > TttAdapter.order and a.history_len == 2


@pytest.mark.parametrize(
    "table, key",
    [({"eta": -0.1}, "eta"), ({"warmup_tokens": -1}, "warmup_tokens"), ({"trigram_buckets": 0}, "trigram_buckets"),
     ({"unigram_alpha": 0.0}, "unigram_alpha"), ({"bigram_alpha": -1.0}, "bigram_alpha"),
     ({"trigram_alpha": 0}, "trigram_alpha"), ({"entropy_lr": -1.0}, "entropy_lr"), ({"entropy_feature": 1}, "entropy_feature"),
     ({"neural_prior": float("inf")}, "neural_prior"), ({"experts": 5}, "experts")],
)
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.hedge_mixer\].*{key}"):
        resolve({"plugins": {"hedge_mixer": table}}, discover(), "<test>")
