"""Trackers, each offline: a finished run's metrics and result replayed through golf's listener into
the real library, then read back with that library's own reader (or its file format)."""

import importlib.util
import json
import struct

import pytest

from golf_tools.trackers import Tracking, check_installed, final_figures, scalars
from golf_tools.runs import read_run
from golfcore.errors import ConfigError, GolfError
from golfcore.plugins import discover
from golfcore.recipe import load_recipe
from tests.test_cli import golf


def replay(run_dir, names: list[str], tmp_path, monkeypatch) -> tuple[list[dict], dict]:
    """Send run_dir's metrics records and result through Tracking as `golf run` does; returns them."""
    monkeypatch.chdir(tmp_path)
    config = load_recipe(run_dir / "recipe.toml", discover([]), [f'log.dir="{tmp_path / "trackers"}"'])
    run = read_run(run_dir)
    with Tracking(config, names) as tracking:
        for record in run.metrics:
            tracking.listener(record)
        tracking.result = run.result
    return run.metrics, run.result


def logged(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(step, values[key]) for step, values in filter(None, map(scalars, records)) if key in values]


def same_series(read: list[tuple[int, float]], sent: list[tuple[int, float]]) -> bool:
    """Equal steps and values equal to float32 precision (TensorBoard stores float32)."""
    return [s for s, _ in read] == [s for s, _ in sent] and [v for _, v in read] == pytest.approx([v for _, v in sent], rel=1e-6)


def test_records_become_scalars_at_their_step(run_folder):
    run = read_run(run_folder["finished"])
    train = run.events("train")[1]
    assert scalars(train) == (train["step"], {"train/loss": train["train_loss"], "train/lr_scale": train["lr_scale"],
                                              "train/muon_momentum": train["muon_momentum"],
                                              "train/step_avg_ms": train["step_avg_ms"],
                                              "train/time_s": train["train_time_ms"] / 1000})
    assert scalars(run.events("switch")[0]) == (11, {"switch/FakeQuantize": 1.0})
    assert scalars(run.events("start")[0]) is None
    figures = final_figures(run.result)
    assert figures["final/val_bpb"] == figures["final/stage/roundtrip/val_bpb"] == run.result["val_bpb"]
    assert figures["final/legal"] == 1.0 and figures["final/artifact_total_bytes"] == run.result["artifact"]["total_bytes"]


def test_missing_library_is_one_line_naming_the_extra(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else find_spec(name))
    with pytest.raises(GolfError, match=r"^tracker 'wandb' needs the wandb library: pip install 'golf\[wandb\]'$"):
        check_installed("wandb")
    with pytest.raises(ConfigError, match="--track neptune: not one of tensorboard, wandb, mlflow, trackio"):
        check_installed("neptune")


def test_only_rank_0_listens(run_folder):
    config = load_recipe(run_folder["finished"] / "recipe.toml", discover([]), ['log.trackers=["tensorboard"]'])
    assert Tracking(config, enabled=False).listeners == []


def test_tensorboard_event_files_read_back(run_folder, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records, result = replay(run_folder["finished"], ["tensorboard"], tmp_path, monkeypatch)
    (logdir,) = (tmp_path / "trackers" / "tensorboard").iterdir()
    assert logdir.name == run_folder["finished"].name  # the run directory's name, from its start record
    events = EventAccumulator(str(logdir))
    events.Reload()
    for key in ("train/loss", "train/lr_scale", "train/muon_momentum", "val/loss_live_weights", "switch/FakeQuantize"):
        assert same_series([(e.step, e.value) for e in events.Scalars(key)], logged(records, key)), key
    (final,) = events.Scalars("final/val_bpb")
    assert final.value == pytest.approx(result["val_bpb"]) and final.step == 12


def wandb_records(path) -> list:
    """The records of a W&B offline run file (LevelDB log format: 32 KiB blocks of chunks with a
    7-byte header, after the file's own 7-byte header), as wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    chunks, out, pending = [], [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks.append((kind, data[pos + 7:pos + 7 + length]))
        pos += 7 + length
    for kind, chunk in chunks:
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def test_wandb_offline_run_reads_back(run_folder, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    records, result = replay(run_folder["finished"], ["wandb"], tmp_path, monkeypatch)
    import wandb

    wandb.teardown()  # the wandb-core process has written and closed the run file
    (run_file,) = (tmp_path / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    history, summary, names = {}, {}, []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(record.history.step.num, {}).update(items)
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "run":
            names.append((record.run.display_name, record.run.project))
    assert names[0] == (run_folder["finished"].name, "golf")
    assert same_series([(s, history[s]["train/loss"]) for s in sorted(history) if "train/loss" in history[s]],
                       logged(records, "train/loss"))
    assert summary["final/val_bpb"] == pytest.approx(result["val_bpb"]) and summary["status"] == "finished"


def test_mlflow_local_file_store_reads_back(run_folder, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (too heavy for CI: docs/reports.md)")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # set by the tracker, undone after the test
    records, result = replay(run_folder["finished"], ["mlflow"], tmp_path, monkeypatch)
    client = MlflowClient(tracking_uri=(tmp_path / "trackers" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("golf").experiment_id])
    assert run.info.run_name == run_folder["finished"].name and run.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert same_series(sorted(history), logged(records, "train/loss"))
    assert run.data.metrics["final/val_bpb"] == pytest.approx(result["val_bpb"])
    assert run.data.params["train.iterations"] == "12" and run.data.tags["golf.status"] == "finished"


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None,
                    reason="the trackio extra is not installed (too slow to install for CI: docs/reports.md)")
def test_trackio_local_project_reads_back(run_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("TRACKIO_DIR", raising=False)  # trackio reads it when imported: the tracker sets it first
    records, result = replay(run_folder["finished"], ["trackio"], tmp_path, monkeypatch)
    from trackio.sqlite_storage import SQLiteStorage

    assert list((tmp_path / "trackers" / "trackio").glob("*.db"))
    logs = SQLiteStorage.get_logs("golf", run_folder["finished"].name)
    assert same_series([(row["step"], row["train/loss"]) for row in logs if "train/loss" in row], logged(records, "train/loss"))
    assert any(row.get("final/val_bpb") == pytest.approx(result["val_bpb"]) for row in logs)


@pytest.mark.slow
def test_golf_run_track_writes_tensorboard_on_rank_0(run_folder, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    proc = golf("run", run_folder["recipe"], "--track", "tensorboard", "--set", "train.iterations=4",
                "--set", f'log.dir="{tmp_path}"', "--set", f'run.out_dir="{tmp_path / "runs"}"', "--without", "late_qat")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert str(run_dir) in proc.stdout
    (logdir,) = (tmp_path / "tensorboard").iterdir()
    assert logdir.name == run_dir.name and list(logdir.glob("events.out.tfevents.*"))
    bad = golf("run", run_folder["recipe"], "--track", "neptune", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --track neptune: not one of tensorboard, wandb, mlflow, trackio"
