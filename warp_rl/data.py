"""Task data for the meta-objective: the task protocol and two ready-made tasks.

A *task* is what ``Warp.register_task(task)`` receives. The adaptation loop iterates it
(``for x, y in task``); the meta-objective later needs fresh batches of the same task for each
replayed state. Re-creating a ``DataLoader`` for every replayed state cost the original
implementation two thirds of its time, so here the data is resolved once per task into a
:class:`BatchSampler`:

* an object with ``sample_batches(num, generator) -> (x, y)`` returning ``num`` stacked batches,
  ``x`` of shape ``(num, B, ...)`` and ``y`` of shape ``(num, B, ...)``, is used as it is
  (:class:`TensorTask` is one);
* any other re-iterable of ``(x, y)`` batches (a list, a ``DataLoader``) is iterated **once** at
  registration and its first ``max_batches`` full-size batches are cached as tensors
  (:class:`CachedBatches`); the meta-objective then draws batches from that cache.

One-shot iterators (generators) are refused: iterating them at registration would consume the
batches the adaptation loop needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class BatchSampler(Protocol):
    """Anything that can draw stacked batches of one task for the meta-objective."""

    def sample_batches(
        self, num: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``num`` batches stacked: ``x (num, B, ...)``, ``y (num, B, ...)``."""
        ...


def _randperm_cycle(n: int, num: int, generator: torch.Generator) -> torch.Tensor:
    """``num`` indices in ``[0, n)``: without replacement while ``num <= n``, then repeat."""
    reps = -(-num // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:num]


class TensorTask:
    """A task held as tensors: iterate it for adaptation, sample it for the meta-objective.

    Args:
        x: inputs, shape ``(N, ...)``.
        y: targets, shape ``(N, ...)``.
        batch_size: examples per batch ``B`` (``1 <= B <= N``).
        steps: batches yielded by one iteration (the number of adaptation steps).
        seed: seed of the task's own generator (same seed, same batches).

    Iterating yields ``steps`` batches ``(x (B, ...), y (B, ...))``, each drawn without
    replacement within the batch; successive iterations continue the same random stream.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int = 1, seed: int = 0
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
        if not 1 <= batch_size <= x.shape[0]:
            raise ValueError(f"batch_size must be in [1, {x.shape[0]}], got {batch_size}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.x, self.y = x, y
        self.batch_size, self.steps = batch_size, steps
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps

    def _indices(self, num: int, generator: torch.Generator) -> torch.Tensor:
        n = self.x.shape[0]
        return torch.stack(
            [torch.randperm(n, generator=generator)[: self.batch_size] for _ in range(num)]
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self._indices(self.steps, self.generator):
            yield self.x[idx], self.y[idx]

    def sample_batches(
        self, num: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` fresh batches, ``x (num, B, ...)``, ``y (num, B, ...)``, one gather each."""
        idx = self._indices(num, generator)
        return self.x[idx], self.y[idx]


class CachedBatches:
    """The first ``max_batches`` full-size batches of an iterable task, kept as tensors.

    Batches whose shapes differ from the first batch (typically a short last batch) are
    skipped so that batches can be stacked. :meth:`sample_batches` draws batches without
    replacement while ``num`` does not exceed the number cached.
    """

    def __init__(self, task: Iterable[Any], max_batches: int = 8, device: str = "cpu") -> None:
        if max_batches < 1:
            raise ValueError(f"max_batches must be >= 1, got {max_batches}")
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for i, batch in enumerate(task):
            if not (isinstance(batch, tuple | list) and len(batch) == 2):
                raise TypeError(
                    f"a task must yield (x, y) pairs of tensors; batch {i} is "
                    f"{type(batch).__name__}"
                )
            x, y = (torch.as_tensor(t) for t in batch)
            if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
                continue
            xs.append(x.detach().to(device))
            ys.append(y.detach().to(device))
            if len(xs) == max_batches:
                break
        if not xs:
            raise ValueError("the registered task yielded no batch")
        self.x = torch.stack(xs)
        self.y = torch.stack(ys)

    def __len__(self) -> int:
        return self.x.shape[0]

    def sample_batches(
        self, num: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` cached batches, ``x (num, B, ...)``, ``y (num, B, ...)``."""
        idx = _randperm_cycle(len(self), num, generator)
        return self.x[idx], self.y[idx]


def as_sampler(task: Any, max_batches: int = 8, device: str = "cpu") -> BatchSampler:
    """Resolve a registered task into a :class:`BatchSampler` (see the module docstring)."""
    if isinstance(task, BatchSampler):
        return task
    if not isinstance(task, Iterable):
        raise TypeError(
            "a task must be an iterable of (x, y) batches or have "
            f"sample_batches(num, generator); got {type(task).__name__}"
        )
    if isinstance(task, Iterator):
        raise TypeError(
            f"a task must be re-iterable (a list, a DataLoader, a TensorTask); got the one-shot "
            f"iterator {type(task).__name__}, which registering would consume"
        )
    return CachedBatches(task, max_batches=max_batches, device=device)
