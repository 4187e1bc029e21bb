"""Bytes against bpb of the export choices, on one set of trained weights:
`python -m golf_tools.export_sweep RECIPE [--set ...] [--out FILE.json]`.

Trains the recipe once (as `golf run` does, without its eval adapters), takes the calibration
batches from the training stream after the last step, then exports the same weights with every
quantizer and compressor below, loads each artifact back, and scores it (non-overlapping windows,
no adapters: the quantizer's damage only). Prints a markdown table: artifact model bytes, the
projection before training for that quantizer, decompression seconds, round-trip val_bpb."""

from __future__ import annotations

import argparse
import json
import time
from golf_plugins import brotli as brotli_plugin
from golf_plugins import gptq, gptq_lite, lzma, pergroup

from golfcore.artifact import Int8Quantizer, ZstdCompressor, pack, projected_model_bytes, unpack
from golfcore.calibration import collect_input_stats
from golfcore.data import DistributedTokenLoader, load_val_tokens
from golfcore.params import param_specs
from golfcore.plugins import discover
from golfcore.recipe import load_recipe
from golfcore.run import Session, _eager_logits
from golfcore.train import Trainer


def quantizers(float_max_numel: int) -> dict[str, object]:
    g = gptq.Config
    return {
        "int8 (core)": Int8Quantizer(float_max_numel),
        "gptq_lite (golf default)": gptq_lite.GptqLiteQuantizer(float_max_numel),
        "gptq_lite scale_floor": gptq_lite.GptqLiteQuantizer(float_max_numel, scale_floor=True),
        "sdclip, no Hessian": gptq.GptqQuantizer(g(calibration_batches=0, lqer_rank=0), float_max_numel),
        "gptq": gptq.GptqQuantizer(g(lqer_rank=0), float_max_numel),
        "gptq + lqer (default)": gptq.GptqQuantizer(g(), float_max_numel),
        "gptq + lqer + awq": gptq.GptqQuantizer(g(awq_top_k=1), float_max_numel),
    }


def compressors() -> dict[str, tuple[object, bool]]:
    """name -> (compressor, smallest_layout)."""
    return {
        "zstd-22": (ZstdCompressor(22), True),
        "lzma-6": (lzma.LzmaCompressor(6), True),
        "brotli-11": (brotli_plugin.BrotliCompressor(), True),
        "pergroup/brotli": (pergroup.PerGroupCompressor("brotli"), False),
        "pergroup/auto": (pergroup.PerGroupCompressor("auto"), False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--out", default=None)
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--quantizers", default="", help="comma-separated names from the table (default: all)")
    parser.add_argument("--compressors", default="", help="comma-separated names from the table (default: all)")
    args = parser.parse_args(argv)
    available = discover()
    config = load_recipe(args.recipe, available, args.sets)
    session = Session(config, available)
    model = session.build_model()
    loader = DistributedTokenLoader(session.corpus.train_files, 0, 1, session.dist.device)
    t0 = time.perf_counter()
    def progress(record: dict) -> None:
        if record.get("event") == "train":
            print(f"step {record['step']}/{record['of']} train_loss {record['train_loss']:.4f}", flush=True)

    trainer = Trainer(config, model, session.host, session.quantizer, loader, session.dist, None, progress)
    outcome = trainer.run()
    print(f"trained {outcome.steps} steps in {time.perf_counter() - t0:.0f}s", flush=True)
    t = config.train
    batches = [loader.next_batch(t.batch_tokens, t.seq_len, trainer.accum)[0] for _ in range(args.calibration_batches)]
    t0 = time.perf_counter()
    stats = collect_input_stats(model, batches, lambda x: _eager_logits(model, x, session.dist.device))
    print(f"calibration: {len(batches)} batches, {len(stats)} weights, {time.perf_counter() - t0:.1f}s", flush=True)
    val_tokens = load_val_tokens(session.corpus, config.data.max_val_tokens)
    state, specs = model.state_dict(), param_specs(model)
    pre = session.score(model, val_tokens, stride=config.eval_seq_len)
    print(f"pre-export val_bpb {pre.val_bpb:.4f} (live weights)", flush=True)
    rows = []
    chosen_q = [n for n in args.quantizers.split(",") if n]
    chosen_c = [n for n in args.compressors.split(",") if n]
    for qname, q in quantizers(config.export.float_max_numel).items():
        if chosen_q and qname not in chosen_q:
            continue
        if getattr(q, "calibration_batches", 0):
            q.calibrate(stats)
        projected = projected_model_bytes(model, q, config.export.float_max_numel)
        bpb = None
        for cname, (c, layout) in compressors().items():
            if chosen_c and cname not in chosen_c:
                continue
            t0 = time.perf_counter()
            blob = pack(state, specs, q, c, layout)
            pack_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = unpack(blob, {q.name: q}, {c.name: c})
            load_s = time.perf_counter() - t0
            if bpb is None:  # the compressors are lossless: one score per quantizer
                m = session.build_model()
                m.load_state_dict(back, strict=False)
                bpb = session.score(m, val_tokens, stride=config.eval_seq_len).val_bpb
            row = {"quantizer": qname, "compressor": cname, "backend": getattr(c, "backend", c.name), "model_bytes": len(blob),
                   "projected_model_bytes": projected, "pack_seconds": pack_s, "decompress_seconds": load_s,
                   "roundtrip_val_bpb": bpb}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{config.run.name}, {outcome.steps} steps, seed {config.run.seed}; pre-export val_bpb {pre.val_bpb:.4f}; "
          f"round trip on {session.data_label(val_tokens.numel() - 1)}, non-overlapping windows, no adapters\n")
    print("| quantizer | compressor | model bytes | projected | decompress s | round-trip val_bpb |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['quantizer']} | {r['compressor']}{' (' + r['backend'] + ')' if r['compressor'].endswith('auto') else ''} | "
              f"{r['model_bytes']:,} | {r['projected_model_bytes']:,} | {r['decompress_seconds']:.2f} | {r['roundtrip_val_bpb']:.4f} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"recipe": config.run.name, "steps": outcome.steps, "pre_export_val_bpb": pre.val_bpb, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
