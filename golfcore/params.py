"""Parameter ownership: every parameter declares its optimizer group and export precision.

The module that creates a parameter declares it right there, so nothing downstream
guesses from names. `build_model` refuses a model with an undeclared parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

OptimGroup = Literal["matrix", "embed", "scalar"]
"""matrix: Muon (2-D hidden matrices); embed: Adam at the embedding lr; scalar: Adam at the scalar lr."""

ExportKind = Literal["quantize", "embedding", "float16", "float32"]
"""quantize: the quantizer's matrix grid (int8 in the core, int6 with gptq_lite);
embedding: per-row int8; float16 / float32: stored as is in that precision."""

_OPTIM_GROUPS = ("matrix", "embed", "scalar")
_EXPORT_KINDS = ("quantize", "embedding", "float16", "float32")


@dataclass(frozen=True)
class ParamSpec:
    group: OptimGroup
    export: ExportKind


def declare(param: nn.Parameter, group: OptimGroup, export: ExportKind) -> nn.Parameter:
    """Tag `param` with its optimizer group and export precision; returns it for inline use."""
    if group not in _OPTIM_GROUPS:
        raise ValueError(f"unknown optimizer group {group!r}; expected one of {_OPTIM_GROUPS}")
    if export not in _EXPORT_KINDS:
        raise ValueError(f"unknown export kind {export!r}; expected one of {_EXPORT_KINDS}")
    param.golf_spec = ParamSpec(group, export)
    return param


def spec_of(param: torch.Tensor) -> ParamSpec | None:
    return getattr(param, "golf_spec", None)


def param_specs(model: nn.Module) -> dict[str, ParamSpec]:
    """name -> spec for every parameter; raises naming the first undeclared one."""
    specs = {}
    for name, param in model.named_parameters():
        spec = spec_of(param)
        if spec is None:
            raise ValueError(f"parameter {name!r} has no declared optimizer group/export kind (use golfcore.declare)")
        specs[name] = spec
    return specs


def float_params(model: nn.Module) -> list[torch.Tensor]:
    """The floating-point parameters, each once (a parameter used in two places is one tensor):
    what weight averages (EMA, SWA) track."""
    return [p for p in model.parameters() if p.is_floating_point()]


class WeightAverage:
    """An fp32 running combination of a model's floating-point parameters, aligned with
    `float_params(model)`: the state of weight averages such as EMA and SWA.

    `update(model, keep, add)` sets avg <- keep * avg + add * w (the first call copies w);
    `write_to(model, scale)` loads scale * avg into the parameters (in their own dtype)."""

    def __init__(self):
        self.tensors: list[torch.Tensor] | None = None

    def update(self, model: nn.Module, keep: float = 1.0, add: float = 1.0) -> None:
        params = [p.detach() for p in float_params(model)]
        if self.tensors is None:
            self.tensors = [p.float().clone() for p in params]
            return
        current = [p if p.dtype == torch.float32 else p.float() for p in params]
        if keep != 1.0:
            torch._foreach_mul_(self.tensors, keep)
        torch._foreach_add_(self.tensors, current, alpha=add)

    def write_to(self, model: nn.Module, scale: float = 1.0, blend_current: float = 0.0) -> None:
        """params <- (1 - blend_current) * scale * avg + blend_current * params."""
        params = float_params(model)
        with torch.no_grad():
            values = torch._foreach_mul(self.tensors, scale * (1.0 - blend_current))
            if blend_current:
                torch._foreach_add_(values, [p.float() for p in params], alpha=blend_current)
            torch._foreach_copy_(params, [v.to(p.dtype) for v, p in zip(values, params)])

