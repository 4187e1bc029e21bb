"""golf_tools.fineweb: the challenge's FineWeb export fetched from a local fake of the hub's layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import huggingface_hub
import pytest
import torch
from huggingface_hub.utils import EntryNotFoundError

from golf_tools.fineweb import download_fineweb
from golfcore.config import DataSection
from golfcore.data import DistributedTokenLoader, load_val_tokens, read_shard, resolve_corpus, write_shard
from golfcore.errors import DataError
from golfcore.assets import FINEWEB_SP1024_MODEL

PREFIX = "matched_10B_docs2m_seed1337"


def _fake_hub(tmp_path: Path, first_train: int, manifest: dict | None = None) -> Path:
    """The published export's layout with tiny shards: 1 val shard, 3 train shards."""
    hub = tmp_path / "hub"
    data = hub / PREFIX / "datasets" / "fineweb10B_sp1024"
    tok = hub / PREFIX / "tokenizers"
    data.mkdir(parents=True)
    tok.mkdir()
    rng = np.random.default_rng(0)
    write_shard(data / "fineweb_val_000000.bin", rng.integers(1, 1024, 300, dtype=np.uint16))
    for i in range(first_train, first_train + 3):
        write_shard(data / f"fineweb_train_{i:06d}.bin", rng.integers(1, 1024, 200 + i, dtype=np.uint16))
    shutil.copyfile(FINEWEB_SP1024_MODEL, tok / "fineweb_1024_bpe.model")
    shutil.copyfile(FINEWEB_SP1024_MODEL.with_suffix(".vocab"), tok / "fineweb_1024_bpe.vocab")
    if manifest is None:
        manifest = {
            "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "stats": {"files_train": 3, "files_val": 1}}],
            "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
        }
    (hub / PREFIX / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return hub


class FakeDownload:
    """hf_hub_download over a local folder: same keywords, saves <local_dir>/<filename>."""

    def __init__(self, hub: Path, repo_id: str = "willdepueoai/parameter-golf"):
        self.hub, self.repo_id, self.calls = hub, repo_id, []

    def __call__(self, repo_id, filename, *, repo_type=None, local_dir=None, **kwargs):
        assert repo_id == self.repo_id and repo_type == "dataset" and local_dir
        self.calls.append(filename)
        source = self.hub / filename
        if not source.is_file():
            raise EntryNotFoundError(f"404 Client Error: Entry Not Found for url: .../{filename}")
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return str(dest)


@pytest.mark.parametrize("first_train", [1, 0])
def test_fineweb_download_against_fake_hub(tmp_path, first_train):
    hub = _fake_hub(tmp_path, first_train)
    fake = FakeDownload(hub)
    root = tmp_path / "data"
    corpus = download_fineweb(root, train_shards=2, download=fake)
    names = [f"fineweb_train_{i:06d}.bin" for i in range(first_train, first_train + 3)]
    assert [p.name for p in corpus.train_files] == names[:2]
    assert [p.name for p in corpus.val_files] == ["fineweb_val_000000.bin"]
    assert corpus.tokenizer_path == root / "fineweb10B_sp1024" / "tokenizer.model"
    assert corpus.tokenizer_path.read_bytes() == FINEWEB_SP1024_MODEL.read_bytes() and corpus.vocab_size == 1024
    assert corpus.fingerprint["train_shards"] == names[:2] and corpus.fingerprint["repo_id"] == "willdepueoai/parameter-golf"
    assert not (root / "fineweb10B_sp1024" / ".download").exists()

    resolved = resolve_corpus(DataSection(corpus="fineweb10B_sp1024", root=str(root)))
    assert resolved.train_files == corpus.train_files
    val = load_val_tokens(resolved)
    assert val.tolist() == read_shard(hub / PREFIX / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin").tolist()
    x, _ = DistributedTokenLoader(resolved.train_files, 0, 1, torch.device("cpu")).next_batch(64, 16, 1)
    assert x.shape == (4, 16)

    fake.calls.clear()
    corpus = download_fineweb(root, train_shards=3, download=fake)  # only the new shard is fetched
    assert fake.calls == [f"{PREFIX}/datasets/fineweb10B_sp1024/{names[2]}"]
    assert [p.name for p in corpus.train_files] == names


def test_fineweb_refuses_shards_beyond_manifest(tmp_path):
    fake = FakeDownload(_fake_hub(tmp_path, 1))
    with pytest.raises(DataError, match="only 3 train shards.*requested 4"):
        download_fineweb(tmp_path / "data", train_shards=4, download=fake)
    assert fake.calls == [f"{PREFIX}/manifest.json"]


def test_fineweb_manifest_without_entry_uses_known_counts(tmp_path):
    fake = FakeDownload(_fake_hub(tmp_path, 1, manifest={"note": "no dataset entries"}))
    with pytest.raises(DataError, match="only 25 train shards"):
        download_fineweb(tmp_path / "data", train_shards=26, download=fake)
    assert download_fineweb(tmp_path / "data", train_shards=1, download=fake).vocab_size == 1024


def test_fineweb_download_failure_is_one_line(tmp_path):
    def offline(**kwargs):
        raise ConnectionError("Name or service not known\nmore detail")

    with pytest.raises(DataError, match="manifest.json.*failed: ConnectionError: Name or service not known$"):
        download_fineweb(tmp_path / "data", download=offline)
    assert not (tmp_path / "data" / "fineweb10B_sp1024" / ".download").exists()
    with pytest.raises(DataError, match="golf data fineweb --variant sp1024 --train-shards 1"):
        resolve_corpus(DataSection(corpus="fineweb10B_sp1024", root=str(tmp_path / "data")))


def test_golf_data_fineweb_command_downloads(tmp_path, monkeypatch):
    """The CLI command reaches download_fineweb (the hub client replaced by the local fake)."""
    from typer.testing import CliRunner

    from golf_cli.main import app

    fake = FakeDownload(_fake_hub(tmp_path, 1))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    root = tmp_path / "data"
    result = CliRunner().invoke(app, ["data", "fineweb", "--train-shards", "1", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (root / "fineweb10B_sp1024").glob("*.bin")) == ["fineweb_train_000001.bin", "fineweb_val_000000.bin"]


def _published(tmp_path: Path, dataset: str, tokenizer: Path, model_name: str, transform: str = "") -> Path:
    """An export rooted at datasets/ (the layout of the SP4096/SP8192 and CaseOps repos): 1 val
    shard (with its byte sidecar when there is a transform), 2 train shards numbered from 0."""
    root = tmp_path / "hub" / "datasets"
    data = root / "datasets" / dataset
    data.mkdir(parents=True)
    (root / "tokenizers").mkdir()
    rng = np.random.default_rng(1)
    val = np.concatenate([[1], rng.integers(2, 300, 99)]).astype(np.uint16)
    write_shard(data / "fineweb_val_000000.bin", val)
    entry = {"name": dataset, "tokenizer_name": "tok", "stats": {"files_train": 2, "files_val": 1}}
    if transform:
        write_shard(data / "fineweb_val_bytes_000000.bin", np.where(val == 1, 0, rng.integers(0, 4, 100)).astype(np.uint16))
        entry["val_bytes_glob"] = f"{dataset}/fineweb_val_bytes_*.bin"
    for i in range(2):
        write_shard(data / f"fineweb_train_{i:06d}.bin", rng.integers(1, 300, 150, dtype=np.uint16))
    shutil.copyfile(tokenizer, root / "tokenizers" / f"{model_name}.model")
    tok = {"name": "tok", "model_path": f"tokenizers/{model_name}.model"}
    if transform:
        tok["text_transform"] = transform
    (root / "manifest.json").write_text(json.dumps({"datasets": [entry], "tokenizers": [tok]}), encoding="utf-8")
    return tmp_path / "hub"


@pytest.mark.parametrize("variant", ["sp4096", "sp8192"])
def test_fineweb_sp4096_sp8192_from_their_published_repo(tmp_path, variant):
    """Layout only: the hub's tokenizer file here is the sp1024 model under the published name."""
    size = variant.removeprefix("sp")
    fake = FakeDownload(_published(tmp_path, f"fineweb10B_{variant}", FINEWEB_SP1024_MODEL, f"fineweb_{size}_bpe"),
                        "kevclark/parameter-golf")
    corpus = download_fineweb(tmp_path / "data", variant=variant, train_shards=2, download=fake)
    assert fake.calls[0] == "datasets/manifest.json"
    assert f"datasets/tokenizers/fineweb_{size}_bpe.model" in fake.calls
    assert [p.name for p in corpus.train_files] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert corpus.transform == "" and not corpus.val_bytes_files
    meta = json.loads((corpus.directory / "meta.json").read_text())
    assert set(meta["fingerprint"]["shards_sha256"]) == {"fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"}
    resolved = resolve_corpus(DataSection(corpus=f"fineweb10B_{variant}", root=str(tmp_path / "data")))
    assert resolved.train_files == corpus.train_files


def test_fineweb_caseops_export_with_its_byte_sidecar(tmp_path):
    from golf_tools.tokenizer import train_tokenizer
    from golfcore import caseops
    from golfcore.data import load_val_bytes
    from tests.byte_proofs import stdlib_documents

    model = tmp_path / "caseops.model"
    train_tokenizer(stdlib_documents(200_000), 400, model, caseops.NAME)
    dataset = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    hub = _published(tmp_path, dataset, model, "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved", "lossless_caps_caseops_v1")
    fake = FakeDownload(hub, "romeerp/parameter-golf-caseops-v1")
    root = tmp_path / "data"
    download_fineweb(root, variant="sp8192_caseops", train_shards=1, download=fake)
    assert f"datasets/datasets/{dataset}/fineweb_val_bytes_000000.bin" in fake.calls
    corpus = resolve_corpus(DataSection(corpus="fineweb10B_sp8192_caseops", root=str(root)))
    assert corpus.transform == caseops.NAME and [p.name for p in corpus.val_bytes_files] == ["fineweb_val_bytes_000000.bin"]
    sidecar = read_shard(hub / "datasets" / "datasets" / dataset / "fineweb_val_bytes_000000.bin")
    assert load_val_bytes(corpus).tolist() == sidecar.tolist()
    assert corpus.record()["bytes"] == "sidecar" and corpus.record()["transform"] == caseops.NAME

    (root / "fineweb10B_sp8192_caseops" / "fineweb_val_bytes_000000.bin").unlink()
    with pytest.raises(DataError, match="fineweb_val_bytes_000000.bin is missing; fetch it again with: golf data fineweb --variant sp8192_caseops"):
        resolve_corpus(DataSection(corpus="fineweb10B_sp8192_caseops", root=str(root)))


def test_fineweb_unknown_variant_and_transform(tmp_path):
    with pytest.raises(DataError, match="variant 'bytes260'"):
        download_fineweb(tmp_path / "data", variant="bytes260", download=FakeDownload(tmp_path))
    hub = _published(tmp_path, "fineweb10B_sp8192", FINEWEB_SP1024_MODEL, "fineweb_8192_bpe", "lossless_caps_v9")
    with pytest.raises(DataError, match="text transform 'lossless_caps_v9', which golf does not know"):
        download_fineweb(tmp_path / "data", variant="sp8192", download=FakeDownload(hub, "kevclark/parameter-golf"))
