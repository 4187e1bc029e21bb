"""The training loop: global batch by gradient accumulation, wallclock cap, warmdown by wallclock,
compile warm-up steps that are rolled back, periodic validation with the clock paused.

Mirrors the challenge's train_gpt.py so step counts and schedules compare with its logs.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as torch_dist
from torch import nn

from .config import RunConfig
from .errors import ConfigError
from .optim import apply_lr_scale, build_optimizers, clip_grad_norm, muon_momentum_at, set_muon_momentum
from .plugins import Host


@dataclass
class Dist:
    """This process's place in a torch.distributed job (world_size 1 without torchrun)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()


def setup_dist(device_pref: str) -> Dist:
    """Read torchrun's environment; start the process group (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("[train] device = 'cuda' but no CUDA device is available")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world_size, local_rank, device)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (weights stay fp32, as the challenge's CastedLinear); fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def lr_scale_at(config: RunConfig, step: int, elapsed_ms: float) -> float:
    """The challenge's warmdown: linear to 0 over the last warmdown_iters steps, measured in
    wallclock (warmdown_iters x the running step time) when a wallclock cap is set."""
    t = config.train
    if t.warmdown_iters <= 0:
        return 1.0
    if t.max_wallclock_seconds <= 0:
        start = max(t.iterations - t.warmdown_iters, 0)
        return max((t.iterations - step) / t.warmdown_iters, 0.0) if step >= start else 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = t.warmdown_iters * step_ms
    remaining_ms = max(t.max_wallclock_seconds * 1000 - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def should_compile(config: RunConfig, device: torch.device) -> bool:
    return config.train.compile == "on" or (config.train.compile == "auto" and device.type == "cuda")


def micro_batches_per_rank(config: RunConfig, world_size: int) -> tuple[int, str | None]:
    """Gradient-accumulation steps per process for `world_size` processes, and a note when
    they differ from the recipe's `micro_batches / world_size`.

    The global batch (`train.batch_tokens`) never depends on the process count. When
    world_size does not divide micro_batches, the smallest accumulation a is chosen whose
    micro-batches are no larger than the recipe's (world_size * a >= micro_batches, so memory
    per micro-batch does not grow) and hold whole sequences (batch_tokens divisible by
    world_size * a * seq_len). One exists exactly when world_size * seq_len divides
    batch_tokens (a = batch_tokens / (world_size * seq_len) always qualifies); otherwise the
    batch cannot be split and this raises ConfigError. The CLI calls this before launching
    processes; the Trainer calls it again in each of them.
    """
    t = config.train
    if t.micro_batches % world_size == 0:
        return t.micro_batches // world_size, None
    if t.batch_tokens % (world_size * t.seq_len):
        raise ConfigError(
            f"{config.source}: [train] batch_tokens {t.batch_tokens} cannot be split over {world_size} processes: "
            f"it is not a multiple of {world_size} processes x seq_len {t.seq_len}"
        )
    accum = -(-t.micro_batches // world_size)  # ceil
    while t.batch_tokens % (world_size * accum * t.seq_len):
        accum += 1
    note = (
        f"[train] micro_batches {t.micro_batches} is not divisible by {world_size} processes: each process accumulates "
        f"{accum} micro-batch{'es' if accum > 1 else ''} of {t.batch_tokens // (world_size * accum)} tokens ({world_size * accum} in all; "
        f"batch_tokens {t.batch_tokens} unchanged)"
    )
    return accum, note


@dataclass
class TrainOutcome:
    steps: int
    tokens: int
    train_seconds: float
    stopped_by: str  # "iterations" or "wallclock"
    last_train_loss: float


class Trainer:
    """Trains `model` in place. `on_log(record)` receives every log record (rank 0 only)."""

    def __init__(self, config: RunConfig, model: nn.Module, host: Host, quantizer, loader, dist: Dist,
                 validate: Callable[[nn.Module], float] | None, on_log: Callable[[dict], None],
                 progress: Callable[[int, int], None] | None = None):
        self.config, self.model, self.host, self.dist = config, model, host, dist
        self.accum, note = micro_batches_per_rank(config, dist.world_size)
        if note:
            on_log({"event": "note", "text": note})
        self.validate = validate
        self.on_log = on_log
        self.progress = progress
        self.optimizers = host.first("golf_optimizers", model=model, config=config) or build_optimizers(model, config.optim)
        self.penalties = host.collect("golf_loss_penalty", model=model, config=config, quantizer=quantizer)
        compiled = torch.compile(model, fullgraph=True) if should_compile(config, dist.device) else model
        if dist.world_size > 1:
            device_ids = [dist.device.index] if dist.device.type == "cuda" else None
            compiled = nn.parallel.DistributedDataParallel(compiled, device_ids=device_ids, broadcast_buffers=False)
        self.forward = compiled
        self.loader = loader  # next_batch(global_tokens, seq_len, micro_batches_per_rank) -> (x, y); reset()

    def _sync(self) -> None:
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()

    def _elapsed_ms(self, started: float) -> float:
        """Training time so far, the same on every rank (the slowest rank's), so every rank
        computes the same lr scale and stops at the same step under the wallclock cap."""
        self._sync()
        elapsed = (time.perf_counter() - started) * 1000
        if self.dist.world_size > 1:
            agreed = torch.tensor([elapsed], dtype=torch.float64, device=self.dist.device)
            torch_dist.all_reduce(agreed, op=torch_dist.ReduceOp.MAX)
            elapsed = float(agreed)
        return elapsed

    def _step(self, step: int, lr_scale: float) -> float:
        t, ddp = self.config.train, self.dist.world_size > 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.dist.device)
        for micro in range(self.accum):
            x, y = self.loader.next_batch(t.batch_tokens, t.seq_len, self.accum)
            sync = nullcontext() if (not ddp or micro == self.accum - 1) else self.forward.no_sync()
            with sync:
                with autocast_for(self.dist.device):
                    loss = self.forward(x, y)
                objective = loss
                for penalty in self.penalties:
                    objective = objective + penalty(lr_scale)
                (objective / self.accum).backward()
            total += loss.detach()
        set_muon_momentum(self.optimizers, muon_momentum_at(step, self.config.optim))
        apply_lr_scale(self.optimizers, lr_scale)
        clip_grad_norm(self.model, self.config.optim.grad_clip_norm)
        for opt in self.optimizers:
            opt.step()
        mean_loss = total / self.accum
        if ddp:
            torch_dist.all_reduce(mean_loss, op=torch_dist.ReduceOp.AVG)
        return float(mean_loss)

    def _warmup(self) -> None:
        """Run warm-up steps (they trigger compilation), then restore model, optimizers and data."""
        n = self.config.train.warmup_steps
        if n == 0:
            return
        model_state = copy.deepcopy(self.model.state_dict())
        optim_states = [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]
        for step in range(n):
            self._step(step, 1.0)
            self.on_log({"event": "warmup", "step": step + 1, "of": n})
        self.model.load_state_dict(model_state)
        for opt, state in zip(self.optimizers, optim_states):
            opt.load_state_dict(state)
        self.loader.reset()

    def run(self) -> TrainOutcome:
        t = self.config.train
        self.model.train()
        self._warmup()
        cap_ms = t.max_wallclock_seconds * 1000 if t.max_wallclock_seconds > 0 else float("inf")
        elapsed_ms, step, loss, stopped_by = 0.0, 0, float("nan"), "iterations"
        self._sync()
        started = time.perf_counter()
        while step < t.iterations:
            scale = lr_scale_at(self.config, step, elapsed_ms)
            loss = self._step(step, scale)
            step += 1
            self.host.call("golf_step_end", model=self.model, step=step, lr_scale=scale)
            elapsed_ms = self._elapsed_ms(started)
            if self.progress:
                self.progress(step, t.iterations)
            if step % max(t.log_every, 1) == 0 or step == 1 or step == t.iterations:
                self.on_log({"event": "train", "step": step, "of": t.iterations, "train_loss": loss,
                             "train_time_ms": elapsed_ms, "step_avg_ms": elapsed_ms / step, "lr_scale": scale})
            if elapsed_ms >= cap_ms:
                stopped_by = "wallclock"
                break
            if self.validate and t.val_every and step % t.val_every == 0 and step < t.iterations:
                paused = time.perf_counter()
                val_loss = self.validate(self.model)
                self.model.train()
                started += time.perf_counter() - paused  # the clock does not run during validation
                self.on_log({"event": "val", "step": step, "of": t.iterations, "val_loss": val_loss,
                             "train_time_ms": elapsed_ms, "step_avg_ms": elapsed_ms / step})
        self.host.call("golf_train_end", model=self.model)
        tokens = step * t.batch_tokens
        return TrainOutcome(step, tokens, elapsed_ms / 1000, stopped_by, loss)
