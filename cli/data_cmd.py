"""`golf data ...`: build or fetch the corpora a recipe's [data] corpus names."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from golf_tools import corpora, fineweb
from golfcore.data import Corpus

app = typer.Typer(help="Build or fetch corpora", no_args_is_help=True)

RootOpt = Annotated[Path, typer.Option("--root", help="folder holding corpora (the recipe's data.root)")]


def _summary(corpus: Corpus, seconds: float) -> None:
    meta = json.loads((corpus.directory / "meta.json").read_text(encoding="utf-8"))
    typer.echo(f"corpus {corpus.name} at {corpus.directory} ({seconds:.1f}s)")
    typer.echo(
        f"  train: {len(corpus.train_files)} shards, {meta['train_tokens']:,} tokens; "
        f"val: {len(corpus.val_files)} shards, {meta['val_tokens']:,} tokens; vocab {corpus.vocab_size}"
    )
    for key, value in corpus.fingerprint.items():
        if not isinstance(value, (list, dict)):
            typer.echo(f"  {key}: {value}")


def _run(build) -> None:
    """Run a builder and summarize the corpus it built (errors are reported by the `golf` group)."""
    start = time.perf_counter()
    corpus = build()
    _summary(corpus, time.perf_counter() - start)


@app.command()
def pystdlib(
    root: RootOpt = Path("data"),
    force: Annotated[bool, typer.Option("--force", help="rebuild even if a current build exists")] = False,
) -> None:
    """Build the embedded corpus from this interpreter's standard-library sources (seconds)."""
    _run(lambda: corpora.build_pystdlib(root, force=force))


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
) -> None:
    """Build a corpus from local text files and folders into ROOT/text/NAME; files that are not
    UTF-8 text are skipped with a warning (or refused with --strict)."""
    _run(lambda: corpora.build_text_corpus(
        paths, name, root, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
        globs=glob or ["*"], strict=strict, warn=lambda message: typer.echo(f"warning: {message}", err=True),
    ))


@app.command("fineweb")
def fineweb_cmd(  # not `fineweb`: that name is the golf_tools module the body calls
    variant: Annotated[str, typer.Option("--variant", help="tokenizer variant of the published export")] = "sp1024",
    train_shards: Annotated[int, typer.Option("--train-shards", help="train shards to fetch (100M tokens each)")] = 1,
    root: RootOpt = Path("data"),
) -> None:
    """Download the challenge's FineWeb shards and tokenizer from the Hugging Face hub."""
    _run(lambda: fineweb.download_fineweb(root, variant=variant, train_shards=train_shards))
