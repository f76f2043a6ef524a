"""Population training: several seeds of one maze configuration in one process, side by side.

A population is ``S`` ordinary runs (:class:`agents.trainer.Trainer`), one per seed, each with
its own run folder, parameters, optimisers, warp objective, mazes and action noise. What they
share is the arithmetic of the rollout and of the backward pass through time: the agents'
parameters are stacked along a leading dimension and every step is one batched operation for
all ``S`` runs (:meth:`agents.base.RecurrentAgent.population_unroller`), which on CPU costs far
less than ``S`` separate small operations. One population episode is::

    env_seeds = [run.begin_episode() for run in runs]          # each run's own seeds
    rollouts = collect_population_rollout(unroller, ...)       # one (T, B) rollout per run
    sum(run.loss(r) for run, r in zip(runs, rollouts)).backward()
    numbers = [run.clip_and_check(r, loss) ...]                # clipping per run
    rows = [run.take_steps(n, ...) ...]                         # Adam, warp objective per run

The loss of run ``s`` depends on run ``s``'s parameters only, so the gradient of the summed
loss is each run's own gradient; clipping, the optimiser steps, the warp objective, the log and
the checkpoint are each run's own code, unchanged. Each run's log and parameters therefore
equal what a separate run of that seed writes, up to rounding: a batched matrix product does
not always give a member the very bits of its own product (measured on CPU: it does for some
shapes and members, not for others), so in float64 a member agrees with its separate run to
about 1e-15 relative, with the same actions and rewards, over the tests' episodes
(``tests/test_population.py``). Over thousands of episodes such rounding differences can grow,
as any change of summation order can in RL, into a different trajectory of equal quality: a
population run is reproducible as the same population (same seeds, same order, same machine).

Each run's folder is an ordinary run folder: it can be resumed on its own, by
``scripts/train_maze.py --resume`` with one seed or with the others as a population.

On a GPU (the torch maze back-end) the population also shares its mazes: one
:class:`envs.TorchMazeBatch` of ``S x B`` mazes, reset with one seed per run, so that a maze
step is one set of kernels for all runs. With ``cuda_graph=True`` the device part of the
episode (:meth:`PopulationTrainer.play_and_backward`: the mazes, the agents' steps, sampling,
losses and backward) is captured once as a CUDA graph and replayed every episode after; the
clipping, steps, warp objectives, logs and checkpoints stay outside it, unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.a2c import A2CLoss
from agents.base import RecurrentAgent
from agents.rollout import Rollout, collect_population_rollout, gumbel_noise, play_population
from agents.trainer import NonFiniteLossError, TrainConfig, Trainer, make_batch_env
from envs.batch_env import GroupedBatchEnv
from warp_rl import distributed
from warp_rl.utils import global_rng_states, set_global_rng_states


class PopulationTrainer:
    """Trains ``S`` runs of one configuration, differing only in their seeds, as one population
    (see the module docstring).

    Args:
        runs: the runs, one :class:`~agents.trainer.Trainer` per seed, already built or resumed
            (:meth:`create` and :meth:`resume` build them). They must agree on every setting
            but ``seed``, sit at the same episode and have agents whose class defines
            :meth:`~agents.base.RecurrentAgent.population_unroller`.

    Raises:
        ValueError: the runs do not form a population (naming what differs).
    """

    def __init__(self, runs: Sequence[Trainer], cuda_graph: bool = False) -> None:
        runs = list(runs)
        if not runs:
            raise ValueError("a population needs at least one run")
        if distributed.world_size() > 1:
            raise ValueError("population training runs in one process; it does not combine "
                             "with torchrun")
        first = runs[0]
        common = dataclasses.replace(first.config, seed=0)
        seeds = [run.config.seed for run in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"the seeds of a population must differ; got {seeds}")
        for run in runs[1:]:
            config = dataclasses.replace(run.config, seed=0)
            if config != common:
                diff = [f.name for f in dataclasses.fields(config)
                        if getattr(config, f.name) != getattr(common, f.name)]
                raise ValueError(f"the runs of a population differ only in seed; seed "
                                 f"{run.config.seed} differs from seed {first.config.seed} in "
                                 f"{', '.join(diff)}")
            if run.episode != first.episode:
                raise ValueError(f"the runs of a population must be at the same episode; seed "
                                 f"{first.config.seed} is at {first.episode}, seed "
                                 f"{run.config.seed} at {run.episode} (resume them separately "
                                 "until they meet)")
        agent_class = type(first.agent)
        if agent_class.population_unroller.__func__ is _BASE_POPULATION_UNROLLER:
            raise ValueError(f"agent {first.config.agent!r} cannot train as a population; "
                             f"these can: {', '.join(population_agents())}")
        self.runs = runs
        self.config = cfg = first.config
        self.size, self.batch = len(runs), first.local_batch_size
        # The population's mazes: on the torch back-end (any GPU run) one batch of S x B mazes,
        # group s seeded as run s seeds its own, so that a step is one set of kernels for all
        # runs; on the numpy back-end each run steps its own mazes.
        self.mazes: GroupedBatchEnv | None = None
        if isinstance(first.env, GroupedBatchEnv):
            self.mazes = make_batch_env(cfg, self.size * self.batch, first.device)
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph and (first.device.type != "cuda" or self.mazes is None):
            raise ValueError(f"cuda_graph=True needs runs on a CUDA device with the torch maze "
                             f"back-end; these run on {first.device} with env_backend "
                             f"{cfg.env_backend!r}")
        self._graph: _CapturedEpisode | None = None
        self._warmed_up = False  # the first episode under cuda_graph runs eagerly
        self._stream = torch.cuda.Stream(first.device) if self.cuda_graph else None
        # Each run's global RNG states as its own process would hold them (its checkpoints
        # store them); nothing in training draws from the global generators.
        self._global_rng = [global_rng_states() for _ in runs]

    # --------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: TrainConfig, seeds: Sequence[int],
               out_dirs: Sequence[str | Path], cuda_graph: bool = False) -> PopulationTrainer:
        """New runs of ``config`` for ``seeds``, run ``i`` writing to ``out_dirs[i]``."""
        if len(seeds) != len(out_dirs):
            raise ValueError(f"one folder per seed: {len(seeds)} seeds, {len(out_dirs)} folders")
        return cls._assemble(
            (lambda seed=seed, out=out: Trainer(dataclasses.replace(config, seed=int(seed)), out)
             for seed, out in zip(seeds, out_dirs, strict=True)), cuda_graph)

    @classmethod
    def resume(cls, out_dirs: Sequence[str | Path], overrides: dict[str, Any] | None = None,
               cuda_graph: bool = False) -> PopulationTrainer:
        """Resume the runs in ``out_dirs`` (:meth:`agents.trainer.Trainer.resume` each, with the
        same ``overrides``) as one population."""
        return cls._assemble((lambda out=out: Trainer.resume(out, overrides) for out in out_dirs),
                             cuda_graph)

    @classmethod
    def _assemble(cls, builders: Iterable[Callable[[], Trainer]], cuda_graph: bool = False
                  ) -> PopulationTrainer:
        """The population of the runs ``builders`` build, one after the other, each run's global
        RNG states kept as they are right after it is built (what its own process would hold);
        on any error every run built so far is closed (its folder's lock released)."""
        runs: list[Trainer] = []
        states = []
        try:
            for build in builders:
                runs.append(build())
                states.append(global_rng_states())
            population = cls(runs, cuda_graph)
        except BaseException:
            for run in runs:
                run.close()
            raise
        population._global_rng = states
        return population

    @property
    def episode(self) -> int:
        """Episodes done (the same for every run)."""
        return self.runs[0].episode

    # --------------------------------------------------------------------------------------------
    def train_episode(self) -> list[dict[str, Any]]:
        """One episode of every run; returns their log rows, in the order of the runs.

        Raises :class:`~agents.trainer.NonFiniteLossError` (naming the seeds) before any run
        steps if the loss or gradient of any run is not finite.
        """
        runs = self.runs
        start = time.perf_counter()
        env_seeds = [run.begin_episode() for run in runs]
        if not self.cuda_graph:
            rollouts, losses = self.rollouts_and_backward(env_seeds)
        elif self._graph is not None:
            self._graph.fill(env_seeds)
            rollouts, losses = self._graph.replay()
        elif not self._warmed_up:
            # The first episode runs as it is, on the stream the graph will be captured on: the
            # lazy set-up of the libraries (cuBLAS workspaces, autograd's device threads)
            # happens here, outside any capture.
            with torch.cuda.stream(self._stream):
                rollouts, losses = self.rollouts_and_backward(env_seeds)
            torch.cuda.synchronize(self._stream.device)  # before the default stream reads them
            self._warmed_up = True
        else:  # captured with this episode's inputs already filled
            self._graph = _CapturedEpisode(self, env_seeds)
            rollouts, losses = self._graph.replay()
        # (Under a CUDA graph the replay is only launched by now: the log's rollout_s is then
        # the launch, and update_s holds the episode's device time.)
        rollout_done = time.perf_counter()
        numbers, failed = [], []
        for run, rollout, loss in zip(runs, rollouts, losses, strict=True):
            try:
                numbers.append(run.clip_and_check(rollout, loss))
            except NonFiniteLossError as err:
                failed.append(f"seed {run.config.seed}: {err}")
        if failed:
            raise NonFiniteLossError("; ".join(failed))
        return [run.take_steps(n, start, rollout_done)
                for run, n in zip(runs, numbers, strict=True)]

    def rollouts_and_backward(self, env_seeds: Sequence[int]
                              ) -> tuple[list[Rollout], list[A2CLoss]]:
        """Every run's rollout of this episode (mazes reset with ``env_seeds``, action noise
        from each run's generator) and its loss, with each run's gradient in its parameters'
        ``.grad``."""
        runs, cfg = self.runs, self.config
        if self.mazes is None:
            agents = [run.agent for run in runs]
            unroll = type(agents[0]).population_unroller(agents, self.batch, cfg.episode_length,
                                                          runs[0].device)
            rollouts = collect_population_rollout(unroll, [run.env for run in runs],
                                                  cfg.episode_length, env_seeds,
                                                  [run.generator for run in runs],
                                                  agents[0].num_actions)
            return rollouts, self._losses_and_backward(rollouts)
        self.mazes.reset(env_seeds)
        noise = torch.stack([gumbel_noise(cfg.episode_length, self.batch,
                                          run.agent.num_actions, run.generator)
                             for run in runs], 1)
        return self.play_and_backward(noise)

    def play_and_backward(self, noise: torch.Tensor) -> tuple[list[Rollout], list[A2CLoss]]:
        """The device part of an episode on :attr:`mazes` (already reset), with the action
        noise ``noise`` ``(T, S, B, A)``: rollouts, losses and the backward pass. It reads
        nothing back to the host, so that it can be captured as a CUDA graph."""
        runs, S, B = self.runs, self.size, self.batch
        agents = [run.agent for run in runs]
        unroll = type(agents[0]).population_unroller(agents, B, self.config.episode_length,
                                                      runs[0].device)
        mazes = self.mazes

        def step(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            obs, reward = mazes.step(actions.reshape(S * B))
            return obs.view(S, B, -1), reward.view(S, B)

        obs = mazes.observation().view(S, B, -1)
        rollouts = play_population(unroll, step, obs, noise)
        return rollouts, self._losses_and_backward(rollouts)

    def _losses_and_backward(self, rollouts: Sequence[Rollout]) -> list[A2CLoss]:
        losses = [run.loss(rollout) for run, rollout in zip(self.runs, rollouts, strict=True)]
        self.clear_grads()
        torch.stack([loss.total for loss in losses]).sum().backward()
        return losses

    def train(self, until_episode: int | None = None, progress: bool = True) -> None:
        """Train every run until ``until_episode`` episodes are done (default
        ``config.episodes``): a log row per run and episode, each run's checkpoint every
        ``checkpoint_every`` episodes and at the end. On a non-finite loss, every run's
        checkpoint holds the (finite) state before the failing episode, and the error, naming
        the seeds, is re-raised."""
        from tqdm.auto import tqdm

        cfg = self.config
        until = cfg.episodes if until_episode is None else until_episode
        seeds = " ".join(str(run.config.seed) for run in self.runs)
        bar = tqdm(total=until, initial=self.episode, unit="ep", disable=not progress,
                   dynamic_ncols=True, desc=f"{cfg.agent} seeds {seeds}")
        try:
            while self.episode < until:
                try:
                    rows = self.train_episode()
                except NonFiniteLossError as err:
                    self.clear_grads()
                    self.save_checkpoints()
                    raise NonFiniteLossError(
                        f"{err}. Training stopped; every run's checkpoint holds its state "
                        f"before episode {self.episode}") from None
                for run, row in zip(self.runs, rows, strict=True):
                    run.log.append(row)
                bar.update(1)
                bar.set_postfix(reward=" ".join(f"{np.mean(run.recent_rewards):.1f}"
                                                for run in self.runs),
                                s_per_ep=f"{rows[0]['rollout_s'] + rows[0]['update_s']:.3f}",
                                refresh=False)
                if self.episode % cfg.checkpoint_every == 0:
                    self.save_checkpoints()
            if self.runs[0].last_checkpoint_episode != self.episode:
                self.save_checkpoints()
        finally:
            bar.close()

    def clear_grads(self) -> None:
        """Set every run's parameters' ``.grad`` to ``None``."""
        for run in self.runs:
            for p in run.params:
                p.grad = None

    def save_checkpoints(self) -> None:
        """Every run's checkpoint (:meth:`agents.trainer.Trainer.save_checkpoint`), each with
        the global RNG states its own process would hold."""
        current = global_rng_states()
        try:
            for run, states in zip(self.runs, self._global_rng, strict=True):
                set_global_rng_states(states)
                run.save_checkpoint()
        finally:
            set_global_rng_states(current)

    def close(self) -> None:
        """Close every run's log and release its folder's lock."""
        for run in self.runs:
            run.close()


class _CapturedEpisode:
    """:meth:`PopulationTrainer.play_and_backward` captured once as a CUDA graph and replayed
    every episode after: the rollouts of every run, their losses and the backward pass, some
    tens of thousands of small kernels, launched as one graph.

    What changes from episode to episode enters through tensors the graph reads in place: the
    mazes' start state and uniforms (written by their ``reset``), the action noise (drawn into
    :attr:`noise` by each run's generator) and the parameters (updated in place by the
    optimisers). What it produces lands in the same tensors every replay: the rollouts, the
    losses and the gradients, which :meth:`replay` hands back to the parameters' ``.grad``.
    Clipping, the optimiser steps and the warp objective then run as they always do.
    """

    def __init__(self, trainer: PopulationTrainer, env_seeds: Sequence[int]) -> None:
        cfg, runs = trainer.config, trainer.runs
        self.trainer = trainer
        self.noise = [torch.empty(cfg.episode_length, trainer.batch, run.agent.num_actions,
                                  device=run.device) for run in runs]
        self.fill(env_seeds)
        trainer.clear_grads()  # so that the captured backward allocates them in the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=trainer._stream):
            self.rollouts, self.losses = trainer.play_and_backward(torch.stack(self.noise, 1))
        self.grads = [[p.grad for p in run.params] for run in runs]

    def fill(self, env_seeds: Sequence[int]) -> None:
        """Write the inputs of the episode of ``env_seeds`` (each run's generator already
        seeded for it): reset the mazes, draw every run's action noise."""
        self.trainer.mazes.reset(env_seeds)
        for run, out in zip(self.trainer.runs, self.noise, strict=True):
            gumbel_noise(*out.shape, run.generator, out=out)

    def replay(self) -> tuple[list[Rollout], list[A2CLoss]]:
        """Run the episode whose inputs :meth:`fill` wrote (the constructor fills the first)."""
        self.graph.replay()
        for run, grads in zip(self.trainer.runs, self.grads, strict=True):
            for p, g in zip(run.params, grads, strict=True):
                p.grad = g
        return self.rollouts, self.losses


_BASE_POPULATION_UNROLLER = RecurrentAgent.population_unroller.__func__


def population_agents() -> list[str]:
    """The names in :data:`agents.AGENTS` whose agents can train as a population."""
    from importlib import import_module

    from agents import AGENTS

    names = []
    for name, path in sorted(AGENTS.items()):
        module_name, class_name = path.split(":")
        cls = getattr(import_module(module_name), class_name)
        if cls.population_unroller.__func__ is not _BASE_POPULATION_UNROLLER:
            names.append(name)
    return names


__all__ = ["PopulationTrainer", "population_agents"]
