"""Value embeddings (VE): a shared token embedding added to the attention values of chosen layers.

docs/techniques.md §3.5 (the PR #549 stack; introduced in the PR #374 1.1246 stack). Once per
forward pass,

    ve = β · W_ve E_ve[t]  ∈ R^{G·D}       E_ve ∈ R^{V×128}, W_ve ∈ R^{G·D×128}, β a learned scalar

and at every selected layer ℓ, `v ← v + λ_ℓ · ve` (reshaped to [B,T,G,D], the same layout as the
reference's add on the flat [B,T,G·D] values before its reshape into KV heads).

Init: E_ve ~ N(0, 0.01), β = 0.1, λ_ℓ = 1, W_ve orthogonal. The reference's constructor
zero-initialises W_ve, but its `_init_weights` overwrites it orthogonally, so that zero init is
dead code (defect D19); golf does what the reference trained with.

Layer indexing (defect D6 fixed): `layers` are physical indices by default, so with depth
recurrence every virtual layer running a listed physical layer gets the addition, each with
its own λ. The reference indexed virtual layers, so its "9,10" under PR #733's 13-layer
schedule hit physical layers 7 and 8; `index = "virtual"` reproduces that.

One set of shared parameters: the plugin describes E_ve/W_ve/β as one Part that every selected
layer's transform takes, so the builder makes it once per model and hands the same module to each (state_dict lists it under each of those
layers; the artifact stores it once and records the other keys as aliases). The first
selected layer computes `ve` and caches it in the per-forward context (`ctx.cache["value_embeddings"]`);
later layers reuse it.

Order 0 among value transforms: value residual (order 10) then captures layer 0's values
after VE. Declares: E_ve embed/embedding; W_ve scalar/float16; β and λ scalar/float32.
163,843 parameters at V=1024, G·D=256, two VE layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf

CTX_KEY = "value_embeddings"  # this plugin's name: its slot in ctx.cache
TABLE_INIT_STD = 0.01


@dataclass
class Config(golf.LayerSelection):
    layers: str | list[int] = golf.option([9, 10], 'layers that get the value embedding ("all", "last:N" or indices, as `index` says)')
    index: Literal["physical", "virtual"] = golf.option(
        "physical", "whether `layers` are physical or virtual indices (virtual = the reference under recurrence, D6)"
    )
    dim: int = golf.option(128, "width of the shared table E_ve (projected to G*D by W_ve)")
    scale_init: float = golf.option(0.1, "initial value of the shared scale β")

    def check(self) -> None:
        super().check()
        if self.dim < 1:
            raise self.invalid("dim", f"{self.dim} must be >= 1")
        if not math.isfinite(self.scale_init):
            raise self.invalid("scale_init", "must be finite")


class SharedValueEmbedding(nn.Module):
    """E_ve, W_ve and β: one instance per model, shared by every VE layer."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int, scale_init: float):
        super().__init__()
        self.table = golf.declare(nn.Parameter(torch.randn(vocab_size, dim) * TABLE_INIT_STD), "embed", "embedding")  # E_ve [V,dim]
        proj = torch.empty(kv_dim, dim)
        nn.init.orthogonal_(proj)  # D19: the reference's zero init is overwritten by this
        self.proj = golf.declare(nn.Parameter(proj), "scalar", "float16")  # W_ve [G*D,dim]
        self.scale = golf.declare(nn.Parameter(torch.tensor(float(scale_init))), "scalar", "float32")  # β []

    def forward(self, tokens: Tensor) -> Tensor:  # tokens [B,T] -> ve [B,T,G*D]
        h = F.embedding(tokens, self.table)  # [B,T,dim]
        return F.linear(h, self.proj.to(h.dtype)) * self.scale.to(h.dtype)


class ValueEmbeddingAdd(nn.Module):
    """v ← v + λ_ℓ · ve at one virtual layer; ve computed once per forward and cached in ctx."""

    order = 0

    def __init__(self, shared: SharedValueEmbedding):
        super().__init__()
        self.shared = shared
        self.layer_scale = golf.declare(nn.Parameter(torch.tensor(1.0)), "scalar", "float32")  # λ_ℓ []

    def forward(self, v: Tensor, ctx: golf.ForwardContext) -> Tensor:  # v [B,T,G,D] -> [B,T,G,D]
        ve = ctx.cache.get(CTX_KEY)
        if ve is None:  # first VE layer of this forward (a dict lookup, not a tensor value)
            ve = self.shared(ctx.tokens)  # [B,T,G*D]
            ctx.cache[CTX_KEY] = ve
        return v + (self.layer_scale.to(v.dtype) * ve.to(v.dtype)).view(v.shape)


class ValueEmbeddings(golf.Plugin):
    name = "value_embeddings"
    description = "shared token embedding added to the attention values of chosen layers (PR #549 stack; D6 fixed)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        m, c = config.model, self.config
        shared = golf.Part(SharedValueEmbedding, m.vocab_size, c.dim, m.num_kv_heads * m.head_dim, c.scale_init)  # built once
        for layer in description.layers:
            if c.selects(layer.info):
                layer.value_transforms.append(golf.Part(ValueEmbeddingAdd, shared))
