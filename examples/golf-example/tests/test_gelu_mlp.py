import torch
import torch.nn.functional as F

from golfcore.config import RunConfig
from golfcore.assemble import build_model
from golfcore.plugins import Host, discover
from golfcore.recipe import resolve


def test_entry_point_registers_and_recipe_enables_it():
    available = discover()
    assert available["gelu_mlp"].source == "entry point (golf-example)"
    raw = {"model": {"num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2, "vocab_size": 64},
           "plugins": {"gelu_mlp": {"approximate": "tanh"}}}
    config = resolve(raw, available, "<test>")
    model = build_model(config, Host(config, available), None)
    u = torch.randn(3, 5)
    assert torch.allclose(model.blocks[0].activation(u), F.gelu(u, approximate="tanh"))


def test_not_running_unless_enabled():
    available = discover()
    config = RunConfig()
    config.model.num_layers = 1
    model = build_model(config, Host(config, available), None)
    u = torch.randn(4)
    assert torch.allclose(model.blocks[0].activation(u), F.relu(u).square())
