"""golf against a careless user and a hostile machine: each row of `CASES` is one mistake or fault,
the command that shows it, and the exit code and one-line message golf must answer with (no
traceback, nothing lost). `python tests/test_robustness.py` re-runs the rows and prints the table.

Rows marked slow need a finished run (one tiny run, shared) and run end to end; the rest fail
before training and run in-process. Signals are tested with real processes below the table.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

BAD_ANSWERS = '''
import golfcore as golf


class StrActivation(golf.Plugin):
    name = "str_activation"
    description = "puts a str where a layer's activation Part goes"

    @golf.hookimpl
    def golf_edit_model(self, description, config, quantizer):
        description.layers[1].activation = "relu"


class StrAddition(golf.Plugin):
    name = "str_addition"
    description = "adds a str to the embedding additions"

    @golf.hookimpl
    def golf_edit_model(self, description, config, quantizer):
        description.embedding.additions.append("bigram")


class StrOptimizers(golf.Plugin):
    name = "str_optimizers"
    description = "answers golf_optimizers with a str"

    @golf.hookimpl
    def golf_optimizers(self, model, config):
        return "adam"


class TemperatureProbeWithALongName(golf.Plugin):
    name = "temperature_probe_with_a_long_name"
    description = "does nothing; its name is longer than a narrow table's column"
'''


@dataclass
class Case:
    """One row: `args` (with {placeholders} filled from World.paths), the exit code and a regex of
    the one line golf must print (on stderr; stdout for a code of 0); `setup(world)` prepares the
    files the row needs, `after(world)` checks what must be left untouched."""

    id: str
    args: list[str]
    code: int
    message: str
    setup: object = None
    after: object = None
    slow: bool = False


class World:
    """The files the cases run against: a tiny recipe on the pystdlib corpus, plugin folders,
    and (for the slow rows) one finished run."""

    def __init__(self, tmp: Path, data_root: Path):
        self.tmp, self.data = tmp, data_root
        self.recipe = tmp / "tiny.toml"
        self.recipe.write_text(tiny_recipe(tmp / "runs", data_root))
        (tmp / "bad_answers").mkdir()
        (tmp / "bad_answers" / "bad_answers.py").write_text(BAD_ANSWERS)
        (tmp / "exits").mkdir()
        (tmp / "exits" / "exits.py").write_text("import sys\nsys.exit(0)\n")
        self.run_dir: Path | None = None
        self._locks: list[int] = []

    @property
    def paths(self) -> dict[str, str]:
        return {"tmp": str(self.tmp), "recipe": str(self.recipe), "data": str(self.data),
                "run": str(self.run_dir), "bad": str(self.tmp / "bad_answers"), "exits": str(self.tmp / "exits")}

    def hold_lock(self, run_dir: Path) -> None:
        """Stand in for a live golf run holding run_dir (a second process or this one: flock sees both)."""
        run_dir.mkdir(parents=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"pid {os.getpid()} on test since now".encode())
        self._locks.append(fd)


def tiny_recipe(out_dir: Path, data_root: Path, extra: str = "") -> str:
    return f"""
extends = "{REPO / 'recipes' / 'quickstart.toml'}"
[run]
name = "tiny"
out_dir = "{out_dir}"
[data]
root = "{data_root}"
max_val_tokens = 2048
[model]
num_layers = 2
model_dim = 32
num_heads = 2
num_kv_heads = 1
[train]
iterations = 4
warmdown_iters = 2
batch_tokens = 1024
seq_len = 64
val_every = 0
log_every = 2
{extra}
"""


# ----------------------------------------------------------------------------- setups


def empty_recipe(w: World) -> None:
    (w.tmp / "empty.toml").write_text("# nothing\n")


def interrupted_run_dir(w: World) -> None:
    (w.tmp / "left.incomplete").mkdir()
    (w.tmp / "left.incomplete" / "recipe.toml").write_text(w.recipe.read_text())


def interrupted_run_dir_kept(w: World) -> None:
    assert (w.tmp / "left.incomplete" / "recipe.toml").read_text() == w.recipe.read_text()


def live_run_dir(w: World) -> None:
    w.hold_lock(w.tmp / "live.incomplete")


def unfinished_run(w: World) -> None:
    """A run interrupted while scoring: recipe and artifact written, no result.json."""
    (w.tmp / "unfinished.incomplete").mkdir(exist_ok=True)
    (w.tmp / "unfinished.incomplete" / "recipe.toml").write_text(w.recipe.read_text())
    (w.tmp / "unfinished.incomplete" / "model.golf").write_bytes(b"not scored")


def foreign_shards(w: World) -> None:
    from golfcore.data import read_shard, write_shard

    folder = w.tmp / "shards"
    folder.mkdir()
    val = sorted((w.data / "pystdlib").glob("*val*.bin"))[0]
    write_shard(folder / "x_val_000000.bin", read_shard(val))
    write_shard(folder / "x_train_000000.bin", np.full(5000, 2000, dtype=np.uint16))


def file_as_root(w: World) -> None:
    (w.tmp / "a_file").write_text("not a folder")


def binary_input(w: World) -> None:
    (w.tmp / "image.bin").write_bytes(b"\x89PNG\x00\x00binary")


def corrupt_plan(w: World) -> None:
    (w.tmp / "abl-plan").mkdir()
    (w.tmp / "abl-plan" / "plan.json").write_text('{"recipe": "x", ')


def corrupt_result(w: World) -> None:
    from golf_tools.ablate import Plan, Variant, run_path
    from golf_tools.stats import Bar

    directory = w.tmp / "abl-result"
    Plan(str(w.recipe), "leave-one-out", [1337], [], [], [], [], [Variant("reference")], Bar()).save(directory)
    run_path(directory, "reference", 1337).mkdir(parents=True)
    (run_path(directory, "reference", 1337) / "result.json").write_text("{truncated")


def edit_recipe(old: str, new: str, name: str):
    """A copy of the finished run whose recipe.toml was edited after the run."""
    def setup(w: World) -> None:
        target = w.tmp / name
        if target.exists():
            return
        shutil.copytree(w.run_dir, target)
        text = (target / "recipe.toml").read_text()
        assert old in text
        (target / "recipe.toml").write_text(text.replace(old, new))
    return setup


def out_dir_left(w: World) -> None:
    (w.tmp / "rescore.incomplete").mkdir()
    (w.tmp / "rescore.incomplete" / "log.txt").write_text("an earlier re-score")


def out_dir_left_kept(w: World) -> None:
    assert (w.tmp / "rescore.incomplete" / "log.txt").read_text() == "an earlier re-score"


UNWRITABLE = os.path.join(os.sep, "proc", "golf-test")  # no folder can be made there
READ_ONLY = os.path.join(os.sep, "sys", "golf-test")  # a read-only file system
RUN = ["run", "{recipe}"]
MUST_BE = r"\[{section}\] {key} = {value}: must be "

CASES = [
    # data loss
    Case("run-dir-left-by-interrupted-run", [*RUN, "--run-dir", "{tmp}/left"], 1,
         r"left\.incomplete: left by an interrupted run; continue it with golf run --resume",
         interrupted_run_dir, interrupted_run_dir_kept),
    Case("run-dir-held-by-live-run", [*RUN, "--run-dir", "{tmp}/live"], 1,
         r"live\.incomplete: in use by another golf process \(pid \d+", live_run_dir),
    Case("eval-out-left-incomplete", ["eval", "{run}", "--out", "{tmp}/rescore"], 1,
         r"rescore\.incomplete: already exists; remove it yourself", out_dir_left, out_dir_left_kept, slow=True),
    # hangs
    Case("ablate-parallel-negative", ["ablate", "{recipe}", "--parallel", "-1"], 2, r"--parallel -1: must be >= 1"),
    Case("sizes-cannot-fit", [*RUN, "--set", "train.seq_len=1048576", "--set", "train.batch_tokens=1048576"], 2,
         r"sizes cannot fit: projected \d+\.\d GiB per process .* exceeds the"),
    Case("empty-recipe", ["run", "{tmp}/empty.toml"], 2, r"empty\.toml: the recipe sets nothing", empty_recipe),
    # tracebacks for user mistakes
    Case("folder-as-recipe", ["run", "{tmp}"], 2, r": is a folder, not a recipe file"),
    Case("micro-batches-0", [*RUN, "--set", "train.micro_batches=0"], 2, MUST_BE.format(section="train", key="micro_batches", value="0") + ">= 1"),
    Case("seq-len-0", [*RUN, "--set", "train.seq_len=0"], 2, MUST_BE.format(section="train", key="seq_len", value="0") + ">= 1"),
    Case("mlp-mult-nan", [*RUN, "--set", "model.mlp_mult=nan"], 2, MUST_BE.format(section="model", key="mlp_mult", value="nan") + "a finite number"),
    Case("mlp-mult-inf", [*RUN, "--set", "model.mlp_mult=inf"], 2, MUST_BE.format(section="model", key="mlp_mult", value="inf") + "a finite number"),
    Case("adam-eps-negative", [*RUN, "--set", "optim.adam_eps=-1"], 2, MUST_BE.format(section="optim", key="adam_eps", value="-1.0") + "> 0"),
    Case("adam-beta1-above-1", [*RUN, "--set", "optim.adam_beta1=1.5"], 2, MUST_BE.format(section="optim", key="adam_beta1", value="1.5") + ">= 0 and < 1"),
    Case("vocab-size-huge", [*RUN, "--set", "model.vocab_size=1000000000"], 2,
         MUST_BE.format(section="model", key="vocab_size", value="1000000000") + ">= 2 and <= 65536"),
    Case("hook-activation-str", [*RUN, "--plugins-dir", "{bad}", "--with", "str_activation"], 1,
         r"plugin 'str_activation': golf_edit_model put str 'relu' into slot layers\[1\]\.activation; a slot holds a golfcore\.Part"),
    Case("hook-addition-str", [*RUN, "--plugins-dir", "{bad}", "--with", "str_addition"], 1,
         r"plugin 'str_addition': golf_edit_model put str 'bigram' into slot embedding\.additions\[0\]; a slot holds"),
    Case("hook-optimizers-str", [*RUN, "--plugins-dir", "{bad}", "--with", "str_optimizers"], 1,
         r"plugin 'str_optimizers': golf_optimizers returned str 'adam'; the hook expects list\[.*Optimizer\]"),
    Case("new-plugin-unwritable", ["new-plugin", "foo", "--dir", UNWRITABLE], 1, rf"--dir {re.escape(UNWRITABLE)}: cannot create"),
    Case("shard-ids-above-vocab", [*RUN, "--set", 'data.shards="{tmp}/shards"', "--set", 'data.tokenizer="{data}/pystdlib/tokenizer.model"'], 1,
         r"shard .*x_train_000000\.bin holds token id 2000, outside the tokenizer's vocabulary of 1024", foreign_shards),
    Case("data-root-a-file", [*RUN, "--set", 'data.root="{tmp}/a_file"'], 1, r"a_file: (not a folder|Not a directory)", file_as_root),
    Case("eval-edited-model-size", ["eval", "{tmp}/resized"], 1, r"resized/recipe\.toml: edited after the run",
         edit_recipe("model_dim = 32", "model_dim = 64", "resized"), slow=True),
    Case("eval-set-model-size", ["eval", "{run}", "--set", "model.model_dim=64"], 1,
         r"artifact does not match the recipe's model .*shapes \(artifact vs model\)", slow=True),
    Case("out-dir-read-only", [*RUN, "--set", f'run.out_dir="{READ_ONLY}"'], 1,
         rf"{re.escape(READ_ONLY)}: (Operation not permitted|Permission denied|Read-only file system)"),
    Case("run-name-slash", [*RUN, "--set", 'run.name="a/b"'], 2, r"\[run\] name: 'a/b' must be a plain directory name"),
    Case("run-name-empty", [*RUN, "--set", 'run.name=""'], 2, r"\[run\] name: '' must be a plain directory name"),
    Case("run-name-escapes", [*RUN, "--set", 'run.name="../escaped"'], 2, r"\[run\] name: '\.\./escaped' must be a plain"),
    Case("ablation-plan-corrupt", ["ablate", "--report", "{tmp}/abl-plan"], 1,
         r"abl-plan/plan\.json: not a readable ablation plan", corrupt_plan),
    Case("ablation-result-corrupt", ["ablate", "--report", "{tmp}/abl-result"], 1,
         r"seed-1337/result\.json: not a readable result", corrupt_result),
    # runs scored as if they were fine
    Case("eval-unfinished-run", ["eval", "{tmp}/unfinished.incomplete"], 1, r"an unfinished run \(\.incomplete\) has no score",
         unfinished_run),
    Case("audit-unfinished-run", ["audit", "{tmp}/unfinished.incomplete"], 1, r"an unfinished run \(\.incomplete\) has no score",
         unfinished_run),
    Case("eval-edited-recipe", ["eval", "{tmp}/softcap"], 1, r"softcap/recipe\.toml: edited after the run",
         edit_recipe("logit_softcap = 30.0", "logit_softcap = 15.0", "softcap"), slow=True),
    Case("audit-edited-recipe", ["audit", "{tmp}/softcap"], 1, r"softcap/recipe\.toml: edited after the run",
         edit_recipe("logit_softcap = 30.0", "logit_softcap = 15.0", "softcap"), slow=True),
    # signals and exit codes (the signals themselves: below the table)
    Case("max-train-shards-negative", [*RUN, "--set", "data.max_train_shards=-1"], 2,
         MUST_BE.format(section="data", key="max_train_shards", value="-1") + ">= 0"),
    Case("data-text-strict-binary", ["data", "text", "{tmp}/image.bin", "--name", "x", "--strict", "--root", "{tmp}/textdata"], 1,
         r"image\.bin is binary \(NUL byte at offset 4\)", binary_input),
    Case("export-edited-recipe", ["export", "{tmp}/softcap", "--out", "{tmp}/record"], 1, r"softcap/recipe\.toml: edited after the run",
         edit_recipe("logit_softcap = 30.0", "logit_softcap = 15.0", "softcap"), slow=True),
    Case("plugins-dir-sys-exit", [*RUN, "--plugins-dir", "{exits}"], 2, r"exits\.py: failed to import: SystemExit: 0"),
    Case("run-help-exit-codes", ["run", "--help"], 0, r"3 not a legal score, 4 training diverged"),
    Case("with-and-without", [*RUN, "--with", "xsa", "--without", "xsa"], 2, r"--with xsa and --without xsa contradict"),
    Case("vocab-size-vs-tokenizer", [*RUN, "--set", "model.vocab_size=2048"], 2,
         r"\[model\] vocab_size 2048 does not match the pystdlib tokenizer's 1024 pieces"),
    Case("val-every-negative", [*RUN, "--set", "train.val_every=-1"], 2, MUST_BE.format(section="train", key="val_every", value="-1") + ">= 0"),
    Case("ablate-no-plugins", ["ablate", "{recipe}"], 2, r"tiny\.toml: no plugin to vary"),
]


def invoke(args: list[str]) -> tuple[int, str, str]:
    """golf ARGS in this process (typer's runner): (exit code, stdout, stderr); a traceback fails the test."""
    from typer.testing import CliRunner

    from golf_cli.main import app

    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"golf {' '.join(args)} raised {result.exception!r}") from result.exception
    return result.exit_code, result.stdout, result.stderr


def check(case: Case, world: World) -> tuple[int, str]:
    """Run a case; returns (exit code, the one line) after checking both against the row."""
    if case.setup:
        case.setup(world)
    code, out, err = invoke([a.format(**world.paths) for a in case.args])
    text = out if case.code == 0 else err
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    line = next((ln for ln in lines if re.search(case.message, ln)), lines[-1] if lines else "")
    assert code == case.code, f"{case.id}: exit {code}, expected {case.code}: {out}\n{err}"
    assert re.search(case.message, " ".join(text.split()) if case.code == 0 else line), f"{case.id}: {text!r}"
    if case.code != 0:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{case.id}: not one error line: {err!r}"
        assert "Traceback" not in out + err
    if case.after:
        case.after(world)
    return code, line if case.code else re.search(case.message, " ".join(text.split())).group(0)


@pytest.fixture(scope="module")
def world(tmp_path_factory, pystdlib_root):
    return World(tmp_path_factory.mktemp("robust"), pystdlib_root)


@pytest.fixture(scope="module")
def finished(world):
    """The slow rows' finished run (trained once, tiny)."""
    code, out, err = invoke(["run", str(world.recipe), "--run-dir", str(world.tmp / "finished")])
    assert code == 0, out + err
    world.run_dir = world.tmp / "finished"
    return world


@pytest.mark.parametrize("case", [c for c in CASES if not c.slow], ids=lambda c: c.id)
def test_mistake_is_one_line_with_its_exit_code(case, world):
    check(case, world)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.slow], ids=lambda c: c.id)
def test_mistake_about_a_finished_run_is_one_line(case, finished):
    check(case, finished)


def test_result_records_the_recipe_hash(finished):
    result = json.loads((finished.run_dir / "result.json").read_text())
    from golfcore.run import recipe_sha256

    assert result["recipe_sha256"] == recipe_sha256((finished.run_dir / "recipe.toml").read_text())
    assert not (finished.run_dir / ".lock").exists()


# ----------------------------------------------------------------------------- signals (real processes)


def golf_process(*args, cwd=REPO) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "golf_cli", *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def signal_after(proc: subprocess.Popen, marker: str, signum: int, timeout: float = 300) -> tuple[int, str, str]:
    """Send `signum` once `marker` appears on stdout; returns (exit code, stdout, stderr)."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(signum)
            break
        assert time.monotonic() < deadline, "".join(seen)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(seen) + out, err


SIGNAL_CASES = [
    # (id, extra recipe lines, marker on stdout after which SIGTERM is sent, expected message)
    ("sigterm-during-warm-up", "warmup_steps = 100000", "execution:", r"interrupted by SIGTERM during the compile warm-up"),
    ("sigterm-during-scoring", "[eval]\nstride = 1", "artifact group:", r"interrupted by SIGTERM (after training|while scoring stage roundtrip)"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, extra, marker, message", SIGNAL_CASES, ids=[c[0] for c in SIGNAL_CASES])
def test_signal_stops_with_75_and_a_message(name, extra, marker, message, tmp_path, pystdlib_root):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(tmp_path / "runs", pystdlib_root, extra.replace("[eval]", "\n[eval]")
                                  if extra.startswith("[eval]") else extra))
    code, out, err = signal_after(golf_process("run", recipe), marker, signal.SIGTERM)
    assert code == 75, out + err
    last = err.strip().splitlines()[-1]
    assert re.search(message, last) and "continue with: golf run --resume" in last, err
    assert "Traceback" not in out + err
    (partial,) = (tmp_path / "runs").iterdir()
    assert partial.name.endswith(".incomplete")


@pytest.mark.slow
def test_sigterm_during_eval_out_stops_with_75(finished):
    code, out, err = signal_after(golf_process("eval", finished.run_dir, "--set", "eval.stride=1", "--out",
                                               finished.tmp / "rescored"), "re-scoring", signal.SIGTERM)
    assert code == 75 and re.search(r"interrupted by SIGTERM while scoring stage roundtrip \(the re-score in .*rescored"
                                    r"\.incomplete stays unfinished\)", err), out + err
    assert (finished.tmp / "rescored.incomplete").is_dir() and not (finished.tmp / "rescored").exists()


SECOND_SIGNAL = """
import os, signal, sys, time
from golfcore.train import StopSignals
with StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    print("first:", signals.received, flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)  # a long step: the second signal must not wait for it
    print("survived", flush=True)
"""


def test_a_second_signal_stops_at_once():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "first: SIGINT\n" and proc.returncode == -signal.SIGINT
    assert "a second signal stops at once" in proc.stderr
    assert time.monotonic() - started < 25


def test_nested_stop_signals_are_one():
    from golfcore.train import StopSignals

    with StopSignals() as outer, StopSignals() as inner:
        assert inner is outer and StopSignals.active is outer
    assert StopSignals.active is None


# ----------------------------------------------------------------------------- classes tested below the CLI


def test_disk_full_while_writing_the_artifact_is_one_line(tmp_path, monkeypatch):
    import errno

    from golfcore import run
    from golfcore.errors import GolfError

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run, "write_atomic", full)
    with pytest.raises(GolfError, match=r"cannot write .*model\.golf: No space left on device"):
        run._write(tmp_path / "model.golf", b"x")


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    from golfcore import checkpoint
    from golfcore.checkpoint import Checkpoints
    from golfcore.config import RunConfig
    from golfcore.errors import CheckpointError

    store = Checkpoints(tmp_path, RunConfig(source="<test>"), "code")
    store.save({"step": 1, "w": torch.ones(3)})

    def full(tensors, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CheckpointError, match="step 2 .*No space left on device.*the previous checkpoint is kept"):
        store.save({"step": 2, "w": torch.zeros(3)})
    assert store.load(torch.device("cpu"))["step"] == 1 and not (tmp_path / "checkpoint.tmp").exists()


def test_run_directories_are_claimed_once(tmp_path):
    from golfcore.errors import GolfError
    from golfcore.run import claim_run_dir

    partial = claim_run_dir(tmp_path / "x")
    assert partial.name == "x.incomplete" and (partial / ".lock").read_text().startswith(f"pid {os.getpid()} ")
    with pytest.raises(GolfError, match=r"x\.incomplete: in use by another golf process \(pid \d+"):
        claim_run_dir(tmp_path / "x")
    (tmp_path / "y").mkdir()
    with pytest.raises(GolfError, match="y: run directory already exists"):
        claim_run_dir(tmp_path / "y")


def test_ablation_moves_another_plans_runs_aside(tmp_path):
    from golf_tools.ablate import RunSpec, Variant, _prepare, run_path

    target = run_path(tmp_path, "reference", 1)
    target.mkdir(parents=True)
    (target / "recipe.toml").write_text("the earlier plan's recipe")
    (target / "result.json").write_text("{}")
    spec = RunSpec(Variant("reference"), 1, target, ["py", "-m", "golf_cli", "run", "r.toml", "--plugins-dir", "D"],
                   "this plan's recipe", "abc")
    notes = []
    assert _prepare(spec, tmp_path, "stamp", notes.append) == spec.command
    (aside,) = (tmp_path / "superseded" / "stamp" / "reference").iterdir()
    assert (aside / "recipe.toml").read_text() == "the earlier plan's recipe" and not target.exists()
    assert len(notes) == 1 and "moved aside to" in notes[0]
    # an interrupted attempt at this plan's recipe is resumed, not replaced
    partial = target.with_name("seed-1.incomplete")
    partial.mkdir()
    (partial / "recipe.toml").write_text("this plan's recipe")
    assert _prepare(spec, tmp_path, "stamp", notes.append) == ["py", "-m", "golf_cli", "run", "--resume", str(partial),
                                                                "--plugins-dir", "D"]


def test_plugins_list_never_shortens_a_name(world):
    code, out, _ = invoke(["plugins", "--plugins-dir", str(world.tmp / "bad_answers")])
    assert code == 0 and "\ntemperature_probe_with_a_long_name\t" in out  # piped: one line per plugin
    code, out, _ = invoke(["plugins", "--json", "--plugins-dir", str(world.tmp / "bad_answers")])
    assert "temperature_probe_with_a_long_name" in [p["name"] for p in json.loads(out)]


if __name__ == "__main__":  # the table: every row re-run, with its exit code and line
    import tempfile

    from golf_tools.corpora import build_pystdlib

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        build_pystdlib(scratch / "data")
        (scratch / "w").mkdir()
        w = World(scratch / "w", scratch / "data")
        if "--fast" not in sys.argv:
            assert invoke(["run", str(w.recipe), "--run-dir", str(scratch / "finished")])[0] == 0
            w.run_dir = scratch / "finished"
        print("| case | exit | message |\n|---|---|---|")
        for case in CASES:
            if case.slow and w.run_dir is None:
                continue
            code, line = check(case, w)
            print(f"| {case.id} | {code} | {line.replace('|', '/').replace(str(scratch), '…')} |", flush=True)
