"""The replay buffer: adaptation states per task, bounded, on CPU by default.

For every registered task the buffer keeps

* ``sampler``: the task's data for the meta-objective (see :mod:`warp_rl.data`);
* ``states``: at most ``max_states_per_task`` adaptation states, chosen by **reservoir
  sampling** (Algorithm R) with the buffer's seeded generator: the first ``cap`` states are
  kept; the ``n``-th state after that replaces a uniformly chosen slot with probability
  ``cap / n``. Every state of a trajectory therefore ends up in the buffer with the same
  probability ``cap / n_total``, whatever the trajectory's length, and memory is bounded by
  ``cap`` states per task;
* path statistics for the Leap initialisation objective, accumulated exactly as states arrive
  (so the cap does not bias them): ``first`` state, ``last`` state, and the sum of normalised
  steps ``sum_k (theta_k - theta_{k+1}) / ||theta_k - theta_{k+1}||``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from warp_rl.data import BatchSampler, as_sampler
from warp_rl.objectives import path_step


@dataclass
class State:
    """One adaptation state ``theta_k``: tensors by name as in ``named_parameters``.

    ``params``: adaptable parameters; ``buffers``: adaptable buffers (e.g. batch-norm
    statistics); ``momentum_buffers``: the adaptation optimiser's momentum buffers (empty when
    momentum is not tracked).
    """

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    momentum_buffers: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TaskRecord:
    """What the buffer holds for one registered task (see the module docstring)."""

    sampler: BatchSampler
    states: list[State] = field(default_factory=list)
    seen: int = 0
    first: dict[str, torch.Tensor] | None = None
    last: dict[str, torch.Tensor] | None = None
    normalised_path: dict[str, torch.Tensor] | None = None
    num_steps: int = 0

    def displacement(self) -> dict[str, torch.Tensor]:
        """``theta_0 - theta_K`` (zeros if only one state was seen)."""
        assert self.first is not None and self.last is not None
        return {k: self.first[k] - self.last[k] for k in self.first}


class ReplayBuffer:
    """Adaptation states of the tasks adapted since the last meta-update.

    Args:
        max_states_per_task: cap on stored states per task (reservoir sampling beyond it);
            ``None`` keeps every state (memory then grows with the number of steps).
        max_batches_per_task: batches cached from a plain iterable task at registration.
        device: where states and cached batches live (``"cpu"`` keeps accelerator memory free).
        seed: seed of the generator used for reservoir sampling.
    """

    def __init__(
        self,
        max_states_per_task: int | None = 256,
        max_batches_per_task: int = 8,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        if max_states_per_task is not None and max_states_per_task < 1:
            raise ValueError(
                f"max_states_per_task must be >= 1 or None, got {max_states_per_task}"
            )
        if max_batches_per_task < 1:
            raise ValueError(f"max_batches_per_task must be >= 1, got {max_batches_per_task}")
        self.max_states_per_task = max_states_per_task
        self.max_batches_per_task = max_batches_per_task
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.tasks: list[TaskRecord] = []

    def __len__(self) -> int:
        """Number of stored states, over all tasks."""
        return sum(len(t.states) for t in self.tasks)

    def clear(self) -> None:
        """Forget every task and state (the generator keeps its position)."""
        self.tasks.clear()

    def new_task(self, task: Any) -> int:
        """Register a task's data (see :func:`warp_rl.data.as_sampler`); returns its index."""
        sampler = as_sampler(task, self.max_batches_per_task, device=str(self.device))
        self.tasks.append(TaskRecord(sampler=sampler))
        return len(self.tasks) - 1

    def add(self, task: int, state: State) -> bool:
        """Offer ``state`` (already copied to :attr:`device`) for task ``task``.

        Updates the task's path statistics and stores the state under the reservoir policy.
        Returns whether the state was stored.
        """
        if not 0 <= task < len(self.tasks):
            raise IndexError(f"task {task} is not registered (have {len(self.tasks)} tasks)")
        rec = self.tasks[task]
        params = state.params
        if rec.last is None:
            rec.first = params
            rec.normalised_path = {k: torch.zeros_like(v) for k, v in params.items()}
        else:
            diff, norm = path_step(rec.last, params)
            assert rec.normalised_path is not None
            for k, d in diff.items():
                rec.normalised_path[k].add_(d, alpha=1.0 / norm)
            rec.num_steps += 1
        rec.last = params
        rec.seen += 1
        cap = self.max_states_per_task
        if cap is None or len(rec.states) < cap:
            rec.states.append(state)
            return True
        j = int(torch.randint(rec.seen, (1,), generator=self.generator))
        if j < cap:
            rec.states[j] = state
            return True
        return False
