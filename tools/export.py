"""`golf export RUN_DIR`: a finished, legal run as a challenge records folder.

    <date>_<run name>/
      train_gpt.py       the run's code as one script (golfcore.bundle): its bytes are the code bytes
      submission.json    the challenge's fields, the numbers from result.json
      train_seed<S>.log  the run's log.txt
      requirements.txt   the packages the script imports, at the versions the run recorded
      README.md          recipe, plugins, score and compliance, bytes, how to reproduce

The script is regenerated from today's code, so it must be the code that made the run: its
sha256 must equal the run's recorded `code_sha256`, else the export is refused. The folder is
written under a temporary name and renamed when complete; an existing folder is never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import uuid
from pathlib import Path

from golfcore.audit import summary
from golfcore.bundle import ENCODING_LABEL, SCRIPT_LABEL, SCRIPT_NAME, Bundle
from golfcore.errors import GolfError
from golfcore.plugins import PluginInfo
from golfcore.recipe import load_recipe
from golfcore.result import RunResult
from golfcore.run import INVALID_SUFFIX, RECIPE_NAME, finished_run
from golfcore.submission import DEFAULT_DATA_PATH, DEFAULT_TOKENIZER_PATH

RUNTIME_PACKAGES = ("torch", "numpy", "sentencepiece", "pluggy", "safetensors", "zstandard")  # what golfcore imports


def export(run_dir: Path, available: dict[str, PluginInfo], out: Path | None = None) -> Path:
    """Write the records folder of `run_dir` (default: `<date>_<name>` in the working directory); returns it."""
    run_dir = Path(run_dir)
    result = _legal_result(run_dir)
    recipe_text = (run_dir / RECIPE_NAME).read_text(encoding="utf-8")
    config = load_recipe(run_dir / RECIPE_NAME, available)
    bundle = Bundle.for_run([available[name].module for name in config.plugins], recipe_text)
    if bundle.sha256 != result.code_sha256:
        raise GolfError(
            f"{run_dir}: the code changed since the run: its train_gpt.py had sha256 {str(result.code_sha256)[:12]} "
            f"({result.artifact.get('code_bytes')} bytes), today's has {bundle.sha256[:12]} ({bundle.code_bytes} bytes); "
            f"export it from the code that made it (git revision {result.git_revision})"
        )
    finished = dt.datetime.fromtimestamp((run_dir / "result.json").stat().st_mtime, dt.timezone.utc)
    out = Path(out) if out is not None else Path(f"{finished:%Y-%m-%d}_{result.name}")
    if out.exists():
        raise GolfError(f"{out}: already exists; choose another --out")
    files = {
        SCRIPT_NAME: bundle.script,
        "submission.json": json.dumps(submission(result, finished), indent=2) + "\n",
        f"train_seed{result.seed}.log": (run_dir / "log.txt").read_text(encoding="utf-8"),
        "requirements.txt": requirements(result.versions),
        "README.md": readme(result, bundle, run_dir),
    }
    partial = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    partial.mkdir(parents=True)
    try:
        for name, text in files.items():
            (partial / name).write_text(text, encoding="utf-8")
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _legal_result(run_dir: Path) -> RunResult:
    """The run's result, when it is a finished legal score; otherwise a one-line refusal."""
    if run_dir.name.endswith(INVALID_SUFFIX):
        raise GolfError(f"{run_dir}: an {run_dir.suffix[1:]} run cannot be exported")
    result = finished_run(run_dir, needs_artifact=False)  # refuses an unfinished run and an edited recipe
    if result.status != "finished" or result.val_bpb is None or not result.legal:
        why = "; ".join(result.violations) or result.error or "no val_bpb"
        raise GolfError(f"{run_dir}: not a finished legal score (status {result.status}: {why})")
    return result


def _git_user() -> str:
    try:
        name = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or "unknown"


def submission(result: RunResult, finished: dt.datetime) -> dict:
    """submission.json, with the fields the challenge's records use."""
    art = result.artifact
    return {
        "author": _git_user(),
        "github_id": "unknown",
        "name": result.name,
        "blurb": f"golf recipe {result.name}: {', '.join(result.plugins) or 'the baseline GPT'}; "
                 f"val_bpb of stage {result.final_stage} on the artifact model, seed {result.seed}.",
        "date": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "val_loss": result.stages[result.final_stage]["val_loss"],
        "val_bpb": result.val_bpb,
        "bytes_total": art["total_bytes"],
        "bytes_code": art["code_bytes"],
    }


def requirements(versions: dict[str, str]) -> str:
    """requirements.txt: what the script imports, pinned to the run's versions (a local label
    like +cpu or +cu128 is left out: it names a build, not a release on PyPI)."""
    lines = [f"# the packages train_gpt.py imports, at the versions its run used (python {versions.get('python', '?')})"]
    for name in RUNTIME_PACKAGES:
        version = versions.get(name)
        lines.append(f"{name}=={version.split('+')[0]}" if version else name)
    return "\n".join(lines) + "\n"


def readme(result: RunResult, bundle: Bundle, run_dir: Path) -> str:
    art = result.artifact
    stage = result.stages[result.final_stage]
    plugins = "\n".join(f"- `{name}` ({p['source']}, {p['version']}): "
                        + (", ".join(f"{k}={v!r}" for k, v in p["config"].items()) or "no options")
                        for name, p in result.plugins.items()) or "- none (the baseline GPT)"
    sizes = bundle.code_files()
    files = {label: size for label, size in sizes.items() if label not in (ENCODING_LABEL, SCRIPT_LABEL)}
    code = "\n".join(f"| `{label}` | {size:,} |" for label, size in files.items())
    raw = sum(files.values())
    return f"""# {result.name}

Generated by `golf export` from the run `{run_dir.name}` (golf {result.versions.get('golf', '?')}, git revision
{result.git_revision}).

## Score

val_bpb **{result.val_bpb:.8f}** (val_loss {stage['val_loss']:.8f} nats), stage `{result.final_stage}`, measured on the
model loaded back from the artifact bytes, on `{result.data['corpus']}/{result.data['split']}`
({result.data['targets']:,} targets), seed {result.seed}, {result.world_size} process(es) on {result.device};
{result.steps} steps in {result.train_seconds:.1f} s of training.

Compliance: {summary(result.compliance)}

## Recipe and plugins

The resolved recipe is inside train_gpt.py (`python train_gpt.py --sources DIR` writes it as
`DIR/recipe.toml`, with every module). Enabled plugins, with their settings:

{plugins}

## Artifact bytes

| part | bytes |
|---|---:|
| model (`model.golf`: {art['quantizer']} quantizer, {art['compressor']} compressor) | {art['model_bytes']:,} |
| code (`train_gpt.py`) | {art['code_bytes']:,} |
| **total** (budget {art['budget_bytes']:,}) | **{art['total_bytes']:,}** |

The code bytes are train_gpt.py's bytes: these files' {raw:,} raw bytes, lzma-compressed and
base85-encoded into {raw + sizes[ENCODING_LABEL]:,} bytes of text, behind a readable header,
importer and main ({sizes[SCRIPT_LABEL]:,} bytes).

| file | raw bytes |
|---|---:|
{code}

## Reproduce

```bash
pip install -r requirements.txt
DATA_PATH={DEFAULT_DATA_PATH} TOKENIZER_PATH={DEFAULT_TOKENIZER_PATH} \\
SEED={result.seed} RUN_ID=seed{result.seed} torchrun --standalone --nproc_per_node=8 train_gpt.py
```

`python train_gpt.py` runs it in one process. `DATA_PATH` is a folder of challenge shards
(`fineweb_train_*.bin`, `fineweb_val_*.bin`), `TOKENIZER_PATH` their sentencepiece model; both
default to the values above, relative to the working directory. The run directory (log,
metrics, `result.json`, the artifact `model.golf`) is written to `runs/<RUN_ID>/` beside
train_gpt.py; the script prints golf's log lines and ends with a `final val_bpb:` line. The
log of the run exported here is `train_seed{result.seed}.log`.
"""
