"""`golf bench`: real training steps of a recipe's model on synthetic tokens, in the two regimes
a run spends its time in, and side by side against another recipe or plugin set.

Regimes: "full" (lr scale 1, every training-time switch in its first state: late QAT off,
CROWN-Q off, the shortest progressive context), "warmdown" (lr scale 0.1, every switch in its
last state: late QAT and CROWN-Q both run, the longest context), and one regime per other
combination of switch states a run can reach at lr scale 1, named by the states that differ from the first
(e.g. "seq_len=2048"). Each is timed separately after the trainer's own compile warm-up
(which compiled every combination); step time is the median of the timed steps (robust to a
busy machine). On CPU the process's CPU time per step is reported too: on a shared machine the
wall time mostly measures the other processes, the CPU time the step's own work (run with
OMP_NUM_THREADS=1 so idle threads spinning are not counted).

FLOPs per token, training (forward + backward = 3x forward):
  PaLM convention: 6 x (matmul parameters a token passes through, repeated layers counted per
  use, plus the output head) + 12 x virtual layers x H x D x T (attention scores and values,
  every position attending to all T);
  causal-adjusted: the same with the attention term halved (a causal token attends to T/2
  positions on average), which is what a causal kernel computes.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

from golfcore.config import RunConfig
from golfcore.plugins import PluginInfo
from golfcore.run import Session
from golfcore.switch import reachable
from golfcore.train import Trainer, should_compile

# bf16 dense peak TFLOP/s by device-name fragment (vendor datasheets).
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}

FULL, WARMDOWN = 1.0, 0.1  # lr scale of the "full" and "warmdown" regimes


class SyntheticLoader:
    """Uniform random tokens with the trainer's batch geometry; no data needed."""

    def __init__(self, vocab_size: int, device: torch.device, seed: int, world_size: int):
        self.vocab_size, self.device, self.seed, self.world_size = vocab_size, device, seed, world_size
        self.reset()

    def reset(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def next_batch(self, global_tokens: int, seq_len: int, micro_batches_per_rank: int):
        rows = global_tokens // (micro_batches_per_rank * self.world_size * seq_len)
        tokens = torch.randint(0, self.vocab_size, (rows, seq_len + 1), generator=self.generator)
        if self.device.type == "cuda":
            tokens = tokens.pin_memory()
        tokens = tokens.to(self.device, non_blocking=True)
        return tokens[:, :-1], tokens[:, 1:]


def flops_per_token(model, config: RunConfig, causal: bool = False, seq_len: int | None = None) -> float:
    """Training FLOPs per token at `seq_len` (default train.seq_len; module docstring); `causal` halves the attention term."""
    m = config.model
    per_layer = {name: p.numel() for name, p in model.layers[0].named_parameters()}
    matmul = sum(per_layer.values()) * len(model.v2p) + m.vocab_size * m.model_dim
    attention = 12 * len(model.v2p) * m.num_heads * m.head_dim * (seq_len or config.train.seq_len)
    return 6.0 * matmul + (attention / 2 if causal else attention)


def detect_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class _FlashShapedAttention(torch.autograd.Function):
    """SDPA as FlashAttention runs it on a GPU, for counting only: it keeps q, k, v, the output
    and the fp32 log-sum-exp [B,H,T] for backward, never the [T,T] scores that SDPA's math
    fallback (the only one on the meta device) would keep."""

    @staticmethod
    def forward(ctx, q, k, v):  # [B,H,T,D] each (k, v: G heads)
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_shaped_sdpa(q, k, v, *args, **kwargs):
    return _FlashShapedAttention.apply(q, k, v)


def dry_build(config: RunConfig, available: dict[str, PluginInfo], world_size: int = 8) -> dict:
    """The recipe's model built on the meta device (nothing allocated): its parameters, FLOPs per
    token and projected peak memory per rank at the recipe's micro-batch on `world_size` GPUs, with
    every compile switch on (docs/performance.md, "Dry builds": what is counted and how)."""
    from unittest import mock

    from golfcore.assemble import build_model, check_config
    from golfcore.params import param_specs
    from golfcore.plugins import Host
    from golfcore.train import micro_batches_per_rank

    host = Host(config, available)
    check_config(config, host)
    with torch.device("meta"):
        model = build_model(config, host, host.first("golf_quantizer", config=config))
    model.activation_dtype = torch.bfloat16
    for module in model.modules():  # every switch on (recurrence looping, QAT on): the largest state
        if isinstance(getattr(module, "compile_switch", None), bool):
            module.compile_switch = True
    accum, _ = micro_batches_per_rank(config, world_size)
    t = config.train
    rows = t.batch_tokens // (world_size * accum * t.seq_len)
    tokens = torch.zeros(rows, t.seq_len, dtype=torch.long, device="meta")
    weights_storage = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}  # storage -> bytes: views of one tensor (a transpose, a slice) count once

    def keep(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage._cdata not in weights_storage:  # a parameter or a view of one: counted as weights
            saved[storage._cdata] = storage.nbytes()
        return x

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _flash_shaped_sdpa), \
            torch.autograd.graph.saved_tensors_hooks(keep, lambda x: x), torch.autocast("cpu", dtype=torch.bfloat16):
        model(tokens, tokens)
    params = sum(p.numel() for p in model.parameters())
    shapes = dict(model.named_parameters())
    matrix = sum(shapes[name].numel() for name, spec in param_specs(model).items() if spec.group == "matrix")
    weights = grads = 4 * params  # fp32 master weights and gradients
    optimizer = 4 * matrix + 8 * (params - matrix)  # Muon: one momentum buffer; AdamW: two moments
    activations = sum(saved.values())
    gib = 2.0**30
    return {
        "params": params,
        "model_tflops_per_token": flops_per_token(model, config) / 1e12,
        "model_tflops_per_token_causal": flops_per_token(model, config, causal=True) / 1e12,
        "world_size": world_size,
        "micro_batch": f"{rows} x {t.seq_len} tokens, {accum} per step per rank",
        "weights_gib": weights / gib,
        "grads_gib": grads / gib,
        "optimizer_gib": optimizer / gib,
        "activations_gib": activations / gib,
        "peak_memory_gib_estimate": (weights + grads + optimizer + activations) / gib,
    }


class Bench:
    """One recipe's model and trainer, warmed up, stepped on demand in a given regime."""

    def __init__(self, config: RunConfig, available: dict[str, PluginInfo], warmup: int):
        self.session = Session(config, available, build_data=False)
        self.config, self.dist = config, self.session.dist
        config.train.warmup_steps = warmup
        config.train.max_wallclock_seconds = 0
        config.train.val_every = 0
        self.model = self.session.build_model()
        loader = SyntheticLoader(config.model.vocab_size, self.dist.device, config.run.seed + self.dist.rank, self.dist.world_size)
        self.trainer = Trainer(config, self.model, self.session.host, self.session.quantizer, loader, self.dist, None, lambda r: None)
        self.model.train()
        self.trainer.warm_up()
        self.regimes = regimes(self.trainer.switches)
        self.seq_lens: dict[str, int] = {}
        self.times: dict[str, list[float]] = {regime: [] for regime in self.regimes}
        self.cpu_times: dict[str, list[float]] = {regime: [] for regime in self.regimes}  # this process's CPU seconds

    def timed_step(self, regime: str) -> None:
        lr_scale, states = self.regimes[regime]
        for switch, state in zip(self.trainer.switches, states):
            switch.set(state)
        self.seq_lens[regime] = self.trainer.shape.seq_len
        sync = torch.cuda.synchronize if self.dist.device.type == "cuda" else (lambda: None)
        sync()
        started, cpu_started = time.perf_counter(), time.process_time()
        self.trainer.train_step(len(self.times[regime]), lr_scale)
        sync()
        self.times[regime].append(time.perf_counter() - started)
        self.cpu_times[regime].append(time.process_time() - cpu_started)

    def figures(self, peak_tflops: float | None) -> dict:
        t, world = self.config.train, self.dist.world_size
        fpt, fpt_causal = flops_per_token(self.model, self.config), flops_per_token(self.model, self.config, causal=True)
        peak = peak_tflops or detect_peak_tflops(self.dist.device)
        figures = {
            "device": str(self.dist.device) + (f" ({torch.cuda.get_device_name(self.dist.device)})" if self.dist.device.type == "cuda" else ""),
            "compiled": should_compile(self.config, self.dist.device),
            **self.trainer.execution,
            "params": sum(p.numel() for p in self.model.parameters()),
            "batch_tokens": t.batch_tokens,
            "model_tflops_per_token": fpt / 1e12,
            "model_tflops_per_token_causal": fpt_causal / 1e12,
        }
        for regime, times in self.times.items():
            step_s = statistics.median(times)
            tokens_per_s = t.batch_tokens / step_s
            seq_len = self.seq_lens[regime]
            fpt = flops_per_token(self.model, self.config, seq_len=seq_len)
            fpt_causal = flops_per_token(self.model, self.config, causal=True, seq_len=seq_len)
            figures[f"{regime}.steps_timed"] = len(times)
            figures[f"{regime}.seq_len"] = seq_len
            figures[f"{regime}.step_ms"] = step_s * 1000
            if self.dist.device.type == "cpu":
                figures[f"{regime}.cpu_step_ms"] = statistics.median(self.cpu_times[regime]) * 1000
            figures[f"{regime}.tokens_per_s"] = tokens_per_s
            figures[f"{regime}.achieved_tflops"] = fpt * tokens_per_s / 1e12 / world
            for name, f in (("mfu", fpt), ("mfu_causal", fpt_causal)):
                figures[f"{regime}.{name}"] = f * tokens_per_s / world / (peak * 1e12) if peak else "n/a (give --peak-tflops)"
        if self.dist.device.type == "cuda":
            figures["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.dist.device) / 2**30
        else:
            figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return figures


def regimes(switches: list) -> dict[str, tuple[float, tuple]]:
    """Regime name -> (lr scale, a state per switch): "full", one per other reachable combination, "warmdown"."""
    first, last = tuple(s.states[0] for s in switches), tuple(s.states[-1] for s in switches)
    out = {"full": (FULL, first)}
    for states in reachable(switches):
        if states not in (first, last):
            out[",".join(f"{s.name}={x}" for s, x, x0 in zip(switches, states, first) if x != x0)] = (FULL, states)
    out["warmdown"] = (WARMDOWN, last)
    return out


def bench(config: RunConfig, available: dict[str, PluginInfo], steps: int = 5, warmup: int = 2,
          peak_tflops: float | None = None) -> dict:
    """Figures for `steps` timed steps in each regime (full lr scale, then warmdown)."""
    b = Bench(config, available, warmup)
    if b.dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(b.dist.device)
    for regime in b.regimes:
        for _ in range(steps):
            b.timed_step(regime)
    return b.figures(peak_tflops)


def profile_step(config: RunConfig, available: dict[str, PluginInfo], warmup: int = 2, rows: int = 15) -> str:
    """The top operators of one training step (full lr scale, after the warm-up) by their own
    device time (CPU time on the CPU), as torch.profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    b = Bench(config, available, warmup)
    b.timed_step("full")  # a step outside the profile: allocator and caches settle
    cuda = b.dist.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        b.timed_step("full")
    return prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows)


def compare(first: RunConfig, second: RunConfig, available: dict[str, PluginInfo], steps: int = 5, warmup: int = 2,
            peak_tflops: float | None = None) -> dict:
    """Two recipes (or plugin sets) stepped alternately in one process, each regime separately, the
    order swapped every round so neither always runs on a warmer cache; returns both figure sets and
    second/first step-time ratios."""
    a, b = Bench(first, available, warmup), Bench(second, available, warmup)
    for regime in list(a.regimes) + [r for r in b.regimes if r not in a.regimes]:
        for i in range(steps):
            for x in ((a, b) if i % 2 == 0 else (b, a)):
                if regime in x.regimes:
                    x.timed_step(regime)
    fa, fb = a.figures(peak_tflops), b.figures(peak_tflops)
    shared = [r for r in a.regimes if r in b.regimes]  # "full" and "warmdown" always
    ratios = {f"{regime}.step_time_ratio": fb[f"{regime}.step_ms"] / fa[f"{regime}.step_ms"] for regime in shared}
    if a.dist.device.type == "cpu":
        ratios |= {f"{regime}.cpu_time_ratio": fb[f"{regime}.cpu_step_ms"] / fa[f"{regime}.cpu_step_ms"] for regime in shared}
    return {"first": fa, "second": fb, "ratios": ratios}
