"""golf runs and golf compare on real run directories: finished, invalid, interrupted, diverged."""

import shutil

import pytest

from golf_tools.runs import describe_changes, find_runs, headline, read_run, recipe_differences, recipe_label
from golfcore.errors import GolfError
from golfcore.result import RunResult
from typer.testing import CliRunner

from golf_cli.main import app


def golf(*args, check=True):
    """The golf command in-process (these commands only read files)."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert not check or result.exit_code == 0, result.output
    return result


def test_each_run_reads_with_its_status(run_folder):
    expected = {"finished": "finished", "other": "finished", "invalid": "invalid", "interrupted": "interrupted",
                "diverged": "diverged"}
    for key, status in expected.items():
        assert read_run(run_folder[key]).status == status, key
    invalid = read_run(run_folder["invalid"])
    assert invalid.legal is False and invalid.val_bpb is None and invalid.stages["roundtrip"]["val_bpb"] is not None
    assert read_run(run_folder["interrupted"]).legal is None and read_run(run_folder["diverged"]).legal is None


def test_find_runs_lists_every_run_newest_first(run_folder):
    found = find_runs(run_folder["root"])
    assert {r.path for r in found} == {run_folder[k] for k in ("finished", "other", "invalid", "interrupted", "diverged")}
    assert [r.started for r in found] == sorted((r.started for r in found), reverse=True)
    with pytest.raises(GolfError, match="no such directory"):
        find_runs(run_folder["root"] / "nowhere")


def test_plugins_added_and_removed_against_the_recipe(run_folder):
    assert describe_changes(read_run(run_folder["finished"])) == "="
    assert describe_changes(read_run(run_folder["other"])) == "-late_qat"
    assert describe_changes(read_run(run_folder["interrupted"])) == "+stop_at"
    assert describe_changes(read_run(run_folder["invalid"])) == "+planted_unnormalized"  # against the run it re-scored
    assert recipe_label(read_run(run_folder["invalid"])) == f"eval of {run_folder['finished'].name}"


def test_headline_figures_come_from_the_result(run_folder):
    run = read_run(run_folder["finished"])
    result = RunResult.read(run_folder["finished"] / "result.json")
    figures = headline(run)
    assert figures["val_bpb roundtrip"] == figures["val_bpb (headline)"] == result.val_bpb
    assert figures["steps"] == result.steps == 12 and figures["legal"] is True
    assert figures["artifact bytes"] == result.artifact["total_bytes"]
    assert figures["step ms"] == pytest.approx(result.train_seconds * 1000 / 12)
    assert figures["tokens/s"] == pytest.approx(result.tokens / result.train_seconds)
    interrupted = headline(read_run(run_folder["interrupted"]))  # from its metrics alone
    assert interrupted["steps"] == 4 and interrupted["artifact bytes"] is None and interrupted["legal"] is None


def test_recipe_differences_name_each_changed_key(run_folder):
    rows = dict(recipe_differences([read_run(run_folder["finished"]), read_run(run_folder["other"])]))
    assert rows == {"plugins.late_qat": ["on", "off"], "train.iterations": ["12", "10"]}


def test_a_torn_metrics_line_is_skipped_and_a_non_run_is_refused(run_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_folder["interrupted"], copy)
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "st')  # killed mid-write
    assert len(read_run(copy).metrics) == len(read_run(run_folder["interrupted"]).metrics)
    with pytest.raises(GolfError, match="not a run directory"):
        read_run(tmp_path)


def test_golf_compare_and_golf_runs(run_folder):
    proc = golf("compare", run_folder["finished"], run_folder["other"])
    assert "val_bpb roundtrip" in proc.stdout and "tokens/s" in proc.stdout and "plugins.late_qat" in proc.stdout
    md = golf("compare", run_folder["finished"], run_folder["other"], "--md").stdout
    assert f"| figure | {run_folder['finished'].name} | {run_folder['other'].name} |" in md
    assert "| plugins.late_qat | on | off |" in md and "| train.iterations | 12 | 10 |" in md
    one = golf("compare", run_folder["finished"], check=False)
    assert one.exit_code == 1 and one.stderr.strip() == "error: golf compare needs two or more run directories"

    listing = golf("runs", run_folder["root"], "--md").stdout.splitlines()
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in listing[2:]}
    assert rows[run_folder["interrupted"].name][2] == "interrupted"
    assert rows[run_folder["invalid"].name][2] == "invalid" and rows[run_folder["diverged"].name][2] == "diverged"
    assert rows[run_folder["other"].name][2:5] == ["finished", "quick.toml", "-late_qat"]
    assert [line.split(" | ")[0].removeprefix("| ") for line in listing[2:]] == [r.name for r in find_runs(run_folder["root"])]
