"""The `golf` command line. User mistakes print one `error:` line and exit non-zero;
`golf --debug ...` (or GOLF_DEBUG=1) prints their full traceback instead.

Exit codes: 0 done; 1 a user error (data, files, a plugin); 2 a recipe or option error; 3 not
a legal score; 4 training diverged; 75 interrupted by SIGTERM/SIGINT (resume later)."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from golfcore.errors import ComplianceError, ConfigError, GolfError
from golfcore.result import RunResult

from .ablate_cmd import ablate
from .audit_cmd import register as register_audit
from .data_cmd import app as data_app
from .launch import launch, leave_error_for_launcher
from .model_cmd import register as register_model
from .options import DirsOpt, SetOpt, WithOpt, WithoutOpt, console
from .plugins_cmd import app as plugins_app

# errors of the machine the user gave golf (a full disk, a read-only or forbidden folder), not of golf
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


class GolfGroup(TyperGroup):
    """The `golf` command group; the one place where a GolfError from any command (sub-commands
    included) becomes one `error:` line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            self._fail(ctx, e, f"{e.filename}: {e.strerror}" if e.filename else str(e), 1)
        except GolfError as e:
            self._fail(ctx, e, str(e), e.exit_code)

    @staticmethod
    def _fail(ctx, error: Exception, message: str, code: int):
        if ctx.params.get("debug"):
            traceback.print_exception(error)  # the __cause__ chain included
        elif not leave_error_for_launcher(message, code):
            typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code) from None


app = typer.Typer(cls=GolfGroup, no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")
app.add_typer(plugins_app, name="plugins")
app.command()(ablate)
register_audit(app)
register_model(app)


@app.callback()
def golf(
    debug: Annotated[bool, typer.Option("--debug", envvar="GOLF_DEBUG",
                                        help="print the full traceback of an error instead of one line")] = False,
):
    """golf: plugin-based ablations for parameter-golf small-GPT training.

    Exit codes: 0 done; 1 a user error (data, files, a plugin); 2 a recipe or option error;
    3 not a legal score; 4 training diverged; 75 interrupted by SIGTERM/SIGINT (resume later)."""


def _progress_factory(progress: Progress):
    def factory(stage: str, total: int):
        task = progress.add_task(stage if stage == "train" else f"eval {stage}", total=total)
        return lambda done, _total: progress.update(task, completed=done)

    return factory


def _progress(enabled: bool = True) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not (enabled and console.is_terminal))


def _load(recipe: Path, sets, with_, without, plugins_dir):
    from golfcore.plugins import discover
    from golfcore.recipe import load_recipe

    available = discover(plugins_dir or [])
    return available, load_recipe(recipe, available, sets or [], with_ or [], without or [])


def _ensure_data(config) -> None:
    """Build the embedded corpus if the recipe needs it and it is missing, on rank 0 only (the
    others wait for it in the run's session); a missing downloaded corpus is an error naming
    the command that fetches it."""
    from golf_tools.corpora import ensure_corpus

    if int(os.environ.get("RANK", "0")) == 0:
        ensure_corpus(config.data)


def _check_before_launch(config, available, nproc: int) -> None:
    """Everything that can fail without the processes, checked once here rather than N times
    after launching them: devices, the batch split, plugin config checks, the corpus."""
    import torch

    from golfcore.memory import check_fits
    from golfcore.run import Session
    from golfcore.train import Dist, micro_batches_per_rank

    device = config.train.device
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.device_count() < nproc:
        raise ConfigError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) available")
    micro_batches_per_rank(config, nproc)
    check_fits(config, nproc, torch.device("cuda:0" if cuda else "cpu"))
    Session(config, available, dist=Dist(0, 1, 0, torch.device("cpu")))  # the parent never touches a GPU


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus `--nproc N` / `--nproc=N`: what each launched process runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


@app.command()
def run(
    recipe: Annotated[Optional[Path], typer.Argument(help="recipe TOML file")] = None,
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
    nproc: Annotated[int, typer.Option(help="data-parallel processes on this machine")] = 1,
    trace_hooks: Annotated[bool, typer.Option("--trace-hooks", help="print every hook call and the plugins that answered it")] = False,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="write the run to this directory (must not exist)")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue an interrupted run (RUN_DIR.incomplete) from its checkpoint, with its own recipe")] = None,
):
    """Train a recipe, export its artifact, and score the artifact (val_bpb after the round trip).

    Exit codes: 0 done, 1 or 2 a user error, 3 not a legal score, 4 training diverged, 75 interrupted
    by SIGTERM/SIGINT (resume later with --resume)."""
    from golfcore.recipe import dump_toml
    from golfcore.run import RECIPE_NAME
    from golfcore.run import run as run_recipe

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1")
    if (recipe is None) == (resume is None):
        raise GolfError("golf run takes a RECIPE or --resume RUN_DIR (one of them)")
    if resume is not None and (set_ or with_ or without):
        raise GolfError("--resume continues a run with its own recipe; --set/--with/--without cannot change it")
    available, config = _load(resume / RECIPE_NAME if resume else recipe, set_, with_, without, plugins_dir)
    _ensure_data(config)  # before launching processes, so every rank finds the corpus built
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _check_before_launch(config, available, nproc)
        raise typer.Exit(launch(nproc, _without_nproc(sys.argv[1:])))
    main = int(os.environ.get("RANK", "0")) == 0
    with _progress(enabled=main) as progress:
        run_dir, result = run_recipe(config, available, dump_toml(config),
                                     echo=lambda s: progress.console.print(s, markup=False, soft_wrap=True),
                                     progress_factory=_progress_factory(progress), trace_hooks=trace_hooks,
                                     run_dir=run_dir, resume_dir=resume)
    if main:
        _summary(result)
        _refuse_illegal(result)


def _refuse_illegal(result: RunResult) -> None:
    """A score that failed a legality check exits 3 with one line naming the check and culprit."""
    if not result.legal:
        raise ComplianceError(f"not a legal score: {'; '.join(result.violations)}")


def _summary(result: RunResult) -> None:
    table = Table(title=f"{result.name} - {result.data['corpus']}/val, {result.data['targets']} targets")
    table.add_column("stage")
    table.add_column("val_bpb", justify="right")
    table.add_column("val_loss (nats)", justify="right")
    table.add_column("eval s", justify="right")
    table.add_column("warm-up s", justify="right")
    for stage, s in result.stages.items():
        seconds = (f"{s['eval_seconds']:.1f}", f"{s['warmup_seconds']:.1f}")
        if s["val_bpb"] is None:
            table.add_row(stage, "[red]INVALID[/red]", "-", *seconds)
        else:
            bpb = f"{s['val_bpb']:.4f}" + ("" if s["legal"] else " [red]INVALID[/red]")
            table.add_row(stage, bpb, f"{s['val_loss']:.4f}", *seconds)
    console.print(table)
    art = result.artifact
    console.print(
        f"steps {result.steps}  train {result.train_seconds:.1f}s  params {result.model_params:,}  "
        f"artifact {art['total_bytes']:,} B (model {art['model_bytes']:,} + code {art['code_bytes']:,}; "
        f"budget {art['budget_bytes']:,}: {'OK' if art['within_budget'] else 'OVER'})"
    )
    from golfcore.audit import summary

    console.print(f"compliance {summary(result.compliance)}")
    console.print(f"run directory: {result.run_dir}")


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="record the re-score as a run directory (must not exist)")] = None,
):
    """Re-score a finished run's artifact (loaded from its bytes) with its recorded recipe; overrides
    may change the evaluation (e.g. --without ttt), not the model, and each is printed.

    Exit codes: 0 done, 1 or 2 a user error, 3 not a legal score, 75 interrupted by SIGTERM/SIGINT."""
    from golfcore.plugins import discover
    from golfcore.recipe import load_recipe
    from golfcore.run import RECIPE_NAME, rescore

    available = discover(plugins_dir or [])
    if (run_dir / RECIPE_NAME).is_file():  # without it, rescore says what a run directory needs
        _ensure_data(load_recipe(run_dir / RECIPE_NAME, available, set_ or [], with_ or [], without or []))
    with _progress() as progress:
        result = rescore(run_dir, available, echo=lambda s: progress.console.print(s, markup=False, soft_wrap=True),
                         progress_factory=_progress_factory(progress), sets=set_ or [], with_=with_ or [], without=without or [],
                         out_dir=out)
    _refuse_illegal(result)


@app.command("export")
def export_(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory with a legal score")],
    out: Annotated[Optional[Path], typer.Option("--out", help="the records folder to write (must not exist; default <date>_<name>)")] = None,
    plugins_dir: DirsOpt = None,
):
    """Write the run as a challenge records folder: train_gpt.py (the run's code as one script),
    submission.json, the train log, requirements.txt and a README."""
    from golf_tools.export import export
    from golfcore.plugins import discover

    folder = export(run_dir, discover(plugins_dir or []), out)
    for path in sorted(folder.iterdir()):
        console.print(f"{path}  {path.stat().st_size:,} bytes", markup=False, soft_wrap=True)


@app.command()
def bench(
    recipe: Annotated[Path, typer.Argument(help="recipe TOML file")],
    steps: Annotated[int, typer.Option(help="timed optimizer steps per regime (full lr scale, warmdown)")] = 5,
    warmup: Annotated[int, typer.Option(help="untimed steps first (compilation)")] = 2,
    peak_tflops: Annotated[Optional[float], typer.Option(help="peak dense TFLOP/s for MFU (default: detected GPU, else none)")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="time RECIPE as written against RECIPE (or --against) with the overrides, alternating steps")] = False,
    against: Annotated[Optional[Path], typer.Option(help="with --compare: the second recipe")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="also profile one training step: the top operators by time")] = False,
    dry: Annotated[bool, typer.Option("--dry", help="build on the meta device only: parameters, FLOPs/token, projected memory per GPU")] = False,
    gpus: Annotated[int, typer.Option(help="with --dry: the GPUs the recipe's batch is split over")] = 8,
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
):
    """Training steps on synthetic tokens: step time, tokens/s, FLOPs/token, MFU (PaLM and causal), peak memory.

    With --compare, the --set/--with/--without overrides apply to the second recipe only."""
    from golf_tools.bench import bench as run_bench
    from golf_tools.bench import compare as run_compare

    if steps < 1:
        raise ConfigError(f"--steps {steps}: must be >= 1")
    if warmup < 0:
        raise ConfigError(f"--warmup {warmup}: must be >= 0")
    if peak_tflops is not None and peak_tflops <= 0:
        raise ConfigError(f"--peak-tflops {peak_tflops}: must be > 0")
    if against and not compare:
        raise GolfError("--against needs --compare")
    if dry:
        from golf_tools.bench import dry_build

        if gpus < 1:
            raise ConfigError(f"--gpus {gpus}: must be >= 1")
        available, config = _load(recipe, set_, with_, without, plugins_dir)
        _figure_table(f"golf bench --dry {recipe} (meta device, {gpus} GPUs)", {"value": dry_build(config, available, gpus)})
        return
    if not compare:
        available, config = _load(recipe, set_, with_, without, plugins_dir)
        figures = run_bench(config, available, steps=steps, warmup=warmup, peak_tflops=peak_tflops)
        _figure_table(f"golf bench {recipe} ({figures['device']})", {"value": figures})
        if profile:
            from golf_tools.bench import profile_step

            typer.echo(profile_step(config, available, warmup=warmup))
        return
    available, first = _load(recipe, None, None, None, plugins_dir)
    _, second = _load(against or recipe, set_, with_, without, plugins_dir)
    changes = " ".join([*(f"--set {s}" for s in set_ or []), *(f"--with {w}" for w in with_ or []), *(f"--without {w}" for w in without or [])])
    second_label = f"{against or recipe} {changes}".strip()
    out = run_compare(first, second, available, steps=steps, warmup=warmup, peak_tflops=peak_tflops)
    _figure_table(f"golf bench --compare ({out['first']['device']})", {str(recipe): out["first"], second_label: out["second"]})
    typer.echo(f"first: {recipe}\nsecond: {second_label}")
    for key, ratio in out["ratios"].items():
        typer.echo(f"{key} (second / first): {ratio:.3f}")


def _figure_table(title: str, columns: dict[str, dict]) -> None:
    table = Table(title=title)
    table.add_column("figure")
    for name in columns:
        table.add_column(name, justify="right")
    for key in next(iter(columns.values())):
        cells = []
        for figures in columns.values():
            value = figures.get(key, "")
            if isinstance(value, float):
                value = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
            cells.append(str(value))
        table.add_row(key, *cells)
    console.print(table)


@app.command("new-plugin")
def new_plugin(
    name: Annotated[str, typer.Argument(help="plugin name: a Python identifier, its recipe table [plugins.NAME]")],
    hook: Annotated[Optional[list[str]], typer.Option("--hook", help="a hook to implement (repeatable), e.g. golf_step_end")] = None,
    directory: Annotated[Path, typer.Option("--dir", help="where to create golf-NAME/")] = Path("."),
):
    """Create a plugin package golf-NAME/: entry point, typed Config, hook stubs, a test, a README."""
    from .scaffold import new_plugin as scaffold

    target = scaffold(name, hook or [], directory)
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        console.print(f"created {path}", markup=False, soft_wrap=True)
    console.print(f"next: pip install -e {target} && golf plugins show {name} && python -m pytest {target / 'tests'}",
                  markup=False, soft_wrap=True)



def main() -> None:
    app()
