"""Row-normalised Muon, "MuonEq-R" (docs/techniques.md §13.2; PR #1285/#1394, run by #1855).

Before Newton–Schulz, each row of the momentum update u [rows, cols] is scaled to unit
length: u_r <- u_r / max(‖u_r‖, 1e-7). Every output unit then enters the orthogonalisation
with equal weight, so rows with large gradients do not dominate the polar factor. `rows =
false` normalises columns instead (input units), which the records did not run. Applied by
Muon on each rank's share of each shape's stack (each matrix alone), in the update's dtype.

No parameters. Fixes no reference defect.
"""

from __future__ import annotations

from dataclasses import dataclass

import golfcore as golf


@dataclass
class Config(golf.Section):
    rows: bool = golf.option(True, "normalise the update's rows (MuonEq-R, the records); false: its columns")


class MuonEqR(golf.Plugin):
    name = "muon_eq_r"
    description = "row-normalised Muon: unit-length update rows before Newton-Schulz (MuonEq-R; PR #1285/#1394)"
    Config = Config

    @golf.hookimpl
    def golf_orthogonalization(self, config, orthogonalization):
        orthogonalization.normalize = "rows" if self.config.rows else "columns"
