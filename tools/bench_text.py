"""Benchmark text for `golf data tokenizer`, made locally: the running Python's standard-library
sources as JSON-lines documents, repeated with variation (each repetition changes the case of
some lines and words, so CaseOps has capitals to mark) until the file holds the asked size.

    python -m golf_tools.bench_text OUT.jsonl --megabytes 60
    golf data tokenizer OUT.jsonl --vocab-size 8192 --caseops --val-docs 500 --name bench

docs/data.md records what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sysconfig
from pathlib import Path

SKIP = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_sources() -> list[str]:
    """The UTF-8 .py files of this interpreter's standard library, sorted by path."""
    out = []
    for dirpath, dirnames, filenames in sorted(os.walk(sysconfig.get_paths()["stdlib"])):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        for name in sorted(filenames):
            if name.endswith(".py"):
                try:
                    out.append((Path(dirpath) / name).read_bytes().decode("utf-8"))
                except (OSError, UnicodeDecodeError):
                    continue
    return out


def vary(text: str, rng: random.Random) -> str:
    """The text with about one line in eight upper-cased or title-cased."""
    lines = text.splitlines(keepends=True)
    for i in range(len(lines)):
        r = rng.random()
        if r < 0.0625:
            lines[i] = lines[i].upper()
        elif r < 0.125:
            lines[i] = lines[i].title()
    return "".join(lines)


def write(path: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """Write documents until the file holds megabytes of UTF-8 text; (documents, bytes)."""
    rng = random.Random(seed)
    sources = [s for s in stdlib_sources() if s.strip()]
    docs = size = 0
    with open(path, "w", encoding="utf-8") as f:
        for round_ in range(10_000):
            for text in sources:
                doc = text if round_ == 0 else vary(text, rng)
                f.write(json.dumps({"text": doc}) + "\n")
                docs += 1
                size += len(doc.encode("utf-8"))
                if size >= megabytes * 1e6:
                    return docs, size
    return docs, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--megabytes", type=float, default=60)
    args = parser.parse_args()
    docs, size = write(args.out, args.megabytes)
    print(f"{args.out}: {docs:,} documents, {size / 1e6:.1f} MB of text")


if __name__ == "__main__":
    main()
