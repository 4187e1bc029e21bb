"""One run end to end: build, train, export the artifact, load it back, score it, write the record.

Every val_bpb this module reports is measured on the model loaded from the artifact bytes
(quantize -> compress -> decompress -> load), on the data named in the result, with the
compliance record beside it. The run directory is written as `<name>-<timestamp>.incomplete`
and renamed only when result.json is complete, so a crashed run never looks finished.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

import sentencepiece as spm
import torch
from torch import nn

from . import audit
from .artifact import Int8Quantizer, ZstdCompressor, code_bytes, code_files_for, group_bytes, pack, project, report, unpack
from .config import RunConfig
from .contract import EvalContext
from .data import Corpus, DistributedTokenLoader, load_val_tokens, resolve_corpus
from .errors import ConfigError, GolfError
from .eval import ByteLUTs, EvalResult, build_byte_luts, evaluate, unigram_entropy_bpb
from .assemble import build_model, check_config
from .model import GPT, count_parameters
from .params import param_specs
from .plugins import Host, PluginInfo
from .train import Dist, Trainer, autocast_for, setup_dist, should_compile

ARTIFACT_NAME = "model.golf"
RECIPE_NAME = "recipe.toml"


class RunLog:
    """The run's log (challenge line format), metrics.jsonl and console echo, on rank 0."""

    def __init__(self, directory: Path | None, echo: Callable[[str], None]):
        self.directory = directory
        self.echo = echo
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
        event = record.get("event")
        if event == "train":
            self.line(
                f"step:{record['step']}/{record['of']} train_loss:{record['train_loss']:.4f} "
                f"train_time:{record['train_time_ms']:.0f}ms step_avg:{record['step_avg_ms']:.2f}ms"
            )
        elif event == "val":  # live weights, before export: a loss, never presented as a score
            self.line(
                f"step:{record['step']}/{record['of']} val_loss:{record['val_loss']:.4f} "
                f"train_time:{record['train_time_ms']:.0f}ms step_avg:{record['step_avg_ms']:.2f}ms (live weights, pre-export)"
            )

    def close(self) -> None:
        for f in (self._log, self._metrics):
            if f:
                f.close()


def _new_run_dir(config: RunConfig) -> Path:
    parent = Path(config.run.out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{config.run.name}-{stamp}"
    for i in range(1000):
        name = base if i == 0 else f"{base}-{i + 1}"
        if not (parent / name).exists() and not (parent / f"{name}.incomplete").exists():
            partial = parent / f"{name}.incomplete"
            partial.mkdir()
            return partial
    raise GolfError(f"{parent}: cannot find a free run directory name for {base}")


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
    for dist in ("golf", "pluggy", "sentencepiece", "zstandard", "safetensors"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class Session:
    """Everything a run, a re-score or a benchmark needs before touching weights."""

    def __init__(self, config: RunConfig, available: dict[str, PluginInfo], dist: Dist | None = None, build_data: bool = True):
        self.config = config
        self.available = available
        self.dist = dist or setup_dist(config.train.device)
        self.host = Host(config, available)
        check_config(config, self.host)
        self.quantizer = self.host.first("golf_quantizer", config=config) or Int8Quantizer(config.export.float_max_numel)
        self.compressor = self.host.first("golf_compressor", config=config) or ZstdCompressor(config.export.zstd_level)
        self.corpus: Corpus | None = None
        if build_data:
            self.corpus = self._corpus()

    def _corpus(self) -> Corpus:
        # rank 0 builds a missing embedded corpus; the others wait and then find it built
        if self.dist.is_main:
            corpus = resolve_corpus(self.config.data)
        self.dist.barrier()
        if not self.dist.is_main:
            corpus = resolve_corpus(self.config.data, build_missing=False)
        if corpus.vocab_size > self.config.model.vocab_size:
            raise ConfigError(
                f"{self.config.source}: [model] vocab_size {self.config.model.vocab_size} is smaller than "
                f"the {corpus.name} tokenizer's {corpus.vocab_size} pieces"
            )
        return corpus

    def build_model(self) -> GPT:
        return build_model(self.config, self.host, self.quantizer).to(self.dist.device)

    def plugin_modules(self) -> list:
        return [self.available[name].module for name in self.config.plugins]

    def load_artifact(self, blob: bytes) -> GPT:
        """A fresh model whose weights come only from the artifact bytes."""
        model = self.build_model()
        state = unpack(blob, {self.quantizer.name: self.quantizer}, {self.compressor.name: self.compressor})
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise GolfError(f"artifact does not match the recipe's model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model

    def logprob_fn(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        forward = torch.compile(model.logprobs, fullgraph=True) if should_compile(self.config, self.dist.device) else model.logprobs

        def fn(tokens: torch.Tensor) -> torch.Tensor:
            with autocast_for(self.dist.device):
                return forward(tokens.to(self.dist.device)).float()

        return fn

    def luts(self) -> ByteLUTs:
        sp = spm.SentencePieceProcessor(model_file=str(self.corpus.tokenizer_path))
        return build_byte_luts(sp, self.config.model.vocab_size).to(self.dist.device)

    def score(self, model: nn.Module, val_tokens: torch.Tensor, adapters: list = (), stride: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> EvalResult:
        luts = self.luts()
        model.eval()
        ctx = EvalContext(
            vocab_size=self.config.model.vocab_size, num_targets=val_tokens.numel() - 1,
            chunk_tokens=self.config.eval.chunk_tokens, seq_len=self.config.eval_seq_len,
            rank=self.dist.rank, world_size=self.dist.world_size, device=self.dist.device,
            compile=should_compile(self.config, self.dist.device), autocast=lambda: autocast_for(self.dist.device),
        )
        for adapter in adapters:
            adapter.start(model, ctx)
        return evaluate(
            self.logprob_fn(model), val_tokens.to(self.dist.device), luts,
            seq_len=self.config.eval_seq_len, stride=stride or self.config.eval_stride,
            batch_seqs=self.config.eval.batch_seqs, adapters=list(adapters), chunk_tokens=self.config.eval.chunk_tokens,
            rank=self.dist.rank, world_size=self.dist.world_size, progress=progress,
        )

    def score_stages(self, blob: bytes, val_tokens: torch.Tensor, log: RunLog,
                     progress_factory: Callable[[str, int], Callable[[int, int], None]]) -> dict[str, dict]:
        """Score the artifact plainly, then with each prefix of the eval adapters (roundtrip,
        roundtrip+a1, roundtrip+a1+a2, ...; only the full list when eval.adapter_prefixes is
        off). Every stage loads its own model from the artifact bytes, since adapters such as
        TTT change the weights they are given."""
        names = [a.name for a in self.host.collect("golf_eval_adapter", config=self.config)]
        counts = range(1, len(names) + 1) if self.config.eval.adapter_prefixes else [len(names)] * bool(names)
        targets = val_tokens.numel() - 1
        stages: dict[str, dict] = {}
        for count in [0, *counts]:
            stage = "+".join(["roundtrip", *names[:count]])
            model = self.load_artifact(blob)
            self.host.call("golf_before_eval", model=model, config=self.config)
            adapters = self.host.collect("golf_eval_adapter", config=self.config)[:count]
            result = self.score(model, val_tokens, adapters, progress=progress_factory(stage, targets))
            stages[stage] = {
                "val_bpb": result.val_bpb, "val_loss": result.val_loss, "eval_seconds": result.seconds,
                "targets": result.targets, "bytes": result.bytes, "checks": result.checks,
            }
            log.line(
                f"final stage:{stage} val_loss:{result.val_loss:.6f} val_bpb:{result.val_bpb:.6f} "
                f"eval_time:{result.seconds * 1000:.0f}ms data:{self.data_label(targets)}"
            )
        return stages

    def data_label(self, targets: int) -> str:
        return f"{self.corpus.name}/val[{targets} targets]"


def run(config: RunConfig, available: dict[str, PluginInfo], recipe_text: str,
        echo: Callable[[str], None] = print, progress_factory=None) -> tuple[Path | None, dict]:
    """Train, export, round-trip and score one recipe; returns (run directory, result) on rank 0."""
    progress_factory = progress_factory or (lambda stage, total: None)
    session = Session(config, available)
    dist = session.dist
    run_dir = _new_run_dir(config) if dist.is_main else None
    log = RunLog(run_dir, echo if dist.is_main else (lambda _: None))
    try:
        if run_dir:
            (run_dir / RECIPE_NAME).write_text(recipe_text, encoding="utf-8")
        result = _run_in(session, run_dir, log, progress_factory)
    finally:
        log.close()
    if not dist.is_main:
        return None, result
    final_dir = run_dir.with_name(run_dir.name.removesuffix(".incomplete"))
    result["run_dir"] = str(final_dir)
    _write_json(run_dir / "result.json", result)
    run_dir.rename(final_dir)
    return final_dir, result


def _code_file_label(path: Path, run_dir: Path | None) -> str:
    """A code file as the result names it: relative to its package's parent, or to the run."""
    if run_dir and path.parent == run_dir:
        return path.name
    for parent in path.parents:
        if not (parent / "__init__.py").is_file():
            return str(path.relative_to(parent))
    return str(path)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _run_in(session: Session, run_dir: Path | None, log: RunLog, progress_factory) -> dict:
    """The body of `run`; `progress_factory(stage, total)` gives a (done, total) callback per phase."""
    config, dist, corpus = session.config, session.dist, session.corpus
    model = session.build_model()
    val_tokens = load_val_tokens(corpus, config.data.max_val_tokens)
    targets = val_tokens.numel() - 1
    log.line(
        f"model_params:{count_parameters(model)} world_size:{dist.world_size} device:{dist.device} "
        f"plugins:{','.join(config.plugins) or 'none'} corpus:{corpus.name} val_targets:{targets}"
    )
    code_files = code_files_for(session.plugin_modules(), run_dir / RECIPE_NAME if run_dir else Path(config.source))
    projection = project(model, session.quantizer, config.export.float_max_numel, code_bytes(code_files),
                         config.export.budget_bytes, Path(config.run.out_dir), config.run.name)
    if not projection.fits:
        log.line(
            f"WARNING: projected artifact {projection.total_bytes} bytes exceeds the {projection.budget_bytes}-byte budget "
            f"({projection.precision_bytes} precision bytes x compression ratio {projection.compression_ratio:.3f} "
            f"from {projection.ratio_source}, + code)"
        )

    def validate(m: nn.Module) -> float:
        return session.score(m, val_tokens, stride=config.eval_seq_len).val_loss

    loader = DistributedTokenLoader(corpus.train_files, dist.rank, dist.world_size, dist.device)
    trainer = Trainer(config, model, session.host, session.quantizer, loader, dist, validate, log.record,
                      progress=progress_factory("train", config.train.iterations))
    outcome = trainer.run()
    log.line(f"stopped_by:{outcome.stopped_by} steps:{outcome.steps} train_time:{outcome.train_seconds * 1000:.0f}ms")

    pre_export = session.score(model, val_tokens, stride=config.eval_seq_len)
    blob = pack(model.state_dict(), param_specs(model), session.quantizer, session.compressor, config.export.smallest_layout)
    art = report(blob, code_files, config.export.budget_bytes, group_bytes(blob, session.compressor))
    if run_dir:
        (run_dir / ARTIFACT_NAME).write_bytes(blob)
    log.line(
        f"artifact: model {art.model_bytes} + code {art.code_bytes} = {art.total_bytes} bytes "
        f"(budget {art.budget_bytes}: {'OK' if art.within_budget else 'OVER BUDGET'})"
    )
    for g in art.groups:
        log.line(f"artifact group:{g.group} params:{g.params} schemes:{','.join(g.schemes)} "
                 f"stored:{g.stored_bytes} compressed_alone:{g.compressed_bytes}")
    if not art.within_budget:
        log.line(f"WARNING: artifact is {art.total_bytes - art.budget_bytes} bytes over the {art.budget_bytes}-byte budget")

    # quantization damage on like-for-like windows (non-overlapping), whatever the final stride
    roundtrip_flat = session.score(session.load_artifact(blob), val_tokens, stride=config.eval_seq_len)
    stages = session.score_stages(blob, val_tokens, log, progress_factory)
    final_stage = list(stages)[-1]
    compliance = audit.compliance_record(
        session.logprob_fn(session.load_artifact(blob)), val_tokens, config, stages, art, outcome.train_seconds
    )
    log.line(f"compliance: {audit.summary(compliance)}")
    return {
        "name": config.run.name,
        "val_bpb": stages[final_stage]["val_bpb"],
        "final_stage": final_stage,
        "stages": stages,
        "pre_export_val_loss": pre_export.val_loss,
        "quantization_damage_nats": roundtrip_flat.val_loss - pre_export.val_loss,
        "damage_windows": f"non-overlapping, seq_len {config.eval_seq_len}",
        "data": {"corpus": corpus.name, "split": "val", "targets": targets, "fingerprint": corpus.fingerprint,
                 "unigram_entropy_bpb": unigram_entropy_bpb(val_tokens.to(dist.device), session.luts())},
        "steps": outcome.steps,
        "tokens": outcome.tokens,
        "stopped_by": outcome.stopped_by,
        "train_seconds": outcome.train_seconds,
        "eval_seconds": sum(s["eval_seconds"] for s in stages.values()),
        "model_params": count_parameters(model),
        "artifact": {"model_bytes": art.model_bytes, "code_bytes": art.code_bytes, "total_bytes": art.total_bytes,
                     "budget_bytes": art.budget_bytes, "within_budget": art.within_budget,
                     "code_files": [_code_file_label(Path(f), run_dir) for f in art.code_files],
                     "quantizer": session.quantizer.name, "compressor": session.compressor.name,
                     "groups": [dataclasses.asdict(g) for g in art.groups],
                     "group_bytes_method": "each group's stored bytes compressed alone by the compressor",
                     "precision_bytes": projection.precision_bytes,
                     "compression_ratio": art.model_bytes / projection.precision_bytes,
                     "projected_total_bytes": projection.total_bytes, "projection_ratio_source": projection.ratio_source},
        "plugins": {name: {"config": config.to_dict()["plugins"][name], "source": session.available[name].source,
                           "version": session.available[name].version} for name in config.plugins},
        "seed": config.run.seed,
        "world_size": dist.world_size,
        "device": str(dist.device),
        "versions": versions(),
        "git_revision": _git_revision(),
        "compliance": compliance,
        "config": config.to_dict(),
    }


def rescore(run_dir: Path, available: dict[str, PluginInfo], echo: Callable[[str], None] = print,
            progress_factory=None, sets: list[str] = (), with_: list[str] = (), without: list[str] = ()) -> dict:
    """Re-score a finished run's artifact with its resolved recipe (no training).

    Overrides may change what evaluation does (eval adapters, [eval] settings); one that
    changes the model's architecture is refused when the artifact no longer fits it."""
    from .recipe import load_recipe

    run_dir = Path(run_dir)
    artifact = run_dir / ARTIFACT_NAME
    if not artifact.is_file() or not (run_dir / RECIPE_NAME).is_file():
        raise GolfError(f"{run_dir}: not a finished run directory (needs {ARTIFACT_NAME} and {RECIPE_NAME})")
    config = load_recipe(run_dir / RECIPE_NAME, available, sets, with_, without)
    session = Session(config, available)
    blob = artifact.read_bytes()
    val_tokens = load_val_tokens(session.corpus, config.data.max_val_tokens)
    log = RunLog(None, echo if session.dist.is_main else (lambda _: None))
    stages = session.score_stages(blob, val_tokens, log, progress_factory or (lambda s, t: None))
    return {"run_dir": str(run_dir), "stages": stages, "data": {"corpus": session.corpus.name, "targets": val_tokens.numel() - 1}}
