"""SmearGate: blend each position's embedding with the previous position's, per channel.

docs/techniques.md §3.4 (the PR #549 stack; from the 1.1458 SmearGate+BigramHash record). After
the embedding RMSNorm,

    x_t ← (1 − σ(g)) ⊙ x_t + σ(g) ⊙ x_{t−1},     x_{−1} = 0,  g ∈ R^d init 0 (a 50/50 blend)

and the result becomes x0 (the embedding every block's resid_mix sees).

Document boundary (fixed here): the reference blends across documents, so each BOS (id 1,
the first token of every document) takes half of the previous document's last embedding.
golf keeps x_t unchanged where token t is BOS (`mask_bos = true`, as the later PR #1851
lineage did); `mask_bos = false` reproduces the reference. The position after a BOS still
blends with the BOS: that is the same document.

g: scalar group, exported float32. d parameters (512 at d=512).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    mask_bos: bool = golf.option(True, "keep BOS positions unblended (false = the reference, which blends across documents)")
    gate_init: float = golf.option(0.0, "initial gate logit g (0 = sigmoid 0.5, the reference)")

    def check(self) -> None:
        if not math.isfinite(self.gate_init):
            raise self.invalid("gate_init", "must be finite")


class SmearGate(nn.Module):
    def __init__(self, model_dim: int, gate_init: float, mask_bos: bool, bos_id: int = 1):
        super().__init__()
        self.mask_bos, self.bos_id = mask_bos, bos_id
        self.gate = golf.declare(nn.Parameter(torch.full((model_dim,), float(gate_init))), "scalar", "float32")  # g [d]

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:  # x [B,T,d], tokens [B,T] -> [B,T,d]
        g = torch.sigmoid(self.gate.to(x.dtype))  # [d]
        prev = torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)  # x_{t-1}, [B,T,d]
        out = (1 - g) * x + g * prev
        if self.mask_bos:  # a build-time flag, not a tensor value
            out = torch.where((tokens == self.bos_id).unsqueeze(-1), x, out)
        return out


class SmearGatePlugin(golf.Plugin):
    name = "smear_gate"
    description = "blend each embedding with the previous position's through a learned per-channel gate (PR #549 stack)"
    Config = Config

    @property
    def document_aware(self) -> bool:
        return self.config.mask_bos

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        c = self.config
        description.embedding.transforms.append(golf.Part(SmearGate, config.model.model_dim, c.gate_init, c.mask_bos, description.bos_id))
