"""`golf report`, `golf compare` and `golf runs`: what a researcher looks at (docs/reports.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
STATUS_STYLE = {"finished": "green", "rescored": "green", "invalid": "bold red", "diverged": "bold red",
                "interrupted": "yellow", "incomplete": "yellow"}


def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (finished, .incomplete, .invalid or diverged); several share one axis")],
    out: Annotated[Optional[Path], typer.Option("--out", help="folder for report.html and its PNGs (default RUN_DIR/report, or reports/<first>+N-more)")] = None,
):
    """Write one self-contained HTML page (images embedded) with the runs' curves, schedules,
    step time, eval stages, artifact bytes and compliance records, and the PNGs beside it."""
    from golf_tools.run_report import default_out, render

    page = render(run_dirs, out or default_out(run_dirs))
    console.print(f"report: {page}", markup=False, soft_wrap=True)


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="two or more run directories")],
    md: Annotated[bool, typer.Option("--md", help="print markdown tables instead")] = False,
):
    """Headline figures side by side (val_bpb per stage, steps, step time, tokens/s, artifact
    bytes, legal or not) and the differences between the runs' resolved recipes."""
    from golf_tools.runs import figure_rows, read_run, recipe_differences
    from golfcore.errors import GolfError

    if len(run_dirs) < 2:
        raise GolfError("golf compare needs two or more run directories")
    runs = [read_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    figures, differences = figure_rows(runs), recipe_differences(runs)
    if md:
        typer.echo(_markdown(["figure", *names], figures))
        typer.echo("")
        typer.echo(_markdown(["recipe key", *names], differences) if differences else "Resolved recipes: equal.")
        return
    console.print(_table("golf compare", ["figure", *names], figures))
    if differences:
        console.print(_table("resolved recipe differences", ["key", *names], differences))
    else:
        console.print("resolved recipes: equal (apart from run.name and run.out_dir)")


def runs(
    directory: Annotated[Path, typer.Argument(help="folder holding run directories")] = Path("runs"),
    md: Annotated[bool, typer.Option("--md", help="print a markdown table instead")] = False,
):
    """Runs under DIR, newest first: status, recipe, plugins added (+) or removed (-) against it,
    val_bpb and wall time."""
    from golf_tools.runs import describe_changes, find_runs, format_figure, recipe_label

    found = find_runs(directory)
    header = ["run", "started", "status", "recipe", "plugins vs recipe", "val_bpb", "wall s"]
    rows = [(r.name, [dt.datetime.fromtimestamp(r.started).strftime("%Y-%m-%d %H:%M"), r.status, recipe_label(r),
                      describe_changes(r), format_figure("val_bpb", r.val_bpb), f"{r.wall_seconds:.1f}"])
            for r in found]
    if md:
        typer.echo(_markdown(header, rows))
        return
    table = _table(f"runs under {directory} ({len(found)})", header, rows)
    console.print(table)


def _table(title: str, header: list[str], rows: list[tuple[str, list[str]]]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for key, cells in rows:
        table.add_row(key, *(f"[{STATUS_STYLE[c]}]{c}[/]" if c in STATUS_STYLE else c.replace("[", r"\[") for c in cells))
    return table


def _markdown(header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([key, *cells]).replace("\n", " ") + " |" for key, cells in rows]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(compare)
    app.command()(runs)
