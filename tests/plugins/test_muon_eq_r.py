"""muon_eq_r: the trainer's Muon normalises update rows (or columns) before Newton-Schulz."""

import pytest
import torch
from golf_plugins.muon_eq_r import Config, MuonEqR
from golf_plugins.polar_express import POLAR_EXPRESS, PolarExpress

from golfcore.errors import ConfigError
from golfcore.optim import Muon
from golfcore.plugins import discover
from golfcore.recipe import resolve
from golfcore.train import Trainer
from tests.helpers import CPU, build, synthetic_loader


def muon_of(*plugins):
    config, host, model = build(*plugins)
    trainer = Trainer(config, model, host, None, synthetic_loader(config), CPU, None, lambda r: None)
    return trainer, next(opt for opt in trainer.optimizers if isinstance(opt, Muon))


def test_rows_by_default_columns_on_request_and_composes_with_polar_express():
    trainer, muon = muon_of(MuonEqR, PolarExpress)
    assert muon.orthogonalization.normalize == "rows" and muon.orthogonalization.coefficients == POLAR_EXPRESS
    assert trainer.execution["muon_normalize"] == "rows"
    _, muon = muon_of((MuonEqR, Config(rows=False)))
    assert muon.orthogonalization.normalize == "columns"


def test_a_step_equals_the_step_on_row_normalised_momentum():
    """Two Muons on the same matrix and gradient: row normalisation in Muon equals dividing u's rows by hand."""
    _, muon = muon_of(MuonEqR)
    g = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0], [0.0, 5.0, 0.0]])
    w = torch.nn.Parameter(torch.zeros(4, 3))
    w.grad = g.clone()
    Muon([w], lr=1.0, momentum=0.0, orthogonalization=muon.orthogonalization).step()
    rows = torch.tensor([[5.0], [2.0], [3**0.5], [5.0]])
    plain = torch.nn.Parameter(torch.zeros(4, 3))
    plain.grad = g / rows
    Muon([plain], lr=1.0, momentum=0.0).step()
    assert torch.allclose(w.detach(), plain.detach(), atol=1e-6)


def test_bad_config_names_plugin_and_key():
    with pytest.raises(ConfigError, match=r"\[plugins\.muon_eq_r\].*rows"):
        resolve({"plugins": {"muon_eq_r": {"rows": "yes"}}}, discover(), "<test>")
