"""The model description: a typed, printable tree of the network that plugins edit before it is built.

The core makes the baseline's description (`default_description`), each enabled plugin edits it
in `golf_edit_model`, and `golfcore.model.GPT` builds the network from it. A slot holds a `Part`
(a module class and its arguments, built once per model build), a number or a class, never a
built module: so describing costs nothing (`golf model RECIPE` prints it without a tensor),
building is pure (every build starts from a fresh description: no plugin state crosses builds),
and the builder makes modules in one fixed order whatever the recipe order, so random inits do
not depend on which plugin edited first. docs/architecture.md ("The model description") says why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import ModelSection
from .contract import LayerInfo
from .data import SpecialTokens


class Part:
    """A module to build: `cls(*args, **kwargs)`, made once per model build.

    A Part passed as an argument of other Parts (or placed in several slots) is built once and
    shared by all of them, e.g. one value-embedding table for several layers, or a LoRA wrapping
    the projection it is given: `Part(LoRA, description.physical[3].q, rank=8)`."""

    def __init__(self, cls: type, *args: Any, **kwargs: Any):
        self.cls, self.args, self.kwargs = cls, args, kwargs

    def __repr__(self) -> str:
        items = [_show(a) for a in self.args] + [f"{k}={_show(v)}" for k, v in self.kwargs.items()]
        return f"{self.cls.__name__}({', '.join(items)})"


def _show(value: Any) -> str:
    if isinstance(value, (Part, bool, int, float, str, type(None))):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return type(value).__name__  # e.g. a quantizer: its class says enough


@dataclass
class EmbeddingSlots:
    """tokens [B,T] -> x0 [B,T,d]: table lookup, + each addition, each before-norm transform, norm,
    then each transform."""

    additions: list[Part] = field(default_factory=list)  # (tokens[B,T]) -> [B,T,d], added before the norm
    before_norm: list[Part] = field(default_factory=list)  # (x[B,T,d], tokens[B,T]) -> [B,T,d], after the additions
    norm: Part | None = None  # (x[B,T,d]) -> same; RMSNorm by default
    transforms: list[Part] = field(default_factory=list)  # (x[B,T,d], tokens[B,T]) -> [B,T,d], after the norm


@dataclass
class PhysicalLayer:
    """The matrices of one physical layer, each a `golfcore.Projection` (or a module with its call
    interface, e.g. a LoRA wrapping one): (x[...,in]) -> [...,out]. Shared by every virtual layer
    that runs this physical layer."""

    q: Part  # [H*D, d]
    k: Part  # [G*D, d]
    v: Part  # [G*D, d]
    o: Part  # [d, H*D], zero init: each block starts as the identity
    up: Part  # [F, d]
    down: Part  # [d, F], zero init


@dataclass
class Layer:
    """One virtual layer (execution order): its own modules and scalars, applied with the
    matrices of physical layer `info.physical`. Lists of Parts run in their class's `order`
    attribute (default 0), ties in the order plugins added them."""

    info: LayerInfo
    block: type  # the residual form: golfcore.Block (sequential attention then MLP) or a subclass
    input_scale: float = 1.0  # multiplies both normalized sublayer inputs (a build-time constant)
    attn_norm: Part | None = None  # (x[B,T,d]) -> same, before attention
    qk_norm: Part | None = None  # (q or k [B,T,heads,D]) -> same
    rotary: Part | None = None  # (x[B,T,heads,D]) -> same, on normalized q and k
    value_transforms: list[Part] = field(default_factory=list)  # (v[B,T,G,D], ctx) -> v
    attention: Part | None = None  # kernel (q[B,T,H,D], k/v[B,T,G,D], ctx) -> y[B,T,H,D]; causal by default
    output_transforms: list[Part] = field(default_factory=list)  # (y[B,T,H,D], v, x[B,T,d], ctx) -> y
    mlp_norm: Part | None = None  # (x[B,T,d]) -> same, before the MLP
    activation: Part | None = None  # (u[B,T,F]) -> same; relu² by default
    switch: str | None = None  # runs only while model.switches[switch].compile_switch is True; None: always


@dataclass
class Skips:
    """U-Net skips: the first `encoder_layers` virtual layers push their outputs; the next
    min(encoder_layers, rest) layers each pop one (last in, first out) and combine it with
    `connect(x[B,T,d], skip[B,T,d], j) -> x`, j = the decoder layer's index among them. While a
    layer's switch is off, the split is half of the layers that run (delayed recurrence)."""

    encoder_layers: int
    connect: Part  # learned per-channel weights by default: x + w_j ⊙ skip


@dataclass
class Head:
    """Final states -> logits: `norm`, then `logits(h[...,d], embedding_weight[V,d]) -> [...,V]` float32."""

    norm: Part | None = None
    logits: Part | None = None  # tied to the token embedding, tanh-softcapped by default


@dataclass
class ModelDescription:
    """The whole network. `physical[p]` holds the matrices, `layers[i]` virtual layer i (which
    physical layer it runs is `layers[i].info.physical`)."""

    config: ModelSection  # sizes (vocab, d, heads, head dim, MLP width) and core inits
    bos_id: int  # the tokenizer's beginning-of-document id, for modules that mask at a BOS
    embedding: EmbeddingSlots
    physical: list[PhysicalLayer]
    layers: list[Layer]
    skips: Skips
    head: Head
    weight_transform: Part | None = None  # (w[out,in]) -> w', applied to every Projection exported "quantize"

    @property
    def schedule(self) -> list[int]:
        """The physical layer of each virtual layer."""
        return [layer.info.physical for layer in self.layers]

    def slots(self) -> dict[str, str]:
        """Flat `path -> printed value` of every slot (list items one by one): what `golf model`
        prints and how it tells which plugin changed what."""
        out: dict[str, str] = {}

        def walk(path: str, value: Any) -> None:
            if dataclasses.is_dataclass(value) and not isinstance(value, (LayerInfo, ModelSection)):
                for f in dataclasses.fields(value):
                    walk(f"{path}.{f.name}" if path else f.name, getattr(value, f.name))
            elif isinstance(value, list):  # Parts in the order they will run
                items = sorted(value, key=lambda p: getattr(p.cls, "order", 0)) if all(isinstance(p, Part) for p in value) else value
                for j, item in enumerate(items):
                    walk(f"{path}[{j}]", item)
                if not value:
                    out[path] = "[]"
            elif isinstance(value, type):
                out[path] = value.__name__
            elif isinstance(value, LayerInfo):
                out[path] = f"virtual {value.virtual} of {value.num_virtual}, physical {value.physical} of {value.num_physical}"
            elif isinstance(value, ModelSection):
                out[path] = (f"vocab {value.vocab_size}, d {value.model_dim}, heads {value.num_heads} "
                             f"(kv {value.num_kv_heads}, dim {value.head_dim}), mlp {value.mlp_hidden}")
            else:
                out[path] = _show(value)

        walk("", self)
        return out

    def render(self, setters: dict[str, str] | None = None) -> str:
        """One line per slot, `path  value  [plugin]`, the plugin being the one that set it
        (`setters`, from golfcore.assemble.describe); slots without one are the core's."""
        slots, setters = self.slots(), setters or {}
        width = max(len(path) for path in slots)
        return "\n".join(f"{path:<{width}}  {value}" + (f"  [{setters[path]}]" if path in setters else "")
                         for path, value in slots.items())


def default_description(config: ModelSection, schedule: list[int], bos_id: int = SpecialTokens.bos_id) -> ModelDescription:
    """The challenge baseline (docs/techniques.md §0) over the layer schedule `schedule`;
    `bos_id` is the run's tokenizer's beginning-of-document id."""
    from .model import (Block, CausalAttention, Projection, ReluSquared, RMSNorm, Rotary, SoftcapHead,
                        WeightedSkips)

    d, D, F_ = config.model_dim, config.head_dim, config.mlp_hidden
    hd, kvd = config.num_heads * D, config.num_kv_heads * D
    physical = [
        PhysicalLayer(
            q=Part(Projection, hd, d), k=Part(Projection, kvd, d), v=Part(Projection, kvd, d),
            o=Part(Projection, d, hd, init="zeros"), up=Part(Projection, F_, d), down=Part(Projection, d, F_, init="zeros"),
        )
        for _ in range(max(schedule) + 1)
    ]
    layers = [
        Layer(
            info=LayerInfo(virtual=i, physical=p, num_virtual=len(schedule), num_physical=config.num_layers),
            block=Block,
            attn_norm=Part(RMSNorm), qk_norm=Part(RMSNorm), rotary=Part(Rotary, D, config.rope_base),
            attention=Part(CausalAttention), mlp_norm=Part(RMSNorm), activation=Part(ReluSquared),
        )
        for i, p in enumerate(schedule)
    ]
    encoder = len(schedule) // 2
    return ModelDescription(
        config=config,
        bos_id=bos_id,
        embedding=EmbeddingSlots(norm=Part(RMSNorm)),
        physical=physical,
        layers=layers,
        skips=Skips(encoder, Part(WeightedSkips, min(encoder, len(schedule) - encoder), d)),
        head=Head(norm=Part(RMSNorm), logits=Part(SoftcapHead, config.logit_softcap)),
    )


class Builder:
    """Builds Parts, each once: a Part met again (shared) returns the module built the first time."""

    def __init__(self):
        self.built: dict[int, tuple[Part, Any]] = {}  # id(part) -> (part, module); the part kept alive keeps ids unique

    def __call__(self, part: Part | None) -> Any:
        if part is None:
            return None
        if id(part) not in self.built:
            args = [self(a) if isinstance(a, Part) else a for a in part.args]
            kwargs = {k: self(v) if isinstance(v, Part) else v for k, v in part.kwargs.items()}
            self.built[id(part)] = (part, part.cls(*args, **kwargs))
        return self.built[id(part)][1]

    def all(self, parts: list[Part]) -> list[Any]:
        """Build a slot's list (in the order plugins added it), then sort it by each module's `order`
        attribute (default 0; stable)."""
        return sorted((self(p) for p in parts), key=lambda m: getattr(m, "order", 0))
