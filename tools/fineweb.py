"""Downloading the challenge's FineWeb export (fineweb10B_sp1024 and its siblings) from the
Hugging Face hub, as the challenge's cached_challenge_fineweb.py does; only `golf data fineweb`
calls it, never a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable

from golfcore.data import Corpus, open_corpus, shard_files
from golfcore.errors import DataError

from .corpora import check_tokenizer, one_line, sha256_file, write_meta

FINEWEB_REPO_ID = "willdepueoai/parameter-golf"
FINEWEB_REMOTE_PREFIX = "matched_10B_docs2m_seed1337"
_FINEWEB_FALLBACK = {
    "sp1024": {
        "files_train": 25,
        "files_val": 1,
        "tokenizer_files": ["tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"],
    }
}
"""Shard counts of the published export, used only when its manifest lacks a dataset entry."""


class _Hub:
    """Fetches files of the published export into a corpus folder, skipping those present.

    `download` has hf_hub_download's signature: it saves <local_dir>/<filename> and returns its
    path, raising huggingface_hub's EntryNotFoundError for a file the repo does not have.
    """

    def __init__(self, download: Callable[..., str], repo_id: str, prefix: str, staging: Path):
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

        self.download, self.repo_id, self.prefix, self.staging = download, repo_id, prefix, staging
        self.not_found = EntryNotFoundError
        self.offline = LocalEntryNotFoundError  # a subclass of EntryNotFoundError: no network, not "no file"

    def get(self, remote: str, dest: Path, missing_ok: bool = False) -> bool:
        """Fetch <prefix>/<remote> to dest; False if it is absent from the repo and missing_ok."""
        if dest.exists():
            return True
        filename = f"{self.prefix}/{remote}"
        try:
            path = self.download(repo_id=self.repo_id, filename=filename, repo_type="dataset", local_dir=str(self.staging))
        except Exception as e:  # network, auth, disk: one line; re-running the command resumes
            if isinstance(e, self.not_found) and not isinstance(e, self.offline):
                if missing_ok:
                    return False
                raise DataError(f"{filename} is not in dataset {self.repo_id}: {one_line(e)}") from None
            raise DataError(f"downloading {filename} from dataset {self.repo_id} failed: {one_line(e)}") from None
        source = Path(path).resolve(strict=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.staging.resolve() in source.parents:
            os.replace(source, dest)
        else:  # served from a shared cache: copy, leave the cache intact
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        return True


def _fineweb_plan(manifest: dict, variant: str, name: str) -> tuple[int, int, list[str]]:
    """(train shards, val shards, tokenizer files) the manifest lists for a dataset.

    The manifest (the challenge exporter's) has datasets[{name, tokenizer_name, stats:
    {files_train, files_val}}] and tokenizers[{name, model_path, vocab_path}]; paths are relative
    to the export root. Without an entry for the dataset, the known published counts are used.
    """
    entry = next((d for d in manifest.get("datasets", []) if isinstance(d, dict) and d.get("name") == name), None)
    if entry is None:
        if variant not in _FINEWEB_FALLBACK:
            raise DataError(f"dataset {name} is not listed in the manifest of the published export")
        known = _FINEWEB_FALLBACK[variant]
        return known["files_train"], known["files_val"], list(known["tokenizer_files"])
    try:
        stats = entry["stats"]
        files_train, files_val = int(stats["files_train"]), int(stats["files_val"])
        tok = next(t for t in manifest.get("tokenizers", []) if t.get("name") == entry["tokenizer_name"])
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError):
        raise DataError(f"manifest entry for {name} lacks shard counts or its tokenizer") from None
    tokenizer_files = [str(tok[k]) for k in ("model_path", "vocab_path") if tok.get(k)]
    if not tokenizer_files or not tokenizer_files[0].endswith(".model"):
        raise DataError(f"manifest entry for {name} has no sentencepiece model_path")
    return files_train, files_val, tokenizer_files


def download_fineweb(
    root: Path,
    variant: str = "sp1024",
    train_shards: int = 1,
    repo_id: str = FINEWEB_REPO_ID,
    download: Callable[..., str] | None = None,
    remote_prefix: str = FINEWEB_REMOTE_PREFIX,
) -> Corpus:
    """Fetch the challenge's FineWeb export (val shards, the first train_shards train shards,
    tokenizer) into <root>/fineweb10B_<variant>, like the challenge's cached_challenge_fineweb.py.

    Manifest-driven: the manifest says how many shards exist, and asking for more is an error.
    Files already present are not fetched again, so re-running with more shards only adds them.
    Train shard numbering starts at 000000 in newer exports and 000001 in the original one;
    the first shard's presence decides.
    """
    root = Path(root)
    if not re.fullmatch(r"sp\d+", variant):
        raise DataError(f"variant {variant!r}: golf reads the sentencepiece variants (sp1024, sp2048, ...)")
    if train_shards < 1:
        raise DataError(f"train_shards must be >= 1, got {train_shards}")
    if download is None:
        from huggingface_hub import hf_hub_download as download
    name = f"fineweb10B_{variant}"
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    hub = _Hub(download, repo_id, remote_prefix, directory / ".download")
    try:
        _fetch_fineweb(hub, directory, variant, train_shards)
    finally:
        shutil.rmtree(directory / ".download", ignore_errors=True)
    check_tokenizer(directory / "tokenizer.model")
    fingerprint = {
        "corpus": name,
        "repo_id": repo_id,
        "remote_prefix": remote_prefix,
        "manifest_sha256": sha256_file(directory / "manifest.json"),
        "train_shards": [p.name for p in shard_files(directory, "train")],
        "val_shards": [p.name for p in shard_files(directory, "val")],
        "tokenizer_sha256": sha256_file(directory / "tokenizer.model"),
    }
    write_meta(directory, name, fingerprint)
    return open_corpus(name, directory, 0, f"fetch it again with: golf data fineweb --variant {variant}")


def _fetch_fineweb(hub: _Hub, directory: Path, variant: str, train_shards: int) -> None:
    """The manifest, then every val shard, the first train_shards train shards and the tokenizer."""
    name = directory.name
    hub.get("manifest.json", directory / "manifest.json")
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except ValueError as e:
        (directory / "manifest.json").unlink()
        raise DataError(f"manifest.json of {hub.repo_id}/{hub.prefix} is not valid JSON ({e}); run the command again") from None
    files_train, files_val, tokenizer_files = _fineweb_plan(manifest, variant, name)
    if train_shards > files_train:
        raise DataError(f"{name} has only {files_train} train shards on {hub.repo_id}, requested {train_shards}")

    remote_dir = f"datasets/{name}"
    for i in range(files_val):
        hub.get(f"{remote_dir}/fineweb_val_{i:06d}.bin", directory / f"fineweb_val_{i:06d}.bin")
    if (directory / "fineweb_train_000001.bin").exists() and not (directory / "fineweb_train_000000.bin").exists():
        first = 1
    else:
        first = 0 if hub.get(f"{remote_dir}/fineweb_train_000000.bin", directory / "fineweb_train_000000.bin", missing_ok=True) else 1
    for i in range(first, first + train_shards):
        hub.get(f"{remote_dir}/fineweb_train_{i:06d}.bin", directory / f"fineweb_train_{i:06d}.bin")
    for remote in tokenizer_files:
        hub.get(remote, directory / f"tokenizer{Path(remote).suffix}")
