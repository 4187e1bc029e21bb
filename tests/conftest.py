"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pystdlib_root(tmp_path_factory):
    """A data root holding the pystdlib corpus, built once per test session (a few seconds)."""
    from golf_tools.corpora import build_pystdlib

    root = tmp_path_factory.mktemp("data_root")
    build_pystdlib(root)
    return root
