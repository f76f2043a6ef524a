"""Every script's ``--help`` answers without importing torch or another heavy library; the
torch-free lists of accepted values the command lines show equal the code's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
MODULES = ["warp_rl.omniglot.bench"]  # run with python -m
HEAVY = ("torch", "gymnasium", "matplotlib", "stable_baselines3", "sb3_contrib", "PIL")
"""Libraries a command line must not import before it has parsed its arguments."""

# Runs the script (or module) as ``__main__`` with ``--help`` in this fresh interpreter, then
# prints the exit code and which of HEAVY were imported by then (argparse prints the help and
# exits while parsing, so whatever is loaded at that point was loaded before the parse).
WRAPPER = """
import runpy, sys
target, heavy = sys.argv[1], sys.argv[2].split(",")
sys.argv = [target, "--help"]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    code = "no exit"
except SystemExit as exit:
    code = exit.code
print("HELP-CHECK", code, [m for m in heavy if m in sys.modules])
"""


def test_every_script_is_checked() -> None:
    assert "train_maze.py" in SCRIPTS and "train_omniglot.py" in SCRIPTS and len(SCRIPTS) >= 11


@pytest.mark.parametrize("target", [f"scripts/{name}" for name in SCRIPTS] + MODULES)
def test_help_answers_before_heavy_imports(target: str) -> None:
    done = subprocess.run([sys.executable, "-c", WRAPPER, target, ",".join(HEAVY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last == "HELP-CHECK 0 []", (
        f"{target} --help: {last} (exit code, then the heavy modules imported before the "
        "arguments were parsed: import them in main() after parse_args)")


def test_command_line_names_equal_the_code() -> None:
    """The names restated for the command lines (which cannot import the torch modules that
    define them) are the code's own, in the same order."""
    import agents
    from agents.warp_objectives import WARP_OBJECTIVES
    from warp_rl import updaters
    from warp_rl.omniglot import cli, meta_learners, models

    assert agents.WARP_OBJECTIVE_NAMES == tuple(WARP_OBJECTIVES)
    assert cli.METHODS == meta_learners.METHODS
    assert cli.TASK_HEADS == meta_learners.TASK_HEADS
    assert cli.FT_HEADS == meta_learners.FT_HEADS
    from warp_rl.omniglot import grouped

    assert cli.TASK_BATCHING == grouped.TASK_BATCHING
    assert cli.ACTIVATIONS == tuple(sorted(models.ACTIVATIONS))
    assert cli.WARP_OBJECTIVES == updaters.WARP_OBJECTIVES
    assert cli.WARP_FILTERS_DEFAULT == models.WarpConfig().filters
