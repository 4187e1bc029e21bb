"""Per-target cost of the token n-gram tilt's table: `python -m golf_tools.bench_ngram_tilt
[--device cuda] [--targets N] [--chunk N] [--vocab V] [--order K]`.

A random stream of a repeated pattern (a tenth of its tokens replaced: many contexts recur, as
in text) fed chunk by chunk as the eval loop does: the hints of the chunk's positions, then
`observe` of its targets. Prints microseconds per target of each (docs/techniques.md §14)."""

from __future__ import annotations

import argparse
import time

import torch
from golf_plugins.ngram_tilt import Config, NgramTilt

import golfcore as golf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--targets", type=int, default=1 << 20)
    parser.add_argument("--chunk", type=int, default=32768)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--order", type=int, default=16)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tilt = NgramTilt(Config(order=args.order))
    tilt.start(None, golf.EvalContext.local(args.vocab, args.targets, args.chunk, device=device))
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, args.vocab, (args.targets // 8 + 1,), generator=g).repeat(8)[: args.targets + 1]
    noise = torch.rand(stream.numel(), generator=g) < 0.1
    stream[noise] = torch.randint(0, args.vocab, (int(noise.sum()),), generator=g)
    stream = stream.to(device)
    offsets = torch.arange(1 - tilt.history_len, 1, device=device)
    seconds = {"hints": 0.0, "observe": 0.0}
    for lo in range(0, args.targets, args.chunk):
        positions = torch.arange(lo, min(lo + args.chunk, args.targets), device=device)  # inputs; targets at +1
        idx = positions[:, None] + offsets
        history = torch.where(idx >= 0, stream[idx.clamp_min(0)], -1)  # [N, k-1], as the eval loop builds it
        sync()
        t0 = time.perf_counter()
        tilt.hints(history)
        sync()
        t1 = time.perf_counter()
        tilt.observe(stream[positions + 1])
        sync()
        seconds["hints"] += t1 - t0
        seconds["observe"] += time.perf_counter() - t1
    print(f"ngram_tilt on {device}: {args.targets:,} targets in chunks of {args.chunk:,}, order {args.order}, "
          f"vocabulary {args.vocab}; table: {tilt.total.numel():,} contexts, {tilt.pair_keys.numel():,} pairs")
    for phase, s in seconds.items():
        print(f"  {phase}: {s * 1e6 / args.targets:.3f} us per target ({s:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
