"""`golf export`: a finished run as a challenge records folder, whose train_gpt.py, run alone in
that folder with the challenge's data layout, reproduces the run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from golfcore.data import shard_files
from tests.test_cli import golf, tiny_recipe

NOOP_PLUGIN = '''\
"""A --plugins-dir plugin: bundled under its module name like any other."""
import golfcore as golf


class Noop(golf.Plugin):
    name = "noop"
    description = "changes nothing"

    @golf.hookimpl
    def golf_check_config(self, config, schedule):
        return None
'''


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, pystdlib_root):
    """A tiny CPU run with a --plugins-dir plugin: (run directory, plugins folder)."""
    tmp = tmp_path_factory.mktemp("export")
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "noop.py").write_text(NOOP_PLUGIN)
    recipe = tiny_recipe(tmp, pystdlib_root, extra="[plugins.noop]\n")
    golf("run", recipe, "--plugins-dir", plugins)
    (run_dir,) = (tmp / "runs").iterdir()
    return run_dir, plugins


def challenge_data(folder: Path, pystdlib_root: Path) -> None:
    """The challenge's layout under `folder`, holding the pystdlib corpus under FineWeb's names."""
    shards = folder / "data" / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    corpus = pystdlib_root / "pystdlib"
    for path in shard_files(corpus, "train") + shard_files(corpus, "val"):
        (shards / path.name.replace("pystdlib_", "fineweb_")).symlink_to(path)
    (folder / "data" / "tokenizers").mkdir()
    (folder / "data" / "tokenizers" / "fineweb_1024_bpe.model").symlink_to(corpus / "tokenizer.model")


def run_script(folder: Path, **env: str) -> subprocess.CompletedProcess:
    """`python train_gpt.py` in `folder`, where no golf package is importable: isolated mode
    without site processing (so no editable install's finder), the venv's packages on the path."""
    site = sysconfig.get_paths()["purelib"]
    launcher = ("import importlib.util, runpy, sys; sys.path.append(sys.argv[1]); "
                "assert importlib.util.find_spec('golfcore') is None, 'golfcore is importable'; "
                "sys.argv = ['train_gpt.py']; runpy.run_path('train_gpt.py', run_name='__main__')")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-I", "-S", "-c", launcher, site], cwd=folder, capture_output=True,
                          text=True, env={**clean, **env}, timeout=600)


@pytest.mark.slow
def test_exported_script_reproduces_the_run(finished_run, pystdlib_root, tmp_path):
    run_dir, plugins = finished_run
    result = json.loads((run_dir / "result.json").read_text())
    folder = tmp_path / "record"
    proc = golf("export", run_dir, "--out", folder, "--plugins-dir", plugins)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "requirements.txt", "submission.json", "train_gpt.py", f"train_seed{result['seed']}.log"]
    script = folder / "train_gpt.py"
    assert f"train_gpt.py  {script.stat().st_size:,} bytes" in proc.stdout
    assert script.stat().st_size == result["artifact"]["code_bytes"]
    assert "golf_dir_plugin_noop.py" in result["artifact"]["code_files"]
    submission = json.loads((folder / "submission.json").read_text())
    assert (submission["val_bpb"], submission["bytes_code"], submission["bytes_total"]) == (
        result["val_bpb"], result["artifact"]["code_bytes"], result["artifact"]["total_bytes"])
    assert (folder / f"train_seed{result['seed']}.log").read_text() == (run_dir / "log.txt").read_text()
    requirements = (folder / "requirements.txt").read_text()
    assert f"torch=={result['versions']['torch'].split('+')[0]}\n" in requirements
    assert f"val_bpb **{result['val_bpb']:.8f}**" in (folder / "README.md").read_text()

    challenge_data(folder, pystdlib_root)
    proc = run_script(folder, RUN_ID="again", SEED=str(result["seed"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (final,) = [line for line in proc.stdout.splitlines() if line.startswith("final val_bpb:")]
    assert float(re.search(r"final val_bpb:(\S+)", final).group(1)) == pytest.approx(result["val_bpb"], abs=1e-9)
    assert f"bytes_code:{script.stat().st_size} " in final
    again = json.loads((folder / "runs" / "again" / "result.json").read_text())
    assert again["val_bpb"] == pytest.approx(result["val_bpb"], abs=1e-9)
    assert again["code_sha256"] == result["code_sha256"]  # the script counted itself
    assert again["data"]["fingerprint"]["train_shards"][0] == "fineweb_train_000000.bin"


@pytest.mark.slow
def test_script_names_a_missing_data_path(finished_run, tmp_path):
    run_dir, plugins = finished_run
    folder = tmp_path / "record"
    golf("export", run_dir, "--out", folder, "--plugins-dir", plugins)
    proc = run_script(folder, DATA_PATH=str(tmp_path / "nowhere"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: DATA_PATH={tmp_path / 'nowhere'}: not a folder"


@pytest.mark.slow
def test_export_refusals_are_one_line(finished_run, tmp_path):
    run_dir, plugins = finished_run

    def refused(target, *args) -> str:
        proc = golf("export", target, "--plugins-dir", plugins, *args, check=False, cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        return proc.stderr

    assert "not a finished run directory" in refused(tmp_path)
    (tmp_path / "taken").mkdir()
    assert "taken: already exists" in refused(run_dir, "--out", tmp_path / "taken")

    invalid = tmp_path / f"{run_dir.name}.invalid"
    shutil.copytree(run_dir, invalid)
    assert "an invalid run cannot be exported" in refused(invalid)

    illegal = tmp_path / "illegal"
    shutil.copytree(run_dir, illegal)
    result = json.loads((illegal / "result.json").read_text())
    result.update(val_bpb=None, legal=False, violations=["C1 causal: FAIL"])
    (illegal / "result.json").write_text(json.dumps(result))
    assert "not a finished legal score (status finished: C1 causal: FAIL)" in refused(illegal)

    changed = tmp_path / "changed_plugins"
    shutil.copytree(plugins, changed)
    (changed / "noop.py").write_text(NOOP_PLUGIN + "# edited after the run\n")
    proc = golf("export", run_dir, "--plugins-dir", changed, check=False, cwd=tmp_path)
    assert proc.returncode == 1 and "the code changed since the run" in proc.stderr
    assert not any(tmp_path.glob("*_tiny*"))  # nothing written, not even a partial folder
