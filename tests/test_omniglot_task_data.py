"""Which image carries which label: the task data of ``warp_rl/omniglot/tasks.py`` pinned.

Two independent checks:

- on the real data, with the distortion off, every image a learner sees is matched back to the
  source arrays (:meth:`OmniglotImages.alphabet`) by its pixels: the pool's rows hold the
  protocol's drawings (held out ``_01``-``_05``, adaptation ``_06``-``_20``, disjoint), and every
  adaptation batch, held-out set and meta-objective batch (``sample_batches``) pairs each image
  with the label of its own character, for every task of every alphabet;
- on a coded pool, with the distortion on, every image is a constant whose value names its
  task, character, part (adaptation or held out) and drawing; the centre pixel of a distorted
  constant image is that constant, so the labels are checked after the distortion too.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from warp_rl.omniglot.data import OmniglotImages
from warp_rl.omniglot.tasks import NUM_HELD_OUT, TaskBatch, TaskPool, split_alphabets

SEED = 0


pytestmark = pytest.mark.usefixtures("one_thread")



def _keys(images: torch.Tensor | np.ndarray) -> list[bytes]:
    """Pixel fingerprints of images ``(..., [1,] 28, 28)``: floats in [0, 1] (x 255) or uint8."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    if a.dtype != np.uint8:
        a = np.rint(a * 255.0).astype(np.uint8)
    return [x.tobytes() for x in a.reshape(-1, 28 * 28)]


class Source:
    """One alphabet's source drawings, uint8 ``(characters, 20, 28, 28)``, indexed by pixels."""

    def __init__(self, data: OmniglotImages, name: str) -> None:
        self.images = data.alphabet(name)
        self.owners: dict[bytes, set[tuple[int, int]]] = defaultdict(set)
        for i, key in enumerate(_keys(self.images)):
            self.owners[key].add(divmod(i, self.images.shape[1]))

    def character_of(self, image: torch.Tensor) -> int:
        """The one source character that drew ``image`` (fails if none or several did)."""
        chars = {c for c, _ in self.owners[_keys(image)[0]]}
        assert len(chars) == 1, f"image drawn by characters {sorted(chars)}"
        return chars.pop()

    def check(self, images: torch.Tensor, labels: torch.Tensor, rows: list[int],
              drawings: range) -> None:
        """Each image of ``images`` ``(N, [1,] 28, 28)`` is a drawing in ``drawings`` of the
        character ``rows[label]`` (``labels`` ``(N,)``)."""
        for key, y in zip(_keys(images), labels.tolist(), strict=True):
            owners = self.owners.get(key, set())
            assert owners, "an image that is no drawing of this alphabet"
            assert any(c == rows[y] and d in drawings for c, d in owners), (
                f"label {y} (character {rows[y]}, drawings {drawings}) on an image of "
                f"{sorted(owners)}"
            )


def _pools(real: OmniglotImages) -> list[TaskPool]:
    split = split_alphabets(real.alphabets, real.num_characters, 25, seed=SEED)
    return [TaskPool(real, names, SEED) for names in (split.train, split.val, split.test)]


def test_every_task_holds_the_protocols_drawings_and_keeps_them_apart(real):
    """Row ``c`` of a task is one source character: its held-out drawings are ``_01``-``_05``,
    its adaptation drawings ``_06``-``_20``; no held-out image is an adaptation image (but for
    drawings that are pixel-identical in the source itself)."""
    tasks = 0
    for pool in _pools(real):
        for a, name in enumerate(pool.names):
            src = Source(real, name)
            rows = []
            for c in range(pool.num_classes):
                char = src.character_of(pool.train_images[a, c, 0])
                rows.append(char)
                held = pool.test_images[a, c].numpy()
                adapt = pool.train_images[a, c].numpy()
                assert held.shape[0] == NUM_HELD_OUT and adapt.shape[0] == 20 - NUM_HELD_OUT
                protocol_held = _keys(held) == _keys(src.images[char, :NUM_HELD_OUT])
                assert protocol_held, f"{name} row {c}: held-out images are not drawings _01-_05"
                protocol_adapt = _keys(adapt) == _keys(src.images[char, NUM_HELD_OUT:])
                assert protocol_adapt, f"{name} row {c}: adaptation images are not _06-_20"
                shared = set(_keys(held)) & set(_keys(adapt))
                twins = {k for k, n in Counter(_keys(src.images[char])).items() if n > 1}
                assert shared <= twins, f"{name} row {c}: held-out drawings in the adaptation set"
            assert len(set(rows)) == pool.num_classes, f"{name}: a character in two rows"
            tasks += 1
    assert tasks == 46


def test_every_label_names_the_character_drawn_real_data(real):
    """Undistorted adaptation batches (one full epoch), held-out sets and meta-objective
    batches of every task: each image is a drawing of its label's character, and the epoch and
    the held-out set are exactly the task's adaptation and held-out drawings."""
    g = torch.Generator().manual_seed(SEED)
    for pool in _pools(real):
        ids = torch.arange(len(pool))
        steps, batch = 15, 20  # 15 x 20 = one epoch of a task's 300 adaptation images
        batch_all = pool.sample(ids, steps, batch, g, distort=False)
        for a, name in enumerate(pool.names):
            src = Source(real, name)
            rows = [src.character_of(pool.train_images[a, c, 0]) for c in range(pool.num_classes)]
            held, adapt = range(NUM_HELD_OUT), range(NUM_HELD_OUT, 20)
            one = batch_all.task(a)
            seen: list[tuple[int, bytes]] = []
            for k in range(steps):
                x, y = one.train_batch(k)
                src.check(x[0], y[0], rows, adapt)
                seen += list(zip(y[0].tolist(), _keys(x[0]), strict=True))
                xi, yi = batch_all.train_batch_of(a, k)  # the per-task path of ft
                assert torch.equal(xi, x[0]) and torch.equal(yi, y[0])
            expect = [(c, k) for c in range(pool.num_classes)
                      for k in _keys(src.images[rows[c], NUM_HELD_OUT:])]
            assert Counter(seen) == Counter(expect), f"{name}: the epoch is not the adaptation set"
            xt, yt = one.test_set()
            src.check(xt[0], yt[0], rows, held)
            expect = [(c, k) for c in range(pool.num_classes)
                      for k in _keys(src.images[rows[c], :NUM_HELD_OUT])]
            got = list(zip(yt[0].tolist(), _keys(xt[0]), strict=True))
            assert Counter(got) == Counter(expect), f"{name}: held-out set"
            xs, ys = one.sample_batches(3, g)
            assert xs.shape[:2] == ys.shape == (3, batch)
            src.check(xs.flatten(0, 1), ys.flatten(), rows, adapt)


# --------------------------------------------------------------------------- distorted, coded


def _code(a: int, c: int, part: int, k: int) -> float:
    """A distinct value in (0, 1) per (task, character, part 0 = adaptation / 1 = held out,
    drawing), spaced 1e-4 (float32 resolves them after bilinear resampling)."""
    return (1 + ((a * 20 + c) * 2 + part) * 20 + k) * 1e-4


def coded_pool(num_tasks: int = 3) -> TaskPool:
    """Every image a constant :func:`_code` (20 characters, 15 + 5 drawings)."""
    train = torch.tensor([[[_code(a, c, 0, k) for k in range(15)] for c in range(20)]
                          for a in range(num_tasks)], dtype=torch.float64)
    test = torch.tensor([[[_code(a, c, 1, k) for k in range(5)] for c in range(20)]
                         for a in range(num_tasks)], dtype=torch.float64)
    train = train[..., None, None].expand(-1, -1, -1, 28, 28)
    test = test[..., None, None].expand(-1, -1, -1, 28, 28)
    return TaskPool.from_tensors([f"a{i}" for i in range(num_tasks)], train, test)


def _decode(x: torch.Tensor) -> torch.Tensor:
    """long ``(N, 4)`` (task, character, part, drawing) of distorted coded images
    ``(N, 1, 28, 28)``, read from the centre pixel (inside the image for every distortion of
    the protocol: scale >= 0.8, shift <= 0.2 of the side)."""
    code = torch.round(x[:, 0, 13, 13].double() * 1e4).long() - 1
    k, rest = code % 20, code // 20
    part, rest = rest % 2, rest // 2
    return torch.stack([rest // 20, rest % 20, part, k], dim=1)


def _check_coded(x: torch.Tensor, y: torch.Tensor, task: int, part: int) -> torch.Tensor:
    d = _decode(x.reshape(-1, 1, 28, 28))
    assert (d[:, 0] == task).all(), "an image of another task"
    assert (d[:, 2] == part).all(), "held-out and adaptation images mixed"
    assert torch.equal(d[:, 1], y.reshape(-1)), "labels do not name the images' characters"
    return d


def test_distorted_batches_pair_every_image_with_its_label():
    pool = coded_pool()
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([2, 0, 2, 1])
    tasks: TaskBatch = pool.sample(ids, steps=16, batch_size=20, generator=g)
    assert tasks.train_affine is not None and tasks.test_affine is not None
    x, _ = tasks.train_batch(0)
    assert (x[..., 0, 0] == 0).any(), "the distortion is on (some corners are blank padding)"
    for k in range(tasks.steps):
        x, y = tasks.train_batch(k)
        for i, t in enumerate(ids.tolist()):
            _check_coded(x[i], y[i], t, part=0)
            xi, yi = tasks.train_batch_of(i, k)
            _check_coded(xi, yi, t, part=0)
    xt, yt = tasks.test_set()
    for i, t in enumerate(ids.tolist()):
        d = _check_coded(xt[i], yt[i], t, part=1)
        assert len({(c, k) for c, k in d[:, [1, 3]].tolist()}) == 100  # each held-out once
        sub = tasks.task(i)
        xs, ys = sub.sample_batches(4, g)
        _check_coded(xs, ys, t, part=0)
        xt1, yt1 = sub.test_set()
        assert torch.equal(xt1[0], xt[i]) and torch.equal(yt1[0], yt[i])


def test_decoding_reads_the_centre_of_any_protocol_distortion():
    """The coded check relies on the centre pixel surviving every distortion exactly."""
    from warp_rl.omniglot.tasks import apply_affine, random_affine

    g = torch.Generator().manual_seed(0)
    theta = random_affine((5000,), g)
    img = torch.full((5000, 28, 28), _code(1, 7, 1, 3), dtype=torch.float32)
    assert (_decode(apply_affine(img, theta)) == torch.tensor([1, 7, 1, 3])).all()
