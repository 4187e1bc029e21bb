"""GPTQ-lite: per-row int6 export with a clip-percentile search (docs/techniques.md §3.10, PR #414 -> #549/#733).

For every "quantize" matrix with more than `export.float_max_numel` elements, each row r
(last dim) is stored as int6 levels q in -31..31 (held in int8; the compressor squeezes the
unused bits) and one fp16 step s_r. For each candidate p in `percentiles`:

    c_r = p-quantile of |w_r|,  s_r = fp16(c_r / 31),  q = clamp(round(w / s_r), -31, 31)

and each row keeps the p with the lowest row MSE ||q s_r - w_r||^2. Not Hessian-based GPTQ.

Defects fixed against the reference:
- D16: the reference kept one p per matrix (lowest whole-matrix MSE) although its README
  said per row; here the choice is per row, so the total error is never larger.
- D15: no step floor. The reference's s_r = max(c_r/31, 1/31) made every row with c_r < 1
  (93% of rows in issue #775) use a step of 1/31 and so only a few of its 63 levels. A row
  that is all zeros (or whose step underflows fp16) stores zeros. `scale_floor = true`
  restores the floor (1/max_level for int rows, 1/127 for int8 embeddings), for comparison:
  fewer levels in use compress smaller, at a larger rounding error.
- D18: tensors declared "float32" (control tensors) stay fp32; the core's rules apply to
  everything except "quantize" matrices ("embedding" tables: per-row int8 as in the core).

Encoding: where two byte encodings of the same values are possible (levels in row or column
order, as int8 or shifted to 0..62; steps as they are or in byte planes) the artifact stores
whichever the run's compressor makes smaller, per tensor (the core's artifact packing,
`export.smallest_layout`); the grid above is never traded for bytes.

`row_step` and `fake_quantize` run the same computation as the export (same candidates,
same fp16 rounding, same per-row choice), so late QAT and CROWN-Q see the exporter's grid;
both are branch-free so they compile with torch.compile(fullgraph=True).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import golfcore as golf

DEFAULT_PERCENTILES = [0.999, 0.9995, 0.9999, 0.99999, 1.0]


@dataclass
class Config(golf.Section):
    percentiles: list[float] = golf.option(DEFAULT_PERCENTILES, "clip quantiles of |w_r| tried per row, each in (0, 1]")
    max_level: int = golf.option(31, "largest stored level |q| (31 = int6, 15 = int5, 127 = int8)")
    scale_floor: bool = golf.option(
        False, "the reference's step floor: step >= 1/max_level (int rows) and >= 1/127 (int8 embeddings); D15"
    )

    def check(self) -> None:
        if not self.percentiles:
            raise self.invalid("percentiles", "needs at least one candidate")
        if any(not 0 < p <= 1 for p in self.percentiles):
            raise self.invalid("percentiles", f"{self.percentiles}: each must be in (0, 1]")
        if not 1 <= self.max_level <= 127:
            raise self.invalid("max_level", f"{self.max_level} is not in 1..127 (levels are stored in int8)")


class GptqLiteQuantizer(golf.Int8Quantizer):
    """golf.Int8Quantizer with "quantize" matrices on a per-row int-`max_level` grid chosen by search."""

    name = "gptq_lite"

    def __init__(self, float_max_numel: int = 65536, percentiles=DEFAULT_PERCENTILES, max_level: int = 31,
                 scale_floor: bool = False):
        super().__init__(float_max_numel, scale_floor)
        self.percentiles = [float(p) for p in percentiles]
        self.max_level = int(max_level)

    def _search(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(step [rows] fp32 holding fp16 values, differentiable w.r.t. w; chosen candidate index [rows]).

        `w` is [rows, cols]. The choice itself is discrete (no gradient); the step is the
        chosen clip through the top-k values, like the core's quantile.
        """
        raw = golf.row_quantiles(w, self.percentiles) / self.max_level  # [P, R]; top-k, not a sort
        steps = self._stored_steps(raw)
        with torch.no_grad():
            s = steps.detach().unsqueeze(-1)  # [P, R, 1]
            w32 = w.detach().float()
            q = self._levels(w32, s)
            err = (q * s - w32).square().sum(-1)  # [P, R]; a zero step gives q = 0, err = ||w_r||^2
            choice = err.argmin(0)  # [R], first (smallest-p) candidate on ties
        step = steps.gather(0, choice.unsqueeze(0)).squeeze(0)  # [R]
        return step, choice

    def _stored_steps(self, raw: Tensor) -> Tensor:
        """The fp16 steps the artifact stores for candidate steps `raw`, with the gradient of raw
        (zero where the reference's floor, when on, holds the step at 1/max_level)."""
        if self.scale_floor:
            raw = raw.clamp_min(1 / self.max_level)
        return raw + (golf.fp16_round(raw.detach()) - raw).detach()

    def _levels(self, w32: Tensor, step: Tensor) -> Tensor:
        """Levels round(w / step) clamped to +-max_level; 0 where the step is 0 (zero row or fp16 underflow)."""
        safe = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.round(w32 / safe).clamp(-self.max_level, self.max_level)
        return torch.where(step > 0, q, torch.zeros_like(q))

    def _rows(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """q int8 [..., cols] and step fp32 [...] (fp16 values) for a tensor of any rank >= 1."""
        flat = w.detach().float().reshape(-1, w.size(-1))
        step, _ = self._search(flat)
        q = self._levels(flat, step.unsqueeze(-1))
        return q.to(torch.int8).reshape(w.shape), step.reshape(w.shape[:-1])

    def quantize(self, name: str, tensor: Tensor, export: str) -> tuple[dict[str, Tensor], dict]:
        if tensor.is_floating_point() and export == "quantize" and tensor.numel() > self.float_max_numel and tensor.ndim >= 1:
            golf.to_float16(name, tensor.detach().float().abs().amax() / self.max_level)  # refuse a step fp16 cannot hold
            q, step = self._rows(tensor)
            return {f"{name}.q": q, f"{name}.scale": step.to(torch.float16)}, {"scheme": "int_row", "max_level": self.max_level}
        return super().quantize(name, tensor, export)

    def dequantize(self, name: str, stored: dict[str, Tensor], info: dict) -> Tensor:
        if info.get("scheme") == "int_row":
            return stored[f"{name}.q"].float() * stored[f"{name}.scale"].float().unsqueeze(-1)
        return super().dequantize(name, stored, info)

    def row_step(self, weight: Tensor) -> Tensor:
        """[rows...] export step of a "quantize" matrix; gradient flows through the chosen clip quantile."""
        step, _ = self._search(weight.reshape(-1, weight.size(-1)))
        return step.reshape(weight.shape[:-1])

    def fake_quantize(self, weight: Tensor) -> Tensor:
        """Exactly what the artifact round trip returns for a "quantize" weight (no gradient)."""
        if weight.numel() <= self.float_max_numel:
            return golf.fp16_round(weight.detach().float()).to(weight.dtype)
        flat = weight.detach().float().reshape(-1, weight.size(-1))
        step, _ = self._search(flat)
        step = step.unsqueeze(-1)
        return (self._levels(flat, step) * step).reshape(weight.shape).to(weight.dtype)


class GptqLite(golf.Plugin):
    name = "gptq_lite"
    description = "int6 per-row export with a per-row clip-percentile search (GPTQ-lite, PR #414/#549; D15, D16 fixed)"
    Config = Config

    @golf.hookimpl
    def golf_quantizer(self, config):
        c = self.config
        return GptqLiteQuantizer(config.export.float_max_numel, c.percentiles, c.max_level, c.scale_floor)
