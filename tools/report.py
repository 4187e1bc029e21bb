"""An ablation's outputs, computed from its plan.json and its run directories alone.

`render(directory)` reads every run's result.json (or its `.failed` note), compares each
variant with the reference (golf_tools.stats) and writes ablation.json (everything, per-seed
values included), table.md, results.csv (one row per run) and delta.png (Δ bpb per variant
with its 95% CI and the reference's seed-to-seed std as a band). `golf ablate --report DIR`
is this function; so the files can always be rebuilt from the runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from .ablate import Plan, Variant, failed_marker, read_result, run_path
from .stats import Bar, Spread, compare, judge

SIGN_NOTE = {
    "leave-one-out": "Δ = variant − reference: positive means the removed plugin helps",
    "add": "Δ = reference − variant: positive means the added plugin helps",
}


def _run_record(directory: Path, variant: Variant, seed: int) -> dict:
    run_dir = run_path(directory, variant.name, seed)
    record = {"variant": variant.name, "seed": seed, "run_dir": str(run_dir.relative_to(directory)),
              "kind": "re-scored" if variant.rescored else "trained", "status": "missing",
              "val_bpb": None, "val_loss": None, "error": None}
    result_file = run_dir / "result.json"
    if result_file.is_file():
        result = read_result(run_dir)
        record.update(status="done", val_bpb=result["val_bpb"], val_loss=result["stages"][result["final_stage"]]["val_loss"])
    elif failed_marker(run_dir).is_file():
        record.update(status="failed", error=failed_marker(run_dir).read_text(encoding="utf-8").strip())
    return record


def _spread(runs: list[dict], key: str) -> dict | None:
    values = [r[key] for r in runs if r["status"] == "done"]
    return dataclasses.asdict(Spread.of(values)) if values else None


def collect(directory: Path, bar: Bar | None = None) -> dict:
    """Everything the outputs show, as one JSON-able dict."""
    directory = Path(directory)
    plan = Plan.load(directory)
    bar = bar or plan.bar
    groups = []
    for variant in plan.variants:
        runs = [] if variant.impossible else [_run_record(directory, variant, s) for s in plan.seeds]
        groups.append({**dataclasses.asdict(variant), "runs": runs,
                       "val_bpb": _spread(runs, "val_bpb"), "val_loss": _spread(runs, "val_loss"), "comparison": None})
    reference, variants = groups[0], groups[1:]
    ref_done = {r["seed"]: r for r in reference["runs"] if r["status"] == "done"}
    comparisons = []
    for group in variants:
        pairs = [(ref_done[r["seed"]], r) for r in group["runs"] if r["status"] == "done" and r["seed"] in ref_done]
        if pairs:
            c = compare([a["val_bpb"] for a, _ in pairs], [a["val_loss"] for a, _ in pairs],
                        [b["val_bpb"] for _, b in pairs], [b["val_loss"] for _, b in pairs], plan.sign)
            comparisons.append(c)
            group["comparison"] = c
    judge(comparisons, bar)
    for group in variants:
        if group["comparison"] is not None:
            group["comparison"] = dataclasses.asdict(group["comparison"])
    std_bpb, std_nats = (reference[k]["std"] if reference[k] else None for k in ("val_bpb", "val_loss"))
    return {
        "recipe": plan.recipe, "mode": plan.mode, "full_recipe": plan.full_recipe, "seeds": plan.seeds,
        "overrides": {"set": plan.sets, "with": plan.with_, "without": plan.without, "plugins_dirs": plan.plugins_dirs},
        "bar": dataclasses.asdict(bar), "sign": SIGN_NOTE[plan.mode],
        "noise_floor": {"bpb": std_bpb, "nats": std_nats},
        "reference": reference, "variants": variants,
    }


def render(directory: Path, bar: Bar | None = None) -> dict:
    """Collect and write every output file; returns what ablation.json holds."""
    directory = Path(directory)
    data = collect(directory, bar)
    (directory / "ablation.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (directory / "table.md").write_text(table_markdown(data), encoding="utf-8")
    _write_csv(directory / "results.csv", data)
    _plot(directory / "delta.png", data)
    return data


# ----------------------------------------------------------------------------- table.md


def _num(x: float | None, digits: int = 4, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _mean_std(spread: dict | None) -> str:
    if spread is None:
        return "–"
    return _num(spread["mean"]) + (f" ± {_num(spread['std'])}" if spread["std"] is not None else "")


def _delta(c: dict, key: str) -> str:
    ci = c[f"ci_{key}"]
    text = _num(c[f"delta_{key}"], signed=True)
    return text + (f" [{_num(ci[0], signed=True)}, {_num(ci[1], signed=True)}]" if ci else "")


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def _describe(group: dict) -> str:
    name = group["name"]
    takes = (group["removed"] or group["added"])[1:]
    if takes:
        name += f" (with {', '.join(takes)}: " + ("they require it)" if group["removed"] else "it requires them)")
    return name


def table_markdown(data: dict) -> str:
    ref, floor, bar = data["reference"], data["noise_floor"], data["bar"]
    ref_n = sum(r["status"] == "done" for r in ref["runs"])
    lines = [
        f"# Ablation of {data['full_recipe'] or data['recipe']} ({data['mode']})",
        "",
        f"Seeds {', '.join(map(str, data['seeds']))}. Reference ({data['recipe']}): val_bpb {_mean_std(ref['val_bpb'])}, "
        f"val_loss {_mean_std(ref['val_loss'])} nats ({ref_n} seeds). "
        f"Noise floor (reference seed-to-seed std): {_num(floor['bpb'])} bpb, {_num(floor['nats'])} nats.",
        "",
        f"{data['sign']}. Bar: Holm-adjusted paired t-test p < {bar['alpha']} and |Δ| ≥ {bar['min_delta_nats']} nats. "
        "Re-scored variants re-evaluate the reference's artifact of the same seed (the plugin acts only at evaluation).",
        "",
        "| variant | how | seeds | val_bpb | val_loss | Δ bpb [95% CI] | Δ nats [95% CI] | p paired | p Welch | p Holm | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in data["variants"]:
        if group["impossible"]:
            lines.append(f"| {_describe(group)} | – | – | – | – | – | – | – | – | – | impossible: {group['impossible']} |")
            continue
        done = sum(r["status"] == "done" for r in group["runs"])
        c = group["comparison"]
        cells = [_delta(c, "bpb"), _delta(c, "nats"), _p(c["p_paired"]), _p(c["p_welch"]), _p(c["p_adjusted"]),
                 c["verdict"]] if c else ["–"] * 5 + ["no finished pair"]
        how = "re-scored" if group["rescored"] else "retrained"
        lines.append(f"| {_describe(group)} | {how} | {done}/{len(group['runs'])} | {_mean_std(group['val_bpb'])} | "
                     f"{_mean_std(group['val_loss'])} | " + " | ".join(cells) + " |")
    problems = [r for g in [ref, *data["variants"]] for r in g["runs"] if r["status"] != "done"]
    if problems:
        lines += ["", "Runs without a result:", ""]
        lines += [f"- {r['variant']} seed {r['seed']}: {r['status']}" + (f": {r['error']}" if r["error"] else "")
                  for r in problems]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- results.csv, delta.png


def _write_csv(path: Path, data: dict) -> None:
    columns = ["variant", "seed", "kind", "status", "val_bpb", "val_loss", "run_dir", "error"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for group in [data["reference"], *data["variants"]]:
            writer.writerows(group["runs"])


VERDICT_COLOURS = {"helps": "tab:green", "hurts": "tab:red"}


def _plot(path: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [g for g in data["variants"] if g["comparison"]]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * max(len(shown), 1)))
    floor = data["noise_floor"]["bpb"]
    if floor:
        ax.axvspan(-floor, floor, color="0.88", label=f"noise floor: ±{floor:.4f} bpb (reference seed std)")
    ax.axvline(0, color="0.4", linewidth=0.8)
    for y, group in enumerate(shown):
        c = group["comparison"]
        colour = VERDICT_COLOURS.get(c["verdict"], "tab:gray")
        ci = c["ci_bpb"]
        err = [[c["delta_bpb"] - ci[0]], [ci[1] - c["delta_bpb"]]] if ci else None
        ax.errorbar(c["delta_bpb"], y, xerr=err, fmt="o", color=colour, capsize=4)
        ax.annotate(c["verdict"], (c["delta_bpb"], y), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=7, color=colour)
    ax.set_yticks(range(len(shown)), [g["name"] + (" (re-scored)" if g["rescored"] else "") for g in shown])
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("Δ val_bpb (positive: the plugin helps), mean over seeds with 95% CI")
    ax.set_title(f"{data['full_recipe'] or data['recipe']}: {data['mode']}, seeds {', '.join(map(str, data['seeds']))}",
                 fontsize=9)
    if floor:
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
