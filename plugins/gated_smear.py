"""Gated smear (the frontier's SmearGate): add a gated share of the previous token's embedding.

docs/techniques.md §12.4 (modded-nanogpt; PR #1667, BOS mask from PR #1855). On the token
embedding x (before the embedding RMSNorm):

    x_t ← x_t + λ · σ(w·x_t[:window]) · x_{t−1} · [token_t ≠ BOS]     for t ≥ 1;  x_0 unchanged
    w ∈ R^window init 0,  λ ∈ R init 0 (the identity at init)

A separate plugin from `smear_gate` (docs/techniques.md §3.4, PR #549's): that one is a convex blend
after the norm with a static per-channel gate starting at one half; this one adds, before the
norm, with a per-token gate read from the current token's first `window` dims and one scalar λ.
One plugin with a mode switch would hide two formulas behind one name.

The BOS mask keeps a document's first token free of the previous document (`mask_bos = false`
reproduces PR #1797/#1667, which smeared across documents). window + 1 parameters (13 at
window 12), scalar (Adam) group, exported float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    window: int = golf.option(12, "leading embedding dims of the current token the gate reads")
    mask_bos: bool = golf.option(True, "no smear into a BOS (false = PR #1797, which smeared across documents)")

    def check(self) -> None:
        if self.window < 1:
            raise self.invalid("window", f"{self.window} must be >= 1")


class GatedSmear(nn.Module):
    def __init__(self, window: int, mask_bos: bool, bos_id: int = 1):
        super().__init__()
        self.window, self.mask_bos, self.bos_id = window, mask_bos, bos_id
        self.weight = golf.declare(nn.Parameter(torch.zeros(1, window)), "scalar", "float32")  # w [1,window]
        self.lam = golf.declare(nn.Parameter(torch.zeros(1)), "scalar", "float32")  # λ [1]

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:  # x [B,T,d] embedding before its norm, tokens [B,T]
        g = self.lam.to(x.dtype) * torch.sigmoid(F.linear(x[:, 1:, : self.window], self.weight.to(x.dtype)))  # [B,T-1,1]
        prev = x[:, :-1]
        if self.mask_bos:  # a build-time flag
            prev = prev * (tokens[:, 1:] != self.bos_id).to(x.dtype).unsqueeze(-1)
        return torch.cat((x[:, :1], x[:, 1:] + g * prev), dim=1)

    def extra_repr(self) -> str:
        return f"window={self.window}, mask_bos={self.mask_bos}"


class GatedSmearPlugin(golf.Plugin):
    name = "gated_smear"
    description = "x_t += λ·σ(w·x_t[:window])·x_{t-1} on the embedding, none into a BOS (PR #1667/#1855 SmearGate)"
    Config = Config

    @property
    def document_aware(self) -> bool:
        return self.config.mask_bos

    @golf.hookimpl
    def golf_check_config(self, config):
        if self.config.window > config.model.model_dim:
            raise golf.ConfigError(f"[plugins.gated_smear] window: {self.config.window} exceeds model_dim {config.model.model_dim}")

    @golf.hookimpl
    def golf_edit_model(self, description):
        c = self.config
        description.embedding.before_norm.append(golf.Part(GatedSmear, c.window, c.mask_bos, description.bos_id))
