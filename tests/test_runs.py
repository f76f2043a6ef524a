"""warp_rl.runs: the run-folder lock, atomic checkpoints with their fallback, safe loading,
strict JSON, the CSV log, the resume policy and objects as plain data."""

from __future__ import annotations

import collections
import enum
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from warp_rl import runs

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Helpers shared with tests/test_run_faults.py
# ------------------------------------------------------------------------------------------------
class Evil:
    """Pickles as a call to ``os.system`` that creates ``marker``: loading it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_hostile_torch_file(path: Path, marker: Path, **extra) -> None:
    """A torch file whose unpickling would create ``marker``."""
    torch.save({"format": 1, **extra, "payload": Evil(marker)}, path)


def write_hostile_pickle(path: Path, marker: Path) -> None:
    """A plain (legacy) pickle whose loading would create ``marker``."""
    path.write_bytes(pickle.dumps({"format": 1, "payload": Evil(marker)}, protocol=2))


CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "random bytes": lambda data: np.random.default_rng(0).bytes(len(data)),
    "empty": lambda data: b"",
}


def corrupt(path: Path, how: str) -> None:
    path.write_bytes(CORRUPTIONS[how](path.read_bytes()))


def hold_lock_in_subprocess(folder: Path) -> subprocess.Popen:
    """A process holding ``folder``'s lock until it is killed (prints READY first)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from warp_rl import runs
        lock = runs.acquire_lock(sys.argv[1])
        print("READY", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


# ------------------------------------------------------------------------------------------------
# Lock
# ------------------------------------------------------------------------------------------------
def test_a_second_process_is_refused_and_told_who_holds_the_folder(tmp_path):
    proc = hold_lock_in_subprocess(tmp_path)
    try:
        with pytest.raises(runs.RunLockedError) as exc:
            runs.acquire_lock(tmp_path)
        message = str(exc.value)
        assert f"pid {proc.pid}" in message and "in use by another run" in message
        assert "host" in message and "started" in message and "--out" in message
    finally:
        proc.kill()
        proc.wait()
    with runs.acquire_lock(tmp_path) as lock:  # the kernel released it with the process
        assert lock.held


def test_the_lock_is_reentrant_within_a_process_and_released_by_the_last_hold(tmp_path):
    first = runs.acquire_lock(tmp_path)
    second = runs.acquire_lock(tmp_path)
    second.release()
    script = ("import sys; sys.path.insert(0, sys.argv[2]); from warp_rl import runs\n"
              "try:\n    runs.acquire_lock(sys.argv[1])\nexcept runs.RunLockedError:\n"
              "    sys.exit(7)\n")
    check = [sys.executable, "-c", script, str(tmp_path), str(ROOT)]
    assert subprocess.run(check).returncode == 7  # still held by `first`
    first.release()
    assert subprocess.run(check).returncode == 0


def test_taking_the_lock_removes_stale_temp_files(tmp_path):
    stale = tmp_path / ".checkpoint.pt.k2j3h4.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.tmp"
    keep.write_text("mine")
    with runs.acquire_lock(tmp_path):
        assert not stale.exists() and keep.exists()


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_out_is_refused(bad):
    with pytest.raises(runs.RunError, match="--out is empty"):
        runs.check_out_dir(bad)


def test_out_that_is_a_file_or_unwritable_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(runs.RunError, match=r"is a file, not a folder"):
        runs.acquire_lock(f)
    with pytest.raises(runs.RunError, match=r"cannot be created"):
        runs.check_out_dir(f / "sub")
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(runs.RunError, match=r"cannot write into this folder"):
            runs.check_out_dir(ro)
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def test_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint({"step": 1}, path)
    runs.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert torch.load(runs.previous_path(path), weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert runs.existing_checkpoints(path) == ["checkpoint.pt", "checkpoint.prev.pt"]


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, how):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint({"step": 1}, path)
    runs.save_checkpoint({"step": 2}, path)
    corrupt(path, how)
    warnings: list[str] = []
    state, source = runs.load_checkpoint(path, warn=warnings.append)
    assert state["step"] == 1 and source == runs.previous_path(path)
    assert len(warnings) == 1 and str(path) in warnings[0] and "previous" in warnings[0]


def test_a_checkpoint_rejected_by_the_check_falls_back_too(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint({"format": 7}, path)
    runs.save_checkpoint({"format": 8}, path)

    def check(state):
        if state["format"] != 7:
            raise ValueError("wrong format")

    state, _ = runs.load_checkpoint(path, check, warn=lambda m: None)
    assert state["format"] == 7


def test_when_neither_checkpoint_loads_the_error_names_both(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint({"step": 1}, path)
    runs.save_checkpoint({"step": 2}, path)
    corrupt(path, "truncated")
    corrupt(runs.previous_path(path), "empty")
    with pytest.raises(runs.CheckpointError) as exc:
        runs.load_checkpoint(path)
    message = str(exc.value)
    assert str(path) in message and str(runs.previous_path(path)) in message
    assert "is empty" in message and "truncated or corrupt" in message
    assert "weights_only=False" not in message  # never advise loading unsafely
    with pytest.raises(runs.NoCheckpointError, match=r"no checkpoint at .*none\.pt"):
        runs.load_checkpoint(tmp_path / "none.pt")


def test_only_the_previous_checkpoint_left_by_a_crash_between_the_renames_is_used(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runs.save_checkpoint({"step": 1}, path)
    runs.save_checkpoint({"step": 2}, path)
    path.unlink()  # what a crash between the two renames leaves
    state, source = runs.load_checkpoint(path, warn=lambda m: None)
    assert state["step"] == 1 and source.name == "checkpoint.prev.pt"


@pytest.mark.parametrize("writer", [write_hostile_torch_file, write_hostile_pickle])
def test_a_hostile_checkpoint_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.pt"
    writer(path, marker)
    with pytest.raises(runs.CheckpointError, match="refused, it holds objects other than"):
        runs.safe_load(path)
    with pytest.raises(runs.CheckpointError):
        runs.load_checkpoint(path)
    assert not marker.exists()


def test_the_hostile_file_really_is_hostile(tmp_path):
    """The check above means something: an unsafe load of the same file runs the code."""
    marker = tmp_path / "PWNED"
    write_hostile_torch_file(tmp_path / "c.pt", marker)
    torch.load(tmp_path / "c.pt", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------------------
# Strict JSON and the CSV log
# ------------------------------------------------------------------------------------------------
def test_json_never_holds_nan_or_infinity(tmp_path):
    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32("nan"), "d": "x"}
    runs.write_json(tmp_path / "x.json", obj)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [None, None, 1.5], "c": None, "d": "x"}


def test_csv_log_writes_empty_fields_for_non_finite_numbers_and_resumes_by_bytes(tmp_path):
    path = tmp_path / "log.csv"
    log = runs.CsvLog(path, ["step", "loss"])
    log.append({"step": 0, "loss": 0.5})
    size = log.sync()
    log.append({"step": 1, "loss": math.nan})
    log.append({"step": 2, "loss": np.float64("inf")})
    log.close()
    assert path.read_text() == "step,loss\n0,0.5\n1,\n2,\n"
    resumed = runs.CsvLog(path, ["step", "loss"], resume_bytes=size)
    resumed.append({"step": 1, "loss": 0.25})
    resumed.close()
    assert path.read_text() == "step,loss\n0,0.5\n1,0.25\n"


def test_csv_log_refuses_a_missing_shortened_or_foreign_log(tmp_path):
    path = tmp_path / "log.csv"
    with pytest.raises(runs.RunError, match=r"is missing.*history is lost"):
        runs.CsvLog(path, ["step"], resume_bytes=10)
    path.write_text("step\n1\n")
    with pytest.raises(runs.RunError, match="has 7 bytes but the checkpoint expects at least 20"):
        runs.CsvLog(path, ["step"], resume_bytes=20)
    with pytest.raises(runs.RunError, match="expected the header"):
        runs.CsvLog(path, ["episode"], resume_bytes=7)


# ------------------------------------------------------------------------------------------------
# Resume policy
# ------------------------------------------------------------------------------------------------
def test_resume_policy():
    saved = {"lr": 0.1, "seed": 0, "episodes": 20, "threads": 1}
    runs.check_resume(saved, {"episodes": 30, "threads": 2}, {"episodes", "threads"},
                      length_key="episodes", done=20)
    with pytest.raises(runs.RunError) as exc:
        runs.check_resume(saved, {"lr": 0.2, "seed": 1}, {"episodes"})
    assert "cannot change --lr on resume (the run has 0.1, asked for 0.2)" in str(exc.value)
    assert "--seed" in str(exc.value) and "Only --episodes may change" in str(exc.value)
    with pytest.raises(runs.RunError, match=r"--episodes 10: it has already done 20"):
        runs.check_resume(saved, {"episodes": 10}, {"episodes"}, length_key="episodes",
                          done=20)


# ------------------------------------------------------------------------------------------------
# Objects as plain data
# ------------------------------------------------------------------------------------------------
class Mode(enum.Enum):
    A = "a"
    B = "b"


Pair = collections.namedtuple("Pair", "x y")


class Thing:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.arr = np.arange(6, dtype=np.int32).reshape(2, 3)
        self.frozen = np.ones(3)
        self.frozen.flags.writeable = False
        self.names = np.array(["a", "bc"])
        self.buf = collections.deque([1, 2], maxlen=3)
        self.mode = Mode.A
        self.pair = Pair(torch.zeros(2), (1, 2))
        self.info = [{"r": np.float32(1.5), "obs": np.zeros(2)}]
        self.raw = b"\x00\x01"
        self.fn = len  # left out: comes from construction
        self.child = None


def test_object_state_round_trips_through_a_safe_load(tmp_path):
    src = Thing(1)
    src.child = Thing(2)
    src.rng.random(5)
    src.arr += 1
    src.buf.append(9)
    src.mode = Mode.B
    src.pair = Pair(torch.ones(2), (3, 4))
    runs.save_checkpoint({"state": runs.object_state(src)}, tmp_path / "s.pt")
    state = runs.safe_load(tmp_path / "s.pt")["state"]

    dst = Thing(99)
    dst.child = Thing(98)
    runs.load_object_state(dst, state)
    assert dst.rng.random() == src.rng.random()
    assert dst.child.rng.random() == src.child.rng.random()
    np.testing.assert_array_equal(dst.arr, src.arr)
    assert dst.arr.dtype == np.int32 and not dst.frozen.flags.writeable
    assert list(dst.names) == ["a", "bc"] and dst.buf == src.buf and dst.buf.maxlen == 3
    assert dst.mode is Mode.B and isinstance(dst.pair, Pair)
    assert torch.equal(dst.pair.x, torch.ones(2)) and dst.pair.y == (3, 4)
    assert isinstance(dst.info[0]["r"], np.float32) and dst.raw == b"\x00\x01"
    assert dst.fn is len
