"""Document-masked attention: no position attends across a BOS.

docs/techniques.md §12.6 (PR #1530's variable-length attention; every later frontier record).
With doc_t = the number of BOS tokens at positions ≤ t in the row, query t attends to key s iff

    s ≤ t  and  doc_s = doc_t

so a document's tokens never see the previous document, which the packed stream puts before it.
Rows are cut by the loader, so a row's first tokens form a segment of their own as well.

Two kernels, the same function: FlashAttention 3's varlen kernel on Hopper when
`flash_attn_interface` imports (the rows flattened into one packed sequence, a segment starting
at every row start and every BOS; `cu_seqlens` padded to a static length with empty segments so
compiled graphs never see a data-dependent shape), else PyTorch SDPA with a boolean [B,1,T,T]
mask (CPU, tests, other GPUs). No parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf

try:
    from flash_attn_interface import flash_attn_varlen_func
except ImportError:  # FlashAttention 3 is optional; SDPA with a mask otherwise
    flash_attn_varlen_func = None

HOPPER_VARLEN = flash_attn_varlen_func is not None and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@dataclass
class Config(golf.Section):
    """No options: every layer's attention is masked at each BOS."""


def segment_starts(tokens: Tensor, bos_id: int) -> Tensor:  # tokens [B,T] -> bool [B,T]: a row start or a BOS
    starts = tokens == bos_id
    starts[:, 0] = True
    return starts


def document_mask(tokens: Tensor, bos_id: int) -> Tensor:  # tokens [B,T] -> bool [B,1,T,T], True = query t may attend key s
    doc = segment_starts(tokens, bos_id).cumsum(dim=1)  # [B,T]
    T = tokens.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal).unsqueeze(1)


def cu_seqlens(tokens: Tensor, bos_id: int) -> Tensor:  # tokens [B,T] -> int32 [B*T+1]: segment starts, then B*T repeated
    flat = segment_starts(tokens, bos_id).flatten()
    n = flat.numel()
    index = torch.arange(n, device=tokens.device, dtype=torch.int32)
    starts = torch.where(flat, index, torch.full_like(index, n)).sort().values  # static shape: no nonzero()
    return torch.cat((starts, starts.new_full((1,), n)))


class DocumentMaskedAttention(nn.Module):
    """The attention kernel (q [B,T,H,D], k, v [B,T,G,D], ctx) -> [B,T,H,D], scale 1/sqrt(D); the
    mask or boundaries are computed once per forward pass (ctx.cache) and shared by every layer."""

    def __init__(self, bos_id: int):
        super().__init__()
        self.bos_id = bos_id

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: golf.ForwardContext) -> Tensor:
        B, T = ctx.tokens.shape
        if HOPPER_VARLEN and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
            cu = ctx.cache.get("document_mask")
            if cu is None:
                cu = ctx.cache["document_mask"] = cu_seqlens(ctx.tokens, self.bos_id)
            out = flash_attn_varlen_func(
                q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens_q=cu, cu_seqlens_k=cu,
                max_seqlen_q=T, max_seqlen_k=T, causal=True,
            )
            out = out[0] if isinstance(out, tuple) else out
            return out.view(B, T, *out.shape[1:])
        mask = ctx.cache.get("document_mask")
        if mask is None:
            mask = ctx.cache["document_mask"] = document_mask(ctx.tokens, self.bos_id)
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
        ).transpose(1, 2)


class DocumentMask(golf.Plugin):
    name = "document_mask"
    description = "attention never crosses a BOS: SDPA with a mask, FlashAttention 3 varlen on Hopper (PR #1530)"
    Config = Config
    document_aware = True

    @golf.hookimpl
    def golf_edit_model(self, description):
        for layer in description.layers:
            layer.attention = golf.Part(DocumentMaskedAttention, description.bos_id)
