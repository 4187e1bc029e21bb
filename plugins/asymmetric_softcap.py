"""Asymmetric logit softcap: separate learned caps for positive and negative logits.

docs/techniques.md §12.5 (PR #1923, "asymmetric logit rescale", on PR #1855). For the tied
head's output z = h Eᵀ (before the cap):

    logit = c₊ · tanh(z / c₊)  where z > 0,     c₋ · tanh(z / c₋)  elsewhere
    c₊, c₋ ∈ R, both init model.logit_softcap (30): the core's symmetric cap at init

In PR #1923 only test-time training moves the caps: its training loss uses the symmetric cap.
`train_caps = false` (the default) reproduces that: the caps take no gradient during training
(requires_grad off, so the optimizers skip them; equal caps compute the symmetric cap) and are
handed to eval adapters in golf_before_eval. `train_caps = true` trains them with the model.
2 parameters, scalar group, exported float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    train_caps: bool = golf.option(False, "train the caps with the model (false = PR #1923: only eval adapters such as TTT move them)")


class AsymmetricSoftcapHead(nn.Module):
    """Tied logits, capped per sign: float32."""

    def __init__(self, cap: float, trainable: bool):
        super().__init__()
        self.pos = golf.declare(nn.Parameter(torch.tensor(float(cap)), requires_grad=trainable), "scalar", "float32")  # c₊
        self.neg = golf.declare(nn.Parameter(torch.tensor(float(cap)), requires_grad=trainable), "scalar", "float32")  # c₋

    def forward(self, h: Tensor, embedding: Tensor) -> Tensor:  # h [...,d], embedding [V,d] -> [...,V]
        z = F.linear(h, embedding).float()
        cp, cn = self.pos.float(), self.neg.float()
        return torch.where(z > 0, cp * torch.tanh(z / cp), cn * torch.tanh(z / cn))


class AsymmetricSoftcap(golf.Plugin):
    name = "asymmetric_softcap"
    description = "separate learned softcaps for positive and negative logits (PR #1923)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        description.head.logits = golf.Part(AsymmetricSoftcapHead, config.model.logit_softcap, self.config.train_caps)

    @golf.hookimpl
    def golf_before_eval(self, model, config):
        model.logit_head.pos.requires_grad_(True)  # the eval adapters' to train (TTT adapts what requires grad)
        model.logit_head.neg.requires_grad_(True)
