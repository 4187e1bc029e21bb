"""The shipped recipes: they resolve, build the models they promise and run end to end (compiling them: tests/test_compile.py, tests/test_cuda.py)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import golfcore as golf
from golfcore.assemble import build_model, check_config
from golfcore.model import count_parameters
from golfcore.plugins import Host, discover
from golfcore.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def model_of(recipe: str, *without: str):
    available = discover()
    config = load_recipe(RECIPES / recipe, available, without=list(without))
    host = Host(config, available)
    check_config(config, host)
    return config, build_model(config, host, host.first("golf_quantizer", config=config))


def test_full_scale_parameter_counts_match_the_records_logs():
    # the challenge baseline logs 17,059,912 and the PR #549 record 26,928,220; PR #733 logs
    # 27,051,758, which includes block 0's two value-residual weights that are never used (D7):
    # golf does not create them
    assert count_parameters(model_of("baseline.toml")[1]) == 17_059_912
    assert count_parameters(model_of("pr549.toml")[1]) == 26_928_220
    assert count_parameters(model_of("v4.toml")[1]) == 27_051_758 - 2


def test_pr549_is_the_record_as_it_ran():
    config = load_recipe(RECIPES / "pr549.toml", discover())
    plugins = config.plugins
    assert "swa" not in plugins  # collected but never applied by the record's code (D4)
    assert plugins["xsa"].layers == "last:4" and plugins["bigram_hash"].buckets == 1536
    assert plugins["ema"].decay == 0.997
    ttt = plugins["ttt"]
    assert (ttt.lr, ttt.momentum, ttt.epochs, ttt.batch_seqs, ttt.grad_clip, ttt.freeze_blocks) == (0.002, 0.9, 3, 32, 1.0, 0)
    assert (config.train.iterations, config.eval.chunk_tokens, config.eval.stride) == (9000, 32768, 64)


def test_v4_is_pr549_plus_the_six_techniques():
    available = discover()
    v4 = load_recipe(RECIPES / "v4.toml", available)
    pr549 = load_recipe(RECIPES / "pr549.toml", available)
    assert set(v4.plugins) - set(pr549.plugins) == {"value_residual", "gated_attention", "crownq", "recurrence", "hedge_mixer"}
    assert set(pr549.plugins) <= set(v4.plugins)
    # the two settings PR #733 changed in PR #549's techniques: XSA everywhere, BigramHash 2048
    assert v4.plugins["xsa"].layers == "all" and v4.plugins["bigram_hash"].buckets == 2048
    assert v4.train.iterations == 20000
    assert set(load_recipe(RECIPES / "v4-quick.toml", available).plugins) == set(v4.plugins)
    assert set(load_recipe(RECIPES / "pr549-quick.toml", available).plugins) == set(pr549.plugins)


def test_caseops_quick_is_quickstart_on_the_caseops_corpus_whole_split():
    available = discover()
    caseops = load_recipe(RECIPES / "caseops-quick.toml", available).to_dict()
    quick = load_recipe(RECIPES / "quickstart.toml", available).to_dict()
    assert caseops["data"]["corpus"] == "pystdlib_caseops" and caseops["data"]["max_val_tokens"] == 0
    for section in ("data", "run"):
        for key in ("corpus", "max_val_tokens", "name"):
            caseops[section].pop(key, None), quick[section].pop(key, None)
    assert caseops == quick


@pytest.mark.parametrize("technique", ["xsa", "value_residual", "gated_attention", "crownq", "recurrence", "ttt", "hedge_mixer"])
def test_every_v4_technique_switches_off(technique):
    config, model = model_of("v4-quick.toml", technique)
    assert technique not in config.plugins
    tokens = torch.randint(0, 1024, (1, 32))
    assert torch.isfinite(model.logits(tokens)).all()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["quickstart.toml", "pr549-quick.toml", "v4-quick.toml", "pr2135-quick.toml"])
def test_quick_recipe_runs_end_to_end_and_passes_every_probe(recipe, tmp_path, pystdlib_root):
    from tests.test_cli import golf

    golf("run", RECIPES / recipe, "--set", "train.iterations=4", "--set", "train.val_every=0",
         "--set", "data.max_val_tokens=2048", "--set", f'data.root="{pystdlib_root}"',
         "--set", f'run.out_dir="{tmp_path}"', "--set", "eval.chunk_tokens=512",
         # small pieces, so the 2,048 targets make enough rounds for the in-pass probe to draw one
         *(["--set", "plugins.lora_ttt.chunk=32", "--set", "plugins.lora_ttt.slots=2"] if recipe == "pr2135-quick.toml" else []))
    (run_dir,) = tmp_path.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    expected = {"quickstart.toml": ["roundtrip"], "pr549-quick.toml": ["roundtrip", "roundtrip+ttt"],
                "v4-quick.toml": ["roundtrip", "roundtrip+ttt", "roundtrip+ttt+hedge_mixer"],
                "pr2135-quick.toml": ["roundtrip", "roundtrip+lora_ttt", "roundtrip+lora_ttt+ngram_tilt"]}[recipe]
    assert list(result["stages"]) == expected
    assert result["legal"] and run_dir.name.startswith(result["name"]) and not run_dir.name.endswith(".invalid")
    for name in ("c1_causal", "c2_normalized", "c3_score_before_update", "c4_each_target_once", "artifact_budget"):
        assert result["compliance"][name]["status"] == "pass", name
    c1 = result["compliance"]["c1_causal"]
    assert c1["path"] == " -> ".join(["artifact model", "golf_before_eval", *expected[-1].split("+")[1:]])
    if "lora_ttt" in expected[-1]:  # document mode: two windows, the in-pass units are rounds
        assert c1["prefix_targets"] == 2 * 320 and c1["in_pass"]["unit"] == "round" and c1["in_pass"]["probed_units"] > 0
    elif len(expected) > 1:  # the probe crossed a chunk boundary (chunk_tokens=512 here)
        assert 511 in c1["cut_points"] and c1["prefix_targets"] > 512
    assert c1["reach"] > 0  # perturbing after each cut point visibly changed the later scores
    if recipe in ("pr549-quick.toml", "v4-quick.toml"):
        assert result["artifact"]["quantizer"] == "gptq_lite" and result["artifact"]["compressor"] == "lzma"


@pytest.mark.slow
def test_v4_quick_scores_are_causal_with_ttt_and_mixer():
    """Perturbing the stream after position p leaves every scored distribution at positions <= p
    unchanged, with TTT training between chunks and the Hedge mixer on (C1 end to end)."""
    import sentencepiece as spm

    from golfcore.eval import build_byte_luts, evaluate
    from tests.helpers import FINEWEB_TOKENIZER, CaptureAdapter

    luts = build_byte_luts(spm.SentencePieceProcessor(model_file=str(FINEWEB_TOKENIZER)), 1024)
    available = discover()
    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(2, 1024, (1537,), generator=generator)
    p = 900
    perturbed = stream.clone()
    perturbed[p + 1 :] = torch.randint(2, 1024, (stream.numel() - p - 1,), generator=generator)

    def score(tokens):
        config = load_recipe(RECIPES / "v4-quick.toml", available,
                             sets=["eval.chunk_tokens=256", "plugins.hedge_mixer.warmup_tokens=256"])
        host = Host(config, available)
        check_config(config, host)
        model = build_model(config, host, host.first("golf_quantizer", config=config))
        with torch.no_grad():
            for layer in model.layers:
                layer.o.weight.normal_(0, 0.02)
                layer.down.weight.normal_(0, 0.02)
        host.call("golf_before_eval", model=model, config=config)
        capture = CaptureAdapter()
        adapters = [*host.collect("golf_eval_adapter", config=config), capture]
        for adapter in adapters:
            adapter.start(model, golf.EvalContext.local(1024, tokens.numel() - 1, config.eval.chunk_tokens, config.eval_seq_len))
        model.eval()
        result = evaluate(model.logprobs, tokens, luts, seq_len=256, stride=64, batch_seqs=8,
                          adapters=adapters, chunk_tokens=256)
        assert [a.name for a in adapters] == ["ttt", "hedge_mixer", "capture"]
        assert result.targets == tokens.numel() - 1
        return capture.by_position()

    pos_a, rows_a = score(stream)
    pos_b, rows_b = score(perturbed)
    assert torch.equal(pos_a, torch.arange(stream.numel() - 1)) and torch.equal(pos_a, pos_b)
    assert torch.allclose(rows_a[: p + 1], rows_b[: p + 1], atol=1e-5)
    assert not torch.allclose(rows_a[p + 1 :], rows_b[p + 1 :], atol=1e-3)  # the probe can see a change
    assert torch.allclose(rows_a.logsumexp(-1), torch.zeros(rows_a.size(0)), atol=1e-3)


def test_pr1855_is_the_records_architecture_and_count():
    # PR #1855's log: model_params:35945671 at vocabulary 8192. By hand: embedding 8192·512 = 4,194,304;
    # per physical layer q 512² + k, v 2·256·512 + o 512² + up, down 2·2048·512 = 2,883,584, × 11;
    # block scalars per physical layer (shared by the loop's passes) 512 + 512 + 2·512 + 8 (q gain)
    # + 8·12 (sparse gate) = 2,152, × 11; skips 8 × 512 weights + 8 × 512 gates (17 virtual layers:
    # 8 encoder, 9 decoder); lane lambdas 6 × 11 (all physical layers, as the record); SmearGate 12 + 1
    available = discover()
    config = load_recipe(RECIPES / "pr1855.toml", available)
    host = Host(config, available)
    check_config(config, host)
    with torch.device("meta"):
        model = build_model(config, host, host.first("golf_quantizer", config=config))
    expected = 8192 * 512 + 11 * 2_883_584 + 11 * 2_152 + 2 * 8 * 512 + 6 * 11 + 13
    assert expected == 35_945_671
    assert count_parameters(model) == expected
    assert model.v2p == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [b.switch is not None for b in model.blocks] == [False] * 6 + [True] * 6 + [False] * 5
    assert [type(b).__name__ for b in model.blocks[-4:]] == ["LanedSplitBlock", "ParallelBlock", "ParallelBlock", "ParallelBlock"]
    block = model.blocks[0]
    assert [type(t).__name__ for t in block.output_transforms] == ["ExclusiveSelfAttention", "SparseHeadGate"]
    assert type(block.kernel).__name__ == "DocumentMaskedAttention" and block.rotary.dims == 16
    assert [b.input_scale for b in model.blocks[6:9]] == [1 / 4 ** 0.5, 1 / 5 ** 0.5, 1 / 6 ** 0.5]  # LN scale by physical layer
    assert config.model.qk_gain_init == 5.0 and config.model.mlp_hidden == 2048 and config.model.logit_softcap == 30.0


def test_pr2135_is_pr1855_with_its_launch_line_and_count():
    # PR #2135's log: model_params:35945673, PR #1855's count plus the asymmetric softcap's two caps
    available = discover()
    config = load_recipe(RECIPES / "pr2135.toml", available)
    host = Host(config, available)
    check_config(config, host)
    with torch.device("meta"):
        model = build_model(config, host, host.first("golf_quantizer", config=config))
    assert count_parameters(model) == 35_945_671 + 2 == 35_945_673
    assert (config.eval_seq_len, config.train.seq_len, config.optim.matrix_lr) == (2560, 2048, 0.028)
    assert config.plugins["gated_smear"].mask_bos is False  # SMEAR_GATE_BOS_FIX=0, as it ran
    tilt = config.plugins["ngram_tilt"]
    assert (tilt.order, tilt.boost, tilt.threshold) == (16, 2.625, 0.8)
    adapters = Host(config, available).collect("golf_eval_adapter", config=config)
    assert [a.name for a in adapters] == ["lora_ttt", "ngram_tilt"]  # the tilt tilts the adapted distribution


# train_seed42.log's Hyperparameters (ttt_*, phased_ttt_*, global_ttt_*), TTT_LORA_ALPHA's default
PR1855_TTT = dict(rank=80, alpha=144.0, targets=["q", "k", "v", "o", "up", "down"], lr=1e-4, beta1=0.0, beta2=0.99,
                  eps=1e-10, weight_decay=0.5, epochs=1, chunk=48, slots=64, short_len=0, short_chunk=0,
                  phase_prefix_docs=2500, phases=3, phase_lr=0.001, phase_momentum=0.9, phase_epochs=1,
                  phase_batch_seqs=16, phase_grad_clip=1.0)
PR2135_TTT = PR1855_TTT | dict(lr=8e-5, weight_decay=2.0, targets=["q", "v", "o", "up", "down"], phases=1, phase_batch_seqs=13)


@pytest.mark.parametrize("recipe, expected", [("pr1855.toml", PR1855_TTT), ("pr2135.toml", PR2135_TTT)])
def test_frontier_recipes_run_the_records_phased_lora_ttt(recipe, expected):
    config = load_recipe(RECIPES / recipe, discover())
    assert dataclasses.asdict(config.plugins["lora_ttt"]) == expected
    # every piece's window fits the eval context; one step per 32,768-token chunk, as the records
    assert expected["chunk"] <= config.eval_seq_len and abs(expected["phase_batch_seqs"] * config.eval_seq_len - 32768) < config.eval_seq_len


@pytest.mark.parametrize("recipe", ["pr1855-quick.toml", "pr2135-quick.toml"])
def test_frontier_quick_recipes_scale_the_ttt_down_and_keep_its_shape(recipe):
    full = load_recipe(RECIPES / recipe.replace("-quick", ""), discover()).plugins["lora_ttt"]
    quick = load_recipe(RECIPES / recipe, discover()).plugins["lora_ttt"]
    assert quick.alpha / quick.rank == pytest.approx(full.alpha / full.rank)  # the same update scale
    assert (quick.targets, quick.phases, quick.weight_decay, quick.beta2) == (full.targets, full.phases, full.weight_decay, full.beta2)
    assert quick.lr == pytest.approx(10 * full.lr) and quick.phase_prefix_docs == 4 and quick.slots == 4


@pytest.mark.parametrize("recipe", ["pr1855-quick.toml", "pr2135-quick.toml"])
def test_frontier_quick_recipes_keep_every_technique_and_score_finite(recipe):
    full = load_recipe(RECIPES / recipe.replace("-quick", ""), discover())
    config, model = model_of(recipe)
    assert set(config.plugins) == set(full.plugins) and config.data.corpus == "pystdlib_caseops"
    assert config.eval_seq_len >= config.train.seq_len
    assert torch.isfinite(model.logits(torch.randint(0, 1024, (1, config.eval_seq_len)))).all()


def test_the_records_export_is_gptq_and_pergroup_with_their_settings():
    available = discover()
    pr1855, pr2135 = (load_recipe(RECIPES / r, available) for r in ("pr1855.toml", "pr2135.toml"))
    g = pr1855.plugins["gptq"]
    assert (g.calibration_batches, g.matrix_bits, g.embedding_bits, g.lqer_rank, g.lqer_top_k, g.lqer_packing, g.lqer_group,
            g.awq_top_k) == (16, 6, 7, 4, 3, "asym", 64, 0)  # PR #1855's launch line and defaults
    assert g.clip_sigmas == {"embedding": 14.0, "q": 13.0, "k": 13.0, "v": 13.0, "o": 13.0, "up": 11.5, "down": 11.5}
    assert g.small_matrix_int8 and g.float32_as_float16 and pr1855.plugins["pergroup"].backend == "auto"
    assert pr1855.train.max_wallclock_seconds == 600.0 and g.calibration_reserve_seconds >= 4.7  # its Hessians' 4.7 s
    g2 = pr2135.plugins["gptq"]
    assert (g2.calibration_batches, g2.lqer_group) == (32, 32)  # GPTQ_CALIBRATION_BATCHES, LQER_ASYM_GROUP
    assert {k: v for k, v in vars(g2).items() if k not in ("calibration_batches", "lqer_group", "calibration_reserve_seconds")} == \
        {k: v for k, v in vars(g).items() if k not in ("calibration_batches", "lqer_group", "calibration_reserve_seconds")}


def test_frontier_quick_recipes_export_and_load_back_in_seconds():
    """The quick recipes inherit the records' export with a fast back-end and few calibration batches;
    pr2135-quick (pr1855-quick's export, LQER groups of 32) calibrates, packs and loads back."""
    from golfcore.artifact import pack, unpack
    from golfcore.calibration import calibrate
    from golfcore.params import param_specs

    available = discover()
    quick1855 = load_recipe(RECIPES / "pr1855-quick.toml", available)
    assert quick1855.plugins["gptq"].calibration_batches == 2 and quick1855.plugins["pergroup"].backend == "brotli"
    config = load_recipe(RECIPES / "pr2135-quick.toml", available)
    host = Host(config, available)
    check_config(config, host)
    quantizer, compressor = host.first("golf_quantizer", config=config), host.first("golf_compressor", config=config)
    assert (quantizer.name, compressor.name, compressor.backend) == ("gptq", "pergroup", "brotli")
    assert quantizer.calibration_batches == 2 and quantizer.cfg.lqer_group == 32
    torch.manual_seed(0)
    model = build_model(config, host, quantizer)
    with torch.no_grad():
        for layer in model.layers:  # zero-initialised projections: give them weights to quantize
            layer.o.weight.normal_(0, 0.02)
            layer.down.weight.normal_(0, 0.02)
    record = calibrate(quantizer, model, lambda: torch.randint(0, 1024, (2, 64)), model.logits)
    assert record.weights == 5 * 6 + 1  # every projection of 5 physical layers and the tied embedding
    blob = pack(model.state_dict(), param_specs(model), quantizer, compressor, config.export.smallest_layout)
    back = unpack(blob, {quantizer.name: quantizer}, {compressor.name: compressor})
    specs, state = param_specs(model), model.state_dict()
    for name, spec in specs.items():  # integer rows: rms error under one SDClip step (k·std/L) per row's std
        if spec.export in ("quantize", "embedding") and state[name].numel() > config.export.float_max_numel:
            steps_per_std, _ = quantizer.level_spread(name, spec.export, 0)  # L / k
            relative = (back[name] - state[name]).norm() / state[name].norm()
            assert 0 < relative < 1 / steps_per_std, name
    model.load_state_dict(back)
    assert torch.isfinite(model.logits(torch.randint(0, 1024, (1, 64)))).all()
