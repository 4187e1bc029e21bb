"""Phased LoRA TTT: the wrap against a hand-computed case (zero B = base, one Adam step by hand),
per-slot training and resets in document mode, score-before-update through golfcore.eval and
the C1/C3 probes (prefix and in-pass), phases on the base weights, and a planted variant that
trains on a chunk before scoring it failing the probes."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from golf_plugins.lora_ttt import Config, LoraProjection, LoraTtt, SlotAdam

import golfcore as golf
from golfcore import audit
from golfcore.assemble import build_model
from golfcore.errors import ConfigError
from golfcore.eval import ByteLUTs, evaluate
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import CaptureAdapter, tiny_config

V, BOS = 64, 1
LUTS = ByteLUTs(torch.ones(V, dtype=torch.int16), torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool))
PLANTED = Path(__file__).resolve().parents[1] / "planted"


def test_zero_b_gives_the_base_output_and_one_adam_step_matches_the_hand_computation():
    base = golf.Projection(2, 3)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]))
    lora = LoraProjection(base, rank=1, scale=2.0)
    with torch.no_grad():
        lora.a.copy_(torch.tensor([[[1.0, 1.0, 0.0]]]))  # [S=1, r=1, in=3]
    x = torch.tensor([[[1.0, 2.0, 3.0]]])  # [1,1,3]
    assert torch.equal(lora(x), torch.tensor([[[7.0, 1.0]]]))  # x Wᵀ, B = 0
    # loss = sum(y): dL/dB = scale · 1 ⊗ (x Aᵀ) = 2 · [1,1]ᵀ·3 = [[6],[6]]; dL/dA = scale · Bᵀ1 ⊗ x = 0.
    # Adam's first step is -lr·m̂/(√v̂+eps) = -lr·g/(|g|+eps): -lr·sign(g) up to eps, 0 where g = 0.
    opt = torch.optim.Adam([lora.a, lora.b], lr=0.1, betas=(0.0, 0.999))
    lora(x).sum().backward()
    assert torch.equal(lora.b.grad, torch.tensor([[[6.0], [6.0]]]))
    opt.step()
    assert torch.allclose(lora.b, torch.tensor([[[-0.1], [-0.1]]]))
    assert torch.equal(lora.a, torch.tensor([[[1.0, 1.0, 0.0]]]))  # zero gradient: unchanged
    # y = x Wᵀ + 2 · (x Aᵀ = 3) · B = [7, 1] + 6 · [-0.1, -0.1]
    assert torch.allclose(lora(x), torch.tensor([[[6.4, 0.4]]]))


def test_slots_are_per_row_adapters():
    base = golf.Projection(4, 3)
    lora = LoraProjection(base, rank=2, scale=1.0, slots=2)
    with torch.no_grad():
        lora.b[1].fill_(1.0)
    x = torch.randn(2, 5, 3)
    y = lora(x)
    assert torch.equal(y[0], base(x[0]))
    assert torch.allclose(y[1], base(x[1]) + x[1] @ lora.a[1].T @ lora.b[1].T)


def make(cfg=None, chunk_tokens=32):
    config = tiny_config()
    config.eval.chunk_tokens = chunk_tokens
    config.plugins["lora_ttt"] = cfg or small()
    host = Host(config, {"lora_ttt": PluginInfo("lora_ttt", LoraTtt, "test", "0")})
    model = build_model(config, host, None).eval()
    (adapter,) = host.collect("golf_eval_adapter", config=config)
    return config, model, adapter


def small(**overrides):
    """Pieces of 8 targets, 2 documents at a time (the tiny model's eval windows are 16 long)."""
    return Config(**{"chunk": 8, "slots": 2, **overrides})


def run_eval(config, model, adapter, val, batch_seqs=4, rank=0, world_size=1):
    cap = CaptureAdapter()
    adapter.start(model, golf.EvalContext.local(V, val.numel() - 1, config.eval.chunk_tokens, config.eval_seq_len,
                                                rank, world_size))
    res = evaluate(model.logprobs, val, LUTS, seq_len=config.eval_seq_len, stride=16, batch_seqs=batch_seqs,
                   adapters=[adapter, cap], chunk_tokens=config.eval.chunk_tokens, bos_id=BOS, rank=rank,
                   world_size=world_size)
    return res, cap


def documents(lengths, seed=0):
    """BOS-led documents, each a repeating pattern (learnable within the document)."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lengths:
        pattern = torch.randint(2, V, (5,), generator=g)
        docs.append(torch.cat([torch.tensor([BOS]), pattern.repeat(n // 5 + 1)[: n - 1]]))
    return torch.cat(docs)


def test_defaults_and_bad_options():
    cfg = resolve({"plugins": {"lora_ttt": {}}}, discover(), "<test>").plugins["lora_ttt"]
    assert (cfg.rank, cfg.targets, cfg.epochs, cfg.chunk, cfg.slots, cfg.phase_prefix_docs) == (8, ["k", "o", "up", "down"], 1, 48, 64, 0)
    for bad in ({"targets": ["q", "head"]}, {"rank": 0}, {"beta1": 1.0}, {"targets": []}, {"short_chunk": 64},
                {"slots": 0}, {"weight_decay": -1.0}):
        with pytest.raises(ConfigError, match="lora_ttt"):
            resolve({"plugins": {"lora_ttt": bad}}, discover(), "<test>")


def test_wrap_leaves_scores_unchanged_until_trained_and_a_new_document_resets_its_slot_only():
    config, model, adapter = make(small(lr=0.05, targets=["q", "v", "o"]))  # o: the fresh model's zero-initialised o passes no gradient to q, v
    val = documents([40, 40, 41])
    before = model.logprobs(val[None, :16].expand(2, -1), 16)
    adapter.start(model, golf.EvalContext.local(V, val.numel() - 1, 32, config.eval_seq_len))
    assert torch.allclose(model.logprobs(val[None, :16].expand(2, -1), 16), before, atol=1e-6)  # B = 0: the base model
    assert all(type(layer.q).__name__ == "LoraProjection" and type(layer.k).__name__ == "Projection" for layer in model.layers)
    adapter.start_round({0: range(0, 39), 1: range(39, 79)})
    x = torch.stack([val[:16], val[39:55]])  # each slot's first window
    y = torch.stack([val[1:9], val[40:48]])
    for more in ([True, True], [True, False]):  # slot 1's document is done after the first round
        adapter.observe_round(golf.Round(x, torch.zeros(2, dtype=torch.long), y, more))
    b1 = [lora.b[1].clone() for lora in adapter.loras]
    assert any(lora.b[0].any() for lora in adapter.loras) and any(b.any() for b in b1)
    assert adapter.adam.t.tolist() == [2.0, 1.0] and adapter.log["steps"] == 2
    adapter.start_round({0: range(79, 120)})  # a new document in slot 0: slot 1 keeps its state
    assert all(torch.equal(lora.a[0], lora.a0[0]) and not lora.b[0].any() for lora in adapter.loras)
    assert all(torch.equal(lora.b[1], b) for lora, b in zip(adapter.loras, b1))
    assert adapter.adam.t.tolist() == [0.0, 1.0] and adapter.log["documents"] == 3


def test_slot_adam_is_torch_adam_per_slot():
    """Each slot follows torch.optim.Adam (L2 weight decay) on its own, resets and skipped steps included."""
    p = torch.nn.Parameter(torch.randn(2, 3, 4))
    refs = [torch.nn.Parameter(p[s].detach().clone()) for s in range(2)]
    opt = SlotAdam([p], lr=0.1, betas=(0.5, 0.9), eps=1e-8, weight_decay=0.3)
    torch_opts = [torch.optim.Adam([r], lr=0.1, betas=(0.5, 0.9), eps=1e-8, weight_decay=0.3) for r in refs]
    for step, on in enumerate([[True, True], [True, False], [False, True], [True, True]]):
        g = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(step))
        p.grad = g * torch.tensor(on, dtype=torch.float32)[:, None, None]
        opt.step(torch.tensor(on))
        for s in range(2):
            if on[s]:
                refs[s].grad = g[s].clone()
                torch_opts[s].step()
        assert all(torch.allclose(p[s], refs[s], atol=1e-6) for s in range(2))


def test_every_target_scored_once_and_per_document_adaptation_helps():
    val = documents([150, 150, 151])
    config, model, adapter = make(small(lr=0.03, rank=4, epochs=2))
    res, cap = run_eval(config, model, adapter, val)
    pos, _ = cap.by_position()
    assert res.targets == 450 and torch.equal(pos, torch.arange(450)) and not model.training
    _, plain, plain_adapter = make(small(lr=1e-9))  # the same windows, adapters that barely move
    base, _ = run_eval(config, plain, plain_adapter, val)
    assert res.val_loss < base.val_loss - 0.03  # measured: 4.04 against 4.15 nats (a fresh model, 19 pieces per document)


def test_a_documents_scores_do_not_depend_on_the_documents_beside_it():
    val = documents([30, 45, 20, 52, 33])
    rows = []
    for slots in (1, 3):
        config, model, adapter = make(small(lr=0.05, rank=4, slots=slots))
        res, cap = run_eval(config, model, adapter, val, batch_seqs=slots)
        rows.append(cap.by_position()[1])
    assert torch.allclose(rows[0], rows[1], atol=1e-5)


def test_a_phase_trains_the_base_weights_on_the_first_documents_only():
    val = documents([40, 40, 40, 41])
    config, model, adapter = make(small(phase_prefix_docs=2, phases=2, phase_lr=0.1, phase_batch_seqs=2))
    adapter.start(model, golf.EvalContext.local(V, val.numel() - 1, 32, config.eval_seq_len))
    snap = [p.detach().clone() for p in adapter.base_params]
    adapter.observe(val[1:81])  # documents 0, 1 finished only when the BOS at 80 is seen
    adapter.start_round({})
    changed = any(not torch.equal(p, s) for p, s in zip(adapter.base_params, snap))
    assert changed and adapter.log["phases"] == [{"documents": 1, "steps": 2, "targets": 38},
                                                 {"documents": 2, "steps": 3, "targets": 78}]
    # phase 1: document 0 (39 tokens: 38 targets, 3 sequences of 16, 2 per step); phase 2: documents 0, 1
    assert adapter.finished == [] and all(lora.active for lora in adapter.loras)  # no phase left: nothing kept


PHASED = dict(lr=0.05, rank=4, phase_prefix_docs=4, phase_lr=0.05, phase_batch_seqs=2)
EIGHT = [30, 22, 41, 17, 35, 26, 12, 30]


def _rank_main(rank, world_size, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        config, model, adapter = make(small(lr=0.05, rank=4))
        res, _ = run_eval(config, model, adapter, documents(EIGHT), rank=rank, world_size=world_size)
        config, model, phased = make(small(**PHASED))
        run_eval(config, model, phased, documents(EIGHT), rank=rank, world_size=world_size)
        torch.save({"bpb": res.val_bpb, "log": phased.log, "params": [p.detach() for p in phased.base_params]},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one(tmp_path):
    """Documents dealt out to the ranks: per-document adapters give the same score as one rank; a
    phase's sequences split across them with the gradients all-reduced give the same weights (the
    documents in flight when it runs differ, so the phased score may differ by rank count)."""
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    config, model, adapter = make(small(lr=0.05, rank=4))
    single, _ = run_eval(config, model, adapter, documents(EIGHT))
    config, model, phased = make(small(**PHASED))
    run_eval(config, model, phased, documents(EIGHT))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert phased.log["phases"] == [{"documents": 4, "steps": 4, "targets": 108}]  # 109 observed tokens (val[0] never is): 7 sequences of 16
    for out in ranks:
        assert out["bpb"] == pytest.approx(single.val_bpb, rel=1e-5)
        assert out["log"]["phases"] == phased.log["phases"]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out["params"], phased.base_params))
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))


def planted(module):
    spec = importlib.util.spec_from_file_location(f"planted_{module}", PLANTED / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Path_:
    """A scoring path (audit.ScoringPath) running a fresh tiny model and one adapter per call."""

    seq_len, stride, batch_seqs, chunk_tokens, vocab_size, logit_bound, bos_id = 16, 16, 2, 32, V, 30.0, BOS
    documents = golf.DocumentMode(chunk=8, slots=2)
    adapter_names, model_plugins, before_eval_plugins, document_aware = ["lora_ttt"], [], [], []
    device, source = torch.device("cpu"), "random init"

    def __init__(self, adapter_factory):
        self.factory = adapter_factory
        self.pass_probe = None

    def score(self, tokens, variant, record):
        config, model, _ = make(chunk_tokens=variant.chunk_tokens or self.chunk_tokens)
        adapters = [self.factory()][: variant.adapters if variant.adapters is not None else 1]
        for a in adapters:
            a.start(model, golf.EvalContext.local(V, tokens.numel() - 1, variant.chunk_tokens or self.chunk_tokens, 16))
        evaluate(model.logprobs, tokens, LUTS, seq_len=16, stride=16, batch_seqs=variant.batch_seqs or self.batch_seqs,
                 adapters=adapters, chunk_tokens=variant.chunk_tokens or self.chunk_tokens, record=record, bos_id=BOS,
                 probe=self.pass_probe)

    def reduce_max(self, value):
        return value


def test_c1_and_c3_probes_pass_it():
    path = Path_(lambda: LoraTtt(small(lr=0.05)).golf_eval_adapter(None))
    tokens = documents([30, 20, 30])
    assert audit.probe_c1(path, tokens, audit.cut_points(path, tokens.numel() - 1), seed=0)["status"] == "pass"
    assert audit.probe_c3(path, tokens, [2, 1])["status"] == "pass"
    path.pass_probe = probe = audit.PassProbe(path, share=0.99, max_units=4)
    probe.admit = lambda *args: True  # probe every drawn round
    path.score(tokens, audit.Variant(), lambda pos, lp: None)
    assert len(probe.probed) == 4 and not probe.failures and probe.worst["c1"] <= 1e-5


def test_the_probes_fail_the_planted_variant_that_trains_on_a_chunk_before_scoring_it():
    path = Path_(lambda: planted("pretrain_chunk").Adapter(small(lr=0.05)))
    tokens = documents([30, 20, 30])
    c1 = audit.probe_c1(path, tokens, audit.cut_points(path, tokens.numel() - 1), seed=0)
    assert c1["status"] == "fail" and c1["culprit"] == "eval adapter 'lora_ttt'"
    assert audit.probe_c3(path, tokens, [2, 1])["status"] == "fail"
    path.pass_probe = probe = audit.PassProbe(path, share=0.99, max_units=4)
    probe.admit = lambda *args: True
    path.score(tokens, audit.Variant(), lambda pos, lp: None)
    assert probe.failures and next(iter(probe.failures.values()))["culprit"] == "eval adapter 'lora_ttt'"


@pytest.mark.slow
def test_golf_run_refuses_the_planted_pre_scoring_variant(tmp_path, pystdlib_root):
    from tests.test_cli import golf, tiny_recipe

    recipe = tiny_recipe(tmp_path, pystdlib_root, "chunk_tokens = 64")
    brief = ["--set", "train.iterations=2", "--set", "train.val_every=0", "--set", "data.max_val_tokens=1024"]
    proc = golf("run", recipe, "--plugins-dir", PLANTED, *brief, "--with", "planted_pretrain_chunk",
                "--set", "plugins.planted_pretrain_chunk.chunk=16", "--set", "plugins.planted_pretrain_chunk.slots=4", check=False)
    assert proc.returncode == 3, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "c1_causal" in error and "culprit: eval adapter 'planted_pretrain_chunk'" in error
