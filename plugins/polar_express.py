"""Polar Express: Muon's Newton–Schulz iteration with a different (a, b, c) per iteration
(docs/techniques.md §13.1; PR #1344, carried by #1787 and #1855).

Iteration i computes X <- a_i·X + (b_i·A + c_i·A²)·X, A = X·Xᵀ, with the triples below in
place of the quintic's fixed (3.4445, -4.7750, 2.0315). Each triple is the minimax-optimal
odd quintic for the singular values the previous ones leave (Amsel et al., "The Polar Express",
2025): on random matrices 5 iterations land singular values in about [0.86, 1.14], the
quintic's in [0.68, 1.2]. Runs `[optim] muon_backend_steps` iterations (5 in the records);
beyond 5 the last triple repeats (the records' code ran only 5). Sharding, dtype and
compilation are Muon's.

No parameters. Fixes no reference defect.
"""

from __future__ import annotations

import golfcore as golf

POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


class PolarExpress(golf.Plugin):
    name = "polar_express"
    description = "Muon's Newton-Schulz with per-iteration minimax coefficients (Polar Express; PR #1344/#1787)"

    @golf.hookimpl
    def golf_orthogonalization(self, config, orthogonalization):
        orthogonalization.coefficients = POLAR_EXPRESS
