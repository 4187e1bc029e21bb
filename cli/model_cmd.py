"""`golf model RECIPE`: the recipe's model description, slot by slot, with the plugin that set each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DirsOpt, SetOpt, WithOpt, WithoutOpt


def model(
    recipe: Annotated[Path, typer.Argument(help="recipe TOML file")],
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
):
    """Print the model the recipe builds: every slot of its description, and in brackets the
    plugin that set it (no bracket: the core's baseline). Builds nothing."""
    from golfcore.artifact import Int8Quantizer
    from golfcore.assemble import check_config, describe
    from golfcore.plugins import Host, discover
    from golfcore.recipe import load_recipe

    available = discover(plugins_dir or [])
    config = load_recipe(recipe, available, set_ or [], with_ or [], without or [])
    host = Host(config, available)
    check_config(config, host)
    quantizer = host.first("golf_quantizer", config=config) or Int8Quantizer(config.export.float_max_numel)
    description, setters = describe(config, host, quantizer)
    typer.echo(f"# {recipe}: plugins {', '.join(config.plugins) or 'none'}")
    typer.echo(description.render(setters))


def register(app: typer.Typer) -> None:
    app.command("model")(model)
