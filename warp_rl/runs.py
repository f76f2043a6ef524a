"""Run folders you can trust: one implementation shared by every trainer.

A *run folder* (``--out`` of ``scripts/train_maze.py``, ``scripts/train_maze_sb3.py`` and
``scripts/train_omniglot.py``) holds a run's ``config.json``, its CSV log(s) and its checkpoint.
This module gives all three trainers the same guarantees:

- **One run per folder.** :func:`acquire_lock` takes an exclusive ``fcntl.flock`` on
  ``<folder>/.lock`` for the run's lifetime; a second process on the same folder is refused with a
  message naming the holder (pid, host, start time, command). The kernel drops the lock when the
  process ends, however it ends, so a killed run never leaves a stale lock. Within one process
  the lock is re-entrant (reference-counted), so a script and the trainer it builds share it.
- **Stale temp files cleaned.** Taking the lock deletes the ``.NAME.*.tmp`` files that a process
  killed in the middle of an atomic write left behind (nobody else can be writing them).
- **Atomic checkpoints with a fallback.** :func:`save_checkpoint` writes a temp file, fsyncs it,
  renames the current checkpoint to ``NAME.prev.EXT`` and the temp file to ``NAME.EXT``. The
  latest and the previous checkpoint are thus always complete files. :func:`load_checkpoint`
  falls back to the previous one, with a warning, when the latest is missing, truncated,
  corrupt or refused; if neither loads, the error names both files and why each was refused.
- **Loading never runs code.** Checkpoints are read with ``torch.load(weights_only=True)``:
  tensors and plain data (numbers, strings, lists, dicts) only. A file that asks to build any
  other object is refused. Environment objects are saved through :func:`object_state`, which
  turns their attributes into plain data and tensors, and restored into an object the trainer
  built itself from its configuration (:func:`load_object_state`).
- **Config and logs written the same way.** :func:`write_json` writes strict JSON atomically
  (non-finite numbers become ``null``; ``NaN``/``Infinity`` never appear); :class:`CsvLog` is the
  append-only CSV log of every trainer (non-finite numbers are written as empty fields). A
  checkpoint stores the log's byte length (:meth:`CsvLog.sync`); resuming truncates the log back
  to it, and refuses when the log is missing or shorter (its history was lost).
- **One resume policy.** :func:`check_resume` compares the run's saved settings with the ones
  asked for: settings in ``may_change`` may differ (the budget, threads, device, ...), every
  other must match; the requested length may not be shorter than what is already done.

Every user-facing failure is a :class:`RunError` (or subclass): one paragraph naming the file or
flag, what was expected and what to do. The scripts print it and exit with code 2
(:data:`EXIT_USAGE`); a run stopped by a non-finite loss or parameter exits with code 3
(:data:`EXIT_NONFINITE`).

torch is imported on first use (saving, loading, :func:`object_state`), so that the scripts'
command lines, which use this module's errors and names, answer ``--help`` without loading it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import enum
import errno
import fcntl
import functools
import io
import json
import math
import os
import pickle
import socket
import sys
import tempfile
import types
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from warp_rl.utils import _default_mode, atomic_write_text

if TYPE_CHECKING:
    import torch

EXIT_USAGE = 2
"""Exit code of a refused flag, path or file (like argparse's)."""
EXIT_NONFINITE = 3
"""Exit code of a run stopped by a non-finite loss or parameter."""
LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
"""Every trainer's settings file in its run folder (strict JSON, :func:`write_json`)."""
CHECKPOINT_NAME = "checkpoint.pt"
"""Every trainer's checkpoint in its run folder (:func:`save_checkpoint`); the previous one is
``checkpoint.prev.pt``."""
LOG_NAME = "log.csv"
"""The maze trainers' per-episode log (``agents.trainer`` and ``scripts/train_maze_sb3.py``, one
row per episode of the batch of mazes, :class:`CsvLog`), which ``scripts/plot_maze.py`` reads."""


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class RunError(ValueError):
    """A refused path, file, flag or resume: the message is one paragraph for the user (what,
    what was expected, what to do). Scripts print it and exit with :data:`EXIT_USAGE`.
    (A ``ValueError``, so callers that already catch bad values catch it too.)"""


class RunLockedError(RunError):
    """Another process holds the run folder's lock."""


class CheckpointError(RunError):
    """No usable checkpoint: the message names every file tried and why it was refused."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """Neither the checkpoint nor its previous version exists: nothing to resume."""


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or parameter; the run stopped (exit code
    :data:`EXIT_NONFINITE`) with the last finite checkpoint kept."""


class ExitWithMessage(SystemExit):
    """``SystemExit`` with an exit code (:data:`EXIT_USAGE`, :data:`EXIT_NONFINITE`) whose
    ``str()`` is the (already printed) message, so callers and tests can still read it."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def report_and_exit(err: BaseException, code: int = EXIT_USAGE) -> ExitWithMessage:
    """Print ``error: <message>`` to stderr and return the :class:`ExitWithMessage` to raise."""
    print(f"error: {err}", file=sys.stderr)
    return ExitWithMessage(str(err), code)


# ------------------------------------------------------------------------------------------------
# The folder itself
# ------------------------------------------------------------------------------------------------
def check_out_dir(path: str | os.PathLike | None, flag: str = "--out") -> Path:
    """Make sure ``path`` can be a run folder: create it if needed and check it is a writable
    folder. Raises :class:`RunError` naming ``flag`` otherwise (an empty path, a file, a folder
    that cannot be created or written)."""
    if path is None or str(path).strip() == "":
        raise RunError(f"{flag} is empty; expected a folder for the run's files (it is created "
                       f"if needed); pass a path such as {flag} runs/my-run")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{flag} {path} is a file, not a folder; expected a folder for the run's "
                       f"files; pass another {flag} or move the file away")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"{flag} {path}: the folder cannot be created ({_os_reason(err)}); "
                       f"expected a folder you can write to; pass another {flag}") from None
    probe = None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise RunError(f"{flag} {path}: cannot write into this folder ({_os_reason(err)}); "
                       f"expected a folder you can write to; fix its permissions or pass "
                       f"another {flag}") from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    return path


def _os_reason(err: OSError) -> str:
    if err.errno == errno.EROFS:
        return "read-only file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    return err.strerror or type(err).__name__


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files (``.NAME.*.tmp``) that an atomic write killed half-way left in
    ``folder``; returns what was deleted. Call it only while holding the folder's lock."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


@dataclass
class _HeldLock:
    fd: int
    count: int


_HELD: dict[str, _HeldLock] = {}


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` (or the process ends).

    Use :func:`acquire_lock`; also a context manager.
    """

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self._key: str | None = key

    @property
    def held(self) -> bool:
        return self._key is not None

    def release(self) -> None:
        """Release this hold (the lock itself goes when the last hold in the process goes)."""
        if self._key is None:
            return
        held = _HELD[self._key]
        held.count -= 1
        if held.count == 0:
            del _HELD[self._key]
            with contextlib.suppress(OSError):
                fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)
        self._key = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(folder: str | os.PathLike, flag: str = "--out") -> RunLock:
    """Take the exclusive lock of the run folder ``folder`` (created if needed) and delete its
    stale temp files.

    Raises:
        RunLockedError: another process holds it; the message names the holder.
        RunError: ``folder`` cannot be a run folder (see :func:`check_out_dir`).
    """
    folder = check_out_dir(folder, flag)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key].count += 1
        return RunLock(folder, key)
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunError(f"{flag} {folder}: cannot open the lock file {lock_path} "
                       f"({_os_reason(err)}); fix the folder's permissions or pass another "
                       f"{flag}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RunLockedError(
            f"{flag} {folder} is in use by another run ({holder}); two runs in one folder "
            f"would overwrite each other's checkpoint and log. Wait for that run to finish or "
            f"stop it, or pass another {flag}") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _HELD[key] = _HeldLock(fd, 1)
    clean_stale_temps(folder)
    return RunLock(folder, key)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}: "
                f"{info.get('command', '?')}")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


# ------------------------------------------------------------------------------------------------
# Strict JSON
# ------------------------------------------------------------------------------------------------
def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively
    through dicts, lists and tuples (numpy scalars become Python numbers)."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps_strict(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text (RFC 8259): non-finite numbers become ``null``, never ``NaN``."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (see :func:`dumps_strict`), atomically."""
    atomic_write_text(path, dumps_strict(obj) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file; :class:`RunError` naming the file if it is missing or unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: the run's {what} is missing; expected the file written when "
                       f"the run started; start a new run (another --out, or --overwrite)"
                       ) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunError(f"{path}: the run's {what} cannot be read ({type(err).__name__}: {err}); "
                       f"expected JSON written by this project; start a new run (another "
                       f"--out, or --overwrite)") from None


# ------------------------------------------------------------------------------------------------
# CSV log
# ------------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """How a log cell is written: floats with ``repr`` (exact), non-finite ones as an empty
    field, anything else with ``str``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


class CsvLog:
    """The append-only CSV log of every trainer: one header line, one line per row.

    Each row is one ``write`` followed by a flush (a crash loses at most a torn last line).
    :meth:`sync` fsyncs and returns the byte length, which the checkpoint stores; resuming
    (``resume_bytes``) truncates the file back to it, so rows written after the checkpoint (or a
    torn line) are dropped and written again by the resumed run.

    Args:
        path: the CSV file.
        fields: column names, in order.
        resume_bytes: ``None`` to start a new log (header only); otherwise the byte length the
            checkpoint recorded. :class:`RunError` if the file is then missing, shorter or has
            another header (its history is lost: the run cannot continue it faithfully).
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str],
                 resume_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)
        header = ",".join(self.fields) + "\n"
        if resume_bytes is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file: TextIO = open(self.path, "w", newline="", encoding="utf-8")
            self.file.write(header)
            self.file.flush()
            return
        lost = ("its history is lost, so the run cannot be continued faithfully; restore the "
                "file, or start a new run (another --out, or --overwrite)")
        if not self.path.is_file():
            raise RunError(f"cannot resume: the log {self.path} is missing; the checkpoint "
                           f"expects {resume_bytes} bytes of it; {lost}")
        size = self.path.stat().st_size
        if size < resume_bytes:
            raise RunError(f"cannot resume: the log {self.path} has {size} bytes but the "
                           f"checkpoint expects at least {resume_bytes}; {lost}")
        with open(self.path, "rb") as f:
            first = f.readline().decode("utf-8", "replace")
        if first != header:
            raise RunError(f"cannot resume: the log {self.path} starts with {first.strip()!r}, "
                           f"expected the header {header.strip()!r}; {lost}")
        self.file = open(self.path, "r+", newline="", encoding="utf-8")
        self.file.truncate(resume_bytes)
        self.file.seek(resume_bytes)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row (missing fields are empty; see :func:`format_value`)."""
        self.file.write(",".join(format_value(row.get(k, "")) for k in self.fields) + "\n")
        self.file.flush()

    def sync(self) -> int:
        """Flush and fsync; the byte length a checkpoint stores."""
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


class NoLog:
    """A :class:`CsvLog` that writes nothing (ranks other than 0 under torchrun)."""

    def append(self, row: Mapping[str, Any]) -> None:
        pass

    def sync(self) -> int:
        return 0

    def close(self) -> None:
        pass


def write_csv(path: str | os.PathLike, fields: Sequence[str],
              rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a whole small CSV table atomically (same cell format as :class:`CsvLog`)."""
    lines = [",".join(fields)]
    lines += [",".join(format_value(r.get(k, "")) for k in fields) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the previous checkpoint: ``NAME.prev.EXT``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """True if the checkpoint ``path`` or its previous version exists."""
    return Path(path).exists() or previous_path(path).exists()


def existing_checkpoints(path: str | os.PathLike) -> list[str]:
    """Names of the checkpoint ``path`` and its previous version that exist.

    The one rule of every trainer for "this folder holds a run": a run exists once it has a
    checkpoint (each trainer writes one as it starts). A log without a checkpoint is what a run
    stopped before that first checkpoint left; there is nothing to resume and nothing a new run
    could lose, so a new run replaces it.
    """
    return [p.name for p in (Path(path), previous_path(path)) if p.exists()]


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete the checkpoint ``path`` and its previous version."""
    Path(path).unlink(missing_ok=True)
    previous_path(path).unlink(missing_ok=True)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` ``state`` to ``path`` atomically, keeping the old file as
    :func:`previous_path`.

    The data go to a temp file in the same folder, which is fsynced; then the current checkpoint
    becomes the previous one and the temp file the current one (two renames, then an fsync of
    the folder). A crash at any point leaves complete files only; between the two renames only
    the previous one exists, which :func:`load_checkpoint` then uses.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        if path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code.

    Raises:
        CheckpointError: the file is missing, not a torch file, truncated, or asks to build an
            object other than tensors and plain data (refused, never executed).
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # e.g. "Unsupported operand": random bytes
            raise CheckpointError(f"{path}: is not a readable torch checkpoint (truncated or "
                                  "corrupt: not a pickle)") from None
        raise CheckpointError(
            f"{path}: refused, it holds objects other than tensors and plain data (this project "
            f"only loads tensors and plain data, so that a file can never run code)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            UnicodeDecodeError, AttributeError, TypeError, IndexError) as err:
        if isinstance(err, OSError) and not isinstance(err, zipfile.BadZipFile) and \
                err.errno is not None:
            reason = f"cannot be read ({_os_reason(err)})"
        elif path.stat().st_size == 0:
            reason = "is empty"
        else:
            reason = ("is not a readable torch checkpoint (truncated or corrupt: "
                      f"{type(err).__name__})")
        raise CheckpointError(f"{path}: {reason}") from None


def load_checkpoint(path: str | os.PathLike, check: Callable[[Any], None] | None = None,
                    map_location: Any = "cpu", warn: Callable[[str], None] | None = None
                    ) -> tuple[dict[str, Any], Path]:
    """Load the checkpoint ``path`` safely (:func:`safe_load`), falling back to the previous
    one (:func:`previous_path`) if the latest is missing, unreadable, refused, or rejected by
    ``check``.

    Args:
        path: the latest checkpoint.
        check: called with the loaded object; raises (``ValueError``, ``KeyError``,
            ``TypeError`` or :class:`RunError`) to reject it (wrong kind of file or format).
        map_location: as for ``torch.load``.
        warn: receives the warning printed when falling back (default: ``stderr``).

    Returns:
        ``(state, file it came from)``.

    Raises:
        CheckpointError: neither file is usable; the message names both and why.
    """
    path = Path(path)
    if not checkpoint_exists(path):
        raise NoCheckpointError(f"no checkpoint at {path} (nor {previous_path(path).name})")
    reasons = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            reasons.append(f"{candidate}: file not found")
            continue
        try:
            state = safe_load(candidate, map_location)
            if check is not None:
                check(state)
        except CheckpointError as err:
            reasons.append(str(err))
            continue
        except (RunError, ValueError, KeyError, TypeError) as err:
            reasons.append(f"{candidate}: {err}")
            continue
        if candidate != path:
            message = (f"warning: the latest checkpoint could not be used ({reasons[0]}); "
                       f"continuing from the previous one, {candidate}")
            (warn or (lambda m: print(m, file=sys.stderr)))(message)
        return state, candidate
    raise CheckpointError(
        "no usable checkpoint: " + "; ".join(reasons) + ". Expected a checkpoint written by "
        "this project's trainer; start a new run (another --out, or --overwrite), or restore "
        "the file from a backup")


# ------------------------------------------------------------------------------------------------
# Resume policy
# ------------------------------------------------------------------------------------------------
def check_resume(saved: Mapping[str, Any], requested: Mapping[str, Any],
                 may_change: Iterable[str], *, length_key: str | None = None,
                 done: int | None = None, flag_of: Callable[[str], str] | None = None,
                 where: str = "the run") -> None:
    """The one resume policy.

    Args:
        saved: the settings the run was started with (its checkpoint or ``config.json``).
        requested: the settings asked for now (only keys present here are compared).
        may_change: settings that may differ on resume (budget, threads, device, output...).
        length_key: the requested run length (``episodes``, ``meta_steps``...); it may grow
            but not be shorter than ``done``.
        done: how much of the run is already done (same unit as ``length_key``).
        flag_of: the command-line flag of a setting, for messages (default ``--name-with-dashes``).
        where: the run's name in messages (its folder).

    Raises:
        RunError: a fixed setting differs (all differences are listed), or the requested length
            is shorter than what is done.
    """
    flag_of = flag_of or (lambda k: "--" + k.replace("_", "-"))
    free = set(may_change)
    differ = [f"cannot change {flag_of(k)} on resume (the run has {saved.get(k)!r}, asked for "
              f"{v!r})" for k, v in requested.items()
              if k not in free and k in saved and saved.get(k) != v]
    if differ:
        raise RunError(
            f"{where} was started with other settings: " + "; ".join(differ) + ". Only "
            + ", ".join(sorted(flag_of(k) for k in free)) + " may change; resume with the "
            "run's own settings, or start a new run in another folder")
    if length_key is not None and done is not None:
        length = requested.get(length_key, saved.get(length_key))
        if length is not None and length < done:
            raise RunError(
                f"cannot resume {where} with {flag_of(length_key)} {length}: it has already "
                f"done {done}; expected {flag_of(length_key)} >= {done} (equal to only finish "
                f"its outputs, larger to train on)")


# ------------------------------------------------------------------------------------------------
# Objects as plain data
# ------------------------------------------------------------------------------------------------
STATIC_ATTRIBUTES = frozenset({"class_attributes"})
"""Attribute names :func:`object_state` always leaves out: class data copied onto instances
(SB3's ``VecEnvWrapper.class_attributes`` holds the class's members)."""


def _is_skipped(value: Any) -> bool:
    """Values :func:`object_state` leaves out: they belong to the object's construction."""
    if isinstance(value, type | types.FunctionType | types.MethodType | types.ModuleType
                  | types.MappingProxyType | types.GetSetDescriptorType
                  | types.MemberDescriptorType | property | functools.partial | slice | range
                  | io.IOBase | np.dtype):
        return True
    if callable(value) and not hasattr(value, "__dict__"):  # builtins, descriptors, ...
        return True
    try:
        from gymnasium import spaces
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, spaces.Space)


def _byte_tensor(data: bytes) -> torch.Tensor:
    """``data`` as a uint8 tensor (a copy)."""
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(
        0, dtype=torch.uint8)


def object_state(value: Any, exclude: Iterable[str] = (), _depth: int = 0) -> Any:
    """``value`` as plain data and tensors that ``torch.load(weights_only=True)`` accepts.

    Numbers, strings, ``None`` and tensors stay as they are; numpy arrays and scalars,
    numpy generators (their bit-generator state), lists, tuples, deques, dicts, sets and enums
    are tagged plain data; any other object becomes the state of its instance attributes
    (recursively). Classes, functions, gymnasium spaces and slices are left out: they come from
    the object the state is loaded into, which the caller builds from its own configuration
    (see :func:`load_object_state`). No class name is stored, so loading creates no objects.
    ``exclude``: attribute names of ``value`` (an object) to leave out.
    """
    import torch

    if _depth > 50:
        raise ValueError("object_state: nesting too deep")
    d = _depth + 1
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, bytes):  # (bytes are not among weights_only's plain types)
        return {"__bytes__": _byte_tensor(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.kind in "UOSV":
            if value.dtype.kind == "U":
                return {"__ndarray_str__": value.tolist(), "dtype": value.dtype.str}
            raise ValueError(f"object_state: cannot store a numpy array of {value.dtype}")
        return {"__ndarray__": _byte_tensor(np.ascontiguousarray(value).tobytes()),
                "dtype": value.dtype.str,
                "shape": list(value.shape), "writeable": bool(value.flags.writeable)}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.item(), "dtype": value.dtype.str}
    if isinstance(value, np.random.Generator):
        return {"__np_generator__": object_state(value.bit_generator.state, _depth=d)}
    if isinstance(value, np.random.RandomState):
        return {"__np_randomstate__": object_state(value.get_state(legacy=False), _depth=d)}
    if isinstance(value, enum.Enum):
        return {"__enum__": object_state(value.value, _depth=d)}
    if isinstance(value, collections.deque):
        return {"__deque__": [object_state(v, _depth=d) for v in value], "maxlen": value.maxlen}
    if isinstance(value, list):
        return {"__list__": [object_state(v, _depth=d) for v in value]}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"__tuple__": [object_state(v, _depth=d) for v in value]}
    if isinstance(value, set | frozenset):
        return {"__set__": [object_state(v, _depth=d) for v in sorted(value, key=repr)]}
    if isinstance(value, dict):
        return {"__dict__": [[object_state(k, _depth=d), object_state(v, _depth=d)]
                             for k, v in value.items() if not _is_skipped(v)]}
    if hasattr(value, "_fields"):  # a namedtuple: its fields, rebuilt with the target's type
        return {"__namedtuple__": [object_state(v, _depth=d) for v in value]}
    if hasattr(value, "__dict__"):
        skip = set(exclude) | STATIC_ATTRIBUTES
        return {"__object__": {k: object_state(v, _depth=d) for k, v in vars(value).items()
                               if k not in skip and not _is_skipped(v)}}
    raise ValueError(f"object_state: cannot store a {type(value).__name__}")


def _plain(state: Any, like: Any) -> Any:
    """The value of ``state`` (from :func:`object_state`); ``like`` is the target's current
    value (used for objects, namedtuples and enums, which are updated or rebuilt in place)."""
    if not isinstance(state, dict):
        return state
    if "__bytes__" in state:
        return state["__bytes__"].numpy().tobytes()
    if "__ndarray__" in state:
        arr = np.frombuffer(state["__ndarray__"].numpy().tobytes(), dtype=np.dtype(state["dtype"]))
        arr = arr.reshape(state["shape"]).copy()
        arr.flags.writeable = state["writeable"]
        return arr
    if "__ndarray_str__" in state:
        return np.array(state["__ndarray_str__"], dtype=np.dtype(state["dtype"]))
    if "__npscalar__" in state:
        return np.dtype(state["dtype"]).type(state["__npscalar__"])
    if "__np_generator__" in state:
        gen = like if isinstance(like, np.random.Generator) else np.random.default_rng()
        gen.bit_generator.state = _plain(state["__np_generator__"], None)
        return gen
    if "__np_randomstate__" in state:
        rs = like if isinstance(like, np.random.RandomState) else np.random.RandomState()
        rs.set_state(_plain(state["__np_randomstate__"], None))
        return rs
    if "__enum__" in state:
        if not isinstance(like, enum.Enum):
            raise ValueError("object_state: an enum where the target has none")
        return type(like)(_plain(state["__enum__"], None))
    if "__deque__" in state:
        return collections.deque([_plain(v, None) for v in state["__deque__"]],
                                 maxlen=state["maxlen"])
    if "__list__" in state:
        items = state["__list__"]
        likes = like if isinstance(like, list) and len(like) == len(items) else [None] * len(items)
        return [_plain(v, t) for v, t in zip(items, likes, strict=True)]
    if "__tuple__" in state:
        return tuple(_plain(v, None) for v in state["__tuple__"])
    if "__set__" in state:
        return {_plain(v, None) for v in state["__set__"]}
    if "__dict__" in state:
        out = {}
        for k, v in state["__dict__"]:
            key = _plain(k, None)
            out[key] = _plain(v, like.get(key) if isinstance(like, dict) else None)
        if isinstance(like, dict):  # keep what was left out (functions, spaces)
            out = {**{k: v for k, v in like.items() if _is_skipped(v)}, **out}
        return out
    if "__namedtuple__" in state:
        items = [_plain(v, None) for v in state["__namedtuple__"]]
        if like is None or not hasattr(like, "_fields"):
            raise ValueError("object_state: a namedtuple where the target has none")
        return type(like)(*items)
    if "__object__" in state:
        if like is None or not hasattr(like, "__dict__"):
            raise ValueError("object_state: an object where the target has none")
        load_object_state(like, state)
        return like
    raise ValueError(f"object_state: unknown entry {sorted(state)[:3]}")


def load_object_state(target: Any, state: Mapping[str, Any]) -> None:
    """Set ``target``'s instance attributes from :func:`object_state` ``(target-like object)``.

    ``target`` is an object the caller built (from its own configuration) of the same kind as
    the one saved; nested objects are updated in place, plain values replaced.
    """
    if not isinstance(state, Mapping) or "__object__" not in state:
        raise ValueError("object_state: expected the state of an object")
    attrs = vars(target)
    for name, value in state["__object__"].items():
        attrs[name] = _plain(value, attrs.get(name))
