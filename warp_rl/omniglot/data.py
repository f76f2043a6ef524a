"""Omniglot readers, checksums, download and the 28x28 cache.

Three sources give the same :class:`OmniglotImages` (every character's 20 drawings, 28x28):

- the **npz pair** of this project's shared data folder: ``images_background.npz`` and
  ``images_evaluation.npz`` (``images``: bool ``(characters, 20, 105, 105)``, True = paper) with
  ``alphabets.csv`` (set, alphabet, first character id, number of characters);
- the **official folder layout** ``<set>/<Alphabet>/characterNN/IIII_DD.png``
  (``images_background``, ``images_evaluation``, or the small subsets such as
  ``images_background_small1``), unzipped or read straight from the official ``.zip`` archives;
- ``download=True``: the official archives fetched from the Omniglot repository and verified
  against their published MD5 checksums before they are read.

Resampling: each 105x105 one-bit drawing becomes a float image with ink = 1 and paper = 0, is
shrunk to 28x28 with PIL's BOX filter (each output pixel is the mean of the source pixels whose
centres fall inside its 3.75 x 3.75 footprint) and is stored as uint8
(``round(255 * ink fraction)``). Ink-as-1 makes the zero padding of the later affine distortion
blank paper. The result is cached once per source in an
``.npz`` under ``~/.cache/warp_rl/omniglot`` (or ``--cache-dir`` / ``$WARP_RL_CACHE``), keyed by
the SHA-256 of the source files, so a changed source is never served from a stale cache.

Checksums: the shared npz pair is checked against its known SHA-256 (:data:`KNOWN_FILES`) when
its ``alphabets.csv`` says it is the official data (964 background and 659 evaluation
characters); an edited file is refused. File digests are remembered in ``checksums.json`` in the
cache folder (or ``$WARP_RL_CHECKSUM_CACHE``), keyed by path, size and modification time, so only
the first use of a file pays for hashing it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from warp_rl.utils import atomic_write_bytes

IMAGE_SIZE = 28
RAW_SIZE = 105
DRAWINGS = 20
RESAMPLE = "PIL BOX on ink=1 float image, 105x105 -> 28x28, stored as uint8"
CACHE_VERSION = 1

DATA_ENV = "WARP_RL_OMNIGLOT"
CACHE_ENV = "WARP_RL_CACHE"
CHECKSUM_CACHE_ENV = "WARP_RL_CHECKSUM_CACHE"
CHECKSUM_CACHE_NAME = "checksums.json"
HOW_TO_GET = (
    "get the data with `python scripts/train_omniglot.py --download --data-root DIR` (fetches "
    "the official archives from https://github.com/brendenlake/omniglot, folder python/), or "
    "point --data-root (or $WARP_RL_OMNIGLOT) at a folder holding either "
    "images_background.npz + images_evaluation.npz + alphabets.csv, or the official "
    "images_background/ and images_evaluation/ folders or their .zip archives"
)

OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}"


@dataclass(frozen=True)
class KnownFile:
    """A published file: its checksum (``algo`` hex digest) and, if known, size and URL."""

    algo: str
    digest: str
    size: int | None = None
    url: str | None = None
    characters: int | None = None
    """For the npz pair: the number of characters ``alphabets.csv`` lists for the official file
    (the digest is enforced for a pair that claims to be the official data)."""


# MD5s of the official archives are those published with torchvision's Omniglot dataset; the
# SHA-256s of the shared files are those of ../shared/data/omniglot/README.md.
KNOWN_FILES: dict[str, KnownFile] = {
    "images_background.zip": KnownFile(
        "md5",
        "68d2efa1b9178cc56df9314c21c6e718",
        9_464_212,
        OFFICIAL_URL.format(name="images_background.zip"),
    ),
    "images_evaluation.zip": KnownFile(
        "md5",
        "6b91aef0f799c5bb55b94e3f2daec811",
        6_462_886,
        OFFICIAL_URL.format(name="images_evaluation.zip"),
    ),
    "images_background_small1.zip": KnownFile(
        "sha256", "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
    ),
    "all_runs.zip": KnownFile(
        "sha256",
        "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
        None,
        OFFICIAL_URL.format(name="all_runs.zip"),
    ),
    "images_background.npz": KnownFile(
        "sha256", "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199",
        characters=964,
    ),
    "images_evaluation.npz": KnownFile(
        "sha256", "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276",
        characters=659,
    ),
}


class OmniglotDataError(RuntimeError):
    """Missing, corrupt or inconsistent Omniglot data (the message names the file)."""


class ChecksumError(OmniglotDataError):
    """A file's checksum or size differs from the published one."""


@dataclass(frozen=True)
class OmniglotImages:
    """Every character's drawings, resized.

    Attributes:
        images: uint8 ``(num_characters, 20, 28, 28)``, ink = 255, paper = 0; characters grouped
            by alphabet in the order of ``alphabets``; drawing ``k`` is the official ``_{k+1:02d}``.
        alphabets: alphabet names (official folder names), one per alphabet.
        sets: ``"background"`` or ``"evaluation"`` (or the folder name of a subset), per alphabet.
        offsets: int ``(num_alphabets + 1,)``; alphabet ``a`` owns rows ``offsets[a]:offsets[a+1]``.
        source: a description of where the images were read from.
        hashes: uint8 ``(num_characters, 20, 8)`` fingerprints of the 105x105 source drawings
            (used to identify the drawings of the one-shot runs), or None.
    """

    images: np.ndarray
    alphabets: tuple[str, ...]
    sets: tuple[str, ...]
    offsets: np.ndarray
    source: str = ""
    hashes: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.alphabets)
        if self.images.ndim != 4 or self.images.shape[1:] != (DRAWINGS, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be (C, 20, 28, 28), got {self.images.shape}")
        if self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        if len(self.sets) != n or self.offsets.shape != (n + 1,):
            raise ValueError("alphabets, sets and offsets disagree in length")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.images):
            raise ValueError("offsets must start at 0 and end at the number of characters")
        if len(set(self.alphabets)) != n:
            raise ValueError(f"alphabet names must be unique, got {self.alphabets}")

    @property
    def num_characters(self) -> np.ndarray:
        """int ``(num_alphabets,)``: characters per alphabet."""
        return np.diff(self.offsets)

    def alphabet(self, name: str) -> np.ndarray:
        """uint8 ``(characters, 20, 28, 28)`` of alphabet ``name``."""
        try:
            a = self.alphabets.index(name)
        except ValueError:
            raise KeyError(f"unknown alphabet {name!r}; known: {list(self.alphabets)}") from None
        return self.images[self.offsets[a] : self.offsets[a + 1]]


# --------------------------------------------------------------------------- checksums


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes (``algo``: any name ``hashlib.new`` accepts, e.g. md5)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_digest(path: str | os.PathLike, cache_file: str | os.PathLike | None) -> str:
    """SHA-256 hex digest of ``path``, remembered in the JSON file ``cache_file`` keyed by the
    file's resolved path, size and modification time (so an unchanged file is hashed once).
    ``cache_file=None`` hashes every time. A broken cache file is ignored and rewritten."""
    path = Path(path)
    if cache_file is None:
        return file_digest(path)
    cache_file = Path(cache_file)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        table = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(table, dict):
            table = {}
    except (OSError, ValueError):
        table = {}
    digest = table.get(key)
    if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
        return digest
    digest = file_digest(path)
    table = {k: v for k, v in table.items() if not k.startswith(f"{path.resolve()}|")}
    table[key] = digest
    try:
        atomic_write_bytes(cache_file, json.dumps(table, indent=1).encode())
    except OSError:  # a read-only cache folder only costs the hashing next time
        pass
    return digest


def default_checksum_cache(cache_dir: str | os.PathLike | None) -> Path:
    """``$WARP_RL_CHECKSUM_CACHE``, else ``checksums.json`` in ``cache_dir`` (default
    :func:`default_cache_dir`)."""
    env = os.environ.get(CHECKSUM_CACHE_ENV)
    if env:
        return Path(env)
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / (
        CHECKSUM_CACHE_NAME)


def verify_npz_pair(root: str | os.PathLike, checksum_cache: str | os.PathLike | None) -> None:
    """Refuse an official npz file whose SHA-256 differs from the known one.

    A file counts as official when ``alphabets.csv`` lists, for its set, the official number
    of characters (:attr:`KnownFile.characters`); other pairs (e.g. synthetic test data) have
    no known checksum and pass.

    Raises:
        ChecksumError: naming the file, both digests and what to do.
    """
    root = Path(root)
    rows = _read_alphabets_csv(root / "alphabets.csv")
    for set_name in dict.fromkeys(r[0] for r in rows):
        name = f"images_{set_name}.npz"
        known = KNOWN_FILES.get(name)
        path = root / name
        if known is None or known.characters is None or not path.is_file():
            continue
        if sum(r[3] for r in rows if r[0] == set_name) != known.characters:
            continue
        got = cached_digest(path, checksum_cache)
        if got != known.digest:
            raise ChecksumError(
                f"{path}: sha256 {got}, expected {known.digest} (alphabets.csv lists the "
                f"official {known.characters} {set_name} characters, so this must be the "
                f"official file; it was changed or is corrupt); restore the file or fetch it "
                f"again; {HOW_TO_GET}"
            )


def verify_file(
    path: str | os.PathLike,
    expected: KnownFile | None = None,
) -> None:
    """Check ``path`` against its published size and checksum.

    Args:
        path: the file.
        expected: what it should be; by default ``KNOWN_FILES[basename]``.

    Raises:
        OmniglotDataError: the file is missing or has no published checksum.
        ChecksumError: size or checksum differ (the message gives both values).
    """
    path = Path(path)
    if expected is None:
        if path.name not in KNOWN_FILES:
            raise OmniglotDataError(
                f"no published checksum for {path.name}; known files: {sorted(KNOWN_FILES)}"
            )
        expected = KNOWN_FILES[path.name]
    if not path.is_file():
        raise OmniglotDataError(f"{path}: file not found; {HOW_TO_GET}")
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise ChecksumError(
            f"{path}: size {size} bytes, expected {expected.size} bytes (incomplete or wrong "
            f"file); delete it and fetch it again; {HOW_TO_GET}"
        )
    got = file_digest(path, expected.algo)
    if got != expected.digest:
        raise ChecksumError(
            f"{path}: {expected.algo} {got}, expected {expected.digest} (corrupt or wrong "
            f"file); delete it and fetch it again; {HOW_TO_GET}"
        )


def _urlretrieve(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def download_official(
    root: str | os.PathLike,
    names: Iterable[str] = ("images_background.zip", "images_evaluation.zip"),
    fetch: Callable[[str, Path], None] = _urlretrieve,
) -> list[Path]:
    """Fetch the official archives into ``root`` and verify each before it is kept.

    A file already present is verified, not fetched again. A fetched file is written to a
    temporary name, checked with :func:`verify_file` and only then renamed, so a failed or
    tampered download never leaves a file that looks valid.

    Args:
        root: destination folder (created if needed).
        names: file names in :data:`KNOWN_FILES` that have a URL.
        fetch: ``fetch(url, dest_path)`` writes the bytes at ``url`` to ``dest_path``
            (replaceable, e.g. in tests or behind a proxy).

    Returns:
        The verified paths.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        known = KNOWN_FILES.get(name)
        if known is None or known.url is None:
            raise ValueError(
                f"cannot download {name!r}; downloadable: "
                f"{sorted(n for n, k in KNOWN_FILES.items() if k.url)}"
            )
        dest = root / name
        if dest.exists():
            verify_file(dest, known)
            out.append(dest)
            continue
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            try:
                fetch(known.url, tmp_path)
            except OSError as e:
                raise OmniglotDataError(f"could not fetch {known.url} into {dest}: {e}") from e
            try:
                verify_file(tmp_path, known)
            except ChecksumError as e:
                raise ChecksumError(f"downloaded {name} from {known.url}: {e}") from None
            os.replace(tmp_path, dest)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()
        out.append(dest)
    return out


# --------------------------------------------------------------------------- resizing


def resize_ink(ink: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize ink masks with PIL's BOX filter (mean of the source pixels under each output
    pixel's footprint; a pixel counts when its centre is inside).

    Args:
        ink: bool or float ``(..., H, W)``, ink = 1.
        size: output side in pixels.

    Returns:
        uint8 ``(..., size, size)``, ``round(255 * ink fraction)``.
    """
    flat = np.asarray(ink, dtype=np.float32).reshape(-1, *ink.shape[-2:])
    out = np.empty((len(flat), size, size), dtype=np.float32)
    for i, img in enumerate(flat):
        out[i] = np.asarray(
            Image.fromarray(img, mode="F").resize((size, size), Image.Resampling.BOX)
        )
    out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return out.reshape(*ink.shape[:-2], size, size)


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """bool ink mask ``(105, 105)`` of an official PNG (1-bit, True = paper in the file)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several types for broken files
        raise OmniglotDataError(f"{where}: not a readable PNG ({e}); {HOW_TO_GET}") from e
    arr = np.asarray(img.convert("L"))
    if arr.shape != (RAW_SIZE, RAW_SIZE):
        raise OmniglotDataError(
            f"{where}: image is {arr.shape[1]}x{arr.shape[0]}, expected {RAW_SIZE}x{RAW_SIZE}"
        )
    return arr < 128


def _raw_hash(ink: np.ndarray) -> bytes:
    """8-byte fingerprint of a 105x105 ink mask (used to identify one-shot run drawings)."""
    return hashlib.sha1(np.packbits(ink.astype(bool)).tobytes()).digest()[:8]


# --------------------------------------------------------------------------- readers


@dataclass
class _Raw:
    """Source images before resizing: bool ink ``(C, 20, 105, 105)`` plus alphabet index."""

    ink: np.ndarray
    alphabets: list[str]
    sets: list[str]
    offsets: np.ndarray
    source: str


def _read_alphabets_csv(path: Path) -> list[tuple[str, str, int, int]]:
    if not path.is_file():
        raise OmniglotDataError(
            f"{path}: file not found (expected the alphabet index with columns set,alphabet,"
            f"first_character_id,num_characters); {HOW_TO_GET}"
        )
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise OmniglotDataError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected the alphabet index "
            f"as UTF-8 CSV with columns set,alphabet,first_character_id,num_characters; "
            f"restore the file; {HOW_TO_GET}"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    need = {"set", "alphabet", "first_character_id", "num_characters"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise OmniglotDataError(
            f"{path}: header {reader.fieldnames}, expected columns {sorted(need)}"
        )
    for i, row in enumerate(reader, start=2):
        try:
            rows.append(
                (
                    row["set"],
                    row["alphabet"],
                    int(row["first_character_id"]),
                    int(row["num_characters"]),
                )
            )
        except (TypeError, ValueError) as e:
            raise OmniglotDataError(f"{path}, line {i}: {e}") from e
    if not rows:
        raise OmniglotDataError(f"{path}: no alphabets listed")
    return rows


def _load_npz_images(path: Path) -> np.ndarray:
    if not path.is_file():
        raise OmniglotDataError(
            f"{path}: file not found (expected a bool array 'images' of shape "
            f"(characters, 20, 105, 105)); {HOW_TO_GET}"
        )
    try:
        with np.load(path) as d:
            if "images" not in d.files:
                raise OmniglotDataError(f"{path}: no array 'images' (has {d.files})")
            images = d["images"]
    except OmniglotDataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError
        raise OmniglotDataError(
            f"{path}: cannot be read as an .npz archive ({type(e).__name__}: {e}); the file is "
            f"corrupt or truncated; {HOW_TO_GET}"
        ) from e
    if images.dtype != np.bool_ or images.ndim != 4 or images.shape[1:] != (20, 105, 105):
        raise OmniglotDataError(
            f"{path}: 'images' is {images.dtype} {images.shape}, expected bool "
            f"(characters, 20, 105, 105)"
        )
    return images


def read_npz_pair(root: str | os.PathLike) -> _Raw:
    """Read ``images_background.npz`` + ``images_evaluation.npz`` + ``alphabets.csv``.

    Background row ``r`` is character id ``r + 1``; evaluation row ``r`` is id ``965 + r``
    (ids continue across the sets in ``alphabets.csv`` order). Pixels are stored with
    True = paper; the returned ink is their negation.
    """
    root = Path(root)
    rows = _read_alphabets_csv(root / "alphabets.csv")
    parts, first_id = [], 1
    for set_name in dict.fromkeys(r[0] for r in rows):
        images = _load_npz_images(root / f"images_{set_name}.npz")
        set_rows = [r for r in rows if r[0] == set_name]
        total = sum(r[3] for r in set_rows)
        if total != len(images) or set_rows[0][2] != first_id:
            raise OmniglotDataError(
                f"{root / 'alphabets.csv'}: the {set_name} alphabets list {total} characters "
                f"from id {set_rows[0][2]}, but images_{set_name}.npz holds {len(images)} "
                f"characters (expected first id {first_id})"
            )
        expect = first_id
        for _, name, start, count in set_rows:
            if start != expect or count <= 0:
                raise OmniglotDataError(
                    f"{root / 'alphabets.csv'}: alphabet {name} starts at id {start} with "
                    f"{count} characters, expected ids to continue at {expect}"
                )
            expect += count
        parts.append(~images)
        first_id += len(images)
    names = [r[1] for r in rows]
    offsets = np.concatenate([[0], np.cumsum([r[3] for r in rows])])
    return _Raw(np.concatenate(parts), names, [r[0] for r in rows], offsets, f"npz pair {root}")


_CHAR_RE = re.compile(r"^character(\d+)$")
_PNG_RE = re.compile(r"^(\d+)_(\d+)\.png$")


class _Tree:
    """Uniform listing of a folder or a zip archive: ``{relative path: reader}`` of PNGs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[tuple[str, ...], Callable[[], bytes]] = {}
        if path.is_dir():
            for p in sorted(path.rglob("*.png")):
                self.files[p.relative_to(path).parts] = p.read_bytes
        else:
            try:
                zf = zipfile.ZipFile(path)
                bad = None
            except zipfile.BadZipFile as e:
                bad = e
            if bad is not None:
                raise OmniglotDataError(
                    f"{path}: not a readable zip archive ({bad}); the file is corrupt or "
                    f"truncated; {HOW_TO_GET}"
                )
            for name in sorted(zf.namelist()):
                if name.endswith(".png"):
                    self.files[tuple(name.split("/"))] = (lambda n=name: zf.read(n))


def read_folder(path: str | os.PathLike) -> _Raw:
    """Read the official layout ``[<set>/]<Alphabet>/characterNN/IIII_DD.png``.

    ``path`` is a folder or ``.zip`` holding one or more set folders (``images_background``,
    ``images_evaluation``, ``images_background_small1``, ...) or is itself a set folder.
    Alphabets are kept in sorted order per set; characters by ``NN``; drawings by ``DD``.
    Every character must have 20 drawings of 105x105 pixels.
    """
    path = Path(path)
    if not path.exists():
        raise OmniglotDataError(f"{path}: not found; {HOW_TO_GET}")
    tree = _Tree(path)
    groups: dict[tuple[str, str], dict[int, dict[int, tuple[str, ...]]]] = {}
    for parts in tree.files:
        if len(parts) < 3 or not _CHAR_RE.match(parts[-2]) or not _PNG_RE.match(parts[-1]):
            continue
        set_name = parts[-4] if len(parts) >= 4 else path.stem
        alphabet = parts[-3]
        char = int(_CHAR_RE.match(parts[-2]).group(1))
        drawing = int(_PNG_RE.match(parts[-1]).group(2))
        groups.setdefault((set_name, alphabet), {}).setdefault(char, {})[drawing] = parts
    if not groups:
        raise OmniglotDataError(
            f"{path}: no drawings in the official layout <set>/<Alphabet>/characterNN/"
            f"IIII_DD.png; {HOW_TO_GET}"
        )
    inks, names, sets, counts = [], [], [], []
    for (set_name, alphabet), chars in sorted(groups.items()):
        if alphabet in names:
            raise OmniglotDataError(f"{path}: alphabet {alphabet} appears in two sets")
        for c, (char_id, drawings) in enumerate(sorted(chars.items()), start=1):
            where = f"{path}/{set_name}/{alphabet}/character{char_id:02d}"
            if char_id != c:
                raise OmniglotDataError(f"{where}: expected character{c:02d} (numbering gap)")
            if sorted(drawings) != list(range(1, DRAWINGS + 1)):
                raise OmniglotDataError(
                    f"{where}: drawings {sorted(drawings)}, expected _01 ... _{DRAWINGS} "
                    f"(20 PNGs per character); {HOW_TO_GET}"
                )
            inks.append(
                np.stack(
                    [
                        _decode_png(tree.files[drawings[d]](), f"{path}/{'/'.join(drawings[d])}")
                        for d in range(1, DRAWINGS + 1)
                    ]
                )
            )
        names.append(alphabet)
        sets.append(set_name.removeprefix("images_"))
        counts.append(len(chars))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return _Raw(np.stack(inks), names, sets, offsets, f"official layout {path}")


# --------------------------------------------------------------------------- cache + entry point


def default_data_root() -> Path:
    """``$WARP_RL_OMNIGLOT`` or ``../shared/data/omniglot`` relative to the repository root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"


def default_cache_dir() -> Path:
    """``$WARP_RL_CACHE/omniglot`` or ``~/.cache/warp_rl/omniglot``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "warp_rl") / "omniglot"


def _sources(root: Path) -> tuple[str, list[Path]]:
    """Which layout ``root`` holds and the files/folders to read, in preference order."""
    npz = [root / "images_background.npz", root / "images_evaluation.npz"]
    csv_path = root / "alphabets.csv"
    if any(p.exists() for p in [*npz, csv_path]):
        return "npz", [csv_path, *npz]
    found = []
    for stem in ("images_background", "images_evaluation"):
        if (root / stem).is_dir():
            found.append(root / stem)
        elif (root / f"{stem}.zip").is_file():
            found.append(root / f"{stem}.zip")
    if found:
        return "official", found
    if root.is_dir() and any(_CHAR_RE.match(p.name) for p in root.glob("*/*") if p.is_dir()):
        return "official", [root]
    if root.is_file() and root.suffix == ".zip":
        return "official", [root]
    return "none", []


def _source_key(paths: list[Path], checksum_cache: Path | None = None) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}/{RESAMPLE}".encode())
    for p in paths:
        h.update(p.name.encode())
        if p.is_dir():
            for f in sorted(p.rglob("*.png")):
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
        elif p.exists():
            h.update(cached_digest(p, checksum_cache).encode())
    return h.hexdigest()[:20]


def load_omniglot(
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    fetch: Callable[[str, Path], None] = _urlretrieve,
) -> OmniglotImages:
    """Load Omniglot at 28x28 from ``root``, resizing once and caching the result.

    Args:
        root: data folder (default :func:`default_data_root`); the npz pair is preferred over
            the official layout when both are present.
        cache_dir: where the resized ``.npz`` and the file digests are kept (default
            :func:`default_cache_dir`; see :func:`default_checksum_cache`).
        download: if ``root`` holds no data, fetch the official archives into it first.
        fetch: see :func:`download_official`.

    Raises:
        OmniglotDataError: no data, or a file is missing or corrupt (the message says which
            file, what was expected and how to get it).
    """
    root = Path(root) if root is not None else default_data_root()
    kind, paths = _sources(root)
    if kind == "none":
        if not download:
            raise OmniglotDataError(f"no Omniglot data under {root}; {HOW_TO_GET}")
        download_official(root, fetch=fetch)
        kind, paths = _sources(root)
    elif download:
        for p in paths:
            if p.name in KNOWN_FILES and p.is_file():
                verify_file(p)
    checksums = default_checksum_cache(cache_dir)
    if kind == "npz":
        verify_npz_pair(root, checksums)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = cache_dir / f"omniglot{IMAGE_SIZE}_{kind}_{_source_key(paths, checksums)}.npz"
    if cache.is_file():
        try:
            return _read_cache(cache)
        except Exception:  # a broken cache is rebuilt, never trusted
            pass
    if kind == "npz":
        raw = read_npz_pair(root)
    else:
        raws = [read_folder(p) for p in paths]
        names = [n for r in raws for n in r.alphabets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise OmniglotDataError(
                f"alphabets {twice} appear in more than one of {[str(p) for p in paths]}"
            )
        raw = _Raw(
            np.concatenate([r.ink for r in raws]),
            [n for r in raws for n in r.alphabets],
            [s for r in raws for s in r.sets],
            np.concatenate([[0], np.cumsum([c for r in raws for c in np.diff(r.offsets)])]),
            ", ".join(r.source for r in raws),
        )
    images = resize_ink(raw.ink)
    hashes = np.frombuffer(
        b"".join(_raw_hash(x) for x in raw.ink.reshape(-1, RAW_SIZE, RAW_SIZE)), dtype=np.uint8
    ).reshape(len(raw.ink), DRAWINGS, 8)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=images,
        hashes=hashes,
        alphabets=np.array(raw.alphabets),
        sets=np.array(raw.sets),
        offsets=raw.offsets.astype(np.int64),
        source=np.array(raw.source),
        resample=np.array(RESAMPLE),
    )
    atomic_write_bytes(cache, buf.getvalue())
    return _read_cache(cache)


def _read_cache(path: Path) -> OmniglotImages:
    with np.load(path) as d:
        return OmniglotImages(
            images=d["images"],
            alphabets=tuple(str(a) for a in d["alphabets"]),
            sets=tuple(str(s) for s in d["sets"]),
            offsets=d["offsets"],
            source=str(d["source"]),
            hashes=d["hashes"],
        )

