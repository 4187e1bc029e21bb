"""`golf ablate`: one recipe against its variants, over paired seeds, as ordinary run directories.

An ablation is planned (which variants, which seeds, the exact resolved recipe and code hash
each run must have), then each run is launched as its own `golf run` (or, for a plugin that
acts only at evaluation, `golf eval REFERENCE_RUN --without NAME --out DIR`) subprocess, so a
crashing run cannot take the ablation down. Layout of the ablation directory:

    plan.json                     the plan: recipe, mode, seeds, overrides, variants, bar
    runs/<variant>/seed-<S>/      one ordinary run directory per (variant, seed)
    runs/<variant>/seed-<S>.failed  the error of a failed run (removed when it is retried)
    logs/<variant>.seed-<S>.log   the run's console output
    sessions.jsonl                one line per `golf ablate` invocation: runs executed, reused, wall time
    ablation.json, table.md, results.csv, delta.png   written by golf_tools.report

Resume: a finished run (its directory holds result.json) is reused when its recipe.toml is
the planned resolved recipe, its seed is the planned seed and its code_sha256 is the hash of
the train_gpt.py the planned run would count (golfcore.bundle). An interrupted run (killed by
a signal, or exiting with code 75) of the planned recipe continues from its checkpoint (`golf
run --resume`). Nothing is deleted: a run of another plan (a changed --set, other code) is
moved aside to superseded/<time>/<variant>/seed-<S> and said so, and its place run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from golfcore.bundle import Bundle
from golfcore.errors import ConfigError, GolfError
from golfcore.plugins import PluginInfo, discover
from golfcore.processes import start_child
from golfcore.recipe import dump_toml, load_recipe
from golfcore.run import ARTIFACT_NAME, RECIPE_NAME

from .stats import Bar

REFERENCE = "reference"
DEFAULT_SEEDS = (1337, 1338, 1339, 1340, 1341, 1342, 1343, 1344, 1345, 1346)
INTERRUPTED_EXIT = 75  # a run stopped on request; it resumes later


@dataclass
class Variant:
    """The reference or one variant: the plugin under test and every plugin it takes along."""

    name: str
    plugin: str | None = None  # None for the reference
    removed: list[str] = field(default_factory=list)  # plugins off relative to the reference recipe
    added: list[str] = field(default_factory=list)  # plugins on relative to the base recipe (add mode)
    args: list[str] = field(default_factory=list)  # this variant's own golf run / golf eval options
    rescored: bool = False  # re-scores the reference's artifact instead of training
    impossible: str | None = None  # why it cannot run


@dataclass
class Plan:
    recipe: str  # the recipe every run starts from (RECIPE, or BASE in add mode)
    mode: str  # "leave-one-out" or "add"
    seeds: list[int]
    sets: list[str]
    with_: list[str]
    without: list[str]
    plugins_dirs: list[str]
    variants: list[Variant]  # the reference first
    bar: Bar
    full_recipe: str | None = None  # add mode: the recipe whose plugins are added

    @property
    def sign(self) -> int:
        """+1: Δ = variant - reference (a plugin removed); -1: Δ = reference - variant (added)."""
        return 1 if self.mode == "leave-one-out" else -1

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "plan.json").write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Plan:
        path = Path(directory) / "plan.json"
        if not path.is_file():
            raise GolfError(f"{directory}: not an ablation directory (no plan.json)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            raw["variants"] = [Variant(**v) for v in raw["variants"]]
            raw["bar"] = Bar(**raw["bar"])
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise GolfError(f"{path}: not a readable ablation plan ({type(e).__name__}: {e})") from None


def run_path(directory: Path, variant: str, seed: int) -> Path:
    return Path(directory) / "runs" / variant / f"seed-{seed}"


def failed_marker(run_dir: Path) -> Path:
    return run_dir.with_name(f"{run_dir.name}.failed")


def _closure(start: list[str], edges: Callable[[str], list[str]]) -> list[str]:
    """`start` and everything reachable through `edges`, in discovery order."""
    seen = list(start)
    for name in seen:
        seen += [n for n in edges(name) if n not in seen]
    return seen


def _select(candidates: list[str], only: list[str], skip: list[str], source: str) -> list[str]:
    for option, names in (("--only", only), ("--skip", skip)):
        for name in names:
            if name not in candidates:
                raise ConfigError(f"{option} {name}: not a plugin this ablation varies "
                                  f"(candidates in {source}: {', '.join(candidates) or 'none'})")
    return [n for n in candidates if (not only or n in only) and n not in skip]


def plan_ablation(recipe: Path, *, mode: str = "leave-one-out", base: Path | None = None, only: list[str] = (),
                  skip: list[str] = (), seeds: list[int] = DEFAULT_SEEDS[:3], sets: list[str] = (),
                  with_: list[str] = (), without: list[str] = (), plugins_dirs: list[Path] = (),
                  bar: Bar | None = None) -> Plan:
    """Which variants to run: each enabled plugin removed (leave-one-out), or each plugin of
    `recipe` beyond `base` added to `base` (add); a plugin goes together with the plugins that
    require it (removal) or that it requires (addition)."""
    if mode not in ("leave-one-out", "add"):
        raise ConfigError(f"--mode {mode}: expected leave-one-out or add")
    if mode == "add" and base is None:
        raise ConfigError("--mode add needs --base BASE_RECIPE (the recipe the plugins are added to)")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"seeds {list(seeds)}: need at least one seed, each once")
    available = discover(list(plugins_dirs))
    start = Path(base if mode == "add" else recipe)
    reference = load_recipe(start, available, sets, with_, without)
    variants = [Variant(REFERENCE)]
    if mode == "leave-one-out":
        enabled = list(reference.plugins)
        for plugin in _select(enabled, list(only), list(skip), str(recipe)):
            removed = _closure([plugin], lambda n: [d for d in enabled if n in available[d].cls.requires])
            variants.append(Variant(f"without-{plugin}", plugin, removed=removed,
                                    args=[a for n in removed for a in ("--without", n)]))
    else:
        full = load_recipe(recipe, available, sets)
        extra = [n for n in full.plugins if n not in reference.plugins]
        for plugin in _select(extra, list(only), list(skip), str(recipe)):
            added = _closure([plugin], lambda n: [r for r in available[n].cls.requires if r not in reference.plugins])
            variant = Variant(f"with-{plugin}", plugin, added=added)
            missing = [n for n in added if n not in full.plugins]
            if missing:
                variant.impossible = f"needs {', '.join(missing)}, which {recipe} does not enable"
            variant.args = [a for n in added if n in full.plugins for a in _enable_args(n, full.plugins[n])]
            variants.append(variant)
    if len(variants) == 1:
        raise ConfigError(f"{recipe}: no plugin to vary (it enables none beyond the reference, or --only/--skip "
                          f"leave none): nothing to ablate")
    for variant in variants[1:]:
        changed = variant.removed or variant.added
        variant.rescored = all(available[n].cls.acts_only_at_eval() for n in changed)
        if variant.impossible is None:
            try:
                load_recipe(start, available, [*sets, *_sets_of(variant.args)], [*with_, *_names(variant.args, "--with")],
                            [*without, *_names(variant.args, "--without")])
            except ConfigError as e:
                variant.impossible = str(e)
    return Plan(str(start), mode, list(seeds), list(sets), list(with_), list(without), [str(d) for d in plugins_dirs],
                variants, bar or Bar(), str(recipe) if mode == "add" else None)


def _enable_args(name: str, config) -> list[str]:
    """--with NAME and a --set for each option of `config` that differs from its default."""
    default = type(config)()
    args = ["--with", name]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value != getattr(default, f.name):
            args += ["--set", f"plugins.{name}.{f.name}={json.dumps(value)}"]  # JSON scalars and lists are TOML
    return args


def _names(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == option]


def _sets_of(args: list[str]) -> list[str]:
    return _names(args, "--set")


# ----------------------------------------------------------------------------- runs


@dataclass
class RunSpec:
    """One (variant, seed): the command that makes its run directory and the key it must match."""

    variant: Variant
    seed: int
    directory: Path
    command: list[str]
    recipe_text: str
    code_hash: str
    reference: RunSpec | None = None  # the run whose artifact a re-scored variant uses


@dataclass
class RunState:
    spec: RunSpec
    status: str = "queued"  # queued, running, done, reused, failed, interrupted, skipped
    started: float | None = None
    seconds: float | None = None
    val_bpb: float | None = None
    error: str | None = None


def run_specs(plan: Plan, directory: Path, nproc: int = 1) -> list[RunSpec]:
    """Every run of the plan, seed by seed, each seed's reference first."""
    available = discover([Path(d) for d in plan.plugins_dirs])
    golf = [sys.executable, "-m", "golf_cli"]
    dirs_args = [a for d in plan.plugins_dirs for a in ("--plugins-dir", d)]
    common = [*(a for s in plan.sets for a in ("--set", s)), *(a for n in plan.with_ for a in ("--with", n)),
              *(a for n in plan.without for a in ("--without", n)), *dirs_args]
    specs = []
    for seed in plan.seeds:
        reference = None
        for variant in plan.variants:
            if variant.impossible:
                continue
            target = run_path(directory, variant.name, seed)
            text, code = _expected_key(plan, variant, seed, available)
            if variant.rescored:
                command = [*golf, "eval", str(reference.directory), *variant.args, *dirs_args, "--out", str(target)]
            else:
                command = [*golf, "run", plan.recipe, *common, *variant.args, "--set", f"run.seed={seed}",
                           "--run-dir", str(target), *(["--nproc", str(nproc)] if nproc > 1 else [])]
            spec = RunSpec(variant, seed, target, command, text, code, reference if variant.rescored else None)
            reference = reference or spec
            specs.append(spec)
    return specs


def _expected_key(plan: Plan, variant: Variant, seed: int, available: dict[str, PluginInfo]) -> tuple[str, str]:
    """The resolved recipe text and code hash the run of (variant, seed) will record."""
    config = load_recipe(Path(plan.recipe), available, [*plan.sets, *_sets_of(variant.args), f"run.seed={seed}"],
                         [*plan.with_, *_names(variant.args, "--with")], [*plan.without, *_names(variant.args, "--without")])
    text = dump_toml(config)
    return text, Bundle.for_run([available[n].module for n in config.plugins], text).sha256


def reusable(spec: RunSpec) -> bool:
    """Whether the finished run at spec.directory is the planned one (see the module docstring)."""
    result_file = spec.directory / "result.json"
    if not result_file.is_file():
        return False
    result = read_result(spec.directory)
    same = (_recipe_text(spec.directory) == spec.recipe_text
            and result.get("seed") == spec.seed and result.get("code_sha256") == spec.code_hash)
    if same and spec.reference is not None:
        artifact = (spec.reference.directory / ARTIFACT_NAME).read_bytes()
        same = (result.get("rescored_from") or {}).get("artifact_sha256") == hashlib.sha256(artifact).hexdigest()
    return same


def read_result(run_dir: Path) -> dict:
    """A run's result.json as a dict; GolfError naming the file when it is not JSON."""
    path = run_dir / "result.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GolfError(f"{path}: not a readable result ({type(e).__name__}: {e})") from None
    if not isinstance(result, dict):
        raise GolfError(f"{path}: not a readable result (a JSON {type(result).__name__}, not an object)")
    return result


def _recipe_text(run_dir: Path) -> str | None:
    path = run_dir / RECIPE_NAME
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _prepare(spec: RunSpec, directory: Path, stamp: str, notice: Callable[[str], None]) -> list[str]:
    """Make way for spec's run and return its command: an interrupted attempt at the planned
    recipe is resumed; a finished or interrupted run of another plan is moved aside (never
    deleted) to superseded/<stamp>/, and said so."""
    partial = spec.directory.with_name(f"{spec.directory.name}.incomplete")
    failed_marker(spec.directory).unlink(missing_ok=True)
    if partial.exists() and not spec.variant.rescored and _recipe_text(partial) == spec.recipe_text:
        return [*spec.command[:3], "run", "--resume", str(partial), *_passed_on(spec.command)]
    for path in (spec.directory, partial):
        if path.exists():
            aside = directory / "superseded" / stamp / spec.variant.name / path.name
            aside.parent.mkdir(parents=True, exist_ok=True)
            path.rename(aside)
            notice(f"{path} is not this plan's run (another recipe, seed or code): moved aside to {aside}")
    return spec.command


def _passed_on(command: list[str]) -> list[str]:
    """The options of a run's command that its resumption needs too (plugin folders, processes)."""
    out = []
    for option, value in zip(command, command[1:]):
        if option in ("--plugins-dir", "--nproc"):
            out += [option, value]
    return out


def _error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


# ----------------------------------------------------------------------------- launchers


class LocalLauncher:
    """Runs as subprocesses of this process; each slot of `--parallel` gets its own GPUs."""

    def __init__(self, parallel: int, nproc: int):
        self.capacity = parallel
        gpus = _gpu_count()
        self.slots: list[str | None] = [None] * parallel
        if gpus:
            per_run = gpus // parallel
            if per_run < nproc:
                raise ConfigError(f"--parallel {parallel} x --nproc {nproc} needs {parallel * nproc} GPUs; {gpus} visible")
            self.slots = [",".join(str(g) for g in range(i * per_run, (i + 1) * per_run)) for i in range(parallel)]
        self.free = list(range(parallel))

    def start(self, spec: RunSpec, command: list[str], log: Path):
        slot = self.free.pop(0)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.slots[slot] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.slots[slot]
        with open(log, "w", encoding="utf-8") as out:
            process = start_child(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        return _LocalHandle(process, lambda: self.free.append(slot))


class _LocalHandle:
    def __init__(self, process: subprocess.Popen, release: Callable[[], None]):
        self.process, self.release = process, release

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self.release()
        return code

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()
        self.release()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_run: int = 0
    time_minutes: int = 60
    sbatch: dict[str, str] = field(default_factory=dict)


class SubmititLauncher:
    """Runs as jobs through submitit: on Slurm (`cluster="slurm"`), or with submitit's local
    executor (`cluster="local"`, the same code path without a cluster)."""

    def __init__(self, folder: Path, cluster: str, options: SlurmOptions, parallel: int | None):
        import submitit

        self.capacity = parallel or 10**6
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        self.executor.update_parameters(
            timeout_min=options.time_minutes, gpus_per_node=options.gpus_per_run, nodes=1, tasks_per_node=1,
            slurm_partition=options.partition, slurm_additional_parameters=dict(options.sbatch),
        )

    def start(self, spec: RunSpec, command: list[str], log: Path):
        return _JobHandle(self.executor.submit(run_logged, command, str(log)))


class _JobHandle:
    def __init__(self, job):
        self.job = job

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return self.job.result()
        except Exception:  # the job itself died (timeout, node failure): like a killed run
            return -signal.SIGKILL

    def stop(self) -> None:
        self.job.cancel(check=False)


def run_logged(command: list[str], log: str) -> int:
    """A run's command with its output in `log`; what a submitit job executes."""
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


# ----------------------------------------------------------------------------- the loop


def execute(specs: list[RunSpec], directory: Path, launcher, on_change: Callable[[list[RunState]], None],
            poll_seconds: float = 0.2, notice: Callable[[str], None] = lambda line: None) -> list[RunState]:
    """Reuse or run every spec, at most launcher.capacity at once; a re-scored variant waits for
    its reference run. Ctrl-C / SIGTERM stop the running ones (they count as interrupted);
    `notice(line)` hears of every run moved aside."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    states = [RunState(s) for s in specs]
    by_dir = {s.spec.directory: s for s in states}
    running: dict[Path, tuple[RunState, object]] = {}
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            for state in states:
                if state.status != "queued" or len(running) >= launcher.capacity:
                    continue
                ref = by_dir[state.spec.reference.directory] if state.spec.reference else None
                if ref is not None and ref.status not in ("done", "reused"):
                    if ref.status in ("failed", "skipped", "interrupted"):
                        state.status, state.error = "skipped", f"reference run {ref.status}"
                    continue
                if reusable(state.spec):
                    state.status = "reused"
                    state.val_bpb = _val_bpb(state.spec.directory)
                    continue
                state.spec.directory.parent.mkdir(parents=True, exist_ok=True)
                command = _prepare(state.spec, directory, stamp, notice)
                state.status, state.started = "running", time.monotonic()
                running[state.spec.directory] = (state, launcher.start(state.spec, command, _log_path(directory, state.spec)))
            for key, (state, handle) in list(running.items()):
                code = handle.poll()
                if code is not None:
                    del running[key]
                    _settle(state, code, _log_path(directory, state.spec))
            on_change(states)
            if not running and not any(s.status == "queued" for s in states):
                return states
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for state, handle in running.values():
            handle.stop()
            state.status, state.seconds = "interrupted", time.monotonic() - state.started
        on_change(states)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _log_path(directory: Path, spec: RunSpec) -> Path:
    return directory / "logs" / f"{spec.variant.name}.seed-{spec.seed}.log"


def _val_bpb(run_dir: Path) -> float:
    return read_result(run_dir).get("val_bpb")


def _settle(state: RunState, code: int, log: Path) -> None:
    state.seconds = time.monotonic() - state.started
    finished = (state.spec.directory / "result.json").is_file()
    if code == 0 and finished:
        state.status, state.val_bpb = "done", _val_bpb(state.spec.directory)
    elif code < 0 or code == INTERRUPTED_EXIT or code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        state.status, state.error = "interrupted", f"exit {code}: rerun to resume"
    else:
        state.status, state.error = "failed", _error_line(log) if code else "exited 0 without result.json"
        failed_marker(state.spec.directory).write_text(state.error + "\n", encoding="utf-8")


def run_ablation(plan: Plan, directory: Path, launcher, on_change: Callable[[list[RunState]], None],
                 nproc: int = 1, notice: Callable[[str], None] = lambda line: None) -> tuple[list[RunState], dict]:
    """Save the plan, reuse or run every run, append this session to sessions.jsonl and write
    the outputs (also after an interruption, with what finished). Returns (states, ablation.json)."""
    from .report import render

    directory = Path(directory)
    if (directory / "plan.json").is_file() and Plan.load(directory) != plan:
        notice(f"{directory}: the plan changed since the last session; finished runs of the earlier plan that do "
               f"not match it are moved aside to {directory / 'superseded'}, not deleted")
    plan.save(directory)
    specs = run_specs(plan, directory, nproc)
    started = time.time()
    states: list[RunState] = [RunState(s) for s in specs]

    def track(current: list[RunState]) -> None:
        states[:] = current
        on_change(current)

    try:
        execute(specs, directory, launcher, track, notice=notice)
    finally:
        counts = {k: sum(s.status == k for s in states) for k in ("done", "reused", "failed", "interrupted", "skipped")}
        session = {"started": started, "wall_seconds": time.time() - started, "executed": counts["done"] + counts["failed"],
                   **counts, "runs": {f"{s.spec.variant.name}/seed-{s.spec.seed}": s.status for s in states}}
        with open(directory / "sessions.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(session) + "\n")
        data = render(directory)
    return states, data
