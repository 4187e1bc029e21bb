"""`golf data ...`: build or fetch the corpora a recipe's [data] corpus names."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from golf_tools import corpora, fineweb
from golfcore.caseops import NAME as CASEOPS
from golfcore.data import Corpus

app = typer.Typer(help="Build or fetch corpora", no_args_is_help=True)

RootOpt = Annotated[Path, typer.Option("--root", help="folder holding corpora (the recipe's data.root)")]


def _summary(corpus: Corpus, seconds: float) -> None:
    meta = json.loads((corpus.directory / "meta.json").read_text(encoding="utf-8"))
    typer.echo(f"corpus {corpus.name} at {corpus.directory} ({seconds:.1f}s)")
    typer.echo(
        f"  train: {len(corpus.train_files)} shards, {meta['train_tokens']:,} tokens; "
        f"val: {len(corpus.val_files)} shards, {meta['val_tokens']:,} tokens; vocab {corpus.vocab_size}; "
        f"transform {corpus.transform or 'none'}{'; val byte sidecars' if corpus.val_bytes_files else ''}"
    )
    for key, value in corpus.fingerprint.items():
        if not isinstance(value, (list, dict)):
            typer.echo(f"  {key}: {value}")


def _run(build) -> None:
    """Run a builder and summarize the corpus it built (errors are reported by the `golf` group)."""
    start = time.perf_counter()
    corpus = build()
    _summary(corpus, time.perf_counter() - start)


CaseOpsOpt = Annotated[bool, typer.Option("--caseops", help="pass the documents through the CaseOps transform "
                                         "(the tokenizer keeps its operators as pieces; val shards get byte sidecars)")]
ProcessesOpt = Annotated[int, typer.Option("--processes", help="encoding processes")]


@app.command()
def pystdlib(
    root: RootOpt = Path("data"),
    force: Annotated[bool, typer.Option("--force", help="rebuild even if a current build exists")] = False,
    caseops: CaseOpsOpt = False,
) -> None:
    """Build the embedded corpus (pystdlib, or with --caseops pystdlib_caseops) from this
    interpreter's standard-library sources (seconds)."""
    _run(lambda: corpora.build_pystdlib(root, force=force, caseops=caseops))


@app.command()
def text(
    paths: Annotated[list[Path], typer.Argument(
        help="text files of any kind (one document each), .jsonl files (a \"text\" field per line), "
             ".gz of either, or folders (searched recursively, hidden files left out)")],
    name: Annotated[str, typer.Option("--name", help="corpus name; recipes use corpus = \"text:NAME\"")],
    glob: Annotated[Optional[list[str]], typer.Option(
        "--glob", help="in folders, only files whose path matches PATTERN ('*.md' at any depth; repeatable; default: all)")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="refuse a file that is not UTF-8 text instead of skipping it")] = False,
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="existing sentencepiece .model (default: train a BPE)")] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="pieces of a newly trained tokenizer")] = 1024,
    root: RootOpt = Path("data"),
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="share of documents held out for validation")] = 0.1,
    caseops: CaseOpsOpt = False,
) -> None:
    """Build a corpus from local text files and folders into ROOT/text/NAME; files that are not
    UTF-8 text are skipped with a warning (or refused with --strict)."""
    _run(lambda: corpora.build_text_corpus(
        paths, name, root, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
        globs=glob or ["*"], strict=strict, warn=lambda message: typer.echo(f"warning: {message}", err=True),
        transform=CASEOPS if caseops else "",
    ))


@app.command()
def tokenizer(
    paths: Annotated[list[Path], typer.Argument(
        help="the documents: FineWeb's docs_selected.jsonl (a \"text\" field per line), other .jsonl, text files or folders")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="pieces of the new BPE tokenizer (e.g. 4096, 8192)")],
    name: Annotated[str, typer.Option("--name", help="corpus name; recipes use corpus = \"text:NAME\"")],
    caseops: CaseOpsOpt = False,
    val_docs: Annotated[int, typer.Option(
        "--val-docs", help="the first N documents, in input order, are validation (FineWeb's convention: 50000); "
                           "0 = a --val-fraction share chosen by a hash of the text")] = 0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="share held out when --val-docs is 0")] = 0.1,
    processes: ProcessesOpt = 2,
    glob: Annotated[Optional[list[str]], typer.Option("--glob", help="in folders, only files matching PATTERN (repeatable)")] = None,
    root: RootOpt = Path("data"),
) -> None:
    """Train a sentencepiece BPE of --vocab-size pieces on the train documents (optionally through
    CaseOps, its operators reserved as pieces) and re-tokenize every document into train and val
    shards of ROOT/text/NAME, one BOS per document, in --processes processes."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"), TimeElapsedColumn())
    timings: dict[str, float] = {}
    with Progress(*columns, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage == "read":  # the first reading of the input, in bytes
                count = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB"
            else:
                count = f"{done:,}{'' if total is None else f'/{total:,}'} documents"
            if stage not in tasks:
                tasks[stage] = bar.add_task("reading" if stage == "read" else f"encoding {stage}", total=total, count="")
            bar.update(tasks[stage], completed=done, count=count)

        start = time.perf_counter()
        corpus = corpora.build_text_corpus(
            paths, name, root, vocab_size=vocab_size, val_fraction=val_fraction, globs=glob or ["*"],
            warn=lambda message: typer.echo(f"warning: {message}", err=True), transform=CASEOPS if caseops else "",
            val_docs=val_docs, processes=processes, progress=progress, timings=timings,
        )
    _summary(corpus, time.perf_counter() - start)
    meta = json.loads((corpus.directory / "meta.json").read_text(encoding="utf-8"))
    docs = sum(meta["documents"].values())
    tokens = meta["train_tokens"] + meta["val_tokens"]
    seconds = timings["encode_seconds"]
    typer.echo(f"  input read in {timings['read_seconds']:.1f}s; tokenizer trained in {timings['tokenizer_seconds']:.1f}s; "
               f"{docs:,} documents ({sum(meta['bytes'].values()) / 1e6:,.1f} MB) encoded into {tokens:,} tokens in "
               f"{seconds:.1f}s with {processes} processes: {docs / seconds:,.0f} documents/s, {tokens / seconds:,.0f} tokens/s")


@app.command("fineweb")
def fineweb_cmd(  # not `fineweb`: that name is the golf_tools module the body calls
    variant: Annotated[str, typer.Option(
        "--variant", help="the published export: sp1024, sp4096, sp8192 or sp8192_caseops (recipes name it fineweb10B_VARIANT)")] = "sp1024",
    train_shards: Annotated[int, typer.Option("--train-shards", help="train shards to fetch")] = 1,
    repo_id: Annotated[Optional[str], typer.Option("--repo-id", help="fetch from this dataset repo instead (a mirror)")] = None,
    root: RootOpt = Path("data"),
) -> None:
    """Download a FineWeb export's shards (and byte sidecars) and tokenizer from the Hugging Face hub."""
    _run(lambda: fineweb.download_fineweb(root, variant=variant, train_shards=train_shards, repo_id=repo_id))
