"""`golf plugins ...`: the installed plugins (`list`, the default) and one plugin in detail (`show`)."""

from __future__ import annotations

import difflib
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
):
    """List installed plugins: name, version, source, hooks, config defaults (and enabled state)."""
    from golfcore.config import field_docs
    from golfcore.plugins import discover
    from golfcore.recipe import load_recipe

    available = discover(plugins_dir or [])
    enabled = set(load_recipe(recipe, available).plugins) if recipe else set()
    table = Table(title="installed golf plugins")
    for col in ("name", "enabled" if recipe else None, "version", "source", "hooks", "config defaults"):
        if col:
            table.add_column(col)
    for name, info in sorted(available.items()):
        fields = field_docs(info.cls.Config)
        if verbose:
            defaults = "\n".join(f"{k} = {v[0]!r}  # {v[1]}" for k, v in fields.items())
        else:
            defaults = ", ".join(f"{k}={v[0]!r}" for k, v in fields.items())
        hooks = ", ".join(h.removeprefix("golf_") for h in info.hooks)
        row = [f"{name}\n[dim]{info.cls.description}[/dim]", ("yes" if name in enabled else "no") if recipe else None,
               info.version, info.source, hooks, defaults or "-"]
        table.add_row(*[c for c in row if c is not None])
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
