"""Every ```python block of README.md and docs/*.md runs as written on a CPU machine.

A block that is deliberately not runnable is preceded by the line ``<!-- not run: REASON -->``;
it is skipped with that reason (use it rarely).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- not run: (?P<why>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def blocks() -> list[tuple[str, str, str | None]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for k, m in enumerate(BLOCK.finditer(path.read_text())):
            found.append((f"{path.relative_to(ROOT)}#{k}", m.group("code"), m.group("why")))
    return found


def test_the_docs_have_python_blocks():
    names = [name for name, _, _ in blocks()]
    assert "README.md#0" in names and any(n.startswith("docs/") for n in names)


@pytest.mark.parametrize(("name", "code", "why"), blocks(), ids=[b[0] for b in blocks()])
def test_python_block_runs(name, code, why, tmp_path):
    if why:
        pytest.skip(f"{name}: {why.strip()}")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           # the session's temp folder and torch's cache folder (tests/conftest.py), so that
           # what a block leaves there is seen
           **{k: os.environ[k] for k in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR") if k in os.environ}}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{name} prints nothing: a reader cannot tell what it showed"
