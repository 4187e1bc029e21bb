"""asymmetric_softcap: the symmetric cap at init, hand-computed caps per sign, the caps frozen in
training unless train_caps, config."""

import math

import pytest
import torch
from golf_plugins.asymmetric_softcap import AsymmetricSoftcap

from golfcore.errors import ConfigError
from golfcore.plugins import discover
from golfcore.recipe import resolve


def test_symmetric_cap_at_init():
    cap = AsymmetricSoftcap(30.0, trainable=True)
    z = torch.randn(3, 7) * 50
    torch.testing.assert_close(cap(z), 30.0 * torch.tanh(z / 30.0), atol=0, rtol=0)


def test_hand_computed_caps_per_sign():
    cap = AsymmetricSoftcap(30.0, trainable=True)
    with torch.no_grad():
        cap.pos.fill_(10.0)
        cap.neg.fill_(20.0)
    z = torch.tensor([5.0, -5.0, 0.0, 40.0])
    expected = torch.tensor([10 * math.tanh(0.5), 20 * math.tanh(-0.25), 0.0, 10 * math.tanh(4.0)])
    torch.testing.assert_close(cap(z), expected)


def test_gradients_reach_each_cap_from_its_own_sign():
    cap = AsymmetricSoftcap(30.0, trainable=True)
    cap(torch.tensor([50.0, 60.0])).sum().backward()
    assert cap.pos.grad.item() != 0 and cap.neg.grad.item() == 0


def test_frozen_caps_take_no_gradient():
    cap = AsymmetricSoftcap(30.0, trainable=False)
    z = torch.randn(4, requires_grad=True)
    cap(z).sum().backward()
    assert cap.pos.grad is None and cap.neg.grad is None and z.grad is not None


def test_bad_config():
    with pytest.raises(ConfigError, match=r"\[plugins.asymmetric_softcap\].*train_caps"):
        resolve({"plugins": {"asymmetric_softcap": {"train_caps": 1}}}, discover(), "<test>")
