"""CROWN-Q: the penalty's value against a direct computation (core int8 grid, int6 gptq_lite grid, the /15
override), which parameters it reaches (D2), the lr-scale gate, shared layers once, and a short run."""

import pytest
import torch
from golf_plugins.crownq import Config as CrownQConfig
from golf_plugins.crownq import CrownQ, quantized_matrices
from golf_plugins.gptq_lite import GptqLiteQuantizer

import golfcore as golf
from golfcore.artifact import CLIP_PERCENTILE, Int8Quantizer
from golfcore.errors import ConfigError
from golfcore.assemble import build_model
from golfcore.params import param_specs
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from golfcore.train import Dist, Trainer
from tests.helpers import synthetic_loader, tiny_config

CPU = Dist(0, 1, 0, torch.device("cpu"))
SMALL = 256  # float_max_numel for the tiny model: every 32x32 block matrix (1024 elements) is quantized


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return [0, 1, 2, 1, 2, 3]


def setup(cfg=None, *extra, float_max_numel=SMALL):
    config = tiny_config()
    config.export.float_max_numel = float_max_numel
    plugins = {CrownQ: cfg or CrownQConfig(), **{cls: cls.Config() for cls in extra}}
    for cls, c in plugins.items():
        config.plugins[cls.name] = c
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in plugins})
    model = build_model(config, host, None)
    torch.manual_seed(1)
    with torch.no_grad():  # o and down start at zero; give every matrix rows worth penalising
        for layer in model.layers:
            layer.o.weight.normal_(0, 0.05)
            layer.down.weight.normal_(0, 0.05)
    return config, host, model


def penalty_fn(config, host, model, quantizer):
    (fn,) = host.collect("golf_loss_penalty", model=model, config=config, quantizer=quantizer)
    return fn


def direct(model, step_of, lam=0.01):
    """lam * sum over the physical block matrices of sum_r mean_j W_rj^2 * step_r^2 / 12, by hand."""
    total = 0.0
    for layer in model.layers:
        for w in (layer.q.weight, layer.k.weight, layer.v.weight, layer.o.weight, layer.up.weight, layer.down.weight):
            w = w.detach().double()
            for r in range(w.size(0)):
                h = float(w[r].square().mean())
                total += h * float(step_of(w[r])) ** 2 / 12
    return lam * total


def int8_step(row):
    return torch.quantile(row.abs(), CLIP_PERCENTILE / 100) / 127


def test_value_matches_direct_computation_with_the_core_int8_grid():
    config, host, model = setup()
    fn = penalty_fn(config, host, model, Int8Quantizer(SMALL))
    got = fn(0.5)
    assert got.dim() == 0 and got.requires_grad
    assert float(got.detach()) == pytest.approx(direct(model, int8_step), rel=1e-5)


def test_value_matches_with_the_step_divisor_override():
    config, host, model = setup(CrownQConfig(step_divisor_override=15.0))
    fn = penalty_fn(config, host, model, Int8Quantizer(SMALL))
    assert float(fn(0.5).detach()) == pytest.approx(direct(model, lambda row: row.abs().max() / 15), rel=1e-5)
    # the override over-penalises relative to the int8 grid (step max/15 vs clip/127)
    int8 = CrownQ(CrownQConfig()).golf_loss_penalty(model, config, Int8Quantizer(SMALL))
    assert float(fn(0.5).detach()) > 50 * float(int8(0.5).detach())


def test_value_uses_the_gptq_lite_int6_grid():
    config, host, model = setup(CrownQConfig(lam=0.5))
    q = GptqLiteQuantizer(SMALL)
    fn = penalty_fn(config, host, model, q)

    def int6_step(row):
        return q.row_step(row.float()[None])[0]

    assert float(fn(0.5).detach()) == pytest.approx(direct(model, int6_step, lam=0.5), rel=1e-5)
    int8 = float(penalty_fn(config, host, model, Int8Quantizer(SMALL))(0.5).detach())
    assert float(fn(0.5).detach()) > 10 * int8  # a 31-level grid has ~4x the step of a 127-level one: ~16x the penalty


@pytest.mark.parametrize("quantizer", [Int8Quantizer(SMALL), GptqLiteQuantizer(SMALL)], ids=["int8", "gptq_lite"])
def test_stacking_same_shape_matrices_changes_nothing(quantizer):
    values, grads = [], []
    for stack in (True, False):
        config, host, model = setup(CrownQConfig(stack_same_shape=stack))
        fn = penalty_fn(config, host, model, quantizer)
        assert len(fn.groups) == (4 if stack else 24)  # q/o [32,32], k/v [16,32], up [64,32], down [32,64]
        value = fn(0.5)
        value.backward()
        values.append(float(value.detach()))
        grads.append([p.grad.clone() for p in fn.matrices])
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-12) for a, b in zip(*grads))


def test_gradient_reaches_every_quantized_matrix_and_nothing_else():
    """D2: every block matrix gets a gradient; embeddings (exported "embedding") and scalars none."""
    config, host, model = setup()
    fn = penalty_fn(config, host, model, Int8Quantizer(SMALL))
    fn(0.5).backward()
    specs = param_specs(model)
    reached = {name for name, _ in quantized_matrices(model, SMALL)}
    assert reached == {f"layers.{i}.{m}.weight" for i in range(4) for m in ("q", "k", "v", "o", "up", "down")}
    for name, p in model.named_parameters():
        if specs[name].export == "quantize":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_matrices_stored_in_float_are_not_penalised():
    """With the default float_max_numel the tiny 32x32 matrices are exported fp16: nothing to penalise."""
    config, host, model = setup(float_max_numel=65536)
    fn = penalty_fn(config, host, model, Int8Quantizer(65536))
    assert quantized_matrices(model, 65536) == []
    assert float(fn(0.5).detach()) == 0.0


@pytest.mark.parametrize("scale,start,active", [(1.0, 1.0, False), (0.999, 1.0, True), (0.3, 0.2, False), (0.2, 0.2, False), (0.1, 0.2, True), (1.0, 1.5, True)])
def test_gate_on_the_lr_scale(scale, start, active):
    config, host, model = setup(CrownQConfig(start_scale=start))
    fn = penalty_fn(config, host, model, Int8Quantizer(SMALL))
    out = fn(scale)
    if active:
        assert float(out.detach()) > 0 and out.requires_grad
    else:
        assert out.dim() == 0 and float(out) == 0.0 and not out.requires_grad


def test_inactive_does_no_matrix_work():
    class Counting(Int8Quantizer):
        calls = 0

        def row_step(self, weight):
            Counting.calls += 1
            return super().row_step(weight)

    config, host, model = setup()
    fn = penalty_fn(config, host, model, Counting(SMALL))
    for _ in range(5):
        fn(1.0)
    assert Counting.calls == 0
    fn(0.5)
    assert Counting.calls == 4  # one call per stacked shape


def test_shared_physical_matrices_are_penalised_once():
    config, host, model = setup(None, Repeat)
    assert len(model.blocks) == 6 and len(model.layers) == 4
    fn = penalty_fn(config, host, model, Int8Quantizer(SMALL))
    value = fn(0.5)
    assert float(value.detach()) == pytest.approx(direct(model, int8_step), rel=1e-5)  # 4 physical layers, not 6
    value.backward()
    # the gradient of a shared matrix is that of one term, not two
    w = model.layers[1].up.weight.detach().clone().requires_grad_(True)
    h = w.square().mean(-1)
    single = (0.01 * (h * Int8Quantizer(SMALL).row_step(w).square()).sum() / 12)
    single.backward()
    assert torch.allclose(model.layers[1].up.weight.grad, w.grad, rtol=1e-5, atol=1e-12)


def train(config, host, model):
    Trainer(config, model, host, None, synthetic_loader(config), CPU, None, lambda r: None).run()
    return model


def test_trains_under_the_trainer_and_changes_the_weights_during_warmdown():
    def run(with_crownq: bool):
        config = tiny_config()
        config.export.float_max_numel = SMALL
        config.train.iterations, config.train.warmdown_iters = 5, 4  # scale 1, .8, .6, .4, .2: active from step 2
        plugins = {CrownQ: CrownQConfig(lam=10.0)} if with_crownq else {}
        for cls, c in plugins.items():
            config.plugins[cls.name] = c
        host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in plugins})
        return train(config, host, build_model(config, host, None))

    plain, penalised = run(False), run(True)
    assert all(torch.isfinite(p).all() for p in penalised.parameters())
    diffs = [not torch.equal(a, b) for a, b in zip(plain.parameters(), penalised.parameters())]
    assert any(diffs)
    # the penalty shrinks the penalised matrices relative to the plain run
    norm = lambda m: sum(float(l.up.weight.detach().norm()) for l in m.layers)  # noqa: E731
    assert norm(penalised) < norm(plain)


def test_not_active_during_a_run_without_warmdown():
    """warmdown_iters = 0 keeps lr scale 1: the trained weights equal those of a run without the plugin."""

    def run(plugins):
        config = tiny_config()
        config.export.float_max_numel = SMALL
        for cls in plugins:
            config.plugins[cls.name] = CrownQConfig(lam=10.0)
        host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in plugins})
        return train(config, host, build_model(config, host, None))

    for a, b in zip(run([]).parameters(), run([CrownQ]).parameters()):
        assert torch.equal(a, b)


def test_defaults():
    config = resolve({"plugins": {"crownq": {}}}, discover(), "<test>")
    cfg = config.plugins["crownq"]
    assert (cfg.lam, cfg.start_scale, cfg.step_divisor_override, cfg.stack_same_shape) == (0.01, 1.0, 0.0, True)


@pytest.mark.parametrize(
    "table, key",
    [({"lam": -1.0}, "lam"), ({"start_scale": 0.0}, "start_scale"), ({"step_divisor_override": -15}, "step_divisor_override"),
     ({"lam": "big"}, "lam"), ({"lambda": 0.1}, "lambda"), ({"stack_same_shape": "yes"}, "stack_same_shape")],
)
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.crownq\].*{key}"):
        resolve({"plugins": {"crownq": table}}, discover(), "<test>")
