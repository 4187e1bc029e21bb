"""Per-group artifact compressor: role buckets, rows in L1 nearest-neighbour order, a back-end per group
(docs/techniques.md §3.12; PR #1855).

The artifact's container (safetensors) is split: every stored 1-byte tensor of 2 dims and at least
`min_bytes` (integer levels) goes to the bucket of its role, its state key with layer indices as
"*" (`layers.*.up.q`: the same matrix of every layer together); the rest of the container, header
included, stays one piece. In each bucket a matrix's rows are reordered greedily: start at row 0,
then always the unused row nearest in L1 distance, so neighbouring rows in the stream are similar;
the order is stored (uint16, brotli'd). Rows are then written column by column (`transpose`).
Each bucket is compressed by the back-end: lrzip's ZPAQ (`lrzip -z -L 9 -T`) when the binary is
installed, else brotli (`backend = "auto"`), or the one named; the rest and the orders by brotli.

The output records the back-end it used, so loading needs lrzip only for an artifact made with it.
A CRC32 of the whole container closes the stream. Bytes that are not a safetensors container (e.g.
`export.smallest_layout` measuring a sample) are brotli'd whole.
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import brotli
import numpy as np
import torch

import golfcore as golf

MAGIC = b"PGRP"
BACKENDS = ("auto", "lrzip", "brotli", "lzma")
INT_DTYPES = {"I8": np.int8, "U8": np.uint8}


@dataclass
class Config(golf.Section):
    backend: str = golf.option("auto", "\"auto\" (lrzip when installed, else brotli), \"lrzip\", \"brotli\" or \"lzma\"")
    sort_rows: bool = golf.option(True, "reorder each matrix's rows by L1 nearest neighbour (the order is stored)")
    transpose: bool = golf.option(True, "write each bucket's matrices column by column")
    min_bytes: int = golf.option(4096, "smaller integer tensors stay with the rest of the container")

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise self.invalid("backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "lrzip" and shutil.which("lrzip") is None:
            raise self.invalid("backend", "\"lrzip\" needs the lrzip binary on PATH (apt-get install lrzip); \"auto\" falls back to brotli")


def l1_order(rows: np.ndarray) -> np.ndarray:
    """Greedy nearest-neighbour order of `rows` [R, C] by L1 distance, from row 0 (uint16 [R])."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.from_numpy(rows.astype(np.float32)).to(device)
    n = x.size(0)
    used = torch.zeros(n, dtype=torch.bool, device=device)
    order = [0]
    used[0] = True
    for _ in range(n - 1):
        d = (x - x[order[-1]]).abs().sum(1)  # integer sums: exact in float32
        d[used] = float("inf")
        nxt = int(d.argmin())
        order.append(nxt)
        used[nxt] = True
    return np.asarray(order, dtype=np.uint16)


def lrzip_available() -> bool:
    return shutil.which("lrzip") is not None


def _lrzip(data: bytes, decompress: bool) -> bytes:
    with tempfile.TemporaryDirectory(prefix="golf-lrzip-") as tmp:
        src, dst = Path(tmp) / ("in.lrz" if decompress else "in"), Path(tmp) / "out"
        src.write_bytes(data)
        args = ["-d"] if decompress else ["-z", "-L", "9", "-T"]  # -T: no LZ4 pre-test, which stores int6 levels raw
        subprocess.run(["lrzip", *args, "-q", "-f", "-o", str(dst), str(src)], check=True, capture_output=True)
        return dst.read_bytes()


def backend_compress(name: str, data: bytes) -> bytes:
    if name == "lrzip":
        return _lrzip(data, decompress=False)
    if name == "lzma":
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    return brotli.compress(data, quality=11, lgwin=24)


def backend_decompress(name: str, data: bytes) -> bytes:
    if name == "lrzip":
        if not lrzip_available():
            raise ValueError("this artifact's groups were compressed with lrzip, which is not installed (apt-get install lrzip)")
        return _lrzip(data, decompress=True)
    if name == "lzma":
        return lzma.decompress(data)
    return brotli.decompress(data)


def _container(data: bytes) -> tuple[int, dict] | None:
    """(data start, tensor table) of a safetensors container, None for other bytes."""
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    return 8 + n, {k: v for k, v in header.items() if k != "__metadata__"}


class PerGroupCompressor:
    """golf.Compressor: see the module doc. `report` describes the last compression (the run logs it)."""

    name = "pergroup"

    def __init__(self, backend: str = "auto", sort_rows: bool = True, transpose: bool = True, min_bytes: int = 4096):
        self.backend = ("lrzip" if lrzip_available() else "brotli") if backend == "auto" else backend
        self.sort_rows, self.transpose, self.min_bytes = sort_rows, transpose, min_bytes
        self.report = ""

    def _groups(self, table: dict) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name, t in table.items():
            start, end = t["data_offsets"]
            if t["dtype"] in INT_DTYPES and len(t["shape"]) == 2 and end - start >= self.min_bytes:
                groups.setdefault(re.sub(r"\.\d+(?=\.|$)", ".*", name), []).append(name)
        return {k: sorted(v, key=lambda n: table[n]["data_offsets"][0]) for k, v in sorted(groups.items())}

    def compress(self, data: bytes) -> bytes:
        t0 = time.perf_counter()
        parsed = _container(data)
        groups = self._groups(parsed[1]) if parsed else {}
        if not groups:
            return self._frame({"groups": [], "backend": self.backend}, [brotli.compress(data, quality=11, lgwin=24)], data)
        base, table = parsed
        cuts = sorted((base + table[n]["data_offsets"][0], base + table[n]["data_offsets"][1]) for g in groups.values() for n in g)
        rest, at = bytearray(), 0
        for start, end in cuts:
            rest += data[at:start]
            at = end
        rest += data[at:]
        streams, orders = [], bytearray()
        for names in groups.values():
            blob = bytearray()
            for name in names:
                t = table[name]
                start, end = t["data_offsets"]
                rows = np.frombuffer(data, INT_DTYPES[t["dtype"]], count=end - start, offset=base + start).reshape(t["shape"])
                if self.sort_rows and rows.shape[0] <= 65536:
                    order = l1_order(rows)
                    orders += order.tobytes()
                    rows = rows[order]
                blob += np.ascontiguousarray(rows.T if self.transpose else rows).tobytes()
            streams.append(backend_compress(self.backend, bytes(blob)))
        manifest = {"groups": list(groups.values()), "backend": self.backend, "sorted": self.sort_rows, "transposed": self.transpose}
        out = self._frame(manifest, [brotli.compress(bytes(rest), quality=11, lgwin=24), brotli.compress(bytes(orders), quality=11), *streams], data)
        self.report = (f"pergroup: {len(groups)} groups via {self.backend}{' (lrzip installed)' if self.backend == 'lrzip' else ''}, "
                       f"rows {'L1-sorted' if self.sort_rows else 'as stored'}; groups {sum(map(len, streams))} B, "
                       f"rest {len(out) - sum(map(len, streams))} B; {time.perf_counter() - t0:.1f}s")
        return out

    @staticmethod
    def _frame(manifest: dict, streams: list[bytes], data: bytes) -> bytes:
        head = json.dumps(manifest, separators=(",", ":")).encode()
        lengths = struct.pack(f"<{len(streams)}I", *map(len, streams))
        return (MAGIC + struct.pack("<II", len(head), len(streams)) + head + lengths + b"".join(streams)
                + struct.pack("<I", zlib.crc32(data)))

    def decompress(self, blob: bytes) -> bytes:
        if blob[:4] != MAGIC:
            raise ValueError("pergroup: no PGRP magic")
        n_head, n = struct.unpack("<II", blob[4:12])
        manifest = json.loads(blob[12 : 12 + n_head])
        at = 12 + n_head
        lengths = struct.unpack(f"<{n}I", blob[at : at + 4 * n])
        at += 4 * n
        streams = []
        for length in lengths:
            streams.append(blob[at : at + length])
            at += length
        if not manifest["groups"]:
            data = brotli.decompress(streams[0])
        else:
            data = self._reassemble(manifest, streams)
        if struct.pack("<I", zlib.crc32(data)) != blob[at : at + 4]:
            raise ValueError("pergroup: CRC32 mismatch")
        return data

    @staticmethod
    def _reassemble(manifest: dict, streams: list[bytes]) -> bytes:
        rest = brotli.decompress(streams[0])
        orders = np.frombuffer(brotli.decompress(streams[1]), np.uint16)
        base, table = _container(rest)
        pieces: dict[str, bytes] = {}
        used = 0
        for names, stream in zip(manifest["groups"], streams[2:]):
            blob, at = backend_decompress(manifest["backend"], stream), 0
            for name in names:
                t = table[name]
                shape, dtype = t["shape"], INT_DTYPES[t["dtype"]]
                size = t["data_offsets"][1] - t["data_offsets"][0]
                rows = np.frombuffer(blob, dtype, count=size, offset=at)
                at += size
                rows = rows.reshape(shape[::-1]).T if manifest["transposed"] else rows.reshape(shape)
                if manifest["sorted"] and shape[0] <= 65536:
                    order = orders[used : used + shape[0]].astype(np.int64)
                    used += shape[0]
                    restored = np.empty_like(rows)
                    restored[order] = rows
                    rows = restored
                pieces[name] = np.ascontiguousarray(rows).tobytes()
        # walk the original layout: `rest` is the container with the grouped ranges cut out
        out, taken, position = bytearray(), 0, 0
        for name in sorted(pieces, key=lambda n: table[n]["data_offsets"][0]):
            start = base + table[name]["data_offsets"][0]
            out += rest[taken : taken + start - position]
            taken += start - position
            out += pieces[name]
            position = start + len(pieces[name])
        out += rest[taken:]
        return bytes(out)


class PerGroup(golf.Plugin):
    name = "pergroup"
    description = "per-group compressor: role buckets, L1-sorted rows, lrzip ZPAQ when installed else brotli (PR #1855)"
    Config = Config

    @golf.hookimpl
    def golf_compressor(self, config):
        c = self.config
        return PerGroupCompressor(c.backend, c.sort_rows, c.transpose, c.min_bytes)
