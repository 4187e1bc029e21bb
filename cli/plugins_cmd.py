"""`golf plugins ...`: the installed plugins (`list`, the default) and one plugin in detail (`show`)."""

from __future__ import annotations

import difflib
import json
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from golfcore.errors import ConfigError

console = Console(stderr=False, highlight=False)


class ListByDefault(TyperGroup):
    """`golf plugins ARGS` means `golf plugins list ARGS` unless ARGS start with a sub-command,
    so `golf plugins`, `golf plugins RECIPE` and `golf plugins -v` keep listing."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] != "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=ListByDefault, help="Installed plugins: `list` (the default) and `show NAME`.")

DirsOpt = Annotated[Optional[list[Path]], typer.Option("--plugins-dir", help="load plugin modules from DIR")]


@app.command("list")
def list_(
    recipe: Annotated[Optional[Path], typer.Argument(help="show which plugins this recipe enables")] = None,
    plugins_dir: DirsOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show every config field with its doc")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON list, for scripts")] = False,
):
    """List installed plugins: name, version, source, hooks, config defaults (and enabled state).
    Piped, it prints one tab-separated line per plugin; names are never shortened."""
    from golfcore.config import field_docs
    from golfcore.plugins import discover
    from golfcore.recipe import load_recipe

    available = discover(plugins_dir or [])
    enabled = set(load_recipe(recipe, available).plugins) if recipe else set()
    rows = []
    for name, info in sorted(available.items()):
        rows.append({"name": name, "description": info.cls.description,
                     **({"enabled": name in enabled} if recipe else {}), "version": info.version,
                     "source": info.source, "hooks": info.hooks,
                     "config": {k: {"default": v[0], "doc": v[1]} for k, v in field_docs(info.cls.Config).items()}})
    if as_json:
        typer.echo(json.dumps(rows, indent=1, default=repr))
        return
    if not console.is_terminal:
        typer.echo("\t".join(["name", *(["enabled"] if recipe else []), "version", "source", "hooks", "config defaults"]))
        for row in rows:
            defaults = ", ".join(f"{k}={v['default']!r}" for k, v in row["config"].items()) or "-"
            cells = [row["name"], *(["yes" if row["enabled"] else "no"] if recipe else []), row["version"], row["source"],
                     ",".join(h.removeprefix("golf_") for h in row["hooks"]), defaults]
            typer.echo("\t".join(cells))
        return
    table = Table(title="installed golf plugins")
    longest = max((len(n) for n in available), default=4)
    table.add_column("name", no_wrap=True, min_width=longest, max_width=max(longest, 24))  # descriptions cut, names never
    for col in ("enabled" if recipe else None, "version", "source", "hooks", "config defaults"):
        if col:
            table.add_column(col)
    for row in rows:
        if verbose:
            defaults = "\n".join(f"{k} = {v['default']!r}  # {v['doc']}" for k, v in row["config"].items())
        else:
            defaults = ", ".join(f"{k}={v['default']!r}" for k, v in row["config"].items())
        hooks = ", ".join(h.removeprefix("golf_") for h in row["hooks"])
        cells = [f"{row['name']}\n[dim]{row['description']}[/dim]", *(["yes" if row["enabled"] else "no"] if recipe else []),
                 row["version"], row["source"], hooks, defaults or "-"]
        table.add_row(*cells)
    console.print(table)
    if not available:
        console.print("no plugins installed")


def _type_name(annotation) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="plugin name (its recipe table: [plugins.NAME])")],
    plugins_dir: DirsOpt = None,
    source: Annotated[bool, typer.Option("--source", help="print the plugin's source code")] = False,
):
    """One plugin: description, source, version, hooks, config fields (type, default, doc), file."""
    from golfcore.config import field_docs
    from golfcore.plugins import discover

    available = discover(plugins_dir or [])
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else f"installed: {', '.join(sorted(available))}"
        raise ConfigError(f"no installed plugin named {name!r}; {hint}")
    info = available[name]
    path = inspect.getsourcefile(info.cls)
    if source:
        typer.echo(Path(path).read_text(encoding="utf-8"), nl=False)
        return
    lines = [f"{name}: {info.cls.description}", f"  source:  {info.source}", f"  version: {info.version}",
             f"  file:    {path}", f"  hooks:   {', '.join(info.hooks) or '-'}"]
    fields = field_docs(info.cls.Config)
    lines.append(f"  config [plugins.{name}]:" + ("" if fields else " none"))
    types = typing.get_type_hints(info.cls.Config)
    for key, (default, doc) in fields.items():
        lines += [f"    {key}: {_type_name(types[key])} = {default!r}", f"        {doc}"]
    console.print("\n".join(lines), markup=False, soft_wrap=True)
