"""Golden outputs of every shipped recipe (and the example plugin gelu_mlp) at a tiny CPU fp32
config: logits on fixed tokens before and after two optimizer steps, parameter names and counts,
the weights after the two steps (sha256 of their bytes, plus sum and max |w| to report a
difference), and the artifact bytes (sha256, length).

    python tests/golden/generate.py          # rewrites tests/golden/<case>.json and .safetensors

Recorded once with the code before the model-description redesign (issue 17); tests/test_golden.py
rebuilds each case with today's code and compares. Regenerate only for a deliberate change of
what a recipe computes, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from golfcore.artifact import Int8Quantizer, ZstdCompressor, pack  # noqa: E402
from golfcore.assemble import build_model, check_config  # noqa: E402
from golfcore.params import param_specs  # noqa: E402
from golfcore.plugins import Host, discover  # noqa: E402
from golfcore.recipe import load_recipe  # noqa: E402
from tests.helpers import train_briefly  # noqa: E402

HERE = Path(__file__).resolve().parent
RECIPES = ROOT / "recipes"
# the recipes shipped before the redesign; later ones have no "before" to equal (pr1855 and pr2135
# are checked against their records' parameter counts and logits instead)
BEFORE_REDESIGN = ("baseline", "pr549", "pr549-quick", "quickstart", "v4", "v4-quick")
CASES = {name: (f"{name}.toml", []) for name in BEFORE_REDESIGN}
CASES["gelu_mlp"] = ("quickstart.toml", ["gelu_mlp"])  # the example package's plugin on the quickstart model
TOKENS_SEED = 1234


def tiny(config) -> None:
    """Shrink a resolved recipe to a CPU fp32 model of a few thousand parameters per layer; the
    plugins keep their settings, except that late QAT switches on after step 1 and SWA snapshots
    every step, so that two steps exercise them."""
    m = config.model
    m.vocab_size, m.model_dim, m.num_heads, m.num_kv_heads = 64, 64, 2, 1
    t = config.train
    t.device, t.compile, t.activation_dtype = "cpu", "off", "float32"
    t.seq_len, t.batch_tokens, t.micro_batches = 16, 64, 1
    t.iterations, t.max_wallclock_seconds, t.warmup_steps, t.warmdown_iters, t.val_every = 2, 0, 0, 2, 0
    config.export.float_max_numel = 256
    if "late_qat" in config.plugins:
        config.plugins["late_qat"].threshold = 1.0
    if "swa" in config.plugins:
        config.plugins["swa"].every, config.plugins["swa"].start_scale = 1, 1.0


def fixed_tokens() -> torch.Tensor:  # [1,16], with BOS (id 1) at positions 0 and 9
    tokens = torch.randint(2, 64, (1, 16), generator=torch.Generator().manual_seed(TOKENS_SEED))
    tokens[0, 0] = tokens[0, 9] = 1
    return tokens


def sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def run_case(recipe: str, with_: list[str], state_name=lambda name: name):
    """(tensors, record) for one case; `state_name` maps today's state-dict names to the golden
    ones before anything is hashed or packed (tests/test_golden.py's documented name map)."""
    available = discover()
    config = load_recipe(RECIPES / recipe, available, with_=with_)
    tiny(config)
    host = Host(config, available)
    check_config(config, host)
    quantizer = host.first("golf_quantizer", config=config) or Int8Quantizer(config.export.float_max_numel)
    compressor = host.first("golf_compressor", config=config) or ZstdCompressor(config.export.zstd_level)
    model = build_model(config, host, quantizer)
    tokens = fixed_tokens()
    with torch.no_grad():
        logits_init = model.logits(tokens)
    params = {state_name(n): list(p.shape) for n, p in model.named_parameters()}
    train_briefly(config, host, model, quantizer)
    with torch.no_grad():
        logits_trained = model.logits(tokens)
    state = {state_name(n): t for n, t in model.state_dict().items()}
    specs = {state_name(n): s for n, s in param_specs(model).items()}
    blob = pack(state, specs, quantizer, compressor, config.export.smallest_layout)
    record = {
        "recipe": recipe,
        "with": with_,
        "plugins": list(config.plugins),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "parameters": params,
        "weights": {n: {"sha256": sha256(t), "sum": float(t.double().sum()), "max_abs": float(t.double().abs().max())}
                    for n, t in state.items() if t.is_floating_point()},
        "artifact": {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)},
    }
    return {"tokens": tokens, "logits_init": logits_init, "logits_trained": logits_trained}, record


def main() -> None:
    torch.set_num_threads(1)
    for case, (recipe, with_) in CASES.items():
        tensors, record = run_case(recipe, with_)
        safetensors.torch.save_file(tensors, HERE / f"{case}.safetensors")
        (HERE / f"{case}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"{case}: {record['num_parameters']} parameters, artifact {record['artifact']['bytes']} bytes")


if __name__ == "__main__":
    main()
