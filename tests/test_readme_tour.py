"""The README's quick tour runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_tour_runs():
    text = README.read_text()
    section = text[text.index("## A quick tour"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (quick tour)", "exec"), namespace)
    assert namespace["obs"].shape == (17,)
    assert namespace["vec"].num_envs == 4096
    assert int(namespace["action"]) in range(4)
    assert len(namespace["model"].warp_parameters()) == 2  # the warp layer's weight and bias
