"""Per-group compressor: the L1 order on a hand case, exact round trips of real containers with every
back-end (lrzip only where installed), the stored order, fallbacks and damage."""

import shutil

import numpy as np
import pytest
import torch
from golf_plugins.gptq import Config as GptqConfig
from golf_plugins.gptq import GptqQuantizer
from golf_plugins.pergroup import Config, PerGroupCompressor, l1_order

from golfcore.artifact import pack, unpack
from golfcore.errors import ConfigError
from golfcore.params import ParamSpec

HAS_LRZIP = shutil.which("lrzip") is not None


def test_l1_order_hand_case():
    """From row 0 [0,0]: nearest [1,1] (L1 2), then [9,9] (16), then [10,10] (2)."""
    rows = np.array([[0, 0], [10, 10], [1, 1], [9, 9]], dtype=np.int8)
    assert l1_order(rows).tolist() == [0, 2, 3, 1]


def state_and_specs():
    g = torch.Generator().manual_seed(0)
    state = {f"layers.{i}.{r}": torch.randn(96, 64, generator=g) * 0.05 for i in range(2) for r in ("up", "q")}
    state["tok_emb.weight"] = torch.randn(128, 64, generator=g)
    state["scale"] = torch.ones(64)
    specs = {k: ParamSpec("matrix", "quantize") for k in state}
    specs["tok_emb.weight"], specs["scale"] = ParamSpec("embed", "embedding"), ParamSpec("scalar", "float32")
    return state, specs


@pytest.mark.parametrize("backend,layout", [("brotli", True), ("brotli", False), ("lzma", False), pytest.param(
    "lrzip", False, marks=pytest.mark.skipif(not HAS_LRZIP, reason="lrzip not installed: the auto back-end falls back to brotli"))])
def test_round_trip_is_exact(backend, layout):
    state, specs = state_and_specs()
    q = GptqQuantizer(GptqConfig(lqer_rank=0), float_max_numel=0)
    c = PerGroupCompressor(backend)
    blob = pack(state, specs, q, c, smallest_layout=layout)
    assert c.report.startswith(f"pergroup: 3 groups via {backend}")  # layers.*.up.q, layers.*.q.q, tok_emb.weight.q
    container = c.decompress(blob[6 + blob[5]:])
    assert len(blob) < 0.8 * len(container)  # every back-end compresses the levels (lrzip without -T stored them raw)
    plain = pack(state, specs, q, PerGroupCompressor("brotli", sort_rows=False), smallest_layout=layout)
    assert container == PerGroupCompressor("brotli").decompress(plain[6 + plain[5]:])  # the very same container bytes
    if backend == "brotli":
        back = unpack(blob, {"gptq": q}, {"pergroup": c})
        assert all(back[name].shape == state[name].shape for name in state)


def test_rows_are_reordered_and_the_order_is_stored():
    rows = np.array([[0] * 64, [9] * 64, [1] * 64, [8] * 64] * 32, dtype=np.int8)  # [128, 64]
    import safetensors.torch
    data = safetensors.torch.save({"m": torch.from_numpy(rows)})
    c = PerGroupCompressor("brotli", transpose=False)
    blob = c.compress(data)
    assert c.decompress(blob) == data
    assert c.decompress(PerGroupCompressor("brotli", sort_rows=False).compress(data)) == data


def test_other_bytes_and_damage():
    c = PerGroupCompressor("brotli")
    assert c.decompress(c.compress(b"not a container" * 10)) == b"not a container" * 10
    state, specs = state_and_specs()
    blob = bytearray(c.compress(b"x" * 100))
    blob[-1] ^= 1
    with pytest.raises(ValueError, match="CRC32"):
        c.decompress(bytes(blob))


def test_auto_falls_back_to_brotli_without_lrzip(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert PerGroupCompressor("auto").backend == "brotli"
    with pytest.raises(ConfigError, match="lrzip"):
        Config(backend="lrzip").check()
    with pytest.raises(ConfigError, match="backend"):
        Config(backend="zip").check()
