"""A run's result: one typed record, written as the run directory's result.json.

`golf run` fills every field; a diverged run fills its identity and `error` (no score); a
re-score (`golf eval --out`) fills the evaluation fields and `rescored_from`. Readers of
result.json (the ablation runner, `golf audit`) see the same keys as these fields.
Each entry of `stages` is one evaluation stage ("roundtrip", "roundtrip+ttt", ...): val_bpb,
val_loss, eval_seconds (the scoring loop), warmup_seconds (compiling and warming up before
it), phase_seconds (scoring vs each adapter's observe), targets, bytes, the checks measured
while scoring, and `legal`. `eval_seconds` of the result is what the eval time budget
measures: the final stage, warm-up included.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import GolfError
from .files import write_json


@dataclass
class RunResult:
    name: str
    status: Literal["finished", "diverged", "rescored"]
    seed: int
    world_size: int
    device: str
    versions: dict[str, str]
    git_revision: str | None
    config: dict[str, Any]  # the resolved recipe
    run_dir: str | None = None  # set when the directory takes its final name

    # the score: the headline is None whenever a legality check failed (docs/compliance.md)
    val_bpb: float | None = None
    legal: bool = False
    violations: list[str] = field(default_factory=list)
    final_stage: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    compliance: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # corpus, split, targets, fingerprint
    eval_seconds: float = 0.0

    # training
    steps: int = 0
    resumed_from_step: int = 0
    tokens: int = 0
    stopped_by: str | None = None
    train_seconds: float = 0.0
    execution: dict[str, Any] = field(default_factory=dict)  # compiled, dtypes, attention kernel
    pre_export_val_loss: float | None = None
    quantization_damage_nats: float | None = None
    damage_windows: str | None = None
    model_params: int = 0

    # the artifact and what produced it
    artifact: dict[str, Any] = field(default_factory=dict)  # bytes (model, code, total), budget, code files, groups
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> config, source, version
    code_sha256: str | None = None
    recipe_sha256: str | None = None  # of recipe.toml as the run wrote it: golf eval, audit and export refuse an edited one

    error: str | None = None  # why a diverged run stopped
    diverged_at_step: int | None = None
    rescored_from: dict[str, str] | None = None  # the run directory and artifact a re-score read

    def write(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunResult:
        """The result written at `path`; GolfError naming the file when it is not one."""
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise GolfError(f"{path}: not a readable result ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
