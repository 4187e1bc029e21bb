"""The training loop: global batch by gradient accumulation, wallclock cap, warmdown by wallclock,
compile warm-up steps that are rolled back, periodic validation with the clock paused.

Mirrors the challenge's train_gpt.py so step counts and schedules compare with its logs.

The host waits for the device only when it must: the loss is read on logging steps, the clock
is measured (and agreed across ranks) every CLOCK_SYNC_EVERY steps, on logging and validation
steps and on every step near the cap, and estimated from the agreed step time in between.
Meanwhile the host prepares the next micro-batch (pinned memory, non-blocking copy) while the
device still works on the previous one.
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
from .attention import attention_kernel
from .optim import apply_lr_scale, build_optimizers, clip_grad_norm, muon_momentum_at, ns_dtype_for, set_muon_momentum
from .plugins import Host

CLOCK_SYNC_EVERY = 10
"""Steps between exact clock readings (a device sync and, with several ranks, an all-reduce)."""


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


def activation_dtype_for(config: RunConfig, device: torch.device) -> torch.dtype:
    """`[train] activation_dtype` resolved: auto = bf16 on CUDA (as the reference), fp32 on CPU."""
    choice = config.train.activation_dtype
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, choice)


def autocast_for(device: torch.device, activation_dtype: torch.dtype = torch.float32):
    """bf16 autocast on CUDA (weights stay fp32, as the challenge's CastedLinear); on CPU only
    with bf16 activations (CPU bf16 matmuls are slow; fp32 is the CPU default)."""
    if device.type == "cuda" or activation_dtype == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def compile_switches(model: nn.Module) -> list[nn.Module]:
    """Modules holding a Python-level switch the forward branches on (`compile_switch: bool`,
    e.g. late QAT's FakeQuantize). torch.compile guards on it and keeps one graph per state."""
    found = {id(m): m for m in model.modules() if isinstance(getattr(m, "compile_switch", None), bool)}
    return list(found.values())


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


@dataclass
class TrainOutcome:
    steps: int
    tokens: int
    train_seconds: float
    stopped_by: str  # "iterations" or "wallclock"
    last_train_loss: float
    execution: dict  # how the steps ran: compiled, activation dtype, attention kernel, Muon's NS


class TrainClock:
    """Training time that every rank agrees on, without a blocking exchange every step.

    `measure` syncs the device and takes the slowest rank's time (so every rank computes the
    same lr scale and stops at the same step); `estimate` extrapolates the last agreed
    reading by the agreed mean step time, which is the same on every rank without talking."""

    def __init__(self, dist: Dist):
        self.dist = dist

    def start(self) -> None:
        self._sync()
        self.started = time.perf_counter()
        self.last_step, self.last_ms = 0, 0.0

    def pause(self, seconds: float) -> None:
        self.started += seconds

    def _sync(self) -> None:
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()

    def measure(self, step: int) -> float:
        self._sync()
        elapsed = (time.perf_counter() - self.started) * 1000
        if self.dist.world_size > 1:
            agreed = torch.tensor([elapsed], dtype=torch.float64, device=self.dist.device)
            torch_dist.all_reduce(agreed, op=torch_dist.ReduceOp.MAX)
            elapsed = float(agreed)
        self.last_step, self.last_ms = step, elapsed
        return elapsed

    def estimate(self, step: int) -> float:
        return self.last_ms + (step - self.last_step) * self.last_ms / max(self.last_step, 1)

    def due(self, step: int, cap_ms: float) -> bool:
        """Measure now? Every CLOCK_SYNC_EVERY steps, and every step once the cap is that close."""
        near_cap = self.estimate(step + CLOCK_SYNC_EVERY) >= cap_ms
        return near_cap or step - self.last_step >= CLOCK_SYNC_EVERY


class Trainer:
    """Trains `model` in place. `on_log(record)` receives every log record (rank 0 only)."""

    def __init__(self, config: RunConfig, model: nn.Module, host: Host, quantizer, loader, dist: Dist,
                 validate: Callable[[nn.Module], float] | None, on_log: Callable[[dict], None],
                 progress: Callable[[int, int], None] | None = None):
        t = config.train
        if t.micro_batches % dist.world_size:
            raise ConfigError(f"{config.source}: [train] micro_batches {t.micro_batches} is not divisible by {dist.world_size} processes")
        self.config, self.model, self.host, self.dist = config, model, host, dist
        self.accum = t.micro_batches // dist.world_size
        self.validate = validate
        self.on_log = on_log
        self.progress = progress
        compile = should_compile(config, dist.device)
        self.optimizers = host.first("golf_optimizers", model=model, config=config) or build_optimizers(
            model, config.optim, compile=compile, rank=dist.rank, world_size=dist.world_size)
        self.penalties = host.collect("golf_loss_penalty", model=model, config=config, quantizer=quantizer)
        self.activation_dtype = activation_dtype_for(config, dist.device)
        self.execution = {
            "compiled": compile,
            "activation_dtype": str(self.activation_dtype).removeprefix("torch."),
            "attention": attention_kernel(dist.device, torch.bfloat16 if dist.device.type == "cuda" else self.activation_dtype),
            "muon_ns_dtype": str(ns_dtype_for(config.optim, dist.device)).removeprefix("torch."),
            "muon_sharded_over": dist.world_size,
        }
        self.clock = TrainClock(dist)
        compiled = torch.compile(model, fullgraph=True) if compile else model
        if dist.world_size > 1:
            device_ids = [dist.device.index] if dist.device.type == "cuda" else None
            compiled = nn.parallel.DistributedDataParallel(compiled, device_ids=device_ids, broadcast_buffers=False)
        self.forward = compiled
        self.loader = loader  # next_batch(global_tokens, seq_len, micro_batches_per_rank) -> (x, y); reset()

    def train_step(self, step: int, lr_scale: float) -> torch.Tensor:
        """One optimizer step; returns this rank's mean micro-batch loss, still on the device."""
        t, ddp = self.config.train, self.dist.world_size > 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.dist.device)
        for micro in range(self.accum):
            x, y = self.loader.next_batch(t.batch_tokens, t.seq_len, self.accum)
            sync = nullcontext() if (not ddp or micro == self.accum - 1) else self.forward.no_sync()
            with sync:
                with autocast_for(self.dist.device, self.activation_dtype):
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
        return total / self.accum

    def _read_loss(self, loss: torch.Tensor) -> float:
        """The mean loss over ranks as a float: a host sync (and an all-reduce), so only when logged."""
        if self.dist.world_size > 1:
            torch_dist.all_reduce(loss, op=torch_dist.ReduceOp.AVG)
        return float(loss)

    def warm_up(self) -> None:
        """Run warm-up steps (they trigger compilation), then restore model, optimizers and data.

        The last warm-up step runs with every compile switch flipped (late QAT on), so the graph
        of each state is compiled here and switching mid-run recompiles nothing."""
        n = self.config.train.warmup_steps
        if n == 0:
            return
        model_state = copy.deepcopy(self.model.state_dict())
        optim_states = [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]
        switches = compile_switches(self.model)
        for step in range(n):
            flip = n > 1 and step == n - 1
            for m in switches if flip else ():
                m.compile_switch = not m.compile_switch
            self.train_step(step, 1.0)
            self.on_log({"event": "warmup", "step": step + 1, "of": n})
        for m in switches if n > 1 else ():
            m.compile_switch = not m.compile_switch
        self.model.load_state_dict(model_state)
        for opt, state in zip(self.optimizers, optim_states):
            opt.load_state_dict(state)
        self.loader.reset()

    def run(self) -> TrainOutcome:
        t = self.config.train
        self.model.train()
        self.warm_up()
        cap_ms = t.max_wallclock_seconds * 1000 if t.max_wallclock_seconds > 0 else float("inf")
        elapsed_ms, step, loss, stopped_by = 0.0, 0, None, "iterations"
        self.clock.start()
        while step < t.iterations:
            scale = lr_scale_at(self.config, step, elapsed_ms)
            loss = self.train_step(step, scale)
            step += 1
            self.host.call("golf_step_end", model=self.model, step=step, lr_scale=scale)
            logging = step % max(t.log_every, 1) == 0 or step == 1 or step == t.iterations
            validating = bool(self.validate and t.val_every and step % t.val_every == 0 and step < t.iterations)
            exact = logging or validating or self.clock.due(step, cap_ms)
            elapsed_ms = self.clock.measure(step) if exact else self.clock.estimate(step)
            if self.progress:
                self.progress(step, t.iterations)
            if logging:
                self.on_log({"event": "train", "step": step, "of": t.iterations, "train_loss": self._read_loss(loss.clone()),
                             "train_time_ms": elapsed_ms, "step_avg_ms": elapsed_ms / step, "lr_scale": scale})
            if elapsed_ms >= cap_ms:
                stopped_by = "wallclock"
                break
            if validating:
                paused = time.perf_counter()
                val_loss = self.validate(self.model)
                self.model.train()
                self.clock.pause(time.perf_counter() - paused)  # the clock does not run during validation
                self.on_log({"event": "val", "step": step, "of": t.iterations, "val_loss": val_loss,
                             "train_time_ms": elapsed_ms, "step_avg_ms": elapsed_ms / step})
        elapsed_ms = self.clock.measure(step)
        last_loss = self._read_loss(loss) if loss is not None else float("nan")
        self.host.call("golf_train_end", model=self.model)
        tokens = step * t.batch_tokens
        return TrainOutcome(step, tokens, elapsed_ms / 1000, stopped_by, last_loss, dict(self.execution))
