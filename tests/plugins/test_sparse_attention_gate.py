"""sparse_attention_gate: one half at init, a hand-computed gate, the window read from the block's
normalized input, after XSA, layer selection, declarations, training, config."""

import math

import pytest
import torch
from golf_plugins import xsa
from golf_plugins.sparse_attention_gate import Config, SparseAttentionGate, SparseHeadGate

from golfcore.errors import ConfigError
from golfcore.model import rms_norm
from golfcore.params import ParamSpec, param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import build, train_briefly


def test_init_halves_the_output_exactly():
    gate = SparseHeadGate(num_heads=4, window=3, scale=0.5, init_std=0.0)
    assert gate.weight.shape == (4, 3) and not gate.weight.any()
    y, x = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 32)
    assert torch.equal(gate(y, None, x, None), y * 0.5)


def test_hand_computed_gate():
    gate = SparseHeadGate(num_heads=2, window=2, scale=0.5, init_std=0.0)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, -1.0]]))
    x = torch.tensor([[[1.0, 3.0, 100.0]]])  # dim 2 lies outside the window: ignored
    y = torch.ones(1, 1, 2, 3)
    # head 0: σ(0.5·(2·1 + 0·3)) = σ(1); head 1: σ(0.5·(1·1 − 1·3)) = σ(−1)
    expected = torch.tensor([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])
    torch.testing.assert_close(gate(y, None, x, None)[0, 0, :, 0], expected)
    torch.testing.assert_close(gate(y, None, x, None)[0, 0, :, 2], expected)


def test_in_model_reads_the_normalized_input_after_xsa():
    config, _, model = build((SparseAttentionGate, Config(window=4)), xsa.Xsa)
    block = model.blocks[1]
    assert [type(t).__name__ for t in block.output_transforms] == ["ExclusiveSelfAttention", "SparseHeadGate"]
    gate = block.output_transforms[1]
    with torch.no_grad():
        gate.weight.normal_()
    seen = {}
    gate.register_forward_hook(lambda m, args, out: seen.update(y=args[0], x=args[2], out=out))
    block.register_forward_pre_hook(lambda m, args: seen.update(block_in=args[0], x0=args[1]))
    model.logits(torch.randint(0, 64, (2, 6)))
    mix = block.resid_mix
    x_in = mix[0] * seen["block_in"] + mix[1] * seen["x0"]
    torch.testing.assert_close(seen["x"], rms_norm(x_in))
    g = torch.sigmoid(0.5 * seen["x"][..., :4] @ gate.weight.T)  # [B,T,H]
    torch.testing.assert_close(seen["out"], seen["y"] * g[..., None])


def test_layers_declarations_and_count():
    _, _, model = build((SparseAttentionGate, Config(layers=[0, 2])))
    gated = [i for i, b in enumerate(model.blocks) if b.output_transforms]
    assert gated == [0, 2]
    specs = {k: v for k, v in param_specs(model).items() if "output_transforms" in k}
    assert specs == {f"blocks.{i}.output_transforms.0.weight": ParamSpec("scalar", "float16") for i in (0, 2)}
    assert sum(p.numel() for b in model.blocks for p in b.output_transforms.parameters()) == 2 * 4 * 12


def test_trains_and_learns_the_gate():
    config, host, model = build(SparseAttentionGate)
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)
    assert model.blocks[0].output_transforms[0].weight.abs().sum() > 0


@pytest.mark.parametrize(
    "table, key",
    [({"window": 0}, "window"), ({"scale": float("nan")}, "scale"), ({"init_std": -1.0}, "init_std"), ({"layers": []}, "layers")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.sparse_attention_gate\].*{key}"):
        resolve({"plugins": {"sparse_attention_gate": table}}, discover(), "<test>")


def test_window_beyond_the_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\[plugins.sparse_attention_gate\] window: 40"):
        build((SparseAttentionGate, Config(window=40)))
