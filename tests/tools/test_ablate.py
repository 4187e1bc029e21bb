"""`golf ablate`: planning on real recipes, then real ablations of a tiny CPU recipe.

The end-to-end ablation varies three plugins of a 2-layer, width-32 model trained 4 steps on
pystdlib (4,096 validation targets), on seeds 1337, 1338, 1339:
- reseed_embedding (tests/tools/ablate_plugins): redraws the token embedding from the same
  distribution with another seed, no effect in expectation: its verdict must not be significant;
- weight_penalty, lam = 5: an L2 penalty so strong the model hardly leaves its initialisation
  (before the Hedge mixer, val_loss 6.93 with it against 6.79 without). Its Δ is about -0.05
  nats with a 95% CI that excludes 0 (the reference's seed std is about 0.002 nats); three
  seeds and Holm over three variants do not bring it below p = 0.01, so the test checks its
  sign and its CI, not a verdict;
- hedge_mixer (built in), which acts only at evaluation: re-scored, never retrained.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from golf_tools.ablate import REFERENCE, plan_ablation, run_path
from golf_tools.ablation_report import render
from golfcore.errors import ConfigError
from golfcore.plugins import discover

REPO = Path(__file__).resolve().parents[2]
TEST_PLUGINS = Path(__file__).resolve().parent / "ablate_plugins"
SEEDS = "1337,1338,1339"


def golf(*args, check=True, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "golf_cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"golf {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_plugin(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(f"""
import golfcore as golf

class P(golf.Plugin):
    name = "{name}"
{body}
    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        pass
""")


# ----------------------------------------------------------------------------- planning (no training)


def test_eval_only_plugins_are_re_scored_and_the_rest_retrained():
    plan = plan_ablation(REPO / "recipes" / "v4-quick.toml", only=["xsa", "recurrence", "ttt", "hedge_mixer"], seeds=[1, 2])
    variants = {v.name: v for v in plan.variants}
    assert list(variants) == [REFERENCE, "without-xsa", "without-ttt", "without-recurrence", "without-hedge_mixer"]  # recipe order
    assert {n: v.rescored for n, v in variants.items()} == {
        REFERENCE: False, "without-xsa": False, "without-recurrence": False, "without-ttt": True, "without-hedge_mixer": True}
    assert variants["without-ttt"].args == ["--without", "ttt"]


def test_phase_is_declared_or_inferred_from_hooks():
    available = discover()
    assert available["ttt"].cls.acts_only_at_eval() and available["hedge_mixer"].cls.acts_only_at_eval()
    # recurrence also prepares the model for evaluation, but it shapes training too
    assert not available["recurrence"].cls.acts_only_at_eval()
    assert not available["xsa"].cls.acts_only_at_eval()

    class Declared(available["ttt"].cls):
        phase = "train"

    assert not Declared.acts_only_at_eval()


def test_removing_a_plugin_takes_its_dependents_and_impossible_variants_are_reported(tmp_path):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "base_feature", "")
    write_plugin(plugins, "needs_base", "    requires = ('base_feature',)\n")
    write_plugin(plugins, "needs_needs", "    requires = ('needs_base',)\n")
    write_plugin(plugins, "old_way", "")
    write_plugin(plugins, "new_way", "    conflicts = ('old_way',)\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text("[plugins.base_feature]\n[plugins.needs_base]\n[plugins.needs_needs]\n")
    plan = plan_ablation(recipe, plugins_dirs=[plugins], seeds=[1])
    variants = {v.name: v for v in plan.variants}
    assert variants["without-base_feature"].removed == ["base_feature", "needs_base", "needs_needs"]
    assert variants["without-needs_base"].removed == ["needs_base", "needs_needs"]
    assert variants["without-needs_needs"].removed == ["needs_needs"]
    assert all(v.impossible is None for v in plan.variants)

    # add mode: new_way conflicts with the base's old_way (which the full recipe turns off);
    # needs_needs brings needs_base along
    base = tmp_path / "base.toml"
    base.write_text("[plugins.base_feature]\n[plugins.old_way]\n")
    full = tmp_path / "full.toml"
    full.write_text('extends = "base.toml"\n[plugins.old_way]\nenabled = false\n'
                    "[plugins.needs_base]\n[plugins.needs_needs]\n[plugins.new_way]\n")
    plan = plan_ablation(full, mode="add", base=base, plugins_dirs=[plugins], seeds=[1], only=["needs_needs", "new_way"])
    variants = {v.name: v for v in plan.variants}
    assert variants["with-needs_needs"].added == ["needs_needs", "needs_base"]
    assert variants["with-needs_needs"].impossible is None
    assert "plugins 'new_way' and 'old_way' conflict" in variants["with-new_way"].impossible
    assert plan.sign == -1


def test_plan_mistakes_are_config_errors(tmp_path):
    recipe = REPO / "recipes" / "v4-quick.toml"
    with pytest.raises(ConfigError, match="--only nope: not a plugin this ablation varies"):
        plan_ablation(recipe, only=["nope"])
    with pytest.raises(ConfigError, match="--mode add needs --base"):
        plan_ablation(recipe, mode="add")
    with pytest.raises(ConfigError, match="each once"):
        plan_ablation(recipe, seeds=[1, 1])


def test_cli_mistake_is_one_line():
    proc = golf("ablate", "recipes/v4-quick.toml", "--only", "nope", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --only nope") and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the run loop (stand-in commands)


FAKE_RUN = """
import json, os, signal, sys
from pathlib import Path
target, behaviour = Path(sys.argv[1]), sys.argv[2]
partial = target.with_name(target.name + ".incomplete")
partial.mkdir(parents=True)
if behaviour == "fail":
    print("error: recipe.toml: [model] something is wrong")
    sys.exit(2)
if behaviour == "killed":
    os.kill(os.getpid(), signal.SIGTERM)
(partial / "recipe.toml").write_text("recipe")
(partial / "result.json").write_text(json.dumps({"seed": 1, "code_sha256": "abc", "val_bpb": 1.5}))
partial.rename(target)
"""


def fake_spec(tmp_path: Path, name: str, behaviour: str):
    from golf_tools.ablate import RunSpec, Variant

    target = run_path(tmp_path, name, 1)
    return RunSpec(Variant(name), 1, target, [sys.executable, "-c", FAKE_RUN, str(target), behaviour], "recipe", "abc")


def test_failed_and_interrupted_runs_do_not_stop_the_others_and_finished_ones_are_reused(tmp_path):
    from golf_tools.ablate import LocalLauncher, execute, failed_marker

    specs = [fake_spec(tmp_path, "a", "fail"), fake_spec(tmp_path, "b", "killed"), fake_spec(tmp_path, "c", "ok")]
    states = execute(specs, tmp_path, LocalLauncher(2, 1), lambda states: None, poll_seconds=0.05)
    assert [s.status for s in states] == ["failed", "interrupted", "done"]
    assert states[0].error == "error: recipe.toml: [model] something is wrong"
    assert failed_marker(specs[0].directory).read_text().strip() == states[0].error
    assert states[2].val_bpb == 1.5
    # the next session retries the failed and the interrupted runs, reuses the finished one,
    # and reruns a finished one whose key no longer matches (here: the code hash)
    specs[0].command[-1] = specs[1].command[-1] = "ok"
    stale = fake_spec(tmp_path, "c", "ok")
    stale.code_hash = "changed"
    states = execute([*specs, stale], tmp_path, LocalLauncher(1, 1), lambda states: None, poll_seconds=0.05)
    assert [s.status for s in states] == ["done", "done", "reused", "done"]
    assert not failed_marker(specs[0].directory).exists() and not list(tmp_path.glob("runs/*/*.incomplete"))


# ----------------------------------------------------------------------------- end to end (tiny CPU runs)


def tiny_recipe(tmp_path: Path, data_root: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
extends = "{REPO / 'recipes' / 'quickstart.toml'}"
[run]
name = "tiny"
[data]
root = "{data_root}"
max_val_tokens = 4096
[model]
num_layers = 2
model_dim = 32
num_heads = 2
num_kv_heads = 1
[train]
iterations = 4
warmdown_iters = 2
warmup_steps = 0
batch_tokens = 1024
seq_len = 64
val_every = 0
log_every = 2
[eval]
stride = 32
chunk_tokens = 1024
[plugins.reseed_embedding]
[plugins.weight_penalty]
lam = 5.0
[plugins.hedge_mixer]
warmup_tokens = 512
trigram_buckets = 1024
""")
    return path


def finished_runs(directory: Path) -> list[Path]:
    return sorted(p.parent for p in directory.glob("runs/*/seed-*/result.json"))


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, pystdlib_root):
    """The tiny ablation, killed (process group, SIGKILL) after two finished runs, then resumed."""
    tmp = tmp_path_factory.mktemp("ablation")
    recipe = tiny_recipe(tmp, pystdlib_root)
    out = tmp / "abl"
    command = [sys.executable, "-m", "golf_cli", "ablate", recipe, "--plugins-dir", TEST_PLUGINS, "--seed-list", SEEDS,
               "--out", out]
    first = subprocess.Popen(list(map(str, command)), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 1200
    while len(finished_runs(out)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {p: (p / "result.json").read_bytes() for p in finished_runs(out)}
    proc = golf(*command[3:])
    return {"dir": out, "recipe": recipe, "before_kill": before, "stdout": proc.stdout}


@pytest.mark.slow
def test_resume_runs_only_what_did_not_finish(ablation):
    out, before = ablation["dir"], ablation["before_kill"]
    assert len(before) >= 2
    (session,) = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    assert session["reused"] == len(before)
    assert session["executed"] == session["done"] == 12 - len(before)
    for run_dir, result in before.items():  # the runs finished before the kill were not redone
        assert (run_dir / "result.json").read_bytes() == result
    assert not list(out.glob("runs/*/*.incomplete")) and len(finished_runs(out)) == 12


@pytest.mark.slow
def test_verdicts_of_a_no_op_and_a_harmful_plugin(ablation):
    data = json.loads((ablation["dir"] / "ablation.json").read_text())
    by_name = {v["name"]: v for v in data["variants"]}
    noop = by_name["without-reseed_embedding"]["comparison"]
    assert noop["verdict"] == "not significant" and noop["p_adjusted"] >= 0.01
    harmful = by_name["without-weight_penalty"]["comparison"]
    assert harmful["delta_nats"] < 0 and harmful["ci_nats"][1] < 0


@pytest.mark.slow
def test_eval_only_variant_is_re_scored_not_retrained(ablation):
    out = ablation["dir"]
    trained = [p for p in finished_runs(out) if "step:" in (p / "log.txt").read_text()]
    assert len(trained) == 9  # reference, without-reseed_embedding, without-weight_penalty x 3 seeds
    for seed in (1337, 1338, 1339):
        rescored = run_path(out, "without-hedge_mixer", seed)
        result = json.loads((rescored / "result.json").read_text())
        reference = run_path(out, REFERENCE, seed)
        assert rescored not in trained and result["rescored_from"]["run_dir"] == str(reference)
        assert (rescored / "model.golf").read_bytes() == (reference / "model.golf").read_bytes()
        assert list(result["stages"]) == ["roundtrip"] and result["seed"] == seed
    # the same as a user's re-score of the reference artifact without the plugin
    proc = golf("eval", run_path(out, REFERENCE, 1338), "--without", "hedge_mixer", "--plugins-dir", TEST_PLUGINS)
    rescored = json.loads((run_path(out, "without-hedge_mixer", 1338) / "result.json").read_text())
    assert float(proc.stdout.split("val_bpb:")[1].split()[0]) == pytest.approx(rescored["val_bpb"], abs=1e-6)


@pytest.mark.slow
def test_outputs_agree_with_the_runs_and_report_reproduces_them(ablation):
    out = ablation["dir"]
    data = json.loads((out / "ablation.json").read_text())
    assert data["seeds"] == [1337, 1338, 1339]
    for group in [data["reference"], *data["variants"]]:
        for run in group["runs"]:
            result = json.loads((out / run["run_dir"] / "result.json").read_text())
            assert run["status"] == "done" and run["val_bpb"] == result["val_bpb"]
            assert run["val_loss"] == result["stages"][result["final_stage"]]["val_loss"]
    ref_bpb = [r["val_bpb"] for r in data["reference"]["runs"]]
    assert data["reference"]["val_bpb"]["mean"] == pytest.approx(sum(ref_bpb) / 3)
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "variant,seed,kind,status,val_bpb,val_loss,run_dir,error" and len(rows) == 13
    table = (out / "table.md").read_text()
    assert "| without-hedge_mixer | re-scored | 3/3 |" in table and "| without-weight_penalty | retrained | 3/3 |" in table
    assert (out / "delta.png").read_bytes()[:4] == b"\x89PNG"
    saved = {name: (out / name).read_bytes() for name in ("ablation.json", "table.md", "results.csv")}
    for name in saved:
        (out / name).unlink()
    proc = golf("ablate", "--report", out)
    assert "| without-weight_penalty | retrained | 3/3 |" in proc.stdout
    for name, content in saved.items():
        assert (out / name).read_bytes() == content, name
    assert json.loads(json.dumps(render(out)))["variants"] == data["variants"]


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_variant_ablation(ablation, tmp_path):
    out = tmp_path / "abl"
    golf("ablate", ablation["recipe"], "--plugins-dir", TEST_PLUGINS, "--only", "weight_penalty,hedge_mixer",
         "--seed-list", "1337", "--launcher", "submitit-local", "--time", "20", "--out", out)
    data = json.loads((out / "ablation.json").read_text())
    assert [v["name"] for v in data["variants"]] == ["without-weight_penalty", "without-hedge_mixer"]
    assert all(v["comparison"]["verdict"] == "1 seed: no test" for v in data["variants"])
    assert list((out / "submitit").iterdir())  # the jobs went through submitit
    # an uninterrupted ablation gives the same numbers as the resumed one, run for run
    for variant in (REFERENCE, "without-weight_penalty", "without-hedge_mixer"):
        here = json.loads((run_path(out, variant, 1337) / "result.json").read_text())
        there = json.loads((run_path(ablation["dir"], variant, 1337) / "result.json").read_text())
        assert here["val_bpb"] == there["val_bpb"], variant
