"""The baseline GPT of the parameter-golf challenge, assembled from plugin-contributed modules.

Without plugins this is the challenge's naive baseline (docs/techniques.md §0): RMSNorm'd tied
embeddings, GQA attention with RoPE, RMSNorm on q and k and a per-head q gain, relu² MLP,
per-channel attention/MLP scales, `resid_mix` with the embedding x0, U-Net skips with learned
weights, and a softcapped tied head. The classes here know nothing of plugins: they take the
modules `golfcore.assemble` collected from the hooks, so the forward pass is plain tensor code.

Matrices live per *physical* layer (`GPT.layers`); everything else per *virtual* layer
(`GPT.blocks`). `GPT.v2p[i]` is the physical layer behind virtual layer i, so depth
recurrence only changes that map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import causal_attention
from .config import ModelSection
from .contract import ForwardContext, LayerInfo
from .params import declare


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """RoPE on the first `dims` dims of each head (all of them by default); pairs (c, c + dims/2)."""

    def __init__(self, head_dim: int, base: float, dims: int | None = None):
        super().__init__()
        self.dims = dims or head_dim
        if self.dims % 2 or self.dims > head_dim:
            raise ValueError(f"rotary dims {self.dims} must be even and <= head_dim {head_dim}")
        self.base = base

    def inv_freq(self, seq_len: int, device: torch.device) -> Tensor:  # [dims/2]; seq_len lets subclasses rescale
        return self.base ** (-torch.arange(0, self.dims, 2, device=device, dtype=torch.float32) / self.dims)

    def forward(self, x: Tensor) -> Tensor:  # x [B,T,h,D]
        T = x.size(1)
        t = torch.arange(T, device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq(T, x.device))[:, None, :]  # [T,1,dims/2]
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
        half = self.dims // 2
        x1, x2, rest = x[..., :half], x[..., half : self.dims], x[..., self.dims :]
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


class ReluSquared(nn.Module):
    def forward(self, u: Tensor) -> Tensor:
        return F.relu(u).square()


class LayerWeights(nn.Module):
    """The matrices of one physical layer; shared by every virtual layer mapped onto it."""

    def __init__(self, cfg: ModelSection):
        super().__init__()
        d, D, F_ = cfg.model_dim, cfg.head_dim, cfg.mlp_hidden
        hd, kvd = cfg.num_heads * D, cfg.num_kv_heads * D

        def matrix(rows: int, cols: int, zero: bool) -> nn.Parameter:
            w = torch.zeros(rows, cols)
            if not zero:  # nn.Linear's default init, as the baseline keeps it
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            return declare(nn.Parameter(w), "matrix", "quantize")

        self.q = matrix(hd, d, zero=False)  # [H*D, d]
        self.k = matrix(kvd, d, zero=False)  # [G*D, d]
        self.v = matrix(kvd, d, zero=False)  # [G*D, d]
        self.o = matrix(d, hd, zero=True)  # [d, H*D], zero init: each block starts as identity
        self.up = matrix(F_, d, zero=False)  # [F, d]
        self.down = matrix(d, F_, zero=True)  # [d, F]


class Block(nn.Module):
    """One virtual layer: its own scalars and plugin modules, applied with a physical layer's matrices."""

    def __init__(
        self,
        cfg: ModelSection,
        layer: LayerInfo,
        rotary: nn.Module,
        activation: nn.Module,
        value_transforms: list[nn.Module],
        output_transforms: list[nn.Module],
        input_scale: float,
        weight_transform: nn.Module,
    ):
        super().__init__()
        d, H = cfg.model_dim, cfg.num_heads
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = H, cfg.num_kv_heads, cfg.head_dim
        self.attn_scale = declare(nn.Parameter(torch.ones(d)), "scalar", "float32")
        self.mlp_scale = declare(nn.Parameter(torch.ones(d)), "scalar", "float32")
        self.resid_mix = declare(nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d)))), "scalar", "float32")  # [2,d]
        self.q_gain = declare(nn.Parameter(torch.full((H,), cfg.qk_gain_init)), "scalar", "float32")
        self.rotary = rotary
        self.activation = activation
        self.value_transforms = nn.ModuleList(value_transforms)
        self.output_transforms = nn.ModuleList(output_transforms)
        self.input_scale = input_scale
        self.weight_transform = weight_transform

    def attention(self, x: Tensor, w: LayerWeights, ctx: ForwardContext) -> Tensor:  # x [B,T,d] normalized
        B, T, _ = x.shape
        W = self.weight_transform
        q = F.linear(x, W(w.q)).view(B, T, self.num_heads, self.head_dim)
        k = F.linear(x, W(w.k)).view(B, T, self.num_kv_heads, self.head_dim)
        v = F.linear(x, W(w.v)).view(B, T, self.num_kv_heads, self.head_dim)
        for transform in self.value_transforms:
            v = transform(v, ctx)
        q = self.rotary(rms_norm(q)) * self.q_gain.to(q.dtype)[:, None]
        k = self.rotary(rms_norm(k))
        y = causal_attention(q, k, v)  # [B,T,H,D]; scale 1/sqrt(D)
        for transform in self.output_transforms:
            y = transform(y, v, x, ctx)
        return F.linear(y.reshape(B, T, -1), W(w.o))

    def forward(self, x: Tensor, x0: Tensor, w: LayerWeights, ctx: ForwardContext) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attention(rms_norm(x) * self.input_scale, w, ctx)
        h = rms_norm(x) * self.input_scale
        h = F.linear(self.activation(F.linear(h, self.weight_transform(w.up))), self.weight_transform(w.down))
        return x + self.mlp_scale.to(x.dtype) * h


class GPT(nn.Module):
    activation_dtype = torch.float32  # of the embedding output and residual stream; the session sets [train] activation_dtype

    def __init__(
        self,
        cfg: ModelSection,
        v2p: list[int],
        blocks: list[Block],
        embedding_additions: list[nn.Module],
        embedding_transforms: list[nn.Module],
    ):
        super().__init__()
        self.cfg = cfg
        self.softcap = cfg.logit_softcap
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        declare(self.tok_emb.weight, "embed", "embedding")
        self.embedding_additions = nn.ModuleList(embedding_additions)
        self.embedding_transforms = nn.ModuleList(embedding_transforms)
        self.layers = nn.ModuleList(LayerWeights(cfg) for _ in range(max(v2p) + 1))
        self.blocks = nn.ModuleList(blocks)
        self.v2p = list(v2p)
        self.num_encoder = len(blocks) // 2
        num_skips = min(self.num_encoder, len(blocks) - self.num_encoder)
        self.skip_weights = declare(nn.Parameter(torch.ones(num_skips, cfg.model_dim)), "scalar", "float32")

    def hidden(self, tokens: Tensor) -> Tensor:  # tokens [B,T] -> final normed states [B,T,d]
        x = self.tok_emb(tokens)
        for addition in self.embedding_additions:
            x = x + addition(tokens)
        x = rms_norm(x)
        for transform in self.embedding_transforms:
            x = transform(x, tokens)
        x = x.to(self.activation_dtype)  # bf16 as the reference's residual stream; weights stay fp32
        x0 = x
        ctx = ForwardContext(tokens)
        skips: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            j = i - self.num_encoder  # decoder index
            if 0 <= j < self.skip_weights.size(0):
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            x = block(x, x0, self.layers[self.v2p[i]], ctx)
            if i < self.num_encoder:
                skips.append(x)
        return rms_norm(x)

    def head(self, h: Tensor) -> Tensor:  # final states [...,d] -> softcapped logits [...,V] float32 (tied)
        z = F.linear(h, self.tok_emb.weight).float()
        return self.softcap * torch.tanh(z / self.softcap)

    def logits(self, tokens: Tensor) -> Tensor:  # [B,T,V]
        return self.head(self.hidden(tokens))

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:  # mean next-token NLL in nats
        return F.cross_entropy(self.logits(tokens).flatten(0, 1), targets.flatten())

    def logprobs(self, tokens: Tensor, last: int | None = None) -> Tensor:  # [B,last or T,V] float32
        """Normalized log-probabilities of the last `last` positions (all by default): the
        sliding-window eval scores only a window's last `stride`, so the head and softmax,
        the largest matrix product at V=1024, skip the context positions."""
        h = self.hidden(tokens)
        return F.log_softmax(self.head(h if last is None else h[:, -last:]), dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
