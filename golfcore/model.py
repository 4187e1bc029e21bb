"""The baseline GPT of the parameter-golf challenge, built from a model description.

Without plugins this is the challenge's naive baseline (docs/techniques.md §0): RMSNorm'd tied
embeddings, GQA attention with RoPE, RMSNorm on q and k and a per-head q gain, relu² MLP,
per-channel attention/MLP scales, `resid_mix` with the embedding x0, U-Net skips with learned
weights, and a softcapped tied head. `GPT` builds every module from the description
(`golfcore.description`) that plugins edited; the classes here know nothing of plugins, so the
forward pass is plain tensor code.

Matrices live per *physical* layer (`GPT.layers`, each a `LayerWeights` of `Projection`s);
everything else per *virtual* layer (`GPT.blocks`). `GPT.v2p[i]` is the physical layer behind
virtual layer i, so depth recurrence only changes that map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import causal_attention
from .config import ModelSection
from .contract import ForwardContext, LayerInfo
from .description import Builder, ModelDescription
from .params import ExportKind, OptimGroup, declare, spec_of


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


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm over the last dim."""

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x)


class CausalAttention(nn.Module):
    """The attention kernel: causal softmax attention with scale 1/sqrt(D) (golfcore.attention)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: ForwardContext) -> Tensor:  # q [B,T,H,D], k/v [B,T,G,D] -> [B,T,H,D]
        return causal_attention(q, k, v)


class Projection(nn.Module):
    """A matrix applied to its input: x -> x Wᵀ, W [out,in], used as `transform(W)` (the model's
    weight transform, e.g. late QAT's fake quantization; the identity by default).

    `group` and `export` are W's optimizer group and export precision (golfcore.declare). A
    physical layer's Projections are shared by every virtual layer running it. A plugin may wrap
    one (same call), observe its inputs (`register_forward_pre_hook`) or replace it."""

    def __init__(self, out_features: int, in_features: int, init: str = "kaiming", group: OptimGroup = "matrix",
                 export: ExportKind = "quantize"):
        super().__init__()
        if init not in ("kaiming", "zeros"):
            raise ValueError(f"Projection init {init!r}: expected 'kaiming' or 'zeros'")
        w = torch.zeros(out_features, in_features)
        if init == "kaiming":  # nn.Linear's default init, as the baseline keeps it
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.weight = declare(nn.Parameter(w), group, export)  # [out,in]
        self.transform: nn.Module = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [...,in] -> [...,out]
        return F.linear(x, self.transform(self.weight))

    def extra_repr(self) -> str:
        return f"{self.weight.size(1)} -> {self.weight.size(0)}"


class LayerWeights(nn.Module):
    """The projections of one physical layer; shared by every virtual layer mapped onto it."""

    def __init__(self, q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module, up: nn.Module, down: nn.Module):
        super().__init__()
        self.q, self.k, self.v, self.o, self.up, self.down = q, k, v, o, up, down


class WeightedSkips(nn.Module):
    """U-Net skip j: x + w_j ⊙ skip, w [num_skips, d] init 1."""

    def __init__(self, num_skips: int, model_dim: int):
        super().__init__()
        self.weights = declare(nn.Parameter(torch.ones(num_skips, model_dim)), "scalar", "float32")  # [num_skips,d]

    def forward(self, x: Tensor, skip: Tensor, j: int) -> Tensor:  # x, skip [B,T,d]
        return x + self.weights[j].to(x.dtype) * skip


class SoftcapHead(nn.Module):
    """Tied logits, tanh-softcapped: c·tanh(h Eᵀ / c), float32."""

    def __init__(self, softcap: float):
        super().__init__()
        self.softcap = softcap

    def forward(self, h: Tensor, embedding: Tensor) -> Tensor:  # h [...,d], embedding [V,d] -> [...,V]
        z = F.linear(h, embedding).float()
        return self.softcap * torch.tanh(z / self.softcap)


class Switch(nn.Module):
    """A training-time switch: a Python bool the forward branches on. torch.compile guards on
    it (one graph per state; the compile warm-up runs every state). Starts off."""

    def __init__(self):
        super().__init__()
        self.compile_switch = False


class Block(nn.Module):
    """One virtual layer: its own scalars and modules, applied with a physical layer's projections."""

    def __init__(self, cfg: ModelSection, layer: LayerInfo, *, input_scale: float, attn_norm: nn.Module,
                 qk_norm: nn.Module, rotary: nn.Module, value_transforms: list[nn.Module], attention: nn.Module,
                 output_transforms: list[nn.Module], mlp_norm: nn.Module, activation: nn.Module,
                 switch: Switch | None):
        super().__init__()
        d, H = cfg.model_dim, cfg.num_heads
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = H, cfg.num_kv_heads, cfg.head_dim
        self.attn_scale = declare(nn.Parameter(torch.ones(d)), "scalar", "float32")
        self.mlp_scale = declare(nn.Parameter(torch.ones(d)), "scalar", "float32")
        self.resid_mix = declare(nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d)))), "scalar", "float32")  # [2,d]
        self.q_gain = declare(nn.Parameter(torch.full((H,), cfg.qk_gain_init)), "scalar", "float32")
        self.input_scale = input_scale
        self.attn_norm, self.qk_norm, self.rotary = attn_norm, qk_norm, rotary
        self.value_transforms = nn.ModuleList(value_transforms)
        self.kernel = attention
        self.output_transforms = nn.ModuleList(output_transforms)
        self.mlp_norm, self.activation = mlp_norm, activation
        self.switch = switch

    def attention(self, x: Tensor, w: LayerWeights, ctx: ForwardContext) -> Tensor:  # x [B,T,d] normalized
        B, T, _ = x.shape
        q = w.q(x).view(B, T, self.num_heads, self.head_dim)
        k = w.k(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = w.v(x).view(B, T, self.num_kv_heads, self.head_dim)
        for transform in self.value_transforms:
            v = transform(v, ctx)
        q = self.rotary(self.qk_norm(q)) * self.q_gain.to(q.dtype)[:, None]
        k = self.rotary(self.qk_norm(k))
        y = self.kernel(q, k, v, ctx)  # [B,T,H,D]
        for transform in self.output_transforms:
            y = transform(y, v, x, ctx)
        return w.o(y.reshape(B, T, -1))

    def mlp(self, x: Tensor, w: LayerWeights) -> Tensor:  # x [B,T,d] normalized
        return w.down(self.activation(w.up(x)))

    def forward(self, x: Tensor, x0: Tensor, w: LayerWeights, ctx: ForwardContext) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attention(self.attn_norm(x) * self.input_scale, w, ctx)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self.mlp_norm(x) * self.input_scale, w)


class GPT(nn.Module):
    activation_dtype = torch.float32  # of the embedding output and residual stream; the session sets [train] activation_dtype

    def __init__(self, description: ModelDescription):
        """Build every module of `description`, in one fixed order (so random inits do not depend
        on which plugin edited what first): per virtual layer its modules, then the embedding's,
        the token table, the projections per physical layer, the skips and the head."""
        super().__init__()
        cfg = self.cfg = description.config
        build = Builder()
        switches = {name: Switch() for name in dict.fromkeys(l.switch for l in description.layers if l.switch is not None)}
        blocks = []
        for layer in description.layers:
            rotary, activation = build(layer.rotary), build(layer.activation)
            value_transforms, output_transforms = build.all(layer.value_transforms), build.all(layer.output_transforms)
            blocks.append(layer.block(
                cfg, layer.info, input_scale=layer.input_scale, attn_norm=build(layer.attn_norm),
                qk_norm=build(layer.qk_norm), rotary=rotary, value_transforms=value_transforms,
                attention=build(layer.attention), output_transforms=output_transforms,
                mlp_norm=build(layer.mlp_norm), activation=activation,
                switch=switches.get(layer.switch),
            ))
        emb = description.embedding
        additions, before_norm, transforms = build.all(emb.additions), build.all(emb.before_norm), build.all(emb.transforms)
        tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(tok_emb.weight, std=cfg.tied_embed_init_std)
        declare(tok_emb.weight, "embed", "embedding")
        # registered in the order state_dict, the optimizers and the artifact list them
        self.switches = nn.ModuleDict(switches)  # no parameters; first, so checkpoints name them switches.NAME
        self.skips = build(description.skips.connect)
        self.tok_emb = tok_emb
        self.embedding_additions = nn.ModuleList(additions)
        self.embedding_before_norm = nn.ModuleList(before_norm)
        self.embedding_norm = build(description.embedding.norm)
        self.embedding_transforms = nn.ModuleList(transforms)
        self.layers = nn.ModuleList(
            LayerWeights(build(p.q), build(p.k), build(p.v), build(p.o), build(p.up), build(p.down)) for p in description.physical
        )
        self.blocks = nn.ModuleList(blocks)
        self.v2p = description.schedule
        self.num_encoder = description.skips.encoder_layers
        self.final_norm = build(description.head.norm)
        self.logit_head = build(description.head.logits)
        self.bos_id = description.bos_id
        transform = build(description.weight_transform)
        if transform is not None:
            for module in self.layers.modules():
                if isinstance(module, Projection) and spec_of(module.weight).export == "quantize":
                    module.transform = transform

    def hidden(self, tokens: Tensor) -> Tensor:  # tokens [B,T] -> final normed states [B,T,d]
        x = self.tok_emb(tokens)
        for addition in self.embedding_additions:
            x = x + addition(tokens)
        for transform in self.embedding_before_norm:
            x = transform(x, tokens)
        x = self.embedding_norm(x)
        for transform in self.embedding_transforms:
            x = transform(x, tokens)
        x = x.to(self.activation_dtype)  # bf16 as the reference's residual stream; weights stay fp32
        x0 = x
        ctx = ForwardContext(tokens)
        skips: list[Tensor] = []
        # a layer whose switch is off does not run (a Python bool: one compiled graph per state);
        # then the U-Net split halves the layers that run
        running = [i for i, block in enumerate(self.blocks) if block.switch is None or block.switch.compile_switch]
        num_encoder = self.num_encoder if len(running) == len(self.blocks) else len(running) // 2
        for n, i in enumerate(running):
            j = n - num_encoder  # decoder index
            if skips and j >= 0:
                x = self.skips(x, skips.pop(), j)
            x = self.blocks[i](x, x0, self.layers[self.v2p[i]], ctx)
            if n < num_encoder:
                skips.append(x)
        return self.final_norm(x)

    def head(self, h: Tensor) -> Tensor:  # final states [...,d] -> logits [...,V] float32
        return self.logit_head(h, self.tok_emb.weight)

    def logits(self, tokens: Tensor) -> Tensor:  # [B,T,V]
        return self.head(self.hidden(tokens))

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:  # mean next-token NLL in nats
        return F.cross_entropy(self.logits(tokens).flatten(0, 1), targets.flatten())

    def logprobs(self, tokens: Tensor, last: int | None = None, at: Tensor | None = None) -> Tensor:  # [B,last or T,V] float32
        """Normalized log-probabilities of the last `last` positions (all by default), or with
        `at` [B] of positions at[b]..at[b]+last-1 of each row (document mode's windows): the eval
        scores only a window's new targets, so the head and softmax, the largest matrix product
        at V=1024, skip the context positions."""
        h = self.hidden(tokens)
        if at is not None:
            idx = at[:, None] + torch.arange(last, device=at.device)  # [B,last]
            h = h.gather(1, idx[..., None].expand(-1, -1, h.size(-1)))
        elif last is not None:
            h = h[:, -last:]
        return F.log_softmax(self.head(h), dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
