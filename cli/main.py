"""The `golf` command line. User mistakes print one `error:` line and exit non-zero."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from golfcore.errors import ComplianceError, GolfError

from .audit_cmd import register as register_audit
from .data_cmd import app as data_app

app = typer.Typer(help="golf: plugin-based ablations for parameter-golf small-GPT training.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")
console = Console(stderr=False, highlight=False)

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override section.key=value (TOML value syntax)")]
WithOpt = Annotated[Optional[list[str]], typer.Option("--with", help="enable plugin NAME with its defaults")]
WithoutOpt = Annotated[Optional[list[str]], typer.Option("--without", help="disable plugin NAME")]
DirsOpt = Annotated[Optional[list[Path]], typer.Option("--plugins-dir", help="load plugin modules from DIR")]


def user_errors(fn: Callable) -> Callable:
    """Turn GolfError into a one-line message and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GolfError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def _progress_factory(progress: Progress):
    def factory(stage: str, total: int):
        task = progress.add_task(stage if stage == "train" else f"eval {stage}", total=total)
        return lambda done, _total: progress.update(task, completed=done)

    return factory


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def _load(recipe: Path, sets, with_, without, plugins_dir):
    from golfcore.plugins import discover
    from golfcore.recipe import load_recipe

    available = discover(plugins_dir or [])
    return available, load_recipe(recipe, available, sets or [], with_ or [], without or [])


def _relaunch_with_torchrun(nproc: int) -> None:
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    argv = sys.argv[1:]
    args, skip = [], False
    for i, a in enumerate(argv):  # drop --nproc N / --nproc=N
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    cmd = [*launcher, "--standalone", f"--nproc_per_node={nproc}", "-m", "golf_cli", *args]
    raise typer.Exit(subprocess.call(cmd))


@app.command()
@user_errors
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe TOML file")],
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
    nproc: Annotated[int, typer.Option(help="processes (data parallel, launched through torchrun)")] = 1,
):
    """Train a recipe, export its artifact, and score the artifact (val_bpb after the round trip)."""
    from golfcore.recipe import dump_toml
    from golfcore.run import run as run_recipe

    available, config = _load(recipe, set_, with_, without, plugins_dir)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_with_torchrun(nproc)
    main = int(os.environ.get("RANK", "0")) == 0
    with _progress() as progress:
        run_dir, result = run_recipe(config, available, dump_toml(config),
                                     echo=lambda s: progress.console.print(s, markup=False, soft_wrap=True),
                                     progress_factory=_progress_factory(progress))
    if main:
        _summary(result)
        _refuse_illegal(result)


def _refuse_illegal(result: dict) -> None:
    """A score that failed a legality check exits 3 with one line naming the check and culprit."""
    if not result["legal"]:
        raise ComplianceError(f"not a legal score: {'; '.join(result['violations'])}")


def _summary(result: dict) -> None:
    table = Table(title=f"{result['name']} - {result['data']['corpus']}/val, {result['data']['targets']} targets")
    table.add_column("stage")
    table.add_column("val_bpb", justify="right")
    table.add_column("val_loss (nats)", justify="right")
    table.add_column("eval s", justify="right")
    for stage, s in result["stages"].items():
        if s["val_bpb"] is None:
            table.add_row(stage, "[red]INVALID[/red]", "-", f"{s['eval_seconds']:.1f}")
        else:
            bpb = f"{s['val_bpb']:.4f}" + ("" if s["legal"] else " [red]INVALID[/red]")
            table.add_row(stage, bpb, f"{s['val_loss']:.4f}", f"{s['eval_seconds']:.1f}")
    console.print(table)
    art = result["artifact"]
    console.print(
        f"steps {result['steps']}  train {result['train_seconds']:.1f}s  params {result['model_params']:,}  "
        f"artifact {art['total_bytes']:,} B (model {art['model_bytes']:,} + code {art['code_bytes']:,}; "
        f"budget {art['budget_bytes']:,}: {'OK' if art['within_budget'] else 'OVER'})"
    )
    from golfcore.audit import summary

    console.print(f"compliance {summary(result['compliance'])}")
    console.print(f"run directory: {result['run_dir']}")


@app.command("eval")
@user_errors
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
):
    """Re-score a run's artifact (loaded from its bytes) with its resolved recipe; overrides may
    change the evaluation (e.g. --without ttt), not the model."""
    from golfcore.plugins import discover
    from golfcore.run import rescore

    available = discover(plugins_dir or [])
    with _progress() as progress:
        result = rescore(run_dir, available, echo=lambda s: progress.console.print(s, markup=False, soft_wrap=True),
                         progress_factory=_progress_factory(progress), sets=set_ or [], with_=with_ or [],
                         without=without or [])
    _refuse_illegal(result)


@app.command()
@user_errors
def plugins(
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


@app.command()
@user_errors
def bench(
    recipe: Annotated[Path, typer.Argument(help="recipe TOML file")],
    steps: Annotated[int, typer.Option(help="timed optimizer steps")] = 5,
    warmup: Annotated[int, typer.Option(help="untimed steps first (compilation)")] = 2,
    peak_tflops: Annotated[Optional[float], typer.Option(help="peak dense TFLOP/s for MFU (default: detected GPU, else none)")] = None,
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
):
    """A few training steps on synthetic tokens: step time, tokens/s, FLOPs/token, MFU, peak memory."""
    from golfcore.bench import bench as run_bench

    available, config = _load(recipe, set_, with_, without, plugins_dir)
    figures = run_bench(config, available, steps=steps, warmup=warmup, peak_tflops=peak_tflops)
    table = Table(title=f"golf bench {recipe} ({figures['device']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
        table.add_row(key, str(value))
    console.print(table)


register_audit(app, user_errors)


def main() -> None:
    app()
