"""The official Omniglot one-shot benchmark (Lake et al. 2015): 20 runs of 20-way 1-shot.

``all_runs.zip`` (or its unzipped folder) holds ``runNN/training/classCC.png`` (one drawing of
each of 20 characters), ``runNN/test/itemII.png`` (20 other drawings of the same characters)
and ``runNN/class_labels.txt`` (lines ``runNN/test/itemII.png runNN/training/classCC.png``).
A learner adapts on a run's 20 training drawings (one per class, every step on all 20, each
with a fresh random distortion as in the protocol) and classifies its 20 test drawings as they
are (undistorted). The score is the mean accuracy over the 20 runs.

The drawings come from the 20 evaluation alphabets, some of which the alphabet split may put
in meta-training: :func:`identify_alphabets` finds each training drawing's alphabet from the
fingerprints kept in the data cache, so the report can say how many runs were unseen.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import (
    HOW_TO_GET,
    OmniglotDataError,
    OmniglotImages,
    _decode_png,
    _raw_hash,
    resize_ink,
)
from .tasks import TaskPool

NUM_RUNS = 20
WAYS = 20


@dataclass(frozen=True)
class OneShotRun:
    """One run.

    Attributes:
        name: ``runNN``.
        train: uint8 ``(20, 28, 28)``: training drawing of class ``c`` (``classCC``, c = CC-1).
        test: uint8 ``(20, 28, 28)``: test drawings ``item01`` ... ``item20``.
        test_labels: int ``(20,)``: the class of each test drawing.
        train_hashes: 20 fingerprints of the 105x105 training drawings.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    train_hashes: tuple[bytes, ...]


_LINE = re.compile(r"^\s*(\S*test/item(\d+)\.png)\s+(\S*training/class(\d+)\.png)\s*$")


def read_runs(path: str | os.PathLike) -> list[OneShotRun]:
    """Read the 20 runs from ``all_runs.zip`` or its unzipped folder.

    Raises:
        OmniglotDataError: a file is missing, unreadable or the labels file is malformed.
    """
    path = Path(path)
    if path.is_dir():
        def read(name: str) -> bytes:
            p = path / name
            if not p.is_file():
                raise OmniglotDataError(f"{p}: file not found (one-shot runs); {HOW_TO_GET}")
            return p.read_bytes()
    elif path.is_file():
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise OmniglotDataError(
                f"{path}: not a readable zip archive ({e}); expected the official all_runs.zip"
            ) from None
        names = set(zf.namelist())

        def read(name: str) -> bytes:
            if name not in names:
                raise OmniglotDataError(f"{path}: no member {name} (one-shot runs)")
            return zf.read(name)
    else:
        raise OmniglotDataError(
            f"{path}: not found; expected the official all_runs.zip (in ../shared/data/omniglot, "
            f"or https://github.com/brendenlake/omniglot, folder python/one-shot-classification)"
        )
    runs = []
    for r in range(1, NUM_RUNS + 1):
        run = f"run{r:02d}"
        text = read(f"{run}/class_labels.txt").decode("utf-8", errors="replace")
        labels = {}
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            m = _LINE.match(line)
            if m is None:
                raise OmniglotDataError(
                    f"{path}: {run}/class_labels.txt line {i}: {line!r}, expected "
                    f"'{run}/test/itemII.png {run}/training/classCC.png'"
                )
            labels[int(m.group(2)) - 1] = int(m.group(4)) - 1
        if sorted(labels) != list(range(WAYS)) or sorted(labels.values()) != list(range(WAYS)):
            raise OmniglotDataError(
                f"{path}: {run}/class_labels.txt must map items 01-20 one-to-one to classes 01-20"
            )
        train_ink = np.stack(
            [
                _decode_png(read(f"{run}/training/class{c:02d}.png"), f"{path}:{run}/class{c:02d}")
                for c in range(1, WAYS + 1)
            ]
        )
        test_ink = np.stack(
            [
                _decode_png(read(f"{run}/test/item{i:02d}.png"), f"{path}:{run}/item{i:02d}")
                for i in range(1, WAYS + 1)
            ]
        )
        runs.append(
            OneShotRun(
                run,
                resize_ink(train_ink),
                resize_ink(test_ink),
                np.array([labels[i] for i in range(WAYS)]),
                tuple(_raw_hash(x) for x in train_ink),
            )
        )
    return runs


def identify_alphabets(runs: list[OneShotRun], data: OmniglotImages) -> list[list[str | None]]:
    """Per run, the alphabet of each training drawing (None if not found in ``data``)."""
    if data.hashes is None:
        return [[None] * WAYS for _ in runs]
    char_of = {}
    flat = data.hashes.reshape(-1, 8)
    for i, h in enumerate(flat):
        char_of[h.tobytes()] = i // data.hashes.shape[1]
    alphabet_of_char = np.repeat(np.arange(len(data.alphabets)), data.num_characters)
    out = []
    for run in runs:
        names = []
        for h in run.train_hashes:
            c = char_of.get(h)
            names.append(None if c is None else data.alphabets[alphabet_of_char[c]])
        out.append(names)
    return out


def runs_pool(runs: list[OneShotRun], device: torch.device | str = "cpu") -> TaskPool:
    """A :class:`TaskPool` with one task per run: 1 adaptation and 1 held-out image per class
    (held-out = the test item of that class)."""
    train = torch.stack([torch.from_numpy(r.train) for r in runs]).float() / 255.0  # (R, 20, H, W)
    test = []
    for r in runs:
        order = np.argsort(r.test_labels)  # item of class 0, class 1, ...
        test.append(torch.from_numpy(r.test[order]))
    test_t = torch.stack(test).float() / 255.0
    return TaskPool.from_tensors(
        [r.name for r in runs], train[:, :, None].to(device), test_t[:, :, None].to(device)
    )

