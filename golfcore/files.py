"""File helpers: atomic writes (a reader sees the old file or the complete new one, never half of
one) and content digests."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to a hidden temporary file beside path, then rename it over path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """data as indented JSON, atomically; values JSON lacks (paths, ...) are written as str()."""
    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in blocks (shards and checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
