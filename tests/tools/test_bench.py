"""golf_tools.bench through `golf bench`: a few real training steps, the figures printed."""

import pytest

from tests.test_cli import golf, tiny_recipe


@pytest.mark.slow
def test_bench_prints_figures(tmp_path, pystdlib_root):
    recipe = tiny_recipe(tmp_path, pystdlib_root)
    proc = golf("bench", recipe, "--steps", "2", "--warmup", "1", "--peak-tflops", "1.0")
    for figure in ("step_ms", "tokens_per_s", "model_tflops_per_token", "mfu", "peak_rss_gib"):
        assert figure in proc.stdout
