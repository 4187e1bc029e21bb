"""recurrence: the schedule, per-virtual-layer scalars over shared matrices, the summed gradient
of both passes, untie before eval (same logits, independent parameters, still declared, the
artifact keeps the tied weights), training, validation."""

import math

import pytest
import torch
from golf_plugins.recurrence import Config, Recurrence, schedule, untie
from torch import nn

import golfcore as golf

from golfcore.artifact import Int8Quantizer, pack, unpack
from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.optim import build_optimizers
from golfcore.params import param_specs
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import tiny_config, train_briefly


def build(cfg: Config, config=None):
    config = config or tiny_config()
    config.plugins[Recurrence.name] = cfg
    host = Host(config, {Recurrence.name: PluginInfo(Recurrence.name, Recurrence, "test", "0")})
    check_config(config, host)
    model = build_model(config, host, None)
    torch.manual_seed(0)
    with torch.no_grad():  # let every matrix reach the logits
        for layer in model.layers:
            nn.init.normal_(layer.o.weight, std=0.05)
            nn.init.normal_(layer.down.weight, std=0.05)
    return config, host, model


def test_schedule():
    assert schedule(11, [4, 5]) == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    assert schedule(4, [0]) == [0, 0, 1, 2, 3]
    assert schedule(4, [3]) == [0, 1, 2, 3, 3]
    assert schedule(4, [1, 2, 3]) == [0, 1, 2, 3, 1, 2, 3]
    config = tiny_config(num_layers=11)
    config.plugins["recurrence"] = Config()
    host = Host(config, {"recurrence": PluginInfo("recurrence", Recurrence, "test", "0")})
    assert host.first("golf_layer_schedule", config=config) == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]


def test_model_shares_matrices_and_owns_scalars():
    _, _, model = build(Config(repeat=[1, 2]))
    assert model.v2p == [0, 1, 2, 1, 2, 3] and len(model.layers) == 4 and len(model.blocks) == 6
    assert [b.layer.physical for b in model.blocks] == model.v2p
    assert model.blocks[1].attn_scale is not model.blocks[3].attn_scale
    assert model.num_encoder == 3 and model.skips.weights.size(0) == 3  # the U-Net split counts virtual layers


def grads(model, tokens, targets):
    model.zero_grad()
    model(tokens, targets).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_shared_matrices_get_the_summed_gradient_of_both_passes():
    _, _, tied = build(Config(repeat=[1, 2]))
    _, _, untied = build(Config(repeat=[1, 2]))  # builds are seeded: the same weights
    untie(untied)
    tokens, targets = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    g_tied, g_untied = grads(tied, tokens, targets), grads(untied, tokens, targets)
    for p in range(4):
        for m in ("q", "k", "v", "o", "up", "down"):
            uses = [i for i, q in enumerate(tied.v2p) if q == p]  # physical 1 -> virtual 1, 3
            summed = sum(g_untied[f"layers.{i}.{m}.weight"] for i in uses)
            torch.testing.assert_close(g_tied[f"layers.{p}.{m}.weight"], summed, atol=1e-6, rtol=1e-5)
    assert g_untied["layers.1.q.weight"].abs().sum() > 0 and g_untied["layers.3.q.weight"].abs().sum() > 0
    assert not torch.allclose(g_untied["layers.1.q.weight"], g_untied["layers.3.q.weight"])
    for name, g in g_tied.items():  # every per-virtual-layer scalar gets the same gradient either way
        if not name.startswith("layers."):
            torch.testing.assert_close(g, g_untied[name], atol=1e-6, rtol=1e-5)


def test_untie_same_logits_independent_declared_parameters():
    config, host, model = build(Config(repeat=[1, 2]))
    tokens = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        before = model.logits(tokens)
    tied_count = sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in model.layers[0].parameters())
    host.call("golf_before_eval", model=model, config=config)
    assert model.v2p == list(range(6)) and len(model.layers) == 6
    assert [b.layer.physical for b in model.blocks] == list(range(6))
    assert sum(p.numel() for p in model.parameters()) == tied_count + 2 * per_layer
    with torch.no_grad():
        torch.testing.assert_close(model.logits(tokens), before, atol=0, rtol=0)
    ptrs = [p.data_ptr() for layer in model.layers for p in layer.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    specs = param_specs(model)  # still declared: an eval adapter can build its optimizer
    assert {specs[f"layers.{i}.q.weight"].group for i in range(6)} == {"matrix"}
    build_optimizers(model, config.optim)
    with torch.no_grad():  # adapting virtual 1 leaves virtual 3 (same physical layer before) alone
        layer3 = model.layers[3].q.weight.clone()
        model.layers[1].q.weight.add_(1.0)
        assert torch.equal(model.layers[3].q.weight, layer3)
        assert not torch.allclose(model.logits(tokens), before)


def test_untie_is_optional_and_a_no_op_without_sharing():
    config, host, model = build(Config(repeat=[1, 2], untie_before_eval=False))
    host.call("golf_before_eval", model=model, config=config)
    assert model.v2p == [0, 1, 2, 1, 2, 3] and len(model.layers) == 4
    _, _, plain = build(Config(repeat=[1]))
    plain.v2p = list(range(4))  # as if nothing repeats
    plain.blocks = plain.blocks[:4]
    layers = plain.layers
    untie(plain)
    assert plain.layers is layers


class Raw:
    name = "raw"

    def compress(self, data):
        return data

    def decompress(self, data):
        return data


def test_artifact_stores_tied_weights_and_untied_load_matches():
    config, host, model = build(Config(repeat=[1, 2]))
    blob = pack(model.state_dict(), param_specs(model), Int8Quantizer(), Raw())
    state = unpack(blob, {"int8": Int8Quantizer()}, {"raw": Raw()})
    assert {k.split(".")[1] for k in state if k.startswith("layers.")} == {"0", "1", "2", "3"}
    loaded = build_model(config, host, None)
    loaded.load_state_dict(state)
    tokens = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        tied_logits = loaded.logits(tokens)
        host.call("golf_before_eval", model=loaded, config=config)
        torch.testing.assert_close(loaded.logits(tokens), tied_logits, atol=0, rtol=0)


def test_trains():
    config, host, model = build(Config(repeat=[1, 2]))
    q1 = model.layers[1].q.weight.detach().clone()
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)
    assert len(model.layers) == 4 and not torch.equal(model.layers[1].q.weight, q1)


def resolved(table):
    return resolve({"plugins": {"recurrence": table}}, discover(), "<test>")


def test_resolves_from_a_recipe():
    assert resolved({}).plugins["recurrence"] == Config([4, 5], True)
    assert resolved({"repeat": [2, 3, 4], "untie_before_eval": False}).plugins["recurrence"].repeat == [2, 3, 4]


@pytest.mark.parametrize(
    "table, key",
    [({"repeat": []}, "repeat"), ({"repeat": [5, 4]}, "repeat"), ({"repeat": [4, 6]}, "repeat"),
     ({"repeat": [4, 4]}, "repeat"), ({"repeat": [-1, 0]}, "repeat"), ({"repeat": "4,5"}, "repeat"),
     ({"untie_before_eval": "yes"}, "untie_before_eval"), ({"untie": True}, "untie")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.recurrence\].*{key}"):
        resolved(table)


def test_repeat_beyond_the_model_is_a_config_error():
    config = resolved({"repeat": [8, 9]})  # the 9-layer baseline: 0..8
    with pytest.raises(ConfigError, match=r"\[plugins.recurrence\] repeat: \[9\]"):
        check_config(config, Host(config, discover()))
    config = tiny_config()
    config.plugins["recurrence"] = Config(repeat=[3, 4])
    host = Host(config, {"recurrence": PluginInfo("recurrence", Recurrence, "test", "0")})
    with pytest.raises(ConfigError, match=r"\[plugins.recurrence\] repeat: \[4\]"):
        build_model(config, host, None)  # checked at build too


# ----------------------------------------------------------------------------- several loops, delayed, shared scalars (PR #1855)


def test_several_loops_schedule_is_the_records():
    # PR #1855's log: "encoder:[0, 1, 2, 3, 4, 5, 3, 4] decoder:[5, 3, 4, 5, 6, 7, 8, 9, 10]"
    assert schedule(11, [3, 4, 5], loops=2) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert schedule(4, [1], loops=3) == [0, 1, 1, 1, 1, 2, 3]


def delayed(share_scalars=True):
    return build(Config(repeat=[1], loops=2, start_frac=0.35, share_scalars=share_scalars, untie_before_eval=False))


def test_delayed_loop_switches_the_extra_passes_only():
    config, host, model = delayed()
    assert model.v2p == [0, 1, 1, 1, 2, 3]
    assert [b.switch is not None for b in model.blocks] == [False, False, True, True, False, False]
    assert not model.switches["recurrence"].compile_switch  # off until the trainer reaches start_frac
    (switch,) = host.collect("golf_switches", model=model, config=config, shape=golf.BatchShape(16))
    assert isinstance(switch, golf.ModuleSwitch) and switch.at == (0.35,) and switch.modules == [model.switches["recurrence"]]
    assert [switch.scheduled(f) for f in (0.0, 0.34, 0.35, 1.0)] == [False, False, True, True]
    switch.set(True)
    assert model.switches["recurrence"].compile_switch
    fresh = build_model(config, host, None)  # the model loaded from the artifact is a fresh build: off
    host.call("golf_before_eval", model=fresh, config=config)
    assert fresh.switches["recurrence"].compile_switch  # the record evaluates with its loop on


def test_shared_scalars_are_one_set_per_physical_layer():
    _, _, model = delayed()
    _, _, own = delayed(share_scalars=False)
    assert model.blocks[2].attn_scale is model.blocks[1].attn_scale and model.blocks[3].q_gain is model.blocks[1].q_gain
    per_block = sum(p.numel() for p in own.blocks[1].parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(own) - count(model) == 2 * per_block


def test_loop_off_is_the_plain_model_and_on_the_full_schedule():
    _, _, model = delayed()
    plain = build_model(tiny_config(), Host(tiny_config(), {}), None)  # 4 layers once: 2 encoder, 2 decoder, 2 skips
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.") or int(k.split(".")[1]) in (0, 1, 4, 5)}
    mapped = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = k.replace(f"blocks.{i}.", f"blocks.{ {0: 0, 1: 1, 4: 2, 5: 3}[i] }.", 1)
        mapped[k] = v[:2] if k == "skips.weights" else v  # the first skips' weights serve both states
    plain.load_state_dict(mapped, strict=True)
    tokens = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model.logits(tokens), plain.logits(tokens), atol=0, rtol=0)
        model.switches["recurrence"].compile_switch = True  # 6 running layers: 3 encoder, 3 decoder, 3 skips
        _, _, eager = build(Config(repeat=[1], loops=2, share_scalars=True, untie_before_eval=False))
        eager.load_state_dict(model.state_dict(), strict=True)
        torch.testing.assert_close(model.logits(tokens), eager.logits(tokens), atol=0, rtol=0)


@pytest.mark.parametrize("table, key", [({"loops": 0}, "loops"), ({"start_frac": 1.0}, "start_frac"), ({"share_scalars": "yes"}, "share_scalars")])
def test_bad_delayed_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.recurrence\].*{key}"):
        resolved(table)


def test_the_trainer_switches_the_loop_on_at_its_fraction():
    config = tiny_config()
    config.train.iterations = 4
    config, host, model = build(Config(repeat=[1], loops=2, start_frac=0.5, share_scalars=True, untie_before_eval=False), config)
    records = []
    outcome = train_briefly(config, host, model, records=records)
    assert math.isfinite(outcome.last_train_loss) and model.switches["recurrence"].compile_switch
    notes = [r["text"] for r in records if r.get("event") == "note" and "switch recurrence" in r.get("text", "")]
    assert notes == ["step:2 switch recurrence=True at training fraction 0.500"]
