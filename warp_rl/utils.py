"""Small shared utilities: atomic file writes and seeding.

torch is imported by the functions that use it, so that the scripts' command lines (which import
the atomic writes) answer ``--help`` without loading it.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def _default_mode() -> int:
    """Permission bits of a newly created file (0o666 minus the umask), as ``open`` would give;
    ``mkstemp`` alone would leave the file readable by its owner only."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing, atomically: the data go to a temp file in the same
    folder, which is fsynced and renamed over ``path`` only when the block exits normally.

    A crash, an exception or Ctrl-C at any point leaves either the old file or the new one,
    never a torn one (and no temp file behind, except after a hard kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic counterpart of ``Path.write_text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_open`)."""
    import torch

    with atomic_open(path) as f:
        torch.save(obj, f)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries that use the global generator)
    torch.manual_seed(seed)


def global_rng_states() -> dict[str, Any]:
    """Python's, numpy's and torch's global generators (and CUDA's, where there is one), in a
    form ``torch.load(weights_only=True)`` accepts (numpy's key array as a tensor)."""
    import torch

    name, keys, *rest = np.random.get_state()  # noqa: NPY002 (the global one)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_global_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_states` returned (CUDA's only where there is CUDA)."""
    import torch

    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
