"""smear_gate: the blend against a direct computation, the BOS mask vs the reference, wiring, config."""

import math

import pytest
import torch
from golf_plugins.smear_gate import SmearGate, SmearGatePlugin

from golfcore.errors import ConfigError
from golfcore.params import ParamSpec, param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import build, built, edited, train_briefly


def direct(x, tokens, g, mask_bos):
    s = torch.sigmoid(g)
    out = torch.empty_like(x)
    for b in range(x.size(0)):
        for t in range(x.size(1)):
            prev = x[b, t - 1] if t > 0 else torch.zeros_like(x[b, t])
            out[b, t] = x[b, t] if (mask_bos and tokens[b, t] == 1) else (1 - s) * x[b, t] + s * prev
    return out


def test_init_is_a_half_blend():
    module = SmearGate(512, 0.0, True)
    assert module.gate.shape == (512,) and torch.all(module.gate == 0)
    assert sum(p.numel() for p in module.parameters()) == 512
    x = torch.randn(1, 3, 512)
    tokens = torch.tensor([[4, 5, 6]])
    torch.testing.assert_close(module(x, tokens)[0, 1], 0.5 * x[0, 1] + 0.5 * x[0, 0])
    torch.testing.assert_close(module(x, tokens)[0, 0], 0.5 * x[0, 0])  # x_{-1} = 0


@pytest.mark.parametrize("mask_bos", [True, False])
def test_blend_with_a_bos_in_the_middle(mask_bos):
    torch.manual_seed(0)
    module = SmearGate(6, 0.0, mask_bos)
    with torch.no_grad():
        module.gate.normal_()
    x = torch.randn(2, 5, 6)
    tokens = torch.tensor([[5, 7, 1, 9, 3], [1, 2, 3, 1, 4]])
    out = module(x, tokens)
    torch.testing.assert_close(out, direct(x, tokens, module.gate, mask_bos))
    bos_rows = out[0, 2], out[1, 0], out[1, 3]
    kept = [torch.equal(r, x[b, t]) for r, (b, t) in zip(bos_rows, [(0, 2), (1, 0), (1, 3)])]
    assert kept == [mask_bos] * 3  # BOS kept as is with the mask; blended with the previous document without
    # the token after a BOS still blends with the BOS (same document) in both modes
    s = torch.sigmoid(module.gate)
    torch.testing.assert_close(out[0, 3], (1 - s) * x[0, 3] + s * x[0, 2])


def test_wired_after_the_embedding_norm():
    _, _, model = build(SmearGatePlugin)
    (smear,) = model.embedding_transforms
    assert isinstance(smear, SmearGate) and smear.mask_bos
    tokens = torch.randint(0, 64, (2, 7))
    tokens[0, 3] = 1
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x0=args[1]))
    before = model.logits(tokens)
    x = torch.nn.functional.rms_norm(model.tok_emb(tokens), (32,))
    torch.testing.assert_close(seen["x0"], direct(x, tokens, smear.gate, True))
    with torch.no_grad():
        smear.gate.fill_(-20.0)  # gate closed: x0 is the plain normed embedding
    model.logits(tokens)
    torch.testing.assert_close(seen["x0"], x, atol=1e-7, rtol=0)
    assert not torch.allclose(before, model.logits(tokens))


def test_declared():
    _, _, model = build(SmearGatePlugin)
    assert {k: v for k, v in param_specs(model).items() if k.startswith("embedding_transforms.")} == {
        "embedding_transforms.0.gate": ParamSpec("scalar", "float32")
    }


def test_trains_and_learns_the_gate():
    config, host, model = build(SmearGatePlugin)
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)
    assert model.embedding_transforms[0].gate.abs().sum() > 0


@pytest.mark.parametrize("table, key", [({"mask_bos": 1}, "mask_bos"), ({"gate_init": float("inf")}, "gate_init")])
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.smear_gate\].*{key}"):
        resolve({"plugins": {"smear_gate": table}}, discover(), "<test>")


def test_reference_mode_from_a_recipe():
    config = resolve({"plugins": {"smear_gate": {"mask_bos": False}}}, discover(), "<test>")
    config.model.model_dim = 8
    description = edited(SmearGatePlugin(config.plugins["smear_gate"]), config)
    assert not built(description.embedding.transforms[0]).mask_bos
