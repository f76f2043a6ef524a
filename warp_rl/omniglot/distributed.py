"""Data-parallel meta-learning on ``torch.distributed`` (``torchrun ... train_omniglot.py``).

:class:`DataParallelLearner` wraps a :class:`~warp_rl.omniglot.meta_learners.MetaLearner` on
every rank and answers the same calls:

- ``meta_step(tasks)``: every rank receives the *same* meta-batch (drawn from the shared task
  generator) and adapts its contiguous, equal share of the tasks (``--meta-batch-size`` must be
  divisible by the number of ranks). Warp learners store their share's adaptation states in the
  rank's own replay buffer and compute their part of the warp meta-gradient (Algorithm 2) and of
  the Leap gradient from it; before *every* outer optimiser step the meta-gradients are averaged
  over the ranks (the learner's ``grad_sync`` hook), so all ranks take the same step and keep
  identical meta-parameters. Each per-rank gradient is a mean (over states, or over tasks for
  Leap and the other initialisation learners), so with equal shares the average is the mean over
  the whole meta-batch: one outer step equals the single-process one on the concatenated
  meta-batch (to float round-off) when it uses the whole buffer (``--warp-meta-batch-size``
  covering all states). With a smaller ``--warp-meta-batch-size`` (per rank), each outer step
  averages ``P`` such meta-batches, one per rank, and a meta-step takes ``P`` times fewer warp
  steps than a single process would.
- ``evaluate(tasks)``: the tasks are split the same way (unequal shares allowed) and the results
  gathered, in task order, on every rank.

Rank-local random streams (the learner's generator, the replay buffer's and the meta-objective's
batch draws) are seeded from ``(seed, rank)`` with :func:`warp_rl.distributed.rank_seed`: rank 0
draws what a single process draws. :meth:`DataParallelLearner.state_dict` gathers every rank's
streams, so ``--resume`` on the same number of ranks continues exactly.
"""

from __future__ import annotations

import dataclasses

import torch

from warp_rl import distributed

from .meta_learners import MetaLearner, TaskResults
from .tasks import TaskBatch


class DataParallelLearner:
    """A meta-learner split over the ranks of the process group (see the module docstring).

    Args:
        learner: this rank's learner, built with the run's seed (identical on every rank).
        seed: the run's seed (rank-local streams are derived from it).

    What it uses of the learner is declared on :class:`MetaLearner`:
    :attr:`~MetaLearner.data_parallel_refusal`, :attr:`~MetaLearner.grad_sync`,
    :meth:`~MetaLearner.random_streams`, :meth:`~MetaLearner.synced_modules`,
    :attr:`~MetaLearner.last_info` and :attr:`~MetaLearner.last_times`.

    Raises:
        ValueError: for a learner with a :attr:`~MetaLearner.data_parallel_refusal` (``ft``:
            its pretraining takes one optimiser step per task batch, in an order interleaved
            across tasks: not a meta-gradient that ranks can average).
    """

    def __init__(self, learner: MetaLearner, seed: int) -> None:
        if learner.data_parallel_refusal is not None:
            raise ValueError(learner.data_parallel_refusal)
        self.learner = learner
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        learner.grad_sync = distributed.average_gradients_
        for offset, gen in enumerate(learner.random_streams().values()):
            gen.manual_seed(distributed.rank_seed(seed + offset, self.rank))
        for module in learner.synced_modules():  # same start everywhere (seeded anyway)
            distributed.broadcast_module_(module)
        self.last_info = None

    # -- what a learner answers ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.learner.name

    @property
    def trains(self) -> bool:
        return self.learner.trains

    @property
    def device(self) -> torch.device:
        return self.learner.device

    @property
    def last_times(self) -> dict[str, float]:
        return self.learner.last_times

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        """Adapt this rank's share of ``tasks``, take the (averaged) meta-update; returns the
        results of *all* tasks (gathered)."""
        share = distributed.even_share(tasks.num_tasks, "meta_batch_size")
        mine = tasks.select(slice(self.rank * share, (self.rank + 1) * share))
        results = self.learner.meta_step(mine)
        info = self.learner.last_info
        if info is not None:  # the meta-loss over all ranks' states
            numbers = torch.tensor([info.meta_loss * info.num_states, info.num_states],
                                   dtype=torch.float64)
            loss_sum, states = distributed.all_reduce_sum(numbers, "all_reduce of the meta-loss")
            self.last_info = dataclasses.replace(info, meta_loss=float(loss_sum / states),
                                                 num_states=int(states))
        return self._gather(results)

    def evaluate(self, tasks: TaskBatch) -> TaskResults:
        """Adapt to this rank's share of ``tasks`` and evaluate; results of all tasks, in order,
        on every rank."""
        mine = distributed.shard(tasks.num_tasks)
        results = self.learner.evaluate(tasks.select(mine)) if mine.stop > mine.start else None
        return self._gather(results)

    def _gather(self, results: TaskResults | None) -> TaskResults:
        parts = distributed.all_gather_object(results, "all_gather of task results")
        return TaskResults.cat([p for p in parts if p is not None])

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The learner's state (identical on every rank) and every rank's random streams.
        A collective: every rank calls it; rank 0 writes it."""
        streams = {k: g.get_state() for k, g in self.learner.random_streams().items()}
        return {**self.learner.state_dict(), "world_size": self.world_size,
                "rank_streams": distributed.all_gather_object(streams, "all_gather of RNGs")}

    def load_state_dict(self, state: dict) -> None:
        distributed.check_resume_world_size(int(state.get("world_size", 1)), "task split")
        self.learner.load_state_dict(state)
        for name, gen in self.learner.random_streams().items():
            gen.set_state(state["rank_streams"][self.rank][name])
