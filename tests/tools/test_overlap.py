"""golf_tools.overlap: training/validation overlap by streaming span hashes; `golf audit --data`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import golf_tools.overlap as overlap
from golf_cli.main import app as golf_app
from golfcore import audit
from golfcore.config import DataSection
from golfcore.data import open_shard_folder, resolve_corpus

PLANTED = Path(__file__).resolve().parent.parent / "planted"


BOS_ID = 1  # the id golf's tokenizers give BOS (golf_tools.tokenizer.train_tokenizer)


def copied_corpus():
    spec = importlib.util.spec_from_file_location("copied_corpus", PLANTED / "copied_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stream(rng, n, vocab=300, doc=400):
    tokens = rng.integers(2, vocab, n, dtype=np.uint16)
    tokens[::doc] = BOS_ID
    return tokens


def scan(val, *shards, span=64, sample=8):
    found = overlap.Overlap(val, span, BOS_ID, sample)
    for i, tokens in enumerate(shards):
        found.scan(f"train_{i}", tokens)
    return found.result(overlap.MAX_COPIED, 1.0)


def test_planted_documents_are_found_with_their_place_and_a_clean_split_passes():
    rng = np.random.default_rng(0)
    val, train = stream(rng, 40_000), stream(rng, 200_000, doc=700)
    clean = scan(val, train)
    assert clean["status"] == "pass" and clean["copied_documents"] == 0 and clean["val_documents"] == 100
    leaked = train.copy()
    leaked[10_000:10_800] = val[2_000:2_800]  # documents 5 and 6, whole
    leaked[50_000:50_030] = val[8_000:8_030]  # the first 30 tokens of document 20: one short of any span
    result = scan(val, train[:5_000], leaked)
    assert result["status"] == "fail" and result["copied_documents"] == 2
    copied = [e for e in result["examples"] if e["copied"]]
    assert [(e["val_document"], e["train_shard"]) for e in copied] == [(5, "train_1"), (6, "train_1")]
    assert all(10_000 <= e["train_offset"] < 10_800 for e in copied) and len(result["examples"]) == 2
    assert "first: validation document 5 in train_1 at token 10," in result["message"]
    assert "2 of 100 validation documents" in result["message"]


def test_short_documents_are_compared_whole():
    rng = np.random.default_rng(1)
    val, train = stream(rng, 4_000), stream(rng, 20_000)
    val[1_000:1_040] = np.concatenate([[BOS_ID], rng.integers(2, 300, 39)])
    val[1_040] = BOS_ID  # a 40-token document
    train[5_000:5_040], train[5_040] = val[1_000:1_040], BOS_ID
    result = scan(val, train)
    assert result["copied_documents"] == 1 and result["examples"][0]["val_document"] == 3


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.sampled_from([1, 8]))
def test_block_boundaries_do_not_hide_a_copy(seed, blocks, sample):
    """A copied document lands anywhere, across any block boundary, and is found."""
    rng = np.random.default_rng(seed)
    val, train = stream(rng, 3_000, doc=600), stream(rng, 1_000 * blocks + 500, doc=300)
    where = int(rng.integers(0, train.size - 600))
    train[where : where + 600] = val[600:1_200]  # document 1
    old = overlap.BLOCK
    overlap.BLOCK = 256
    try:
        result = scan(val, train, sample=sample)
    finally:
        overlap.BLOCK = old
    assert result["copied_documents"] == 1 and result["examples"][0]["val_document"] == 1


def test_golf_audit_data_fails_the_planted_corpus_and_every_run_reads_the_cache(pystdlib_root, tmp_path):
    corpus = resolve_corpus(DataSection(root=str(pystdlib_root)))
    leak = copied_corpus().copy_with_leak(corpus, tmp_path / "leak", documents=10)
    recipe = tmp_path / "leak.toml"
    recipe.write_text(f'[data]\nroot = "{tmp_path}"\nshards = "{leak}"\ntokenizer = "{leak / "tokenizer.model"}"\n')
    runner = CliRunner()
    result = runner.invoke(golf_app, ["audit", "--data", str(recipe)])
    assert result.exit_code == 3, result.output
    assert "10 of" in result.output and "FAIL" in result.output
    leaked = open_shard_folder("pystdlib", leak, leak / "tokenizer.model", 0)
    entry = audit.overlap_entry(tmp_path, leaked.fingerprint)  # what a run on it records
    assert entry["status"] == "fail" and entry["copied_documents"] == 10

    result = runner.invoke(golf_app, ["audit", "--data", "pystdlib", "--root", str(pystdlib_root)])
    assert result.exit_code == 0, result.output
    cached = audit.overlap_cache(pystdlib_root, corpus.fingerprint)
    assert json.loads(cached.read_text())["copied_documents"] == 0
    assert "(cached)" in runner.invoke(golf_app, ["audit", "--data", "pystdlib", "--root", str(pystdlib_root)]).output


def test_golf_audit_wants_one_target():
    assert CliRunner().invoke(golf_app, ["audit"]).exit_code == 1
