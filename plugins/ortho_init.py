"""Orthogonal init of the block matrices, as the PR #549 stack initialised its banks.

docs/techniques.md §0 and §3.2. The challenge baseline (golf's core) keeps PyTorch's default
Linear init for q, k, v and up and zero-initialises the output projection o and the MLP down
projection. The PR #549 stack's `_init_weights` instead sets, per layer:

    Q, K, V, MLP up   orthogonal (gain 1)
    out (o), down     zero, then multiplied by 1/sqrt(2L)

The 1/sqrt(2L) multiplies zeros, so it does nothing (defect D19); golf keeps o and down at the
core's zero init and does not reproduce the dead multiply. This plugin re-initialises the
matrices named in `matrices` (default q, k, v, up: what the reference did) orthogonally once
per physical layer, after the model is built (`golf_model_built`). Listing o or down makes
them orthogonal too (not the reference; then each block no longer starts as the identity).

Plugin-owned matrices (BigramHash's W_p, the value embeddings' W_ve) get their orthogonal init
from their own plugins. No parameters. The source: PR #549's `_init_weights` (GPT banks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

import golfcore as golf

MATRICES = ("q", "k", "v", "o", "up", "down")


@dataclass
class Config(golf.Section):
    matrices: list[str] = golf.option(["q", "k", "v", "up"], f"block matrices to initialise orthogonally (of {', '.join(MATRICES)})")
    gain: float = golf.option(1.0, "gain of the orthogonal init (the reference: 1)")

    def check(self) -> None:
        unknown = [m for m in self.matrices if m not in MATRICES]
        if unknown:
            raise self.invalid("matrices", f"unknown {unknown} (known: {', '.join(MATRICES)})")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise self.invalid("gain", f"{self.gain} must be > 0")


class OrthoInit(golf.Plugin):
    name = "ortho_init"
    description = "orthogonal init of the q, k, v and MLP-up block matrices (PR #549 stack)"
    Config = Config

    @golf.hookimpl
    def golf_model_built(self, model, config):
        with torch.no_grad():
            for layer in model.layers:  # physical layers: shared weights are initialised once
                for name in self.config.matrices:
                    nn.init.orthogonal_(getattr(layer, name).weight, gain=self.config.gain)
