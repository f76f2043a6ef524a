"""The WarpGrad/Leap Omniglot protocol: alphabet split, fixed 20-way tasks, batched sampling.

Protocol (../shared/REFERENCE.md, "Omniglot"):

- alphabets with at least 20 characters qualify (46 of 50); their names are sorted, shuffled
  with the seed, then split: the first ``num_pretrain`` for meta-training, the next 10 for
  meta-testing, the rest for validation;
- a task is one alphabet with 20 characters (20-way). Which 20 characters is drawn once per
  (seed, alphabet); label ``c`` is the ``c``-th drawn character. Of each character's 20 drawings
  the first 5 (official ``_01`` ... ``_05``) are held out for evaluation and the other 15 are
  used for adaptation;
- every image a learner sees gets a fresh random affine distortion: rotation uniform in
  [0, 360) degrees, translation uniform in +-0.2 of the image side per axis, scale uniform in
  [0.8, 1.2], bilinear resampling with blank (zero-ink) padding, done in one batched
  ``affine_grid`` / ``grid_sample`` call per step.

Randomness: the split and the character choice use Python's ``random.Random(seed).random()``
(the one stream Python guarantees across versions) in a Fisher-Yates shuffle; everything else
draws from one explicit ``torch.Generator`` (CPU), so a seed fixes every number and a saved
generator state resumes a run exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import DRAWINGS, IMAGE_SIZE, OmniglotImages

NUM_CLASSES = 20
NUM_HELD_OUT = 5
NUM_TEST = 10
MIN_CHARACTERS = 20
ROTATION = (0.0, 360.0)
TRANSLATION = 0.2
SCALE = (0.8, 1.2)


def _shuffle(items: list, seed: int | str) -> list:
    """Fisher-Yates shuffle driven by ``random.Random(seed).random()`` (stable across Pythons)."""
    rng = random.Random(seed)
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        items[i], items[j] = items[j], items[i]
    return items


@dataclass(frozen=True)
class Split:
    """Alphabet names of the three parts (each list in shuffled order)."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    val: tuple[str, ...]


def qualifying_alphabets(
    names: list[str] | tuple[str, ...], counts, min_characters: int = MIN_CHARACTERS
) -> list[str]:
    """Sorted names of the alphabets with at least ``min_characters`` characters."""
    return sorted(n for n, c in zip(names, counts, strict=True) if int(c) >= min_characters)


def split_alphabets(
    names: list[str] | tuple[str, ...],
    counts,
    num_pretrain: int = 25,
    seed: int = 0,
    num_test: int = NUM_TEST,
    min_characters: int = MIN_CHARACTERS,
) -> Split:
    """The protocol's split: sort qualifying alphabets, shuffle with ``seed``, cut.

    Args:
        names, counts: alphabet names and their number of characters.
        num_pretrain: meta-training alphabets; at least 1, and at least one alphabet must be
            left for validation after the ``num_test`` test alphabets.

    Raises:
        ValueError: ``num_pretrain`` out of range (the message gives the allowed range).
    """
    qualified = qualifying_alphabets(names, counts, min_characters)
    most = len(qualified) - num_test - 1
    if not 1 <= num_pretrain <= most:
        raise ValueError(
            f"num_pretrain={num_pretrain}: {len(qualified)} alphabets have >= {min_characters} "
            f"characters; with {num_test} test alphabets and at least 1 for validation, "
            f"num_pretrain must be in [1, {most}]"
        )
    order = _shuffle(qualified, seed)
    return Split(
        train=tuple(order[:num_pretrain]),
        test=tuple(order[num_pretrain : num_pretrain + num_test]),
        val=tuple(order[num_pretrain + num_test :]),
    )


def alphabet_task_images(
    data: OmniglotImages, name: str, seed: int, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """uint8 ``(num_classes, 20, 28, 28)``: the task's characters, drawn once per (seed, name)."""
    chars = data.alphabet(name)
    if len(chars) < num_classes:
        raise ValueError(f"alphabet {name} has {len(chars)} characters, need {num_classes}")
    pick = _shuffle(list(range(len(chars))), f"{seed}/{name}")[:num_classes]
    return chars[pick]


class TaskPool:
    """Fixed 20-way tasks of a list of alphabets, as float tensors on one device.

    Attributes:
        names: alphabet names, task ``i`` is ``names[i]``.
        train_images: float ``(A, 20, 15, 28, 28)`` adaptation drawings, ink in [0, 1].
        test_images: float ``(A, 20, 5, 28, 28)`` held-out drawings.
    """

    def __init__(
        self,
        data: OmniglotImages,
        names: tuple[str, ...] | list[str],
        seed: int,
        device: torch.device | str = "cpu",
        num_classes: int = NUM_CLASSES,
        num_held_out: int = NUM_HELD_OUT,
    ) -> None:
        if not names:
            raise ValueError("a TaskPool needs at least one alphabet")
        if not 1 <= num_held_out < DRAWINGS:
            raise ValueError(f"num_held_out={num_held_out} must be in [1, {DRAWINGS - 1}]")
        imgs = np.stack([alphabet_task_images(data, n, seed, num_classes) for n in names])
        imgs = torch.from_numpy(imgs).to(device=device, dtype=torch.float32) / 255.0
        self._set(names, imgs[:, :, num_held_out:], imgs[:, :, :num_held_out])

    def _set(self, names, train_images: torch.Tensor, test_images: torch.Tensor) -> None:
        self.names = tuple(names)
        self.train_images = train_images.contiguous()
        self.test_images = test_images.contiguous()
        self.num_classes = train_images.shape[1]
        self.device = train_images.device

    @classmethod
    def from_tensors(
        cls, names, train_images: torch.Tensor, test_images: torch.Tensor
    ) -> TaskPool:
        """A pool from ready tensors: float ``(A, C, S, 28, 28)`` adaptation images and
        ``(A, C, H, 28, 28)`` held-out images (ink in [0, 1]); label = class index ``C``."""
        if train_images.ndim != 5 or test_images.ndim != 5:
            raise ValueError("expected (A, C, S, 28, 28) and (A, C, H, 28, 28) images")
        if train_images.shape[:2] != test_images.shape[:2] or len(names) != len(train_images):
            raise ValueError("names, adaptation and held-out images disagree on A or C")
        pool = cls.__new__(cls)
        pool._set(names, train_images.float(), test_images.float().to(train_images.device))
        return pool

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shots(self) -> int:
        """Adaptation drawings per character (15)."""
        return self.train_images.shape[2]

    def sample(
        self,
        task_ids: torch.Tensor,
        steps: int,
        batch_size: int,
        generator: torch.Generator,
        distort: bool = True,
        distort_test: bool | None = None,
    ) -> TaskBatch:
        """Draw everything ``steps`` adaptation steps on the given tasks will see.

        Adaptation batches run through each task's ``20 * 15`` images in reshuffled epochs
        (without replacement within an epoch). All random numbers are drawn here, up front, in a
        fixed order, so the batch contents do not depend on how the learner consumes them.

        Args:
            task_ids: long ``(T,)`` indices into this pool.
            steps: adaptation steps per task.
            batch_size: images per step.
            generator: CPU ``torch.Generator`` that all draws come from.
            distort: apply the random affine distortion (the protocol does).
            distort_test: distort the held-out images (default: as ``distort``).
        """
        task_ids = torch.as_tensor(task_ids, dtype=torch.long).cpu()
        if task_ids.ndim != 1 or len(task_ids) == 0:
            raise ValueError(
                f"task_ids must be a non-empty 1-D tensor, got {tuple(task_ids.shape)}"
            )
        if int(task_ids.min()) < 0 or int(task_ids.max()) >= len(self):
            raise ValueError(f"task_ids must be in [0, {len(self) - 1}], got {task_ids.tolist()}")
        if steps < 0 or batch_size < 1:
            raise ValueError(f"steps={steps} must be >= 0 and batch_size={batch_size} >= 1")
        T, n = len(task_ids), self.num_classes * self.shots
        epochs = max(1, math.ceil(steps * batch_size / n))
        order = torch.rand(T, epochs, n, generator=generator).argsort(dim=-1).reshape(T, -1)
        index = order[:, : steps * batch_size].reshape(T, steps, batch_size)
        train_affine = random_affine((T, steps, batch_size), generator) if distort else None
        n_test = self.num_classes * self.test_images.shape[2]
        distort_test = distort if distort_test is None else distort_test
        test_affine = random_affine((T, n_test), generator) if distort_test else None
        return TaskBatch(self, task_ids, index, train_affine, test_affine)


def random_affine(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """float ``(*shape, 2, 3)`` ``affine_grid`` matrices of the protocol's random distortion.

    The forward map rotates by ``a``, scales by ``s`` and translates by ``t`` (in units of the
    image side, +-0.2); ``affine_grid`` wants the inverse (output -> input coordinates in
    [-1, 1]): ``A = R(-a) / s``, ``b = -A (2 t)``.
    """
    u = torch.rand(*shape, 4, generator=generator)
    angle = math.radians(ROTATION[0]) + u[..., 0] * math.radians(ROTATION[1] - ROTATION[0])
    scale = SCALE[0] + u[..., 1] * (SCALE[1] - SCALE[0])
    shift = (u[..., 2:] * 2.0 - 1.0) * TRANSLATION * 2.0  # normalised coords span 2 per side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    b = -(a @ shift.unsqueeze(-1)).squeeze(-1)
    return torch.cat([a, b.unsqueeze(-1)], dim=-1)


def apply_affine(images: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
    """Distort ``images`` float ``(..., 28, 28)`` with ``theta`` ``(..., 2, 3)``; adds a channel.

    Returns float ``(..., 1, 28, 28)``. ``theta=None`` only adds the channel.
    """
    lead = images.shape[:-2]
    x = images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    if theta is not None:
        theta = theta.reshape(-1, 2, 3).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.reshape(*lead, 1, IMAGE_SIZE, IMAGE_SIZE)


class TaskBatch:
    """``T`` tasks with their adaptation batches and held-out set, materialised on demand.

    Attributes:
        task_ids: long ``(T,)`` indices into the pool (for the multi-head baseline).
        index: long ``(T, steps, B)`` indices into a task's ``20 * 15`` adaptation images.
        steps, batch_size, num_tasks: sizes.
    """

    def __init__(
        self,
        pool: TaskPool,
        task_ids: torch.Tensor,
        index: torch.Tensor,
        train_affine: torch.Tensor | None,
        test_affine: torch.Tensor | None,
    ) -> None:
        self.pool = pool
        self.task_ids = task_ids
        self.index = index
        self.train_affine = train_affine
        self.test_affine = test_affine
        self.num_tasks, self.steps, self.batch_size = index.shape

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptation batch ``step`` of every task.

        Returns:
            x: float ``(T, B, 1, 28, 28)``; y: long ``(T, B)`` labels in [0, 20).
        """
        return self._batch(slice(None), step)

    def train_batch_of(self, i: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptation batch ``step`` of task ``i`` alone: x ``(B, 1, 28, 28)``, y ``(B,)``."""
        x, y = self._batch(slice(i, i + 1), step)
        return x[0], y[0]

    def _batch(self, rows: slice, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} out of range [0, {self.steps})")
        pool, dev = self.pool, self.pool.device
        idx = self.index[rows, step].to(dev)  # (T, B) into a task's 20 * 15 images
        x = pool.train_images.flatten(1, 2)[self.task_ids[rows].to(dev)[:, None], idx]
        theta = None if self.train_affine is None else self.train_affine[rows, step]
        y = torch.div(idx, pool.shots, rounding_mode="floor")
        return apply_affine(x, theta), y

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out drawings of every task.

        Returns:
            x: float ``(T, 100, 1, 28, 28)``; y: long ``(T, 100)``.
        """
        pool = self.pool
        imgs = pool.test_images[self.task_ids.to(pool.device)]  # (T, 20, 5, 28, 28)
        T, C, H = imgs.shape[:3]
        y = torch.arange(C, device=pool.device).repeat_interleave(H).expand(T, -1)
        return apply_affine(imgs.reshape(T, C * H, IMAGE_SIZE, IMAGE_SIZE), self.test_affine), y

    def sample_batches(
        self, num: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh batches of a single task for the warp meta-objective (``warp_rl.BatchSampler``).

        Each batch draws ``B`` of the task's adaptation images without replacement and gives
        them a fresh random distortion (if this batch distorts).

        Returns:
            x: float ``(num, B, 1, 28, 28)``; y: long ``(num, B)``.
        """
        if self.num_tasks != 1:
            raise ValueError(f"sample_batches needs a single task, this batch has {self.num_tasks}")
        pool, dev = self.pool, self.pool.device
        n = pool.num_classes * pool.shots
        idx = torch.rand(num, n, generator=generator).argsort(dim=-1)[:, : self.batch_size]
        theta = None if self.train_affine is None else random_affine(idx.shape, generator)
        idx = idx.to(dev)
        x = pool.train_images.flatten(1, 2)[self.task_ids.to(dev)[0]][idx]
        return apply_affine(x, theta), torch.div(idx, pool.shots, rounding_mode="floor")

    def task(self, i: int) -> TaskBatch:
        """The sub-batch of task ``i`` alone (``T = 1``)."""
        return self.select(slice(i, i + 1))

    def select(self, sl: slice) -> TaskBatch:
        """The sub-batch of the tasks ``sl`` (e.g. one rank's share of a meta-batch)."""
        return TaskBatch(
            self.pool,
            self.task_ids[sl],
            self.index[sl],
            None if self.train_affine is None else self.train_affine[sl],
            None if self.test_affine is None else self.test_affine[sl],
        )


class TaskSampler:
    """Meta-batches of task ids: each pool task once per shuffled round, rounds chained.

    Like the original code's sampler, every alphabet appears before any repeats; unlike it, the
    rest of an unfinished round carries over to the next meta-batch (it is in the state, so a
    resumed run continues the same sequence).
    """

    def __init__(self, num_tasks: int) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks} must be >= 1")
        self.num_tasks = num_tasks
        self.queue: list[int] = []

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """long ``(n,)`` task ids."""
        while len(self.queue) < n:
            self.queue += torch.randperm(self.num_tasks, generator=generator).tolist()
        out, self.queue = self.queue[:n], self.queue[n:]
        return torch.tensor(out, dtype=torch.long)

    def state_dict(self) -> dict:
        return {"queue": list(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        self.queue = list(state["queue"])
