"""The artifact: quantize, compress, round-trip load, and size accounting.

`model.golf` layout:

    b"GOLF" | u8 format version | u8 n | compressor name (n ASCII bytes) | compressed container

The compressor's name sits in front in plain bytes because it must be known before the
payload can be decompressed. Format 2 adds per-entry byte layouts (see `pack`). The container is a safetensors blob: raw tensor bytes plus a
JSON header, so loading it never executes code (no pickle, unlike the reference's
`torch.save`). Its metadata key "golf" records the format version, the quantizer and
compressor names, and per state key: original dtype and shape, the stored tensor names and
the quantizer's scheme info. `unpack` picks the quantizer and compressor by those names.

Artifact bytes = len(model.golf) + code bytes, against `export.budget_bytes` (16,000,000,
decimal). Code bytes are the challenge's: the UTF-8 bytes of the run's `train_gpt.py`, the one
self-contained script golfcore.bundle writes (the golfcore modules the run imports, the enabled
plugins' modules and the resolved recipe, lzma-compressed inside it). The CLI, tooling, tests,
docs and disabled plugins are not in it. `report` only adds up what it is given.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import zstandard
from torch import Tensor

from .contract import Compressor, Quantizer
from .errors import ConfigError, DataError
from .params import ParamSpec, spec_of

MAGIC = b"GOLF"
FORMAT_VERSION = 2
CLIP_PERCENTILE = 99.99984
"""The baseline's per-row clip: |w| above this percentile of its row is clipped (docs/techniques.md §0)."""


def row_quantiles(w: Tensor, qs: Iterable[float]) -> Tensor:
    """q-quantiles of |w| along the last dim ([..., cols] -> [len(qs), ...]), linear interpolation
    like torch.quantile (which refuses inputs over 16M elements). Differentiable through the
    selected values.

    Only the top of each row is needed: the q-quantile of n values sits between the sorted
    values at floor(q(n-1)) and the one after, so `topk` of the n - floor(q_min(n-1)) largest
    |w| (2 per row for q = 0.999 at n = 512) gives exactly the values a full sort would."""
    qs = [float(q) for q in qs]
    a = w.float().abs()
    n = a.size(-1)
    positions = [q * (n - 1) for q in qs]
    k = n - math.floor(min(positions))
    top = a.topk(k, dim=-1).values  # [..., k], descending: sorted index i is top[..., n - 1 - i]
    out = []
    for pos in positions:
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        out.append(torch.lerp(top[..., n - 1 - lo], top[..., n - 1 - hi], pos - lo))
    return torch.stack(out)


def fp16_round(x: Tensor) -> Tensor:
    """x.to(float16).float() for float32 |x| <= 65504, written without a dtype cast: inductor
    drops a float32->float16->float32 round trip inside a fused kernel (emulate_precision_casts is
    off by default), which would give compiled QAT a slightly different grid than the export.
    Rounds to fp16's spacing, 2^(e-10) (e = x's binary exponent, at least 2^-24), half to even."""
    exponent = (x.view(torch.int32) >> 23) & 0xFF  # biased float32 exponent
    spacing = ((exponent - 10).clamp_min(127 - 24) << 23).view(torch.float32)  # a power of two
    return torch.round(x / spacing) * spacing


def to_float16(name: str, tensor: Tensor) -> Tensor:
    """fp16 copy; refuses to turn finite values into inf silently."""
    out = tensor.to(torch.float16)
    if not torch.isfinite(out).all() and torch.isfinite(tensor).all():
        raise ValueError(f"{name}: values exceed the float16 range (declare it float32)")
    return out


class Int8Quantizer:
    """The challenge baseline's export (docs/techniques.md §0), with defect D15 fixed.

    - non-float tensors: stored as is;
    - export "quantize"/"embedding" with numel > float_max_numel: int8 per row (last dim),
      clip at the 99.99984th percentile of |w| in the row, step = clip/127 stored as fp16.
      No step floor by default: the reference's max(clip/127, 1/127) wastes levels on rows
      with clip < 1 (D15); `scale_floor=True` restores it, for comparison. A row with
      clip == 0 (or a step below fp16's range) stores zeros.
    - everything else: fp32 if declared "float32", otherwise fp16.
    """

    name = "int8"
    max_level = 127  # largest stored |level| of the integer grid (artifact projections read it)

    def __init__(self, float_max_numel: int = 65536, scale_floor: bool = False):
        self.float_max_numel = float_max_numel
        self.scale_floor = scale_floor

    def _int8_rows(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """q [..., cols] (float, integer values) and step [...] (fp32 holding the fp16 value that
        is stored), so every unclipped element comes back within step/2. Plain tensor code:
        fake_quantize runs it inside compiled graphs."""
        w32 = w.detach().float()
        clip = row_quantiles(w32, [CLIP_PERCENTILE / 100])[0].unsqueeze(-1)  # [..., 1]
        raw = clip.squeeze(-1) / 127  # [...]
        step = fp16_round(raw.clamp_min(1 / 127) if self.scale_floor else raw)
        s = step.unsqueeze(-1)
        q = torch.round(torch.clamp(w32, -clip, clip) / torch.where(s > 0, s, 1.0)).clamp(-127, 127)
        return q, step

    def quantize(self, name: str, tensor: Tensor, export: str) -> tuple[dict[str, Tensor], dict]:
        if not tensor.is_floating_point():
            return {name: tensor}, {"scheme": "raw"}
        if export in ("quantize", "embedding") and tensor.numel() > self.float_max_numel:
            q, step = self._int8_rows(tensor)
            return {f"{name}.q": q.to(torch.int8), f"{name}.scale": to_float16(name, step)}, {"scheme": "int8_row"}
        if export == "float32":
            return {name: tensor.float()}, {"scheme": "float32"}
        if export in ("quantize", "embedding", "float16"):
            return {name: to_float16(name, tensor)}, {"scheme": "float16"}
        raise ValueError(f"{name}: unknown export kind {export!r}")

    def dequantize(self, name: str, stored: dict[str, Tensor], info: dict) -> Tensor:
        scheme = info.get("scheme")
        if scheme == "int8_row":
            return stored[f"{name}.q"].float() * stored[f"{name}.scale"].float().unsqueeze(-1)
        if scheme in ("raw", "float16", "float32"):
            return stored[name]
        raise DataError(f"artifact tensor {name!r}: unknown int8 scheme {scheme!r}: corrupt")

    def row_step(self, weight: Tensor) -> Tensor:
        return row_quantiles(weight, [CLIP_PERCENTILE / 100])[0] / 127

    def fake_quantize(self, weight: Tensor) -> Tensor:
        """Same rule as `quantize(..., "quantize")`: small matrices round-trip through fp16."""
        if weight.numel() <= self.float_max_numel:
            return fp16_round(weight.detach().float()).to(weight.dtype)
        q, step = self._int8_rows(weight)
        return (q * step.unsqueeze(-1)).to(weight.dtype)


class ZstdCompressor:
    """zstd with a content checksum, so a flipped byte fails loudly instead of loading."""

    name = "zstd"

    def __init__(self, level: int = 22):
        self.level = level

    def compress(self, data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zstandard.ZstdDecompressor().decompress(data)


def _storage_key(t: Tensor) -> tuple | None:
    """Identity of a tensor's memory view (tied weights appear under two state keys)."""
    if t.numel() == 0:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


# ----------------------------------------------------------------------------- byte layouts

LAYOUT_MIN_BYTES = 4096
"""Smaller stored tensors keep the plain layout: a layout record in the header costs ~80 bytes."""
LAYOUT_SAMPLE_BYTES = 1 << 18
"""Layouts are compared on the tensor's first rows up to this many bytes (all of a smaller tensor),
so choosing costs about one extra compression of 256 KiB per tensor, not four of the tensor."""


def _layout_candidates(t: Tensor) -> list[dict]:
    """The lossless layouts tried for a stored tensor: its elements in row order (as is) or, for
    a matrix, in column order; their bytes as they are, split into byte planes (multi-byte
    dtypes: all first bytes, then all second bytes, ...), or shifted to start at 0 (int8)."""
    orders = ["rows", "cols"] if t.ndim >= 2 else ["rows"]
    forms = ["plain", "planes"] if t.element_size() > 1 else ["plain", "shift"] if t.dtype == torch.int8 else ["plain"]
    return [{"order": order, "bytes": form} for order in orders for form in forms]


def _encode_layout(t: Tensor, layout: dict) -> Tensor:
    x = t.reshape(-1, t.size(-1)).t() if layout["order"] == "cols" else t  # cols: [last dim, rest]
    x = x.contiguous()
    if layout["bytes"] == "planes":
        return x.view(torch.uint8).reshape(-1, x.element_size()).t().contiguous().reshape(-1)  # uint8 [size*numel]
    if layout["bytes"] == "shift":
        return (x.to(torch.int16) - layout["shift"]).to(torch.uint8)
    return x


def _decode_layout(stored: Tensor, layout: dict) -> Tensor:
    """The inverse of `_encode_layout`, from the dtype and shape the layout record keeps."""
    dtype, shape = _dtype(layout["dtype"]), list(layout["shape"])
    rows = math.prod(shape[:-1])
    encoded_shape = [shape[-1], rows] if layout["order"] == "cols" else shape
    if layout["bytes"] == "planes":
        size = torch.empty((), dtype=dtype).element_size()
        x = stored.reshape(size, -1).t().contiguous().view(dtype)
    elif layout["bytes"] == "shift":
        x = (stored.to(torch.int16) + int(layout["shift"])).to(torch.int8)
    else:
        x = stored
    x = x.reshape(encoded_shape)
    return x.t().reshape(shape) if layout["order"] == "cols" else x


def _raw_bytes(t: Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _smallest_layout(t: Tensor, compressor: Compressor) -> tuple[Tensor, dict | None]:
    """(tensor to store, layout record or None for the plain layout): the candidate whose bytes,
    compressed alone by `compressor`, are fewest (on the first LAYOUT_SAMPLE_BYTES of rows). Which wins depends on the compressor (column
    order helps lzma on int6 rows and costs zstd several percent), so it is measured, not assumed."""
    if t.numel() * t.element_size() < LAYOUT_MIN_BYTES:
        return t, None
    rows = t.reshape(-1, t.size(-1)) if t.ndim >= 2 else t
    row_bytes = rows[0].numel() * t.element_size() if t.ndim >= 2 else t.element_size()
    sample = rows[: max(1, LAYOUT_SAMPLE_BYTES // row_bytes)]
    best = None
    for layout in _layout_candidates(t):
        if layout["bytes"] == "shift":
            layout["shift"] = int(t.min())
        size = len(compressor.compress(_raw_bytes(_encode_layout(sample, layout))))
        if best is None or size < best[0]:
            best = (size, layout)
    layout = best[1]
    if layout == {"order": "rows", "bytes": "plain"}:
        return t, None
    return _encode_layout(t, layout), {**layout, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}


def pack(state: dict[str, Tensor], specs: dict[str, ParamSpec], quantizer: Quantizer, compressor: Compressor,
         smallest_layout: bool = True) -> bytes:
    """state_dict -> artifact bytes.

    Keys with a declared spec go through `quantizer` with their export kind. Keys without
    one (persistent buffers) are stored exactly as they are. Keys sharing one tensor (tied
    embeddings: `named_parameters` declares only one of the names) are stored once, under
    the declared key, and the others recorded as aliases.

    With `smallest_layout`, each stored tensor (int6 levels, int8 levels, fp16 steps, float
    tensors) is written in whichever of its lossless byte layouts `compressor` shrinks most
    when compressing it alone (`_layout_candidates`), recorded in the entry's "layouts". The
    values loaded back are the same in every layout: only the byte count changes.
    """
    # Tied weights: one storage under several keys; store it under the first declared key.
    holders: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        key = _storage_key(tensor)
        if key is not None:
            holders.setdefault(key, []).append(name)
    owner = {n: next((m for m in names if m in specs), names[0]) for names in holders.values() for n in names}

    prepare = getattr(quantizer, "prepare", None)  # a quantizer that chooses across tensors (golf.Quantizer)
    if prepare is not None:
        prepare({n: t for n, t in state.items() if owner.get(n, n) == n}, specs)
    tensors: dict[str, Tensor] = {}
    entries: dict[str, dict] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if owner.get(name, name) != name:
            entries[name] = {"kind": "alias", "of": owner[name]}
            continue
        spec = specs.get(name)
        if spec is None:
            kind, stored, info = "raw", {name: tensor}, {}
        else:
            stored, info = quantizer.quantize(name, tensor, spec.export)
            kind = "quantized"
        for k in stored:
            if not k.startswith(name) or k in tensors:
                raise ValueError(f"quantizer {quantizer.name!r}: stored name {k!r} for {name!r} must start with it and be unique")
        stored = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in stored.items()}
        layouts = {}
        if smallest_layout:
            for k, v in stored.items():
                stored[k], layout = _smallest_layout(v, compressor)
                if layout:
                    layouts[k] = layout
        tensors.update(stored)
        entries[name] = {
            "kind": kind,
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "stored": list(stored),
            "info": info,
        }
        if layouts:
            entries[name]["layouts"] = layouts
    header = {"format": FORMAT_VERSION, "quantizer": quantizer.name, "compressor": compressor.name, "tensors": entries}
    container = safetensors.torch.save(tensors, metadata={"golf": json.dumps(header)})
    cname = compressor.name.encode("ascii")
    if len(cname) > 255:
        raise ValueError(f"compressor name {compressor.name!r} is longer than 255 bytes")
    return MAGIC + struct.pack("<BB", FORMAT_VERSION, len(cname)) + cname + compressor.compress(container)


def _corrupt(why: str) -> DataError:
    return DataError(f"artifact ({why}): corrupt")


def _pick(available: dict, name: str, what: str):
    if name not in available:
        known = ", ".join(sorted(available)) or "none"
        raise ConfigError(
            f"artifact was packed with {what} {name!r}, which is not available (known: {known}); enable the plugin that provides it"
        )
    return available[name]


def _container_header(container: bytes) -> dict:
    """The "golf" metadata of a safetensors blob (8-byte little-endian length, then JSON)."""
    if len(container) < 8:
        raise _corrupt("container shorter than its header")
    (n,) = struct.unpack("<Q", container[:8])
    try:
        meta = json.loads(container[8 : 8 + n])["__metadata__"]
        header = json.loads(meta["golf"])
    except (ValueError, KeyError, TypeError) as e:
        raise _corrupt(f"unreadable container metadata: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
        raise _corrupt("container metadata has no tensor table")
    return header


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise _corrupt(f"unknown dtype {name!r}")
    return dtype


def unpack(blob: bytes, quantizers: dict[str, Quantizer], compressors: dict[str, Compressor]) -> dict[str, Tensor]:
    """Artifact bytes -> state_dict with every key, shape and dtype of the packed state.

    Raises DataError for a corrupt or truncated blob, ConfigError when the quantizer or
    compressor it names is not among those given.
    """
    if len(blob) < 6:
        raise _corrupt(f"{len(blob)} bytes, shorter than the header")
    if blob[:4] != MAGIC:
        raise _corrupt("no GOLF magic")
    version, n = struct.unpack("<BB", blob[4:6])
    if version != FORMAT_VERSION:
        raise DataError(f"artifact format version {version} is not supported (this golf reads {FORMAT_VERSION})")
    if len(blob) < 6 + n:
        raise _corrupt("truncated header")
    compressor = _pick(compressors, blob[6 : 6 + n].decode("ascii", errors="replace"), "compressor")
    try:
        container = compressor.decompress(blob[6 + n :])
    except Exception as e:  # any failure of a compressor plugin means the payload is bad
        raise _corrupt(f"{compressor.name} decompression failed: {e}") from e
    header = _container_header(container)
    if header.get("format") != FORMAT_VERSION:
        raise _corrupt(f"container format {header.get('format')!r}")
    quantizer = _pick(quantizers, str(header.get("quantizer")), "quantizer")
    try:
        tensors = safetensors.torch.load(container)
    except Exception as e:  # SafetensorError and friends: the tensor table is damaged
        raise _corrupt(f"unreadable tensors: {e}") from e

    state: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name, entry in header["tensors"].items():
        try:
            if entry["kind"] == "alias":
                aliases[name] = entry["of"]
                continue
            layouts = entry.get("layouts", {})
            stored = {k: _decode_layout(tensors[k], layouts[k]) if k in layouts else tensors[k] for k in entry["stored"]}
            if entry["kind"] == "raw":
                (t,) = stored.values()
            elif entry["kind"] == "quantized":
                t = quantizer.dequantize(name, stored, entry["info"])
            else:
                raise ValueError(f"unknown kind {entry['kind']!r}")
            dtype, shape = _dtype(entry["dtype"]), list(entry["shape"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise _corrupt(f"entry {name!r}: {e!r}") from None
        if list(t.shape) != shape:
            raise _corrupt(f"{name!r} has shape {list(t.shape)}, header says {shape}")
        state[name] = t.to(dtype)
    for name, target in aliases.items():
        if target not in state:
            raise _corrupt(f"{name!r} aliases missing {target!r}")
        state[name] = state[target]
    return {name: state[name] for name in header["tensors"]}  # the packed key order


@dataclass
class GroupBytes:
    """What one group of tensors takes in the artifact."""

    group: str  # state keys with their layer indices as "*", e.g. "layers.*.up"
    params: int  # elements of the group's tensors before export
    schemes: list[str]  # the quantizer's schemes for them (int_row, int8_row, float16, ...)
    stored_bytes: int  # bytes in the container, before compression
    compressed_bytes: int  # those bytes compressed alone by the artifact's compressor


def tensor_group(name: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def group_bytes(blob: bytes, compressor: Compressor) -> list[GroupBytes]:
    """Bytes per tensor group of an artifact packed with `compressor`, largest first.

    Method: each group's stored bytes (in their stored layout) are compressed on their own. The
    groups' sum differs from the model bytes by the container header and by what the compressor
    finds across groups in one stream (a few per cent for lzma/zstd on weights)."""
    container = compressor.decompress(blob[6 + blob[5] :])
    entries = _container_header(container)["tensors"]
    tensors = safetensors.torch.load(container)
    raw: dict[str, list[bytes]] = {}
    groups: dict[str, GroupBytes] = {}
    for name, entry in entries.items():
        if entry["kind"] == "alias":
            continue
        key = tensor_group(name)
        g = groups.setdefault(key, GroupBytes(key, 0, [], 0, 0))
        g.params += math.prod(entry["shape"])
        scheme = entry["info"].get("scheme", entry["kind"])
        if scheme not in g.schemes:
            g.schemes.append(scheme)
        for k in entry["stored"]:
            raw.setdefault(key, []).append(_raw_bytes(tensors[k]) if tensors[k].numel() else b"")
    for key, g in groups.items():
        data = b"".join(raw.get(key, []))
        g.stored_bytes, g.compressed_bytes = len(data), len(compressor.compress(data))
    return sorted(groups.values(), key=lambda g: -g.compressed_bytes)


@dataclass
class ArtifactReport:
    model_bytes: int
    code_bytes: int
    total_bytes: int
    budget_bytes: int
    within_budget: bool
    groups: list[GroupBytes]


def report(model_blob: bytes, code: int, budget: int, groups: list[GroupBytes] = ()) -> ArtifactReport:
    """Model + code bytes against the budget (the challenge's limit is inclusive: total <= budget)."""
    total = len(model_blob) + code
    return ArtifactReport(
        model_bytes=len(model_blob),
        code_bytes=code,
        total_bytes=total,
        budget_bytes=budget,
        within_budget=total <= budget,
        groups=list(groups),
    )


# ----------------------------------------------------------------------------- projection before training

PROJECTION_MARGIN = 0.05
"""Added to the projected model bytes. Measured against it (docs/performance.md, "Projection against
measurement"): the entropy below over-counts a compressor's output by a few per cent on trained weights,
whose levels are more peaked than a Gaussian's; the margin covers the container, steps and what it misses."""


def level_entropy_bits(spread: float, max_level: int) -> float:
    """Bits per value of clamp(round(z · spread), ±max_level) for z ~ N(0, 1): the entropy of a
    Gaussian row's integer levels when one step is 1/spread of the row's std, which is about what
    an entropy coder needs per value."""
    if spread <= 0:
        return 0.0

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    bits = 0.0
    for q in range(-max_level, max_level + 1):
        lo = 0.0 if q == -max_level else cdf((q - 0.5) / spread)
        hi = 1.0 if q == max_level else cdf((q + 0.5) / spread)
        if hi > lo:
            bits -= (hi - lo) * math.log2(hi - lo)
    return bits


def clip_spread(max_level: int, cols: int) -> float:
    """Steps per std of a row clipped at its largest |w|: a Gaussian row of `cols` values reaches about
    sqrt(2 ln cols) stds (the int8 and GPTQ-lite percentile clips are at or near the maximum)."""
    return max_level / math.sqrt(2 * math.log(max(cols, 2)))


def precision_bytes(model: torch.nn.Module, quantizer: Quantizer, float_max_numel: int) -> int:
    """Parameter count × export precision, in bytes: the declared export kinds as the core's rules
    store them (integer rows at the quantizer's level width plus an fp16 step per row, float16,
    float32, or the quantizer's `float32_bits` when it stores them narrower). A quantizer without
    `max_level` counts as int8."""
    level_bits = math.ceil(math.log2(2 * getattr(quantizer, "max_level", 127) + 1))
    float32_bits = getattr(quantizer, "float32_bits", 32)
    bits = 0
    for p in model.parameters():
        export, n = spec_of(p).export, p.numel()
        rows = n // p.shape[-1] if p.ndim else 1
        if export in ("quantize", "embedding") and n > float_max_numel:
            bits += n * (level_bits if export == "quantize" else 8) + 16 * rows
        else:
            bits += n * (float32_bits if export == "float32" else 16)
    return math.ceil(bits / 8)


def projected_model_bytes(model: torch.nn.Module, quantizer: Quantizer, float_max_numel: int) -> int:
    """Model bytes projected from the tensor shapes and the quantizer's grid, before any weight is
    trained: integer rows at `level_entropy_bits` per value (the quantizer's `level_spread(name,
    export, cols)` when it has one: GPTQ's SDClip; else a clip at the row's maximum on its
    `max_level` grid, int8 for embeddings) plus an fp16 step per row; float tensors at their width
    (they barely compress; "float32" ones at the quantizer's `float32_bits` when it has them);
    times 1 + PROJECTION_MARGIN."""
    float32_bits = getattr(quantizer, "float32_bits", 32)
    bits = 0.0
    for name, p in model.named_parameters():
        export, n = spec_of(p).export, p.numel()
        cols = p.shape[-1] if p.ndim else 1
        if export in ("quantize", "embedding") and n > float_max_numel and p.ndim >= 2:
            top = getattr(quantizer, "max_level", 127) if export == "quantize" else 127
            spread_of = getattr(quantizer, "level_spread", None)
            found = spread_of(name, export, cols) if spread_of else None
            spread, top = found if found else (clip_spread(top, cols), top)
            bits += n * level_entropy_bits(spread, top) + 16 * (n // cols)
        else:
            bits += n * (float32_bits if export == "float32" else 16)
    return math.ceil(bits / 8 * (1 + PROJECTION_MARGIN))


@dataclass
class ArtifactProjection:
    precision_bytes: int
    model_bytes: int  # projected, margin included
    total_bytes: int  # model + code bytes
    budget_bytes: int

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes


def project(model: torch.nn.Module, quantizer: Quantizer, float_max_numel: int, code: int, budget: int) -> ArtifactProjection:
    """The artifact a run of this model would produce, before training it."""
    model_bytes = projected_model_bytes(model, quantizer, float_max_numel)
    return ArtifactProjection(precision_bytes(model, quantizer, float_max_numel), model_bytes, model_bytes + code, budget)
