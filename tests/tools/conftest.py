"""A folder of tiny runs in every state a run directory can end in, made once per test session
(in-process, a few seconds each) for the tests of golf report, golf compare, golf runs and the
trackers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import tiny_recipe

PLANTED = [Path(__file__).parent / "report_plugins", Path(__file__).parent.parent / "planted"]

# 12 steps, warmdown from step 6, Muon momentum warm-up over 6 steps, late QAT on below lr scale 0.5
QUICK = """
extends = "tiny.toml"
[optim]
muon_momentum_warmup_steps = 6
[train]
iterations = 12
warmdown_iters = 6
log_every = 2
val_every = 4
[plugins.late_qat]
threshold = 0.5
"""


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory, pystdlib_root) -> dict[str, Path]:
    """runs/ under a temporary folder: `finished` (late QAT switching on in its warmdown),
    `other` (finished, without late QAT, 10 steps), `invalid` (a re-score of `finished` with a
    planted unnormalized eval adapter), `interrupted` (SIGTERM after step 4) and `diverged` (a NaN
    loss at step 3). Returns each run directory by name, and the folder as "root"."""
    from golfcore.errors import DivergedError, TrainingInterrupted
    from golfcore.plugins import discover
    from golfcore.recipe import dump_toml, load_recipe
    from golfcore.run import rescore, run

    root = tmp_path_factory.mktemp("report_runs")
    tiny_recipe(root, pystdlib_root)
    recipe = root / "quick.toml"
    recipe.write_text(QUICK)
    available = discover(PLANTED)
    dirs: dict[str, Path] = {"root": root / "runs", "recipe": recipe}

    def start(name: str, sets=(), with_=(), without=()):
        config = load_recipe(recipe, available, [f'run.name="{name}"', *sets], with_, without)
        return run(config, available, dump_toml(config), echo=lambda line: None)[0]

    dirs["finished"] = start("finished")
    dirs["other"] = start("other", ["train.iterations=10"], without=["late_qat"])
    rescore(dirs["finished"], available, echo=lambda line: None, with_=["planted_unnormalized"],
            out_dir=root / "runs" / "rescored")
    dirs["invalid"] = root / "runs" / "rescored.invalid"
    with pytest.raises(TrainingInterrupted):
        start("interrupted", ["plugins.stop_at.at=4"], with_=["stop_at"])
    (dirs["interrupted"],) = (root / "runs").glob("interrupted-*.incomplete")
    with pytest.raises(DivergedError):
        start("diverged", with_=["nan_at"])
    (dirs["diverged"],) = (root / "runs").glob("diverged-*")
    return dirs
