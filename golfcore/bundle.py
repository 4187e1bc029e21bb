"""A run's code as one self-contained `train_gpt.py`: what a submission ships, and what a run's
code bytes count.

The challenge counts the bytes of a submission's `train_gpt.py`. golf's run is many modules, so
`Bundle` writes them into one script the way submissions fit their code into the budget: the
sources, minified (python-minifier: docstrings, comments and annotations outside classes removed,
whitespace squeezed, names kept), behind a small JSON index, compressed with lzma or brotli
(whichever is smaller) and base85-encoded into one string literal (base85 has no quote or
backslash), plus a readable header, a tiny importer that serves the bundled modules under their
real names, and `main()` (golfcore.submission). The importer runs each module as Python's own
`ast.unparse` lays it out (readable, one statement per line) and `--sources DIR` writes exactly
that text, so tracebacks and the written files agree.

What is bundled: the golfcore modules in the static import closure of the script's entry
(module- and function-level imports, relative or absolute), each enabled plugin's module with
the closure of its own package (its parent packages' `__init__` included; for the built-ins
that is the empty `golf_plugins/__init__.py`), and the resolved recipe TOML. golf_cli and
golf_tools are never bundled: an import of them from a bundled module is refused. The
tokenizer is not bundled: the script reads it from the challenge's data layout.

Sources are read through each module's loader, so a bundle built inside a running
`train_gpt.py` (whose modules are the bundled ones, already minified: they are taken as stored)
is that script, byte for byte: the run inside it counts its own size. The same sources and recipe
always give the same bytes.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType

import brotli

from .errors import GolfError

try:
    import python_minifier
except ImportError:  # inside an exported train_gpt.py: its modules come minified already
    python_minifier = None

SCRIPT_NAME = "train_gpt.py"
RECIPE_LABEL = "recipe.toml"
ENTRY_MODULES = ("golfcore", "golfcore.submission")  # what the script's main imports
NEVER_BUNDLED = ("golf_cli", "golf_tools")  # tooling: no run imports them
ENCODING_LABEL = "compression + base85 of the files above"  # negative: what compression saves
SCRIPT_LABEL = f"{SCRIPT_NAME} header, importer and main"


@dataclass(frozen=True)
class BundledModule:
    name: str
    is_package: bool
    source: str  # as read from its file
    minified: bool = False  # True when `source` is a bundle's stored (already minified) text

    @property
    def label(self) -> str:
        """The module's file as the script names it (and `--sources DIR` writes it): golfcore/eval.py."""
        path = self.name.replace(".", "/")
        return f"{path}/__init__.py" if self.is_package else f"{path}.py"


class Bundle:
    """The modules and recipe of one run, and the `train_gpt.py` text that carries them."""

    def __init__(self, modules: Iterable[BundledModule], recipe_text: str, minify: bool = True):
        self.modules = sorted(modules, key=lambda m: m.label)
        self.recipe_text = recipe_text
        self.minify = minify

    @classmethod
    def for_run(cls, plugin_modules: Iterable[ModuleType], recipe_text: str, minify: bool = True) -> Bundle:
        """The bundle of a run whose enabled plugins live in `plugin_modules` (golfcore.run.Session.plugin_modules)."""
        roots = {name: "golfcore" for name in ENTRY_MODULES}
        for module in plugin_modules:
            roots.setdefault(module.__name__, f"plugin module {module.__name__}")
        found: dict[str, BundledModule] = {}
        pending = list(roots.items())
        while pending:
            name, owner = pending.pop()
            if name in found:
                continue
            found[name] = module = _read_module(name, owner)
            package = name.split(".")[0]
            parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
            imported = _imported_modules(module, owner, {package, "golfcore"})
            pending += [(n, owner) for n in [*parents, *imported] if n not in found]
        return cls(found.values(), recipe_text, minify)

    @cached_property
    def _files(self) -> dict[str, str]:
        stored = {m.label: m.source if m.minified or not self.minify else minify_source(m.source, m.label) for m in self.modules}
        return {**stored, RECIPE_LABEL: self.recipe_text}

    def files(self) -> dict[str, str]:
        """label -> text of every bundled file as the script stores it, in its order (the recipe last)."""
        return dict(self._files)

    def raw_files(self) -> dict[str, int]:
        """UTF-8 bytes of every bundled file as read (before minification)."""
        return {**{m.label: len(m.source.encode("utf-8")) for m in self.modules}, RECIPE_LABEL: len(self.recipe_text.encode("utf-8"))}

    def code_files(self) -> dict[str, int]:
        """Stored (minified) UTF-8 bytes per bundled file, what encoding them changes (the index
        included) and what the script adds around them: the entries sum to `code_bytes`."""
        stored = {label: len(text.encode("utf-8")) for label, text in self.files().items()}
        encoded = len(self._encoded[1]) - sum(stored.values())
        return {**stored, ENCODING_LABEL: encoded, SCRIPT_LABEL: self.code_bytes - len(self._encoded[1])}

    @cached_property
    def _encoded(self) -> tuple[str, str]:
        """(codec, text): the files behind a JSON index of (label, byte length), compressed with
        lzma or brotli, whichever is smaller, as base85 text."""
        files = self.files()
        payload = json.dumps([[label, len(text.encode("utf-8"))] for label, text in files.items()]).encode("utf-8")
        payload += b"\n" + "".join(files.values()).encode("utf-8")
        candidates = {"lzma": lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME),
                      "brotli": brotli.compress(payload, quality=11, lgwin=24)}
        codec = min(candidates, key=lambda c: len(candidates[c]))
        return codec, base64.b85encode(candidates[codec]).decode("ascii")

    @cached_property
    def script(self) -> str:
        files = self.files()
        width = max(len(label) for label in files)
        table = "\n".join(f"#   {label:<{width}}  {len(text.encode('utf-8')):>7,} bytes" for label, text in files.items())
        name = tomllib.loads(self.recipe_text).get("run", {}).get("name", "?")
        codec, code = self._encoded
        return _TEMPLATE.format(name=name, table=table, raw=sum(len(t.encode("utf-8")) for t in files.values()),
                                code=code, codec=codec, recipe=RECIPE_LABEL)

    @property
    def code_bytes(self) -> int:
        return len(self.script.encode("utf-8"))

    @property
    def sha256(self) -> str:
        """Which code made a run (with its resolved recipe and seed, the key `golf ablate` resumes by)."""
        return hashlib.sha256(self.script.encode("utf-8")).hexdigest()

    def modules_sha256(self) -> str:
        """The modules alone (names and sources, no recipe): a checkpoint's code identity."""
        h = hashlib.sha256()
        for m in self.modules:
            h.update(m.label.encode("utf-8") + b"\0" + m.source.encode("utf-8") + b"\0")
        return h.hexdigest()


@functools.lru_cache(maxsize=None)
def minify_source(source: str, label: str) -> str:
    """python-minifier with names kept and class annotations kept (dataclass fields need them).
    It takes seconds for a run's modules, so results are cached by the source's sha256 and the
    minifier's version, in memory and under ~/.cache/golf/minified (GOLF_CACHE_DIR)."""
    if python_minifier is None:
        raise GolfError(f"{label}: python-minifier is not installed (pip install python-minifier)")
    version = importlib.metadata.version("python-minifier")
    key = hashlib.sha256(f"{version}\0{source}".encode("utf-8")).hexdigest()
    cache = Path(os.environ.get("GOLF_CACHE_DIR", Path.home() / ".cache" / "golf")) / "minified" / f"{key}.py"
    try:
        return cache.read_text(encoding="utf-8")
    except OSError:
        pass
    keep_fields = python_minifier.RemoveAnnotationsOptions(remove_class_attribute_annotations=False)
    text = python_minifier.minify(source, remove_literal_statements=True, rename_locals=False, hoist_literals=False,
                                  remove_annotations=keep_fields)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(cache)
    except OSError:
        pass  # a read-only home: minify again next time
    return text


def _read_module(name: str, owner: str) -> BundledModule:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    loader = spec.loader if spec is not None else None
    stored = getattr(loader, "stored_source", None)  # a bundle's importer: the text as the script stores it
    source = stored(name) if stored else loader.get_source(name) if loader is not None else None
    if source is None:
        raise GolfError(f"{owner}: module {name} has no Python source to bundle into {SCRIPT_NAME}")
    return BundledModule(name, spec.submodule_search_locations is not None, source, minified=stored is not None)


def _imported_modules(module: BundledModule, owner: str, packages: set[str]) -> list[str]:
    """The modules of `packages` that `module` imports anywhere in its source (sorted); an
    import of golf_cli or golf_tools is an error naming `owner`."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up level - 1 packages from this module's package
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, or a name in base
    for name in names:
        if name.split(".")[0] in NEVER_BUNDLED:
            raise GolfError(f"{owner}: {module.label} imports {name}; golf_cli and golf_tools are tooling, "
                            f"never part of a run's {SCRIPT_NAME}")
    return sorted(n for n in names if n.split(".")[0] in packages and _is_module(n))


def _is_module(name: str) -> bool:
    parent = name.rpartition(".")[0]
    if parent and not _is_package(parent):
        return False  # `from .x import f`: f is a name in module x
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is_package(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.submodule_search_locations is not None


_TEMPLATE = '''\
# train_gpt.py, generated by golf (`golf export`) from the recipe "{name}". Do not edit: regenerate it.
#
# golf's modules, minified, and the resolved recipe ({raw:,} bytes) are {codec}-compressed and
# base85-encoded in CODE below:
{table}
# Read them: `python train_gpt.py --sources DIR` writes these files under DIR, laid out by
# ast.unparse (the text that runs); tracebacks name the same files and lines.
#
# Run: torchrun --standalone --nproc_per_node=8 train_gpt.py   (or: python train_gpt.py)
#   DATA_PATH       challenge shards (default ./data/datasets/fineweb10B_sp1024)
#   TOKENIZER_PATH  sentencepiece model (default ./data/tokenizers/fineweb_1024_bpe.model)
#   RUN_ID          the run directory's name under ./runs beside this file (default: recipe name and time)
#   SEED            overrides the recipe's run.seed

import ast
import base64
import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path

import {codec}

HERE = Path(__file__).resolve().parent
CODE = "{code}"


def readable(label, text):
    return ast.unparse(ast.parse(text)) + "\\n" if label.endswith(".py") else text


def unpack_files():
    """label -> text of every bundled file."""
    index, _, body = {codec}.decompress(base64.b85decode(CODE)).partition(b"\\n")
    files, at = {{}}, 0
    for label, size in json.loads(index):
        files[label] = body[at:at + size].decode("utf-8")
        at += size
    return files


class BundledModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the bundled modules under their real names, ahead of any installed copy."""

    def __init__(self, files):
        self.files = {{label.removesuffix(".py").removesuffix("/__init__").replace("/", "."): label
                      for label in files if label.endswith(".py")}}
        self.sources = files

    def find_spec(self, name, path=None, target=None):
        if name not in self.files:
            return None
        label = self.files[name]
        spec = importlib.util.spec_from_loader(name, self, origin=str(HERE / label), is_package=label.endswith("/__init__.py"))
        spec.has_location = True  # __file__: where --sources HERE would write it
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.get_source(module.__name__), module.__spec__.origin, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, name):
        label = self.files[name]
        return readable(label, self.sources[label])

    def stored_source(self, name):
        return self.sources[self.files[name]]


def main():
    files = unpack_files()
    if sys.argv[1:2] == ["--sources"] and len(sys.argv) == 3:
        for label, text in files.items():
            path = Path(sys.argv[2]) / label
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(readable(label, text).encode("utf-8"))
        return 0
    bundled = BundledModules(files)
    sys.meta_path.insert(0, bundled)
    from golfcore.submission import main as run_submission

    plugin_modules = [name for name in bundled.files if name.split(".")[0] != "golfcore"]
    return run_submission(files["{recipe}"], plugin_modules, HERE)


if __name__ == "__main__":
    sys.exit(main())
'''
