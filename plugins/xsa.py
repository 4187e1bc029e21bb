"""XSA, exclusive self-attention: remove from each head's attention output its own value's direction.

docs/techniques.md §4 (Zhai 2026; all layers in PR #634, partial in PR #287 and the 2026-03-20
EfficientPartialXSA record). For the attention output y_{t,h} ∈ R^D (softmax(qkᵀ/√D)·V, before
any gate and W_o) and the value v_{t,g(h)} at the same position in head h's KV group:

    z_{t,h} = y_{t,h} − (y_{t,h}·v̂_{t,g(h)}) v̂_{t,g(h)},   v̂ = v / max(‖v‖, 1e−12),   g(h) = h // (H/G)

GQA without repeating KV heads: y is reshaped to [B,T,G,r,D] (r = H/G) and v̂ broadcast as
[B,T,G,1,D]; contiguous head grouping, as FlashAttention's GQA and SDPA's `enable_gqa` map
query heads to KV heads. `v` is the value actually attended: after value embeddings and value
residual (the core passes it), so with VRL the token's own layer-0 value is removed as well.

An attention-output transform at order 0: it runs before gated attention (order 10); a
head-wise scalar gate commutes with it anyway. No parameters.

Layer selection (defect D5 fixed): `layers = "all"` (the default) applies it to every virtual
layer. PR #733's `XSA_LAST_N=11` counted from the end of 13 virtual layers, leaving layers 0–1
out despite its "XSA all" claim; `layers = "last:11"` reproduces that. A list of ints selects
layers by `index` (virtual by default; physical = every virtual layer running that physical
layer under recurrence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf

@dataclass
class Config(golf.LayerSelection):
    """`layers`/`index` as golf.LayerSelection: "all" virtual layers by default."""


class ExclusiveSelfAttention(nn.Module):
    """z = y − (y·v̂) v̂ per head, with v̂ the normalized value of the head's KV group at the same position."""

    order = 0

    def forward(self, y: Tensor, v: Tensor, x: Tensor, ctx: golf.ForwardContext) -> Tensor:  # y [B,T,H,D], v [B,T,G,D] -> [B,T,H,D]
        B, T, H, D = y.shape
        G = v.size(2)
        vn = F.normalize(v, dim=-1, eps=1e-12).to(y.dtype).unsqueeze(3)  # v̂ [B,T,G,1,D]
        yg = y.reshape(B, T, G, H // G, D)  # [B,T,G,r,D]: heads h = g·r + j share KV head g
        z = yg - (yg * vn).sum(dim=-1, keepdim=True) * vn  # [B,T,G,r,D]
        return z.reshape(B, T, H, D)


class Xsa(golf.Plugin):
    name = "xsa"
    description = "exclusive self-attention: project each head's own value direction out of its output (PR #634; D5 fixed)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description):
        for layer in description.layers:
            if self.config.selects(layer.info):
                layer.output_transforms.append(golf.Part(ExclusiveSelfAttention))
