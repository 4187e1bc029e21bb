"""Hessian GPTQ, SDClip, LQER, AWQ-lite and small-matrix int8: hand-computed cases, GPTQ against
round-to-nearest on correlated inputs, the artifact round trip, config validation."""

import math

import pytest
import torch
from golf_plugins.gptq import (Config, GptqQuantizer, awq_group_scores, gptq_levels, pack_factors, round_levels,
                               sdclip_step, unpack_factors)

from golfcore.artifact import ZstdCompressor, pack, unpack
from golfcore.calibration import InputStats
from golfcore.errors import ConfigError
from golfcore.params import ParamSpec


def quantizer(**overrides):
    return GptqQuantizer(Config(**overrides), float_max_numel=0)


def correlated_inputs(n=4096, cols=64, seed=0):
    """x = z A: inputs whose channels are strongly correlated (what GPTQ's error feedback exploits)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cols, generator=g)
    mix = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g)
    return z @ mix  # [n, cols]


def output_error(w, w_hat, x):
    return ((w - w_hat) @ x.T).square().mean().item()  # mean squared error of the layer's outputs


def test_gptq_hand_computed_two_columns():
    """w = [0.3, 0.3], step 0.5, H = [[1, .5], [.5, 1]], no damping, natural order.
    H⁻¹ = 4/3 [[1, -.5], [-.5, 1]]; its upper Cholesky factor U has U00 = sqrt(4/3), U01 = -1/sqrt(3).
    Column 0: q = round(0.6) = 1, error (0.3 - 0.5) / U00 = -0.2·sqrt(3/4); column 1 becomes
    0.3 - (-0.2·sqrt(3/4))·(-1/sqrt(3)) = 0.3 - 0.1 = 0.2, so q = round(0.4) = 0.
    Round to nearest gives [1, 1]. Output error eᵀHe: GPTQ e = [-0.2, 0.3] -> 0.07; RTN e = [-0.2, -0.2] -> 0.12."""
    w, H, step = torch.tensor([[0.3, 0.3]]), torch.tensor([[1.0, 0.5], [0.5, 1.0]]), torch.tensor([0.5])
    q = gptq_levels(w, H, step, 31, damping=0.0, act_order=False)
    assert q.tolist() == [[1.0, 0.0]]
    assert round_levels(w, step.unsqueeze(1), 31).tolist() == [[1.0, 1.0]]

    def quad(e):
        return (e @ H @ e.T).item()

    assert quad(w - q * 0.5) == pytest.approx(0.07)
    assert quad(w - torch.tensor([[0.5, 0.5]])) == pytest.approx(0.12)


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    x = correlated_inputs()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 64, generator=g) * 0.05
    H = x.T @ x / x.size(0)
    step = sdclip_step(w, 12.85, 31)
    rtn = output_error(w, round_levels(w, step.unsqueeze(1), 31) * step.unsqueeze(1), x)
    gptq = output_error(w, gptq_levels(w, H, step, 31) * step.unsqueeze(1), x)
    print(f"output MSE on correlated inputs: GPTQ {gptq:.3e}, round-to-nearest {rtn:.3e}")
    assert gptq < 0.7 * rtn
    # blocks and act_order change the path, never the grid: every level stays within ±31
    assert gptq_levels(w, H, step, 31, block_size=8, act_order=False).abs().max() <= 31


def test_gptq_with_identity_hessian_is_round_to_nearest():
    w = torch.randn(8, 16) * 0.1
    step = sdclip_step(w, 3.0, 31)
    assert torch.equal(gptq_levels(w, torch.eye(16), step, 31), round_levels(w, step.unsqueeze(1), 31))


def test_dead_inputs_are_quantized_as_zero():
    x = correlated_inputs(cols=8)
    x[:, 3] = 0
    w = torch.randn(4, 8)
    q = gptq_levels(w, x.T @ x / x.size(0), sdclip_step(w, 3.0, 31), 31)
    assert torch.all(q[:, 3] == 0)


def test_sdclip_hand_computed_row():
    """Row [1, -1, 1, -1]: std (n-1) = sqrt(4/3) = 1.1547; k = 3, 31 levels: step = 3·1.1547/31 = 0.11175
    (fp16: 0.11176); 1 / 0.11176 = 8.948 -> level 9 -> 1.0059: error 0.0059 per element."""
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    step = sdclip_step(w, 3.0, 31)
    assert step.item() == pytest.approx(3 * math.sqrt(4 / 3) / 31, rel=1e-3)
    assert step.item() == torch.tensor(3 * math.sqrt(4 / 3) / 31).half().item()
    q = round_levels(w, step.unsqueeze(1), 31)
    assert q.tolist() == [[9.0, -9.0, 9.0, -9.0]]
    assert (q * step - w).abs().max().item() == pytest.approx(9 * step.item() - 1, abs=1e-6)
    # clipping: a value beyond 31 steps comes back at the outermost level
    assert round_levels(torch.tensor([[10.0]]), step.view(1, 1), 31).item() == 31


def test_lqer_asym_packing_hand_computed():
    """A = [[3], [-1.5]]: scale 3/1.5 = 2, levels round([1.5, -0.75]) = [2 -> clamped to 1, -1] (int2: -2..1).
    B = [[0.75, -0.5]] with groups of 2: scale 0.75/7.5 = 0.1, levels [7.5 -> 8 -> clamped 7, -5] (int4: -8..7)."""
    A, B = torch.tensor([[3.0], [-1.5]]), torch.tensor([[0.75, -0.5]])
    t, info = pack_factors(A, B, "asym", group=2)
    assert t["A"].tolist() == [[1.0], [-1.0]] and t["A_scale"].item() == 2.0
    assert t["B"].tolist() == [[7.0, -5.0]] and t["B_scale"].item() == pytest.approx(0.1, rel=1e-3)
    # A_hat = [[2], [-2]], B_hat = [[0.7, -0.5]]
    expected = torch.tensor([[2.0], [-2.0]]) @ (torch.tensor([[7.0, -5.0]]) * t["B_scale"].float())
    assert torch.allclose(unpack_factors(t, info), expected)
    sym, sinfo = pack_factors(A, B, "sym", bits=4)
    assert sym["A"].tolist() == [[7.0], [-7.0]]  # per row: each row's own max
    assert torch.allclose(unpack_factors(sym, sinfo), A @ B, rtol=0.1)


def test_lqer_corrects_the_largest_errors_only():
    g = torch.Generator().manual_seed(0)
    state = {f"w{i}": torch.randn(64, 128, generator=g) * (0.01 if i else 0.2) for i in range(3)}  # w0: largest error
    specs = {n: ParamSpec("matrix", "quantize") for n in state}
    q = quantizer(lqer_rank=4, lqer_top_k=1, lqer_packing="sym", lqer_factor_bits=8)
    base = quantizer(lqer_rank=0)
    q.prepare(state, specs)
    out = {n: q.quantize(n, t, "quantize") for n, t in state.items()}
    assert "lqer" in out["w0"][1] and "lqer" not in out["w1"][1] and "lqer" not in out["w2"][1]
    err_lqer = (q.dequantize("w0", *out["w0"]) - state["w0"]).norm()
    err_base = (base.dequantize("w0", *base.quantize("w0", state["w0"], "quantize")) - state["w0"]).norm()
    assert err_lqer < err_base


def test_awq_lite_keeps_the_salient_group_at_int8():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 128, generator=g)
    x[:, 64:] *= 10  # the second group of 64 input channels carries large activations
    w = torch.randn(16, 128, generator=g) * 0.05
    stats = InputStats(x.T @ x / x.size(0), x.size(0))
    scores = awq_group_scores(w, stats.channel_rms, 64)
    assert scores.argmax().item() == 1
    q = quantizer(awq_top_k=1, lqer_rank=0)
    q.calibrate({"w": stats})
    q.prepare({"w": w}, {"w": ParamSpec("matrix", "quantize")})
    stored, info = q.quantize("w", w, "quantize")
    assert info["hi"] == {"starts": [64], "size": 64, "max_level": 127}
    assert stored["w.q"][:, :64].abs().max() <= 31
    assert torch.allclose(stored["w.scale_hi"].float(), sdclip_step(w, 12.85, 127))  # the same k, 127 levels
    back = q.dequantize("w", stored, info)
    assert (back - w)[:, 64:].abs().max() < 0.5 * (back - w)[:, :64].abs().max()
    plain = quantizer(lqer_rank=0)
    plain.calibrate({"w": stats})
    plain_back = plain.dequantize("w", *plain.quantize("w", w, "quantize"))
    assert output_error(w, back, x) < output_error(w, plain_back, x)


def test_small_float16_matrices_are_int8_per_row():
    """Row [0.5, -0.25]: step fp16(0.5/127); levels [127, -63.5 -> -64 (half to even)]."""
    q = quantizer()
    stored, info = q.quantize("gate.weight", torch.tensor([[0.5, -0.25], [0.0, 0.0]]), "float16")
    assert info == {"scheme": "int8_absmax_row"}
    assert stored["gate.weight.q"].tolist() == [[127, -64], [0, 0]]
    back = q.dequantize("gate.weight", stored, info)
    assert back[0, 0].item() == pytest.approx(0.5, rel=1e-3) and torch.all(back[1] == 0)
    assert quantizer(small_matrix_int8=False).quantize("g", torch.ones(2, 2), "float16")[1]["scheme"] == "float16"


def test_float32_tensors_are_stored_float16_as_the_record_unless_asked_otherwise():
    t = torch.tensor([1 / 3, 1e-3, 2.0])
    stored, info = quantizer().quantize("resid_mix", t, "float32")
    assert stored["resid_mix"].dtype == torch.float16 and info["scheme"] == "float16"
    assert stored["resid_mix"].float().equal(t.half().float())
    stored, info = quantizer(float32_as_float16=False).quantize("resid_mix", t, "float32")
    assert stored["resid_mix"].dtype == torch.float32 and stored["resid_mix"].equal(t)


def test_roles_bits_and_artifact_round_trip():
    g = torch.Generator().manual_seed(0)
    state = {"tok_emb.weight": torch.randn(96, 32, generator=g), "layers.0.up": torch.randn(64, 32, generator=g) * 0.1,
             "layers.0.q": torch.randn(32, 32, generator=g) * 0.1, "gate": torch.randn(4, 32, generator=g),
             "scale": torch.ones(32)}
    specs = {"tok_emb.weight": ParamSpec("embed", "embedding"), "layers.0.up": ParamSpec("matrix", "quantize"),
             "layers.0.q": ParamSpec("matrix", "quantize"), "gate": ParamSpec("scalar", "float16"),
             "scale": ParamSpec("scalar", "float32")}
    q = quantizer(lqer_top_k=1)
    x = correlated_inputs(n=512, cols=32)
    q.calibrate({"layers.0.up": InputStats(x.T @ x / 512, 512)})
    blob = pack(state, specs, q, ZstdCompressor())
    back = unpack(blob, {"gptq": q}, {"zstd": ZstdCompressor()})
    assert q.role("tok_emb.weight", "embedding") == "embedding" and q.role("layers.0.up", "quantize") == "up"
    for name in state:
        assert back[name].shape == state[name].shape
    assert back["scale"].equal(state["scale"])
    again = quantizer(lqer_top_k=1)  # the container returns exactly what the quantizer's own dequantize gives
    again.calibrate(q.stats)
    again.prepare(state, specs)
    for name in ("tok_emb.weight", "layers.0.up", "layers.0.q", "gate"):
        assert back[name].equal(again.dequantize(name, *again.quantize(name, state[name], specs[name].export)))
    assert (back["layers.0.q"] - state["layers.0.q"]).norm() < 0.2 * state["layers.0.q"].norm()  # k=13: rms error ~ step/sqrt(12)
    # the embedding uses 7 bits, matrices 6
    stored, info = quantizer().quantize("tok_emb.weight", state["tok_emb.weight"], "embedding")
    assert info["max_level"] == 63 and info["scheme"] == "sdclip" and info["k"] == 14.0
    stored, info = q.quantize("layers.0.up", state["layers.0.up"], "quantize")
    assert info["max_level"] == 31 and info["scheme"] == "gptq" and info["k"] == 11.5


@pytest.mark.parametrize("key,value", [("matrix_bits", 9), ("lqer_packing", "int3"), ("calibration_batches", -1),
                                       ("clip_sigmas", {"up": 0})])
def test_config_is_checked(key, value):
    with pytest.raises(ConfigError, match=key):
        Config(**{key: value}).check()


@pytest.mark.slow
def test_a_run_calibrates_inside_the_training_clock(tmp_path, pystdlib_root):
    """End to end: calibration batches after the last step feed every projection's Hessian, their
    seconds are training time (the wallclock cap reserved them), the artifact is GPTQ's, and the
    score is legal."""
    import json

    from tests.test_cli import golf, tiny_recipe

    recipe = tiny_recipe(tmp_path, pystdlib_root, "[export]\nfloat_max_numel = 256\n[plugins.gptq]\ncalibration_batches = 2\n"
                         "calibration_reserve_seconds = 1.0\n[plugins.pergroup]\nbackend = \"brotli\"")
    out = golf("run", recipe, "--with", "gptq", "--with", "pergroup", "--set", "train.max_wallclock_seconds=600").stdout
    line = next(x for x in out.splitlines() if x.startswith("calibration: 2 training batches"))
    assert "for 13 weights" in line  # 2 layers x q, k, v, o, up, down, and the tied embedding (the head's inputs)
    assert any(x.startswith("pergroup: ") and "via brotli" in x for x in out.splitlines())
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    cal = result["artifact"]["calibration"]
    assert cal["source"] == "train" and cal["in_train_clock"] and cal["tokens"] == 2 * 1024 and cal["weights"] == 13
    assert result["train_seconds"] >= cal["seconds"] and result["legal"]
    assert result["artifact"]["quantizer"] == "gptq" and result["artifact"]["compressor"] == "pergroup"
    assert result["stages"]["roundtrip"]["load_seconds"] > 0
