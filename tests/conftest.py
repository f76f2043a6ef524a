"""Shared test fixtures. A test may leave nothing in the home folder or in the temp folder
(``/tmp``): the caches the code keeps in the home folder go to pytest's cache folder
(``.pytest_cache``) or a session temp folder, and :func:`_nothing_left_behind` fails the test
after which a file appears in either place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

HOME_FOLDERS = (Path.home(), Path.home() / ".cache", Path.home() / ".config")
"""Folders of the home folder whose entries the tests must not add to."""


def pytest_configure(config: pytest.Config) -> None:
    """Before any test imports matplotlib, loads Omniglot or imports ``torch._dynamo``: the
    caches that would otherwise go to the home or the temp folder (matplotlib's font cache in
    ``~/.config/matplotlib`` or ``~/.cache/matplotlib``, the resized Omniglot in
    ``~/.cache/warp_rl``, and ``/tmp/torchinductor_<user>``, which importing ``torch._dynamo``
    creates) go to pytest's cache folder, kept between sessions."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        base = Path(cache.mkdir("warp_rl"))
    else:  # -p no:cacheprovider: a temp folder for this session, removed at its end
        base = Path(tempfile.mkdtemp(prefix="warp_rl-test-cache-"))
        config.add_cleanup(lambda: shutil.rmtree(base, ignore_errors=True))
    os.environ.setdefault("MPLCONFIGDIR", str(base / "matplotlib"))
    os.environ.setdefault("WARP_RL_CACHE", str(base / "cache"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(base / "torchinductor"))


def _entries(folders: tuple[Path, ...]) -> set[Path]:
    return {p for folder in folders if folder.is_dir() for p in folder.iterdir()}


@pytest.fixture(autouse=True, scope="session")
def _private_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's temp folder (``TMPDIR``, ``tempfile.gettempdir()``, inherited by the
    subprocesses the tests start): a new folder of its own, deleted at the end. pytest's
    ``tmp_path`` folders stay where pytest keeps them. Because nothing else writes here, what
    appears in it was left by a test (other processes of the machine may write to /tmp at any
    time, so /tmp itself cannot be watched reliably)."""
    tmp_path_factory.getbasetemp()  # pytest's own folder, in the real temp folder
    private = Path(tempfile.mkdtemp(prefix="warp_rl-tests-"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(private)
    yield private
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]
    shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(autouse=True)
def _nothing_left_behind(_private_temp_folder: Path) -> Iterator[None]:
    """Fail the test (at its teardown) if it left a file in the temp folder or a new entry in
    the home folder; what it left in the temp folder is removed, so that the next test is not
    blamed for it."""
    home_before = _entries(HOME_FOLDERS)
    yield
    left = sorted(_private_temp_folder.iterdir())
    for path in left:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    new_home = sorted(_entries(HOME_FOLDERS) - home_before)
    problems = []
    if left:
        problems.append("in the temp folder: " + ", ".join(p.name for p in left))
    if new_home:
        problems.append("in the home folder: " + ", ".join(map(str, new_home)))
    if problems:
        pytest.fail("the test left files behind " + "; ".join(problems) + " (write them under "
                    "tmp_path, or give the library a folder to write to)", pytrace=False)


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
