"""Run directories as a researcher reads them: status, metrics, headline figures, recipe differences.

`golf runs`, `golf compare` and `golf report` read only what a run wrote (recipe.toml,
metrics.jsonl, log.txt, result.json; docs/reports.md), so they work on a finished run as on
one that is still `.incomplete`, was interrupted, diverged or was marked `.invalid`.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from golfcore.errors import GolfError
from golfcore.recipe import read_recipe
from golfcore.run import INVALID_SUFFIX, RECIPE_NAME

STATUSES = ("finished", "rescored", "invalid", "diverged", "interrupted", "incomplete")
STATUS_NOTE = {
    "finished": "finished: a legal score",
    "rescored": "a re-score of another run's artifact (golf eval --out)",
    "invalid": "finished, but its score failed a legality check (docs/compliance.md)",
    "diverged": "training diverged: no artifact, no score",
    "interrupted": "interrupted (SIGTERM/SIGINT): golf run --resume continues it",
    "incomplete": "still running, or it crashed: no result.json",
}


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    status: str
    recipe: dict[str, Any]  # the resolved recipe.toml
    metrics: list[dict] = field(default_factory=list)
    result: dict[str, Any] | None = None
    started: float = 0.0  # unix time
    ended: float = 0.0  # the last file written

    @property
    def name(self) -> str:
        return self.path.name

    def events(self, kind: str) -> list[dict]:
        return [m for m in self.metrics if m.get("event") == kind]

    @property
    def source(self) -> str | None:
        """The recipe file the run was started from (its `start` record)."""
        start = self.events("start")
        return start[0]["recipe"] if start else None

    @property
    def plugins(self) -> list[str]:
        return list(self.recipe.get("plugins", {}))

    @property
    def wall_seconds(self) -> float:
        return max(self.ended - self.started, 0.0)

    @property
    def steps(self) -> int:
        if self.result and self.result.get("steps"):
            return self.result["steps"]
        train = self.events("train")
        return train[-1]["step"] if train else 0

    @property
    def train_seconds(self) -> float | None:
        if self.result and self.result.get("train_seconds"):
            return self.result["train_seconds"]
        train = self.events("train")
        return train[-1]["train_time_ms"] / 1000 if train else None

    @property
    def stages(self) -> dict[str, dict]:
        return (self.result or {}).get("stages") or {}

    @property
    def val_bpb(self) -> float | None:
        """The headline: the final stage's val_bpb, only when the score is legal."""
        return (self.result or {}).get("val_bpb")

    @property
    def legal(self) -> bool | None:
        """None when no score exists (incomplete, interrupted, diverged)."""
        return self.result["legal"] if self.result and self.result.get("stages") else None


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records; a torn last line (a killed run) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _status(path: Path, result: dict | None) -> str:
    if result is None:
        log = path / "log.txt"
        interrupted = log.is_file() and any(line.startswith("interrupted:") for line in
                                            log.read_text(encoding="utf-8", errors="replace").splitlines())
        return "interrupted" if interrupted else "incomplete"
    if result.get("status") == "diverged":
        return "diverged"
    if path.name.endswith(INVALID_SUFFIX) or not result.get("legal"):
        return "invalid"
    return "rescored" if result.get("status") == "rescored" else "finished"


def read_run(path: Path) -> Run:
    """Read a run directory; GolfError when it is not one."""
    path = Path(path)
    recipe_file = path / RECIPE_NAME
    if not path.is_dir() or not recipe_file.is_file():
        raise GolfError(f"{path}: not a run directory (needs {RECIPE_NAME})")
    try:
        recipe = tomllib.loads(recipe_file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise GolfError(f"{recipe_file}: not valid TOML ({e})") from None
    result_file = path / "result.json"
    try:
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else None
    except json.JSONDecodeError as e:
        raise GolfError(f"{result_file}: not valid JSON ({e})") from None
    metrics = _read_metrics(path / "metrics.jsonl")
    start = next((m for m in metrics if m.get("event") == "start"), None)
    written = [f.stat().st_mtime for f in path.iterdir() if f.is_file()]
    started = start["time"] if start and "time" in start else recipe_file.stat().st_mtime
    return Run(path, _status(path, result), recipe, metrics, result, started, max(written, default=started))


def find_runs(root: Path) -> list[Run]:
    """Every run directory under `root` (an ablation's nested runs included), newest first."""
    root = Path(root)
    if not root.is_dir():
        raise GolfError(f"{root}: no such directory")
    runs = [read_run(f.parent) for f in root.rglob(RECIPE_NAME) if f.parent != root]
    return sorted(runs, key=lambda r: r.started, reverse=True)


def _rescored_from(run: Run) -> Path | None:
    source = ((run.result or {}).get("rescored_from") or {}).get("run_dir")
    return Path(source) if source else None


def plugin_changes(run: Run) -> tuple[list[str], list[str]] | None:
    """(added, removed) plugins against the recipe file the run was started from (a re-score:
    against the run it re-scored); None when that is not known or no longer readable."""
    source = _rescored_from(run)
    try:
        if source is not None:
            listed = read_run(source).plugins
        elif run.source and Path(run.source).is_file():
            raw = read_recipe(Path(run.source))
            listed = [n for n, t in raw.get("plugins", {}).items() if t.get("enabled", True) is not False]
        else:
            return None
    except GolfError:
        return None
    return [p for p in run.plugins if p not in listed], [p for p in listed if p not in run.plugins]


def describe_changes(run: Run) -> str:
    changes = plugin_changes(run)
    if changes is None:
        return "?"
    added, removed = changes
    return " ".join([*(f"+{p}" for p in added), *(f"-{p}" for p in removed)]) or "="


def recipe_label(run: Run) -> str:
    if _rescored_from(run) is not None:
        return f"eval of {_rescored_from(run).name}"
    return Path(run.source).name if run.source else "?"


# ----------------------------------------------------------------------------- headline figures


def headline(run: Run) -> dict[str, Any]:
    """The figures `golf compare` and the report's summary table show, None where the run has none."""
    art = (run.result or {}).get("artifact") or {}
    steps, seconds = run.steps, run.train_seconds
    batch_tokens = run.recipe.get("train", {}).get("batch_tokens")
    tokens = (run.result or {}).get("tokens") or (steps * batch_tokens if batch_tokens else None)
    figures: dict[str, Any] = {"status": run.status}
    for stage, s in run.stages.items():
        figures[f"val_bpb {stage}"] = s.get("val_bpb")
    figures.update({
        "val_bpb (headline)": run.val_bpb,
        "steps": steps,
        "train s": seconds,
        "step ms": seconds * 1000 / steps if seconds and steps else None,
        "tokens/s": tokens / seconds if tokens and seconds else None,
        "artifact bytes": art.get("total_bytes"),
        "model bytes": art.get("model_bytes"),
        "code bytes": art.get("code_bytes"),
        "legal": run.legal,
        "wall s": run.wall_seconds,
    })
    return figures


def format_figure(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if key.startswith("val_bpb"):
            return f"{value:.4f}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def figure_rows(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """(figure, one formatted cell per run), every figure any run has, in a stable order."""
    tables = [headline(r) for r in runs]
    keys: list[str] = []
    for t in tables:
        keys += [k for k in t if k not in keys]
    return [(k, [format_figure(k, t.get(k)) for t in tables]) for k in keys]


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and not (prefix.startswith("plugins.") and prefix.count(".") >= 2):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_differences(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """(section.key, its value in each run) for every resolved-recipe key whose values differ; a
    plugin that a run does not enable reads "off". run.name and run.out_dir are left out."""
    flat = [_flatten(r.recipe) for r in runs]
    plugin_names = {k.split(".")[1] for f in flat for k in f if k.startswith("plugins.")}
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    rows = []
    for name in sorted(plugin_names):
        enabled = [name in r.plugins for r in runs]
        if len(set(enabled)) > 1:
            rows.append((f"plugins.{name}", ["on" if e else "off" for e in enabled]))
    for key in keys:
        if key in ("run.name", "run.out_dir"):
            continue
        values = [f.get(key, "off" if key.startswith("plugins.") else "–") for f in flat]
        if len({json.dumps(v) for v in values}) > 1:
            if key.startswith("plugins.") and any(v == "off" for v in values):
                continue  # shown as the plugin being on or off
            rows.append((key, [json.dumps(v) if not isinstance(v, str) else v for v in values]))
    return rows
