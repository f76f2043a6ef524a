"""Small synthetic Omniglot look-alikes in the real formats (for tests and smoke runs).

Each character is a few random strokes; its 20 drawings are that prototype with a small random
jitter. :func:`write_npz_pair` writes the shared-folder layout (npz pair + ``alphabets.csv``),
:func:`write_official` the official PNG layout (as a folder or a ``.zip``) and
:func:`write_runs` a one-shot ``all_runs`` folder.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .data import DRAWINGS, RAW_SIZE


def draw_characters(
    num_characters: int, rng: np.random.Generator, drawings: int = DRAWINGS
) -> np.ndarray:
    """bool ``(num_characters, drawings, 105, 105)`` ink masks (True = ink): three random
    strokes per character, jittered per drawing, 3 pixels wide."""
    n, d = num_characters, drawings
    strokes = rng.uniform(15, 90, size=(n, 1, 3, 2, 2))  # (N, 1, stroke, start/end, xy)
    jitter = strokes + rng.normal(0, 2.5, size=(n, d, 3, 2, 2))
    t = np.linspace(0.0, 1.0, 60)[:, None]  # (P, 1)
    pts = (1 - t) * jitter[:, :, :, None, 0] + t * jitter[:, :, :, None, 1]  # (N, D, 3, P, 2)
    pts = np.rint(pts).astype(int).reshape(n, d, -1, 2)
    out = np.zeros((n, d, RAW_SIZE, RAW_SIZE), dtype=bool)
    ci, di = np.meshgrid(np.arange(n), np.arange(d), indexing="ij")
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            xs = np.clip(pts[..., 0] + dx, 0, RAW_SIZE - 1)
            ys = np.clip(pts[..., 1] + dy, 0, RAW_SIZE - 1)
            out[ci[..., None], di[..., None], ys, xs] = True
    return out


def _alphabet_specs(
    num_alphabets: int, characters: int | list[int], first: int = 0
) -> list[tuple[str, int]]:
    counts = [characters] * num_alphabets if isinstance(characters, int) else list(characters)
    return [(f"Alphabet_{first + i:02d}", n) for i, n in enumerate(counts)]


def write_npz_pair(
    root: str | os.PathLike,
    num_alphabets: int = 12,
    characters: int | list[int] = 20,
    num_evaluation: int = 2,
    seed: int = 0,
) -> Path:
    """The shared layout: ``images_background.npz``, ``images_evaluation.npz`` (bool,
    True = paper) and ``alphabets.csv``; the last ``num_evaluation`` alphabets are evaluation."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = _alphabet_specs(num_alphabets, characters)
    rows, parts, next_id = [], {"background": [], "evaluation": []}, 1
    for i, (name, n) in enumerate(specs):
        set_name = "evaluation" if i >= num_alphabets - num_evaluation else "background"
        parts[set_name].append(~draw_characters(n, rng))
        rows.append((set_name, name, next_id, n))
        next_id += n
    for set_name, arrays in parts.items():
        images = (np.concatenate(arrays) if arrays
                  else np.zeros((0, DRAWINGS, RAW_SIZE, RAW_SIZE), bool))
        labels = np.repeat(np.arange(len(images))[:, None], DRAWINGS, axis=1)
        np.savez_compressed(root / f"images_{set_name}.npz", images=images, labels=labels)
    with open(root / "alphabets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "alphabet", "first_character_id", "num_characters"])
        w.writerows(rows)
    return root


def _png(ink: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(~ink).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def write_official(
    path: str | os.PathLike,
    set_name: str = "images_background",
    num_alphabets: int = 2,
    characters: int | list[int] = 3,
    seed: int = 0,
    as_zip: bool = False,
    first_alphabet: int = 0,
) -> Path:
    """The official layout ``<set>/<Alphabet>/characterNN/IIII_DD.png`` under folder ``path``,
    or inside the zip archive ``path`` when ``as_zip``; alphabets are named
    ``Alphabet_NN`` from ``NN = first_alphabet``. Returns ``path``."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    char_id = 1
    for name, n in _alphabet_specs(num_alphabets, characters, first_alphabet):
        ink = draw_characters(n, rng)
        for c in range(n):
            for d in range(DRAWINGS):
                rel = f"{set_name}/{name}/character{c + 1:02d}/{char_id:04d}_{d + 1:02d}.png"
                files[rel] = _png(ink[c, d])
            char_id += 1
    if as_zip:
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:
            for rel, data in files.items():
                zf.writestr(rel, data)
    else:
        for rel, data in files.items():
            p = path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return path


def write_runs(path: str | os.PathLike, num_runs: int = 20, seed: int = 0) -> Path:
    """An ``all_runs`` folder of ``num_runs`` 20-way one-shot runs (random class order)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    for r in range(1, num_runs + 1):
        run = path / f"run{r:02d}"
        (run / "training").mkdir(parents=True, exist_ok=True)
        (run / "test").mkdir(parents=True, exist_ok=True)
        ink = draw_characters(20, rng, drawings=2)
        perm = rng.permutation(20)
        lines = []
        for c in range(20):
            (run / "training" / f"class{c + 1:02d}.png").write_bytes(_png(ink[c, 0]))
        for i, c in enumerate(perm):
            (run / "test" / f"item{i + 1:02d}.png").write_bytes(_png(ink[c, 1]))
            lines.append(f"run{r:02d}/test/item{i + 1:02d}.png run{r:02d}/training/"
                         f"class{c + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return path
