"""The lzma compressor plugin: round trip, header, unpack by name, config validation, a run with it."""

import pytest
import torch
from golf_plugins.lzma import Lzma, LzmaCompressor

from golfcore.artifact import Int8Quantizer, ZstdCompressor, pack, unpack
from golfcore.errors import ConfigError, DataError
from golfcore.assemble import build_model
from golfcore.params import param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import host_with, tiny_config, train_briefly


def test_round_trip_bytes():
    data = bytes(range(256)) * 300 + b"golf" * 1000
    for compressor in (LzmaCompressor(), LzmaCompressor(0), LzmaCompressor(9, extreme=True)):
        packed = compressor.compress(data)
        assert len(packed) < len(data)
        assert compressor.decompress(packed) == data
    assert LzmaCompressor(6).compress(b"") != b"" and LzmaCompressor(6).decompress(LzmaCompressor(6).compress(b"")) == b""


def test_corruption_fails_loudly():
    packed = bytearray(LzmaCompressor().compress(b"some model bytes " * 100))
    packed[len(packed) // 2] ^= 0xFF
    with pytest.raises(Exception):
        LzmaCompressor().decompress(bytes(packed))


def test_artifact_names_lzma_and_unpack_picks_it():
    config = tiny_config()
    host = host_with(config, Lzma)
    compressor = host.first("golf_compressor", config=config)
    assert isinstance(compressor, LzmaCompressor) and compressor.name == "lzma"
    model = build_model(config, host, None)
    state = model.state_dict()
    blob = pack(state, param_specs(model), Int8Quantizer(), compressor)
    assert blob[6 : 6 + blob[5]] == b"lzma"
    back = unpack(blob, {"int8": Int8Quantizer()}, {"zstd": ZstdCompressor(), "lzma": LzmaCompressor()})
    assert set(back) == set(state)
    # small tensors are stored in fp16/fp32 as declared: same values after the round trip
    assert torch.equal(back["blocks.0.attn_scale"], state["blocks.0.attn_scale"])
    with pytest.raises(ConfigError, match="lzma"):
        unpack(blob, {"int8": Int8Quantizer()}, {"zstd": ZstdCompressor()})
    bad = bytearray(blob)
    bad[-10] ^= 0xFF
    with pytest.raises(DataError):
        unpack(bytes(bad), {"int8": Int8Quantizer()}, {"lzma": LzmaCompressor()})


def test_preset_and_extreme_reach_the_compressor():
    resolved = resolve({"plugins": {"lzma": {"preset": 9, "extreme": True}}}, discover(), "<test>")
    assert resolved.plugins["lzma"].preset == 9 and resolved.plugins["lzma"].extreme is True
    import lzma

    plugin = Lzma(resolved.plugins["lzma"])
    assert plugin.golf_compressor(resolved).preset == 9 | lzma.PRESET_EXTREME


@pytest.mark.parametrize(
    "table, key",
    [({"preset": 10}, "preset"), ({"preset": -1}, "preset"), ({"preset": "6"}, "preset"), ({"extreme": 1}, "extreme"), ({"level": 3}, "level")],
)
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.lzma\].*{key}"):
        resolve({"plugins": {"lzma": table}}, discover(), "<test>")


def test_no_parameters_added_and_trains():
    config = tiny_config()
    plain = build_model(tiny_config(), host_with(tiny_config()), None)
    host = host_with(config, Lzma)
    model = build_model(config, host, None)
    assert set(param_specs(model)) == set(param_specs(plain))
    outcome = train_briefly(config, host, model)
    assert outcome.steps == config.train.iterations
