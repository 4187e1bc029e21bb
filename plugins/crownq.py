"""CROWN-Q: a training penalty on the quantization noise the export will add (docs/techniques.md §7; PR #693).

For every matrix W that the exporter quantizes, with rows r:

    penalty = lam * sum_W sum_r h_r * delta_r^2 / 12,   h_r = mean_j W_rj^2

delta_r^2 / 12 is the variance of uniform rounding noise with step delta_r, and h_r a crude
curvature proxy, so the sum estimates the loss increase quantization causes. delta_r is the
run's own quantizer's `row_step(W)`: its real clip (percentile, per-row search) and grid
(int8 in the core, int6 with gptq_lite), differentiable through the clip. The option
`step_divisor_override = N > 0` instead uses delta_r = max_j |W_rj| / N; N = 15 reproduces
PR #693's deliberate over-penalisation (its int6 grid has 31 levels a side).

Which matrices: every parameter declared with export kind "quantize"
(`golf.param_specs`) that the exporter really quantizes, i.e. with more than
`export.float_max_numel` elements (smaller ones are stored as fp16, where rounding noise is
negligible). Each parameter appears once, so a physical matrix shared by several virtual
layers (depth recurrence) is penalised once: it is one tensor and will be quantized once.

When: while the step's lr scale is below `start_scale` (default 1: throughout warmdown),
gated on the schedule, not on a QAT flag. Outside that window the penalty is a constant
zero tensor (no matrix work, no gradient).

Defects fixed:
- D2: the reference looped over `CastedLinear` modules, which in #733 are only `bigram.proj`
  and `ve_shared.proj` (both stored fp16), never the bank matrices that are int6-quantized.
  Here the set comes from the export declarations, so it is exactly what gets quantized.
- Gating: the reference required its QAT flag (scale < 0.15) although its README said
  "during warmdown"; here it is the lr scale alone.
- Grid: the reference's delta ignored the exporter's clip search; here it is the exporter's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    lam: float = golf.option(0.01, "penalty weight lambda (PR #693: 0.01)")
    start_scale: float = golf.option(
        1.0, "active while the step's lr scale is below this (1.0 = during warmdown; > 1 = the whole run)"
    )
    step_divisor_override: float = golf.option(
        0.0, "0 = the quantizer's row_step; N > 0 = delta_r = max|W_r| / N (15 reproduces PR #693)"
    )
    stack_same_shape: bool = golf.option(
        True, "compute same-shape matrices as one stacked tensor (few kernels; right for row-wise quantizers "
        "such as int8 and gptq_lite; turn off for a quantizer whose step depends on the whole matrix)"
    )

    def check(self) -> None:
        if not self.lam >= 0:
            raise self.invalid("lam", f"{self.lam} must be >= 0")
        if not self.start_scale > 0:
            raise self.invalid("start_scale", f"{self.start_scale} must be > 0 (the penalty would never run)")
        if not self.step_divisor_override >= 0:
            raise self.invalid("step_divisor_override", f"{self.step_divisor_override} must be >= 0 (0 = off)")


def quantized_matrices(model: nn.Module, float_max_numel: int) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter the exporter quantizes, each parameter once."""
    specs = golf.param_specs(model)
    return [
        (name, p)
        for name, p in model.named_parameters()  # deduplicates shared parameters
        if specs[name].export == "quantize" and p.is_floating_point() and p.ndim >= 2 and p.numel() > float_max_numel
    ]


def row_penalty(w: Tensor, step: Tensor) -> Tensor:
    """sum_r h_r * step_r^2 / 12 for w [..., cols] and step [...]: rows are the last dim."""
    h = w.float().square().mean(-1)
    return (h * step.float().square()).sum() / 12


class CrownQPenalty:
    """penalty(lr_scale) -> scalar tensor; the trainer calls it every micro-step.

    With `stack_same_shape`, matrices of one shape are stacked into [n, rows, cols] and the
    quantizer's `row_step` runs once per shape (4 shapes in the #733 model instead of 66
    matrices): the core quantizers work row by row over the last dim, so the value is the same.
    """

    def __init__(self, matrices: list[Tensor], quantizer, cfg: Config, device: torch.device):
        self.matrices = matrices
        self.quantizer = quantizer
        self.cfg = cfg
        self.zero = torch.zeros((), device=device)
        groups: dict[tuple, list[Tensor]] = {}
        for w in matrices:
            key = (tuple(w.shape), w.dtype, w.device) if cfg.stack_same_shape else (id(w),)
            groups.setdefault(key, []).append(w)
        self.groups = list(groups.values())

    def step_of(self, w: Tensor) -> Tensor:
        if self.cfg.step_divisor_override > 0:
            return w.float().abs().amax(-1) / self.cfg.step_divisor_override
        return self.quantizer.row_step(w)

    def value(self) -> Tensor:
        """The penalty now, whatever the schedule (lam included)."""
        total = self.zero
        for group in self.groups:
            w = group[0] if len(group) == 1 else torch.stack(group)  # [n, rows, cols]: rows stay rows
            total = total + row_penalty(w, self.step_of(w))
        return self.cfg.lam * total

    def __call__(self, lr_scale: float) -> Tensor:
        if not lr_scale < self.cfg.start_scale or self.cfg.lam == 0 or not self.matrices:
            return self.zero
        return self.value()


class CrownQ(golf.Plugin):
    name = "crownq"
    description = "CROWN-Q: lam*sum h_r*delta_r^2/12 on every exported-quantized matrix during warmdown (PR #693; D2 fixed)"
    Config = Config

    @golf.hookimpl
    def golf_loss_penalty(self, model, config, quantizer):
        if quantizer is None:  # only tests train without a session's quantizer
            quantizer = golf.Int8Quantizer(config.export.float_max_numel)
        matrices = [p for _, p in quantized_matrices(model, config.export.float_max_numel)]
        device = matrices[0].device if matrices else next(model.parameters()).device
        return CrownQPenalty(matrices, quantizer, self.config, device)
