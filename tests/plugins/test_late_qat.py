"""Late QAT: switched by lr scale through a Python switch, free while off (no quantizer work, the
plain model's output), exact forward on the exporter's grid with straight-through gradients, every
quantized matrix reached (D3), off in fresh models, and a compiled trainer that honours the switch
with both graphs compiled during warm-up."""

import copy
import functools

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
        self.seen.append((step, lr_scale, float(m.compile_switch)))


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
    assert all(not m.compile_switch for m in qat_modules(model).values())
    train_briefly(config, host, model, quantizer)
    assert [(s, on) for s, _, on in Watch.seen] == [(s, float(s >= 8)) for s in range(1, 11)]
    assert all(on == float(scale < 0.35) for _, scale, on in Watch.seen)
    # a freshly built model (the artifact model used for eval and TTT) starts off
    fresh = build_model(config, host, quantizer)
    (m_fresh,) = qat_modules(fresh).values()
    (m_trained,) = qat_modules(model).values()
    assert m_fresh is not m_trained and not m_fresh.compile_switch and m_trained.compile_switch
    assert set(fresh.state_dict()) == set(model.state_dict())  # the switch is never in the artifact


def test_uses_the_runs_quantizer():
    config = int6_config()
    host = host_with(config, GptqLite, LateQat)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    (m,) = qat_modules(model).values()
    assert m.quantizer is quantizer and isinstance(quantizer, GptqLiteQuantizer)
    set_enabled(model, True)
    w = model.layers[0].up.weight
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
    m.compile_switch = True
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


class CountingQuantizer(GptqLiteQuantizer):
    calls = 0

    def fake_quantize(self, weight):
        CountingQuantizer.calls += 1
        return super().fake_quantize(weight)


def test_off_is_free_and_identical_to_the_model_without_the_plugin():
    """While off, the forward and backward never touch the quantizer and give bit for bit what
    the same model without late QAT gives; switched on, every block matrix is fake-quantized."""
    config = int6_config()
    quantizer = CountingQuantizer(config.export.float_max_numel)
    plain = build_model(config, host_with(int6_config()), quantizer)
    model = build_model(config, host_with(config, LateQat), quantizer)
    tokens, targets = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    CountingQuantizer.calls = 0
    loss = model(tokens, targets)
    loss.backward()
    assert CountingQuantizer.calls == 0
    plain_loss = plain(tokens, targets)
    plain_loss.backward()
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), plain.parameters()))
    set_enabled(model, True)
    model(tokens, targets)
    assert CountingQuantizer.calls == 6 * len(model.blocks)  # q, k, v, o, up, down of every block


class GraphCount(golf.Plugin):
    """Records how many graphs torch.compile has built after each step, and the switch."""

    name = "graph_count"
    seen: list = []

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        (m,) = qat_modules(model).values()
        self.seen.append((torch._dynamo.utils.counters["stats"]["unique_graphs"], m.compile_switch))


@pytest.mark.slow
def test_compiled_trainer_compiles_both_states_in_warm_up_and_never_again(monkeypatch):
    """The switch is a Python bool torch.compile guards on: the warm-up's last step compiles the QAT-on
    graph, so switching on mid-run builds no graph; the compiled output follows the switch like eager
    (the 2026-03-21 record's constant-folded flag would not), and the grid is bit-exact under inductor."""
    GraphCount.seen = []
    config = int6_config()
    config.model.num_layers = 2  # compile time grows with depth
    config.train.compile, config.train.warmup_steps = "on", 2
    config.train.iterations, config.train.warmdown_iters = 4, 4  # lr scale 1, .75, .5, .25
    torch._dynamo.reset()
    inductor_compile = torch.compile
    # the trainer's graphs are Dynamo's (guards, one per switch state) whatever the backend; the
    # eager backend skips inductor's C++ builds, which take minutes on 2 CPU cores
    monkeypatch.setattr(torch, "compile", functools.partial(inductor_compile, backend="eager"))
    host = host_with(config, GptqLite, (LateQat, QatConfig(threshold=0.6)), GraphCount)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    train_briefly(config, host, model, quantizer)
    graphs = [g for g, _ in GraphCount.seen]
    assert [on for _, on in GraphCount.seen] == [False, False, True, True]
    assert graphs[0] >= 2 and len(set(graphs)) == 1  # both states compiled before step 1; none after
    compiled = inductor_compile(model.logits, fullgraph=True)
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        for on in (True, False):
            set_enabled(model, on)
            assert torch.allclose(compiled(tokens), model.logits(tokens), atol=1e-5)
    w = model.layers[1].up.weight.detach()
    assert torch.equal(inductor_compile(quantizer.fake_quantize, fullgraph=True)(w), quantizer.fake_quantize(w))


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
