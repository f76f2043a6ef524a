"""Test-session settings: nothing a test does may write into the home folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _checksum_cache_in_tmp(tmp_path_factory):
    """Omniglot's file-digest cache (``checksums.json``) goes to a session temp folder, not
    ``~/.cache`` (tests that load the real data with the default cache folder would otherwise
    write it there)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WARP_RL_CHECKSUM_CACHE", str(tmp_path_factory.mktemp("checksums") / "c.json"))
    yield
    mp.undo()
