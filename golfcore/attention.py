"""Causal self-attention kernels: FlashAttention 3 on Hopper GPUs when its package
(`flash_attn_interface`) imports, PyTorch's scaled_dot_product_attention otherwise.

Both take GQA natively (fewer key/value heads than query heads) and the default scale
1/sqrt(D). The choice is fixed at import (a constant, so compiled graphs hold no device query)
and per call by the inputs (CUDA, bf16/fp16); `attention_kernel` names what a run used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from flash_attn_interface import flash_attn_func
except ImportError:  # the optional FlashAttention 3 build; SDPA otherwise
    flash_attn_func = None

HOPPER_FLASH3 = flash_attn_func is not None and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def _flash3_applies(device: torch.device, dtype: torch.dtype) -> bool:
    return HOPPER_FLASH3 and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)


def attention_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """"flash3" or "sdpa": the kernel `causal_attention` uses for inputs on `device` in `dtype`."""
    return "flash3" if _flash3_applies(device, dtype) else "sdpa"


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q [B,T,H,D], k/v [B,T,G,D] -> [B,T,H,D]
    if _flash3_applies(q.device, q.dtype):
        out = flash_attn_func(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the log-sum-exp
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
