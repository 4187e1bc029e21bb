"""golf_tools.projection: a recipe's artifact projected from its shapes, without data."""

import math

from golf_tools.projection import main

from golfcore.artifact import level_entropy_bits


def test_projects_a_recipe_and_exits_by_the_budget(capsys):
    assert main(["recipes/quickstart.toml", "--with", "gptq"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("quickstart: ") and "quantizer gptq" in out and "fits" in out
    assert main(["recipes/quickstart.toml", "--set", "export.budget_bytes=1000"]) == 1
    assert "OVER" in capsys.readouterr().out


def test_measure_packs_the_model_at_init_with_the_recipes_export(capsys):
    assert main(["recipes/pr2135-quick.toml", "--measure", "--calibration-batches", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    projected = int(out[1].split("projected model ")[1].split(" ")[0].replace(",", ""))
    line = next(x for x in out if x.startswith("measured at init (Gaussian rows): model "))
    measured = int(line.split("model ")[1].split(" ")[0].replace(",", ""))
    assert 0 < measured < projected  # the projection's margin covers a compressor at the Gaussian entropy
    assert any(x.startswith("pergroup: ") and "via brotli" in x for x in out)


def test_sdclip_grids_project_smaller_than_a_clip_at_the_maximum():
    """The grids behind the full-scale figures in docs/performance.md: int6 SDClip (k = 12.85) stores
    about 3.3 bits per value, a clip at the maximum of a 512-wide row 5.2."""
    assert round(level_entropy_bits(31 / 12.85, 31), 2) == 3.33
    assert round(level_entropy_bits(31 / math.sqrt(2 * math.log(512)), 31), 2) == 5.18
