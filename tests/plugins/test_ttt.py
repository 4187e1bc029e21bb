"""Score-first TTT through golfcore.eval.evaluate on a tiny GPT: C4, learning on a repeating stream,
causality, freezing of blocks and physical layers (D14), the lr schedule, the last chunk, two ranks."""

import math

import pytest
import torch
import torch.multiprocessing as mp
from golf_plugins.ttt import Config as TttConfig
from golf_plugins.ttt import Ttt, frozen_parameters, lr_at

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.eval import ByteLUTs, evaluate
from golfcore.assemble import build_model
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import CaptureAdapter, tiny_config

V = 64
LUTS = ByteLUTs(torch.ones(V, dtype=torch.int16), torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool))


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return [0, 1, 2, 1, 2, 3]


class SharedGain(golf.Plugin):
    """A value transform whose gain is one parameter shared by virtual layers 0 and 3 (like VE's table)."""

    name = "shared_gain"

    @golf.hookimpl
    def golf_edit_model(self, description):
        gain = golf.Part(GainParameter)
        for i in (0, 3):
            description.layers[i].value_transforms.append(golf.Part(Gain, gain))


class GainParameter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.value = golf.declare(torch.nn.Parameter(torch.ones(())), "scalar", "float32")


class Gain(torch.nn.Module):
    def __init__(self, gain):
        super().__init__()
        self.gain = gain

    def forward(self, v, ctx):
        return v * self.gain.value


def make(cfg=None, *extra, chunk_tokens=128, seed=1337):
    config = tiny_config()
    config.run.seed = seed
    config.eval.chunk_tokens = chunk_tokens
    plugins = {Ttt: cfg or TttConfig(), **{cls: cls.Config() for cls in extra}}
    for cls, c in plugins.items():
        config.plugins[cls.name] = c
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in plugins})
    model = build_model(config, host, None).eval()
    (adapter,) = host.collect("golf_eval_adapter", config=config)
    return config, model, adapter


def run_eval(config, model, adapter, val, batch_seqs=4, stride=16, rank=0, world_size=1):
    cap = CaptureAdapter()
    adapter.start(model, golf.EvalContext.local(V, val.numel() - 1, config.eval.chunk_tokens, config.eval_seq_len, rank, world_size))
    res = evaluate(model.logprobs, val, LUTS, seq_len=config.eval_seq_len, stride=stride, batch_seqs=batch_seqs,
                   adapters=[adapter, cap], chunk_tokens=config.eval.chunk_tokens, rank=rank, world_size=world_size)
    return res, cap


def repeating(n, period=12, seed=0):
    pattern = torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:period]
    return pattern.repeat(n // period + 1)[:n]


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_fresh_adapter_per_call_and_defaults():
    config, model, adapter = make()
    assert adapter.name == "ttt" and adapter.history_len == 0
    cfg = resolve({"plugins": {"ttt": {}}}, discover(), "<test>").plugins["ttt"]
    assert (cfg.lr, cfg.momentum, cfg.epochs, cfg.seq_len, cfg.batch_seqs, cfg.grad_clip, cfg.freeze_blocks) == (
        0.002, 0.9, 3, 0, 32, 1.0, 0)
    assert Ttt(cfg).golf_eval_adapter(config) is not Ttt(cfg).golf_eval_adapter(config)
    adapter.start(model, golf.EvalContext.local(V, 100, seq_len=config.eval_seq_len))
    assert adapter.seq_len == config.eval_seq_len == 16  # 0 = the eval window length


@pytest.mark.parametrize("stride,chunk_tokens", [(16, 128), (5, 50), (16, 1000)])
def test_every_target_scored_once_and_model_left_in_eval_mode(stride, chunk_tokens):
    config, model, adapter = make(TttConfig(lr=0.1), chunk_tokens=chunk_tokens)
    val = torch.randint(0, V, (301,), generator=torch.Generator().manual_seed(2))
    res, cap = run_eval(config, model, adapter, val, stride=stride)
    pos, _ = cap.by_position()
    assert res.targets == 300 and torch.equal(pos, torch.arange(300))
    assert res.checks["adapters"] == ["ttt", "capture"]
    assert not model.training
    assert adapter.seen == 300 and adapter.log[-1]["steps"] == 0


def test_model_changes_after_a_chunk_and_learns_a_repeating_stream():
    val = repeating(513)
    config, plain_model, _ = make()
    plain = evaluate(plain_model.logprobs, val, LUTS, seq_len=16, stride=16, batch_seqs=4)
    config, model, adapter = make(TttConfig(lr=0.5))
    before = snapshot(model)
    res, cap = run_eval(config, model, adapter, val)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    nll = cap.nll(val)
    per_chunk = [float(nll[i : i + 128].mean()) for i in range(0, 512, 128)]
    assert per_chunk[0] == pytest.approx(plain.val_loss, rel=0.05)  # chunk 0 is scored before any update
    assert per_chunk[-1] < 0.5 * plain.val_loss
    assert per_chunk == sorted(per_chunk, reverse=True)
    assert res.val_bpb < plain.val_bpb


def test_causal_perturbing_later_tokens_leaves_earlier_scores_unchanged():
    val = repeating(400)
    p = 200  # inside chunk 1 (targets 128..255); later chunks are scored by a model trained on the perturbation
    other = val.clone()
    other[p + 1 :] = torch.randint(0, V, (other.numel() - p - 1,), generator=torch.Generator().manual_seed(9))
    rows = []
    for v in (val, other):
        config, model, adapter = make(TttConfig(lr=0.5))
        _, cap = run_eval(config, model, adapter, v, stride=8)
        rows.append(cap.by_position()[1])
    assert torch.allclose(rows[0][: p + 1], rows[1][: p + 1], atol=1e-6, rtol=0)  # position p predicts val[p+1]
    assert not torch.allclose(rows[0][p + 1 :], rows[1][p + 1 :], atol=1e-3)


def test_frozen_blocks_keep_matrices_and_scalars():
    config, model, adapter = make(TttConfig(lr=0.5, freeze_blocks=2))
    before = snapshot(model)
    run_eval(config, model, adapter, repeating(300))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    for n in before:
        if n.startswith(("blocks.0.", "blocks.1.", "layers.0.", "layers.1.")):
            assert n not in changed, n  # D14: the physical matrices of frozen blocks stay too
    assert {"layers.2.q.weight", "layers.3.up.weight", "blocks.2.attn_scale", "tok_emb.weight"} <= changed


def test_shared_physical_layer_stays_trainable_when_a_later_block_uses_it():
    config, model, adapter = make(TttConfig(lr=0.5, freeze_blocks=2), Repeat)
    assert model.v2p == [0, 1, 2, 1, 2, 3]
    frozen = {id(p) for p in frozen_parameters(model, 2)}
    assert all(id(p) in frozen for p in model.layers[0].parameters())  # used by block 0 only
    assert not any(id(p) in frozen for p in model.layers[1].parameters())  # also used by block 3
    assert all(id(p) in frozen for b in model.blocks[:2] for p in b.parameters())
    before = snapshot(model)
    run_eval(config, model, adapter, repeating(300))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert not any(n.startswith(("blocks.0.", "blocks.1.", "layers.0.")) for n in changed)
    assert {"layers.1.q.weight", "blocks.3.attn_scale"} <= changed


def test_plugin_parameter_shared_with_a_later_block_stays_trainable():
    config, model, adapter = make(TttConfig(lr=0.5, freeze_blocks=2), SharedGain)
    gain = model.blocks[0].value_transforms[0].gain.value
    assert model.blocks[3].value_transforms[0].gain.value is gain
    assert all(p is not gain for p in frozen_parameters(model, 2))
    assert any(p is gain for p in frozen_parameters(model, 4))
    before = float(gain.detach())
    run_eval(config, model, adapter, repeating(300))
    assert float(gain.detach()) != before


def test_freezing_more_blocks_than_the_model_has_is_refused():
    config, model, adapter = make(TttConfig(freeze_blocks=5))
    with pytest.raises(ConfigError, match=r"\[plugins\.ttt\] freeze_blocks"):
        adapter.start(model, golf.EvalContext.local(V, 100))


def test_lr_schedule_and_steps_per_chunk():
    config, model, adapter = make(TttConfig(lr=0.01, epochs=2, batch_seqs=3), chunk_tokens=100)
    run_eval(config, model, adapter, repeating(451), stride=10)  # 450 targets: chunks of 100, N = 5
    assert adapter.ctx.num_chunks == 5
    assert [e["chunk"] for e in adapter.log] == [0, 1, 2, 3, 4]
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * ci / 4)) for ci in range(4)]
    assert [e["lr"] for e in adapter.log[:4]] == pytest.approx(expected)
    assert expected[0] == 0.01 and expected[2] == pytest.approx(0.005)
    assert lr_at(0.01, 4, 5) == pytest.approx(0.0, abs=1e-15) and lr_at(0.01, 0, 1) == 0.01
    # windows belong to the chunk of their first target: chunk 0 holds targets 0..105 (its window at 96 ends
    # at 105), trained on 105 (val[0], the first input, is unknown); later chunks 100 targets + the boundary one
    assert [e["targets"] for e in adapter.log[:4]] == [105, 100, 100, 100]  # 7 sequences of 16 each
    assert [e["steps"] for e in adapter.log] == [2 * math.ceil(7 / 3)] * 4 + [0]


def test_no_training_after_the_last_chunk():
    config, model, adapter = make(TttConfig(lr=0.5))
    tokens = repeating(40)
    adapter.start(model, golf.EvalContext.local(V, 40, config.eval.chunk_tokens, config.eval_seq_len))
    adapter.observe(tokens[:25])
    assert not model.training
    trained = snapshot(model)
    assert any(not torch.equal(trained[n], p) for n, p in make(TttConfig(lr=0.5))[1].named_parameters())
    adapter.observe(tokens[25:])
    assert all(torch.equal(trained[n], p) for n, p in model.named_parameters())
    assert adapter.log[-1]["steps"] == 0
    state = adapter.optimizer.state[adapter.params[0]]
    assert "momentum_buffer" in state  # the buffer persists (and the last chunk did not step it)


def test_adjust_returns_logprobs_unchanged():
    config, model, adapter = make()
    adapter.start(model, golf.EvalContext.local(V, 10))
    lp = torch.log_softmax(torch.randn(5, V), -1)
    assert adapter.adjust(lp, torch.zeros(5, 0, dtype=torch.long), torch.arange(5)) is lp


@pytest.mark.parametrize(
    "table, key",
    [({"lr": 0.0}, "lr"), ({"momentum": 1.0}, "momentum"), ({"epochs": 0}, "epochs"), ({"seq_len": -1}, "seq_len"),
     ({"batch_seqs": 0}, "batch_seqs"), ({"grad_clip": -1.0}, "grad_clip"), ({"freeze_blocks": -2}, "freeze_blocks"),
     ({"epochs": 1.5}, "epochs"), ({"chunk": 3}, "chunk")],
)
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.ttt\].*{key}"):
        resolve({"plugins": {"ttt": table}}, discover(), "<test>")


# --- two ranks ----------------------------------------------------------------------------


def _rank_main(rank, world_size, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        config, model, adapter = make(TttConfig(lr=0.5, batch_seqs=3))
        res, _ = run_eval(config, model, adapter, repeating(300), stride=8, rank=rank, world_size=world_size)
        torch.save({"bpb": res.val_bpb, "params": snapshot(model)}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one(tmp_path):
    """Each step's sequences are split across ranks and the summed gradients all-reduced: same weights,
    same score as one rank (up to float summation order)."""
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    config, model, adapter = make(TttConfig(lr=0.5, batch_seqs=3))
    single, _ = run_eval(config, model, adapter, repeating(300), stride=8)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for out in ranks:
        assert out["bpb"] == pytest.approx(single.val_bpb, rel=1e-4)
        for n, p in model.named_parameters():
            assert torch.allclose(out["params"][n], p, atol=1e-4), n
    for n in ranks[0]["params"]:
        assert torch.equal(ranks[0]["params"][n], ranks[1]["params"][n])  # identical weights on every rank
