"""Downloading the challenge's FineWeb exports from the Hugging Face hub, as the challenge's
cached_challenge_fineweb.py does; only `golf data fineweb` calls it, never a run.

Where each variant is published (docs/data.md, "FineWeb"): sp1024 in the challenge's dataset
repo; sp4096 and sp8192 in the repo the SP4096/SP8192 records name (PR #1218, #1394); the
CaseOps export, sp8192_caseops, in the repo of PR #1729's record, with a byte sidecar beside
each val shard. Every export has the same layout under its root: manifest.json,
datasets/fineweb10B_<dataset>/fineweb_{train,val}_NNNNNN.bin (and fineweb_val_bytes_NNNNNN.bin),
tokenizers/<model and vocab>.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable

from dataclasses import dataclass

from golfcore.caseops import ALIASES as CASEOPS_NAMES, NAME as CASEOPS
from golfcore.data import Corpus, open_corpus, shard_files, sidecar_name
from golfcore.errors import DataError

from .corpora import check_tokenizer, one_line, sha256_file, write_meta

FINEWEB_REPO_ID = "willdepueoai/parameter-golf"
FINEWEB_REMOTE_PREFIX = "matched_10B_docs2m_seed1337"


@dataclass(frozen=True)
class Export:
    """Where a variant is published and what its manifest would say, for a manifest without an
    entry for it (counts from the records' READMEs)."""

    repo_id: str
    prefix: str  # the export's root folder in the repo
    dataset: str  # its folder under datasets/
    files_train: int
    files_val: int
    tokenizer_files: tuple[str, ...]
    transform: str = ""


EXPORTS = {
    "sp1024": Export(FINEWEB_REPO_ID, FINEWEB_REMOTE_PREFIX, "fineweb10B_sp1024", 25, 1,
                     ("tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab")),
    "sp4096": Export("kevclark/parameter-golf", "datasets", "fineweb10B_sp4096", 143, 1,
                     ("tokenizers/fineweb_4096_bpe.model", "tokenizers/fineweb_4096_bpe.vocab")),
    "sp8192": Export("kevclark/parameter-golf", "datasets", "fineweb10B_sp8192", 128, 1,
                     ("tokenizers/fineweb_8192_bpe.model", "tokenizers/fineweb_8192_bpe.vocab")),
    "sp8192_caseops": Export("romeerp/parameter-golf-caseops-v1", "datasets",
                             "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved", 80, 1,
                             ("tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",
                              "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.vocab"), CASEOPS),
}
"""The published exports golf knows; another spN is looked for in the challenge's repo."""


def export_of(variant: str) -> Export:
    if variant in EXPORTS:
        return EXPORTS[variant]
    if re.fullmatch(r"sp\d+", variant):
        return Export(FINEWEB_REPO_ID, FINEWEB_REMOTE_PREFIX, f"fineweb10B_{variant}", 0, 0, ())
    raise DataError(f"variant {variant!r}: golf reads sp1024, sp4096, sp8192, sp8192_caseops and other spN exports")


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


@dataclass
class _Plan:
    files_train: int
    files_val: int
    tokenizer_files: list[str]
    transform: str
    sidecars: bool


def _fineweb_plan(manifest: dict, export: Export) -> _Plan:
    """What the manifest lists for the export's dataset: shard counts, tokenizer files, the
    tokenizer's text transform, whether val shards have byte sidecars.

    The manifest (the challenge exporter's) has datasets[{name, tokenizer_name, stats:
    {files_train, files_val}, val_bytes_glob?}] and tokenizers[{name, model_path, vocab_path,
    text_transform?}]; paths are relative to the export root. Without an entry for the
    dataset, the known published counts are used.
    """
    name = export.dataset
    entry = next((d for d in manifest.get("datasets", []) if isinstance(d, dict) and d.get("name") == name), None)
    if entry is None:
        if not export.files_train:
            raise DataError(f"dataset {name} is not listed in the manifest of the published export")
        return _Plan(export.files_train, export.files_val, list(export.tokenizer_files), export.transform, bool(export.transform))
    try:
        stats = entry["stats"]
        files_train, files_val = int(stats["files_train"]), int(stats["files_val"])
        tok = next(t for t in manifest.get("tokenizers", []) if t.get("name") == entry["tokenizer_name"])
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError):
        raise DataError(f"manifest entry for {name} lacks shard counts or its tokenizer") from None
    tokenizer_files = [str(tok[k]) for k in ("model_path", "vocab_path") if tok.get(k)]
    if not tokenizer_files or not tokenizer_files[0].endswith(".model"):
        raise DataError(f"manifest entry for {name} has no sentencepiece model_path")
    transform = str(tok.get("text_transform") or "")
    if transform in ("identity",):
        transform = ""
    if transform and transform not in CASEOPS_NAMES:
        raise DataError(f"tokenizer {tok.get('name')} of {name} uses the text transform {transform!r}, which golf does not know")
    transform = CASEOPS if transform else export.transform
    return _Plan(files_train, files_val, tokenizer_files, transform, bool(entry.get("val_bytes_glob")) or bool(transform))


def download_fineweb(
    root: Path,
    variant: str = "sp1024",
    train_shards: int = 1,
    repo_id: str | None = None,
    download: Callable[..., str] | None = None,
    remote_prefix: str | None = None,
) -> Corpus:
    """Fetch a FineWeb export (val shards and their byte sidecars, the first train_shards train
    shards, tokenizer) into <root>/fineweb10B_<variant>, like the challenge's
    cached_challenge_fineweb.py; repo_id and remote_prefix override where it is published.

    Manifest-driven: the manifest says how many shards exist, and asking for more is an error.
    Files already present are not fetched again, so re-running with more shards only adds them.
    Train shard numbering starts at 000000 in newer exports and 000001 in the original one;
    the first shard's presence decides.
    """
    root = Path(root)
    export = export_of(variant)
    repo_id, remote_prefix = repo_id or export.repo_id, remote_prefix or export.prefix
    if train_shards < 1:
        raise DataError(f"train_shards must be >= 1, got {train_shards}")
    if download is None:
        from huggingface_hub import hf_hub_download as download
    name = f"fineweb10B_{variant}"
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    hub = _Hub(download, repo_id, remote_prefix, directory / ".download")
    try:
        plan = _fetch_fineweb(hub, directory, export, train_shards)
    finally:
        shutil.rmtree(directory / ".download", ignore_errors=True)
    check_tokenizer(directory / "tokenizer.model", plan.transform)
    fingerprint = {
        "corpus": name,
        "repo_id": repo_id,
        "remote_prefix": remote_prefix,
        "dataset": export.dataset,
        "manifest_sha256": sha256_file(directory / "manifest.json"),
        "train_shards": [p.name for p in shard_files(directory, "train")],
        "val_shards": [p.name for p in shard_files(directory, "val")],
        "tokenizer_sha256": sha256_file(directory / "tokenizer.model"),
        "shards_sha256": {p.name: sha256_file(p) for p in sorted(directory.glob("fineweb_*.bin"))},
    }
    if plan.transform:
        fingerprint["transform"] = plan.transform
    write_meta(directory, name, fingerprint, transform=plan.transform)
    return open_corpus(name, directory, 0, f"fetch it again with: golf data fineweb --variant {variant}")


def _fetch_fineweb(hub: _Hub, directory: Path, export: Export, train_shards: int) -> _Plan:
    """The manifest, then every val shard (and its byte sidecar), the first train_shards train
    shards and the tokenizer."""
    name = directory.name
    hub.get("manifest.json", directory / "manifest.json")
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except ValueError as e:
        (directory / "manifest.json").unlink()
        raise DataError(f"manifest.json of {hub.repo_id}/{hub.prefix} is not valid JSON ({e}); run the command again") from None
    plan = _fineweb_plan(manifest, export)
    if train_shards > plan.files_train:
        raise DataError(f"{name} has only {plan.files_train} train shards on {hub.repo_id}, requested {train_shards}")

    remote_dir = f"datasets/{export.dataset}"
    for i in range(plan.files_val):
        val = f"fineweb_val_{i:06d}.bin"
        hub.get(f"{remote_dir}/{val}", directory / val)
        if plan.sidecars:
            hub.get(f"{remote_dir}/{sidecar_name(val)}", directory / sidecar_name(val))
    if (directory / "fineweb_train_000001.bin").exists() and not (directory / "fineweb_train_000000.bin").exists():
        first = 1
    else:
        first = 0 if hub.get(f"{remote_dir}/fineweb_train_000000.bin", directory / "fineweb_train_000000.bin", missing_ok=True) else 1
    for i in range(first, first + train_shards):
        hub.get(f"{remote_dir}/fineweb_train_{i:06d}.bin", directory / f"fineweb_train_{i:06d}.bin")
    for remote in plan.tokenizer_files:
        hub.get(remote, directory / f"tokenizer{Path(remote).suffix}")
    return plan
