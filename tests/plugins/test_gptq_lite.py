"""GPTQ-lite int6: the export grid, the per-row search (D16), no step floor (D15) unless asked for, exact agreement of
row_step/fake_quantize with the export, artifact size against the core, config validation, a run."""

import pytest
import torch
from golf_plugins.gptq_lite import DEFAULT_PERCENTILES, GptqLite, GptqLiteQuantizer
from golf_plugins.lzma import LzmaCompressor

from golfcore.artifact import Int8Quantizer, ZstdCompressor, pack, unpack
from golfcore.errors import ConfigError
from golfcore.assemble import build_model
from golfcore.params import param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import host_with, tiny_config, train_briefly


def outlier_matrix(rows=32, cols=1024, seed=0):
    """Gaussian rows, rows with a few large outliers, and heavy-tailed rows: each wants another clip."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[::4, :3] *= 40
    w[1::4] = torch.randn(len(range(1, rows, 4)), cols, generator=g).div(torch.rand(len(range(1, rows, 4)), cols, generator=g) + 0.05) * 0.002
    return w


def round_trip(q, name, w, export="quantize"):
    stored, info = q.quantize(name, w, export)
    return stored, info, q.dequantize(name, stored, info)


def test_int6_round_trip_within_half_a_step():
    q = GptqLiteQuantizer(float_max_numel=0)
    w = outlier_matrix()
    stored, info, back = round_trip(q, "layers.0.up", w)
    assert set(stored) == {"layers.0.up.q", "layers.0.up.scale"}
    levels, step = stored["layers.0.up.q"], stored["layers.0.up.scale"]
    assert levels.dtype == torch.int8 and step.dtype == torch.float16 and step.shape == (w.size(0),)
    assert levels.abs().max() <= 31
    s = step.float().unsqueeze(-1)
    unclipped = w.abs() <= 31 * s
    assert unclipped.float().mean() > 0.99
    err = (w - back).abs()
    assert torch.all(err[unclipped] <= (s / 2).expand_as(w)[unclipped] * (1 + 1e-6))
    # clipped elements come back at the row's outermost level
    assert torch.allclose(back[~unclipped].abs(), (31 * s).expand_as(w)[~unclipped])


def test_per_row_choice_beats_every_per_matrix_percentile():
    """D16: the reference kept one percentile per matrix; per row is never worse, and better here."""
    w = outlier_matrix()
    per_row = (GptqLiteQuantizer(0).fake_quantize(w) - w).square().mean()
    per_matrix = [(GptqLiteQuantizer(0, [p]).fake_quantize(w) - w).square().mean() for p in DEFAULT_PERCENTILES]
    assert per_row <= min(per_matrix)
    assert per_row < min(per_matrix) * 0.99  # the rows here really want different clips
    _, choice = GptqLiteQuantizer(0)._search(w)
    assert len(set(choice.tolist())) > 1
    # and each row individually takes its best candidate
    for p in DEFAULT_PERCENTILES:
        row_err = (GptqLiteQuantizer(0, [p]).fake_quantize(w) - w).square().sum(-1)
        assert torch.all((GptqLiteQuantizer(0).fake_quantize(w) - w).square().sum(-1) <= row_err)


def test_small_rows_use_all_63_levels():
    """D15: no step floor. The reference's max(c/31, 1/31) would round these rows to 0."""
    g = torch.Generator().manual_seed(1)
    w = (torch.rand(8, 4096, generator=g) * 2 - 1) * 1e-3  # max |w| ~ 1e-3 << 1
    stored, _, _ = round_trip(GptqLiteQuantizer(0), "w", w)
    for row in stored["w.q"]:
        assert row.unique().numel() == 63
    floored = torch.round(w / (1 / 31)).clamp(-31, 31)  # the reference's grid
    assert floored.unique().numel() == 1


def test_scale_floor_option_is_the_references_grid():
    """scale_floor = true: step max(c/31, 1/31) for int rows, max(c/127, 1/127) for int8 embeddings
    (the reference, D15); fake_quantize and row_step follow it, and its fewer levels compress smaller."""
    import lzma

    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 512, generator=g) * 0.02  # every row's clip << 1: the floor holds every step
    floored = GptqLiteQuantizer(0, scale_floor=True)
    stored, info, back = round_trip(floored, "w", w)
    assert torch.all(stored["w.scale"] == torch.tensor(1 / 31).half())
    assert torch.equal(stored["w.q"], torch.round(w * stored["w.scale"][0].float().reciprocal()).clamp(-31, 31).to(torch.int8))
    assert torch.equal(floored.fake_quantize(w), back) and torch.equal(floored.row_step(w), stored["w.scale"].float())
    plain_stored, _, plain_back = round_trip(GptqLiteQuantizer(0), "w", w)
    assert (plain_back - w).square().mean() < (back - w).square().mean()  # the floor costs accuracy ...
    size = lambda st: len(lzma.compress(st["w.q"].numpy().tobytes(), preset=6))
    assert size(stored) < size(plain_stored)  # ... and saves bytes
    emb = torch.randn(256, 300, generator=g) * 0.01  # > float_max_numel: int8 rows
    stored, info, _ = round_trip(GptqLiteQuantizer(1000, scale_floor=True), "e", emb, "embedding")
    assert info["scheme"] == "int8_row" and torch.all(stored["e.scale"] == torch.tensor(1 / 127).half())
    stored, _, _ = round_trip(GptqLiteQuantizer(1000), "e", emb, "embedding")
    assert torch.all(stored["e.scale"] < torch.tensor(1 / 127).half())


def test_zero_and_underflowing_rows_store_zeros():
    w = torch.randn(4, 256)
    w[1] = 0.0
    w[2] = 1e-12  # step 1e-12/31 underflows fp16 to 0
    q = GptqLiteQuantizer(0)
    stored, _, back = round_trip(q, "w", w)
    assert torch.isfinite(back).all()
    assert torch.all(stored["w.q"][1] == 0) and torch.all(stored["w.q"][2] == 0)
    assert torch.all(back[1] == 0) and torch.all(back[2] == 0)
    assert torch.equal(q.fake_quantize(w), back)
    with pytest.raises(ValueError, match="float16"):
        q.quantize("huge", torch.full((2, 4), 1e7), "quantize")


def test_row_step_and_fake_quantize_match_the_export_exactly():
    q = GptqLiteQuantizer(float_max_numel=4096)
    w = outlier_matrix(rows=16, cols=512, seed=3)  # 8192 elements > 4096: int6 path
    stored, info, back = round_trip(q, "m", w)
    assert info["scheme"] == "int_row"
    assert torch.equal(q.fake_quantize(w), back)
    assert torch.equal(q.row_step(w), stored["m.scale"].float())
    # row_step is differentiable through the chosen clip quantile
    wg = w.clone().requires_grad_(True)
    q.row_step(wg).square().sum().backward()
    assert wg.grad is not None and torch.isfinite(wg.grad).all() and wg.grad.abs().sum() > 0
    assert (wg.grad != 0).sum(-1).max() <= 2  # only the (at most two) elements the quantile interpolates
    # at or below float_max_numel a "quantize" matrix is fp16, and fake_quantize says so
    small = torch.randn(32, 64)
    stored, info, back = round_trip(q, "s", small)
    assert info["scheme"] == "float16" and torch.equal(q.fake_quantize(small), back.float())
    # higher-rank tensors quantize per row of the last dim
    w3 = outlier_matrix(rows=16, cols=512, seed=4).view(2, 8, 512)
    stored, _, back = round_trip(q, "b", w3)
    assert stored["b.scale"].shape == (2, 8) and torch.equal(q.fake_quantize(w3), back)


def test_fake_quantize_compiles_fullgraph():
    q = GptqLiteQuantizer(float_max_numel=0)
    w = outlier_matrix(rows=8, cols=256)
    compiled = torch.compile(q.fake_quantize, fullgraph=True, backend="eager")
    assert torch.equal(compiled(w), q.fake_quantize(w))


def test_other_export_kinds_follow_the_core():
    q = GptqLiteQuantizer(float_max_numel=100)
    emb = torch.randn(64, 32) * 0.01
    stored, info, _ = round_trip(q, "tok_emb.weight", emb, "embedding")
    assert info["scheme"] == "int8_row" and stored["tok_emb.weight.q"].abs().max() > 31
    ctrl = torch.randn(512) * 1.2345
    stored, info, back = round_trip(q, "blocks.0.attn_scale", ctrl, "float32")
    assert info["scheme"] == "float32" and back.dtype == torch.float32 and torch.equal(back, ctrl)  # D18
    stored, info, back = round_trip(q, "x", torch.randn(512), "float16")
    assert back.dtype == torch.float16
    ids = torch.arange(10)
    stored, info, back = round_trip(q, "ids", ids)
    assert torch.equal(back, ids)


def small_trained_model(quantizer):
    config = tiny_config(model_dim=128, num_layers=2, num_heads=4, num_kv_heads=2)
    config.export.float_max_numel = 4096
    config.train.iterations = 3
    host = host_with(config, GptqLite)
    model = build_model(config, host, quantizer)
    train_briefly(config, host, model, quantizer)
    return config, host, model


def test_artifact_smaller_than_core_int8_zstd_and_loads(capsys):
    quantizer = GptqLiteQuantizer(float_max_numel=4096)
    config, host, model = small_trained_model(quantizer)
    assert host.first("golf_quantizer", config=config).name == "gptq_lite"
    state, specs = model.state_dict(), param_specs(model)
    core = pack(state, specs, Int8Quantizer(4096), ZstdCompressor())
    ours = pack(state, specs, quantizer, LzmaCompressor())
    with capsys.disabled():
        print(f"\n[gptq_lite] artifact of the same trained model: int8+zstd {len(core)} B, gptq_lite+lzma {len(ours)} B")
    assert len(ours) < len(core)
    back = unpack(ours, {"gptq_lite": quantizer}, {"lzma": LzmaCompressor()})
    fresh = build_model(config, host, quantizer)
    fresh.load_state_dict(back, strict=True)
    for name, w in model.state_dict().items():
        if name.startswith("layers."):
            assert torch.equal(fresh.state_dict()[name], quantizer.fake_quantize(w))
    tokens = torch.randint(0, 64, (2, 16))
    assert torch.isfinite(fresh.logits(tokens)).all()


def test_quantizer_reads_the_config():
    config = resolve(
        {"export": {"float_max_numel": 123}, "plugins": {"gptq_lite": {"percentiles": [0.99, 1], "max_level": 15}}}, discover(), "<test>"
    )
    quantizer = GptqLite(config.plugins["gptq_lite"]).golf_quantizer(config)
    assert quantizer.float_max_numel == 123 and quantizer.percentiles == [0.99, 1.0] and quantizer.max_level == 15
    assert quantizer.scale_floor is False  # D15 fixed by default
    config = resolve({"plugins": {"gptq_lite": {"scale_floor": True}}}, discover(), "<test>")
    assert GptqLite(config.plugins["gptq_lite"]).golf_quantizer(config).scale_floor is True
    stored, _, _ = round_trip(quantizer, "w", torch.randn(4, 100))
    assert stored["w.q"].abs().max() == 15


@pytest.mark.parametrize(
    "table, key",
    [
        ({"percentiles": []}, "percentiles"),
        ({"percentiles": [0.0, 1.0]}, "percentiles"),
        ({"percentiles": [1.5]}, "percentiles"),
        ({"percentiles": "0.999"}, "percentiles"),
        ({"max_level": 0}, "max_level"),
        ({"max_level": 128}, "max_level"),
        ({"bits": 6}, "bits"),
    ],
)
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.gptq_lite\].*{key}"):
        resolve({"plugins": {"gptq_lite": table}}, discover(), "<test>")


def test_no_parameters_added():
    plain = build_model(tiny_config(), host_with(tiny_config()), None)
    config = tiny_config()
    model = build_model(config, host_with(config, GptqLite), None)
    assert set(param_specs(model)) == set(param_specs(plain))


def test_search_with_top_k_equals_the_full_sort_search():
    """The clip search reads only each row's largest values (topk); steps and choices are those of
    the full-sort search it replaced, bit for bit."""
    q = GptqLiteQuantizer(float_max_numel=0)
    w = outlier_matrix(rows=24, cols=640)
    a = w.abs().sort(dim=-1).values
    n = a.size(-1)
    clips = []
    for p in q.percentiles:
        pos = p * (n - 1)
        lo = int(pos)
        clips.append(torch.lerp(a[:, lo], a[:, min(lo + 1, n - 1)], pos - lo))
    raw = torch.stack(clips) / q.max_level
    steps = raw.half().float()
    err = (q._levels(w, steps.unsqueeze(-1)) * steps.unsqueeze(-1) - w).square().sum(-1)
    choice = err.argmin(0)
    step, got_choice = q._search(w)
    assert torch.equal(got_choice, choice)
    assert torch.equal(step, steps.gather(0, choice[None])[0])
