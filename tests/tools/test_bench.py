"""golf_tools.bench through `golf bench`: a few real training steps, the figures printed."""

import pytest
from golf_tools.bench import bench, regimes

from golfcore.plugins import discover
from golfcore.recipe import resolve
from golfcore.switch import TrainingSwitch
from tests.test_cli import golf, tiny_recipe


@pytest.mark.slow
def test_bench_prints_figures(tmp_path, pystdlib_root):
    recipe = tiny_recipe(tmp_path, pystdlib_root)
    proc = golf("bench", recipe, "--steps", "2", "--warmup", "1", "--peak-tflops", "1.0")
    for figure in ("step_ms", "tokens_per_s", "model_tflops_per_token", "mfu", "peak_rss_gib"):
        assert figure in proc.stdout


def test_dry_build_of_the_full_scale_recipes_allocates_nothing():
    import resource
    from pathlib import Path

    from golf_tools.bench import dry_build
    from golfcore.plugins import discover
    from golfcore.recipe import load_recipe

    available = discover()
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pr549 = dry_build(load_recipe(recipes / "pr549.toml", available), available, world_size=8)
    v4 = dry_build(load_recipe(recipes / "v4.toml", available), available, world_size=8)
    assert pr549["params"] == 26_928_220 and v4["params"] == 27_051_756
    assert pr549["micro_batch"].startswith("48 x 2048")  # 786,432 tokens over 8 ranks
    # v4 adds value residual, gated attention and two recurrent layers' activations to pr549's
    assert 10 < pr549["activations_gib"] < v4["activations_gib"] < 80
    assert v4["peak_memory_gib_estimate"] == pytest.approx(
        v4["weights_gib"] + v4["grads_gib"] + v4["optimizer_gib"] + v4["activations_gib"])
    # one fp32 copy of either model is 0.1 GiB; the activations counted are 40+ GiB: none was allocated
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 2**20  # KiB: under 1 GiB


def test_dry_build_counts_the_activations_a_real_step_keeps():
    """The meta-device count equals what the same forward on real CPU tensors saves for backward
    (each storage once), within the attention kernels' own bookkeeping."""
    from pathlib import Path

    import torch

    from golf_tools.bench import dry_build
    from golfcore.assemble import build_model, check_config
    from golfcore.plugins import Host, discover
    from golfcore.recipe import load_recipe

    available = discover()
    sets = ["model.num_layers=2", "model.model_dim=64", "train.seq_len=32", "train.batch_tokens=512",
            "train.micro_batches=1", "plugins.value_embeddings.layers=[0, 1]", "plugins.recurrence.repeat=[0, 1]"]
    config = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "v4-quick.toml", available, sets=sets)
    dry = dry_build(config, available, world_size=1)
    assert dry["micro_batch"] == "16 x 32 tokens, 1 per step per rank"

    host = Host(config, available)
    check_config(config, host)
    model = build_model(config, host, host.first("golf_quantizer", config=config))
    model.activation_dtype = torch.bfloat16
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def keep(x):
        storage = x.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return x

    tokens = torch.randint(0, config.model.vocab_size, (16, 32))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda x: x), torch.autocast("cpu", dtype=torch.bfloat16):
        model(tokens, tokens)
    assert dry["activations_gib"] * 2**30 == pytest.approx(sum(saved.values()), rel=0.05)


def test_regimes_are_every_combination_of_switch_states():
    switches = [TrainingSwitch("seq_len", (4, 8, 16), print), TrainingSwitch("qat", (False, True), print)]
    got = regimes(switches)
    assert got == {
        "full": (1.0, (4, False)),
        "qat=True": (1.0, (4, True)),
        "seq_len=8": (1.0, (8, False)),
        "seq_len=8,qat=True": (1.0, (8, True)),
        "seq_len=16": (1.0, (16, False)),
        "warmdown": (0.1, (16, True)),
    }
    assert regimes([]) == {"full": (1.0, ()), "warmdown": (0.1, ())}  # no switch: today's two regimes


def test_bench_times_each_sequence_length_and_late_qat_state():
    config = resolve({
        "model": {"vocab_size": 64, "num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1},
        "train": {"device": "cpu", "compile": "off", "seq_len": 32, "batch_tokens": 256, "micro_batches": 2},
        "plugins": {"progressive_context": {"seq_lens": [16, 32], "at": [0.5]}, "late_qat": {}},
    }, discover(), "<test>")
    figures = bench(config, discover(), steps=1, warmup=1)
    assert [figures[f"{r}.seq_len"] for r in ("full", "FakeQuantize=True", "seq_len=32", "warmdown")] == [16, 16, 32, 32]
    assert all(figures[f"{r}.steps_timed"] == 1 and figures[f"{r}.step_ms"] > 0 for r in ("full", "seq_len=32", "warmdown"))
    # attention FLOPs grow with the row length; the matmul FLOPs per token do not
    assert figures["seq_len=32.achieved_tflops"] / figures["seq_len=32.tokens_per_s"] > (
        figures["full.achieved_tflops"] / figures["full.tokens_per_s"])
