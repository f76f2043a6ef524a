"""Omniglot readers on tiny synthetic data in the real formats, checksums, errors, cache."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from warp_rl.omniglot import data as D
from warp_rl.omniglot.oneshot import read_runs
from warp_rl.omniglot.synthetic import draw_characters, write_npz_pair, write_official, write_runs


@pytest.fixture(scope="module")
def npz_root(tmp_path_factory) -> Path:
    # 3 alphabets: 5, 3 and 4 characters; the last one is an evaluation alphabet
    return write_npz_pair(tmp_path_factory.mktemp("npz"), 3, [5, 3, 4], num_evaluation=1)


def test_npz_pair_matches_source_pixels(npz_root, tmp_path):
    data = D.load_omniglot(npz_root, cache_dir=tmp_path)
    assert data.alphabets == ("Alphabet_00", "Alphabet_01", "Alphabet_02")
    assert data.sets == ("background", "background", "evaluation")
    assert data.num_characters.tolist() == [5, 3, 4]
    assert data.images.shape == (12, 20, 28, 28) and data.images.dtype == np.uint8
    # evaluation rows follow the background rows; pixels are the BOX-resized ink (paper = False)
    with np.load(npz_root / "images_evaluation.npz") as z:
        ev = z["images"]
    expect = D.resize_ink(~ev[1, 7])
    np.testing.assert_array_equal(data.alphabet("Alphabet_02")[1, 7], expect)
    assert data.hashes.shape == (12, 20, 8)


def test_resize_is_a_box_mean():
    ink = np.zeros((105, 105), bool)
    assert D.resize_ink(ink).max() == 0
    assert (D.resize_ink(~ink) == 255).all()
    half = np.zeros((105, 105), bool)
    half[:, :52] = True  # ink in source columns 0..51
    out = D.resize_ink(half).astype(int)
    assert (out[:, :13] == 255).all() and (out[:, 14:] == 0).all()
    # output column 13 spans [48.75, 52.5): source columns 49..52 have their centres inside,
    # three of them ink -> 3/4
    assert (out[:, 13] == round(255 * 3 / 4)).all()


def test_official_folder_and_zip_read_the_same(tmp_path):
    write_official(tmp_path / "folder", num_alphabets=2, characters=[2, 3], seed=3)
    write_official(tmp_path / "images_background.zip", num_alphabets=2, characters=[2, 3],
                   seed=3, as_zip=True)
    a = D.load_omniglot(tmp_path / "folder", cache_dir=tmp_path / "c")
    b = D.load_omniglot(tmp_path / "images_background.zip", cache_dir=tmp_path / "c")
    assert a.alphabets == b.alphabets == ("Alphabet_00", "Alphabet_01")
    assert a.sets == ("background", "background")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (5, 20, 28, 28)
    # a folder holding the set folder is recognised as well (the layout of an unzip)
    c = D.load_omniglot(tmp_path / "folder" / "images_background", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(a.images, c.images)


def test_cache_is_reused_and_invalidated(npz_root, tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    for f in npz_root.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    D.load_omniglot(root, cache_dir=tmp_path / "c")
    files = list((tmp_path / "c").glob("*.npz"))
    assert len(files) == 1
    D.load_omniglot(root, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").glob("*.npz")) == files  # same key, no rebuild
    write_npz_pair(root, 3, [5, 3, 4], num_evaluation=1, seed=9)  # new pixels, same names
    new = D.load_omniglot(root, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 2
    old = D._read_cache(files[0])
    assert not np.array_equal(old.images, new.images)


# --------------------------------------------------------------------------- errors


def test_missing_data_names_the_folder_and_how_to_get_it(tmp_path):
    with pytest.raises(D.OmniglotDataError, match=r"no Omniglot data under .*--download"):
        D.load_omniglot(tmp_path / "nothing", cache_dir=tmp_path)


def test_missing_npz_half_names_the_file(npz_root, tmp_path):
    root = tmp_path / "half"
    root.mkdir()
    for name in ("alphabets.csv", "images_background.npz"):
        (root / name).write_bytes((npz_root / name).read_bytes())
    with pytest.raises(D.OmniglotDataError, match=r"images_evaluation\.npz: file not found"):
        D.load_omniglot(root, cache_dir=tmp_path)


def test_corrupt_npz_names_the_file(npz_root, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for f in npz_root.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    blob = (root / "images_background.npz").read_bytes()
    (root / "images_background.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(D.OmniglotDataError, match=r"images_background\.npz: cannot be read"):
        D.load_omniglot(root, cache_dir=tmp_path)


def test_csv_inconsistent_with_npz(npz_root, tmp_path):
    root = tmp_path / "csv"
    root.mkdir()
    for f in npz_root.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    text = (root / "alphabets.csv").read_text().replace("Alphabet_01,6,3", "Alphabet_01,6,2")
    (root / "alphabets.csv").write_text(text)
    with pytest.raises(D.OmniglotDataError, match=r"alphabets\.csv.*characters"):
        D.load_omniglot(root, cache_dir=tmp_path)


def test_folder_with_missing_drawing_and_broken_png(tmp_path):
    root = write_official(tmp_path / "f", num_alphabets=1, characters=2)
    char = root / "images_background" / "Alphabet_00" / "character02"
    victim = sorted(char.glob("*.png"))[4]
    victim.write_bytes(b"not a png")
    with pytest.raises(D.OmniglotDataError, match=rf"{victim.name}: not a readable PNG"):
        D.load_omniglot(root, cache_dir=tmp_path / "c")
    victim.unlink()
    with pytest.raises(D.OmniglotDataError, match=r"character02: drawings .*expected _01"):
        D.load_omniglot(root, cache_dir=tmp_path / "c")


def test_truncated_zip_is_reported(tmp_path):
    z = write_official(tmp_path / "images_background.zip", num_alphabets=1, characters=1,
                       as_zip=True)
    z.write_bytes(z.read_bytes()[:100])
    with pytest.raises(D.OmniglotDataError, match=r"images_background\.zip: not a readable zip"):
        D.load_omniglot(z, cache_dir=tmp_path)


# --------------------------------------------------------------------------- checksums


def test_verify_file_checks_size_and_digest(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"omniglot" * 100)
    md5 = hashlib.md5(f.read_bytes()).hexdigest()
    D.verify_file(f, D.KnownFile("md5", md5, 800))
    with pytest.raises(D.ChecksumError, match=r"size 800 bytes, expected 801"):
        D.verify_file(f, D.KnownFile("md5", md5, 801))
    with pytest.raises(D.ChecksumError, match=rf"md5 {md5}, expected 0+"):
        D.verify_file(f, D.KnownFile("md5", "0" * 32))
    with pytest.raises(D.OmniglotDataError, match="no published checksum"):
        D.verify_file(f)
    with pytest.raises(D.OmniglotDataError, match="file not found"):
        D.verify_file(tmp_path / "images_background.zip")


def test_download_keeps_only_verified_files(tmp_path, monkeypatch):
    served = {}  # url -> bytes, the fake server
    for i, (stem, n) in enumerate((("images_background", 2), ("images_evaluation", 1))):
        z = write_official(tmp_path / "src" / f"{stem}.zip", stem, 1, n, as_zip=True,
                           first_alphabet=i)
        payload = z.read_bytes()
        url = f"https://example.invalid/{stem}.zip"
        served[url] = payload
        known = D.KnownFile("md5", hashlib.md5(payload).hexdigest(), len(payload), url)
        monkeypatch.setitem(D.KNOWN_FILES, f"{stem}.zip", known)
    fetched = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        dest.write_bytes(served[url])

    good = served["https://example.invalid/images_background.zip"]
    mid = len(good) // 2
    served["https://example.invalid/images_background.zip"] = (
        good[:mid] + bytes([good[mid] ^ 1]) + good[mid + 1 :])  # one bit flipped, same size
    dest = tmp_path / "data"
    with pytest.raises(D.ChecksumError, match=r"downloaded images_background\.zip.*md5"):
        D.download_official(dest, ["images_background.zip"], fetch=fake_fetch)
    assert list(dest.iterdir()) == []  # neither the file nor its temporary remains
    served["https://example.invalid/images_background.zip"] = good
    data = D.load_omniglot(dest, cache_dir=tmp_path / "c", download=True, fetch=fake_fetch)
    assert sorted(fetched[-2:]) == sorted(served)
    assert data.sets == ("background", "evaluation")
    assert data.images.shape == (3, 20, 28, 28)
    assert (dest / "images_background.zip").read_bytes() == good
    # present files are verified, not fetched again
    D.download_official(dest, fetch=fake_fetch)
    assert len(fetched) == 3


def test_download_failure_names_the_url(tmp_path):
    def offline(url, dest):
        raise OSError("network unreachable")

    with pytest.raises(D.OmniglotDataError, match=r"could not fetch https://raw\.github"):
        D.download_official(tmp_path, ["images_evaluation.zip"], fetch=offline)


def test_published_checksums_are_well_formed():
    for name, k in D.KNOWN_FILES.items():
        assert len(k.digest) == {"md5": 32, "sha256": 64}[k.algo], name
        int(k.digest, 16)


# --------------------------------------------------------------------------- one-shot runs


def test_one_shot_runs_synthetic(tmp_path):
    root = write_runs(tmp_path / "all_runs", num_runs=20, seed=1)
    runs = read_runs(root)
    assert len(runs) == 20
    for r in runs:
        assert r.train.shape == r.test.shape == (20, 28, 28)
        assert sorted(r.test_labels.tolist()) == list(range(20))
    labels = (root / "run03" / "class_labels.txt").read_text().splitlines()
    _item, cls = labels[4].split()
    assert runs[2].test_labels[4] == int(cls[-6:-4]) - 1
    (root / "run05" / "class_labels.txt").write_text("garbage line\n")
    with pytest.raises(D.OmniglotDataError, match=r"run05/class_labels\.txt line 1"):
        read_runs(root)


def test_draw_characters_is_seeded():
    a = draw_characters(2, np.random.default_rng(0))
    b = draw_characters(2, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 20, 105, 105) and 0 < a.mean() < 0.3


# --------------------------------------------------------------------------- real data


def real_root() -> Path:
    """../shared/data/omniglot; missing data fails under CI=true and skips elsewhere."""
    root = D.default_data_root()
    if not (root / "images_background.npz").is_file():
        msg = f"real Omniglot data not found at {root}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true requires it)")
        pytest.skip(msg)
    return root


def test_real_files_match_published_checksums():
    root = real_root()
    for name in ("images_background_small1.zip", "all_runs.zip", "images_evaluation.npz"):
        D.verify_file(root / name)


def test_real_small_subset_matches_npz_pair():
    root = real_root()
    full = D.load_omniglot(root)
    small = D.load_omniglot(root / "images_background_small1.zip")
    assert small.alphabets == ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin")
    assert small.num_characters.sum() == 136
    for name in small.alphabets:
        np.testing.assert_array_equal(small.alphabet(name), full.alphabet(name))


def test_real_one_shot_runs_come_from_single_evaluation_alphabets():
    from warp_rl.omniglot.oneshot import identify_alphabets

    root = real_root()
    data = D.load_omniglot(root)
    runs = read_runs(root / "all_runs.zip")
    found = identify_alphabets(runs, data)
    evaluation = {a for a, s in zip(data.alphabets, data.sets, strict=True) if s == "evaluation"}
    for names in found:
        assert len(set(names)) == 1 and names[0] in evaluation


def test_zip_member_names_are_official():
    root = real_root()
    with zipfile.ZipFile(root / "images_background_small1.zip") as zf:
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
    assert len(pngs) == 2720
