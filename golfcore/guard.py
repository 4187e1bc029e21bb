"""Plugin code may not read validation data or use the network (docs/compliance.md, "Files and
the network"): while golf trains, calibrates and evaluates, an audit hook (sys.addaudithook)
sees every `open` and socket connection in the process. Opening a protected file (validation
shards, their byte sidecars, the documents file) or connecting anywhere with a plugin's code on
the calling thread's stack is a violation: the operation raises ComplianceError naming the file
or address and the plugin, and the violation is kept, so a plugin that catches the error still
fails the run. golf's own reads (no plugin frame on the stack) and other files pass.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import ComplianceError

_NETWORK_EVENTS = ("socket.connect", "socket.sendto", "socket.sendmsg")


class Watch:
    """What one run protects, whose code it blames, and what it saw."""

    def __init__(self, protected: dict[str, str], plugin_files: dict[str, str]):
        self.protected = {os.path.realpath(p): label for p, label in protected.items()}  # path -> what it holds
        self.plugin_files = plugin_files  # source file -> plugin name
        self.violations: list[tuple[str, str]] = []  # (plugin, what it did)

    def culprit(self, frame) -> str | None:
        """The innermost plugin whose code is on the stack from `frame` down."""
        while frame is not None:
            name = self.plugin_files.get(frame.f_code.co_filename)
            if name is not None:
                return name
            frame = frame.f_back
        return None


_watch: Watch | None = None  # what the hook reads: an audit hook cannot be removed, only made inert
_installed = False
_inside = threading.local()  # the hook's own work raises no further checks


def _hook(event: str, args: tuple) -> None:
    watch = _watch
    if watch is None or getattr(_inside, "busy", False):
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _inside.busy = True
        try:
            label = watch.protected.get(os.path.realpath(os.fsdecode(args[0])))
        finally:
            _inside.busy = False
        what = label and f"opened {label} {os.fsdecode(args[0])}"
    elif event in _NETWORK_EVENTS:
        what = f"opened a network connection to {args[1]!r}"
    else:
        return
    if what:
        culprit = watch.culprit(sys._getframe(1))
        if culprit is not None:
            watch.violations.append((culprit, what))
            raise ComplianceError(f"not a legal run: plugin {culprit!r} {what}", condition="files", culprit=f"plugin {culprit!r}")


@contextmanager
def watching(watch: Watch | None):
    """Watch the process while the block runs (None: leave it unwatched)."""
    global _watch, _installed
    if watch is None:
        yield
        return
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    previous, _watch = _watch, watch
    try:
        yield watch
    finally:
        _watch = previous


def protected_files(val_files: list[Path]) -> dict[str, str]:
    """The validation shards, files beside them holding validation data by name (byte sidecars,
    `*_val_*`), and the documents file the splits were cut from (`docs_*.jsonl`) beside them or
    up to two folders above (the challenge's layout keeps it in data/, the shards in
    data/datasets/NAME/)."""
    out = {str(p): "validation shard" for p in val_files}
    for folder in {Path(p).parent for p in val_files}:
        for p in folder.iterdir():
            if "_val_" in p.name and str(p) not in out:
                out[str(p)] = "validation data"
        for up in (folder, folder.parent, folder.parent.parent):
            for p in up.glob("docs_*.jsonl"):
                out[str(p)] = "documents file"
    return out


def plugin_files(modules) -> dict[str, str]:
    """Source file -> plugin name, for (name, module) pairs of the enabled plugins."""
    return {module.__file__: name for name, module in modules if getattr(module, "__file__", None)}
