"""Phased LoRA TTT: the wrap against a hand-computed case (zero B = base, one Adam step by hand),
reset at a BOS, score-before-update through golfcore.eval and the C1/C3 probes, phases on the
base weights, and a planted variant that trains on a chunk before scoring it failing the probes."""

import importlib.util
from pathlib import Path

import pytest
import torch
from golf_plugins.lora_ttt import Config, LoraProjection, LoraTtt

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
    config.plugins["lora_ttt"] = cfg or Config()
    host = Host(config, {"lora_ttt": PluginInfo("lora_ttt", LoraTtt, "test", "0")})
    model = build_model(config, host, None).eval()
    (adapter,) = host.collect("golf_eval_adapter", config=config)
    return config, model, adapter


def run_eval(config, model, adapter, val, stride=16, batch_seqs=4):
    cap = CaptureAdapter()
    adapter.start(model, golf.EvalContext.local(V, val.numel() - 1, config.eval.chunk_tokens, config.eval_seq_len))
    res = evaluate(model.logprobs, val, LUTS, seq_len=config.eval_seq_len, stride=stride, batch_seqs=batch_seqs,
                   adapters=[adapter, cap], chunk_tokens=config.eval.chunk_tokens)
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
    assert (cfg.rank, cfg.targets, cfg.epochs, cfg.phase_docs) == (8, ["k", "o", "up", "down"], 1, 0)
    for bad in ({"targets": ["q", "head"]}, {"rank": 0}, {"beta1": 1.0}, {"targets": []}):
        with pytest.raises(ConfigError, match="lora_ttt"):
            resolve({"plugins": {"lora_ttt": bad}}, discover(), "<test>")


def test_wrap_leaves_scores_unchanged_until_trained_and_resets_at_each_bos():
    config, model, adapter = make(Config(lr=0.05, targets=["q", "v", "o"]))  # o: the fresh model's zero-initialised o passes no gradient to q, v
    val = documents([40, 40, 41])
    before = model.logprobs(val[None, :16], 16)
    adapter.start(model, golf.EvalContext.local(V, val.numel() - 1, 32, config.eval_seq_len))
    assert torch.allclose(model.logprobs(val[None, :16], 16), before, atol=1e-6)  # B = 0: the base model
    assert all(type(layer.q).__name__ == "LoraProjection" and type(layer.k).__name__ == "Projection" for layer in model.layers)
    adapter.observe(val[1:30])  # document 0's first 29 targets
    assert any(lora.b.abs().sum() > 0 for lora in adapter.loras)
    base = {id(p): p.detach().clone() for p in adapter.base_params}
    adapter.observe(val[30:50])  # holds document 1's BOS (val[40]): reset, then document 1's first tokens
    assert adapter.log == [{"document": 0, "tokens": 39, "steps": 2}]  # val[0] is never observed and adapter.steps == 1
    assert torch.cat(adapter.doc).tolist() == val[40:50].tolist()
    assert all(torch.equal(p, base[id(p)]) for p in adapter.base_params)  # adapters only, no phase
    adapter.observe(val[50:80])  # into document 2 (BOS at 80 is a target of the next chunk)
    assert len(adapter.log) == 1
    adapter.observe(val[80:])
    assert [e["document"] for e in adapter.log] == [0, 1]


def test_every_target_scored_once_and_per_document_adaptation_helps():
    val = documents([150, 150, 151])
    config, model, adapter = make(Config(lr=0.03, rank=4, epochs=2))
    res, cap = run_eval(config, model, adapter, val)
    pos, _ = cap.by_position()
    assert res.targets == 450 and torch.equal(pos, torch.arange(450)) and not model.training
    _, plain, _ = make()
    base = evaluate(plain.logprobs, val, LUTS, seq_len=config.eval_seq_len, stride=16, batch_seqs=4)
    assert res.val_loss < base.val_loss - 0.03  # measured: 4.09 against 4.14 nats (a fresh model learns little in 14 chunks)


def test_a_phase_trains_the_base_weights_on_finished_documents_only():
    val = documents([40, 40, 40, 41])
    config, model, adapter = make(Config(phase_docs=2, phase_lr=0.1, phase_batch_seqs=2))
    adapter.start(model, golf.EvalContext.local(V, val.numel() - 1, 32, config.eval_seq_len))
    snap = [p.detach().clone() for p in adapter.base_params]
    adapter.observe(val[1:81])  # documents 0, 1 finished only when BOS at 80 is seen
    changed = any(not torch.equal(p, s) for p, s in zip(adapter.base_params, snap))
    assert changed and adapter.log[-1] == {"phase_after_documents": 2, "steps": 3, "targets": 78}
    # the phase's stream is documents 0 and 1 as observed (39 + 40 tokens, 78 targets): 5 sequences of 16, 2 per step


def planted(module):
    spec = importlib.util.spec_from_file_location(f"planted_{module}", PLANTED / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Path_:
    """A scoring path (audit.ScoringPath) running a fresh tiny model and one adapter per call."""

    seq_len, stride, batch_seqs, chunk_tokens, vocab_size, logit_bound = 16, 16, 4, 32, V, 30.0
    adapter_names, model_plugins, before_eval_plugins, document_aware = ["lora_ttt"], [], [], []
    device, source = torch.device("cpu"), "random init"

    def __init__(self, adapter_factory):
        self.factory = adapter_factory

    def score(self, tokens, variant, record):
        config, model, _ = make(chunk_tokens=variant.chunk_tokens or self.chunk_tokens)
        adapters = [self.factory()][: variant.adapters if variant.adapters is not None else 1]
        for a in adapters:
            a.start(model, golf.EvalContext.local(V, tokens.numel() - 1, variant.chunk_tokens or self.chunk_tokens, 16))
        evaluate(model.logprobs, tokens, LUTS, seq_len=16, stride=16, batch_seqs=variant.batch_seqs or 4,
                 adapters=adapters, chunk_tokens=variant.chunk_tokens or self.chunk_tokens, record=record)

    def reduce_max(self, value):
        return value


def test_c1_and_c3_probes_pass_it():
    path = Path_(lambda: LoraTtt(Config(lr=0.05)).golf_eval_adapter(None))
    tokens = documents([40, 40, 40])
    assert audit.probe_c1(path, tokens, audit.cut_points(path, tokens.numel() - 1), seed=0)["status"] == "pass"
    assert audit.probe_c3(path, tokens, [4, 1])["status"] == "pass"


def test_the_c1_probe_fails_the_planted_variant_that_trains_on_a_chunk_before_scoring_it():
    path = Path_(lambda: planted("pretrain_chunk").Adapter(Config(lr=0.05)))
    tokens = documents([40, 40, 40])
    c1 = audit.probe_c1(path, tokens, audit.cut_points(path, tokens.numel() - 1), seed=0)
    assert c1["status"] == "fail" and c1["culprit"] == "eval adapter 'lora_ttt'"


@pytest.mark.slow
def test_golf_run_refuses_the_planted_pre_scoring_variant(tmp_path, pystdlib_root):
    from tests.test_cli import golf, tiny_recipe

    recipe = tiny_recipe(tmp_path, pystdlib_root, "chunk_tokens = 64")
    small = ["--set", "train.iterations=2", "--set", "train.val_every=0", "--set", "data.max_val_tokens=1024"]
    proc = golf("run", recipe, "--plugins-dir", PLANTED, *small, "--with", "planted_pretrain_chunk", check=False)
    assert proc.returncode == 3, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "c1_causal" in error and "culprit: eval adapter 'planted_pretrain_chunk'" in error
