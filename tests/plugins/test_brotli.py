"""brotli compressor: round trip, a flipped byte fails, config validation."""

import pytest
from golf_plugins.brotli import BrotliCompressor, Config

from golfcore.errors import ConfigError


def test_round_trip_and_checksum():
    c = BrotliCompressor()
    data = bytes(range(256)) * 64
    blob = c.compress(data)
    assert c.decompress(blob) == data and len(blob) < len(data) // 10
    damaged = bytearray(blob)
    damaged[-2] ^= 1  # the CRC: brotli itself would not notice a change in what it decodes to
    with pytest.raises(ValueError, match="CRC32"):
        c.decompress(bytes(damaged))


def test_config_is_checked():
    with pytest.raises(ConfigError, match="quality"):
        Config(quality=12).check()
