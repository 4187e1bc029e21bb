"""Partial RoPE: rotary positions on the first `dims` of each head's dims only (16 of 64).

docs/techniques.md §3.6 (the PR #549 stack; with LN scale −0.0023 bpb in the 2026-03-21 record).
After the per-head RMSNorm of q and k, dims c and c + dims/2 (c < dims/2) are rotated with
θ_c = base^(−2c/dims); the other head_dim − dims dims carry no position information, so
those channels attend by content alone. Returns `golf.Rotary(head_dim, base, dims)`.

NTK rescale (defect D20): the reference's golf.Rotary hard-codes its training length to 1024 and,
whenever a forward pass has T > 1024 positions, replaces the base with

    base' = base · (T / train_len)^(dims / (dims − 2))

so at T = 2048 (its train and eval length) it always ran with base' = 1e4 · 2^(16/14) ≈ 22,082.
golf uses the plain base by default (`ntk_train_len = 0`). With `ntk_train_len = N > 0` the
rotary applies the formula above with train_len = N to every forward pass whose length T
exceeds N (T is a static shape, so this is a shape-dependent choice that compiled graphs
specialise on, never a data-dependent one). Like the reference, it depends on the window
length: a shorter window (e.g. golf's tail eval window) with T ≤ N uses the plain base.

No parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import golfcore as golf


@dataclass
class Config(golf.Section):
    dims: int = golf.option(16, "head dims that get rotary positions (even, <= head_dim); the rest get none")
    ntk_train_len: int = golf.option(
        0, "0 = plain base; N > 0 = the reference's NTK rescale for forward passes longer than N positions (D20)"
    )

    def check(self) -> None:
        if self.dims < 2 or self.dims % 2:
            raise self.invalid("dims", f"{self.dims} must be even and >= 2")
        if self.ntk_train_len < 0:
            raise self.invalid("ntk_train_len", f"{self.ntk_train_len} must be >= 0 (0 = off)")
        if self.ntk_train_len and self.dims < 4:
            raise self.invalid("dims", "the NTK rescale exponent dims/(dims-2) needs dims >= 4")


def ntk_base(base: float, dims: int, seq_len: int, train_len: int) -> float:
    """The reference's rescaled base: base · (seq_len/train_len)^(dims/(dims−2)) when seq_len > train_len."""
    if seq_len <= train_len:
        return base
    return base * (seq_len / train_len) ** (dims / (dims - 2))


class NTKRotary(golf.Rotary):
    """golf.Rotary whose base is NTK-rescaled for forward passes longer than `train_len` positions."""

    def __init__(self, head_dim: int, base: float, dims: int, train_len: int):
        super().__init__(head_dim, base, dims)
        self.train_len = train_len

    def inv_freq(self, seq_len: int, device: torch.device) -> Tensor:  # [dims/2]; seq_len is a static shape
        base = ntk_base(self.base, self.dims, seq_len, self.train_len)
        return base ** (-torch.arange(0, self.dims, 2, device=device, dtype=torch.float32) / self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, base={self.base}, ntk_train_len={self.train_len}"


class PartialRope(golf.Plugin):
    name = "partial_rope"
    description = "rotary positions on the first 16 of 64 head dims only (PR #549 stack)"
    Config = Config

    @golf.hookimpl
    def golf_check_config(self, config):
        head_dim = config.model.head_dim
        if self.config.dims > head_dim:
            raise golf.ConfigError(f"[plugins.partial_rope] dims: {self.config.dims} exceeds the head dim {head_dim}")

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        m, c = config.model, self.config
        for layer in description.layers:
            if c.ntk_train_len:
                layer.rotary = golf.Part(NTKRotary, m.head_dim, m.rope_base, c.dims, c.ntk_train_len)
            else:
                layer.rotary = golf.Part(golf.Rotary, m.head_dim, m.rope_base, dims=c.dims)
