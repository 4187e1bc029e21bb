"""One run end to end, as separate steps: train -> export -> round trip -> score -> audit.

Every val_bpb this module reports is measured on the model loaded from the artifact bytes
(quantize -> compress -> decompress -> load), on the data named in the result, with the
compliance record beside it. The run directory is claimed as `<name>-<timestamp>.incomplete`
(created atomically and locked by this process, never reusing what exists) and renamed only
when result.json is complete, so a crashed run never looks finished; a run whose score failed
a legality check is renamed `<name>-<timestamp>.invalid` instead, its result.json saying why
(docs/compliance.md). `Session` holds what a run, a re-score or a benchmark shares (recipe,
plugins, devices, data); `Scorer` scores a model as the run does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import sentencepiece as spm
import torch
from torch import nn

from . import audit, guard, hookspecs
from .artifact import Int8Quantizer, ZstdCompressor, group_bytes, pack, project, report, unpack
from .bundle import Bundle
from .calibration import calibrate
from .config import RunConfig
from .contract import EvalContext
from .checkpoint import DIR_NAME as CHECKPOINT_DIR
from .checkpoint import Checkpoints
from .data import Corpus, DistributedTokenLoader, SpecialTokens, load_val_bytes, load_val_tokens, resolve_corpus
from .errors import ComplianceError, ConfigError, DataError, DivergedError, GolfError, TrainingInterrupted
from .eval import ByteLUTs, EvalResult, build_byte_luts, evaluate, unigram_entropy_bpb
from .assemble import build_model, check_config
from .files import write_atomic
from .memory import check_fits
from .model import GPT, count_parameters
from .params import param_specs
from .plugins import Host, PluginInfo
from .result import RunResult
from .train import Dist, StopSignals, Trainer, activation_dtype_for, autocast_for, setup_dist, should_compile

ARTIFACT_NAME = "model.golf"
RECIPE_NAME = "recipe.toml"
RESULT_NAME = "result.json"
LOCK_NAME = ".lock"  # holds the claiming process's id while a run directory is being written
INCOMPLETE_SUFFIX = ".incomplete"
INVALID_SUFFIX = ".invalid"  # a finished run whose score is not a legal one


class RunLog:
    """The run's log (challenge line format), metrics.jsonl and console echo, on rank 0.

    `listeners` receive every metrics record as it is written (the CLI's trackers,
    golf_tools.trackers); the records are documented in docs/reports.md."""

    def __init__(self, directory: Path | None, echo: Callable[[str], None], listeners: list[Callable[[dict], None]] = ()):
        self.directory = directory
        self.echo = echo
        self.listeners = list(listeners)
        self._log = open(directory / "log.txt", "a", encoding="utf-8") if directory else None
        self._metrics = open(directory / "metrics.jsonl", "a", encoding="utf-8") if directory else None

    def line(self, text: str) -> None:
        self.echo(text)
        if self._log:
            self._log.write(text + "\n")
            self._log.flush()

    def record(self, record: dict) -> None:
        if self._metrics:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        for listener in self.listeners:
            listener(record)
        event = record.get("event")
        if event == "train":
            self.line(
                f"step:{record['step']}/{record['of']} train_loss:{record['train_loss']:.4f} "
                f"train_time:{record['train_time_ms']:.0f}ms step_avg:{record['step_avg_ms']:.2f}ms"
            )
        elif event == "note":
            self.line(record["text"])
        elif event == "checkpoint":
            self.line(f"step:{record['step']}/{record['of']} checkpoint:{record['path']}")
        elif event == "switch":
            self.line(f"step:{record['step']} switch:{record['name']}={record['value']}")
        elif event == "val":  # live weights, before export: a loss, never presented as a score
            self.line(
                f"step:{record['step']}/{record['of']} val_loss:{record['val_loss']:.4f} "
                f"train_time:{record['train_time_ms']:.0f}ms step_avg:{record['step_avg_ms']:.2f}ms (live weights, pre-export)"
            )

    def close(self) -> None:
        for f in (self._log, self._metrics):
            if f:
                f.close()


# ----------------------------------------------------------------------------- the run directory

_held_locks: dict[Path, int] = {}  # run directory -> locked file descriptor, for this process's lifetime


def _new_run_dir(config: RunConfig, requested: Path | None = None) -> Path:
    """`<out_dir>/<name>-<timestamp>.incomplete`, or `requested`.incomplete when a path is given."""
    if requested is not None:
        return claim_run_dir(Path(requested))
    parent = Path(config.run.out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{config.run.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    for i in range(1000):
        name = base if i == 0 else f"{base}-{i + 1}"
        if not any((parent / f"{name}{suffix}").exists() for suffix in ("", INVALID_SUFFIX)):
            try:
                return _claim(parent / f"{name}{INCOMPLETE_SUFFIX}")
            except FileExistsError:
                continue
    raise GolfError(f"{parent}: cannot find a free run directory name for {base}")


def claim_run_dir(final: Path) -> Path:
    """`final`.incomplete, created by this process and locked; refused (naming who holds it) when
    `final`, its `.invalid` form or `final`.incomplete exists: nothing there is ever removed."""
    for taken in (final, final.with_name(final.name + INVALID_SUFFIX)):
        if taken.exists():
            raise GolfError(f"{taken}: run directory already exists")
    partial = final.with_name(final.name + INCOMPLETE_SUFFIX)
    try:
        return _claim(partial)
    except FileExistsError:
        raise GolfError(f"{partial}: {_holder(partial)}") from None


def _claim(partial: Path) -> Path:
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.mkdir()  # atomic: of two processes, exactly one creates it
    _lock(partial)
    return partial


def _lock(run_dir: Path) -> None:
    """Hold an exclusive lock on run_dir/.lock (released when this process ends, however it ends)."""
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GolfError(f"{run_dir}: {_holder(run_dir)}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {dt.datetime.now():%Y-%m-%d %H:%M:%S}".encode())
    _held_locks[run_dir] = fd


def _holder(run_dir: Path) -> str:
    """Who holds a run directory this process could not claim, in words."""
    lock = run_dir / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        fd = None
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"in use by another golf process ({lock.read_text(encoding='utf-8', errors='replace')})"
        finally:
            os.close(fd)
    if (run_dir / RECIPE_NAME).is_file() and run_dir.name.endswith(INCOMPLETE_SUFFIX):
        return f"left by an interrupted run; continue it with golf run --resume {run_dir}, or remove it yourself"
    return "already exists; remove it yourself or choose another directory"


def _resumable_dir(run_dir: Path, lock: bool) -> Path:
    if not run_dir.name.endswith(INCOMPLETE_SUFFIX) or not (run_dir / RECIPE_NAME).is_file():
        raise GolfError(f"{run_dir}: not an interrupted run directory (needs the {INCOMPLETE_SUFFIX} suffix and {RECIPE_NAME})")
    if lock:
        _lock(run_dir)
    return run_dir


def _finish(run_dir: Path, result: RunResult) -> Path:
    """Write result.json and drop the `.incomplete` suffix: the run is over, whatever its status;
    a score that failed a legality check is kept under `.invalid`."""
    invalid = result.status != "diverged" and not result.legal
    final_dir = run_dir.with_name(run_dir.name.removesuffix(INCOMPLETE_SUFFIX) + (INVALID_SUFFIX if invalid else ""))
    result.run_dir = str(final_dir)
    result.write(run_dir / RESULT_NAME)
    (run_dir / LOCK_NAME).unlink(missing_ok=True)
    run_dir.rename(final_dir)
    os.close(_held_locks.pop(run_dir))
    return final_dir


def _write(path: Path, data: bytes) -> None:
    """Write a run file atomically; a full disk or a read-only folder stops the run in one line."""
    try:
        write_atomic(path, data)
    except OSError as e:
        raise GolfError(f"cannot write {path}: {e.strerror or e}") from None


def recipe_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def finished_run(run_dir: Path, needs_artifact: bool = True) -> RunResult:
    """The result of a finished run directory whose recipe.toml is still the recipe it ran: where
    `golf eval`, `golf audit` and `golf export` start. An unfinished run has no score to re-check;
    an edited recipe would score a model the run never was (give changes as --set instead)."""
    run_dir = Path(run_dir)
    if run_dir.name.endswith(INCOMPLETE_SUFFIX):
        raise GolfError(f"{run_dir}: an unfinished run ({INCOMPLETE_SUFFIX}) has no score to check; "
                        f"continue it with golf run --resume {run_dir}")
    needed = [RECIPE_NAME, RESULT_NAME, *([ARTIFACT_NAME] if needs_artifact else [])]
    if not run_dir.is_dir() or not all((run_dir / name).is_file() for name in needed):
        raise GolfError(f"{run_dir}: not a finished run directory (needs {', '.join(needed)})")
    result = RunResult.read(run_dir / RESULT_NAME)
    text = (run_dir / RECIPE_NAME).read_text(encoding="utf-8")
    if result.recipe_sha256 is not None and recipe_sha256(text) != result.recipe_sha256:
        raise GolfError(f"{run_dir / RECIPE_NAME}: edited after the run (its sha256 differs from {RESULT_NAME}'s "
                        f"recipe_sha256): restore it, and give a change as --set section.key=value")
    return result


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("golf", "numpy", "pluggy", "sentencepiece", "zstandard", "safetensors", "brotli"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------- what every step shares


class Session:
    """What a run, a re-score or a benchmark shares: the recipe, its plugins (the host), the
    devices, the export codec, the data and its tokenizer, and building a model from them."""

    def __init__(self, config: RunConfig, available: dict[str, PluginInfo], dist: Dist | None = None, build_data: bool = True,
                 trace_hooks: Callable[[str], None] | None = None):
        self.config = config
        self.available = available
        self.dist = dist or setup_dist(config.train.device)
        self.host = Host(config, available, trace=trace_hooks)
        check_config(config, self.host)
        self.quantizer = self.host.first("golf_quantizer", config=config) or Int8Quantizer(config.export.float_max_numel)
        self.compressor = self.host.first("golf_compressor", config=config) or ZstdCompressor(config.export.zstd_level)
        self.corpus: Corpus | None = None
        self._val_bytes: torch.Tensor | None = None
        self.watch: guard.Watch | None = None  # plugin code's file and network use (golfcore.guard)
        if build_data:
            self.corpus = self._corpus()
            self.tokenizer = _load_tokenizer(self.corpus)
            config.tokens = SpecialTokens.of(self.tokenizer)  # before any plugin builds a module
            self._val_bytes = load_val_bytes(self.corpus, config.data.max_val_tokens)
            self.watch = guard.Watch(guard.protected_files(self.corpus.val_files),
                                     guard.plugin_files((n, available[n].module) for n in config.plugins))

    def _corpus(self) -> Corpus:
        # the CLI has rank 0 build a missing embedded corpus before the session starts
        # (golf_tools.corpora.ensure_corpus); the barrier lets it finish before any rank resolves
        self.dist.barrier()
        corpus = resolve_corpus(self.config.data)
        if corpus.vocab_size != self.config.model.vocab_size:
            raise ConfigError(
                f"{self.config.source}: [model] vocab_size {self.config.model.vocab_size} does not match "
                f"the {corpus.name} tokenizer's {corpus.vocab_size} pieces ({corpus.tokenizer_path}; set model.vocab_size = {corpus.vocab_size})"
            )
        return corpus

    def build_model(self) -> GPT:
        model = build_model(self.config, self.host, self.quantizer).to(self.dist.device)
        model.activation_dtype = activation_dtype_for(self.config, self.dist.device)
        return model

    def unpack(self, blob: bytes) -> dict[str, torch.Tensor]:
        return unpack(blob, {self.quantizer.name: self.quantizer}, {self.compressor.name: self.compressor})

    def plugin_modules(self) -> list:
        return [self.available[name].module for name in self.config.plugins]

    def load_artifact(self, blob: bytes, state: dict | None = None) -> GPT:
        """A fresh model whose weights come only from the artifact bytes (`state`: already unpacked)."""
        model = self.build_model()
        state = state or self.unpack(blob)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
        if missing or unexpected or resized:
            differences = [f"{what} {names[:3]}" for what, names in
                           (("missing", missing), ("unexpected", unexpected), ("shapes (artifact vs model)", resized)) if names]
            raise GolfError(f"artifact does not match the recipe's model ([model] or a model plugin changed): {'; '.join(differences)}")
        model.load_state_dict(state, strict=False)
        return model

    def data_label(self, targets: int) -> str:
        bytes_from = "; bytes from the sidecar" if self.corpus.val_bytes_files else ""
        return f"{self.corpus.name}/val[{targets} targets{bytes_from}]"

    def token_bytes(self, val_tokens: torch.Tensor) -> torch.Tensor | None:
        """The byte sidecar's counts for a scored stream: the validation split's prefix, or (the
        probes) a stream of the same length whose scores are compared, not charged. None when
        the corpus has no sidecar."""
        if self._val_bytes is None:
            return None
        return self._val_bytes[: val_tokens.numel()]


def _load_tokenizer(corpus: Corpus) -> spm.SentencePieceProcessor:
    """The corpus's tokenizer, checked against the sha256 its meta.json recorded (when it did), so
    a damaged file is named before training rather than failing, or mis-scoring, after it."""
    path = corpus.tokenizer_path
    expected = corpus.fingerprint.get("tokenizer_sha256")
    if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise DataError(f"tokenizer {path} is damaged: its sha256 differs from {corpus.directory / 'meta.json'}; rebuild or fetch the corpus again")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"tokenizer {path} cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        f"rebuild or fetch the corpus again") from None


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """Scores a model on validation tokens as the run does: compiled log-probabilities at static
    shapes, the tokenizer's byte counts, the eval adapters started before the clock."""

    def __init__(self, session: Session):
        self.session = session
        self._luts: ByteLUTs | None = None

    def logprob_fn(self, model: nn.Module) -> Callable[..., torch.Tensor]:
        """(inputs [B,T], width, at [B] or None) -> log-probabilities [B,width,V] float32 (GPT.logprobs),
        compiled once per static shape when the run compiles (golfcore.eval pads every batch to a few shapes)."""
        device = self.session.dist.device
        compiled = should_compile(self.session.config, device)
        forward = torch.compile(model.logprobs, fullgraph=True, dynamic=False) if compiled else model.logprobs

        def fn(tokens: torch.Tensor, width: int, at: torch.Tensor | None = None) -> torch.Tensor:
            with autocast_for(device, model.activation_dtype):
                return forward(tokens, width, at).float()

        return fn

    def luts(self) -> ByteLUTs:
        if self._luts is None:
            self._luts = build_byte_luts(self.session.tokenizer, self.session.config.model.vocab_size).to(self.session.dist.device)
        return self._luts

    def score(self, model: nn.Module, val_tokens: torch.Tensor, adapters: list = (), stride: int | None = None,
              progress: Callable[[int, int], None] | None = None, batch_seqs: int | None = None,
              chunk_tokens: int | None = None, record: Callable | None = None, probe=None) -> EvalResult:
        """Score `val_tokens` as the run does; the probes override batch_seqs / chunk_tokens and record
        (`probe`: golfcore.audit.PassProbe, checking units of this pass)."""
        config, dist = self.session.config, self.session.dist
        luts = self.luts()
        model.eval()
        chunk_tokens = chunk_tokens or config.eval.chunk_tokens
        ctx = EvalContext(
            vocab_size=config.model.vocab_size, num_targets=val_tokens.numel() - 1,
            chunk_tokens=chunk_tokens, seq_len=config.eval_seq_len,
            rank=dist.rank, world_size=dist.world_size, device=dist.device,
            compile=should_compile(config, dist.device), autocast=lambda: autocast_for(dist.device, model.activation_dtype),
        )
        t0 = time.perf_counter()
        for adapter in adapters:
            adapter.start(model, ctx)  # compiling adapters warm up here, before the clock starts
        started = time.perf_counter() - t0
        result = evaluate(
            self.logprob_fn(model), val_tokens.to(dist.device), luts,
            seq_len=config.eval_seq_len, stride=stride or config.eval_stride,
            batch_seqs=batch_seqs or config.eval.batch_seqs, adapters=list(adapters), chunk_tokens=chunk_tokens,
            rank=dist.rank, world_size=dist.world_size, static=ctx.compile, progress=progress, record=record,
            token_bytes=self.session.token_bytes(val_tokens), probe=probe, bos_id=config.tokens.bos_id,
        )
        result.warmup_seconds += started
        return result


def score_stages(scorer: Scorer, blob: bytes, val_tokens: torch.Tensor, log: RunLog,
                 progress_factory: Callable[[str, int], Callable[[int, int], None]]) -> dict[str, dict]:
    """Score the artifact: with eval.adapter_prefixes, plainly and then with each prefix of
    the eval adapters (roundtrip, roundtrip+a1, roundtrip+a1+a2, ...: each one's gain
    visible, for ablations); otherwise only the final stage, with every adapter, which is
    what a submission runs and what the eval time budget measures. Every stage loads its
    own model from the artifact bytes, since adapters such as TTT change the weights they
    are given; it is compiled and warmed up before the stage's clock starts. A stage that
    breaks a checked condition (C2, C4) is kept with `"legal": false` and its error; the
    stages after it, which add to it, are not scored."""
    session = scorer.session
    config, host = session.config, session.host
    names = [a.name for a in host.collect("golf_eval_adapter", config=config)]
    counts = range(len(names) + 1) if config.eval.adapter_prefixes else [len(names)]
    targets = val_tokens.numel() - 1
    stages: dict[str, dict] = {}
    for count in counts:
        stage = "+".join(["roundtrip", *names[:count]])
        t_load = time.perf_counter()
        model = session.load_artifact(blob)  # decompress and dequantize: part of the stage's warm-up, in its budget
        load_seconds = time.perf_counter() - t_load
        host.call("golf_before_eval", model=model, config=config)
        adapters = host.collect("golf_eval_adapter", config=config)[:count]
        probe = audit.PassProbe(ScoringPath(scorer, blob), config.eval.probe_share, config.eval.probe_units) \
            if count == counts[-1] else None  # the final stage, the score of record
        t0 = time.perf_counter()
        try:
            result = scorer.score(model, val_tokens, adapters, progress=progress_factory(stage, targets), probe=probe)
        except ComplianceError as e:
            stages[stage] = {"val_bpb": None, "val_loss": None, "eval_seconds": time.perf_counter() - t0,
                             "warmup_seconds": 0.0, "legal": False, "error": str(e), "condition": e.condition,
                             "culprit": e.culprit}
            log.line(f"final stage:{stage} NOT SCORED: {e}")
            break
        stages[stage] = {
            "val_bpb": result.val_bpb, "val_loss": result.val_loss, "eval_seconds": result.seconds,
            "warmup_seconds": result.warmup_seconds + load_seconds, "load_seconds": load_seconds,
            "phase_seconds": result.phase_seconds,
            "targets": result.targets, "bytes": result.bytes, "checks": result.checks, "legal": True,
        }
        if probe is not None:
            stages[stage]["probes_in_pass"] = probe.record(result.seconds, result.checks["probe_seconds"])
        phases = " ".join(f"{k}:{v * 1000:.0f}ms" for k, v in result.phase_seconds.items())
        log.line(
            f"final stage:{stage} val_loss:{result.val_loss:.6f} val_bpb:{result.val_bpb:.6f} "
            f"eval_time:{result.seconds * 1000:.0f}ms ({phases}) warmup:{(result.warmup_seconds + load_seconds) * 1000:.0f}ms "
            f"(artifact load {load_seconds * 1000:.0f}ms) "
            f"data:{session.data_label(targets)}"
        )
    return stages


def check_compliance(scorer: Scorer, blob: bytes, val_tokens: torch.Tensor, stages: dict, art, log: RunLog,
                     train_seconds: float | None = None, train_steps: int = 0) -> dict:
    """Probe the scoring path, build the compliance record, mark the stages' legality and log it."""
    session = scorer.session
    path = ScoringPath(scorer, blob)
    probes = audit.run_probes(path, val_tokens, session.config.run.seed)
    watch = session.watch
    if watch is not None and path.reduce_max(float(len(watch.violations))) and not watch.violations:
        watch.violations.append(("", "opened validation data or the network (see that rank's output)"))
    config = session.config
    rulings = {
        "calibration": audit.calibration_entry(session.quantizer) if train_seconds is not None else
                       {"status": audit.NOT_CHECKED, "note": "no export here (a re-score); see the run's own result.json"},
        "ngram_channels": audit.ngram_entry(session.host.collect("golf_eval_adapter", config=config)),
        "closed_techniques": audit.closed_entry(session.host.plugins),
        "files_and_network": audit.files_entry(watch),
        "train_val_overlap": audit.overlap_entry(Path(config.data.root), session.corpus.fingerprint),
    }
    record = audit.compliance_record(session.config, stages, probes, art, train_seconds, train_steps,
                                     audit.hardware(session.dist.device, session.dist.world_size), rulings)
    record["data"] = session.corpus.record()  # what was scored, and where its bytes came from
    legal = not audit.violations(record)
    for stage in stages.values():
        stage["legal"] = stage["legal"] and legal
    probe_seconds = sum(probes[k].get("seconds", 0.0) for k in ("c1_causal", "c3_score_before_update"))
    log.line(f"compliance: {audit.summary(record)} probes:{probe_seconds * 1000:.0f}ms")
    for problem in audit.violations(record):
        log.line(f"NOT A LEGAL SCORE: {problem}")
    if record["closed_techniques"]["status"] == audit.CLOSED:
        log.line(f"NOT RECORD-ELIGIBLE: {record['closed_techniques']['message']}")
    return record


def timed_eval_seconds(stages: dict) -> float:
    """What the eval time budget measures: the final stage, its warm-up included."""
    final = list(stages.values())[-1]
    return final["eval_seconds"] + final["warmup_seconds"]


def _interruptible(progress_factory: Callable, where: str) -> Callable:
    """`progress_factory` whose scoring callbacks stop on SIGTERM/SIGINT (exit 75, `where` said);
    training's own callback is left alone: the trainer stops at a step boundary itself."""
    def factory(stage: str, total: int):
        report = progress_factory(stage, total)
        if stage == "train":
            return report

        def progress(done: int, of: int) -> None:
            StopSignals.raise_if_received(f"while scoring stage {stage} {where}")
            if report:
                report(done, of)
        return progress
    return factory


def _implementers(host: Host, hooks: tuple[str, ...]) -> list[str]:
    """The enabled plugins (recipe order) implementing any of `hooks`."""
    names = {impl.plugin_name for hook in hooks for impl in getattr(host.pm.hook, hook).get_hookimpls()}
    return [name for name in host.plugins if name in names][::-1]


class ScoringPath:
    """A run's scoring path as golfcore.audit re-runs it: a model loaded from the artifact bytes
    (or, without an artifact, freshly built), golf_before_eval, fresh eval adapters started with
    the run's EvalContext, and Scorer.score's windows, chunks and batches."""

    def __init__(self, scorer: Scorer, blob: bytes | None):
        session = scorer.session
        config, host = session.config, session.host
        self.scorer, self.session, self.blob = scorer, session, blob
        adapters = host.collect("golf_eval_adapter", config=config)
        self.adapter_names = [a.name for a in adapters]
        self.documents = next((a.documents for a in adapters if getattr(a, "documents", None) is not None), None)
        self.model_plugins = _implementers(host, hookspecs.hooks_in("build"))
        self.before_eval_plugins = _implementers(host, ("golf_before_eval",))
        self.document_aware = [name for name, plugin in host.plugins.items() if plugin.document_aware][::-1]
        self.seq_len, self.stride = config.eval_seq_len, config.eval_stride
        self.batch_seqs, self.chunk_tokens = config.eval.batch_seqs, config.eval.chunk_tokens
        self.vocab_size = config.model.vocab_size
        self.logit_bound = config.model.logit_softcap
        self.bos_id = config.tokens.bos_id
        self.device = session.dist.device
        self.source = "artifact" if blob is not None else "random-init"

    @functools.cached_property
    def state(self) -> dict | None:
        return self.session.unpack(self.blob) if self.blob is not None else None  # unpacked once for every probe

    def model(self, variant: audit.Variant) -> nn.Module:
        if self.blob is not None and not variant.random_init:
            return self.session.load_artifact(self.blob, self.state)
        session = self.session
        if variant.drop_plugin is not None:
            config = dataclasses.replace(session.config, plugins={
                name: cfg for name, cfg in session.config.plugins.items() if name != variant.drop_plugin})
            session = Session(config, session.available, session.dist, build_data=False)
        return random_init(session.build_model(), session.config.run.seed)

    def score(self, tokens: torch.Tensor, variant: audit.Variant, record) -> None:
        config, host = self.session.config, self.session.host
        model = self.model(variant)
        if variant.before_eval:
            host.call("golf_before_eval", model=model, config=config)
        adapters = host.collect("golf_eval_adapter", config=config)[: variant.adapters]
        if variant.document_probe:
            silence_blocks(model)
            owners = {type(plugin).__module__: name for name, plugin in host.plugins.items()}
            adapters = [a for a in adapters if owners.get(type(a).__module__) in self.document_aware]
        self.scorer.score(model, tokens, adapters, batch_seqs=variant.batch_seqs,
                           chunk_tokens=variant.chunk_tokens, record=record)

    def reduce_max(self, value: float) -> float:
        if self.session.dist.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)


def random_init(model: nn.Module, seed: int) -> nn.Module:
    """Give every all-zero float parameter (output projections, hash tables) small random values,
    so each path from the input to the logits carries signal a probe can see."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model


def silence_blocks(model: nn.Module) -> None:
    """Zero every block's attention and MLP output scales: the model becomes position-wise apart
    from its embedding plugins (the document-boundary probe, golfcore.audit)."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn_scale.zero_()
            block.mlp_scale.zero_()


# ----------------------------------------------------------------------------- the run, step by step


def run(config: RunConfig, available: dict[str, PluginInfo], recipe_text: str,
        echo: Callable[[str], None] = print, progress_factory=None, trace_hooks: bool = False,
        run_dir: Path | None = None, resume_dir: Path | None = None,
        listeners: list[Callable[[dict], None]] = ()) -> tuple[Path | None, RunResult]:
    """Train, export, round-trip and score one recipe; returns (run directory, result) on rank 0.

    The run lands in `run_dir` when given, else in a new `<out_dir>/<name>-<timestamp>`. With
    `resume_dir` (an interrupted run's `.incomplete` directory, whose recipe `config` was
    loaded from) training continues from its checkpoint, or from step 0 when it has none.
    A diverged run raises DivergedError after writing result.json with status "diverged"; an
    interrupted one (SIGTERM/SIGINT from the compile warm-up to the last score) raises
    TrainingInterrupted and stays `.incomplete`, ready to resume. With `trace_hooks`, every
    hook call is echoed with the plugins that answered it. `listeners` receive rank 0's metrics
    records (RunLog)."""
    with StopSignals():
        session = Session(config, available, trace_hooks=echo if trace_hooks else None)
        dist = session.dist
        if resume_dir is not None:
            run_dir = _resumable_dir(Path(resume_dir), lock=dist.is_main)
            recipe_text = (run_dir / RECIPE_NAME).read_text(encoding="utf-8")  # the recipe the run started with
        else:
            run_dir = _new_run_dir(config, run_dir) if dist.is_main else None
        log = RunLog(run_dir if dist.is_main else None, echo if dist.is_main else (lambda _: None),
                     listeners if dist.is_main else ())
        progress_factory = _interruptible(progress_factory or (lambda stage, total: None), "after training")
        try:
            if run_dir and resume_dir is None:
                _write(run_dir / RECIPE_NAME, recipe_text.encode("utf-8"))
                source = Path(config.source)
                log.record({"event": "start", "recipe": str(source.resolve()) if source.is_file() else config.source,
                            "run_dir": str(run_dir), "time": time.time()})
            code = Bundle.for_run(session.plugin_modules(), recipe_text)
            with guard.watching(session.watch):
                result = _run_steps(session, run_dir, log, progress_factory, code, resuming=resume_dir is not None)
            result.recipe_sha256 = recipe_sha256(recipe_text)
        except DivergedError as e:
            if dist.is_main:
                log.line(f"diverged: {e}")
                record = new_result(session, "diverged", error=str(e), diverged_at_step=e.step,
                                    recipe_sha256=recipe_sha256(recipe_text))
                final_dir = _finish(run_dir, record)
                e.args = (f"{e} (run directory: {final_dir})",)
            dist.barrier()  # rank 0 has written the record before any rank exits
            raise
        except TrainingInterrupted as e:
            if dist.is_main:
                log.line(f"interrupted: {e}")
                e.args = (f"{e}; continue with: golf run --resume {run_dir}",)
            raise
        finally:
            log.close()
    dist.barrier()  # every rank is done reading the run directory (its recipe is code bytes) before it is renamed
    if not dist.is_main:
        return None, result
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # only a run that may continue needs one
    final_dir = _finish(run_dir, result)
    return final_dir, result


def _run_steps(session: Session, run_dir: Path | None, log: RunLog, progress_factory, code: Bundle,
               resuming: bool = False) -> RunResult:
    """train -> export -> round trip -> score -> audit; `progress_factory(stage, total)` gives a
    (done, total) callback per phase; `code` is the run's train_gpt.py, whose bytes are the code bytes."""
    config = session.config
    scorer = Scorer(session)
    check_fits(config, session.dist.world_size, session.dist.device)
    model = session.build_model()
    val_tokens = load_val_tokens(session.corpus, config.data.max_val_tokens)
    log.line(
        f"model_params:{count_parameters(model)} world_size:{session.dist.world_size} device:{session.dist.device} "
        f"plugins:{','.join(config.plugins) or 'none'} corpus:{session.corpus.name} val_targets:{val_tokens.numel() - 1}"
    )
    projection = _project_artifact(session, model, code, log)
    outcome = train(session, scorer, model, val_tokens, run_dir, log, progress_factory, code, resuming)
    pre_export = scorer.score(model, val_tokens, stride=config.eval_seq_len)
    blob, art = export(session, model, code, run_dir, log)
    StopSignals.raise_if_received("after training, before scoring")
    # quantization damage on like-for-like windows (non-overlapping), whatever the final stride
    roundtrip = scorer.score(session.load_artifact(blob), val_tokens, stride=config.eval_seq_len)
    stages = score_stages(scorer, blob, val_tokens, log, progress_factory)
    compliance = check_compliance(scorer, blob, val_tokens, stages, art, log, outcome.train_seconds, outcome.steps)
    return new_result(
        session, "finished", stages=stages, compliance=compliance, val_tokens=val_tokens, scorer=scorer,
        pre_export_val_loss=pre_export.val_loss,
        quantization_damage_nats=roundtrip.val_loss - pre_export.val_loss,
        damage_windows=f"non-overlapping, seq_len {config.eval_seq_len}",
        steps=outcome.steps, resumed_from_step=outcome.resumed_from, tokens=outcome.tokens,
        stopped_by=outcome.stopped_by, train_seconds=outcome.train_seconds, execution=outcome.execution,
        model_params=count_parameters(model),
        artifact={**_artifact_record(session, art, code),
                  "precision_bytes": projection.precision_bytes,
                  "compression_ratio": art.model_bytes / projection.precision_bytes,
                  "projected_model_bytes": projection.model_bytes, "projected_total_bytes": projection.total_bytes,
                  "calibration": dataclasses.asdict(outcome.calibration) if outcome.calibration else None},
        code_sha256=code.sha256,
    )


def _project_artifact(session: Session, model: GPT, code: Bundle, log: RunLog):
    """The artifact's projected size before training, with a warning when it will not fit."""
    config = session.config
    projection = project(model, session.quantizer, config.export.float_max_numel, code.code_bytes, config.export.budget_bytes)
    log.line(f"projected artifact: model {projection.model_bytes} + code {code.code_bytes} = {projection.total_bytes} bytes "
             f"(from the tensor shapes and the {session.quantizer.name} grid, margin included)")
    if not projection.fits:
        log.line(f"WARNING: projected artifact {projection.total_bytes} bytes exceeds the {projection.budget_bytes}-byte budget")
    return projection


def train(session: Session, scorer: Scorer, model: GPT, val_tokens: torch.Tensor, run_dir: Path | None, log: RunLog,
          progress_factory, code: Bundle, resuming: bool = False):
    """Train `model` in place, from the run directory's checkpoint when there is one."""
    config, dist = session.config, session.dist

    def validate(m: nn.Module) -> float:
        return scorer.score(m, val_tokens, stride=config.eval_seq_len).val_loss

    loader = DistributedTokenLoader(session.corpus.train_files, dist.rank, dist.world_size, dist.device,
                                    session.corpus.vocab_size)
    checkpoints = Checkpoints(run_dir, config, code.modules_sha256()) if run_dir else None
    trainer = Trainer(_reserve_calibration(config, session.quantizer), model, session.host, session.quantizer, loader, dist,
                      validate, log.record,
                      progress=progress_factory("train", config.train.iterations), checkpoints=checkpoints)
    log.line("execution: " + " ".join(f"{k}:{v}" for k, v in trainer.execution.items()))
    resume = checkpoints.load(dist.device) if checkpoints and checkpoints.exists() else None
    if resuming and resume is None:
        log.line("resuming: no checkpoint, training from step 0")
    elif resume is not None:
        log.line(f"resuming from the checkpoint at step {resume['step']}")
    outcome = trainer.run(resume)
    log.line(f"stopped_by:{outcome.stopped_by} steps:{outcome.steps} train_time:{outcome.train_seconds * 1000:.0f}ms")
    outcome.calibration = calibrate(
        session.quantizer, model, lambda: loader.next_batch(config.train.batch_tokens, config.train.seq_len, trainer.accum)[0],
        lambda x: _eager_logits(model, x, dist.device), _sum_across_ranks if dist.world_size > 1 else None)
    if outcome.calibration is not None:  # inside the training clock: the quantizer's reserve kept time for it
        cal = outcome.calibration
        outcome.train_seconds += cal.seconds
        log.line(f"calibration: {cal.batches} training batches ({cal.tokens} tokens, after the last step) for {cal.weights} "
                 f"weights in {cal.seconds * 1000:.0f}ms; train_time:{outcome.train_seconds * 1000:.0f}ms")
    return outcome


def _reserve_calibration(config: RunConfig, quantizer) -> RunConfig:
    """The recipe the trainer runs: its wallclock cap less the quantizer's calibration reserve."""
    reserve = getattr(quantizer, "calibration_reserve_seconds", 0.0) if getattr(quantizer, "calibration_batches", 0) else 0.0
    if config.train.max_wallclock_seconds <= 0 or reserve <= 0:
        return config
    cap = max(config.train.max_wallclock_seconds - reserve, 0.0)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, max_wallclock_seconds=cap))


def _sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(t)
    return t


def _eager_logits(model: GPT, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    with autocast_for(device, model.activation_dtype):
        return model.logits(tokens)


def export(session: Session, model: GPT, code: Bundle, run_dir: Path | None, log: RunLog):
    """Quantize and compress the trained weights into the artifact (written as model.golf); returns (bytes, report)."""
    config = session.config
    blob = pack(model.state_dict(), param_specs(model), session.quantizer, session.compressor, config.export.smallest_layout)
    art = report(blob, code.code_bytes, config.export.budget_bytes, group_bytes(blob, session.compressor))
    if run_dir:
        _write(run_dir / ARTIFACT_NAME, blob)
    if getattr(session.compressor, "report", ""):
        log.line(session.compressor.report)
    log.line(
        f"artifact: model {art.model_bytes} + code {art.code_bytes} = {art.total_bytes} bytes "
        f"(budget {art.budget_bytes}: {'OK' if art.within_budget else 'OVER BUDGET'})"
    )
    for g in art.groups:
        log.line(f"artifact group:{g.group} params:{g.params} schemes:{','.join(g.schemes)} "
                 f"stored:{g.stored_bytes} compressed_alone:{g.compressed_bytes}")
    if not art.within_budget:
        log.line(f"WARNING: artifact is {art.total_bytes - art.budget_bytes} bytes over the {art.budget_bytes}-byte budget")
    return blob, art


def _artifact_record(session: Session, art, code: Bundle) -> dict:
    return {"model_bytes": art.model_bytes, "code_bytes": art.code_bytes, "total_bytes": art.total_bytes,
            "budget_bytes": art.budget_bytes, "within_budget": art.within_budget, "code_files": code.code_files(),
            "code_files_raw": code.raw_files(),
            "quantizer": session.quantizer.name, "compressor": session.compressor.name,
            "groups": [dataclasses.asdict(g) for g in art.groups],
            "group_bytes_method": "each group's stored bytes compressed alone by the compressor"}


def new_result(session: Session, status: str, *, stages: dict | None = None, compliance: dict | None = None,
               val_tokens: torch.Tensor | None = None, scorer: Scorer | None = None, **fields) -> RunResult:
    """The one place a RunResult is assembled: the run's identity, and with `stages` its score
    (never an illegal number as the headline), its data and its compliance; `fields` add the
    status's own (training, artifact, error, rescored_from)."""
    config, dist = session.config, session.dist
    score = {}
    if stages is not None:
        problems = audit.violations(compliance)
        final_stage = list(stages)[-1]
        data = {**session.corpus.record(), "split": "val", "targets": val_tokens.numel() - 1,
                "fingerprint": session.corpus.fingerprint}
        if scorer is not None and status == "finished":
            data["unigram_entropy_bpb"] = unigram_entropy_bpb(val_tokens.to(dist.device), scorer.luts(),
                                                              session.token_bytes(val_tokens))
        score = dict(val_bpb=None if problems else stages[final_stage]["val_bpb"], legal=not problems,
                     violations=problems, final_stage=final_stage, stages=stages, compliance=compliance, data=data,
                     eval_seconds=timed_eval_seconds(stages))
    configs = config.to_dict()["plugins"]
    plugins = {name: {"config": configs[name], "source": session.available[name].source,
                      "version": session.available[name].version} for name in config.plugins}
    return RunResult(name=config.run.name, status=status, seed=config.run.seed, world_size=dist.world_size,
                     device=str(dist.device), versions=versions(), git_revision=_git_revision(), config=config.to_dict(),
                     plugins=plugins, **score, **fields)


# ----------------------------------------------------------------------------- re-scoring and auditing


def rescore(run_dir: Path, available: dict[str, PluginInfo], echo: Callable[[str], None] = print,
            progress_factory=None, sets: list[str] = (), with_: list[str] = (), without: list[str] = (),
            out_dir: Path | None = None) -> RunResult:
    """Re-score a finished run's artifact with its resolved recipe (no training).

    Overrides may change what evaluation does (eval adapters, [eval] settings); one that
    changes the model's architecture is refused when the artifact no longer fits it. Each
    override that changes the run's recipe is echoed. With `out_dir`, the re-score is recorded
    as a run directory of its own (recipe.toml, the artifact, log.txt, result.json with a
    run's keys where they mean something, plus `rescored_from`), claimed `.incomplete` like a
    run's. SIGTERM/SIGINT stop it with TrainingInterrupted (exit 75)."""
    from .recipe import changed_keys, dump_toml, load_recipe

    run_dir = Path(run_dir)
    recorded = finished_run(run_dir)
    config = load_recipe(run_dir / RECIPE_NAME, available, sets, with_, without)
    with StopSignals():
        session = Session(config, available)
        for change in changed_keys(recorded.config, config.to_dict()):
            echo(f"override: {change}")
        blob = (run_dir / ARTIFACT_NAME).read_bytes()
        val_tokens = load_val_tokens(session.corpus, config.data.max_val_tokens)
        partial = claim_run_dir(Path(out_dir)) if out_dir is not None and session.dist.is_main else None
        log = RunLog(partial, echo if session.dist.is_main else (lambda _: None))
        where = f"(the re-score in {partial} stays unfinished)" if partial else ""
        log.line(f"re-scoring {run_dir / ARTIFACT_NAME} ({len(blob)} bytes) on {session.data_label(val_tokens.numel() - 1)}")
        try:
            scorer = Scorer(session)
            with guard.watching(session.watch):
                stages = score_stages(scorer, blob, val_tokens, log, _interruptible(progress_factory or (lambda s, t: None), where))
                code = Bundle.for_run(session.plugin_modules(), (run_dir / RECIPE_NAME).read_text(encoding="utf-8"))
                art = report(blob, code.code_bytes, config.export.budget_bytes)
                compliance = check_compliance(scorer, blob, val_tokens, stages, art, log)
        finally:
            log.close()
    result = new_result(session, "rescored", stages=stages, compliance=compliance, val_tokens=val_tokens,
                        rescored_from={"run_dir": str(run_dir), "artifact_sha256": hashlib.sha256(blob).hexdigest()})
    if partial is not None:
        recipe_text = dump_toml(config)
        _write(partial / RECIPE_NAME, recipe_text.encode("utf-8"))
        _write(partial / ARTIFACT_NAME, blob)
        result.recipe_sha256 = recipe_sha256(recipe_text)
        result.code_sha256 = Bundle.for_run(session.plugin_modules(), recipe_text).sha256
        _finish(partial, result)
    return result


def audit_target(target: Path, available: dict[str, PluginInfo], sets: list[str] = (), with_: list[str] = (),
                 without: list[str] = ()) -> tuple[list[dict], str]:
    """`golf audit`: the deeper probes on a finished run (its artifact, recipe and result.json) or
    on a recipe (a freshly built model, random init: nothing is trained). Returns the table rows
    and a one-line description of what was audited."""
    from .recipe import load_recipe

    target = Path(target)
    if target.is_dir():
        result = dataclasses.asdict(finished_run(target))
        config = load_recipe(target / RECIPE_NAME, available, sets, with_, without)
        blob = (target / ARTIFACT_NAME).read_bytes()
    else:
        config = load_recipe(target, available, sets, with_, without)
        blob, result = None, None
    session = Session(config, available)
    val_tokens = load_val_tokens(session.corpus, config.data.max_val_tokens).to(session.dist.device)
    path = ScoringPath(Scorer(session), blob)
    with guard.watching(session.watch):
        rows = audit.deep_audit(path, val_tokens, config.run.seed, result)
    return rows, f"{target} ({audit.describe(path)}; {session.data_label(val_tokens.numel() - 1)})"
