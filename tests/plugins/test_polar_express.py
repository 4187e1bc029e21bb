"""polar_express: the trainer's Muon runs its per-iteration coefficients, and a training step
equals the Muon step computed by hand with them."""

import math

import torch
from golf_plugins.polar_express import POLAR_EXPRESS, PolarExpress

from golfcore.optim import Muon, zeropower_newton_schulz
from golfcore.train import Trainer
from tests.helpers import CPU, build, synthetic_loader


def test_trainer_muon_runs_the_coefficients_and_steps_like_the_formula():
    config, host, model = build(PolarExpress)
    config.train.iterations = 1
    trainer = Trainer(config, model, host, None, synthetic_loader(config), CPU, None, lambda r: None)
    muon = next(opt for opt in trainer.optimizers if isinstance(opt, Muon))
    assert muon.orthogonalization.coefficients == POLAR_EXPRESS and muon.orthogonalization.normalize == "none"
    assert trainer.execution["muon_ns_coefficient_triples"] == 5
    w = model.layers[0].o.weight  # zero at init (q, k, v, up get no gradient at step 1), its gradient is not
    before = w.detach().clone()
    trainer.run()
    # one step from zero momentum: u = g + m·g (nesterov), lr·√max(1, rows/cols)·NS(u), no decay
    momentum, lr = config.optim.muon_momentum_warmup_start, config.optim.matrix_lr
    g = w.grad
    expected = before - lr * math.sqrt(max(1, w.shape[0] / w.shape[1])) * zeropower_newton_schulz(
        g + momentum * g, coefficients=POLAR_EXPRESS)
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    quintic = before - lr * math.sqrt(max(1, w.shape[0] / w.shape[1])) * zeropower_newton_schulz(g + momentum * g)
    assert g.abs().max() > 0 and not torch.allclose(w.detach(), quintic, atol=1e-4)
