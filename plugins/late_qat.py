"""Late QAT: straight-through fake quantization once the lr scale falls below `threshold`
(docs/techniques.md §3.9; PR #414 threshold 0.15, carried to #549/#733).

Every block matrix w is used as  w + enabled * (fake_quantize(w) - w).detach(),  where
fake_quantize is the run's own quantizer (int6 per row with gptq_lite, the core's int8
otherwise): forward sees exactly the exported weights, backward passes the gradient to w
unchanged. `enabled` is a non-persistent float buffer (0 or 1) switched between steps in
golf_step_end (latched on at the first step whose lr scale is below `threshold`; the next
step trains quantized), so torch.compile treats it as an input and cannot fold it; checkpoints
save it with the model's buffers, so a resumed run trains quantized from its first step. The price:
the quantized weights are computed in every forward, also while off (forward only; no
backward through them).

Defects fixed:
- D3: the reference fake-quantized only `CastedLinear`s (two tiny fp16 tensors) and never
  the bank matrices the exporter quantizes; here the core applies the transform to every
  block matrix, and the grid is the exporter's (the reference used a row-max clip with a
  1/31 floor, not its export's percentile search).
- 2026-03-21 record: a Python class flag was constant-folded by torch.compile; a buffer is not.
- D3 (reset): the reference never switched QAT off, so TTT trained fake-quantized tensors.
  Each model build gets a new module that starts off, so the model loaded from the artifact
  (eval, TTT) is never fake-quantized.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    threshold: float = golf.option(0.15, "switch on after the first step whose lr scale is below this")

    def check(self) -> None:
        if not 0 < self.threshold <= 1:
            raise self.invalid("threshold", f"{self.threshold} is not in (0, 1]")


class FakeQuantize(nn.Module):
    """(w[out,in]) -> w + enabled * sg(quantizer.fake_quantize(w) - w), computed so that the forward
    value is exactly fake_quantize(w) when on and exactly w when off: (w - sg(w)) is an exact 0
    carrying the identity gradient, and lerp with weight 1 (or 0) returns its end (or start)
    exactly, where w + (fq - w) can be off by an ulp."""

    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer
        self.register_buffer("enabled", torch.zeros(()), persistent=False)

    def forward(self, w: Tensor) -> Tensor:
        ws = w.detach()
        return (w - ws) + torch.lerp(ws, self.quantizer.fake_quantize(ws), self.enabled.to(w.dtype))


def set_enabled(model: nn.Module, on: bool) -> int:
    """Switch every late-QAT module of `model`; returns how many there are."""
    modules = {id(m): m for m in model.modules() if isinstance(m, FakeQuantize)}
    for m in modules.values():
        m.enabled.fill_(1.0 if on else 0.0)
    return len(modules)


class LateQat(golf.Plugin):
    name = "late_qat"
    description = "straight-through fake quantization on the exporter's grid once lr scale < 0.15 (PR #414; D3 fixed)"
    Config = Config

    def __init__(self, config=None):
        super().__init__(config)
        self._switched: weakref.WeakSet = weakref.WeakSet()  # models already switched on (no per-step module walk)

    @golf.hookimpl
    def golf_weight_transform(self, config, quantizer):
        if quantizer is None:  # only tests build models without one
            quantizer = golf.Int8Quantizer(config.export.float_max_numel)
        return FakeQuantize(quantizer)

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        if lr_scale < self.config.threshold and model not in self._switched:
            set_enabled(model, True)
            self._switched.add(model)
