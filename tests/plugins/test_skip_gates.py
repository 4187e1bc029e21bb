"""skip_gates: the average at init, a hand-computed gate per channel, one gate vector per skip."""

import math

import torch
from golf_plugins.skip_gates import SkipGates


def test_average_at_init():
    gates = SkipGates(num_skips=3, model_dim=4)
    x, s = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(gates(x, s, 1), 0.5 * x + 0.5 * s)


def test_hand_computed_gate():
    gates = SkipGates(num_skips=2, model_dim=2)
    with torch.no_grad():
        gates.gates[1] = torch.tensor([math.log(3.0), -math.log(3.0)])  # σ = 3/4 and 1/4
    x = torch.tensor([[[4.0, 4.0]]])
    s = torch.tensor([[[8.0, 8.0]]])
    # σ·x + (1 − σ)·s: 3 + 2 = 5 and 1 + 6 = 7; gate 0 is still the average, 6
    torch.testing.assert_close(gates(x, s, 1), torch.tensor([[[5.0, 7.0]]]))
    torch.testing.assert_close(gates(x, s, 0), torch.tensor([[[6.0, 6.0]]]))
