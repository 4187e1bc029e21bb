"""Options and the console shared by the `golf` commands (cli/main.py and the command modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=False, highlight=False)

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override section.key=value (TOML value syntax)")]
WithOpt = Annotated[Optional[list[str]], typer.Option("--with", help="enable plugin NAME with its defaults")]
WithoutOpt = Annotated[Optional[list[str]], typer.Option("--without", help="disable plugin NAME")]
DirsOpt = Annotated[Optional[list[Path]], typer.Option("--plugins-dir", help="load plugin modules from DIR")]
