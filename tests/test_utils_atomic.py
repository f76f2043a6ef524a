"""warp_rl.utils: atomic writes leave the old file or the new one, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from warp_rl.utils import atomic_save, atomic_write_text


def test_atomic_write_replaces_content_and_keeps_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "log.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["log.txt"]  # no temp file left


def test_atomic_save_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
