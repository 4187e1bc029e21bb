"""`golf report`: one self-contained HTML page (images embedded as data URIs) for one or more runs,
with each chart also written as a PNG beside it.

Charts (docs/reports.md): train and validation loss against step and against training time,
the lr scale and Muon momentum schedules, the step time, each eval stage's val_bpb, and the
artifact's bytes by tensor group with the code bytes. The warmdown start and every compile
switch change (`warmdown` and `switch` records of metrics.jsonl) are marked on the curves.
Below them: the headline figures, each run's compliance record as a table, and the resolved
recipe (its differences when there are several runs). A chart a run has no data for (a
diverged run has no eval stages) is left out and the page says so.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from jinja2 import Environment, PackageLoader

from golfcore.audit import entries

from .runs import STATUS_NOTE, Run, figure_rows, read_run, recipe_differences

PAGE = "report.html"
COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark_events(ax, runs: list[Run], x_key: str) -> None:
    """Vertical lines at each run's warmdown start (dotted) and compile-switch changes (dash-dot)."""
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        for event in run.events("warmdown")[:1] + run.events("switch"):
            x = event["step"] if x_key == "step" else event["train_time_ms"] / 1000
            label = "warmdown" if event["event"] == "warmdown" else f"{event['name']}={'on' if event['value'] is True else 'off' if event['value'] is False else event['value']}"
            ax.axvline(x, color=colour, linestyle=":" if event["event"] == "warmdown" else "-.", linewidth=1, alpha=0.8)
            ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(2, -10 - 10 * (i % 3)),
                        textcoords="offset points", fontsize=7, color=colour, rotation=0)


def _legend(ax, runs: list[Run]) -> None:
    """Inside the axes for one run; below them for several (the event labels sit at the top)."""
    if len(runs) == 1:
        ax.legend(fontsize=7)
    else:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def _loss(runs: list[Run], x_key: str, path: Path) -> bool:
    if not any(r.events("train") for r in runs):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        x = (lambda m: m["step"]) if x_key == "step" else (lambda m: m["train_time_ms"] / 1000)
        train, val = run.events("train"), run.events("val")
        ax.plot([x(m) for m in train], [m["train_loss"] for m in train], color=colour,
                label=f"{run.name} train" if len(runs) > 1 else "train loss")
        if val:
            ax.plot([x(m) for m in val], [m["val_loss"] for m in val], color=colour, linestyle="--", marker="o",
                    markersize=4, label=f"{run.name} val (live weights)" if len(runs) > 1 else "val loss (live weights, pre-export)")
    _mark_events(ax, runs, x_key)
    ax.set_xlabel("step" if x_key == "step" else "training time (s, clock paused for validation)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"loss against {'step' if x_key == 'step' else 'training time'}", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, runs)
    return _save(fig, path)


def _schedule(runs: list[Run], path: Path) -> bool:
    if not any(r.events("train") for r in runs):
        return False
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        train = run.events("train")
        top.plot([m["step"] for m in train], [m.get("lr_scale") for m in train], color=colour, marker=".", label=run.name)
        momentum = [m for m in train if "muon_momentum" in m]
        bottom.plot([m["step"] for m in momentum], [m["muon_momentum"] for m in momentum], color=colour, marker=".")
    for ax in (top, bottom):
        _mark_events(ax, runs, "step")
        ax.grid(alpha=0.3)
    top.set_ylabel("lr scale")
    bottom.set_ylabel("Muon momentum")
    bottom.set_xlabel("step (the value of the step logged; warmdown dotted, switches dash-dot)")
    top.set_title("schedules", fontsize=10)
    if len(runs) > 1:
        top.legend(fontsize=7, loc="lower left")  # the lr scale only falls, to the right
    return _save(fig, path)


def _step_time(runs: list[Run], path: Path) -> bool:
    series = []
    for run in runs:
        train = run.events("train")
        pairs = [(b["step"], (b["train_time_ms"] - a["train_time_ms"]) / (b["step"] - a["step"]))
                 for a, b in zip(train, train[1:]) if b["step"] > a["step"]]
        series.append(pairs)
    if not any(series):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for i, (run, pairs) in enumerate(zip(runs, series)):
        colour = COLOURS[i % len(COLOURS)]
        ax.plot([s for s, _ in pairs], [ms for _, ms in pairs], color=colour, marker=".", label=run.name)
    _mark_events(ax, runs, "step")
    ax.set_xlabel("step")
    ax.set_ylabel("ms per step (between log lines)")
    ax.set_title("step time over the run", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        _legend(ax, runs)
    return _save(fig, path)


def _stages(runs: list[Run], path: Path) -> bool:
    names: list[str] = []
    for run in runs:
        names += [s for s in run.stages if s not in names]
    if not names:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.45 * len(names)))
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        for j, stage in enumerate(names):
            s = run.stages.get(stage)
            if not s or s.get("val_bpb") is None:
                continue
            y = j + (i - (len(runs) - 1) / 2) * 0.8 / len(runs)
            ax.plot(s["val_bpb"], y, "o" if s.get("legal") else "x", color=colour, markersize=7,
                    label=run.name if j == 0 and len(runs) > 1 else None)
            ax.annotate(f"{s['val_bpb']:.4f}" + ("" if s.get("legal") else " NOT LEGAL"), (s["val_bpb"], y),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=7, color=colour)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.margins(x=0.25)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("val_bpb after the artifact round trip (lower is better; x: not a legal score)")
    ax.set_title("eval stages", fontsize=10)
    if len(runs) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _artifact(runs: list[Run], path: Path) -> bool:
    arts = [(r.result or {}).get("artifact") or {} for r in runs]
    if not any(a.get("groups") for a in arts):
        return False
    names: list[str] = []
    for art in arts:
        names += [g["group"] for g in art.get("groups", []) if g["group"] not in names]
    names.append("code (train_gpt.py)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * len(names) * len(runs)))
    height = 0.8 / len(runs)
    for i, (run, art) in enumerate(zip(runs, arts)):
        sizes = {g["group"]: g["compressed_bytes"] for g in art.get("groups", [])}
        if "code_bytes" in art:
            sizes["code (train_gpt.py)"] = art["code_bytes"]
        for j, name in enumerate(names):
            if name not in sizes:
                continue
            y = j + (i - (len(runs) - 1) / 2) * height
            ax.barh(y, sizes[name], height=height * 0.9, color=COLOURS[i % len(COLOURS)],
                    label=run.name if j == 0 and len(runs) > 1 else None)
            ax.annotate(f"{sizes[name]:,}", (sizes[name], y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("bytes (each tensor group compressed alone; the artifact compresses them together)")
    totals = ", ".join(f"{a.get('total_bytes', 0):,}" for a in arts)
    ax.set_title(f"artifact bytes by tensor group (total {totals} of {arts[0].get('budget_bytes', 0):,})", fontsize=10)
    ax.margins(x=0.15)
    if len(runs) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return True


CHARTS = [
    ("loss_step.png", "Loss against step", lambda runs, p: _loss(runs, "step", p)),
    ("loss_time.png", "Loss against training time", lambda runs, p: _loss(runs, "time", p)),
    ("schedule.png", "lr scale and Muon momentum", _schedule),
    ("step_time.png", "Step time", _step_time),
    ("stages.png", "val_bpb per eval stage", _stages),
    ("artifact.png", "Artifact bytes", _artifact),
]


def _figures(value) -> str:
    """A compliance entry's figures (everything but its status, message and culprit) as text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_figures(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_figures(v) for v in value) + "]"
    return str(value)


def compliance_rows(run: Run) -> list[dict]:
    record = (run.result or {}).get("compliance") or {}
    rows = []
    for name, item in entries(record).items():
        figures = {k: v for k, v in item.items() if k not in ("status", "message", "culprit", "note")}
        rows.append({"check": name, "status": item["status"], "figures": _figures(figures),
                     "detail": item.get("message") or item.get("note") or "", "culprit": item.get("culprit", "")})
    return rows


def _events(run: Run) -> list[dict]:
    rows = []
    for m in run.metrics:
        if m.get("event") in ("warmdown", "switch"):
            what = "warmdown starts (lr scale < 1)" if m["event"] == "warmdown" else f"{m['name']} -> {m['value']}"
            rows.append({"step": m["step"], "seconds": m["train_time_ms"] / 1000, "what": what})
    return rows


def render(run_dirs: list[Path], out: Path) -> Path:
    """Write out/report.html and its PNGs for `run_dirs`; returns the page's path."""
    runs = [read_run(Path(d)) for d in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    charts, missing = [], []
    for file, title, draw in CHARTS:
        if draw(runs, out / file):
            data = base64.b64encode((out / file).read_bytes()).decode("ascii")
            charts.append({"file": file, "title": title, "data": data})
        else:
            (out / file).unlink(missing_ok=True)  # a chart from an earlier report of other runs
            missing.append(title)
    env = Environment(loader=PackageLoader("golf_tools", "templates"), autoescape=True)
    page = env.get_template("report.html.j2").render(
        runs=[{"run": r, "note": STATUS_NOTE[r.status], "compliance": compliance_rows(r), "events": _events(r),
               "violations": (r.result or {}).get("violations") or [], "error": (r.result or {}).get("error"),
               "data": (r.result or {}).get("data") or {}, "recipe": (r.path / "recipe.toml").read_text(encoding="utf-8")}
              for r in runs],
        figures=figure_rows(runs), differences=recipe_differences(runs) if len(runs) > 1 else [],
        charts=charts, missing=missing, generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        title="golf report: " + ", ".join(r.name for r in runs),
    )
    path = out / PAGE
    path.write_text(page, encoding="utf-8")
    return path


def default_out(run_dirs: list[Path]) -> Path:
    """RUN_DIR/report for one run; reports/<first run>+N-more for several."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "report"
    return Path("reports") / f"{Path(run_dirs[0]).name}+{len(run_dirs) - 1}-more"

