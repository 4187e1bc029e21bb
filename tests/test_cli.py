"""The `golf` command as a user meets it: real subprocesses, real recipes, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def golf(*args, cwd=None, check=True, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "golf_cli", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"golf {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_recipe(tmp_path: Path, data_root: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
extends = "{REPO / 'recipes' / 'quickstart.toml'}"
[run]
name = "tiny"
out_dir = "{tmp_path / 'runs'}"
[data]
root = "{data_root}"
max_val_tokens = 4096
[model]
num_layers = 2
model_dim = 32
num_heads = 2
num_kv_heads = 1
[train]
iterations = 6
warmdown_iters = 2
batch_tokens = 1024
seq_len = 64
val_every = 3
log_every = 2
[eval]
stride = 32
{extra}
""")
    return path


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["run", "nope.toml"], "nope.toml: recipe not found", 2),
        (["run", "recipes/quickstart.toml", "--set", "model.num_layrs=3"], "[model] unknown key 'num_layrs'", 2),
        (["run", "recipes/quickstart.toml", "--set", "train.iterations=abc"], "[train] iterations = 'abc': expected int", 2),
        (["run", "recipes/quickstart.toml", "--with", "no_such_plugin"], "[plugins.no_such_plugin] unknown plugin", 2),
        (["run", "recipes/quickstart.toml", "--without", "ema"], "--without ema", 2),
        (["eval", "recipes"], "not a finished run directory", 1),
        (["run", "recipes/quickstart.toml", "--nproc", "0"], "--nproc 0: must be >= 1", 2),
        (["bench", "recipes/quickstart.toml", "--steps", "0"], "--steps 0: must be >= 1", 2),
        (["bench", "recipes/quickstart.toml", "--warmup", "-1"], "--warmup -1: must be >= 0", 2),
        (["plugins", "show", "emaa"], "no installed plugin named 'emaa'; close matches: ema", 2),
        (["data", "text", "no_such_file.txt", "--name", "x"], "no_such_file.txt", 1),
    ],
)
def test_user_mistakes_are_one_line_with_their_exit_code(args, message, code):
    proc = golf(*args, check=False)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().count("\n") == 0


def test_recipe_errors_exit_2():
    assert golf("run", "recipes/quickstart.toml", "--set", "model.num_heads=3", check=False).returncode == 2


def test_missing_fineweb_names_the_command(tmp_path):
    proc = golf("run", "recipes/baseline.toml", "--set", f'data.root="{tmp_path}"', check=False)
    assert proc.returncode == 1
    assert "golf data fineweb --variant sp1024 --train-shards 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_prints_the_traceback_with_its_cause(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no module named torchvision')\n")
    args = ["plugins", "--plugins-dir", tmp_path]
    plain = golf(*args, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == f"error: {broken}: failed to import: ImportError: no module named torchvision"
    for debug_args, env in (([ "--debug"], {}), ([], {"GOLF_DEBUG": "1"})):
        proc = golf(*debug_args, *args, check=False, env=env)
        assert proc.returncode == 2
        assert "Traceback" in proc.stderr and "golfcore.errors.ConfigError: " in proc.stderr
        assert "ImportError: no module named torchvision" in proc.stderr


def test_plugins_lists_installed_and_enabled():
    for args in (["plugins", "list", "recipes/quickstart.toml"], ["plugins", "recipes/quickstart.toml"]):
        proc = golf(*args)
        assert "gelu_mlp" in proc.stdout and "entry point (golf-example)" in proc.stdout and "enabled" in proc.stdout


def test_plugins_show_one_plugin():
    proc = golf("plugins", "show", "gelu_mlp")
    lines = proc.stdout.splitlines()
    assert lines[0] == "gelu_mlp: GELU MLP activation instead of relu² (example third-party plugin)"
    assert "  source:  entry point (golf-example)" in lines and "  version: 0.1.0" in lines
    assert "  hooks:   golf_edit_model" in lines
    assert "    approximate: Literal['none', 'tanh'] = 'none'" in lines
    assert "        GELU form: exact erf, or the tanh approximation" in lines
    (file_line,) = [line for line in lines if line.startswith("  file:")]
    path = Path(file_line.split(maxsplit=1)[1])
    assert path.name == "__init__.py" and path.parent.name == "golf_example"
    source = golf("plugins", "show", "gelu_mlp", "--source")
    assert source.stdout == path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_run_then_eval_reproduces_the_score(tmp_path, pystdlib_root):
    recipe = tiny_recipe(tmp_path, pystdlib_root)
    proc = golf("run", recipe, "--trace-hooks")
    assert "val_bpb" in proc.stdout and "step:6/6 train_loss:" in proc.stdout
    assert "hook golf_model_built: called none; answered by nobody (core default)" in proc.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("tiny-") and not run_dir.name.endswith(".incomplete")
    result = json.loads((run_dir / "result.json").read_text())
    for key in ("val_bpb", "stages", "steps", "tokens", "train_seconds", "eval_seconds", "artifact", "plugins",
                "pre_export_val_loss", "quantization_damage_nats",
                "seed", "versions", "git_revision", "compliance", "data"):
        assert key in result, key
    assert result["steps"] == 6 and result["tokens"] == 6 * 1024
    assert result["data"]["targets"] == 4096 and result["data"]["fingerprint"]["corpus"] == "pystdlib"
    assert result["artifact"]["total_bytes"] == result["artifact"]["model_bytes"] + result["artifact"]["code_bytes"]
    assert result["artifact"]["model_bytes"] == (run_dir / "model.golf").stat().st_size
    assert result["legal"] and result["violations"] == []
    for name in ("c1_causal", "c2_normalized", "c3_score_before_update", "c4_each_target_once", "artifact_budget"):
        assert result["compliance"][name]["status"] == "pass", name
    assert result["compliance"]["train_time"]["status"] == "not checked"  # a CPU is not the challenge's 8xH100
    log = (run_dir / "log.txt").read_text()
    assert "step:2/6 train_loss:" in log and "step:3/6 val_loss:" in log
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 4
    # the re-score loads only the artifact bytes and the resolved recipe
    again = golf("eval", run_dir)
    bpb = float(again.stdout.split("val_bpb:")[1].split()[0])
    assert bpb == pytest.approx(result["val_bpb"], abs=1e-6)
    # evaluation overrides are fine; an override that changes the model no longer fits the artifact
    sliding = golf("eval", run_dir, "--set", "eval.stride=16")
    assert "val_bpb:" in sliding.stdout
    changed = golf("eval", run_dir, "--with", "leaky_relu2", "--set", "model.num_layers=3", check=False)
    assert changed.returncode == 1 and "artifact does not match the recipe's model" in changed.stderr
    assert "Traceback" not in changed.stderr


@pytest.mark.slow
def test_run_with_two_processes(tmp_path, pystdlib_root):
    recipe = tiny_recipe(tmp_path, pystdlib_root)  # micro_batches = 1 (quickstart's): 2 processes split it
    proc = golf("run", recipe, "--nproc", "2")
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 6 and result["tokens"] == 6 * 1024
    note = ("[train] micro_batches 1 is not divisible by 2 processes: each process accumulates 1 micro-batch "
            "of 512 tokens (2 in all; batch_tokens 1024 unchanged)")
    assert proc.stdout.count(note) == 1 and note in (run_dir / "log.txt").read_text()
    assert proc.stdout.count("final stage:roundtrip") == 1  # only rank 0 reports


def test_batch_that_cannot_be_split_fails_before_launch(tmp_path, pystdlib_root):
    recipe = tiny_recipe(tmp_path, pystdlib_root)
    proc = golf("run", recipe, "--nproc", "3", check=False)
    assert proc.returncode == 2 and "model_params" not in proc.stdout and not (tmp_path / "runs").exists()
    assert proc.stderr.strip() == (f"error: {recipe}: [train] batch_tokens 1024 cannot be split over 3 processes: "
                                   "it is not a multiple of 3 processes x seq_len 64")


FAILS_ON_ONE_RANK = """
import os

import golfcore as golf


class FailOnRank(golf.Plugin):
    name = "fail_on_rank"
    description = "raises a user error after the first step on the rank named by GOLF_TEST_FAIL_RANK"

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        if os.environ.get("RANK", "0") == os.environ["GOLF_TEST_FAIL_RANK"]:
            raise golf.ConfigError("[plugins.fail_on_rank] refusing to go on")
"""


@pytest.mark.slow
def test_user_error_in_one_process_is_reported_once_with_its_exit_code(tmp_path, pystdlib_root):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "fail_on_rank.py").write_text(FAILS_ON_ONE_RANK)
    args = ["run", tiny_recipe(tmp_path, pystdlib_root), "--plugins-dir", plugins, "--with", "fail_on_rank"]
    single = golf(*args, check=False, env={"GOLF_TEST_FAIL_RANK": "0"})
    assert single.returncode != 0
    (line,) = [line for line in single.stderr.splitlines() if line.startswith("error:")]
    assert "refusing to go on" in line
    # rank 1 fails while rank 0 waits for it in a collective
    two = golf(*args, "--nproc", "2", check=False, env={"GOLF_TEST_FAIL_RANK": "1"})
    assert two.returncode == single.returncode
    assert [line for line in two.stderr.splitlines() if line.startswith("error:")] == [line]
    assert "Traceback" not in two.stderr + two.stdout


@pytest.mark.slow
def test_bench_prints_figures(tmp_path, pystdlib_root):
    recipe = tiny_recipe(tmp_path, pystdlib_root)
    proc = golf("bench", recipe, "--steps", "2", "--warmup", "1", "--peak-tflops", "1.0")
    for figure in ("full.step_ms", "warmdown.step_ms", "tokens_per_s", "model_tflops_per_token_causal", "full.mfu_causal",
                   "peak_rss_gib", "attention", "sdpa", "activation_dtype"):
        assert figure in proc.stdout


@pytest.mark.slow
def test_bench_compare_times_both_and_prints_ratios(tmp_path, pystdlib_root):
    recipe = tiny_recipe(tmp_path, pystdlib_root)
    proc = golf("bench", recipe, "--compare", "--set", "model.num_layers=4", "--steps", "2", "--warmup", "1")
    ratios = dict(line.split(" (second / first): ") for line in proc.stdout.splitlines() if "(second / first)" in line)
    assert set(ratios) == {f"{regime}.{kind}_time_ratio" for regime in ("full", "warmdown") for kind in ("step", "cpu")}
    assert all(float(r) > 0 for r in ratios.values())
    assert "--set model.num_layers=4" in proc.stdout
    bad = golf("bench", recipe, "--against", recipe, check=False)
    assert bad.returncode != 0 and "error: --against needs --compare" in bad.stderr
