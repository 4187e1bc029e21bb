"""Planted violation (training/validation overlap, issue #2127): a copy of a corpus whose first
training shard has the validation split's first `documents` documents appended."""

import shutil
from pathlib import Path

import numpy as np

from golfcore.data import Corpus, read_shard, write_shard


BOS_ID = 1  # the id golf's tokenizers give BOS (golf_tools.tokenizer.train_tokenizer)


def copy_with_leak(corpus: Corpus, out: Path, documents: int) -> Path:
    """A shards folder (data.shards) with the copy; the tokenizer beside it as tokenizer.model."""
    out.mkdir(parents=True)
    for path in corpus.val_files:
        shutil.copy(path, out / path.name)
    for path in corpus.train_files[1:]:
        shutil.copy(path, out / path.name)
    val = read_shard(corpus.val_files[0])
    starts = np.flatnonzero(val == BOS_ID)
    leaked = val[: starts[documents]] if starts.size > documents else val
    write_shard(out / corpus.train_files[0].name, np.concatenate([read_shard(corpus.train_files[0]), leaked]))
    shutil.copy(corpus.tokenizer_path, out / "tokenizer.model")
    return out
