"""Muon (Newton–Schulz orthogonalised momentum) for block matrices, AdamW for the rest.

Groups come from each parameter's declaration (`golfcore.params`), never from its name:
"matrix" -> Muon at `matrix_lr`, "embed" -> AdamW at `embed_lr`, "scalar" -> AdamW at
`scalar_lr` (docs/techniques.md §0). Every param group records `base_lr` so the trainer's
schedule is one multiplication (`apply_lr_scale`).

Distributed training: the trainer all-reduces gradients first, then clips (`clip_grad_norm`
sees the global-batch norm, fixing D17), then steps. Muon then computes the update of every
matrix redundantly on every process. The challenge's Parallel Muon (docs/techniques.md §3.7) shards
Newton–Schulz across ranks with reduce-scatter/all-gather to save ~2 ms/step; golf trades
that for an optimizer that needs no communication and gives bit-identical weights on
every rank by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .config import OptimSection
from .params import param_specs

NS_COEFFS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton–Schulz coefficients (Keller Jordan's Muon). They trade exactness for speed:
after 5 steps singular values land in roughly [0.68, 1.2] instead of exactly 1, except
singular values below ~0.3% of the Frobenius norm, which stay smaller."""


def zeropower_newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U·Vᵀ for g = U·S·Vᵀ, on the last two dims of `g` ([..., m, n]).

    bf16 on CUDA (speed; the iteration is self-correcting), float32 on CPU (bf16 matmuls
    are slow there). Returns g's dtype. A zero `g` gives zeros (eps guards the division).
    """
    a, b, c = NS_COEFFS
    x = g.bfloat16() if g.is_cuda else g.float()
    transposed = g.size(-2) > g.size(-1)
    if transposed:
        x = x.mT  # [..., n, m] with n < m: X·Xᵀ is the smaller Gram matrix
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # all singular values <= 1
    for _ in range(steps):
        gram = x @ x.mT  # [..., rows, rows]
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then Newton–Schulz orthogonalisation, for 2-D matrices.

    Per matrix W [rows, cols] with gradient g:
        buf = momentum·buf + g;  u = g + momentum·buf (nesterov) or buf
        W *= 1 - lr·weight_decay             (decoupled, before the update)
        W -= lr·√max(1, rows/cols)·NS(u)
    The √(rows/cols) factor keeps the per-element update size comparable between tall
    and wide matrices (NS(u) has unit singular values, so tall ones get smaller entries).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float,
        nesterov: bool = True,
        backend_steps: int = 5,
        weight_decay: float = 0.0,
    ):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, backend_steps=backend_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                u = g.add(buf, alpha=momentum) if group["nesterov"] else buf
                x = zeropower_newton_schulz(u, steps=group["backend_steps"])
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(x.to(p.dtype), alpha=-lr * math.sqrt(max(1.0, p.size(0) / p.size(1))))
        return loss


def build_optimizers(model: nn.Module, optim: OptimSection) -> list[torch.optim.Optimizer]:
    """Muon for "matrix" parameters, one AdamW with an "embed" and a "scalar" group.

    Empty groups are left out (a model with no matrices gets no Muon). Raises ValueError
    for an undeclared parameter or a "matrix" parameter that is not 2-D.
    """
    params = dict(model.named_parameters())
    by_group: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "scalar": []}
    for name, spec in param_specs(model).items():
        p = params[name]
        if spec.group == "matrix" and p.ndim != 2:
            raise ValueError(f"parameter {name!r} is declared 'matrix' (Muon) but has shape {tuple(p.shape)}; Muon needs 2-D")
        by_group[spec.group].append(p)

    optimizers: list[torch.optim.Optimizer] = []
    if by_group["matrix"]:
        optimizers.append(
            Muon(
                [{"params": by_group["matrix"], "name": "matrix", "base_lr": optim.matrix_lr}],
                lr=optim.matrix_lr,
                momentum=muon_momentum_at(0, optim),
                backend_steps=optim.muon_backend_steps,
                weight_decay=optim.muon_weight_decay,
            )
        )
    adam_groups = [
        {"params": by_group[name], "name": name, "lr": lr, "base_lr": lr}
        for name, lr in (("embed", optim.embed_lr), ("scalar", optim.scalar_lr))
        if by_group[name]
    ]
    if adam_groups:
        on_cuda = all(p.is_cuda for g in adam_groups for p in g["params"])
        optimizers.append(
            torch.optim.AdamW(
                adam_groups,
                betas=(optim.adam_beta1, optim.adam_beta2),
                eps=optim.adam_eps,
                weight_decay=optim.adam_weight_decay,
                fused=on_cuda,
            )
        )
    return optimizers


def apply_lr_scale(optimizers: Iterable[torch.optim.Optimizer], scale: float) -> None:
    """lr = base_lr · scale for every group (warmdown multiplies every group alike)."""
    for opt in optimizers:
        for group in opt.param_groups:
            if "base_lr" not in group:
                raise ValueError(f"{type(opt).__name__} param group {group.get('name', '?')!r} has no 'base_lr'; record it when building the optimizer")
            group["lr"] = group["base_lr"] * scale


def muon_momentum_at(step: int, optim: OptimSection) -> float:
    """Muon momentum at `step`: linear from warmup_start to muon_momentum over warmup_steps."""
    if optim.muon_momentum_warmup_steps <= 0:
        return optim.muon_momentum
    frac = min(step / optim.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * optim.muon_momentum_warmup_start + frac * optim.muon_momentum


def set_muon_momentum(optimizers: Iterable[torch.optim.Optimizer], momentum: float) -> None:
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["momentum"] = momentum


def clip_grad_norm(model: nn.Module, max_norm: float) -> Tensor:
    """Clip all gradients to a global L2 norm of `max_norm`; returns the norm before clipping.

    Call after the gradient all-reduce so the norm is that of the global batch (D17: the
    reference clipped each rank's local gradient). max_norm == 0 only measures.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm == 0:
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
