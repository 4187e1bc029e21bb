"""Calibration: what each projection sees as input, observed on training batches after the last step.

A quantizer that wants calibration (Hessian GPTQ, AWQ-lite) says so with `calibration_batches > 0`
(`golf.Quantizer`). The run then takes that many micro-batches from the training stream, right
where training stopped (never validation data: validation-calibrated GPTQ was ruled out, PR #728),
runs the model's forward on them with a pre-hook on every projection, and hands the quantizer one
`InputStats` per weight. The time counts inside the training clock: the recipe reserves it
(`calibration_reserve_seconds` on the quantizer) and the compliance record's train time includes it.

A projection is any module with a 2-D `.weight` [out, in] that its forward multiplies by its first
input x [..., in] (golfcore.Projection, nn.Linear), or a module handed a 2-D parameter as its second
argument, `module(x, W)`: the tied head `logit_head(h, tok_emb.weight)`, whose inputs, the final
hidden states, give the embedding table its Hessian (as PR #1855 hooks the final norm's output).
A weight used by several modules or several times per forward (depth recurrence, shared layers)
accumulates every use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .contract import Calibration


@dataclass
class InputStats:
    """What one weight's inputs looked like during calibration."""

    hessian: Tensor  # [in, in] float32: mean of x xᵀ over the input rows (GPTQ's H, up to a factor 2)
    rows: int  # input rows observed (tokens × uses)
    role: str | None = None  # the module's `role` attribute, when it has one

    @property
    def channel_rms(self) -> Tensor:  # [in]: sqrt(mean x_j²), AWQ's activation scale
        return self.hessian.diagonal().clamp_min(0).sqrt()


def projections(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Weight name (as `model.named_parameters` names it) -> the modules that use it as a projection."""
    names = {id(p): name for name, p in model.named_parameters()}
    found: dict[str, list[nn.Module]] = {}
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(w, nn.Parameter) and w.ndim == 2 and id(w) in names and not isinstance(module, nn.Embedding):
            found.setdefault(names[id(w)], []).append(module)
    return found


def collect_input_stats(model: nn.Module, batches: Iterable[Tensor], forward: Callable[[Tensor], object],
                        all_reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, InputStats]:
    """Run `forward(batch)` on every batch with a pre-hook on each projection; sum x xᵀ per weight.

    `all_reduce` (sum across ranks) makes every rank hold the stats of all ranks' batches."""
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    roles: dict[str, str | None] = {}
    names = {id(p): name for name, p in model.named_parameters() if p.ndim == 2}

    def add(name: str, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.size(-1)).float()  # [rows, in]
        if name not in sums:
            sums[name] = torch.zeros(x.size(1), x.size(1), device=x.device)
            rows[name] = 0
        sums[name].addmm_(x.T, x)
        rows[name] += x.size(0)

    def projection_hook(name: str, weight: Tensor):
        def hook(module: nn.Module, args: tuple) -> None:
            if torch.is_floating_point(args[0]) and args[0].size(-1) == weight.size(1):
                add(name, args[0])
        return hook

    def head_hook(module: nn.Module, args: tuple) -> None:  # module(x, W): W's input is x
        if len(args) >= 2 and isinstance(args[1], Tensor) and id(args[1]) in names and torch.is_tensor(args[0]) \
                and torch.is_floating_point(args[0]) and args[0].size(-1) == args[1].size(1):
            roles.setdefault(names[id(args[1])], None)
            add(names[id(args[1])], args[0])

    hooks = []
    found = projections(model)
    for name, modules in found.items():
        roles[name] = getattr(modules[0], "role", None)
        weight = modules[0].weight
        hooks += [m.register_forward_pre_hook(projection_hook(name, weight)) for m in modules]
    hooked = {id(m) for ms in found.values() for m in ms}
    hooks += [m.register_forward_pre_hook(head_hook) for m in model.modules() if id(m) not in hooked]
    try:
        with torch.no_grad():
            for batch in batches:
                forward(batch)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name in sorted(sums):
        total, count = sums[name], torch.tensor(float(rows[name]), device=sums[name].device)
        if all_reduce is not None:
            total, count = all_reduce(total), all_reduce(count)
        out[name] = InputStats((total / count.clamp_min(1)).cpu(), int(count.item()), roles.get(name))
    return out


@dataclass(frozen=True)
class CalibrationRecord(Calibration):
    """The contract's Calibration (source "train": micro-batches of the training stream after the
    last step, inside the training clock), which the compliance record reads, and its counts."""

    batches: int
    weights: int  # weights with stats


def calibrate(quantizer, model: nn.Module, next_batch: Callable[[], Tensor], forward: Callable[[Tensor], object],
              all_reduce: Callable[[Tensor], Tensor] | None = None) -> CalibrationRecord | None:
    """Give `quantizer` its `calibration_batches` of training input stats; None when it wants none."""
    n = int(getattr(quantizer, "calibration_batches", 0) or 0)
    if n <= 0:
        return None
    t0 = time.perf_counter()
    batches = [next_batch() for _ in range(n)]
    stats = collect_input_stats(model, batches, forward, all_reduce)
    quantizer.calibrate(stats)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    quantizer.calibration = CalibrationRecord("train", sum(b.numel() for b in batches), time.perf_counter() - t0, True, n, len(stats))
    return quantizer.calibration
