"""brotli artifact compressor (quality 11, 16 MiB window), as the frontier records use (docs/techniques.md §3.12)."""

from __future__ import annotations

from dataclasses import dataclass

import struct
import zlib

import brotli as _brotli

import golfcore as golf


@dataclass
class Config(golf.Section):
    quality: int = golf.option(11, "0..11")
    window_bits: int = golf.option(24, "log2 of the window, 10..24")

    def check(self) -> None:
        if not 0 <= self.quality <= 11:
            raise self.invalid("quality", f"{self.quality} is not in 0..11")
        if not 10 <= self.window_bits <= 24:
            raise self.invalid("window_bits", f"{self.window_bits} is not in 10..24")


class BrotliCompressor:
    """golf.Compressor over brotli, with a CRC32 of the data behind it (brotli has no checksum), so
    a flipped byte fails loudly instead of loading."""

    name = "brotli"

    def __init__(self, quality: int = 11, window_bits: int = 24):
        self.quality, self.window_bits = quality, window_bits

    def compress(self, data: bytes) -> bytes:
        return _brotli.compress(data, quality=self.quality, lgwin=self.window_bits) + struct.pack("<I", zlib.crc32(data))

    def decompress(self, data: bytes) -> bytes:
        out = _brotli.decompress(data[:-4])
        if struct.pack("<I", zlib.crc32(out)) != data[-4:]:
            raise ValueError("brotli: CRC32 mismatch")
        return out


class Brotli(golf.Plugin):
    name = "brotli"
    description = "brotli artifact compressor (quality 11, lgwin 24) instead of zstd"
    Config = Config

    @golf.hookimpl
    def golf_compressor(self, config):
        return BrotliCompressor(self.config.quality, self.config.window_bits)
