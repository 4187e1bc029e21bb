"""Typed configuration: every core default lives in this file, one dataclass per recipe section.

Plugin configs use the same machinery (`option`, `Section`): each field has a default and
a docstring, types are checked when a recipe is loaded, and `check()` holds value rules.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .data import SpecialTokens, corpus_directory
from .errors import ConfigError, DataError


def option(default: Any, doc: str, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None) -> Any:
    """A config field with its default, one-line documentation and the range of its value
    (checked when a recipe is loaded; a float field is always finite)."""
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    metadata = {"doc": doc, "range": {k: v for k, v in bounds.items() if v is not None}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


RANGE_WORDS = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}


def out_of_range(value: Any, bounds: dict[str, float]) -> str | None:
    """Why `value` breaks its field's range ("must be >= 1"), or None when it is within it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    ok = {"at_least": value >= bounds.get("at_least", value), "above": "above" not in bounds or value > bounds["above"],
          "at_most": value <= bounds.get("at_most", value), "below": "below" not in bounds or value < bounds["below"]}
    broken = [k for k in bounds if not ok[k]]
    if not broken:
        return None
    return "must be " + " and ".join(f"{RANGE_WORDS[k]} {bounds[k]:g}" for k in bounds)


class Section:
    """Base of every config dataclass (core sections and plugin configs)."""

    def check(self) -> None:
        """Value rules beyond types; raise `self.invalid(field, message)`."""

    def invalid(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{key}: {message}")


def field_docs(cls: type) -> dict[str, tuple[Any, str]]:
    """name -> (default, doc) for a config dataclass."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = (default, f.metadata.get("doc", ""))
    return out


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate `cls` from a recipe table, checking keys, types and value rules.

    `where` names the table in errors, e.g. "[plugins.xsa]".
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where} unknown key {key!r} (known: {', '.join(sorted(names))})")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{where} {key} = {value!r}: expected {_describe(hints[key])}")
    coerced = {k: float(v) if hints[k] is float else v for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if f.name in coerced and (why := out_of_range(coerced[f.name], f.metadata.get("range", {}))):
            raise ConfigError(f"{where} {f.name} = {coerced[f.name]!r}: {why}")
    obj = cls(**coerced)
    try:
        obj.check()
    except ConfigError as e:
        raise ConfigError(f"{where} {e}") from None
    return obj


# ----------------------------------------------------------------------------- core sections


@dataclass
class RunSection(Section):
    name: str = option("run", "run name; the run directory is runs/<name>-<timestamp>")
    seed: int = option(1337, "seed for parameters, data order and dropout-free training", at_least=0)
    out_dir: str = option("runs", "parent folder of run directories")

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", self.name):
            raise self.invalid("name", f"{self.name!r} must be a plain directory name (letters, digits, . _ + -; "
                                       f"not empty, no '/', not starting with '.')")


@dataclass
class DataSection(Section):
    corpus: str = option("pystdlib", "pystdlib, pystdlib_caseops, fineweb10B_spN (sp1024, sp4096, sp8192), "
                                     "fineweb10B_sp8192_caseops, or text:NAME (built by `golf data text|tokenizer`)")
    root: str = option("data", "folder holding corpora (relative to the working directory)")
    max_train_shards: int = option(0, "use at most this many train shards (0 = all)", at_least=0)
    max_val_tokens: int = option(0, "score at most this many validation targets (0 = the full split)", at_least=0)
    shards: str = option("", "a folder of challenge shards (*_train_NNNNNN.bin, *_val_NNNNNN.bin) read instead of "
                             "root's corpus, which then only names the data; needs tokenizer")
    tokenizer: str = option("", "the sentencepiece model of the shards folder (with shards)")

    def check(self) -> None:
        if bool(self.shards) != bool(self.tokenizer):
            raise self.invalid("shards" if not self.shards else "tokenizer", "shards and tokenizer are set together")
        try:
            corpus_directory(self.corpus, self.root)
        except DataError as e:
            raise self.invalid("corpus", str(e)) from None


@dataclass
class ModelSection(Section):
    vocab_size: int = option(1024, "vocabulary size (must match the corpus tokenizer)", at_least=2, at_most=65536)
    num_layers: int = option(9, "physical transformer layers", at_least=1)
    model_dim: int = option(512, "residual width d", at_least=2)
    num_heads: int = option(8, "query heads H", at_least=1)
    num_kv_heads: int = option(4, "key/value heads G (GQA); must divide num_heads", at_least=1)
    mlp_mult: float = option(2.0, "MLP hidden size = mlp_mult * model_dim", above=0)
    rope_base: float = option(10000.0, "RoPE base", above=0)
    logit_softcap: float = option(30.0, "logits = softcap * tanh(z / softcap)", above=0)
    qk_gain_init: float = option(1.5, "initial per-head gain on normalized queries")
    tied_embed_init_std: float = option(0.005, "std of the tied token embedding at init", at_least=0)

    def check(self) -> None:
        if self.model_dim % self.num_heads:
            raise self.invalid("num_heads", f"{self.num_heads} does not divide model_dim {self.model_dim}")
        if self.num_heads % self.num_kv_heads:
            raise self.invalid("num_kv_heads", f"{self.num_kv_heads} does not divide num_heads {self.num_heads}")
        if (self.model_dim // self.num_heads) % 2:
            raise self.invalid("num_heads", "head dimension must be even for RoPE")
        if self.mlp_hidden < 1:
            raise self.invalid("mlp_mult", f"{self.mlp_mult} x model_dim {self.model_dim} leaves no MLP hidden unit")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)


@dataclass
class OptimSection(Section):
    matrix_lr: float = option(0.04, "Muon lr for 2-D block matrices", at_least=0)
    scalar_lr: float = option(0.04, "Adam lr for scalars and control tensors", at_least=0)
    embed_lr: float = option(0.05, "Adam lr for (tied) embedding tables", at_least=0)
    muon_momentum: float = option(0.95, "Muon momentum after warm-up", at_least=0, below=1)
    muon_momentum_warmup_start: float = option(0.85, "Muon momentum at step 0", at_least=0, below=1)
    muon_momentum_warmup_steps: int = option(500, "steps of linear momentum warm-up", at_least=0)
    muon_backend_steps: int = option(5, "Newton-Schulz iterations", at_least=1)
    muon_weight_decay: float = option(0.0, "decoupled weight decay for Muon matrices: W *= 1 - lr*wd", at_least=0)
    muon_ns_dtype: Literal["auto", "bfloat16", "float32"] = option(
        "auto", "Newton-Schulz matmul dtype; auto = bfloat16 on CUDA (as the reference), float32 on CPU (bf16 matmuls are slow there)"
    )
    adam_beta1: float = option(0.9, "Adam beta1", at_least=0, below=1)
    adam_beta2: float = option(0.95, "Adam beta2", at_least=0, below=1)
    adam_eps: float = option(1e-8, "Adam epsilon", above=0)
    adam_weight_decay: float = option(0.0, "decoupled (AdamW) weight decay for the Adam groups", at_least=0)
    grad_clip_norm: float = option(0.0, "clip the global gradient norm to this (0 = off)", at_least=0)



@dataclass
class TrainSection(Section):
    iterations: int = option(20000, "step cap", at_least=1)
    max_wallclock_seconds: float = option(600.0, "training time cap (0 = none; warmdown then counts iterations)", at_least=0)
    warmdown_iters: int = option(1200, "lr decays linearly to 0 over the last this-many steps (converted to wallclock under a cap)", at_least=0)
    warmdown_frac: float = option(0.0, "lr decays linearly to 0 over the last this fraction of training (of max_wallclock_seconds "
                                       "under a cap, else of iterations; PR #1855: 0.85); needs warmdown_iters = 0; 0 = off",
                                  at_least=0, at_most=1)
    min_lr_scale: float = option(0.0, "floor of the warmdown's lr scale: lr never falls below this times base_lr (PR #1787's MIN_LR, 0.1)",
                                 at_least=0, below=1)
    warmup_steps: int = option(20, "compile warm-up steps; model and optimizer state are restored afterwards", at_least=0)
    batch_tokens: int = option(524288, "tokens per optimizer step, across all processes", at_least=1)
    seq_len: int = option(1024, "training sequence length", at_least=1)
    micro_batches: int = option(8, "micro-batches per step across all processes (gradient accumulation = micro_batches / world size, rounded up to a split that keeps batch_tokens)", at_least=1)
    val_every: int = option(1000, "validate every N steps (0 = only at the end); the training clock is paused", at_least=0)
    log_every: int = option(200, "log train loss every N steps", at_least=1)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto = cuda when available")
    compile: Literal["auto", "on", "off"] = option("auto", "torch.compile(fullgraph=True); auto = on for cuda")
    checkpoint_every: int | str = option(
        0, 'write a resumable checkpoint every N steps, or every "Ns" seconds of training time (e.g. "300s"); 0 = off'
    )
    max_loss_spike: float = option(
        0.0, "stop as diverged when a logged train loss exceeds this factor times the mean of the 10 logged before it (0 = off)",
        at_least=0,
    )
    activation_dtype: Literal["auto", "bfloat16", "float32"] = option(
        "auto", "dtype of the embedding output and residual stream (weights stay fp32); auto = bfloat16 on CUDA, float32 on CPU"
    )

    def check(self) -> None:
        self.checkpoint_interval  # raises on a malformed value
        if self.max_loss_spike and self.max_loss_spike <= 1:
            raise self.invalid("max_loss_spike", f"{self.max_loss_spike} must be > 1 (or 0 = off)")
        if self.batch_tokens % (self.micro_batches * self.seq_len):
            raise self.invalid("batch_tokens", f"{self.batch_tokens} is not a multiple of micro_batches*seq_len")
        if self.warmdown_frac and self.warmdown_iters:
            raise self.invalid("warmdown_frac", f"set warmdown_iters = 0 to warm down by fraction (it is {self.warmdown_iters}); one warmdown at a time")

    @property
    def checkpoint_interval(self) -> tuple[int, float]:
        """(steps, seconds) between checkpoints from `checkpoint_every`; (0, 0.0) when off."""
        value = self.checkpoint_every
        if isinstance(value, int):
            if value < 0:
                raise self.invalid("checkpoint_every", f"{value} must be >= 0 steps")
            return value, 0.0
        seconds = value.removesuffix("s")
        try:
            parsed = float(seconds) if value.endswith("s") else -1.0
        except ValueError:
            parsed = -1.0
        if not parsed > 0:
            raise self.invalid("checkpoint_every", f'{value!r} is not a step count or seconds like "300s"')
        return 0, parsed


@dataclass
class EvalSection(Section):
    seq_len: int = option(0, "eval window length (0 = train.seq_len)", at_least=0)
    stride: int = option(0, "score the last `stride` targets of each window (0 = seq_len: non-overlapping)", at_least=0)
    batch_seqs: int = option(32, "windows per forward pass", at_least=1)
    chunk_tokens: int = option(32768, "targets per score-then-observe chunk for eval adapters", at_least=1)
    adapter_prefixes: bool = option(True, "score every prefix of the eval adapters (each one's gain visible); false: only the full list")
    time_cap_seconds: float = option(0.0, "fail the run when the final stage's evaluation takes longer (0 = only the challenge's 600 s, checked on 8xH100)", at_least=0)

    def check(self) -> None:
        if self.seq_len and self.stride > self.seq_len:
            raise self.invalid("stride", f"{self.stride} exceeds seq_len {self.seq_len}")


@dataclass
class ExportSection(Section):
    budget_bytes: int = option(16_000_000, "artifact budget: compressed model + code bytes (decimal)", at_least=1)
    float_max_numel: int = option(65536, "tensors with at most this many elements are kept in float", at_least=0)
    zstd_level: int = option(22, "zstd compression level of the core compressor", at_least=1, at_most=22)
    smallest_layout: bool = option(True, "store each tensor in whichever lossless byte layout the compressor shrinks most")



CORE_SECTIONS: dict[str, type[Section]] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "optim": OptimSection,
    "train": TrainSection,
    "eval": EvalSection,
    "export": ExportSection,
}


@dataclass
class RunConfig:
    """A fully resolved recipe: every core section plus the enabled plugins' configs."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)
    plugins: dict[str, Section] = field(default_factory=dict)
    source: str = "<defaults>"
    tokens: SpecialTokens = field(default_factory=SpecialTokens)  # not a recipe key: the corpus tokenizer's (golfcore.run)

    @property
    def eval_seq_len(self) -> int:
        return self.eval.seq_len or self.train.seq_len

    @property
    def eval_stride(self) -> int:
        return self.eval.stride or self.eval_seq_len

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS}
        out["plugins"] = {name: dataclasses.asdict(cfg) for name, cfg in self.plugins.items()}
        return out
