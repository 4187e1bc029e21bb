"""The contract's layering, read from the source: what may import what.

- golfcore.contract and golfcore.hookspecs import nothing else from golf at run time, so the
  core can change behind them;
- built-in plugins (and the example third-party package) import only `golfcore`, the public
  surface, so they are examples a third party can copy;
- golfcore's modules import each other without cycles, and the model knows nothing of plugins;
- every public name is documented in docs/hooks.md.
"""

import ast
from pathlib import Path

import pytest
import torch

import golfcore
from golfcore.contract import EvalContext

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "golfcore"


def runtime_imports(path: Path, package: str) -> set[str]:
    """Absolute names of the golf modules `path` imports at module level (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([package, base] if base else [package])
                    found.update(f"{base}.{alias.name}" if not node.module else base for alias in node.names)
                else:
                    found.add(base)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))

    visit(tree.body)
    return {name for name in found if name.split(".")[0] in ("golfcore", "golf_plugins", "golf_cli", "golf_tools")}


def core_module(name: str) -> str:
    """golfcore.x.y -> golfcore.x when x is a module of the package."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (CORE / f"{parts[1]}.py").exists() else name


@pytest.mark.parametrize("module", ["contract", "hookspecs"])
def test_the_contract_imports_nothing_else_from_golf(module):
    allowed = {"golfcore.contract"}
    assert runtime_imports(CORE / f"{module}.py", "golfcore") <= allowed


@pytest.mark.parametrize("path", sorted((REPO / "plugins").glob("*.py")) + sorted((REPO / "examples").rglob("golf_example/*.py")),
                         ids=lambda p: p.name)
def test_plugins_import_only_the_public_surface(path):
    imported = runtime_imports(path, "golf_plugins")
    assert imported <= {"golfcore"}, f"{path.name} imports golf internals: {sorted(imported - {'golfcore'})}"
    # attribute access like golfcore.artifact.X would bypass the import rule
    assert "golfcore." not in path.read_text(encoding="utf-8").replace("import golfcore as golf", "")


def test_core_modules_import_without_cycles():
    graph = {f"golfcore.{p.stem}": {core_module(n) for n in runtime_imports(p, "golfcore")} - {f"golfcore.{p.stem}"}
             for p in CORE.glob("*.py") if p.stem != "__init__"}
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(node):] + [node])}")
        if node in done or node not in graph:
            return
        for nxt in graph[node]:
            walk(nxt, path + [node])
        done.add(node)

    for node in graph:
        walk(node, [])
    assert "golfcore.plugins" not in graph["golfcore.model"]  # assembly is golfcore.assemble's job
    assert not any(n.startswith(("golf_cli", "golf_tools")) for deps in graph.values() for n in deps)


def test_every_public_name_is_documented():
    hooks_doc = (REPO / "docs" / "hooks.md").read_text(encoding="utf-8")
    section = hooks_doc.split("## The public surface", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in golfcore.__all__ if f"`{name}`" not in section]
    assert not missing, f"docs/hooks.md 'The public surface' does not list {missing}"


def test_eval_context_numbers_chunks_like_the_eval_loop():
    ctx = EvalContext.local(vocab_size=8, num_targets=250, chunk_tokens=100)
    assert ctx.num_chunks == 3 and [ctx.chunk_of(t) for t in (0, 99, 100, 249)] == [0, 0, 1, 2]
    x = ctx.all_reduce(torch.ones(2))  # alone: unchanged
    assert x.tolist() == [1.0, 1.0]
