"""Shared test fixtures. Nothing a test does may write into the home folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _checksum_cache_in_tmp(tmp_path_factory):
    """Omniglot's file-digest cache (``checksums.json``) goes to a session temp folder, not
    ``~/.cache`` (tests that load the real data with the default cache folder would otherwise
    write it there)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WARP_RL_CHECKSUM_CACHE", str(tmp_path_factory.mktemp("checksums") / "c.json"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (tiny convolutions and matrices run far faster on
    one thread of a shared 2-core machine; the distributed ranks use one too). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def real():
    """The real Omniglot data (``../shared/data/omniglot``), loaded once per session; missing
    data fails under ``CI=true`` and skips otherwise."""
    from warp_rl.omniglot.data import default_data_root, load_omniglot

    root: Path = default_data_root()
    if not (root / "images_background.npz").is_file():
        msg = f"real Omniglot data not found at {root}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true requires it)")
        pytest.skip(msg)
    return load_omniglot(root)
