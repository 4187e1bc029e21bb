"""`golf model RECIPE`: the description slot by slot, with the plugin that set each one."""

import re
from pathlib import Path

from typer.testing import CliRunner

from golf_cli.main import app

REPO = Path(__file__).resolve().parent.parent


def lines_of(*args):
    result = CliRunner().invoke(app, ["model", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def slot(lines, path):
    (line,) = [line for line in lines if line.split("  ")[0].strip() == path]
    return line.split(None, 1)[1]


def test_each_slot_names_the_plugin_that_set_it():
    lines = lines_of(REPO / "recipes" / "v4-quick.toml")
    assert lines[0].startswith("# ") and "recurrence" in lines[0]
    assert slot(lines, "embedding.additions[0]") == "BigramHash(1024, 32, 128, 0.05, False, 1)  [bigram_hash]"
    assert slot(lines, "layers[3].info") == "virtual 3 of 6, physical 1 of 4"  # recurrence repeats [1, 2]
    assert slot(lines, "layers[3].input_scale") == f"{1 / 2 ** 1}  [ln_scale]"
    # lists print in the order they run: XSA (order 0) before the head gate (order 10)
    assert slot(lines, "layers[0].output_transforms[0]") == "ExclusiveSelfAttention()  [xsa]"
    assert slot(lines, "layers[0].output_transforms[1]") == "HeadGate(128, 4, 4.0)  [gated_attention]"
    assert slot(lines, "weight_transform") == "FakeQuantize(GptqLiteQuantizer)  [late_qat]"
    assert slot(lines, "layers[0].attention") == "CausalAttention()"  # no bracket: the core's default
    assert slot(lines, "head.logits") == "SoftcapHead(30.0)"


def test_overrides_change_the_description():
    lines = lines_of(REPO / "recipes" / "v4-quick.toml", "--without", "xsa", "--set", "model.logit_softcap=15.0")
    assert slot(lines, "layers[0].output_transforms[0]") == "HeadGate(128, 4, 4.0)  [gated_attention]"
    assert slot(lines, "head.logits") == "SoftcapHead(15.0)"
    baseline = lines_of(REPO / "recipes" / "baseline.toml")
    assert not any(re.search(r"  \[\w+\]$", line) for line in baseline[1:])  # nothing set by a plugin


def test_an_unknown_plugin_is_a_one_line_error():
    result = CliRunner().invoke(app, ["model", str(REPO / "recipes" / "baseline.toml"), "--with", "no_such_plugin"])
    assert result.exit_code == 2 and "no_such_plugin" in result.output
