"""Training checkpoints: everything a run needs to continue exactly where it stopped, without pickle.

A checkpoint is the folder `checkpoint/` inside the run directory:

- `tensors.safetensors`: every tensor of the training state under a flat key;
- `manifest.json`: the state's structure with each tensor replaced by `{"tensor": key}`, the
  format version, the step, the sha256 of `tensors.safetensors`, the resolved recipe and the
  hash of the code that wrote it.

It is written into `checkpoint.tmp/` and renamed into place (the previous one is kept as
`checkpoint.prev/` until the rename is done), so a reader always finds one whole checkpoint.
Loading verifies the checksum before using a byte and refuses a checkpoint written by another
recipe or other code, naming what differs: continuing such a run would not be the run it claims to be.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import RunConfig
from .files import sha256_file
from .errors import CheckpointError

FORMAT_VERSION = 1
DIR_NAME = "checkpoint"
TENSORS_NAME = "tensors.safetensors"
MANIFEST_NAME = "manifest.json"


# ----------------------------------------------------------------------------- JSON + tensors


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of `obj` whose tensors are moved into `tensors` (key = their path).

    Dicts with non-string keys (optimizer states are keyed by parameter index) and tuples are
    tagged so `unflatten` gives back exactly the same types."""
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"tensor": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"dict": {k: flatten(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        return {"items": [[k, flatten(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"tuple": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state at {path or 'the top'} holds a {type(obj).__name__}; use tensors, numbers, strings, lists and dicts")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "tensor" in obj:
            return tensors[obj["tensor"]]
        if "dict" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["dict"].items()}
        if "items" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["items"]}
        return tuple(unflatten(v, tensors) for v in obj["tuple"])
    return obj


# ----------------------------------------------------------------------------- what a checkpoint holds


SWITCH_KEY = ".compile_switch"


def _switches(model: nn.Module) -> dict[str, nn.Module]:
    return {f"{name}{SWITCH_KEY}": m for name, m in model.named_modules() if isinstance(getattr(m, "compile_switch", None), bool)}


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, shared ones once, and every training-time
    switch (a module's Python bool `compile_switch`, e.g. late QAT's) as a bool "<module>.compile_switch"."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    state.update({key: torch.tensor(m.compile_switch) for key, m in _switches(model).items()})
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model_state(model)
    if own.keys() != state.keys():
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        raise CheckpointError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    switches = _switches(model)
    with torch.no_grad():
        for name, tensor in own.items():
            if name in switches:
                switches[name].compile_switch = bool(state[name])
            else:
                tensor.copy_(state[name])


def rng_state() -> dict:
    """Every random generator a run may draw from: Python's, numpy's global one, torch's (CPU, CUDA)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out



# ----------------------------------------------------------------------------- the run's checkpoint


class Checkpoints:
    """The checkpoint of one run directory, tied to the run's recipe and code."""

    def __init__(self, run_dir: Path, config: RunConfig, code: str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DIR_NAME
        self.config = config
        self.code = code

    def save(self, state: dict) -> Path:
        """Write `state` (nested dicts/lists of tensors, numbers, strings) as the run's checkpoint."""
        tmp, prev = self.path.with_name(DIR_NAME + ".tmp"), self.path.with_name(DIR_NAME + ".prev")
        shutil.rmtree(tmp, ignore_errors=True)
        tensors: dict[str, torch.Tensor] = {}
        structure = flatten(state, tensors)
        try:
            tmp.mkdir()
            save_file(tensors, tmp / TENSORS_NAME)
            manifest = {
                "format": FORMAT_VERSION, "step": state.get("step"), "sha256": sha256_file(tmp / TENSORS_NAME),
                "code": self.code, "recipe": self.config.to_dict(), "state": structure,
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        except (OSError, SafetensorError) as e:  # a full disk: the previous checkpoint stays whole
            shutil.rmtree(tmp, ignore_errors=True)
            kept = "the previous checkpoint is kept" if self.exists() else "there is no earlier checkpoint"
            raise CheckpointError(f"cannot write the checkpoint at step {state.get('step')} into {tmp} "
                                  f"({getattr(e, 'strerror', None) or e}); {kept}") from None
        shutil.rmtree(prev, ignore_errors=True)
        if self.path.exists():
            self.path.rename(prev)
        tmp.rename(self.path)
        shutil.rmtree(prev, ignore_errors=True)
        return self.path

    def exists(self) -> bool:
        return (self.path / MANIFEST_NAME).is_file() or (self.path.with_name(DIR_NAME + ".prev") / MANIFEST_NAME).is_file()

    def load(self, device: torch.device) -> dict:
        """The saved state with its tensors on `device`; CheckpointError naming the file on any damage or mismatch."""
        path = self.path if (self.path / MANIFEST_NAME).is_file() else self.path.with_name(DIR_NAME + ".prev")
        manifest_path, tensors_path = path / MANIFEST_NAME, path / TENSORS_NAME
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            version, digest, structure = manifest["format"], manifest["sha256"], manifest["state"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint manifest {manifest_path} is unreadable or damaged ({type(e).__name__}: {e})") from None
        if version != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has format {version}; this golf reads format {FORMAT_VERSION}")
        self._check_origin(path, manifest)
        if not tensors_path.is_file() or sha256_file(tensors_path) != digest:
            raise CheckpointError(f"checkpoint tensors {tensors_path} are missing or corrupt (sha256 differs from the manifest)")
        try:
            tensors = load_file(tensors_path, device=str(device))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint tensors {tensors_path} cannot be read: {e}") from None
        return unflatten(structure, tensors)

    def _check_origin(self, path: Path, manifest: dict) -> None:
        saved, current = _flat_config(manifest.get("recipe", {})), _flat_config(self.config.to_dict())
        diffs = [f"{k}: {saved.get(k, '<unset>')!r} in the checkpoint, {current.get(k, '<unset>')!r} now"
                 for k in sorted(saved.keys() | current.keys()) if saved.get(k, "<unset>") != current.get(k, "<unset>")]
        if diffs:
            more = f" (and {len(diffs) - 2} more)" if len(diffs) > 2 else ""
            raise CheckpointError(f"checkpoint {path} was written by a different recipe: {'; '.join(diffs[:2])}{more}")
        if manifest.get("code") != self.code:
            raise CheckpointError(
                f"checkpoint {path} was written by different code (hash {str(manifest.get('code'))[:12]}, now {self.code[:12]}): "
                f"golfcore or an enabled plugin changed since"
            )
