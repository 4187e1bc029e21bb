"""The artifact a recipe would produce, projected before training (golfcore.artifact.project):
`python -m golf_tools.projection RECIPE [--set section.key=value] [--with NAME] [--without NAME]`.

Builds the recipe's model on the CPU (no data, no training), bundles its code, and prints the
projected model, code and total bytes against the budget."""

from __future__ import annotations

import argparse

from golfcore.artifact import project
from golfcore.bundle import Bundle
from golfcore.model import count_parameters
from golfcore.plugins import discover
from golfcore.recipe import dump_toml, load_recipe
from golfcore.run import Session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--with", action="append", default=[], dest="with_")
    parser.add_argument("--without", action="append", default=[])
    args = parser.parse_args(argv)
    available = discover()
    config = load_recipe(args.recipe, available, args.sets, args.with_, args.without)
    session = Session(config, available, build_data=False)
    model = session.build_model()
    code = Bundle.for_run(session.plugin_modules(), dump_toml(config))
    p = project(model, session.quantizer, config.export.float_max_numel, code.code_bytes, config.export.budget_bytes)
    print(f"{config.run.name}: {count_parameters(model):,} parameters, quantizer {session.quantizer.name}, "
          f"compressor {session.compressor.name}")
    print(f"projected model {p.model_bytes:,} + code {code.code_bytes:,} = {p.total_bytes:,} bytes "
          f"(budget {p.budget_bytes:,}: {'fits' if p.fits else 'OVER'}; precision bytes {p.precision_bytes:,})")
    return 0 if p.fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
