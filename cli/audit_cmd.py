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
    target: Annotated[Optional[Path], typer.Argument(help="a finished run directory, or a recipe (audited at random init: nothing is trained)")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="check a corpus (a name, or a recipe naming it) for training/validation overlap")] = None,
    root: Annotated[Path, typer.Option("--root", help="data root of a corpus given by name")] = Path("data"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override section.key=value (TOML value syntax)")] = None,
    with_: Annotated[Optional[list[str]], typer.Option("--with", help="enable plugin NAME with its defaults")] = None,
    without: Annotated[Optional[list[str]], typer.Option("--without", help="disable plugin NAME")] = None,
    plugins_dir: Annotated[Optional[list[Path]], typer.Option("--plugins-dir", help="load plugin modules from DIR")] = None,
):
    """Probe a run's (or a recipe's) scoring path: C1 at many cut points, C2 on full distributions,
    batching invariance, document boundaries, budgets. With --data CORPUS: whether validation
    documents appear in the corpus's training shards. Exits 3 when a check fails."""
    from golfcore.errors import GolfError
    from golfcore.plugins import discover
    from golfcore.run import audit_target

    if (target is None) == (data is None):
        raise GolfError("golf audit takes a RUN_DIR or RECIPE, or --data CORPUS (one of them)")
    if data is not None:
        return audit_data(data, root, plugins_dir)

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


def audit_data(data: str, root: Path, plugins_dir) -> None:
    """`golf audit --data`: the overlap check of a corpus, printed and cached for every run."""
    from golf_tools.corpora import ensure_corpus
    from golf_tools.overlap import cached_check
    from golfcore.config import DataSection

    if data.endswith(".toml"):
        from golfcore.plugins import discover
        from golfcore.recipe import load_recipe

        section = load_recipe(Path(data), discover(plugins_dir or [])).data
    else:
        section = DataSection(corpus=data, root=str(root))
    corpus = ensure_corpus(section)
    entry, cached = cached_check(corpus, Path(section.root))
    print_overlap(corpus.name, entry, cached)
    if entry["status"] == "fail":
        raise ComplianceError(f"not a legal corpus: train_val_overlap: {entry['message']}")


def print_overlap(name: str, entry: dict, cached: bool) -> None:
    speed = f"{entry['tokens_per_second'] / 1e6:.1f}M tokens/s" if entry.get("tokens_per_second") else "-"
    console.print(
        f"overlap {name}: {entry['copied_documents']} of {entry['val_documents']} validation documents copied into "
        f"training, {entry['documents_with_a_span_in_training']} share a {entry['span_tokens']}-token span; "
        f"{entry['train_tokens']:,} training tokens in {entry['seconds']:.1f} s ({speed})"
        f"{' (cached)' if cached else ''}: [{STYLE[entry['status']]}]{entry['status'].upper()}[/]")
    for example in entry["examples"]:
        console.print(f"  validation document {example['val_document']} {'copied' if example['copied'] else 'shares a span'}: "
                      f"{example['train_shard']} at token {example['train_offset']:,}")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
