"""Experiment trackers: a run's metrics, resolved recipe and result sent to TensorBoard, Weights &
Biases, MLflow or trackio, through the libraries themselves (each an optional extra, imported
only when asked for).

The CLI asks for them (`[log] trackers = [...]` in the recipe, or `golf run --track NAME`) and
attaches one listener to the run's log (golfcore.run.RunLog) on rank 0 only: every metrics
record becomes the tracker's scalars at its step, and the result its summary. Nothing here is
imported by a run itself, so no tracker code counts as code bytes. The library's own settings
apply (WANDB_MODE=offline, MLFLOW_TRACKING_URI, TRACKIO_DIR); files go to `[log] dir`, by
default <run.out_dir>/trackers. docs/reports.md has the names of what is logged.
"""

from __future__ import annotations

import abc
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from golfcore.config import TRACKERS, RunConfig
from golfcore.errors import ConfigError, DivergedError, GolfError, TrainingInterrupted

LIBRARY = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def scalars(record: dict) -> tuple[int, dict[str, float]] | None:
    """(step, {name: value}) that a metrics record gives a tracker; None for records without numbers."""
    event, step = record.get("event"), record.get("step")
    if event == "train":
        values = {"train/loss": record["train_loss"], "train/lr_scale": record.get("lr_scale"),
                  "train/muon_momentum": record.get("muon_momentum"), "train/step_avg_ms": record["step_avg_ms"],
                  "train/time_s": record["train_time_ms"] / 1000}
        return step, {k: float(v) for k, v in values.items() if v is not None}
    if event == "val":
        return step, {"val/loss_live_weights": float(record["val_loss"])}
    if event == "warmdown":
        return step, {"schedule/warmdown": 1.0}
    if event == "switch" and isinstance(record["value"], (bool, int, float)):
        return step, {f"switch/{record['name']}": float(record["value"])}
    return None


def final_figures(result: dict) -> dict[str, float]:
    """The result's numbers as `final/...` scalars: val_bpb per stage (legal ones; roundtrip+ttt reads
    final/stage/roundtrip.ttt/val_bpb), bytes, times."""
    out: dict[str, float] = {}
    for stage, s in (result.get("stages") or {}).items():
        if s.get("val_bpb") is not None:
            out[f"final/stage/{stage.replace('+', '.')}/val_bpb"] = float(s["val_bpb"])  # '+' is no MLflow name
    if result.get("val_bpb") is not None:
        out["final/val_bpb"] = float(result["val_bpb"])
    art = result.get("artifact") or {}
    for key in ("total_bytes", "model_bytes", "code_bytes"):
        if key in art:
            out[f"final/artifact_{key}"] = float(art[key])
    for key in ("steps", "train_seconds", "eval_seconds"):
        if result.get(key):
            out[f"final/{key}"] = float(result[key])
    out["final/legal"] = float(bool(result.get("legal")))
    return out


def flat_recipe(recipe: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            out.update(flat_recipe(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker(abc.ABC):
    """One tracker for one run: `start` once, `log` per metrics record with numbers, `finish` once."""

    name = ""

    def __init__(self, directory: Path, project: str):
        self.directory, self.project = directory, project

    @abc.abstractmethod
    def start(self, run_name: str, recipe: dict) -> None:
        """See the class docstring."""

    @abc.abstractmethod
    def log(self, step: int, values: dict[str, float]) -> None:
        """See the class docstring."""

    @abc.abstractmethod
    def finish(self, result: dict | None, status: str) -> None:
        """See the class docstring."""


class TensorBoard(Tracker):
    """Event files under <dir>/tensorboard/<run>: `tensorboard --logdir <dir>/tensorboard`."""

    name = "tensorboard"

    def start(self, run_name, recipe):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.directory / "tensorboard" / run_name))
        self.writer.add_text("recipe", "```\n" + json.dumps(recipe, indent=1) + "\n```")
        self.step = 0

    def log(self, step, values):
        self.step = max(self.step, step)
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, result, status):
        for key, value in (final_figures(result) if result else {}).items():
            self.writer.add_scalar(key, value, self.step)
        self.writer.add_text("status", status)
        if result:
            self.writer.add_text("result", "```\n" + json.dumps(result, indent=1, default=str) + "\n```")
        self.writer.close()


class WandB(Tracker):
    """A W&B run in project `[log] project` (WANDB_MODE=offline writes it under <dir>/wandb only)."""

    name = "wandb"

    def start(self, run_name, recipe):
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, name=run_name, dir=str(self.directory), config=recipe)

    def log(self, step, values):
        self.run.log(values, step=step)

    def finish(self, result, status):
        if result:
            self.run.summary.update({**final_figures(result), "status": status, "run_dir": result.get("run_dir")})
        else:
            self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in ("finished", "invalid") else 1)


class MLflow(Tracker):
    """An MLflow run in experiment `[log] project`, in MLFLOW_TRACKING_URI or else a local file store
    at <dir>/mlruns (`mlflow ui --backend-store-uri <dir>/mlruns`)."""

    name = "mlflow"

    def start(self, run_name, recipe):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store: kept by MLflow 3 in maintenance mode, behind this opt-in
            uri = (self.directory / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(self.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.project)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flat_recipe(recipe).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.step = 0

    def log(self, step, values):
        from mlflow.entities import Metric

        self.step = max(self.step, step)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, result, status):
        if result:
            self.log(self.step, final_figures(result))
            self.client.log_dict(self.run_id, result, "result.json")
        self.client.set_tag(self.run_id, "golf.status", status)
        self.client.set_terminated(self.run_id, "FINISHED" if status in ("finished", "invalid") else
                                   "KILLED" if status == "interrupted" else "FAILED")


class Trackio(Tracker):
    """A trackio run in project `[log] project`, in trackio's local store at TRACKIO_DIR, else <dir>/trackio."""

    name = "trackio"

    def start(self, run_name, recipe):
        os.environ.setdefault("TRACKIO_DIR", str((self.directory / "trackio").resolve()))  # read when trackio is imported
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=self.project, name=run_name, config=recipe)
        self.step = 0

    def log(self, step, values):
        self.step = max(self.step, step)
        self.trackio.log(values, step=step)

    def finish(self, result, status):
        self.trackio.log({**(final_figures(result) if result else {}), f"final/status_{status}": 1.0}, step=self.step)
        self.trackio.finish()


KINDS = {cls.name: cls for cls in (TensorBoard, WandB, MLflow, Trackio)}


def check_installed(name: str) -> None:
    """A one-line error naming the extra when the tracker's library is missing."""
    if name not in KINDS:
        raise ConfigError(f"--track {name}: not one of {', '.join(TRACKERS)}")
    if importlib.util.find_spec(LIBRARY[name]) is None:  # found, not imported: trackio reads its settings on import
        raise GolfError(f"tracker {name!r} needs the {LIBRARY[name]} library: pip install 'golf[{name}]'")


class Tracking:
    """The trackers of one `golf run` on rank 0: `listener` goes to the run's log; the `with`
    block's end (or its exception: diverged, interrupted, failed) closes each tracker once."""

    def __init__(self, config: RunConfig, extra: list[str] = (), run_name: str | None = None, enabled: bool = True):
        names = list(dict.fromkeys([*config.log.trackers, *extra])) if enabled else []
        for name in names:
            check_installed(name)
        directory = Path(config.log.dir or Path(config.run.out_dir) / "trackers")
        self.trackers = [KINDS[name](directory, config.log.project) for name in names]
        self.recipe = config.to_dict()
        self.run_name = (run_name or config.run.name).removesuffix(".incomplete")
        self.started = False
        self.result: dict | None = None

    @property
    def listeners(self) -> list:
        return [self.listener] if self.trackers else []

    def listener(self, record: dict) -> None:
        if not self.started:
            name = Path(record["run_dir"]).name.removesuffix(".incomplete") if record.get("event") == "start" else self.run_name
            for tracker in self.trackers:
                try:
                    tracker.start(name, self.recipe)
                except Exception as e:  # the library's own error (no login, unreachable server, ...)
                    raise GolfError(f"tracker {tracker.name!r} could not start: {e}") from e
            self.started = True
        logged = scalars(record)
        if logged is not None:
            for tracker in self.trackers:
                tracker.log(*logged)

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if not self.started:
            return
        if error is None:
            status = "finished" if (self.result or {}).get("legal") else "invalid"
        else:
            status = ("diverged" if isinstance(error, DivergedError) else
                      "interrupted" if isinstance(error, TrainingInterrupted) else "failed")
        for tracker in self.trackers:
            tracker.finish(self.result, status)
