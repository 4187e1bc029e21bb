"""Muon (Newton–Schulz orthogonalised momentum) for block matrices, AdamW for the rest.

Groups come from each parameter's declaration (`golfcore.params`), never from its name:
"matrix" -> Muon at `matrix_lr`, "embed" -> AdamW at `embed_lr`, "scalar" -> AdamW at
`scalar_lr` (docs/techniques.md §0). Every param group records `base_lr` so the trainer's
schedule is one multiplication (`apply_lr_scale`).

Speed, as the challenge's Parallel Muon (docs/techniques.md §3.7): matrices of one shape are stacked and
orthogonalised by one batched Newton–Schulz (4 shapes instead of 66 matrices in the #733
model), in `[optim] muon_ns_dtype` (bf16 on CUDA), compiled when the run compiles.

Distributed training: the trainer all-reduces gradients first, then clips (`clip_grad_norm`
sees the global-batch norm, fixing D17), then steps. Every rank keeps the same momentum
buffers (the gradients are identical), but each orthogonalises only its share of each
shape's stack; the shares are all-gathered, so every rank applies the same updates and the
weights stay identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from .config import OptimSection
from .params import param_specs

QUINTIC = ((3.4445, -4.7750, 2.0315),)
"""Keller Jordan's quintic Newton–Schulz coefficients, the same every iteration. They trade
exactness for speed: after 5 steps singular values land in roughly [0.68, 1.2] instead of
exactly 1, except singular values below ~0.3% of the Frobenius norm, which stay smaller."""

Coefficients = tuple[tuple[float, float, float], ...]


@dataclass
class Orthogonalization:
    """What Muon does to a momentum update u [rows, cols] before applying it:

        u <- u / ‖u_row‖ (normalize "rows"), u / ‖u_col‖ ("columns"), or u ("none")
        X <- u / ‖u‖_F;  X <- a_i·X + (b_i·A + c_i·A²)·X, A = X·Xᵀ, for i < steps

    with (a_i, b_i, c_i) = coefficients[min(i, len - 1)]: one triple is the same every
    iteration, several are per-iteration (Polar Express); the last repeats. Plugins edit the
    run's instance in golf_orthogonalization; `[optim] muon_backend_steps` gives `steps`.
    """

    coefficients: Coefficients = QUINTIC
    normalize: Literal["none", "rows", "columns"] = "none"

    def __post_init__(self) -> None:
        if not self.coefficients or any(len(abc) != 3 for abc in self.coefficients):
            raise ValueError(f"coefficients must be (a, b, c) triples; got {self.coefficients!r}")
        if self.normalize not in ("none", "rows", "columns"):
            raise ValueError(f"normalize must be 'none', 'rows' or 'columns'; got {self.normalize!r}")


def zeropower_newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None,
                            coefficients: Coefficients = QUINTIC, normalize: str = "none") -> Tensor:
    """Approximately U·Vᵀ for g = U·S·Vᵀ, on the last two dims of `g` ([..., m, n]): a stack of
    matrices is orthogonalised in one batched iteration (`Orthogonalization` says what it computes).

    Computed in `dtype`; None = bf16 on CUDA (speed; the iteration is self-correcting),
    float32 on CPU (bf16 matmuls are slow there). Returns g's dtype. A zero `g` gives zeros
    (eps guards the divisions).
    """
    if normalize != "none":  # in g's dtype, before the cast: rows (or columns) of unit length
        g = g / g.norm(dim=-1 if normalize == "rows" else -2, keepdim=True).clamp_min(eps)
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    transposed = g.size(-2) > g.size(-1)
    if transposed:
        x = x.mT  # [..., n, m] with n < m: X·Xᵀ is the smaller Gram matrix
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # all singular values <= 1
    for i in range(steps):
        a, b, c = coefficients[min(i, len(coefficients) - 1)]
        gram = x @ x.mT  # [..., rows, rows]
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalisation (`Orthogonalization`: Newton–Schulz), for 2-D matrices.

    Per matrix W [rows, cols] with gradient g:
        buf = momentum·buf + g;  u = g + momentum·buf (nesterov) or buf
        W *= 1 - lr·weight_decay             (decoupled, before the update)
        W -= lr·√max(1, rows/cols)·NS(u)
    The √(rows/cols) factor keeps the per-element update size comparable between tall
    and wide matrices (NS(u) has unit singular values, so tall ones get smaller entries).

    NS runs once per shape on the stack of that shape's matrices, in `ns_dtype`, compiled
    with `compile`. With several ranks (torch.distributed initialised, gradients already
    all-reduced; `rank`/`world_size` default to torch.distributed's), rank r orthogonalises
    the r-th share of each stack and the shares are all-gathered: any `orthogonalization`
    works on a share, since it acts on each matrix alone.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float,
        nesterov: bool = True,
        backend_steps: int = 5,
        weight_decay: float = 0.0,
        ns_dtype: torch.dtype | None = None,
        compile: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        orthogonalization: Orthogonalization | None = None,
    ):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, backend_steps=backend_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices; got a parameter of shape {tuple(p.shape)}")
        self.ns_dtype = ns_dtype
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else torch.distributed.get_rank() if distributed else 0
        self.world_size = world_size if world_size is not None else torch.distributed.get_world_size() if distributed else 1
        self.orthogonalization = replace(orthogonalization or Orthogonalization())  # a copy: later edits do not reach it
        self._newton_schulz = torch.compile(zeropower_newton_schulz, dynamic=False) if compile else zeropower_newton_schulz

    def _ns(self, u: Tensor, steps: int) -> Tensor:
        o = self.orthogonalization
        return self._newton_schulz(u, steps, dtype=self.ns_dtype, coefficients=o.coefficients, normalize=o.normalize)

    def _orthogonalize(self, u: Tensor, steps: int) -> Tensor:
        """NS of a stack u [n, rows, cols]; with several ranks each does ceil(n / world) of them."""
        if self.world_size == 1:
            return self._ns(u, steps)
        n = u.size(0)
        share = -(-n // self.world_size)
        padded = torch.cat((u, u.new_zeros(share * self.world_size - n, *u.shape[1:])))  # zeros orthogonalise to zeros
        mine = self._ns(padded[self.rank * share : (self.rank + 1) * share], steps)
        shares = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(shares, mine.contiguous())
        return torch.cat(shares)[:n]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
            by_shape: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            for (rows, cols), members in by_shape.items():
                ortho = self._orthogonalize(torch.stack([updates[i] for i in members]), group["backend_steps"])  # [n, rows, cols]
                if wd:
                    torch._foreach_mul_([params[i] for i in members], 1 - lr * wd)
                scale = -lr * math.sqrt(max(1.0, rows / cols))
                for i, x in zip(members, ortho):
                    params[i].add_(x.to(params[i].dtype), alpha=scale)
        return loss


def ns_dtype_for(optim: OptimSection, device: torch.device) -> torch.dtype:
    """`[optim] muon_ns_dtype` resolved: auto = bf16 on CUDA, fp32 elsewhere."""
    if optim.muon_ns_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, optim.muon_ns_dtype)


def build_optimizers(model: nn.Module, optim: OptimSection, compile: bool = False, rank: int = 0,
                     world_size: int = 1, orthogonalization: Orthogonalization | None = None) -> list[torch.optim.Optimizer]:
    """Muon for "matrix" parameters, one AdamW with an "embed" and a "scalar" group.

    Empty groups are left out (a model with no matrices gets no Muon). Raises ValueError
    for an undeclared parameter or a "matrix" parameter that is not 2-D. `compile`, `rank`,
    `world_size` and `orthogonalization` go to Muon (compiled Newton–Schulz, sharded across
    ranks, what it computes).
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
                ns_dtype=ns_dtype_for(optim, by_group["matrix"][0].device),
                compile=compile,
                rank=rank,
                world_size=world_size,
                orthogonalization=orthogonalization,
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
