"""Legality probes and budgets: the compliance record every reported val_bpb carries.

The challenge's reviewers applied four conditions to evaluation (docs/compliance.md):
  C1 causal: p_t depends only on the artifact and x_<t;
  C2 each p_t is a full normalized distribution over the vocabulary, fixed before x_t is seen;
  C3 state is updated with x_t only after x_t is scored;
  C4 one left-to-right pass, every target scored exactly once.
golfcore.eval enforces C2 and C4 on every scored batch. C1 and C3 are probed here by re-running
the run's own scoring path (the artifact model, golf_before_eval, fresh eval adapters, the same
windows, chunks and batches) on a validation prefix: perturbing the stream after a cut point p
must leave every scored distribution at positions <= p unchanged (C1), and scoring with other
batch sizes must give the same distributions (C3: an adapter whose `adjust` reads other rows or
changes its own state fails). Budgets: artifact bytes against the decimal budget, training and
evaluation seconds against the recipe's caps, or the challenge's 600 s where the hardware is the
challenge's 8xH100.

Every entry of the record is {"status": "pass" | "fail" | "not checked", <measured figures>};
a failing one adds "message" (one line) and "culprit" (the plugin or adapter, when isolated).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch
from torch import Tensor

from .config import RunConfig
from .errors import ComplianceError, GolfError
from .eval import NORMALIZATION_TOL, plan_windows

TIME_CAP_SECONDS = 600.0
"""The challenge's training and evaluation caps, each on 8xH100."""

PASS, FAIL, NOT_CHECKED = "pass", "fail", "not checked"


@dataclass(frozen=True)
class Tolerance:
    """Largest |difference| of two scored log-probabilities (nats) the probes accept."""

    c1: float  # same batching, stream perturbed after p: positions <= p
    c3: float  # same stream, different batch sizes: matmul blocking changes the rounding


def tolerance(device: torch.device) -> Tolerance:
    """fp32 on CPU is deterministic for identical shapes, so C1 is near-exact; bf16 autocast on
    CUDA rounds to 8 mantissa bits and test-time training's backward uses atomics, so CUDA
    allows more (the CUDA figures are chosen, not yet measured on a GPU). Planted leaks move scores
    by 1 nat or more (tests/test_audit.py)."""
    if device.type == "cuda":
        return Tolerance(c1=2e-2, c3=5e-2)
    return Tolerance(c1=1e-5, c3=1e-4)


@dataclass(frozen=True)
class Variant:
    """How a probe re-runs the scoring path; the defaults score exactly as the run does."""

    adapters: int | None = None  # score with the first k eval adapters only (None = all)
    before_eval: bool = True  # call golf_before_eval on the loaded model
    batch_seqs: int | None = None  # None = [eval] batch_seqs
    chunk_tokens: int | None = None  # None = [eval] chunk_tokens
    random_init: bool = False  # a freshly built model instead of the artifact's
    drop_plugin: str | None = None  # with random_init: build without this plugin
    document_probe: bool = False  # blocks silenced, only document-aware adapters (see document_boundaries)


Record = Callable[[Tensor, Tensor], None]  # (positions [N], log-probabilities [N,V])


class ScoringPath(Protocol):
    """A run's scoring path as the probes re-run it (golfcore.run.ScoringPath implements it)."""

    adapter_names: list[str]  # the enabled eval adapters, in scoring order
    model_plugins: list[str]  # enabled plugins answering a model-building hook
    before_eval_plugins: list[str]  # enabled plugins implementing golf_before_eval
    document_aware: list[str]  # enabled plugins that claim document awareness
    bos_id: int  # the id that starts each document (the corpus tokenizer's)
    seq_len: int
    stride: int
    batch_seqs: int
    chunk_tokens: int
    vocab_size: int
    device: torch.device
    source: str  # "artifact" or "random init"

    def score(self, tokens: Tensor, variant: Variant, record: Record) -> None: ...

    def reduce_max(self, value: float) -> float: ...


def describe(path: ScoringPath) -> str:
    return " -> ".join([f"{path.source} model", "golf_before_eval", *path.adapter_names])


# ----------------------------------------------------------------------------- probe mechanics


def probe_prefix(path: ScoringPath, available: int, chunks: int = 2) -> int:
    """Targets a probe scores: two windows, and with adapters enough to cross `chunks - 1` chunk boundaries."""
    n = 2 * path.seq_len
    if path.adapter_names:
        n = max(n, (chunks - 1) * path.chunk_tokens + path.seq_len)
    return min(n, available)


def cut_points(path: ScoringPath, num_targets: int, many: bool = False) -> list[int]:
    """Positions p after which the stream is perturbed: the middle of the first window, the end
    of its scored range (the next window is in the same batch), each chunk boundary the prefix
    crosses and the middle of the last window; `many` adds every window's middle and end."""
    windows = plan_windows(num_targets, path.seq_len, path.stride)
    picked = [windows[0].first_target + (windows[0].end_target - windows[0].first_target) // 2,
              windows[0].end_target - 1, (windows[-1].first_target + windows[-1].end_target) // 2]
    if path.adapter_names:
        picked += range(path.chunk_tokens - 1, num_targets - 1, path.chunk_tokens)
    if many:
        step = max(1, len(windows) // 8)
        for w in windows[::step]:
            picked += [(w.first_target + w.end_target) // 2, w.end_target - 1]
    return sorted({p for p in picked if 0 <= p < num_targets - 1})


def _rows(path: ScoringPath, tokens: Tensor, variant: Variant) -> Tensor:
    """[N,V] the scored log-probabilities by position (NaN where another rank scored)."""
    rows = torch.full((tokens.numel() - 1, path.vocab_size), float("nan"), device=path.device)

    def record(pos: Tensor, lp: Tensor) -> None:
        rows[pos] = lp

    path.score(tokens, variant, record)
    return rows


def _perturbed(tokens: Tensor, lo: int, hi: int, vocab_size: int, seed: int) -> Tensor:
    """`tokens` with ids lo..hi-1 replaced by random ids in 2..V-1 (never <unk> or BOS)."""
    generator = torch.Generator().manual_seed(seed)
    out = tokens.clone()
    out[lo:hi] = torch.randint(2, vocab_size, (hi - lo,), generator=generator).to(tokens.device)
    return out


def _max_abs(a: Tensor, b: Tensor) -> float:
    """Largest |a - b| where both were scored here; inf where only one is finite (e.g. a NaN)."""
    both = ~(a.isnan() & b.isnan())
    if not both.any():
        return 0.0
    return float(torch.nan_to_num((a - b)[both].abs(), nan=float("inf")).max())


def causal_deviations(path: ScoringPath, tokens: Tensor, cuts: list[int], variant: Variant = Variant(),
                      seed: int = 0) -> list[dict]:
    """Per cut p: the largest change at positions <= p (C1 says 0) and after p (the probe's reach)."""
    reference = _rows(path, tokens, variant)
    out = []
    for i, p in enumerate(cuts):
        perturbed = _rows(path, _perturbed(tokens, p + 1, tokens.numel(), path.vocab_size, seed + i), variant)
        out.append({"cut": p, "before": path.reduce_max(_max_abs(reference[: p + 1], perturbed[: p + 1])),
                    "after": path.reduce_max(_max_abs(reference[p + 1 :], perturbed[p + 1 :]))})
    return out


def batching_deviation(path: ScoringPath, tokens: Tensor, batch_sizes: list[int], variant: Variant = Variant()) -> float:
    """Largest change of any scored distribution between the first batch size and each other."""
    reference = _rows(path, tokens, replace(variant, batch_seqs=batch_sizes[0]))
    worst = 0.0
    for b in batch_sizes[1:]:
        worst = max(worst, _max_abs(reference, _rows(path, tokens, replace(variant, batch_seqs=b))))
    return path.reduce_max(worst)


def isolate(path: ScoringPath, fails: Callable[[Variant], bool]) -> str:
    """Who makes `fails(variant)` true: the model (a build plugin when one can be named),
    golf_before_eval, or the first eval adapter whose addition makes it fail."""
    if fails(Variant(adapters=0, before_eval=False)):
        return _blame_model(path, fails)
    if path.before_eval_plugins and fails(Variant(adapters=0)):
        return f"golf_before_eval (plugins: {', '.join(path.before_eval_plugins)})"
    for k, name in enumerate(path.adapter_names, start=1):
        if fails(Variant(adapters=k)):
            return f"eval adapter {name!r}"
    return f"not isolated: only the whole path ({describe(path)}) fails"


def _blame_model(path: ScoringPath, fails: Callable[[Variant], bool]) -> str:
    """A freshly built model shows the same failure and building it without plugin X removes it:
    X is named. Otherwise the model as a whole, with the plugins that helped build it."""
    plugins = path.model_plugins
    bare = Variant(adapters=0, before_eval=False, random_init=True)
    if plugins and fails(bare):
        cleared = []
        for name in plugins:
            try:
                if not fails(replace(bare, drop_plugin=name)):
                    cleared.append(name)
            except GolfError:  # the recipe does not build without it: that plugin cannot be tested alone
                continue
        if len(cleared) == 1:
            return f"plugin {cleared[0]!r} (the model built without it passes)"
    return f"the model (plugins: {', '.join(plugins) or 'none'})"


# ----------------------------------------------------------------------------- the run-time probes


def _fail(entry: dict, message: str, culprit: str) -> dict:
    return {**entry, "status": FAIL, "message": f"{message}; culprit: {culprit}", "culprit": culprit}


def probe_c1(path: ScoringPath, tokens: Tensor, cuts: list[int], seed: int) -> dict:
    """C1 through the whole scoring path at the given cut points."""
    t0 = time.perf_counter()
    tol = tolerance(path.device).c1
    found = causal_deviations(path, tokens, cuts, seed=seed)
    worst = max(f["before"] for f in found)
    entry = {"status": PASS if worst <= tol else FAIL, "worst_deviation": worst, "tolerance": tol,
             "cut_points": cuts, "reach": min(f["after"] for f in found), "prefix_targets": tokens.numel() - 1,
             "path": describe(path)}
    if entry["status"] == FAIL:
        p = max(found, key=lambda f: f["before"])["cut"]

        def fails(variant: Variant) -> bool:
            return causal_deviations(path, tokens, [p], variant, seed)[0]["before"] > tol

        entry = _fail(entry, f"scores at positions <= {p} moved by {worst:.3g} nats when the stream after {p} "
                             f"changed (tolerance {tol:g})", isolate(path, fails))
    entry["seconds"] = time.perf_counter() - t0
    return entry


def probe_c3(path: ScoringPath, tokens: Tensor, batch_sizes: list[int]) -> dict:
    """Batching invariance: the same prefix scored with each batch size gives the same scores."""
    t0 = time.perf_counter()
    tol = tolerance(path.device).c3
    worst = batching_deviation(path, tokens, batch_sizes)
    entry = {"status": PASS if worst <= tol else FAIL, "worst_deviation": worst, "tolerance": tol,
             "batch_seqs": batch_sizes, "prefix_targets": tokens.numel() - 1, "path": describe(path)}
    if entry["status"] == FAIL:
        def fails(variant: Variant) -> bool:
            return batching_deviation(path, tokens, batch_sizes, variant) > tol

        entry = _fail(entry, f"scores changed by {worst:.3g} nats between batch_seqs {batch_sizes} "
                             f"(tolerance {tol:g}): a position's score depends on the other rows of its call "
                             f"or on state changed inside adjust", isolate(path, fails))
    entry["seconds"] = time.perf_counter() - t0
    return entry


def run_probes(path: ScoringPath, val_tokens: Tensor, seed: int) -> dict[str, dict]:
    """The probes every `golf run` and `golf eval` makes: C1 at a few cut points and C3 at batch
    sizes 1 and the configured one, on a prefix crossing a chunk boundary when adapters chunk."""
    n = probe_prefix(path, val_tokens.numel() - 1)
    tokens = val_tokens[: n + 1]
    try:
        return {"c1_causal": probe_c1(path, tokens, cut_points(path, n), seed),
                "c3_score_before_update": probe_c3(path, tokens, [path.batch_seqs, 1 if path.batch_seqs > 1 else 2])}
    except ComplianceError as e:  # the probe's own scoring broke a checked condition (C2, C4)
        skipped = {"status": NOT_CHECKED, "note": f"the probe's scoring failed: {e}"}
        return {"c1_causal": skipped, "c3_score_before_update": skipped, "probe_error": e}


# ----------------------------------------------------------------------------- the record


def hardware(device: torch.device, world_size: int) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    challenge = device.type == "cuda" and world_size == 8 and "H100" in name
    return {"device": name, "world_size": world_size, "challenge_hardware": challenge}


def time_entry(seconds: float, recipe_cap: float, cap_key: str, hw: dict, slack: float = 0.0) -> dict:
    """A time budget: the recipe's cap when it sets one, else the challenge's on 8xH100 only.
    `slack` lets the step that crossed a training cap finish, as the challenge's loop does."""
    if recipe_cap > 0:
        ok = seconds <= recipe_cap + slack
        return {"status": PASS if ok else FAIL, "seconds": seconds, "cap": recipe_cap, "cap_source": cap_key,
                **({} if ok else {"message": f"{seconds:.1f} s exceeds {cap_key} = {recipe_cap:g} s", "culprit": cap_key})}
    where = f"{hw['world_size']}x {hw['device']}"
    if hw["challenge_hardware"]:
        ok = seconds <= TIME_CAP_SECONDS + slack
        return {"status": PASS if ok else FAIL, "seconds": seconds, "cap": TIME_CAP_SECONDS, "cap_source": "the challenge (8xH100)",
                **({} if ok else {"message": f"{seconds:.1f} s exceeds the challenge's {TIME_CAP_SECONDS:g} s",
                                  "culprit": "the run"})}
    return {"status": NOT_CHECKED, "seconds": seconds, "cap": None,
            "note": f"measured on {where}; the challenge's {TIME_CAP_SECONDS:g} s cap applies to 8xH100, and the recipe sets none"}


def compliance_record(config: RunConfig, stages: dict, probes: dict, artifact, train_seconds: float | None,
                      train_steps: int, hw: dict) -> dict:
    """The compliance record stored with a run's result (every figure measured in this run)."""
    scored = [s for s in stages.values() if s.get("legal", True)]
    errors = [s for s in stages.values() if not s.get("legal", True)]
    c2 = {"status": PASS, "max_abs_logsumexp": max((s["checks"]["c2_max_deviation"] for s in scored), default=None),
          "tolerance": NORMALIZATION_TOL, "batches_checked": sum(s["checks"]["c2_normalized_batches"] for s in scored)}
    c4 = {"status": PASS, "scored": [s["targets"] for s in scored], "expected": stages_expected(stages)}
    for stage in errors:
        if stage["condition"] == "C4":
            c4 = _fail(c4, stage["error"], _adapter(stage["culprit"]) or "the eval loop")
        else:
            c2 = _fail(c2, stage["error"], _adapter(stage["culprit"]) or "the model")
    probe_error = probes.get("probe_error")
    if probe_error is not None and c2["status"] == PASS:
        c2 = _fail(c2, f"probe: {probe_error}", _adapter(probe_error.culprit) or "the model")
    final = list(stages.values())[-1]
    budget = {"status": PASS if artifact.within_budget else FAIL, "bytes": artifact.total_bytes, "budget": artifact.budget_bytes}
    if not artifact.within_budget:
        budget = _fail(budget, f"artifact is {artifact.total_bytes:,} bytes, {artifact.total_bytes - artifact.budget_bytes:,} "
                               f"over the {artifact.budget_bytes:,}-byte budget", "the artifact (model + code)")
    return {
        "c1_causal": probes["c1_causal"],
        "c2_normalized": c2,
        "c3_score_before_update": probes["c3_score_before_update"],
        "c4_each_target_once": c4,
        "artifact_budget": budget,
        "train_time": time_entry(train_seconds, config.train.max_wallclock_seconds, "[train] max_wallclock_seconds", hw,
                                 slack=train_seconds / max(train_steps, 1)) if train_seconds is not None else
                      {"status": NOT_CHECKED, "note": "no training here (a re-score); see the run's own result.json"},
        "eval_time": {**time_entry(final["eval_seconds"] + final["warmup_seconds"], config.eval.time_cap_seconds,
                                   "[eval] time_cap_seconds", hw),
                      "stage": list(stages)[-1], "scoring_seconds": final["eval_seconds"],
                      "warmup_seconds": final["warmup_seconds"]},
        "hardware": hw,
    }


def _adapter(name: str | None) -> str | None:
    return None if name is None else f"eval adapter {name!r}"


def stages_expected(stages: dict) -> int | None:
    return next((s["checks"]["c4_targets_expected"] for s in stages.values() if s.get("legal", True)), None)


def entries(record: dict) -> dict[str, dict]:
    """The record's checks (every item with a status)."""
    return {name: item for name, item in record.items() if isinstance(item, dict) and "status" in item}


def violations(record: dict) -> list[str]:
    """One line per failed check: the condition, what was measured and the culprit."""
    return [f"{name}: {item['message']}" for name, item in entries(record).items() if item["status"] == FAIL]


def summary(record: dict) -> str:
    """One line: each check's name and PASS / FAIL / NOT-CHECKED."""
    return " ".join(f"{name}:{item['status'].upper().replace(' ', '-')}" for name, item in entries(record).items())


# ----------------------------------------------------------------------------- `golf audit`: the deeper probes


def _row(check: str, status: str, figures: str, culprit: str = "") -> dict:
    return {"check": check, "status": status, "figures": figures, "culprit": culprit}


def audit_c1(path: ScoringPath, tokens: Tensor, seed: int) -> dict:
    cuts = cut_points(path, tokens.numel() - 1, many=True)
    entry = probe_c1(path, tokens, cuts, seed)
    figures = (f"worst {entry['worst_deviation']:.3g} nats at positions <= p (tolerance {entry['tolerance']:g}); "
               f"{len(cuts)} cut points {cuts[0]}..{cuts[-1]}; reach {entry['reach']:.3g}; {entry['seconds']:.1f} s")
    return _row("C1 causal (many cut points)", entry["status"], figures, entry.get("culprit", ""))


def audit_c2(path: ScoringPath, tokens: Tensor, samples: int = 512) -> dict:
    """Sampled full distributions in float64: finite, non-negative, summing to 1."""
    rows = _rows(path, tokens, Variant())
    pick = torch.linspace(0, rows.size(0) - 1, min(samples, rows.size(0))).long().to(rows.device)
    rows = rows[pick]
    rows = rows[~rows.isnan().all(-1)].double()  # positions another rank scored
    p = rows.exp()  # -inf log-probabilities are legitimate zeros; NaN and +inf are not
    finite = path.reduce_max(float(rows.isnan().any() or (rows == float("inf")).any())) == 0
    min_p = -path.reduce_max(-float(p.min())) if p.numel() else 0.0
    dev = path.reduce_max(float((p.sum(-1) - 1).abs().max())) if p.numel() else 0.0
    ok = finite and min_p >= 0 and dev <= NORMALIZATION_TOL
    figures = f"{rows.size(0)} distributions: {'finite' if finite else 'NaN or +inf found'}, min p {min_p:.3g}, max |sum p - 1| {dev:.3g} (tolerance {NORMALIZATION_TOL:g})"
    return _row("C2 full distributions (float64)", PASS if ok else FAIL, figures, "" if ok else describe(path))


def audit_c3(path: ScoringPath, tokens: Tensor) -> list[dict]:
    """Batching invariance at several batch sizes, for the configured chunk size and (with adapters,
    which chunk) a smaller one that cuts the prefix into at least three chunks."""
    batch_sizes = sorted({1, 2, 3, path.batch_seqs})
    smaller = max(1, min(path.chunk_tokens // 2, (tokens.numel() - 1) // 3))
    chunk_sizes = [path.chunk_tokens] + ([smaller] if path.adapter_names and smaller < path.chunk_tokens else [])
    out = []
    tol = tolerance(path.device).c3
    for chunk in chunk_sizes:
        t0 = time.perf_counter()
        variant = Variant(chunk_tokens=chunk)
        worst = batching_deviation(path, tokens, batch_sizes, variant)
        culprit = ""
        if worst > tol:
            culprit = isolate(path, lambda v: batching_deviation(path, tokens, batch_sizes, replace(v, chunk_tokens=chunk)) > tol)
        out.append(_row(f"C3 batching (chunk_tokens {chunk})", PASS if worst <= tol else FAIL,
                        f"worst {worst:.3g} nats across batch_seqs {batch_sizes} (tolerance {tol:g}); "
                        f"{time.perf_counter() - t0:.1f} s", culprit))
    return out


def audit_documents(path: ScoringPath, val_tokens: Tensor, seed: int) -> dict:
    """Plugins claiming document awareness: with every block silenced (the model position-wise but
    for its embedding plugins) and only document-aware adapters, rewriting the previous document
    changes no score from the BOS to the end of its document (or of its chunk, since an adapter
    may legitimately learn from observed documents). The first suitable BOS of the split is used,
    past the first chunk when an adapter chunks (so a mixer is past its warm-up)."""
    check = "document boundaries"
    if not path.document_aware:
        return _row(check, NOT_CHECKED, "no enabled plugin claims document awareness")
    total = val_tokens.numel() - 1
    chunked = any(name in path.document_aware for name in path.adapter_names)
    chunk = path.chunk_tokens if chunked else total + 1
    bos = [int(i) for i in (val_tokens[:total] == path.bos_id).nonzero().flatten()]
    spans = []  # (first perturbed token, BOS position, end of the compared positions)
    for previous, b in zip([-1, *bos], bos):
        lo = max(previous + 1, (b // chunk) * chunk + 1 if chunked else 1)
        nxt = next((i for i in bos if i > b), total)
        if lo < b:
            spans.append((lo, b, min(nxt, (b // chunk + 1) * chunk, b + 2 * path.seq_len, total)))
    if not spans:
        return _row(check, NOT_CHECKED, "no BOS follows a previous document in the validation split")
    lo, b, hi = next((s for s in spans if s[1] >= path.chunk_tokens), spans[0]) if chunked else spans[0]
    tokens = val_tokens[: hi + 1]
    variant = Variant(document_probe=True)
    a = _rows(path, tokens, variant)
    c = _rows(path, _perturbed(tokens, lo, b, path.vocab_size, seed), variant)
    worst = path.reduce_max(_max_abs(a[b:hi], c[b:hi]))
    tol = tolerance(path.device).c1
    figures = (f"previous document's tokens {lo}..{b - 1} rewritten: worst change at positions {b}..{hi - 1} "
               f"{worst:.3g} (tolerance {tol:g}); claimed by {', '.join(path.document_aware)}")
    return _row(check, PASS if worst <= tol else FAIL, figures,
                "" if worst <= tol else f"one of {', '.join(path.document_aware)}")


def audit_budgets(result: dict | None) -> list[dict]:
    """The run's own budget entries (from its result.json); none without a run."""
    if result is None:
        return [_row("budgets", NOT_CHECKED, "a recipe audit trains nothing: no artifact bytes or times to check")]
    out = []
    for name in ("artifact_budget", "train_time", "eval_time"):
        item = result["compliance"][name]
        if "bytes" in item:
            figures = f"{item['bytes']:,} bytes of {item['budget']:,}"
        else:
            figures = f"{item.get('seconds', 0.0):.1f} s" + (f" of {item['cap']:g} s ({item['cap_source']})" if item.get("cap")
                                                             else f"; {item.get('note', '')}")
        out.append(_row(name, item["status"], figures, item.get("culprit", "")))
    return out


def deep_audit(path: ScoringPath, val_tokens: Tensor, seed: int, result: dict | None) -> list[dict]:
    """Every probe of `golf audit`, as table rows {check, status, figures, culprit}."""
    n = probe_prefix(path, val_tokens.numel() - 1)
    tokens = val_tokens[: n + 1]
    try:
        rows = [audit_c2(path, tokens)]
    except ComplianceError as e:
        return [_row("C2 normalized", FAIL, str(e), _adapter(e.culprit) or "the model")]
    rows += [audit_c1(path, tokens, seed), *audit_c3(path, tokens), audit_documents(path, val_tokens, seed),
             *audit_budgets(result)]
    return rows
