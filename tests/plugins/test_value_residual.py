"""value_residual: v0 is layer 0's post-VE value, the mix and gate formulas, no parameters at
layer 0 (D7), gradients through v0, declarations and counts, training, config."""

import math

import pytest
import torch
from golf_plugins import recurrence, value_embeddings
from golf_plugins.value_residual import (
    CaptureFirstValue,
    Config,
    ValueGate,
    ValueMix,
    ValueResidual,
)
from torch import nn

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.params import ParamSpec, param_specs
from golfcore.plugins import Host, NoConfig, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import tiny_config, train_briefly


class Probe(nn.Module):
    """A value transform at `order` recording v and the ctx's v0 (if any) at each layer."""

    def __init__(self, log, order, layer):
        super().__init__()
        self.log, self.order, self.layer = log, order, layer

    def forward(self, v, ctx):
        self.log.append((self.layer, v.detach().clone(), ctx.v0))
        return v


def probe_plugin(name, log, order):
    class P(golf.Plugin):
        @golf.hookimpl
        def golf_edit_model(self, description):
            for layer in description.layers:
                layer.value_transforms.append(golf.Part(Probe, log, order, layer.info.virtual))

    P.name = name
    return P


def build(cfgs: dict, config=None):
    """cfgs: plugin class -> its config (in recipe order)."""
    config = config or tiny_config()
    for cls, cfg in cfgs.items():
        config.plugins[cls.name] = cfg
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in cfgs})
    check_config(config, host)
    return config, host, build_model(config, host, None)


def test_v0_is_layer0_value_after_value_embeddings():
    pre, mid, post = [], [], []
    _, _, model = build({
        ValueResidual: Config(),
        value_embeddings.ValueEmbeddings: value_embeddings.Config(layers=[0, 2]),
        probe_plugin("pre", pre, -5): NoConfig(),
        probe_plugin("mid", mid, 5): NoConfig(),
        probe_plugin("post", post, 20): NoConfig(),
    })
    kinds = [type(t).__name__ for t in model.blocks[0].value_transforms]
    assert kinds == ["Probe", "ValueEmbeddingAdd", "Probe", "CaptureFirstValue", "Probe"]  # VE (0) before VRL (10)
    model.logits(torch.randint(0, 64, (2, 6)))
    (_, v_pre, none), (_, v_mid, _), (_, v_post, v0) = pre[0], mid[0], post[0]
    assert none is None and not torch.allclose(v_pre, v_mid)  # VE changed layer 0's values
    torch.testing.assert_close(v0.detach(), v_mid)  # v0 is captured after VE
    torch.testing.assert_close(v_post, v_mid)  # and layer 0's own v is unchanged
    assert all(entry[2] is v0 for entry in post[1:])  # every later layer sees the same v0


@pytest.mark.parametrize("mode", ["mix", "gate"])
def test_formula_by_direct_computation(mode):
    before, after = [], []
    _, _, model = build({
        ValueResidual: Config(mode=mode),
        probe_plugin("before", before, 5): NoConfig(),
        probe_plugin("after", after, 20): NoConfig(),
    })
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.blocks[1:]:
            for p in block.value_transforms[1].parameters():
                p.normal_()
    model.logits(torch.randint(0, 64, (2, 6)))
    v0 = after[0][2].detach()
    torch.testing.assert_close(v0, before[0][1])
    for i in range(1, 4):
        t = model.blocks[i].value_transforms[1]
        v = before[i][1]
        if mode == "mix":
            assert isinstance(t, ValueMix)
            expected = t.lambdas[0] * v0 + t.lambdas[1] * v
        else:
            assert isinstance(t, ValueGate)
            s = torch.sigmoid(t.gate)
            expected = (1 - s) * v + s * v0
        torch.testing.assert_close(after[i][1], expected.detach(), atol=1e-6, rtol=1e-5)


def test_init_values():
    _, _, model = build({ValueResidual: Config()})
    assert model.blocks[1].value_transforms[0].lambdas.tolist() == [0.5, 0.5]
    _, _, model = build({ValueResidual: Config(mode="gate")})
    assert model.blocks[3].value_transforms[0].gate.item() == -1.5
    assert torch.sigmoid(torch.tensor(-1.5)).item() == pytest.approx(0.1824, abs=1e-4)


@pytest.mark.parametrize("mode", ["mix", "gate"])
def test_layer0_has_no_parameters_and_declared(mode):
    _, _, model = build({ValueResidual: Config(mode=mode)})
    (first,) = model.blocks[0].value_transforms
    assert isinstance(first, CaptureFirstValue) and not list(first.parameters())  # D7 fixed
    specs = {k: v for k, v in param_specs(model).items() if ".value_transforms." in k}
    name = "lambdas" if mode == "mix" else "gate"
    assert specs == {f"blocks.{i}.value_transforms.0.{name}": ParamSpec("scalar", "float32") for i in (1, 2, 3)}


def test_gradient_reaches_v0_producer():
    # unit level: v0 is stored as is (not detached) and receives λ0 / σ(γ) from each later layer
    v0 = torch.randn(1, 3, 2, 4, requires_grad=True)
    ctx = golf.ForwardContext(tokens=torch.zeros(1, 3, dtype=torch.long))
    assert CaptureFirstValue()(v0, ctx) is v0 and ctx.v0 is v0
    mix, gate = ValueMix([0.3, 0.7]), ValueGate(0.0)
    (mix(torch.zeros_like(v0), ctx).sum() + gate(torch.zeros_like(v0), ctx).sum()).backward()
    torch.testing.assert_close(v0.grad, torch.full_like(v0, 0.3 + 0.5))

    # model level: layer 0's W_o is zero, so layer 0's W_v gets gradient only through v0
    def grad_of_layer0_v(cfgs):
        _, _, model = build(cfgs)
        torch.manual_seed(0)
        with torch.no_grad():
            for layer in model.layers[1:]:
                nn.init.normal_(layer.o.weight, std=0.1)
        tokens = torch.randint(0, 64, (2, 6))
        model(tokens, torch.randint(0, 64, (2, 6))).backward()
        return model.layers[0].v.weight.grad

    assert grad_of_layer0_v({}).abs().max() == 0
    assert grad_of_layer0_v({ValueResidual: Config()}).abs().max() > 0
    assert grad_of_layer0_v({ValueResidual: Config(mode="gate")}).abs().max() > 0


@pytest.mark.parametrize("mode, count", [("mix", 24), ("gate", 12)])
def test_parameter_count_at_full_scale(mode, count):
    config = tiny_config(vocab_size=1024, num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=3.0)
    _, _, model = build({recurrence.Recurrence: recurrence.Config(), ValueResidual: Config(mode=mode)}, config=config)
    assert len(model.blocks) == 13
    assert sum(p.numel() for n, p in model.named_parameters() if ".value_transforms." in n) == count


def test_virtual_zero_provides_v0_whatever_its_physical_layer():
    class StartsAtTwo(golf.Plugin):
        name = "starts_at_two"

        @golf.hookimpl
        def golf_layer_schedule(self, config):
            return [2, 0, 1, 3]

    log = []
    _, _, model = build({StartsAtTwo: StartsAtTwo.Config(), ValueResidual: Config(), probe_plugin("p", log, 20): NoConfig()})
    assert isinstance(model.blocks[0].value_transforms[0], CaptureFirstValue) and model.blocks[0].layer.physical == 2
    model.logits(torch.randint(0, 64, (1, 4)))
    torch.testing.assert_close(log[0][2].detach(), log[0][1])


@pytest.mark.parametrize("mode", ["mix", "gate"])
def test_trains_and_learns(mode):
    config, host, model = build({ValueResidual: Config(mode=mode)})
    with torch.no_grad():
        for layer in model.layers:
            nn.init.normal_(layer.o.weight, std=0.05)
    t = model.blocks[2].value_transforms[0]
    before = [p.detach().clone() for p in t.parameters()]
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, t.parameters()))


def resolved(table):
    return resolve({"plugins": {"value_residual": table}}, discover(), "<test>")


def test_resolves_from_a_recipe():
    assert resolved({}).plugins["value_residual"] == Config()
    assert resolved({"mode": "gate", "gate_init": -2}).plugins["value_residual"].gate_init == -2.0


@pytest.mark.parametrize(
    "table, key",
    [({"mode": "sum"}, "mode"), ({"mix_init": [1.0]}, "mix_init"), ({"mix_init": [1.0, float("inf")]}, "mix_init"),
     ({"gate_init": float("nan")}, "gate_init"), ({"gate_init": "high"}, "gate_init"), ({"layers": [1]}, "layers")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.value_residual\].*{key}"):
        resolved(table)
