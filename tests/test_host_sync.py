"""The training loop reads nothing from the device between logging and clock steps.

On a GPU every device-to-host read (`float(t)`, `.item()`, `.tolist()`, `bool(t)`, `.cpu()`)
waits for the queued kernels, so one read per step serialises the host and the device. The
CPU has no such stall, but the reads are the same Python calls: a TorchFunctionMode counts them
here, step by step, with every training plugin of the shipped recipes enabled.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import golfcore as golf
from golfcore.assemble import build_model, check_config
from golfcore.plugins import Host, discover
from golfcore.recipe import load_recipe
from golfcore.train import Trainer

from .helpers import CPU, host_with, synthetic_loader

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
READS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"})
TINY = ["model.num_layers=4", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2",
        "train.seq_len=32", "train.batch_tokens=256", "train.micro_batches=2", "train.iterations=10",
        "train.log_every=5", "train.warmup_steps=2", "train.val_every=0", "train.warmdown_iters=4",
        "train.max_wallclock_seconds=0", "train.compile=\"off\""]


class DeviceReads(TorchFunctionMode):
    """Counts device-to-host reads, keyed by what the loop was doing when they happened.

    Not counted: the CPU AdamW's own step counters, which torch keeps on the host and reads with
    `.item()`; on CUDA golf builds the fused AdamW (golfcore/optim.py), whose counters live on
    the device and are never read.
    """

    def __init__(self):
        super().__init__()
        self.phase = "setup"
        self.reads: dict[str, list[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS and not _adam_step_counter():
            self.reads.setdefault(self.phase, []).append(name)
        return func(*args, **(kwargs or {}))


def _adam_step_counter() -> bool:
    frame = sys._getframe(2)
    for _ in range(4):  # the read's caller, past torch's override dispatch
        if frame.f_code.co_filename.endswith(os.path.join("torch", "optim", "adam.py")):
            return True
        frame = frame.f_back
    return False


def reads_per_phase(config, host) -> dict[str, list[str]]:
    """Train `config` on synthetic tokens, counting device reads inside and after each step."""
    check_config(config, host)
    quantizer = host.first("golf_quantizer", config=config)
    model = build_model(config, host, quantizer)
    trainer = Trainer(config, model, host, quantizer, synthetic_loader(config), CPU, None, lambda record: None)
    counter = DeviceReads()
    calls = iter(range(10**9))
    inner_step = trainer.train_step

    def counted_step(step, lr_scale):
        counter.phase = "warm-up" if next(calls) < config.train.warmup_steps else f"step {step + 1}"
        out = inner_step(step, lr_scale)
        counter.phase = f"after step {step + 1}"
        return out

    trainer.train_step = counted_step
    with counter:
        trainer.run()
    return counter.reads


def steps_with_reads(reads: dict[str, list[str]], prefix: str) -> set[int]:
    return {int(phase.rsplit(" ", 1)[1]) for phase in reads if phase.startswith(prefix)}


@pytest.mark.parametrize("recipe", ["quickstart.toml", "pr549-quick.toml", "v4-quick.toml"])
def test_steps_read_from_the_device_only_when_logging(recipe):
    available = discover()
    config = load_recipe(RECIPES / recipe, available, sets=TINY)
    reads = reads_per_phase(config, Host(config, available))
    assert steps_with_reads(reads, "step ") == set(), f"{recipe}: device reads inside the optimizer step: {reads}"
    logging_steps = {1, 5, 10}
    assert steps_with_reads(reads, "after step ") == logging_steps, f"{recipe}: reads {reads}"


class ReadsTheNorm(golf.Plugin):
    """Planted: a step-end hook that reads a parameter norm back every step."""

    name = "reads_the_norm"

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.last_norm = next(model.parameters()).norm().item()


def test_a_read_every_step_is_seen():
    config = load_recipe(RECIPES / "quickstart.toml", discover(), sets=TINY)
    reads = reads_per_phase(config, host_with(config, ReadsTheNorm))
    assert steps_with_reads(reads, "after step ") == set(range(1, 11))
