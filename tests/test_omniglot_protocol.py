"""The Omniglot protocol on the real data (split, tasks) and the batched distortion."""

from __future__ import annotations

import math

import pytest
import torch

from warp_rl.omniglot.tasks import (
    TaskPool,
    TaskSampler,
    alphabet_task_images,
    apply_affine,
    qualifying_alphabets,
    random_affine,
    split_alphabets,
)


def test_46_alphabets_qualify(real):
    assert len(real.alphabets) == 50
    assert real.num_characters.sum() == 1623
    q = qualifying_alphabets(real.alphabets, real.num_characters)
    assert len(q) == 46 and q == sorted(q)
    small = {a for a, n in zip(real.alphabets, real.num_characters, strict=True) if n < 20}
    assert small == {"Blackfoot_(Canadian_Aboriginal_Syllabics)", "Tagalog",
                     "Inuktitut_(Canadian_Aboriginal_Syllabics)",
                     "Ojibwe_(Canadian_Aboriginal_Syllabics)"}


def test_split_sizes_deterministic_and_seeded(real):
    a = split_alphabets(real.alphabets, real.num_characters, 25, seed=0)
    b = split_alphabets(real.alphabets, real.num_characters, 25, seed=0)
    c = split_alphabets(real.alphabets, real.num_characters, 25, seed=1)
    assert a == b
    assert (len(a.train), len(a.test), len(a.val)) == (25, 10, 11)
    assert set(a.train) | set(a.test) | set(a.val) == set(
        qualifying_alphabets(real.alphabets, real.num_characters))
    assert not set(a.train) & set(a.test) and not set(a.test) & set(a.val)
    assert a.test != c.test
    # fewer pretraining alphabets: the test alphabets move, the order is the same shuffle
    d = split_alphabets(real.alphabets, real.num_characters, 10, seed=0)
    assert d.train == a.train[:10] and len(d.val) == 26


def test_split_pins_the_seed_0_order(real):
    # the shuffle is built on random.Random(seed).random(), stable across Python versions
    a = split_alphabets(real.alphabets, real.num_characters, 25, seed=0)
    assert a.train[:3] == ("Angelic", "Mkhedruli_(Georgian)", "Asomtavruli_(Georgian)")


@pytest.mark.parametrize("n", [0, 36, -1])
def test_num_pretrain_out_of_range(real, n):
    with pytest.raises(ValueError, match=rf"num_pretrain={n}.*\[1, 35\]"):
        split_alphabets(real.alphabets, real.num_characters, n, seed=0)


def test_task_images_are_20_distinct_characters(real):
    imgs = alphabet_task_images(real, "Greek", seed=0)
    again = alphabet_task_images(real, "Greek", seed=0)
    other = alphabet_task_images(real, "Greek", seed=5)
    greek = real.alphabet("Greek")
    assert imgs.shape == (20, 20, 28, 28)
    assert (imgs == again).all() and not (imgs == other).all()
    picked = [next(i for i in range(len(greek)) if (greek[i] == imgs[c]).all()) for c in range(20)]
    assert len(set(picked)) == 20


def test_task_shapes_and_labels(real):
    split = split_alphabets(real.alphabets, real.num_characters, 25, seed=0)
    pool = TaskPool(real, split.test, seed=0)
    assert pool.train_images.shape == (10, 20, 15, 28, 28)
    assert pool.test_images.shape == (10, 20, 5, 28, 28)
    g = torch.Generator().manual_seed(0)
    tasks = pool.sample(torch.tensor([3, 7]), steps=30, batch_size=20, generator=g)
    x, y = tasks.train_batch(29)
    assert x.shape == (2, 20, 1, 28, 28) and y.shape == (2, 20) and y.dtype == torch.long
    assert 0 <= y.min() and y.max() < 20
    xt, yt = tasks.test_set()
    assert xt.shape == (2, 100, 1, 28, 28)
    assert torch.equal(torch.bincount(yt[0], minlength=20), torch.full((20,), 5))
    assert 0.0 <= x.min() and x.max() <= 1.0
    # 300 adaptation images per task, each used once per epoch: 30 steps x 20 = 2 epochs
    counts = torch.bincount(tasks.index[0].flatten(), minlength=300)
    assert torch.equal(counts, torch.full((300,), 2))
    # the label of an image is its character (index // 15)
    assert torch.equal(tasks.train_batch_of(1, 5)[1], tasks.index[1, 5] // 15)


def test_sampling_is_deterministic_for_a_seed(real):
    split = split_alphabets(real.alphabets, real.num_characters, 5, seed=3)
    pool = TaskPool(real, split.train, seed=3)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        ids = TaskSampler(len(pool))(4, g)
        t = pool.sample(ids, 3, 10, g)
        return ids, t.train_batch(2)[0], t.test_set()[0]

    a, b, c = draw(1), draw(1), draw(2)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[1], c[1])


def test_task_sampler_visits_every_task_before_repeating():
    g = torch.Generator().manual_seed(0)
    s = TaskSampler(5)
    seq = torch.cat([s(3, g) for _ in range(5)]).tolist()  # 15 = three rounds of 5
    for r in range(3):
        assert sorted(seq[5 * r : 5 * r + 5]) == list(range(5))
    state = s.state_dict()
    g2 = torch.Generator()
    g2.set_state(g.get_state())
    s2 = TaskSampler(5)
    s2.load_state_dict(state)
    assert torch.equal(s(7, g), s2(7, g2))


def test_affine_ranges_and_identity():
    g = torch.Generator().manual_seed(0)
    theta = random_affine((20000,), g)
    a = theta[..., :2]
    scale = 1.0 / torch.sqrt(torch.linalg.det(a))  # A = R(-angle) / s
    assert 0.8 - 1e-4 <= scale.min() and scale.max() <= 1.2 + 1e-4
    angle = torch.atan2(a[:, 0, 1], a[:, 0, 0]) % (2 * math.pi)
    assert angle.min() < 0.05 and angle.max() > 2 * math.pi - 0.05  # the full circle
    shift = -torch.linalg.solve(a, theta[..., 2:]).squeeze(-1) / 2.0  # back to image sides
    assert shift.abs().max() <= 0.2 + 1e-5 and shift.abs().max() > 0.19
    img = torch.rand(3, 28, 28)
    ident = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 2, 3)
    assert torch.allclose(apply_affine(img, ident)[:, 0], img, atol=1e-5)


def test_affine_translation_moves_ink():
    img = torch.zeros(1, 28, 28)
    img[0, 12:16, 12:16] = 1.0
    # output pixel u samples input u - t: a shift of +0.25 sides moves ink by +7 pixels in x
    theta = torch.tensor([[[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]]])
    out = apply_affine(img, theta)[0, 0]
    assert torch.allclose(out[12:16, 19:23], torch.ones(4, 4), atol=1e-5)
    assert out.sum().item() == pytest.approx(16.0, abs=1e-4)
