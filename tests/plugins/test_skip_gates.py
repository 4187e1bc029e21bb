"""skip_gates: the average at init, a hand-computed gate per channel and skip weight, wired in place of
the weighted skips, declarations, training."""

import math

import torch
from golf_plugins.skip_gates import GatedSkips, SkipGates as SkipGatesPlugin

from golfcore.params import ParamSpec, param_specs
from tests.helpers import build, train_briefly


def test_average_at_init():
    gates = GatedSkips(num_skips=3, model_dim=4)
    x, s = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(gates(x, s, 1), 0.5 * x + 0.5 * s)


def test_hand_computed_gate():
    gates = GatedSkips(num_skips=2, model_dim=2)
    with torch.no_grad():
        gates.gates[1] = torch.tensor([math.log(3.0), -math.log(3.0)])  # σ = 3/4 and 1/4
        gates.weights[1] = 0.5
    x = torch.tensor([[[4.0, 4.0]]])
    s = torch.tensor([[[16.0, 16.0]]])  # w·s = 8
    # σ·x + (1 − σ)·w·s: 3 + 2 = 5 and 1 + 6 = 7; skip 0 (w = 1) is still the average of 4 and 16
    torch.testing.assert_close(gates(x, s, 1), torch.tensor([[[5.0, 7.0]]]))
    torch.testing.assert_close(gates(x, s, 0), torch.tensor([[[10.0, 10.0]]]))


def test_wired_replaces_the_weighted_skips():
    config, host, model = build(SkipGatesPlugin)
    assert isinstance(model.skips, GatedSkips) and model.skips.gates.shape == (2, 32)
    assert {k: v for k, v in param_specs(model).items() if k.startswith("skips.")} == {
        "skips.weights": ParamSpec("scalar", "float32"), "skips.gates": ParamSpec("scalar", "float32")}
    with torch.no_grad():  # blocks start as the identity: perturb everything so the two inputs differ
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.update(enc0=out))
    model.blocks[2].register_forward_hook(lambda m, args, out: seen.update(dec0=out))
    model.blocks[3].register_forward_pre_hook(lambda m, args: seen.update(dec1_in=args[0]))
    model.logits(torch.randint(0, 64, (2, 6)))
    # decoder layer 1 (block 3) pops block 0's output (last in, first out) into block 2's output
    g = torch.sigmoid(model.skips.gates[1])
    expected = g * seen["dec0"] + (1 - g) * model.skips.weights[1] * seen["enc0"]
    torch.testing.assert_close(seen["dec1_in"], expected)
    assert math.isfinite(train_briefly(config, host, model).last_train_loss)
