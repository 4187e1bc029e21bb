"""Projected memory of one training process, from the recipe alone (nothing is allocated): a
size that cannot fit is refused before the model is built, instead of hanging in the first step.

The projection counts weights, gradients and optimizer state (fp32) and the activations kept for
the backward pass of one micro-batch per process (SDPA and FlashAttention keep no [T,T] scores;
on CPU, fp32, the default recipe's forward keeps within 5% of this count). Plugins' extra
parameters are left out: an estimate for orders of magnitude, not for tuning a batch (`golf
bench` measures).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import RunConfig
from .errors import ConfigError

FP32 = 4
SAVED_PER_TOKEN_DIMS = 16  # residual-width tensors a block keeps for backward (norms, q, k, v, outputs, residuals)
SAVED_PER_TOKEN_HIDDEN = 3  # MLP-width tensors (input, activation, its derivative's input)
LOGIT_COPIES = 8  # fp32 [tokens, vocab] tensors around the head: logits, softcap, log-softmax, loss (measured on CPU)


@dataclass
class MemoryProjection:
    params: int
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    micro_batch_tokens: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes + self.activation_bytes

    def describe(self) -> str:
        gib = 2.0**30
        return (f"{self.total_bytes / gib:.1f} GiB per process (weights {self.weights_bytes / gib:.1f}, grads "
                f"{self.grads_bytes / gib:.1f}, optimizer {self.optimizer_bytes / gib:.1f}, activations "
                f"{self.activation_bytes / gib:.1f} at a micro-batch of {self.micro_batch_tokens} tokens)")


def core_parameters(config: RunConfig) -> int:
    """The core GPT's parameter count: tied embedding and, per physical layer, q, k, v, out and the MLP."""
    m = config.model
    kv = m.num_kv_heads * m.head_dim
    per_layer = 2 * m.model_dim * m.model_dim + 2 * m.model_dim * kv + 2 * m.model_dim * m.mlp_hidden
    return m.vocab_size * m.model_dim + m.num_layers * per_layer


def project(config: RunConfig, world_size: int, device: torch.device) -> MemoryProjection:
    """The projected memory of one of `world_size` processes training `config` on `device`."""
    m, t = config.model, config.train
    params = core_parameters(config)
    per_process = max(t.micro_batches // world_size, 1)
    tokens = max(t.batch_tokens // (world_size * per_process), t.seq_len)
    act_bytes = 2 if device.type == "cuda" else FP32  # bfloat16 activations on CUDA by default
    per_token = SAVED_PER_TOKEN_DIMS * m.model_dim + SAVED_PER_TOKEN_HIDDEN * m.mlp_hidden
    activations = tokens * (m.num_layers * per_token * act_bytes + LOGIT_COPIES * m.vocab_size * FP32)
    return MemoryProjection(params, params * FP32, params * FP32, 2 * params * FP32, activations, tokens)


def device_memory(device: torch.device) -> int:
    """Bytes of memory the device has in all (a GPU's memory; the machine's for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(config: RunConfig, world_size: int, device: torch.device) -> MemoryProjection:
    """Refuse a recipe whose projected memory exceeds the device's, naming the figures."""
    projection = project(config, world_size, device)
    available = device_memory(device)
    if projection.total_bytes > available:
        raise ConfigError(
            f"{config.source}: [model]/[train] sizes cannot fit: projected {projection.describe()} exceeds the "
            f"{available / 2**30:.1f} GiB of {device.type}; lower train.batch_tokens or seq_len, raise micro_batches, "
            f"or shrink the model"
        )
    return projection
