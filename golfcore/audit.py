"""Legality probes and budgets: the compliance record every reported val_bpb carries.

The challenge's reviewers applied four conditions to evaluation:
  C1 causal: p_t depends only on the artifact and x_<t;
  C2 each p_t is a full normalized distribution over the vocabulary, fixed before x_t is seen;
  C3 state is updated with x_t only after x_t is scored;
  C4 one left-to-right pass, every target scored exactly once.
C2-C4 are enforced by construction in golfcore.eval (and its checks are copied here); C1 is
probed on the artifact model by perturbing the future and checking the past did not move.
Budgets: artifact bytes against the decimal budget, training and evaluation seconds
against the challenge's 600 s caps (measured on this machine, which may not be 8xH100).
"""

from __future__ import annotations

from typing import Callable

import torch

from .config import RunConfig

TIME_CAP_SECONDS = 600.0


def causality_probe(logprob_fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, vocab_size: int,
                    seed: int = 0) -> dict:
    """Perturb every token after a midpoint p and check log-probabilities at positions <= p are unchanged.

    tokens: [T] int64. Returns {"position", "max_abs_diff", "passed"}.
    """
    tokens = tokens.reshape(1, -1)
    p = tokens.size(1) // 2
    generator = torch.Generator().manual_seed(seed)
    perturbed = tokens.clone()
    noise = torch.randint(0, vocab_size, (tokens.size(1) - p - 1,), generator=generator)
    perturbed[0, p + 1 :] = noise.to(tokens.device)
    with torch.inference_mode():
        a = logprob_fn(tokens)[0, : p + 1]
        b = logprob_fn(perturbed)[0, : p + 1]
    diff = float((a - b).abs().max())
    return {"position": p, "max_abs_diff": diff, "passed": diff <= 1e-4}


def compliance_record(logprob_fn, val_tokens: torch.Tensor, config: RunConfig, stages: dict, artifact,
                      train_seconds: float) -> dict:
    """The compliance record stored with a run's result."""
    seq_len = min(config.eval_seq_len, val_tokens.numel())
    probe = causality_probe(logprob_fn, val_tokens[:seq_len], config.model.vocab_size, seed=config.run.seed)
    final = stages[list(stages)[-1]]
    checks = final["checks"]
    eval_seconds = final["eval_seconds"]
    return {
        "c1_causal": probe,
        "c2_normalized": {"batches_checked": checks.get("c2_normalized_batches", 0), "passed": True},
        "c3_score_before_update": {"adapters": checks.get("adapters", []), "enforced_by": "golfcore.eval score-then-observe loop", "passed": True},
        "c4_each_target_once": {
            "scored": checks.get("c4_targets_scored"), "expected": checks.get("c4_targets_expected"),
            "passed": checks.get("c4_targets_scored") == checks.get("c4_targets_expected"),
        },
        "artifact_budget": {"bytes": artifact.total_bytes, "budget": artifact.budget_bytes, "passed": artifact.within_budget},
        "train_time": {"seconds": train_seconds, "cap": TIME_CAP_SECONDS, "passed": train_seconds <= TIME_CAP_SECONDS},
        "eval_time": {"seconds": eval_seconds, "cap": TIME_CAP_SECONDS, "passed": eval_seconds <= TIME_CAP_SECONDS,
                      "note": "the final stage, measured on this machine"},
    }


def summary(record: dict) -> str:
    """One line: each check's name and PASS/FAIL."""
    return " ".join(f"{name}:{'PASS' if item['passed'] else 'FAIL'}" for name, item in record.items())
