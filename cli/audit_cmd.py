"""`golf audit RUN_DIR_OR_RECIPE`: the deeper legality probes, as a table (docs/compliance.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from golfcore.errors import ComplianceError

console = Console(highlight=False)
STYLE = {"pass": "green", "fail": "bold red", "not checked": "yellow"}


def audit(
    target: Annotated[Path, typer.Argument(help="a finished run directory, or a recipe (audited at random init: nothing is trained)")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override section.key=value (TOML value syntax)")] = None,
    with_: Annotated[Optional[list[str]], typer.Option("--with", help="enable plugin NAME with its defaults")] = None,
    without: Annotated[Optional[list[str]], typer.Option("--without", help="disable plugin NAME")] = None,
    plugins_dir: Annotated[Optional[list[Path]], typer.Option("--plugins-dir", help="load plugin modules from DIR")] = None,
):
    """Probe a run's (or a recipe's) scoring path: C1 at many cut points, C2 on full distributions,
    batching invariance, document boundaries, budgets. Exits 3 when a check fails."""
    from golfcore.plugins import discover
    from golfcore.run import audit_target

    available = discover(plugins_dir or [])
    rows, what = audit_target(target, available, set_ or [], with_ or [], without or [])
    table = Table(title=f"golf audit {what}")
    for column in ("check", "status", "measured", "culprit"):
        table.add_column(column)
    for row in rows:
        status = f"[{STYLE[row['status']]}]{row['status'].upper()}[/]"
        table.add_row(row["check"], status, row["figures"], row["culprit"])
    console.print(table)
    failed = [row for row in rows if row["status"] == "fail"]
    if failed:
        raise ComplianceError("not a legal score: " + "; ".join(f"{r['check']}: culprit {r['culprit']}" for r in failed))


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
