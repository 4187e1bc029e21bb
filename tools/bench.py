"""`golf bench`: a few real training steps of a recipe's model on synthetic tokens.

Figures: step time, tokens/s, model FLOPs per token, MFU against a peak, peak memory.
FLOPs follow the PaLM convention for training: 6 x (matmul parameters a token passes
through, counting repeated layers once per use, plus the output head) + 12 x layers x
H x D x T for attention scores and values (no causal discount).
"""

from __future__ import annotations

import resource
import time

import torch

from golfcore.config import RunConfig
from golfcore.plugins import PluginInfo
from golfcore.run import Session
from golfcore.train import Trainer, should_compile

# bf16 dense peak TFLOP/s by device-name fragment (vendor datasheets).
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


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
        tokens = tokens.to(self.device)
        return tokens[:, :-1], tokens[:, 1:]


def flops_per_token(model, config: RunConfig) -> float:
    m = config.model
    per_layer = {name: p.numel() for name, p in model.layers[0].named_parameters()}
    matmul = sum(per_layer.values()) * len(model.v2p) + m.vocab_size * m.model_dim
    attention = 12 * len(model.v2p) * m.num_heads * m.head_dim * config.train.seq_len
    return 6.0 * matmul + attention


def detect_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def bench(config: RunConfig, available: dict[str, PluginInfo], steps: int = 5, warmup: int = 2,
          peak_tflops: float | None = None) -> dict:
    session = Session(config, available, build_data=False)
    dist = session.dist
    config.train.warmup_steps = warmup
    config.train.iterations = steps
    config.train.max_wallclock_seconds = 0
    config.train.val_every = 0
    model = session.build_model()
    loader = SyntheticLoader(config.model.vocab_size, dist.device, config.run.seed + dist.rank, dist.world_size)
    records: list[dict] = []
    trainer = Trainer(config, model, session.host, session.quantizer, loader, dist, None, records.append)
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)
    started = time.perf_counter()
    outcome = trainer.run()
    wall = time.perf_counter() - started
    step_s = outcome.train_seconds / outcome.steps
    tokens_per_s = config.train.batch_tokens / step_s
    fpt = flops_per_token(model, config)
    peak = peak_tflops or detect_peak_tflops(dist.device)
    figures = {
        "device": str(dist.device) + (f" ({torch.cuda.get_device_name(dist.device)})" if dist.device.type == "cuda" else ""),
        "compiled": should_compile(config, dist.device),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_tokens": config.train.batch_tokens,
        "steps_timed": outcome.steps,
        "step_ms": step_s * 1000,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_token": fpt / 1e12,
        "achieved_tflops": fpt * tokens_per_s / 1e12 / dist.world_size,
        "mfu": (fpt * tokens_per_s / dist.world_size / (peak * 1e12)) if peak else "n/a (give --peak-tflops)",
        "wall_s_incl_warmup": wall,
    }
    if dist.device.type == "cuda":
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2**30
    else:
        figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return figures
