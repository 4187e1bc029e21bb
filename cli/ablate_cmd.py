"""`golf ablate`: the command line of golf_tools.ablate, with its live progress table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live
from rich.table import Table

from .options import DirsOpt, SetOpt, WithOpt, WithoutOpt, console

STATUS_STYLE = {"running": "yellow", "done": "green", "reused": "green", "failed": "red", "interrupted": "magenta",
                "skipped": "red", "queued": "dim"}


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def _seeds(count: int, seed_list: str | None) -> list[int]:
    from golf_tools.ablate import DEFAULT_SEEDS
    from golfcore.errors import ConfigError

    if seed_list:
        try:
            return [int(s) for s in _names(seed_list)]
        except ValueError:
            raise ConfigError(f"--seed-list {seed_list!r}: expected comma-separated integers") from None
    if not 1 <= count <= len(DEFAULT_SEEDS):
        raise ConfigError(f"--seeds {count}: between 1 and {len(DEFAULT_SEEDS)} (or give --seed-list)")
    return list(DEFAULT_SEEDS[:count])


def _sbatch(options: list[str]) -> dict[str, str]:
    from golfcore.errors import ConfigError

    out = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--sbatch-opt {item!r}: expected KEY=VALUE (e.g. account=myproj)")
        out[key] = value
    return out


class Progress:
    """The variant x seed table: live in a terminal, one line per change otherwise."""

    def __init__(self, seeds: list[int], parallel: int):
        self.seeds, self.parallel = seeds, parallel
        self.start = time.monotonic()
        self.live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        self.seen: dict[tuple[str, int], str] = {}

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def _eta(self, states) -> str:
        took = [s.seconds for s in states if s.status in ("done", "failed") and s.seconds]
        left = sum(s.status in ("queued", "running") for s in states)
        if not took or not left:
            return "–"
        return f"{sum(took) / len(took) * left / self.parallel:.0f}s"

    def __call__(self, states) -> None:
        if self.live:
            self.live.update(self._table(states))
            return
        for s in states:
            key = (s.spec.variant.name, s.spec.seed)
            if self.seen.get(key) != s.status and s.status != "queued":
                self.seen[key] = s.status
                extra = f" val_bpb {s.val_bpb:.4f}" if s.val_bpb is not None else ""
                extra += f" ({s.seconds:.1f}s)" if s.seconds else ""
                extra += f": {s.error}" if s.error else ""
                done = sum(x.status in ("done", "reused") for x in states)
                console.print(f"[{done}/{len(states)}] {key[0]} seed {key[1]}: {s.status}{extra}", markup=False)

    def _table(self, states) -> Table:
        elapsed = time.monotonic() - self.start
        table = Table(title=f"golf ablate: {elapsed:.0f}s elapsed, ETA {self._eta(states)}")
        table.add_column("variant")
        for seed in self.seeds:
            table.add_column(f"seed {seed}")
        rows: dict[str, dict[int, str]] = {}
        for s in states:
            cell = s.status if s.val_bpb is None else f"{s.status} {s.val_bpb:.4f}"
            if s.status == "running":
                cell += f" {time.monotonic() - s.started:.0f}s"
            rows.setdefault(s.spec.variant.name, {})[s.spec.seed] = f"[{STATUS_STYLE[s.status]}]{cell}[/]"
        for name, cells in rows.items():
            table.add_row(name, *[cells.get(seed, "") for seed in self.seeds])
        return table


def ablate(
    recipe: Annotated[Optional[Path], typer.Argument(help="recipe to ablate (the reference)")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="only re-render the outputs of ablation directory DIR")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="ablation directory (default ablations/<recipe>[-add-<base>])")] = None,
    mode: Annotated[str, typer.Option(help="leave-one-out: remove each plugin; add: add each plugin beyond --base")] = "leave-one-out",
    base: Annotated[Optional[Path], typer.Option(help="add mode: the recipe plugins are added to")] = None,
    only: Annotated[Optional[str], typer.Option(help="vary only these plugins (a,b)")] = None,
    skip: Annotated[Optional[str], typer.Option(help="do not vary these plugins (a,b)")] = None,
    seeds: Annotated[int, typer.Option(help="number of seeds: 1337, 1338, ...")] = 3,
    seed_list: Annotated[Optional[str], typer.Option(help="explicit seeds (1,2,3); overrides --seeds")] = None,
    set_: SetOpt = None,
    with_: WithOpt = None,
    without: WithoutOpt = None,
    plugins_dir: DirsOpt = None,
    parallel: Annotated[Optional[int], typer.Option(help="runs at once (default 1; with slurm, all)")] = None,
    nproc: Annotated[int, typer.Option(help="processes per run (golf run --nproc)")] = 1,
    launcher: Annotated[str, typer.Option(help="local, slurm, or submitit-local (submitit's local executor)")] = "local",
    slurm_partition: Annotated[Optional[str], typer.Option(help="Slurm partition")] = None,
    gpus_per_run: Annotated[int, typer.Option(help="GPUs per Slurm job")] = 0,
    time_: Annotated[int, typer.Option("--time", help="time limit per job, minutes (submitit launchers)")] = 60,
    sbatch_opt: Annotated[Optional[list[str]], typer.Option(help="extra sbatch option KEY=VALUE (repeatable)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="significance bar on the Holm-adjusted p (default 0.01)")] = None,
    min_delta: Annotated[Optional[float], typer.Option(help="smallest |Δ| in nats that counts (default 0.005)")] = None,
):
    """Leave-one-out (or add-one) ablation over paired seeds, with significance; resumable."""
    import dataclasses

    from golf_tools.ablate import LocalLauncher, SlurmOptions, SubmititLauncher, plan_ablation, run_ablation
    from golf_tools.report import render
    from golf_tools.stats import Bar
    from golfcore.errors import ConfigError

    if report is not None:
        from golf_tools.ablate import Plan

        bar = Plan.load(report).bar
        bar = dataclasses.replace(bar, **{k: v for k, v in (("alpha", alpha), ("min_delta_nats", min_delta)) if v is not None})
        render(report, bar)
        console.print((report / "table.md").read_text(encoding="utf-8"), markup=False)
        return
    if recipe is None:
        raise ConfigError("golf ablate needs a RECIPE (or --report DIR)")
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel {parallel}: must be >= 1")
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1")
    bar = Bar(**{k: v for k, v in (("alpha", alpha), ("min_delta_nats", min_delta)) if v is not None})
    seed_values = _seeds(seeds, seed_list)
    plan = plan_ablation(recipe, mode=mode, base=base, only=_names(only), skip=_names(skip), seeds=seed_values,
                         sets=set_ or [], with_=with_ or [], without=without or [], plugins_dirs=plugins_dir or [], bar=bar)
    directory = out or Path("ablations") / (recipe.stem + (f"-add-{base.stem}" if mode == "add" and base else ""))
    if launcher == "local":
        runner = LocalLauncher(parallel or 1, nproc)
    elif launcher in ("slurm", "submitit-local"):
        options = SlurmOptions(slurm_partition, gpus_per_run, time_, _sbatch(sbatch_opt or []))
        runner = SubmititLauncher(directory / "submitit", "slurm" if launcher == "slurm" else "local", options, parallel)
    else:
        raise ConfigError(f"--launcher {launcher}: expected local, slurm or submitit-local")
    console.print(f"ablation directory: {directory}", markup=False)
    started = time.monotonic()
    try:
        with Progress(seed_values, min(runner.capacity, len(plan.variants) * len(seed_values))) as progress:
            states, data = run_ablation(plan, directory, runner, progress, nproc,
                                        notice=lambda line: console.print(line, markup=False, soft_wrap=True))
    except KeyboardInterrupt:
        console.print(f"interrupted: finished runs are kept; rerun the same command to resume ({directory})", markup=False)
        raise typer.Exit(130) from None
    console.print((directory / "table.md").read_text(encoding="utf-8"), markup=False)
    counts = {k: sum(s.status == k for s in states) for k in ("done", "reused", "failed", "skipped", "interrupted")}
    console.print(f"{', '.join(f'{v} {k}' for k, v in counts.items() if v)} in {time.monotonic() - started:.0f}s; "
                  f"outputs in {directory} (ablation.json, table.md, results.csv, delta.png)", markup=False)
    if counts["failed"] or counts["skipped"] or counts["interrupted"]:
        raise typer.Exit(1)
