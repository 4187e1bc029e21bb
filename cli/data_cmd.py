"""`golf data ...`: build or fetch the corpora a recipe's [data] corpus names."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from golfcore import data

app = typer.Typer(help="Build or fetch corpora", no_args_is_help=True)

RootOpt = Annotated[Path, typer.Option("--root", help="folder holding corpora (the recipe's data.root)")]


def _summary(corpus: data.Corpus, seconds: float) -> None:
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
    _run(lambda: data.build_pystdlib(root, force=force))


@app.command()
def text(
    files: Annotated[list[Path], typer.Argument(help=".txt files (one document each) or .jsonl files (a \"text\" field per line)")],
    name: Annotated[str, typer.Option("--name", help="corpus name; recipes use corpus = \"text:NAME\"")],
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="existing sentencepiece .model (default: train a BPE)")] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="pieces of a newly trained tokenizer")] = 1024,
    root: RootOpt = Path("data"),
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="share of documents held out for validation")] = 0.1,
) -> None:
    """Build a corpus from local text files into ROOT/text/NAME."""
    _run(lambda: data.build_text_corpus(files, name, root, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction))


@app.command()
def fineweb(
    variant: Annotated[str, typer.Option("--variant", help="tokenizer variant of the published export")] = "sp1024",
    train_shards: Annotated[int, typer.Option("--train-shards", help="train shards to fetch (100M tokens each)")] = 1,
    root: RootOpt = Path("data"),
) -> None:
    """Download the challenge's FineWeb shards and tokenizer from the Hugging Face hub."""
    _run(lambda: data.download_fineweb(root, variant=variant, train_shards=train_shards))
