"""The model description: the default is the baseline, Parts build once per build and are
shared where given twice, edits are attributed to their plugin, projections are modules, and
a layer switch turns layers on between steps."""

import torch
import torch.nn.functional as F
from torch import nn

import golfcore as golf
from golfcore.assemble import describe
from golfcore.checkpoint import load_model_state, model_state
from golfcore.description import Builder, default_description
from tests.helpers import build, editor, host_with, tiny_config


def test_default_description_is_the_baseline_over_the_schedule():
    config = tiny_config()
    d = default_description(config.model, [0, 1, 2, 1, 2, 3])
    assert d.schedule == [0, 1, 2, 1, 2, 3] and len(d.physical) == 4 and d.bos_id == 1
    assert d.skips.encoder_layers == 3 and repr(d.skips.connect) == "WeightedSkips(3, 32)"
    assert repr(d.physical[0].o) == "Projection(32, 32, init='zeros')"
    assert [layer.info.virtual for layer in d.layers] == list(range(6)) and d.layers[3].info.physical == 1
    assert d.slots()["layers[4].activation"] == "ReluSquared()" and d.slots()["weight_transform"] == "None"


def test_projection_is_f_linear_of_its_transformed_weight():
    p = golf.Projection(3, 5)
    assert golf.spec_of(p.weight).group == "matrix" and golf.spec_of(p.weight).export == "quantize"
    x = torch.randn(2, 5)
    torch.testing.assert_close(p(x), F.linear(x, p.weight), rtol=0, atol=0)
    p.transform = nn.Tanh()
    torch.testing.assert_close(p(x), F.linear(x, torch.tanh(p.weight)), rtol=0, atol=0)
    assert torch.all(golf.Projection(3, 5, init="zeros").weight == 0)


def test_projections_are_shared_by_the_virtual_layers_of_a_physical_layer():
    class Repeat(golf.Plugin):
        name = "repeat"

        @golf.hookimpl
        def golf_layer_schedule(self, config):
            return [0, 1, 2, 1, 2, 3]

    seen = []
    _, _, model = build(Repeat)
    model.layers[1].q.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))  # calibration-style observer
    model.logits(torch.randint(0, 64, (2, 5)))
    assert seen == [torch.Size([2, 5, 32])] * 2  # virtual layers 1 and 3


def test_builder_builds_a_part_once_and_builds_are_fresh():
    made = []

    class Count(nn.Module):
        def __init__(self):
            super().__init__()
            made.append(self)

    shared = golf.Part(Count)
    builder = Builder()
    assert builder(shared) is builder(shared)
    assert len(made) == 1 and Builder()(shared) is not made[0]


def test_describe_names_the_plugin_that_set_each_slot():
    def gelu(d):
        for layer in d.layers:
            layer.activation = golf.Part(nn.GELU)

    def bos(d):
        d.bos_id = 7

    config = tiny_config()
    host = host_with(config, editor("gelu", gelu), editor("bos", bos))
    description, setters = describe(config, host, None)
    assert setters["layers[2].activation"] == "gelu" and setters["bos_id"] == "bos"
    assert "layers[2].rotary" not in setters  # the core's
    assert "layers[2].activation GELU() [gelu]" in [" ".join(line.split()) for line in description.render(setters).splitlines()]


def test_a_layer_switch_runs_its_layers_only_when_on_and_checkpoints_keep_it():
    def delay(d):
        d.layers[3].switch = "late"

    _, _, model = build(editor("delay", delay))
    with torch.no_grad():
        for layer in model.layers:
            layer.o.weight.normal_(0, 0.1)
    tokens = torch.randint(0, 64, (1, 6))
    off = model.logits(tokens)
    model.switches["late"].compile_switch = True
    on = model.logits(tokens)
    assert not torch.allclose(off, on)
    state = {k: v.clone() for k, v in model_state(model).items()}
    assert bool(state["switches.late.compile_switch"])
    model.switches["late"].compile_switch = False
    load_model_state(model, state)
    assert model.switches["late"].compile_switch is True
