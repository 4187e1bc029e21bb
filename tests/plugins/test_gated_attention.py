"""gated_attention: σ(4)·y at init, the head-wise formula with random W and b on the block's
normalized (and ln-scaled) input, order after XSA, layer selection, declarations and counts,
training, config."""

import math

import pytest
import torch
from golf_plugins import ln_scale, recurrence, xsa
from golf_plugins.gated_attention import Config, GatedAttention, HeadGate
from torch import nn

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.model import rms_norm
from golfcore.params import ParamSpec, param_specs
from golfcore.plugins import Host, NoConfig, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import tiny_config, train_briefly


class Spy(nn.Module):
    """An attention-output transform at `order` recording (y, x)."""

    def __init__(self, log, order):
        super().__init__()
        self.log, self.order = log, order

    def forward(self, y, v, x, ctx):
        self.log.append((y.detach().clone(), x.detach().clone()))
        return y


def spy_plugin(name, log, order):
    class P(golf.Plugin):
        @golf.hookimpl
        def golf_edit_model(self, description):
            for layer in description.layers:
                layer.output_transforms.append(golf.Part(Spy, log, order))

    P.name = name
    return P


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return [0, 1, 2, 1, 2, 3]


def build(cfgs: dict, config=None):
    config = config or tiny_config()
    for cls, cfg in cfgs.items():
        config.plugins[cls.name] = cfg
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in cfgs})
    check_config(config, host)
    return config, host, build_model(config, host, None)


def gated_layers(model):
    return [i for i, b in enumerate(model.blocks) if any(isinstance(t, HeadGate) for t in b.output_transforms)]


def test_init_is_sigmoid_four_times_y_exactly():
    gate = HeadGate(32, 4, 4.0)
    y, x = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 32)
    assert torch.equal(gate(y, None, x, {}), y * torch.sigmoid(torch.tensor(4.0)))
    assert torch.sigmoid(torch.tensor(4.0)).item() == pytest.approx(0.982, abs=1e-3)


def test_in_model_init_and_formula_on_the_scaled_input():
    before, after = [], []
    cfgs = {GatedAttention: Config(), ln_scale.LnScale: ln_scale.Config(),
            spy_plugin("before", before, 5): NoConfig(), spy_plugin("after", after, 20): NoConfig()}
    _, _, model = build(cfgs)
    assert [type(t).__name__ for t in model.blocks[0].output_transforms] == ["Spy", "HeadGate", "Spy"]
    tokens = torch.randint(0, 64, (2, 6))
    model.logits(tokens)
    for (y, _), (z, _) in zip(before, after):
        assert torch.equal(z, y * torch.sigmoid(torch.tensor(4.0)))  # pass-through times σ(4) at init
    # random W, b: y_h ← σ(w_h·x̃ + b_h) y_h with x̃ = rms_norm(x)·s_i, the input the block passes
    torch.manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            block.output_transforms[1].weight.normal_()
            block.output_transforms[1].bias.normal_()
    before.clear(), after.clear()
    x_in = []
    model.blocks[2].register_forward_pre_hook(lambda m, args: x_in.append(args[0].detach().clone()))
    model.logits(tokens)
    for i, ((y, x), (z, _)) in enumerate(zip(before, after)):
        gate = model.blocks[i].output_transforms[1]
        g = torch.sigmoid(torch.einsum("btd,hd->bth", x, gate.weight) + gate.bias)  # [B,T,H]
        torch.testing.assert_close(z, (y * g[..., None]).detach(), atol=1e-6, rtol=1e-5)
    # the gate input of block 2 is its residual stream's mix, normalized, times 1/sqrt(3)
    block = model.blocks[2]
    mix = block.resid_mix.detach()
    x0 = rms_norm(model.tok_emb(tokens))
    mixed = mix[0] * x_in[0] + mix[1] * x0
    torch.testing.assert_close(before[2][1], rms_norm(mixed) / math.sqrt(3), atol=1e-6, rtol=1e-5)


def test_runs_after_xsa():
    _, _, model = build({GatedAttention: Config(), xsa.Xsa: xsa.Config()})  # recipe order gate first
    assert [type(t).__name__ for t in model.blocks[1].output_transforms] == ["ExclusiveSelfAttention", "HeadGate"]


def test_declared_and_counted():
    _, _, model = build({GatedAttention: Config()})
    specs = {k: v for k, v in param_specs(model).items() if ".output_transforms." in k}
    assert specs == {
        **{f"blocks.{i}.output_transforms.0.weight": ParamSpec("scalar", "float16") for i in range(4)},
        **{f"blocks.{i}.output_transforms.0.bias": ParamSpec("scalar", "float32") for i in range(4)},
    }
    H, d = 4, 32
    assert sum(p.numel() for n, p in model.named_parameters() if ".output_transforms." in n) == 4 * (H * d + H)
    gate = model.blocks[0].output_transforms[0]
    assert gate.weight.shape == (H, d) and not gate.weight.any() and gate.bias.tolist() == [4.0] * H


def test_parameter_count_at_full_scale():
    config = tiny_config(vocab_size=1024, num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=3.0)
    _, _, model = build({recurrence.Recurrence: recurrence.Config(), GatedAttention: Config()}, config=config)
    assert len(model.blocks) == 13
    assert sum(p.numel() for n, p in model.named_parameters() if ".output_transforms." in n) == 13 * 4104 == 53_352


def test_layer_selection():
    assert gated_layers(build({GatedAttention: Config(), Repeat: NoConfig()})[2]) == list(range(6))
    assert gated_layers(build({GatedAttention: Config(layers="last:2"), Repeat: NoConfig()})[2]) == [4, 5]
    assert gated_layers(build({GatedAttention: Config(layers=[0, 4]), Repeat: NoConfig()})[2]) == [0, 4]
    assert gated_layers(build({GatedAttention: Config(layers=[2], index="physical"), Repeat: NoConfig()})[2]) == [2, 4]
    _, _, model = build({GatedAttention: Config(), Repeat: NoConfig()})
    assert model.blocks[1].output_transforms[0].weight is not model.blocks[3].output_transforms[0].weight  # per virtual layer
    with pytest.raises(ConfigError, match=r"\[plugins.gated_attention\] layers: \[6\]"):
        build({GatedAttention: Config(layers=[6]), Repeat: NoConfig()})


def test_trains_and_learns_the_gate():
    config, host, model = build({GatedAttention: Config()})
    with torch.no_grad():
        for layer in model.layers:
            nn.init.normal_(layer.o.weight, std=0.05)
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)
    assert model.blocks[1].output_transforms[0].weight.abs().sum() > 0


def resolved(table):
    return resolve({"plugins": {"gated_attention": table}}, discover(), "<test>")


def test_resolves_from_a_recipe():
    assert resolved({}).plugins["gated_attention"] == Config()
    assert resolved({"layers": "last:3", "bias_init": 2}).plugins["gated_attention"].bias_init == 2.0


@pytest.mark.parametrize(
    "table, key",
    [({"layers": "most"}, "layers"), ({"layers": []}, "layers"), ({"layers": [0, 0]}, "layers"), ({"layers": [-2]}, "layers"),
     ({"index": "both"}, "index"), ({"bias_init": float("inf")}, "bias_init"), ({"bias": 4.0}, "bias")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.gated_attention\].*{key}"):
        resolved(table)


def test_physical_range_checked_in_check_config():
    config = resolved({"layers": [3, 12], "index": "physical"})
    with pytest.raises(ConfigError, match=r"\[plugins.gated_attention\] layers: \[12\]"):
        check_config(config, Host(config, discover()))
