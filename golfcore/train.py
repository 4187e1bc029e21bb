"""The training loop: global batch by gradient accumulation, wallclock cap, warmdown by wallclock,
compile warm-up steps that are rolled back, periodic validation with the clock paused.

Mirrors the challenge's train_gpt.py so step counts and schedules compare with its logs.

Runs that survive (docs/architecture.md, "Long runs"): a non-finite loss or gradient norm is
flagged on the device every step and read with the logged loss, so a diverged run stops within
one logging interval without a host sync per step. Checkpoints (`train.checkpoint_every`) hold
the whole training state; SIGTERM/SIGINT stop every rank at the same step boundary (the stop
flag travels with the all-reduced clock), write a checkpoint and exit with code 75.

The host waits for the device only when it must: the loss is read on logging steps, the clock
is measured (and agreed across ranks) every CLOCK_SYNC_EVERY steps, on logging and validation
steps and on every step near the cap, and estimated from the agreed step time in between.
Meanwhile the host prepares the next micro-batch (pinned memory, non-blocking copy) while the
device still works on the previous one.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as torch_dist
from torch import nn

from .config import RunConfig
from .attention import attention_kernel
from .checkpoint import Checkpoints, load_model_state, model_state, rng_state, set_rng_state
from .errors import ConfigError, DivergedError, TrainingInterrupted
from .optim import (Orthogonalization, apply_lr_scale, build_optimizers, clip_grad_norm, muon_momentum_at, ns_dtype_for,
                    set_muon_momentum)
from .plugins import Host
from .switch import BatchShape, TrainingSwitch, module_switches, reachable

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


def training_fraction(config: RunConfig, step: int, elapsed_ms: float) -> float:
    """How far training is before step `step`, in [0, 1]: training time over the wallclock
    cap when there is one, else steps over `iterations` (as the records' `training_frac`)."""
    t = config.train
    if t.max_wallclock_seconds > 0:
        return min(elapsed_ms / (t.max_wallclock_seconds * 1000), 1.0)
    return min(step / t.iterations, 1.0)


def lr_scale_at(config: RunConfig, step: int, elapsed_ms: float) -> float:
    """The warmdown, floored at `min_lr_scale` (PR #1787's MIN_LR). With `warmdown_frac`: linear
    to 0 over that last fraction of training (`training_fraction`; PR #1855). Else the
    challenge's: linear to 0 over the last warmdown_iters steps, measured in wallclock
    (warmdown_iters x the running step time) when a wallclock cap is set."""
    t = config.train
    if t.warmdown_frac > 0:
        scale = min((1 - training_fraction(config, step, elapsed_ms)) / t.warmdown_frac, 1.0)
    elif t.warmdown_iters <= 0:
        return 1.0
    elif t.max_wallclock_seconds <= 0:
        start = max(t.iterations - t.warmdown_iters, 0)
        scale = max((t.iterations - step) / t.warmdown_iters, 0.0) if step >= start else 1.0
    else:
        step_ms = elapsed_ms / max(step, 1)
        warmdown_ms = t.warmdown_iters * step_ms
        remaining_ms = max(t.max_wallclock_seconds * 1000 - elapsed_ms, 0.0)
        scale = remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0
    return max(scale, t.min_lr_scale)


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


SPIKE_WINDOW = 10  # logged losses a spike is measured against
NO_BAD_STEP = 2**62  # first_bad_step while every step was finite (the all-reduce takes the MIN)


class StopSignals:
    """While active, SIGTERM and SIGINT only raise a flag, read at step boundaries (and between
    warm-up steps and scored batches: `raise_if_received`); a second signal takes its default
    action and ends the process at once, even inside a long step. Entered while one is active
    (the trainer inside a run), it is that one. Handlers can only be installed from the main
    thread; elsewhere signals keep their default behaviour."""

    active: StopSignals | None = None

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if StopSignals.active is not None:
            return StopSignals.active
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
            StopSignals.active = self
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        for sig in self._previous:
            signal.signal(sig, signal.SIG_DFL)
        os.write(2, f"\n{self.received}: stopping at the next step boundary; a second signal stops at once\n".encode())

    @classmethod
    def raise_if_received(cls, where: str) -> None:
        """TrainingInterrupted (exit 75) when the active handlers saw a signal."""
        if cls.active is not None and cls.active.received:
            raise TrainingInterrupted(f"interrupted by {cls.active.received} {where}")

    def __exit__(self, *exc) -> None:
        if StopSignals.active is self:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            StopSignals.active = None


@dataclass
class TrainOutcome:
    steps: int
    tokens: int
    train_seconds: float
    stopped_by: str  # "iterations" or "wallclock"
    last_train_loss: float
    execution: dict  # how the steps ran: compiled, activation dtype, attention kernel, Muon's NS
    resumed_from: int = 0  # the checkpoint's step, 0 for a run trained from the start


class TrainClock:
    """Training time that every rank agrees on, without a blocking exchange every step.

    `measure` syncs the device and takes the slowest rank's time (so every rank computes the
    same lr scale and stops at the same step); `estimate` extrapolates the last agreed
    reading by the agreed mean step time, which is the same on every rank without talking."""

    def __init__(self, dist: Dist):
        self.dist = dist

    def start(self, step: int = 0, elapsed_ms: float = 0.0) -> None:
        """Start the clock at `step` with `elapsed_ms` already trained (a resumed run continues its clock)."""
        self._sync()
        self.started = time.perf_counter() - elapsed_ms / 1000
        self.last_step, self.last_ms = step, elapsed_ms

    def pause(self, seconds: float) -> None:
        self.started += seconds

    def _sync(self) -> None:
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()

    def measure(self, step: int, stop_requested: bool = False) -> tuple[float, bool]:
        """(training ms so far, whether to stop), the same on every rank: the slowest rank's time,
        and a stop signal seen by any rank (it travels with the clock, so all ranks stop together)."""
        self._sync()
        elapsed, stop = (time.perf_counter() - self.started) * 1000, stop_requested
        if self.dist.world_size > 1:
            agreed = torch.tensor([elapsed, float(stop_requested)], dtype=torch.float64, device=self.dist.device)
            torch_dist.all_reduce(agreed, op=torch_dist.ReduceOp.MAX)
            elapsed, flag = agreed.tolist()
            stop = flag > 0
        self.last_step, self.last_ms = step, elapsed
        return elapsed, stop

    def estimate(self, step: int) -> float:
        return self.last_ms + (step - self.last_step) * self.last_ms / max(self.last_step, 1)

    def due(self, step: int, cap_ms: float) -> bool:
        """Measure now? Every CLOCK_SYNC_EVERY steps, and every step once the cap is that close."""
        near_cap = self.estimate(step + CLOCK_SYNC_EVERY) >= cap_ms
        return near_cap or step - self.last_step >= CLOCK_SYNC_EVERY


class Trainer:
    """Trains `model` in place. `on_log(record)` receives every log record (rank 0 only).

    With `train.checkpoint_every` on, the training state is saved every interval and when a stop
    signal arrives, into `checkpoints` (rank 0 writes; the others may pass None)."""

    def __init__(self, config: RunConfig, model: nn.Module, host: Host, quantizer, loader, dist: Dist,
                 validate: Callable[[nn.Module], float] | None, on_log: Callable[[dict], None],
                 progress: Callable[[int, int], None] | None = None, checkpoints: Checkpoints | None = None):
        self.config, self.model, self.host, self.dist = config, model, host, dist
        self.accum, note = micro_batches_per_rank(config, dist.world_size)
        if note:
            on_log({"event": "note", "text": note})
        self.validate = validate
        self.on_log = on_log
        self.progress = progress
        self.checkpoints = checkpoints
        compile = should_compile(config, dist.device)
        orthogonalization = Orthogonalization()
        self.optimizers = host.first("golf_optimizers", model=model, config=config)
        if not self.optimizers:
            host.call("golf_orthogonalization", config=config, orthogonalization=orthogonalization)
            self.optimizers = build_optimizers(model, config.optim, compile=compile, rank=dist.rank, world_size=dist.world_size,
                                               orthogonalization=orthogonalization)
        self.penalties = host.collect("golf_loss_penalty", model=model, config=config, quantizer=quantizer)
        self.activation_dtype = activation_dtype_for(config, dist.device)
        self.execution = {
            "compiled": compile,
            "activation_dtype": str(self.activation_dtype).removeprefix("torch."),
            "attention": attention_kernel(dist.device, torch.bfloat16 if dist.device.type == "cuda" else self.activation_dtype),
            "muon_ns_dtype": str(ns_dtype_for(config.optim, dist.device)).removeprefix("torch."),
            "muon_sharded_over": dist.world_size,
            "muon_normalize": orthogonalization.normalize,
            "muon_ns_coefficient_triples": len(orthogonalization.coefficients),
        }
        self.shape = BatchShape(config.train.seq_len)
        self.switches = self._collect_switches()
        self.clock = TrainClock(dist)
        compiled = torch.compile(model, fullgraph=True) if compile else model
        if dist.world_size > 1:
            device_ids = [dist.device.index] if dist.device.type == "cuda" else None
            compiled = nn.parallel.DistributedDataParallel(compiled, device_ids=device_ids, broadcast_buffers=False)
        self.forward = compiled
        self.loader = loader  # next_batch(global_tokens, seq_len, micro_batches_per_rank) -> (x, y); reset(); state()/restore() to checkpoint
        self.first_bad_step = torch.full((), NO_BAD_STEP, dtype=torch.int64, device=dist.device)  # first non-finite step on this rank
        self.logged_losses: deque[float] = deque(maxlen=SPIKE_WINDOW)

    def _collect_switches(self) -> list[TrainingSwitch]:
        """The plugins' switches in their first state, then the model's other compile_switch modules."""
        declared = [s for answer in self.host.collect("golf_switches", model=self.model, config=self.config, shape=self.shape)
                    for s in (answer if isinstance(answer, list) else [answer])]
        switches = declared + module_switches(self.model, declared)
        names = [s.name for s in switches]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.config.source}: two training-time switches share a name: {names}")
        for s in declared:
            s.set(s.states[0])
        if should_compile(self.config, self.dist.device):  # one graph per combination of states, none evicted
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(reachable(switches)))
        return switches

    def follow_schedules(self, step: int, fraction: float) -> None:
        """Move every switch with `at` fractions to the state its schedule gives (before `step`)."""
        for s in self.switches:
            if s.at and s.scheduled(fraction) != s.state:
                s.set(s.scheduled(fraction))
                self.on_log({"event": "note", "text": f"step:{step} switch {s.name}={s.state} at training fraction {fraction:.3f}",
                             "switch": s.name, "state": s.state, "step": step})

    def train_step(self, step: int, lr_scale: float) -> torch.Tensor:
        """One optimizer step; returns this rank's mean micro-batch loss, still on the device."""
        t, ddp = self.config.train, self.dist.world_size > 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.dist.device)
        for micro in range(self.accum):
            x, y = self.loader.next_batch(t.batch_tokens, self.shape.seq_len, self.accum)
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
        grad_norm = clip_grad_norm(self.model, self.config.optim.grad_clip_norm)
        for opt in self.optimizers:
            opt.step()
        # on the device, no sync: remember the first step whose loss or gradient norm is not finite
        mean_loss = total / self.accum
        finite = torch.isfinite(mean_loss) & torch.isfinite(grad_norm)
        self.first_bad_step = torch.where(~finite & (self.first_bad_step == NO_BAD_STEP), step + 1, self.first_bad_step)
        return mean_loss

    def _check_health(self, step: int, loss: float | None = None) -> None:
        """Raise DivergedError if any step so far was non-finite on any rank, or `loss` (a logged,
        all-reduced loss) spiked. Called at the same steps on every rank, so all raise together."""
        first_bad = self.first_bad_step.clone()
        if self.dist.world_size > 1:
            torch_dist.all_reduce(first_bad, op=torch_dist.ReduceOp.MIN)
        bad = int(first_bad)
        if bad != NO_BAD_STEP:
            raise DivergedError(f"training diverged at step {bad}: the train loss or gradient norm is not finite "
                                f"(seen at step {step})", bad)
        factor = self.config.train.max_loss_spike
        if loss is None or not factor:
            return
        if len(self.logged_losses) == SPIKE_WINDOW:
            mean = sum(self.logged_losses) / SPIKE_WINDOW
            if loss > factor * mean:
                raise DivergedError(f"training diverged at step {step}: train loss {loss:.4f} is {loss / mean:.1f}x the mean "
                                    f"of the {SPIKE_WINDOW} logged before it (train.max_loss_spike = {factor:g})", step)
        self.logged_losses.append(loss)

    def _read_loss(self, loss: torch.Tensor) -> float:
        """The mean loss over ranks as a float: a host sync (and an all-reduce), so only when logged."""
        if self.dist.world_size > 1:
            torch_dist.all_reduce(loss, op=torch_dist.ReduceOp.AVG)
        return float(loss)

    def warm_up(self) -> None:
        """Run warm-up steps (they trigger compilation), then restore model, optimizers, data and switches.

        `warmup_steps` steps run in the switches' current states, then one step in each other
        combination of states the run can reach (late QAT on, a longer sequence, recurrence on),
        so every graph is compiled here and switching mid-run recompiles nothing."""
        n = self.config.train.warmup_steps
        if n == 0:
            return
        model_state_before = copy.deepcopy(self.model.state_dict())
        optim_states = [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]
        start = tuple(s.state for s in self.switches)
        others = [c for c in reachable(self.switches) if c != start]
        for step, states in enumerate([start] * n + others):
            for s, state in zip(self.switches, states):
                s.set(state)
            self.train_step(step, 1.0)
            self.on_log({"event": "warmup", "step": step + 1, "of": n + len(others)})
            StopSignals.raise_if_received("during the compile warm-up, before training started")
        for s, state in zip(self.switches, start):
            s.set(state)
        self.model.load_state_dict(model_state_before)
        for opt, state in zip(self.optimizers, optim_states):
            opt.load_state_dict(state)
        self.loader.reset()
        self.first_bad_step.fill_(NO_BAD_STEP)

    def state_dict(self, step: int, elapsed_ms: float) -> dict:
        """Everything the loop needs to continue bit-identically after `step` steps."""
        return {
            "step": step,
            "elapsed_ms": elapsed_ms,  # the wallclock position of the cap and warmdown
            "model": model_state(self.model),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "loader": list(self.loader.state()),
            "rng": rng_state(),
            "plugins": {name: plugin.state_dict() for name, plugin in self.host.plugins.items()},
            "switches": {s.name: s.state for s in self.switches},
            "logged_losses": list(self.logged_losses),
        }

    def load_state_dict(self, state: dict) -> tuple[int, float]:
        """Restore what `state_dict` saved; returns (step, elapsed_ms)."""
        load_model_state(self.model, state["model"])
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)
        self.loader.restore(tuple(state["loader"]))
        set_rng_state(state["rng"])
        for name, plugin in self.host.plugins.items():
            plugin.load_state_dict(state["plugins"].get(name, {}))
        for s in self.switches:
            s.set(state["switches"][s.name])
        self.logged_losses.extend(state["logged_losses"])
        return state["step"], state["elapsed_ms"]

    def _save(self, step: int, elapsed_ms: float) -> None:
        if self.dist.is_main and self.checkpoints is not None:
            path = self.checkpoints.save(self.state_dict(step, elapsed_ms))
            self.on_log({"event": "checkpoint", "step": step, "of": self.config.train.iterations, "path": str(path)})
        self.dist.barrier()  # no rank exits (and makes torchrun kill the writer) before the checkpoint is whole

    def run(self, resume: dict | None = None) -> TrainOutcome:
        """Train from the start, or from `resume` (a checkpoint's state) to the same end."""
        t = self.config.train
        every_steps, every_seconds = t.checkpoint_interval
        self.model.train()
        self.warm_up()
        cap_ms = t.max_wallclock_seconds * 1000 if t.max_wallclock_seconds > 0 else float("inf")
        elapsed_ms, step, loss, stopped_by = 0.0, 0, None, "iterations"
        if resume is not None:
            step, elapsed_ms = self.load_state_dict(resume)
        resumed_from, last_checkpoint_ms = step, elapsed_ms
        self.clock.start(step, elapsed_ms)
        with StopSignals() as signals:
            while step < t.iterations:
                self.follow_schedules(step, training_fraction(self.config, step, elapsed_ms))
                scale = lr_scale_at(self.config, step, elapsed_ms)
                loss = self.train_step(step, scale)
                step += 1
                self.host.call("golf_step_end", model=self.model, step=step, lr_scale=scale)
                logging = step % max(t.log_every, 1) == 0 or step == 1 or step == t.iterations
                validating = bool(self.validate and t.val_every and step % t.val_every == 0 and step < t.iterations)
                checkpointing = bool(every_steps and step % every_steps == 0 and step < t.iterations)
                # alone, a signal is acted on at once; with several ranks, at the next agreed reading
                signalled = signals.received is not None and self.dist.world_size == 1
                stop = False
                if logging or validating or checkpointing or signalled or every_seconds or self.clock.due(step, cap_ms):
                    elapsed_ms, stop = self.clock.measure(step, signals.received is not None)
                else:
                    elapsed_ms = self.clock.estimate(step)
                if self.progress:
                    self.progress(step, t.iterations)
                if logging:
                    logged = self._read_loss(loss.clone())
                    self._check_health(step, logged)
                    self.on_log({"event": "train", "step": step, "of": t.iterations, "train_loss": logged,
                                 "train_time_ms": elapsed_ms, "step_avg_ms": elapsed_ms / step, "lr_scale": scale})
                if stop:
                    self._check_health(step)
                    if t.checkpoint_every:
                        self._save(step, elapsed_ms)
                    where = f"checkpoint saved at step {step}" if t.checkpoint_every else "no checkpoint (train.checkpoint_every = 0)"
                    raise TrainingInterrupted(f"training interrupted by {signals.received or 'a signal on another rank'} "
                                              f"after step {step}: {where}")
                if elapsed_ms >= cap_ms:
                    stopped_by = "wallclock"
                    break
                if checkpointing or (every_seconds and step < t.iterations and elapsed_ms - last_checkpoint_ms >= every_seconds * 1000):
                    self._check_health(step)  # never checkpoint a diverged state
                    self._save(step, elapsed_ms)
                    last_checkpoint_ms = elapsed_ms
                if validating:
                    self._check_health(step)  # a NaN model would fail the eval's own checks with a less useful error
                    paused = time.perf_counter()
                    val_loss = self.validate(self.model)
                    self.model.train()
                    self.clock.pause(time.perf_counter() - paused)  # the clock does not run during validation
                    self.on_log({"event": "val", "step": step, "of": t.iterations, "val_loss": val_loss,
                                 "train_time_ms": elapsed_ms, "step_avg_ms": elapsed_ms / step})
        elapsed_ms, _ = self.clock.measure(step)
        self._check_health(step)  # a diverged model is never exported
        last_loss = self._read_loss(loss) if loss is not None else float("nan")
        self.host.call("golf_train_end", model=self.model)
        tokens = step * t.batch_tokens
        return TrainOutcome(step, tokens, elapsed_ms / 1000, stopped_by, last_loss, dict(self.execution), resumed_from)
