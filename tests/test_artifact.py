import json
import math
import struct

import pytest
import safetensors.torch
import torch
from torch import nn

from golfcore.artifact import (
    CLIP_PERCENTILE,
    FORMAT_VERSION,
    Int8Quantizer,
    ZstdCompressor,
    fp16_round,
    pack,
    report,
    row_quantiles,
    unpack,
)
from golfcore.errors import ConfigError, DataError, GolfError
from golfcore.params import ParamSpec, declare, param_specs

Q = {"int8": Int8Quantizer()}
C = {"zstd": ZstdCompressor()}


def _state():
    torch.manual_seed(0)
    state = {
        "emb": torch.randn(300, 256) * 0.02,  # 76,800 > 65,536: int8
        "w": torch.randn(512, 256, dtype=torch.bfloat16),  # int8, bf16 source
        "w_small": torch.randn(64, 64),  # 4,096: fp16
        "gain": torch.randn(16),  # declared float32
        "big_fp16": torch.randn(300, 300),  # declared float16 although large
        "steps": torch.tensor([3, 1, 4], dtype=torch.int64),
        "buf": torch.randn(5, dtype=torch.float64),  # undeclared buffer
    }
    specs = {
        "emb": ParamSpec("embed", "embedding"),
        "w": ParamSpec("matrix", "quantize"),
        "w_small": ParamSpec("matrix", "quantize"),
        "gain": ParamSpec("scalar", "float32"),
        "big_fp16": ParamSpec("matrix", "float16"),
        "steps": ParamSpec("scalar", "quantize"),
    }
    return state, specs


def _container(blob: bytes) -> bytes:
    n = blob[5]
    return ZstdCompressor().decompress(blob[6 + n :])


def test_round_trip_keys_shapes_dtypes_and_errors():
    state, specs = _state()
    out = unpack(pack(state, specs, Int8Quantizer(), ZstdCompressor()), Q, C)
    assert list(out) == list(state)
    for k, t in state.items():
        assert out[k].shape == t.shape and out[k].dtype == t.dtype, k
    assert torch.equal(out["w_small"], state["w_small"].half().float())
    assert torch.equal(out["big_fp16"], state["big_fp16"].half().float())
    assert torch.equal(out["gain"], state["gain"])
    assert torch.equal(out["steps"], state["steps"])
    assert torch.equal(out["buf"], state["buf"])  # undeclared: stored exactly
    q = Int8Quantizer()
    for k in ("emb", "w"):
        w = state[k].float()
        step = q.row_step(w).half().float()[:, None]  # the stored fp16 step
        clip = q.row_step(w)[:, None] * 127
        inside = w.abs() <= clip
        err = (out[k].float() - w).abs()
        # bf16 output adds its own rounding for "w"
        slack = 1e-6 + (w.abs() * 2**-8 if state[k].dtype == torch.bfloat16 else 0)
        assert (err <= step / 2 + slack)[inside].all(), k


def test_container_layout_and_no_pickle():
    state, specs = _state()
    blob = pack(state, specs, Int8Quantizer(), ZstdCompressor(), smallest_layout=False)
    assert blob[:4] == b"GOLF" and blob[4] == 2 and blob[6 : 6 + blob[5]] == b"zstd"
    container = _container(blob)
    stored = safetensors.torch.load(container)  # plain safetensors: loads without executing code
    assert stored["emb.q"].dtype == torch.int8 and stored["emb.scale"].dtype == torch.float16
    assert stored["emb.scale"].shape == (300,)
    assert stored["w_small"].dtype == torch.float16 and stored["gain"].dtype == torch.float32
    assert stored["big_fp16"].dtype == torch.float16 and stored["steps"].dtype == torch.int64
    (n,) = struct.unpack("<Q", container[:8])
    header = json.loads(json.loads(container[8 : 8 + n])["__metadata__"]["golf"])
    assert header["quantizer"] == "int8" and header["compressor"] == "zstd" and header["format"] == 2
    assert header["tensors"]["w"] == {"kind": "quantized", "dtype": "bfloat16", "shape": [512, 256], "stored": ["w.q", "w.scale"], "info": {"scheme": "int8_row"}}
    assert b"\x80\x04" not in container[: 8 + n] and b"torch._utils" not in container  # no pickle protocol marker


def test_percentile_clip_and_no_scale_floor():
    torch.manual_seed(0)
    q = Int8Quantizer()
    # rows of 1M: the 99.99984th percentile lies below the top ~1.6 elements, so one outlier
    # is clipped; |w| ~ 0.01 keeps clip < 1, where the reference's 1/127 floor wasted levels (D15)
    w = torch.randn(2, 1_000_000) * 0.01
    w[0, 7] = 5.0
    step = q.row_step(w)
    expected = torch.quantile(w.double().abs(), CLIP_PERCENTILE / 100, dim=1) / 127
    assert torch.allclose(step.double(), expected, rtol=1e-6)
    assert step.max() < 0.1 / 127  # the outlier does not set the step, and no floor applies
    stored, info = q.quantize("w", w, "quantize")
    back = q.dequantize("w", stored, info)
    assert stored["w.q"][0, 7] == 127
    assert back[0, 7] == stored["w.scale"][0].float() * 127  # clipped to the top level
    assert (stored["w.q"].abs() <= 127).all()
    assert torch.equal(q.fake_quantize(w), back)


def test_zero_row_and_tiny_rows():
    q = Int8Quantizer(float_max_numel=0)
    w = torch.randn(3, 40)
    w[1] = 0
    w[2] *= 1e-9  # step underflows fp16: stored as zeros, error <= clip ~ 3e-9
    stored, info = q.quantize("w", w, "quantize")
    back = q.dequantize("w", stored, info)
    assert torch.isfinite(back).all()
    assert torch.equal(back[1], torch.zeros(40)) and stored["w.scale"][1] == 0
    assert (back[2] - w[2]).abs().max() < 1e-8


def test_row_step_is_differentiable():
    w = torch.randn(4, 16, requires_grad=True)
    Int8Quantizer().row_step(w).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert Int8Quantizer().row_step(w).shape == (4,)


def test_fake_quantize_small_matrix_is_fp16_round_trip():
    w = torch.randn(8, 8)
    assert torch.equal(Int8Quantizer().fake_quantize(w), w.half().float())


def test_quantize_rejects_unknown_export_and_float16_overflow():
    q = Int8Quantizer()
    with pytest.raises(ValueError, match="export kind"):
        q.quantize("x", torch.ones(3), "int4")
    with pytest.raises(ValueError, match="float16"):
        q.quantize("x", torch.full((3,), 1e6), "float16")


def test_tied_weights_stored_once_under_declared_key():
    model = nn.Module()
    model.head = nn.Linear(256, 300, bias=False)
    model.emb = nn.Embedding(300, 256)
    model.head.weight = model.emb.weight  # tied; named_parameters reports it once, as "head.weight"
    declare(model.emb.weight, "embed", "embedding")
    specs = param_specs(model)
    state = model.state_dict()
    assert set(state) == {"head.weight", "emb.weight"}
    blob = pack(state, specs, Int8Quantizer(), ZstdCompressor())
    assert set(safetensors.torch.load(_container(blob))) == {"head.weight.q", "head.weight.scale"}
    out = unpack(blob, Q, C)
    assert list(out) == list(state)
    assert out["emb.weight"] is out["head.weight"] and out["emb.weight"].dtype == torch.float32
    model.load_state_dict(out)


def test_empty_state():
    assert unpack(pack({}, {}, Int8Quantizer(), ZstdCompressor()), Q, C) == {}


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],
        lambda b: b[:5],
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:-1],
        lambda b: b[:-20] + bytes([b[-20] ^ 0xFF]) + b[-19:],
        lambda b: b"",
    ],
)
def test_corrupt_blob_raises_data_error(damage):
    state, specs = _state()
    blob = pack(state, specs, Int8Quantizer(), ZstdCompressor())
    with pytest.raises(DataError, match="artifact.*corrupt") as err:
        unpack(damage(blob), Q, C)
    assert isinstance(err.value, GolfError)


def test_bad_container_inside_valid_compression_is_corrupt():
    bad = b"GOLF" + bytes([FORMAT_VERSION, 4]) + b"zstd" + ZstdCompressor().compress(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(DataError, match="corrupt"):
        unpack(bad, Q, C)


def test_unknown_version_quantizer_or_compressor():
    state, specs = _state()
    blob = pack(state, specs, Int8Quantizer(), ZstdCompressor())
    with pytest.raises(ConfigError, match="quantizer 'int8'.*not available.*plugin"):
        unpack(blob, {"int6": Int8Quantizer()}, C)
    with pytest.raises(ConfigError, match="compressor 'zstd'.*not available"):
        unpack(blob, Q, {})
    with pytest.raises(DataError, match="version 9"):
        unpack(blob[:4] + bytes([9]) + blob[5:], Q, C)


def test_quantizer_name_collision_is_refused():
    class Bad(Int8Quantizer):
        def quantize(self, name, tensor, export):
            return {"shared": tensor}, {"scheme": "raw"}

    with pytest.raises(ValueError, match="must start with"):
        pack({"a": torch.ones(2)}, {"a": ParamSpec("scalar", "float32")}, Bad(), ZstdCompressor())


def test_report_within_and_over_budget():
    r = report(b"\0" * 900, 100, budget=1000)
    assert (r.model_bytes, r.code_bytes, r.total_bytes, r.budget_bytes) == (900, 100, 1000, 1000)
    assert r.within_budget
    assert not report(b"\0" * 901, 100, budget=1000).within_budget


def test_fp16_round_is_the_float16_cast():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200_000, generator=g) * 10.0 ** torch.randint(-9, 5, (200_000,), generator=g).float()
    edges = torch.tensor([0.0, -0.0, 2**-24, 2**-25, 3 * 2**-25, 2**-14, 1.5 * 2**-15, 1 + 2**-11, 1 + 3 * 2**-11, 65504.0, -65504.0])
    for values in (x.clamp(-65504, 65504), edges):
        assert torch.equal(fp16_round(values), values.to(torch.float16).float())


def _sorted_quantile(w, q):
    """The full-sort quantile row_quantiles replaced (linear interpolation between sorted neighbours)."""
    a = w.float().abs().sort(dim=-1).values
    pos = q * (a.size(-1) - 1)
    lo = int(pos)
    hi = min(lo + 1, a.size(-1) - 1)
    return torch.lerp(a[..., lo], a[..., hi], pos - lo)


@pytest.mark.parametrize("shape", [(7, 512), (3, 5, 100), (4, 1), (2, 3)])
def test_row_quantiles_top_k_equals_the_full_sort(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g)
    w[..., -1] = w[..., 0]  # a tie in every row
    qs = [0.5, 0.999, 0.9999, CLIP_PERCENTILE / 100, 1.0]
    got = row_quantiles(w, qs)
    assert got.shape == (len(qs), *shape[:-1])
    for i, q in enumerate(qs):
        assert torch.equal(got[i], _sorted_quantile(w, q)), q
    # without ties the gradient reaches the same elements as through the sort (with ties, which
    # of two equal elements is selected is the kernel's choice, for sort as for topk)
    untied = torch.randn(shape, generator=g)
    wa, wb = untied.clone().requires_grad_(True), untied.clone().requires_grad_(True)
    row_quantiles(wa, [0.999]).sum().backward()
    _sorted_quantile(wb, 0.999).sum().backward()
    assert torch.equal(wa.grad, wb.grad)


class Lzma6:
    """lzma at the PR #549 stack's preset, as a compressor (the core has only zstd)."""

    name = "lzma6"

    def compress(self, data):
        import lzma
        return lzma.compress(data, preset=6)

    def decompress(self, data):
        import lzma
        return lzma.decompress(data)


@pytest.mark.parametrize("compressor", [ZstdCompressor(), Lzma6()], ids=["zstd", "lzma"])
def test_smallest_layout_is_lossless_and_never_larger(compressor):
    """Every stored tensor comes back bit-identical whichever layout wins, and the chosen layout of
    each is the smallest of its candidates, so the artifact shrinks (float tensors in byte planes)."""
    state, specs = _state()
    state["levels"] = torch.randint(-31, 32, (256, 96), dtype=torch.int8)  # an int6-like stored tensor
    state["half"] = (torch.randn(128, 128) * 0.02).half()
    plain = pack(state, specs, Int8Quantizer(), compressor, smallest_layout=False)
    chosen = pack(state, specs, Int8Quantizer(), compressor)
    assert len(chosen) < len(plain)
    codecs = {compressor.name: compressor}
    a, b = unpack(plain, Q, codecs), unpack(chosen, Q, codecs)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    from golfcore.artifact import _container_header

    header = _container_header(compressor.decompress(chosen[6 + chosen[5] :]))
    layouts = {k: v for e in header["tensors"].values() for k, v in e.get("layouts", {}).items()}
    assert layouts, "no tensor changed layout"
    assert all(v["bytes"] in ("plain", "planes", "shift") and v["order"] in ("rows", "cols") for v in layouts.values())


def test_each_layout_round_trips_every_dtype():
    from golfcore.artifact import _decode_layout, _encode_layout, _layout_candidates

    tensors = [torch.randn(33, 40), torch.randn(3, 5, 64).half(), torch.randn(70, 9).to(torch.bfloat16),
               torch.randint(-31, 32, (17, 65), dtype=torch.int8), torch.randint(-128, 128, (300,), dtype=torch.int8),
               torch.arange(600, dtype=torch.int64).reshape(20, 30)]
    for t in tensors:
        for layout in _layout_candidates(t):
            if layout["bytes"] == "shift":
                layout["shift"] = int(t.min())
            record = {**layout, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            back = _decode_layout(_encode_layout(t, layout).clone(), record)
            assert back.dtype == t.dtype and torch.equal(back, t), (t.dtype, tuple(t.shape), layout)


def test_group_bytes_cover_every_tensor_once():
    from golfcore.artifact import group_bytes, tensor_group

    state, specs = _state()
    state["layers.0.w"], state["layers.1.w"] = torch.randn(64, 64), torch.randn(64, 64)
    specs["layers.0.w"] = specs["layers.1.w"] = ParamSpec("matrix", "quantize")
    blob = pack(state, specs, Int8Quantizer(float_max_numel=1000), ZstdCompressor())
    groups = {g.group: g for g in group_bytes(blob, ZstdCompressor())}
    assert tensor_group("layers.12.attn.q") == "layers.*.attn.q" and tensor_group("blocks.3.value_transforms.0.table") == "blocks.*.value_transforms.*.table"
    assert set(groups) == {tensor_group(k) for k in state}
    assert groups["layers.*.w"].params == 2 * 64 * 64 and groups["layers.*.w"].schemes == ["int8_row"]
    assert groups["layers.*.w"].stored_bytes == 2 * (64 * 64 + 64 * 2)  # int8 levels + fp16 steps
    assert sum(g.params for g in groups.values()) == sum(t.numel() for t in state.values())
    for g in groups.values():
        assert 0 < g.compressed_bytes <= g.stored_bytes + 64  # zstd's frame adds a few bytes to incompressible data
    # largest first, and together close to the artifact itself
    sizes = [g.compressed_bytes for g in groups.values()]
    assert sizes == sorted(sizes, reverse=True)
    assert 0.8 * len(blob) < sum(sizes) < 1.2 * len(blob)


def test_level_entropy_hand_computed():
    """Levels -1..1 at one step per std: p(0) = Φ(0.5) - Φ(-0.5) = 0.38292, p(±1) = 0.30854 each:
    H = 0.38292·1.38487 + 2·0.30854·1.69645 = 1.5771 bits. A wide grid tends to the Gaussian's
    log2(spread·sqrt(2πe)); a zero spread stores zeros only."""
    from golfcore.artifact import clip_spread, level_entropy_bits

    assert level_entropy_bits(1.0, 1) == pytest.approx(1.5771, abs=1e-4)
    assert level_entropy_bits(20.0, 127) == pytest.approx(math.log2(20 * math.sqrt(2 * math.pi * math.e)), abs=1e-3)
    assert level_entropy_bits(0.0, 31) == 0.0
    assert clip_spread(31, 512) == pytest.approx(31 / math.sqrt(2 * math.log(512)))


def test_projection_from_the_shapes_and_the_grid():
    from golfcore.artifact import PROJECTION_MARGIN, clip_spread, level_entropy_bits, precision_bytes, project

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = declare(nn.Parameter(torch.zeros(100, 200)), "matrix", "quantize")  # 20,000 > 1,000: int rows
            self.e = declare(nn.Parameter(torch.zeros(50, 40)), "embed", "embedding")  # 2,000: int8 rows
            self.small = declare(nn.Parameter(torch.zeros(10, 10)), "matrix", "quantize")  # 100: fp16
            self.g = declare(nn.Parameter(torch.zeros(7)), "scalar", "float32")

    class Int6:
        max_level = 31

    class SdClip(Int6):
        def level_spread(self, name, export, cols):
            return (31 / 12.0, 31) if name == "w" else None

    net = Net()
    bits = 20_000 * 6 + 100 * 16 + 2_000 * 8 + 50 * 16 + 100 * 16 + 7 * 32
    assert precision_bytes(net, Int6(), 1000) == bits // 8
    assert precision_bytes(net, Int8Quantizer(), 1000) == (bits + 20_000 * 2) // 8
    floats = 100 * 16 + 7 * 32
    steps = (100 + 50) * 16
    embedding = 2_000 * level_entropy_bits(clip_spread(127, 40), 127)
    p = project(net, Int6(), 1000, code=500, budget=10**6)
    expected = math.ceil((20_000 * level_entropy_bits(clip_spread(31, 200), 31) + embedding + steps + floats) / 8 * (1 + PROJECTION_MARGIN))
    assert (p.model_bytes, p.total_bytes, p.precision_bytes) == (expected, expected + 500, bits // 8) and p.fits
    sd = project(net, SdClip(), 1000, code=500, budget=10_000)
    assert sd.model_bytes == math.ceil((20_000 * level_entropy_bits(31 / 12.0, 31) + embedding + steps + floats) / 8 * (1 + PROJECTION_MARGIN))
    assert sd.model_bytes < p.model_bytes and not sd.fits

    class SdClipHalfFloats(SdClip):
        float32_bits = 16  # gptq's float32_as_float16

    half = project(net, SdClipHalfFloats(), 1000, code=500, budget=10_000)
    assert half.model_bytes == math.ceil((20_000 * level_entropy_bits(31 / 12.0, 31) + embedding + steps + 100 * 16 + 7 * 16) / 8 * (1 + PROJECTION_MARGIN))
    assert half.precision_bytes == (bits - 7 * 16) // 8


@pytest.mark.slow
def test_run_projects_before_training_and_records_groups(tmp_path, pystdlib_root):
    """`golf run` projects the artifact before training (warning when over budget), reports bytes per
    tensor group, and records the projection beside the measured bytes."""
    from tests.test_cli import golf, tiny_recipe

    recipe = tiny_recipe(tmp_path, pystdlib_root, "[export]\nbudget_bytes = 20000")
    # over budget, so the run is kept as not legal (exit 3): its record still holds the artifact figures
    run = golf("run", recipe, "--set", "train.iterations=2", "--set", "train.val_every=0", check=False)
    assert run.returncode == 3 and "artifact_budget" in run.stderr
    first = run.stdout
    projected = next(line for line in first.splitlines() if line.startswith("projected artifact: model"))
    warning = next(line for line in first.splitlines() if line.startswith("WARNING: projected artifact"))
    assert first.index(projected) < first.index(warning) < first.index("step:")  # before training
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    art = result["artifact"]
    assert sum(g["params"] for g in art["groups"]) == result["model_params"]
    assert art["compression_ratio"] == art["model_bytes"] / art["precision_bytes"]
    assert f"model {art['projected_model_bytes']} + code {art['code_bytes']}" in projected
    assert any(line.startswith("artifact group:layers.*.") for line in first.splitlines())
