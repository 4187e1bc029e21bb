"""The artifact a recipe would produce, projected before training (golfcore.artifact.project):
`python -m golf_tools.projection RECIPE [--set section.key=value] [--with NAME] [--without NAME] [--measure]`.

Builds the recipe's model on the CPU (no data, no training), bundles its code, and prints the
projected model, code and total bytes against the budget. `--measure` also packs that model
with the recipe's quantizer and compressor and prints the artifact's bytes: the model at its
initialisation, zero-initialised integer matrices drawn N(0, 0.02²) so every integer row is Gaussian,
calibrated (when the quantizer wants it) on `--calibration-batches` batches of random tokens.
That measures the compressor on Gaussian rows, the projection's assumption; trained weights
differ (docs/performance.md, "The records' export at full size")."""

from __future__ import annotations

import argparse
import time

import torch

from golfcore.artifact import pack, project
from golfcore.bundle import Bundle
from golfcore.calibration import calibrate
from golfcore.model import count_parameters
from golfcore.params import param_specs, spec_of
from golfcore.plugins import discover
from golfcore.recipe import dump_toml, load_recipe
from golfcore.run import Session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--with", action="append", default=[], dest="with_")
    parser.add_argument("--without", action="append", default=[])
    parser.add_argument("--measure", action="store_true", help="also pack the model at init and print the artifact's bytes")
    parser.add_argument("--calibration-batches", type=int, default=2, help="with --measure: batches of 4 x seq_len random tokens")
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
    if args.measure:
        return measure(session, model, code.code_bytes, args.calibration_batches)
    return 0 if p.fits else 1


def measure(session: Session, model, code_bytes: int, batches: int) -> int:
    """Pack the model at init (Gaussian rows) with the recipe's export; print its bytes; 0 when it fits."""
    config, quantizer, compressor = session.config, session.quantizer, session.compressor
    generator = torch.Generator().manual_seed(config.run.seed)
    with torch.no_grad():
        for p in model.parameters():
            if spec_of(p).export in ("quantize", "embedding") and not p.any():
                p.normal_(0, 0.02, generator=generator)
    t0 = time.perf_counter()
    if getattr(quantizer, "calibration_batches", 0):
        quantizer.calibration_batches = batches
        shape = (4, config.train.seq_len)
        calibrate(quantizer, model, lambda: torch.randint(0, config.model.vocab_size, shape, generator=generator), model.logits)
    blob = pack(model.state_dict(), param_specs(model), quantizer, compressor, config.export.smallest_layout)
    total = len(blob) + code_bytes
    print(f"measured at init (Gaussian rows): model {len(blob):,} + code {code_bytes:,} = {total:,} bytes "
          f"({'fits' if total <= config.export.budget_bytes else 'OVER'}; {time.perf_counter() - t0:.0f}s)")
    if getattr(compressor, "report", ""):
        print(compressor.report)
    return 0 if total <= config.export.budget_bytes else 1


if __name__ == "__main__":
    raise SystemExit(main())
