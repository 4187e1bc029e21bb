"""Late QAT: switched by lr scale through a buffer, exact forward on the exporter's grid with
straight-through gradients, every quantized matrix reached (D3), off in fresh models, and a
compiled graph that honours the switch."""

import copy

import pytest
import torch
import torch.nn.functional as F
from golf_plugins.gptq_lite import GptqLite, GptqLiteQuantizer
from golf_plugins.late_qat import Config as QatConfig
from golf_plugins.late_qat import FakeQuantize, LateQat, set_enabled

import golfcore as golf
from golfcore.artifact import Int8Quantizer
from golfcore.errors import ConfigError
from golfcore.assemble import build_model
from golfcore.params import param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import host_with, tiny_config, train_briefly


def qat_modules(model):
    return {id(m): m for m in model.modules() if isinstance(m, FakeQuantize)}


class Watch(golf.Plugin):
    """Records the switch after each step (registered after late_qat, so it sees the new state)."""

    name = "watch"
    seen: list = []

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        (m,) = qat_modules(model).values()
        self.seen.append((step, lr_scale, float(m.enabled)))


def int6_config():
    config = tiny_config()
    config.export.float_max_numel = 256  # every 32x32 / 64x32 block matrix takes the int6 path
    return config


def test_off_before_the_threshold_on_after():
    Watch.seen = []
    config = int6_config()
    config.train.iterations, config.train.warmdown_iters = 10, 10  # lr scale (10 - s) / 10
    host = host_with(config, GptqLite, (LateQat, QatConfig(threshold=0.35)), Watch)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    assert all(float(m.enabled) == 0 for m in qat_modules(model).values())
    train_briefly(config, host, model, quantizer)
    assert [(s, on) for s, _, on in Watch.seen] == [(s, float(s >= 8)) for s in range(1, 11)]
    assert all(on == float(scale < 0.35) for _, scale, on in Watch.seen)
    # a freshly built model (the artifact model used for eval and TTT) starts off
    fresh = build_model(config, host, quantizer)
    (m_fresh,) = qat_modules(fresh).values()
    (m_trained,) = qat_modules(model).values()
    assert m_fresh is not m_trained and float(m_fresh.enabled) == 0 and float(m_trained.enabled) == 1
    assert "enabled" not in "".join(fresh.state_dict())  # non-persistent: never in the artifact


def test_uses_the_runs_quantizer():
    config = int6_config()
    host = host_with(config, GptqLite, LateQat)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    (m,) = qat_modules(model).values()
    assert m.quantizer is quantizer and isinstance(quantizer, GptqLiteQuantizer)
    set_enabled(model, True)
    w = model.layers[0].up
    wq = m(w)
    assert all(row.unique().numel() <= 63 for row in wq / quantizer.row_step(w).unsqueeze(-1))
    # without an exporter plugin, the core's int8 grid
    plain_config = tiny_config()
    plain = build_model(plain_config, host_with(plain_config, LateQat), Int8Quantizer(0))
    (m8,) = qat_modules(plain).values()
    assert isinstance(m8.quantizer, Int8Quantizer) and m8.quantizer.name == "int8"


def test_forward_is_exactly_the_quantized_weight_and_gradient_passes_straight_through():
    quantizer = GptqLiteQuantizer(float_max_numel=0)
    m = FakeQuantize(quantizer)
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(48, 96, generator=g) * 0.05).requires_grad_(True)
    x = torch.randn(7, 96, generator=g)
    target = torch.randn(7, 48, generator=g)

    assert torch.equal(m(w), w)  # off: the weight itself
    m.enabled.fill_(1.0)
    wq = quantizer.fake_quantize(w)
    assert not torch.equal(wq, w)
    assert torch.equal(m(w), wq)  # on: exactly what the artifact will hold

    F.mse_loss(F.linear(x, m(w)), target).backward()
    leaf = wq.detach().clone().requires_grad_(True)
    F.mse_loss(F.linear(x, leaf), target).backward()
    assert torch.equal(w.grad, leaf.grad)


def test_reaches_every_matrix_the_exporter_quantizes():
    """D3: with QAT on, the model computes exactly what the model with exported matrices computes."""
    config = int6_config()
    host = host_with(config, GptqLite, LateQat)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    with torch.no_grad():  # give the zero-initialised o/down matrices values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    exported = copy.deepcopy(model)
    specs = param_specs(model)
    with torch.no_grad():
        for name, p in exported.named_parameters():
            if specs[name].export == "quantize":
                p.copy_(quantizer.fake_quantize(p))
    tokens = torch.randint(0, 64, (2, 16))
    set_enabled(model, True)
    assert torch.equal(model.logits(tokens), exported.logits(tokens))  # exported's QAT is off
    set_enabled(model, False)
    assert not torch.allclose(model.logits(tokens), exported.logits(tokens))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["gptq_lite", "core_int8"])
def test_compiled_graph_honours_the_switch(exporter):
    """The 2026-03-21 record's bug: a Python flag was constant-folded. The buffer is a graph input:
    flipping it after compilation changes the compiled output, matches eager, and needs no recompile.
    Both the int6 plugin quantizer and the core's int8 one must compile with fullgraph=True."""
    config = int6_config()
    config.model.num_layers = 2  # compile time grows with depth
    host = host_with(config, GptqLite, LateQat) if exporter == "gptq_lite" else host_with(config, LateQat)
    quantizer = host.first("golf_quantizer", config=config) or Int8Quantizer(config.export.float_max_numel)
    model = build_model(config, host, quantizer)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tokens = torch.randint(0, 64, (2, 16))
    compiled = torch.compile(model.logits, fullgraph=True)  # inductor on CPU
    torch._dynamo.reset()
    with torch.no_grad():
        off_eager = model.logits(tokens)
        off_compiled = compiled(tokens)
        set_enabled(model, True)
        on_eager = model.logits(tokens)
        with torch._dynamo.config.patch(error_on_recompile=True):
            on_compiled = compiled(tokens)
            set_enabled(model, False)
            again_off = compiled(tokens)
    assert not torch.allclose(off_eager, on_eager, atol=1e-4)
    assert torch.allclose(off_compiled, off_eager, atol=1e-5)
    assert torch.allclose(on_compiled, on_eager, atol=1e-5)
    assert torch.allclose(again_off, off_eager, atol=1e-5)
    # the grid itself is bit-exact under inductor (fp16 steps are rounded without a dtype cast,
    # which inductor would elide), so compiled QAT trains on exactly the exported weights
    w = model.layers[1].up.detach()
    assert torch.equal(torch.compile(quantizer.fake_quantize, fullgraph=True)(w), quantizer.fake_quantize(w))


def test_trains_through_the_trainer_with_int6_qat():
    config = int6_config()
    config.train.iterations, config.train.warmdown_iters = 4, 4
    host = host_with(config, GptqLite, LateQat)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    set_enabled(model, True)  # train every step fake-quantized
    outcome = train_briefly(config, host, model, quantizer)
    assert outcome.steps == 4 and torch.isfinite(torch.tensor(outcome.last_train_loss))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_defaults_and_no_parameters_added():
    assert resolve({"plugins": {"late_qat": {}}}, discover(), "<test>").plugins["late_qat"].threshold == 0.15
    plain = build_model(tiny_config(), host_with(tiny_config()), None)
    config = tiny_config()
    model = build_model(config, host_with(config, LateQat), None)
    assert set(param_specs(model)) == set(param_specs(plain))
    assert set(model.state_dict()) == set(plain.state_dict())


@pytest.mark.parametrize(
    "table, key",
    [({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"threshold": "late"}, "threshold"), ({"bits": 6}, "bits")],
)
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.late_qat\].*{key}"):
        resolve({"plugins": {"late_qat": table}}, discover(), "<test>")
