"""The main of an exported `train_gpt.py` (golfcore.bundle): golf's run of the embedded recipe,
with data, run name and seed named the challenge's way, by environment variables.

- `DATA_PATH`: a folder of challenge shards (default ./data/datasets/fineweb10B_sp1024, holding
  fineweb_train_*.bin and fineweb_val_*.bin), read instead of the recipe's data.root;
- `TOKENIZER_PATH`: its sentencepiece model (default ./data/tokenizers/fineweb_1024_bpe.model);
- `RUN_ID`: the run directory's name under `runs/` beside the script (default: the recipe's
  name and a timestamp, as `golf run` names it);
- `SEED`: overrides the recipe's run.seed.

The run directory's recipe.toml is the embedded recipe as it is (the code the script counts);
result.json's `config` has the seed and paths the run used.
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

from .data import open_shard_folder
from .errors import ConfigError, GolfError
from .plugins import PluginInfo, plugins_in
from .recipe import resolve
from .run import run

DEFAULT_DATA_PATH = "./data/datasets/fineweb10B_sp1024"
DEFAULT_TOKENIZER_PATH = "./data/tokenizers/fineweb_1024_bpe.model"
SOURCE = "train_gpt.py recipe"


def bundled_plugins(module_names: list[str]) -> dict[str, PluginInfo]:
    """The plugins defined in the bundled modules, as golfcore.plugins.discover would list them."""
    found: dict[str, PluginInfo] = {}
    for name in module_names:
        for info in plugins_in(importlib.import_module(name), "bundled", "bundled"):
            found[info.name] = info
    return found


def main(recipe_text: str, plugin_modules: list[str], here: Path, environ: Mapping[str, str] = os.environ) -> int:
    """Run the recipe; returns the process's exit code (a user error prints one `error:` line)."""
    try:
        final_dir, result = _run(recipe_text, plugin_modules, Path(here), environ)
    except GolfError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    if final_dir is None:  # a rank other than 0
        return 0
    print(f"final val_bpb:{result.val_bpb} val_loss:{result.stages[result.final_stage]['val_loss']} "
          f"stage:{result.final_stage} legal:{result.legal} bytes_code:{result.artifact['code_bytes']} "
          f"bytes_total:{result.artifact['total_bytes']} run_dir:{final_dir}", flush=True)
    return 0 if result.legal else 3


def _run(recipe_text: str, plugin_modules: list[str], here: Path, environ: Mapping[str, str]):
    data_path = Path(environ.get("DATA_PATH", DEFAULT_DATA_PATH))
    tokenizer_path = Path(environ.get("TOKENIZER_PATH", DEFAULT_TOKENIZER_PATH))
    raw = tomllib.loads(recipe_text)
    open_shard_folder(raw["data"]["corpus"], data_path, tokenizer_path, 0, "DATA_PATH", "TOKENIZER_PATH")  # named errors first
    raw["data"].update(shards=str(data_path), tokenizer=str(tokenizer_path))
    raw["run"]["out_dir"] = str(here / "runs")
    if "SEED" in environ:
        try:
            raw["run"]["seed"] = int(environ["SEED"])
        except ValueError:
            raise ConfigError(f"SEED={environ['SEED']!r}: not an integer") from None
    available = bundled_plugins(plugin_modules)
    config = resolve(raw, available, SOURCE)
    run_dir = here / "runs" / environ["RUN_ID"] if environ.get("RUN_ID") else None
    return run(config, available, recipe_text, echo=lambda s: print(s, flush=True), run_dir=run_dir)
