"""golfcore.eval: byte accounting, window plans, val_bpb and the score-first adapter loop."""

from __future__ import annotations

import inspect
import io
import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
import sentencepiece as spm
import torch
import torch.multiprocessing as mp

from golfcore.assets import FINEWEB_SP1024_MODEL
from golfcore.errors import ComplianceError, ConfigError, DataError
from golfcore.contract import IGNORE, DocumentMode
from golfcore.eval import ByteLUTs, DocumentPlan, Piece, Window, build_byte_luts, evaluate, plan_windows
from tests.helpers import CaptureAdapter

V = 16


# --- byte lookup tables -------------------------------------------------------------------


def lut_total(luts: ByteLUTs, ids: list[int]) -> int:
    """Bytes of ids[1:] scored as targets of ids[:-1] (ids[0] is the BOS)."""
    t = torch.tensor(ids)
    return int(luts.count_bytes(t[:-1], t[1:]).sum())


@pytest.fixture(scope="module")
def fineweb_sp():
    return spm.SentencePieceProcessor(model_file=str(FINEWEB_SP1024_MODEL))


FINEWEB_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1999, prices rose by 12.5% (see Table 3); nobody expected it!",
    "Hello, world: it's a test -- isn't it? Yes, 42 times & more.",
    "Call me at 555-0199 before 10:30 a.m.\n\nThe \"new\" plan costs $1,250/year.",
]


@pytest.mark.parametrize("text", FINEWEB_TEXTS)
def test_fineweb_luts_count_decoded_bytes(fineweb_sp, text):
    sp = fineweb_sp
    luts = build_byte_luts(sp, 1024)
    ids = sp.encode(text)
    assert sp.unk_id() not in ids
    assert lut_total(luts, [1, *ids]) == len(sp.decode(ids).encode("utf-8"))


def test_fineweb_luts_over_a_document_stream(fineweb_sp):
    """Documents end to end, each after BOS: the space after each BOS is dropped, BOS is 0 bytes."""
    sp = fineweb_sp
    luts = build_byte_luts(sp, 1024)
    stream = [i for text in FINEWEB_TEXTS for i in (1, *sp.encode(text))]
    assert lut_total(luts, stream) == sum(len(sp.decode(sp.encode(t)).encode()) for t in FINEWEB_TEXTS)


def test_fineweb_luts_equal_the_challenge_tables(fineweb_sp):
    """The challenge counts interior "▁" as 3 UTF-8 bytes; FineWeb has none, so the tables agree."""
    sp = fineweb_sp
    luts = build_byte_luts(sp, 1100)
    assert luts.base_bytes.dtype == torch.int16 and len(luts.base_bytes) == 1100
    assert luts.is_boundary[1024:].all() and not luts.has_leading_space[1024:].any()
    for i in range(sp.get_piece_size()):
        boundary = sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
        piece = sp.id_to_piece(i)
        lead = not boundary and piece.startswith("▁")
        expected = 0 if boundary else len((piece[1:] if lead else piece).encode())
        assert (bool(luts.is_boundary[i]), bool(luts.has_leading_space[i]), int(luts.base_bytes[i])) == (
            boundary, lead, expected,
        ), piece


def test_fineweb_unknown_piece_counts_zero_bytes(fineweb_sp):
    sp = fineweb_sp
    luts = build_byte_luts(sp, 1024)
    ids = [1, *sp.encode("a 漢 b 🙂 c")]
    unk = [k for k, i in enumerate(ids) if i == sp.unk_id()]
    assert unk, "the FineWeb tokenizer has no byte fallback: uncovered characters are <unk>"
    t = torch.tensor(ids)
    per_target = luts.count_bytes(t[:-1], t[1:])
    assert all(per_target[k - 1] == 0 for k in unk)
    assert bool(luts.is_boundary[sp.unk_id()])


@pytest.fixture(scope="module")
def fallback_sp():
    """A tiny byte-fallback BPE trained on Python source, like the pystdlib tokenizer."""
    lines = "".join(inspect.getsource(m) for m in (inspect, io, json.decoder)).splitlines(keepends=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=400,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, num_threads=1, minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return x  # comment\n",
        "class A:\n\tdef g(self):\n        if self:\n            pass\n\n",
        "  leading spaces, café, 漢字 and 🙂 emoji\n",
        "x = 'naïve'    # trailing    \n\n\n",
    ],
)
def test_byte_fallback_luts_count_utf8_bytes_exactly(fallback_sp, text):
    sp = fallback_sp
    luts = build_byte_luts(sp, sp.get_piece_size())
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert lut_total(luts, [sp.bos_id(), *ids]) == len(text.encode("utf-8"))


def test_byte_fallback_whitespace_pieces_count_one_byte_per_space(fallback_sp):
    sp = fallback_sp
    luts = build_byte_luts(sp, sp.get_piece_size())
    ids = sp.encode("def f():\n        return 1\n")
    runs = [i for i in ids if sp.id_to_piece(i).count("▁") > 1]
    assert runs, "the tokenizer should have whitespace-only pieces such as ▁▁▁▁"
    for i in runs:
        n = len(sp.id_to_piece(i))
        assert (bool(luts.has_leading_space[i]), int(luts.base_bytes[i])) == (True, n - 1)
    byte_piece = next(i for i in range(sp.get_piece_size()) if sp.is_byte(i))
    assert (int(luts.base_bytes[byte_piece]), bool(luts.has_leading_space[byte_piece])) == (1, False)


# --- window plans -------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [1, 8, 64])
@pytest.mark.parametrize("stride", [1, 3, 8, 64])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 9, 63, 64, 65, 100, 1000])
def test_plan_windows_scores_every_target_once(n, seq_len, stride):
    if stride > seq_len:
        with pytest.raises(ConfigError):
            plan_windows(n, seq_len, stride)
        return
    windows = plan_windows(n, seq_len, stride)
    scored = [t for w in windows for t in range(w.first_target, w.end_target)]
    assert scored == list(range(n))
    for k, w in enumerate(windows):
        assert w.start >= 0 and w.end_target <= n and 0 <= w.score_from < w.length <= seq_len
        if stride == seq_len:
            assert w.score_from == 0
        elif k > 0:
            assert w.score_from >= seq_len - stride  # context of every scored target past the start
            assert w.length == seq_len


def test_plan_windows_shapes():
    assert plan_windows(10, 4, 4) == [Window(0, 4, 0), Window(4, 4, 0), Window(8, 2, 0)]
    assert plan_windows(10, 4, 2) == [Window(0, 4, 0), Window(2, 4, 2), Window(4, 4, 2), Window(6, 4, 2)]
    # N = seq_len + 1: the last target gets full context, nothing is scored twice (D12)
    assert plan_windows(5, 4, 2) == [Window(0, 4, 0), Window(1, 4, 3)]
    assert plan_windows(3, 8, 2) == [Window(0, 3, 0)]
    with pytest.raises(ConfigError):
        plan_windows(10, 4, 0)


# --- fixed models -------------------------------------------------------------------------


def toy_luts(v: int = V) -> ByteLUTs:
    """Token 0 is a boundary (BOS); odd tokens carry a leading space; token t has t % 3 + 1 bytes."""
    ids = torch.arange(v)
    base = torch.where(ids == 0, 0, ids % 3 + 1).to(torch.int16)
    return ByteLUTs(base, (ids % 2 == 1), ids == 0)


def hand_bytes(val: torch.Tensor) -> int:
    v = val.tolist()
    return sum((0 if y == 0 else y % 3 + 1) + (y % 2 == 1 and x != 0) for x, y in zip(v, v[1:]))


def bigram_model(seed: int = 0, v: int = V):
    table = torch.log_softmax(torch.randn(v, v, generator=torch.Generator().manual_seed(seed)), -1)
    return table, (lambda inputs, width: table[inputs[:, -width:]])  # [B,T] -> [B,width,V]


def unigram_model(seed: int = 0, v: int = V):
    row = torch.log_softmax(torch.randn(v, generator=torch.Generator().manual_seed(seed)), -1)
    return lambda inputs, width: row.expand(inputs.size(0), width, v)


def copy_model(period: int, v: int = V, p_hit: float = 0.9):
    """Predicts the token `period` back with p_hit when the window holds it, else uniform."""

    def fn(inputs, width):  # [B,T] -> [B,width,V]
        b, t = inputs.shape
        lp = torch.full((b, t, v), math.log((1 - p_hit) / (v - 1)))
        lp[:, : period - 1] = -math.log(v)
        if t >= period:
            lp[:, period - 1 :].scatter_(-1, inputs[:, : t - period + 1, None], math.log(p_hit))
        return lp[:, -width:]

    return fn


def random_tokens(n: int, seed: int = 1, v: int = V) -> torch.Tensor:
    val = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed))
    val[0] = 0
    return val


# --- evaluate -----------------------------------------------------------------------------


def test_uniform_model_scores_log2_v_bits_per_target():
    val = random_tokens(301)
    res = evaluate(lambda x, width: torch.full((x.size(0), width, V), -math.log(V)), val, toy_luts(), seq_len=32, stride=8)
    assert res.targets == 300 and res.bytes == hand_bytes(val)
    assert res.val_loss == pytest.approx(math.log(V), rel=1e-7)  # float32 log-probs, float64 sums
    assert res.val_bpb == pytest.approx(math.log2(V) * 300 / res.bytes, rel=1e-7)
    assert res.checks["c4_targets_scored"] == res.checks["c4_targets_expected"] == 300
    assert res.checks["c2_normalized_batches"] > 0 and res.checks["adapters"] == []


@pytest.mark.parametrize("seq_len,stride,batch_seqs", [(32, 32, 1), (32, 32, 4), (32, 8, 7), (50, 7, 3), (512, 64, 2)])
def test_bigram_model_matches_hand_computation(seq_len, stride, batch_seqs):
    """A bigram model's score is independent of windowing, so any double or missed target shows."""
    val = random_tokens(203)
    table, fn = bigram_model()
    nll = sum(-float(table[x, y]) for x, y in zip(val.tolist(), val[1:].tolist()))
    res = evaluate(fn, val, toy_luts(), seq_len=seq_len, stride=stride, batch_seqs=batch_seqs)
    assert res.targets == 202 and res.bytes == hand_bytes(val)
    assert res.val_loss == pytest.approx(nll / 202, rel=1e-9)
    assert res.val_bpb == pytest.approx(nll / math.log(2) / res.bytes, rel=1e-9)


@pytest.mark.parametrize("seq_len,stride,batch_seqs", [(32, 32, 4), (32, 8, 7), (50, 7, 3)])
def test_byte_sidecar_replaces_the_table(seq_len, stride, batch_seqs):
    """With a sidecar, each target is charged its own entry (whatever the table says), once."""
    val = random_tokens(203)
    sidecar = torch.randint(0, 5, (203,), generator=torch.Generator().manual_seed(3))
    table, fn = bigram_model()
    nll = sum(-float(table[x, y]) for x, y in zip(val.tolist(), val[1:].tolist()))
    res = evaluate(fn, val, toy_luts(), seq_len=seq_len, stride=stride, batch_seqs=batch_seqs, token_bytes=sidecar)
    assert res.bytes == int(sidecar[1:].sum()) != hand_bytes(val) and res.checks["bytes_from"] == "sidecar"
    assert res.val_bpb == pytest.approx(nll / math.log(2) / int(sidecar[1:].sum()), rel=1e-9)
    with pytest.raises(DataError, match="202 byte counts for 203 validation tokens"):
        evaluate(fn, val, toy_luts(), seq_len=seq_len, stride=stride, token_bytes=sidecar[1:])


def test_result_does_not_depend_on_batch_size():
    val = random_tokens(1001)
    fn = copy_model(12)
    a, b = (evaluate(fn, val, toy_luts(), seq_len=40, stride=40, batch_seqs=bs).val_bpb for bs in (1, 7))
    c, d = (evaluate(fn, val, toy_luts(), seq_len=40, stride=6, batch_seqs=bs).val_bpb for bs in (1, 7))
    assert a == pytest.approx(b, rel=1e-9) and c == pytest.approx(d, rel=1e-9)


def test_sliding_equals_plain_for_a_context_free_model():
    val = random_tokens(777)
    fn = unigram_model()
    plain = evaluate(fn, val, toy_luts(), seq_len=64, stride=64)
    sliding = evaluate(fn, val, toy_luts(), seq_len=64, stride=16)
    assert sliding.val_bpb == pytest.approx(plain.val_bpb, rel=1e-12)
    assert (sliding.targets, sliding.bytes) == (plain.targets, plain.bytes)


def test_sliding_beats_plain_for_a_model_that_uses_context():
    period = 20
    val = torch.randint(0, V, (period,), generator=torch.Generator().manual_seed(3)).repeat(40)
    fn = copy_model(period)
    plain = evaluate(fn, val, toy_luts(), seq_len=32, stride=32)
    sliding = evaluate(fn, val, toy_luts(), seq_len=32, stride=8)
    assert sliding.val_bpb < 0.5 * plain.val_bpb


@pytest.mark.parametrize("n, seq_len, stride, batch_seqs", [(203, 16, 4, 5), (203, 16, 16, 4), (10, 16, 4, 3),
                                                          (10, 16, 16, 3), (64, 16, 4, 64), (97, 20, 7, 2)])
@pytest.mark.parametrize("chunk_tokens", [None, 30])
def test_static_shapes_score_the_same_with_at_most_two_shapes(n, seq_len, stride, batch_seqs, chunk_tokens):
    """Padded to [batch_seqs, seq_len] for a compiled model: same scores, every call one of two shapes."""
    val = random_tokens(n + 1)
    _, bigram = bigram_model()
    shapes = set()

    def fn(inputs, width):
        shapes.add((*inputs.shape, width))
        return bigram(inputs, width)

    runs = []
    for static in (False, True):
        seen = []
        res = evaluate(fn, val, toy_luts(), seq_len=seq_len, stride=stride, batch_seqs=batch_seqs, static=static,
                       adapters=[UnigramMix()] if chunk_tokens else [], chunk_tokens=chunk_tokens or 32768,
                       record=lambda pos, lp: seen.append((pos, lp)))
        runs.append((res, torch.cat([p for p, _ in seen]), torch.cat([lp for _, lp in seen])))
        if static:
            assert len(shapes) <= 2 and {s[:2] for s in shapes} == {(batch_seqs, seq_len)}
            assert res.warmup_seconds > 0
        shapes.clear()
    (plain, pos_a, lp_a), (padded, pos_b, lp_b) = runs
    assert torch.equal(pos_a, torch.arange(n)) and torch.equal(pos_a, pos_b) and torch.equal(lp_a, lp_b)
    assert padded.val_bpb == plain.val_bpb and padded.targets == n


def test_progress_reports_every_batch():
    calls = []
    evaluate(unigram_model(), random_tokens(101), toy_luts(), seq_len=16, stride=4, batch_seqs=5,
             progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (100, 100)
    # window 0 (16 scored targets) is its own batch; the other 21 windows (4 each) make 5 more
    assert [d for d, _ in calls] == [16, 36, 56, 76, 96, 100]


def test_unnormalized_model_output_is_refused():
    with pytest.raises(ComplianceError, match="logprob_fn"):
        evaluate(lambda x, width: torch.zeros(x.size(0), width, V), random_tokens(50), toy_luts(), seq_len=16, stride=16)


# --- adapters -----------------------------------------------------------------------------


class Recorder:
    """Records what the loop hands it; changes nothing."""

    name = "recorder"

    def __init__(self, history_len: int):
        self.history_len = history_len
        self.histories: list[torch.Tensor] = []
        self.observed: list[torch.Tensor] = []
        self.adjusted = 0
        self.adjusted_at_observe: list[int] = []

    def start(self, model, ctx):
        pass

    def adjust(self, logprobs, history, positions):
        assert history.dtype == torch.int64 and history.shape == (logprobs.shape[0], self.history_len)
        self.histories.append(history.clone())
        self.adjusted += len(history)
        return logprobs

    def observe(self, tokens):
        self.observed.append(tokens.clone())
        self.adjusted_at_observe.append(self.adjusted)


class UnigramMix:
    """Mixes the model with unigram counts of everything observed so far."""

    name = "unigram_mix"
    history_len = 0

    def __init__(self, v: int = V, lam: float = 0.3):
        self.lam = lam
        self.counts = torch.zeros(v, dtype=torch.float64)

    def start(self, model, ctx):
        pass

    def probs(self):
        return (self.counts + 0.5) / (self.counts.sum() + 0.5 * len(self.counts))

    def adjust(self, logprobs, history, positions):
        uni = self.probs().log().float() + math.log(self.lam)
        return torch.logaddexp(logprobs + math.log(1 - self.lam), uni)

    def observe(self, tokens):
        self.counts += torch.bincount(tokens, minlength=len(self.counts))


class PositionOracle:
    """Cheats as far as the loop allows: predicts each target from the stream it was shown.

    It counts scored rows to know each row's stream position, and puts all mass on the token
    it observed there. Under score-first it never has observed a target before scoring it.
    """

    name = "oracle"
    history_len = 1

    def __init__(self):
        self.seen: list[int] = []
        self.pos = 0
        self.hits = 0

    def start(self, model, ctx):
        pass

    def adjust(self, logprobs, history, positions):
        out = logprobs.clone()
        for r in range(len(out)):
            if self.pos + r < len(self.seen):
                self.hits += 1
                out[r] = -1e4
                out[r, self.seen[self.pos + r]] = 0.0
        self.pos += len(out)
        return out

    def observe(self, tokens):
        self.seen += tokens.tolist()


@pytest.mark.parametrize("seq_len,stride,chunk_tokens", [(16, 8, 50), (16, 16, 32), (24, 5, 7), (16, 4, 1000)])
def test_adapter_sees_histories_then_each_target_once_after_scoring(seq_len, stride, chunk_tokens):
    val = random_tokens(203)
    k = 4
    rec = Recorder(k)
    evaluate(unigram_model(), val, toy_luts(), seq_len=seq_len, stride=stride, batch_seqs=3,
             adapters=[rec], chunk_tokens=chunk_tokens)
    padded = torch.cat([torch.full((k - 1,), -1), val])
    expected = torch.stack([padded[j : j + k] for j in range(202)])  # row j: val[j-3..j], the input not the target
    assert torch.equal(torch.cat(rec.histories), expected)
    assert torch.equal(torch.cat(rec.observed), val[1:])
    # each chunk is observed right after all of it, and nothing beyond it, was scored
    assert rec.adjusted_at_observe == torch.cumsum(torch.tensor([len(o) for o in rec.observed]), 0).tolist()
    assert len(rec.observed) >= 202 // max(chunk_tokens, seq_len)


def test_score_first_matches_sequential_expectation():
    """Chunks of 32 aligned with the windows: chunk c is scored with the counts of chunks < c."""
    val = random_tokens(150)
    table, fn = bigram_model()
    mix = UnigramMix()
    res = evaluate(fn, val, toy_luts(), seq_len=16, stride=8, adapters=[mix], chunk_tokens=32)
    ref, nll = UnigramMix(), 0.0
    for c in range(0, 149, 32):
        x, y = val[c : min(c + 32, 149)], val[c + 1 : min(c + 33, 150)]
        p = (1 - ref.lam) * table[x, y].double().exp() + ref.lam * ref.probs()[y]
        nll -= float(p.log().sum())
        ref.observe(y)
    assert res.val_loss == pytest.approx(nll / 149, rel=1e-6)
    assert torch.equal(mix.counts, ref.counts)
    assert res.checks["adapters"] == ["unigram_mix"]


def test_stateful_adapter_result_does_not_depend_on_batch_size():
    val = random_tokens(700)
    _, fn = bigram_model()
    runs = [
        evaluate(fn, val, toy_luts(), seq_len=32, stride=8, batch_seqs=bs, adapters=[UnigramMix()], chunk_tokens=100)
        for bs in (1, 7, 64)
    ]
    assert runs[0].val_bpb == pytest.approx(runs[1].val_bpb, rel=1e-9)
    assert runs[0].val_bpb == pytest.approx(runs[2].val_bpb, rel=1e-9)


def test_unnormalized_adapter_is_named():
    class Inflate(UnigramMix):
        name = "inflate"

        def adjust(self, logprobs, history, positions):
            return logprobs + 0.01

    with pytest.raises(ComplianceError, match=r"'inflate'.*= 0\.01 "):
        evaluate(unigram_model(), random_tokens(100), toy_luts(), seq_len=16, stride=8,
                 adapters=[UnigramMix(), Inflate()])


def test_oracle_adapter_cannot_see_targets():
    val = random_tokens(400)
    uniform = lambda x, width: torch.full((x.size(0), width, V), -math.log(V))  # noqa: E731
    oracle = PositionOracle()
    res = evaluate(uniform, val, toy_luts(), seq_len=16, stride=4, adapters=[oracle], chunk_tokens=10, batch_seqs=2)
    assert oracle.hits == 0 and oracle.seen == val[1:].tolist()
    assert res.val_loss == pytest.approx(math.log(V), rel=1e-7)


# --- distributed --------------------------------------------------------------------------


DOCUMENTS = [7, 30, 3, 12, 25, 9, 14, 40, 5]  # 9 documents: groups of 3, two ranks, two turns


def _rank_main(rank: int, world_size: int, init_file: str, out_dir: str):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        val = random_tokens(1001)
        table, fn = bigram_model()
        plain = evaluate(copy_model(9), val, toy_luts(), seq_len=32, stride=8, batch_seqs=3,
                         rank=rank, world_size=world_size)
        mix, rec = UnigramMix(), Recorder(2)
        adapted = evaluate(fn, val, toy_luts(), seq_len=32, stride=8, batch_seqs=3, adapters=[mix, rec],
                           chunk_tokens=100, rank=rank, world_size=world_size)
        docs = DocumentRecorder(DocumentMode(chunk=6, slots=3))
        by_documents = evaluate(bigram_at(table), document_stream(DOCUMENTS), toy_luts(), seq_len=16, stride=16,
                                batch_seqs=3, adapters=[docs], bos_id=0, rank=rank, world_size=world_size)
        torch.save({"plain": plain, "adapted": adapted, "observed": torch.cat(rec.observed),
                    "rows": rec.adjusted, "documents": by_documents, "entering": docs.entering,
                    "document_observed": torch.cat(docs.observed)}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    single = {}
    val = random_tokens(1001)
    _, fn = bigram_model()
    single["plain"] = evaluate(copy_model(9), val, toy_luts(), seq_len=32, stride=8)
    single["adapted"] = evaluate(fn, val, toy_luts(), seq_len=32, stride=8, adapters=[UnigramMix()], chunk_tokens=100)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for key in ("plain", "adapted"):
        for out in ranks:
            got = out[key]
            assert (got.targets, got.bytes) == (single[key].targets, single[key].bytes) == (1000, hand_bytes(val))
            assert got.val_bpb == pytest.approx(single[key].val_bpb, rel=1e-9)
    assert all(torch.equal(out["observed"], val[1:]) for out in ranks)  # every rank observes every chunk
    assert sum(out["rows"] for out in ranks) == 1000 and all(out["rows"] > 0 for out in ranks)
    stream = document_stream(DOCUMENTS)
    docs = DocumentRecorder(DocumentMode(chunk=6, slots=3))
    one = evaluate(bigram_at(bigram_model()[0]), stream, toy_luts(), seq_len=16, stride=16, batch_seqs=3,
                   adapters=[docs], bos_id=0)
    for out in ranks:  # the same score, the same stream observed
        assert out["documents"].targets == one.targets and out["documents"].val_bpb == pytest.approx(one.val_bpb, rel=1e-9)
        assert torch.equal(out["document_observed"], stream[1:])
    plan = DocumentPlan.split(stream, 0, 16, DocumentMode(chunk=6, slots=3))
    for r, out in enumerate(ranks):  # rank r takes documents r, r + 2, ...
        spans = [span for e in out["entering"] for span in e.values()]
        assert sorted(spans, key=lambda span: span.start) == [plan.span(d) for d in range(r, len(plan), 2)]
    assert len(ranks[0]["entering"]) == len(ranks[1]["entering"])  # every rank runs the same rounds


class RecordingProbe:
    """A PassProbe that probes every drawn unit and keeps what it was handed."""

    def __init__(self, picks=0):
        self.units, self.picks = [], picks

    def draw(self, units):
        self.total = units
        return list(range(units))

    def pick(self, batches):
        return min(self.picks, batches - 1)

    def admit(self, unit_seconds, elapsed, done, units, spent):
        assert unit_seconds > 0 and elapsed > 0 and 1 <= done <= units == self.total
        return True

    def check(self, unit):
        self.units.append((unit.index, unit.targets, unit.reference.clone(), unit.rows(), unit.rows(first=1)))


@pytest.mark.parametrize("adapters", [0, 1])
def test_a_probe_sees_units_as_scored_and_changes_no_score(adapters):
    val = random_tokens(161)
    kwargs = dict(seq_len=16, stride=4, batch_seqs=3, chunk_tokens=40)
    plain = evaluate(unigram_model(), val, toy_luts(), adapters=[UnigramMix()] * adapters, **kwargs)
    probe = RecordingProbe(picks=1)
    probed = evaluate(unigram_model(), val, toy_luts(), adapters=[UnigramMix()] * adapters, probe=probe, **kwargs)
    assert probed.val_bpb == plain.val_bpb and probed.checks["probed_units"] == len(probe.units) == probe.total
    assert probed.checks["probe_seconds"] > 0
    for index, targets, reference, again, regrouped in probe.units:
        assert reference.shape == (len(targets), V) and len(targets) <= 4 * 4 + 12  # at most 4 windows
        assert torch.equal(reference, again) and torch.allclose(reference, regrouped, atol=1e-6)
    starts = [t.start for _, t, *_ in probe.units]
    assert starts == sorted(starts) and starts[-1] >= 120  # units all along the stream


def test_a_unit_rescores_from_the_adapters_state_before_its_chunk():
    """The mixer learns in observe; a unit re-scored after its chunk was observed still gives
    the scores of the pass, because it uses the state copied before the chunk."""
    kept = []

    class Late(RecordingProbe):
        def check(self, unit):
            kept.append(unit)

    mix = UnigramMix()
    evaluate(unigram_model(), random_tokens(161), toy_luts(), seq_len=16, stride=4, batch_seqs=3, adapters=[mix],
             chunk_tokens=40, probe=Late())
    assert len(kept) == 4 and all(torch.equal(u.reference, u.rows()) for u in kept)


# --- document mode ------------------------------------------------------------------------


class DocumentRecorder(Recorder):
    """A document adapter that changes nothing: records groups, rounds and the stream it observes."""

    name = "documents"

    def __init__(self, mode: DocumentMode):
        super().__init__(0)
        self.documents, self.entering, self.rounds = mode, [], []

    def start_round(self, entering):
        self.entering.append(entering)

    def observe_round(self, round):
        self.rounds.append((round, self.adjusted))


def bigram_at(table):
    """The bigram model, answering document mode's calls (positions at..at+width-1 of each row)."""

    def fn(inputs, width, at=None):
        if at is None:
            return table[inputs[:, -width:]]
        return table[inputs.gather(1, at[:, None] + torch.arange(width))]

    return fn


def document_stream(lengths: list[int], bos: int = 0, seed: int = 1) -> torch.Tensor:
    """Documents of the given token counts, each led by a BOS; no other BOS inside."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.cat([torch.tensor([bos]), torch.randint(1, V, (n - 1,), generator=g)]) for n in lengths])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=9), st.integers(1, 8), st.integers(1, 4),
       st.integers(0, 10), st.integers(0, 8), st.booleans())
def test_document_mode_scores_every_target_once_as_its_documents_pieces(lengths, chunk, slots, short_len, short_chunk, lead):
    val = document_stream(lengths)
    if not lead:
        val = val[1:]  # a stream that does not start with a BOS: its first document starts at val[0]
    assume(val.numel() >= 2 and hand_bytes(val) > 0)
    mode = DocumentMode(chunk, slots, short_len, min(short_chunk, chunk))
    rec, cap = DocumentRecorder(mode), CaptureAdapter()
    table, fn = bigram_model()
    res = evaluate(bigram_at(table), val, toy_luts(), seq_len=8, stride=8, batch_seqs=2, adapters=[rec, cap], bos_id=0)
    plain = evaluate(fn, val, toy_luts(), seq_len=8, stride=8)
    pos, _ = cap.by_position()
    assert torch.equal(pos, torch.arange(val.numel() - 1)) and res.targets == val.numel() - 1  # each target once (C4)
    assert res.val_bpb == pytest.approx(plain.val_bpb, rel=1e-9)  # a bigram sees the same context in both modes
    plan = DocumentPlan.split(val, 0, 8, mode)
    spans = [plan.span(d) for d in range(len(plan))]
    assert [span for e in rec.entering for _, span in sorted(e.items(), key=lambda item: item[1].start)] == spans
    assert all(s.start == 0 or val[s.start] == 0 for s in spans) and spans[-1].stop == val.numel() - 1
    for round, _ in rec.rounds:  # every scored row: a window of its own document, the piece's targets
        for b, more in enumerate(round.more):
            scored = round.targets[b] != IGNORE
            assert scored.sum() <= chunk and (not more or scored.any())
    assert torch.equal(torch.cat(rec.observed), val[1:])  # the stream, in order, once
    scored_before = [n for _, n in rec.rounds]
    assert scored_before == sorted(scored_before)


def test_document_windows_hold_only_their_own_document_and_stream_adapters_observe_the_scored_prefix():
    val = document_stream([5, 30, 12, 9])  # documents of 5, 30, 12 and 8 targets
    rec, hist = DocumentRecorder(DocumentMode(chunk=4, slots=2)), Recorder(1)
    uniform = lambda x, width, at=None: torch.full((x.size(0), width, V), -math.log(V))  # noqa: E731
    evaluate(uniform, val, toy_luts(), seq_len=8, stride=8, batch_seqs=4, adapters=[rec, hist], bos_id=0)
    # document 0 (2 pieces) leaves slot 0 after round 1: document 2 takes it at round 2, then
    # document 3 at round 5; document 1 (8 pieces) holds slot 1 through round 7
    entering = [{s: (r.start, r.stop) for s, r in e.items()} for e in rec.entering]
    assert entering[:6] == [{0: (0, 5), 1: (5, 35)}, {}, {0: (35, 47)}, {}, {}, {0: (47, 55)}]
    first, _ = rec.rounds[0]
    assert first.inputs.tolist() == [val[0:4].tolist(), val[5:9].tolist()]  # the shorter of the two lengths, 4 and 8
    late, _ = rec.rounds[7]  # round 7: only document 1's last piece (targets 33, 34), its window from input 29
    assert late.more == [False, False] and late.at.tolist() == [0, 4] and late.inputs[1].tolist() == val[29:35].tolist() + [0, 0]
    assert late.targets[1].tolist() == val[34:36].tolist() + [IGNORE] * 2 and (late.targets[0] == IGNORE).all()
    # the stream adapters' observe: after round 0 document 0's first piece (targets 0..3); after round 1
    # its last target and document 1's first two pieces (scored in rounds 0 and 1); then a piece a round,
    # until document 1 is done (round 7) and documents 2 and 3, scored meanwhile, follow at once
    sizes = [o.numel() for o in hist.observed]
    assert sizes == [4, 1 + 8, 4, 4, 4, 4, 4, 2 + 12 + 8] and sum(sizes) == 55
    # every observe came after all it holds was scored, and before anything later in the stream was
    # observed (the second group starts after the first: stream order)
    assert torch.equal(torch.cat(hist.observed), val[1:])
    assert all(n <= m for n, m in zip(hist.adjusted_at_observe, hist.adjusted_at_observe[1:]))


def test_document_mode_refuses_two_document_adapters_or_no_bos():
    mode = DocumentMode(chunk=4, slots=2)
    with pytest.raises(ConfigError, match="document mode"):
        evaluate(unigram_model(), random_tokens(50), toy_luts(), seq_len=8, stride=8,
                 adapters=[DocumentRecorder(mode), DocumentRecorder(mode)], bos_id=0)
    with pytest.raises(ConfigError, match="document mode"):
        evaluate(unigram_model(), random_tokens(50), toy_luts(), seq_len=8, stride=8, adapters=[DocumentRecorder(mode)])


@pytest.mark.parametrize("cut", [3, 20, 33, 47])
def test_a_stream_adapter_beside_a_document_adapter_stays_causal_in_stream_order(cut):
    """Rounds score several documents at once, out of stream order; the unigram mixer learns only
    from the scored prefix, so rewriting the stream after `cut` moves no score at positions <= cut."""
    val = document_stream([5, 30, 12, 9, 20])
    rows = []
    for stream in (val, torch.cat([val[: cut + 1], torch.randint(1, V, (val.numel() - cut - 1,))])):
        seen = torch.full((val.numel() - 1, V), float("nan"))
        evaluate(bigram_at(bigram_model()[0]), stream, toy_luts(), seq_len=8, stride=8, batch_seqs=4, bos_id=0,
                 adapters=[DocumentRecorder(DocumentMode(chunk=4, slots=3)), UnigramMix()],
                 record=lambda pos, lp: seen.__setitem__(pos, lp))
        rows.append(seen)
    assert torch.equal(rows[0][: cut + 1], rows[1][: cut + 1]) and not torch.equal(rows[0], rows[1])


def test_short_documents_are_scored_in_smaller_pieces():
    val = document_stream([6, 30])  # documents of 6 and 30 targets (the last one has no next BOS: 29)
    plan = DocumentPlan.split(val, 0, 8, DocumentMode(chunk=4, slots=2, short_len=6, short_chunk=2))
    assert [plan.span(d) for d in range(2)] == [range(0, 6), range(6, 35)]
    assert [(plan.piece_len(d), plan.pieces(d)) for d in range(2)] == [(2, 3), (4, 8)]
    assert plan.piece(0, 0, 2) == Piece(0, 0, range(4, 6), 0)  # window from the document's start
    assert plan.piece(1, 1, 7) == Piece(1, 1, range(34, 35), 30)  # 8 inputs at most: 34 + 4 - 8
