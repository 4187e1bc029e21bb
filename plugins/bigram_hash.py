"""BigramHash: a hashed embedding of (previous token, token) added before the embedding norm.

docs/techniques.md §3.3 (the PR #549 stack; from the 1.1458 SmearGate+BigramHash record). For
the token t_j at position j of a sequence,

    b_j = (36313·t_j XOR 27191·t_{j-1}) mod (M-1)      where t_{j-1} is in t_j's document
    b_j = M-1                                           otherwise (no previous token)
    e_j = α · W_p E_b[b_j]                              added to E_tok[t_j] before the RMSNorm

with M = 2048 buckets, E_b ∈ R^{M×128}, W_p ∈ R^{d×128}, α a learned scalar.

Init: E_b = 0, α = 0.05 and W_p orthogonal. The reference's constructor zero-initialises
W_p, but its `_init_weights` then overwrites every Linear with at least 64 rows and columns
orthogonally, so the zero init is dead code (defect D19) and orthogonal is what it trained
with (zero×zero would also never receive a gradient). golf does what the reference did.

Document boundary (fixed here): the reference only restarts the hash at position 0 of each
sequence or window, so at a BOS (id 1, the first token of every document) it hashes the
previous document's last token into the new document. golf gives BOS positions the
"no previous token" bucket M-1; `cross_documents = true` restores the reference's hash.
The bigram (BOS, first token) stays: BOS belongs to its document.

Optimizer/export as the reference: E_b embed group, exported as an embedding (int8 per row);
W_p scalar group, float16; α scalar group, float32. 327,681 parameters at d=512.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf

HASH_CUR, HASH_PREV = 36313, 27191


@dataclass
class Config(golf.Section):
    buckets: int = golf.option(2048, "hash buckets M; bucket M-1 is reserved for 'no previous token'")
    dim: int = golf.option(128, "width of the bucket embedding E_b (projected to model_dim by W_p)")
    scale_init: float = golf.option(0.05, "initial value of the learned output scale α")
    cross_documents: bool = golf.option(
        False, "hash across document boundaries like the reference (BOS positions then see the previous document)"
    )

    def check(self) -> None:
        if self.buckets < 2:
            raise self.invalid("buckets", f"{self.buckets} must be >= 2 (one hashed bucket plus the reserved one)")
        if self.dim < 1:
            raise self.invalid("dim", f"{self.dim} must be >= 1")
        if not math.isfinite(self.scale_init):
            raise self.invalid("scale_init", "must be finite")


def bigram_buckets(tokens: Tensor, buckets: int, cross_documents: bool, bos_id: int = 1) -> Tensor:
    """tokens [B,T] -> bucket ids [B,T] (int64), by the rule in the module docstring."""
    t = tokens.long()
    mod = buckets - 1
    hashed = torch.bitwise_xor(HASH_CUR * t[:, 1:], HASH_PREV * t[:, :-1]) % mod  # [B,T-1], both terms >= 0
    out = torch.cat((torch.full_like(t[:, :1], mod), hashed), dim=1)  # [B,T]
    if not cross_documents:  # a build-time flag, not a tensor value
        out = torch.where(t == bos_id, torch.full_like(out, mod), out)
    return out


class BigramHash(nn.Module):
    def __init__(self, buckets: int, dim: int, model_dim: int, scale_init: float, cross_documents: bool, bos_id: int = 1):
        super().__init__()
        self.buckets, self.cross_documents, self.bos_id = buckets, cross_documents, bos_id
        self.table = golf.declare(nn.Parameter(torch.zeros(buckets, dim)), "embed", "embedding")  # E_b [M,dim], zero init
        proj = torch.empty(model_dim, dim)
        nn.init.orthogonal_(proj)  # D19: the reference's zero init of W_p is overwritten by this
        self.proj = golf.declare(nn.Parameter(proj), "scalar", "float16")  # W_p [d,dim]
        self.scale = golf.declare(nn.Parameter(torch.tensor(float(scale_init))), "scalar", "float32")  # α []

    def forward(self, tokens: Tensor) -> Tensor:  # tokens [B,T] -> [B,T,d]
        h = F.embedding(bigram_buckets(tokens, self.buckets, self.cross_documents, self.bos_id), self.table)  # [B,T,dim]
        h = F.linear(h, self.proj.to(h.dtype))  # [B,T,d]
        return h * self.scale.to(h.dtype)


class BigramHashPlugin(golf.Plugin):
    name = "bigram_hash"
    description = "hashed (previous, current) token embedding added before the embedding norm (PR #549 stack)"
    Config = Config

    @property
    def document_aware(self) -> bool:
        return not self.config.cross_documents

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        c = self.config
        description.embedding.additions.append(
            golf.Part(BigramHash, c.buckets, c.dim, config.model.model_dim, c.scale_init, c.cross_documents, description.bos_id)
        )
