"""asymmetric_softcap: the symmetric cap at init, hand-computed caps per sign, wired as the head, the
caps frozen in training unless train_caps and handed to eval adapters, config."""

import math

import pytest
import torch
from golf_plugins.asymmetric_softcap import AsymmetricSoftcap, AsymmetricSoftcapHead, Config

from golfcore.errors import ConfigError
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import build, train_briefly

E = torch.eye(4)  # a head whose logits are the final states themselves: z = h Eᵀ = h


def test_symmetric_cap_at_init():
    cap = AsymmetricSoftcapHead(30.0, trainable=True)
    z = torch.randn(3, 4) * 50
    torch.testing.assert_close(cap(z, E), 30.0 * torch.tanh(z / 30.0), atol=0, rtol=0)


def test_hand_computed_caps_per_sign():
    cap = AsymmetricSoftcapHead(30.0, trainable=True)
    with torch.no_grad():
        cap.pos.fill_(10.0)
        cap.neg.fill_(20.0)
    z = torch.tensor([5.0, -5.0, 0.0, 40.0])
    expected = torch.tensor([10 * math.tanh(0.5), 20 * math.tanh(-0.25), 0.0, 10 * math.tanh(4.0)])
    torch.testing.assert_close(cap(z, E), expected)


def test_gradients_reach_each_cap_from_its_own_sign():
    cap = AsymmetricSoftcapHead(30.0, trainable=True)
    cap(torch.tensor([50.0, 60.0, 1.0, 2.0]), E).sum().backward()
    assert cap.pos.grad.item() != 0 and cap.neg.grad.item() == 0


def test_frozen_caps_take_no_gradient():
    cap = AsymmetricSoftcapHead(30.0, trainable=False)
    z = torch.randn(4, requires_grad=True)
    cap(z, E).sum().backward()
    assert cap.pos.grad is None and cap.neg.grad is None and z.grad is not None


def test_bad_config():
    with pytest.raises(ConfigError, match=r"\[plugins.asymmetric_softcap\].*train_caps"):
        resolve({"plugins": {"asymmetric_softcap": {"train_caps": 1}}}, discover(), "<test>")


def test_wired_head_frozen_in_training_handed_to_eval():
    config, host, model = build(AsymmetricSoftcap)
    head = model.logit_head
    assert isinstance(head, AsymmetricSoftcapHead) and not head.pos.requires_grad
    with torch.no_grad():
        head.pos.fill_(5.0)
    tokens = torch.randint(0, 64, (2, 6))
    z = torch.nn.functional.linear(model.hidden(tokens), model.tok_emb.weight)
    torch.testing.assert_close(model.logits(tokens), torch.where(z > 0, 5 * torch.tanh(z / 5), 30 * torch.tanh(z / 30)))
    with torch.no_grad():
        head.pos.fill_(30.0)
    train_briefly(config, host, model)
    assert head.pos.item() == 30.0 and head.neg.item() == 30.0  # PR #1923: training leaves them at the cap
    host.call("golf_before_eval", model=model, config=config)
    assert head.pos.requires_grad and head.neg.requires_grad  # test-time training adapts them


def test_train_caps_trains_them():
    config, host, model = build((AsymmetricSoftcap, Config(train_caps=True)))
    train_briefly(config, host, model)
    assert model.logit_head.pos.item() != 30.0 or model.logit_head.neg.item() != 30.0
