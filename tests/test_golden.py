"""Every shipped recipe computes what it computed before the model-description redesign (issue 17).

tests/golden/generate.py recorded, with the code before the redesign, each recipe's logits on fixed
tokens before and after two optimizer steps, its parameter names and count, the weights after the
two steps and the artifact bytes, at a tiny CPU fp32 config. Here each case is rebuilt and trained
with today's code and compared bit for bit (CPU fp32 is deterministic for one process and thread
count; the redesign changed no op). Today's state-dict names are mapped to the recorded ones
(`golden_name`) before anything is hashed or packed, so equal artifact bytes mean equal values
under that name map.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.golden.generate import CASES, run_case

GOLDEN = Path(__file__).resolve().parent / "golden"


# Names that changed with the redesign (docs/architecture.md, "State-dict names"): a physical
# layer's matrices became golfcore.Projection modules ("layers.3.q" is now "layers.3.q.weight") and
# the U-Net skip weights a module of their own ("skip_weights" is now "skips.weights").
RENAMED = [(re.compile(r"^(layers\.\d+\.(?:q|k|v|o|up|down))\.weight$"), r"\1"), (re.compile(r"^skips\.weights$"), "skip_weights")]


def golden_name(name: str) -> str:
    """Today's state-dict name -> the name recorded before the redesign."""
    for pattern, old in RENAMED:
        name = pattern.sub(old, name)
    return name


@pytest.mark.parametrize("case", list(CASES))
def test_recipe_matches_its_golden_outputs(case):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe, with_ = CASES[case]
        tensors, record = run_case(recipe, with_, golden_name)
    finally:
        torch.set_num_threads(threads)
    expected = json.loads((GOLDEN / f"{case}.json").read_text())
    golden = safetensors.torch.load_file(GOLDEN / f"{case}.safetensors")
    assert torch.equal(tensors["tokens"], golden["tokens"])
    assert record["parameters"] == expected["parameters"]
    assert record["num_parameters"] == expected["num_parameters"]
    for key in ("logits_init", "logits_trained"):
        diff = (tensors[key] - golden[key]).abs().max().item()
        assert diff == 0.0, f"{case} {key}: max |difference| {diff}"
    changed = {n: (w["sum"], expected["weights"][n]["sum"]) for n, w in record["weights"].items()
               if w["sha256"] != expected["weights"].get(n, {}).get("sha256")}
    assert not changed and record["weights"].keys() == expected["weights"].keys(), f"{case}: weights differ: {changed}"
    assert record["artifact"] == expected["artifact"]
