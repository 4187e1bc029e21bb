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
