"""One training episode on the batched maze: the rollout the A2C loss is computed from.

Reproducibility: every episode's maze layouts and goals and its action noise come from seeds
derived from ``(seed, episode, rank)`` (:func:`episode_seeds`), so the whole random stream of a
run is a function of the episode counter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from agents.base import RecurrentAgent, Unroller
from envs.batch_env import BatchEnv


class Rollout(NamedTuple):
    """One batch of episodes: ``T`` steps of ``B`` mazes, ``A`` actions, observations of
    length ``D``."""

    logits: torch.Tensor  # (T, B, A), in the autograd graph
    values: torch.Tensor  # (T, B), in the autograd graph
    actions: torch.Tensor  # (T, B) int64
    rewards: torch.Tensor  # (T, B) float32, rewards[t] earned by actions[t]
    observations: torch.Tensor  # (T, B, D) float32, observations[t] seen before actions[t]


def episode_seeds(seed: int, episode: int, rank: int = 0) -> tuple[int, int]:
    """``(env_seed, sample_seed)`` of an episode on rank ``rank``: a function of ``(seed,
    episode, rank)`` only. Rank 0 (and a single process) uses ``SeedSequence([seed, episode])``,
    rank ``r > 0`` uses ``SeedSequence([seed, episode, r])``."""
    entropy = [seed, episode] if rank == 0 else [seed, episode, rank]
    env_seed, sample_seed = np.random.SeedSequence(entropy).generate_state(2)
    return int(env_seed), int(sample_seed)


def gumbel_noise(length: int, batch: int, num_actions: int, generator: torch.Generator,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """A whole episode's Gumbel noise ``(T, B, A)``, ``g = -log(Exponential(1))`` drawn from
    ``generator`` (on its device): ``argmax(logits + g[t])`` is an exact sample of
    ``softmax(logits)``. Written into ``out`` (contiguous ``(T, B, A)``) if given."""
    noise = torch.empty(length, batch, num_actions, device=generator.device) if out is None \
        else out
    return noise.exponential_(generator=generator).log_().neg_()


def collect_rollout(agent: RecurrentAgent, env: BatchEnv, length: int, env_seed: int,
                    generator: torch.Generator) -> Rollout:
    """Run ``length`` steps of every maze from a fresh reset, keeping what the loss needs.

    The agent is stepped through its :meth:`~agents.base.RecurrentAgent.unroller` (autograd per
    step by default; the Warp-RNN's fused tape records activations and back-propagates through
    time by hand). Actions are sampled with the Gumbel-max trick, ``argmax(logits + g)`` with
    ``g = -log(Exponential(1))`` drawn for the whole episode up front from ``generator``: an
    exact sample of ``softmax(logits)`` without a distribution object or a device sync per step.
    """
    device = generator.device
    batch = env.num_envs
    obs = env.reset(env_seed)
    unroll = agent.unroller(batch, length, device)
    noise = gumbel_noise(length, batch, agent.num_actions, generator)
    actions = torch.empty(length, batch, dtype=torch.long, device=device)
    rewards = torch.empty(length, batch, device=device)
    observations = torch.empty(length, batch, env.obs_dim, device=device)
    for t in range(length):
        observations[t] = obs
        logits = unroll.step(obs)
        torch.argmax(logits + noise[t], dim=-1, out=actions[t])
        obs, reward = env.step(actions[t])
        rewards[t] = reward
    logits, values = unroll.outputs()
    return Rollout(logits, values, actions, rewards, observations)


def collect_population_rollout(unroll: Unroller, envs: Sequence[BatchEnv], length: int,
                               env_seeds: Sequence[int], generators: Sequence[torch.Generator],
                               num_actions: int) -> list[Rollout]:
    """:func:`collect_rollout` for a population of ``S`` runs played side by side: run ``s``
    plays ``envs[s]`` reset with ``env_seeds[s]``, samples with noise from ``generators[s]``
    (the same draws as its own :func:`collect_rollout` would take) and is stepped by the
    population unroller ``unroll`` (obs ``(S, B, D)`` -> logits ``(S, B, A)``).

    Returns one :class:`Rollout` per run, each ``(T, B, ...)`` and contiguous (so that its loss
    is computed exactly as a single run's), its logits and values in the autograd graph.
    """
    batch = envs[0].num_envs
    obs = torch.stack([env.reset(seed) for env, seed in zip(envs, env_seeds, strict=True)])
    noise = torch.stack([gumbel_noise(length, batch, num_actions, g) for g in generators], 1)

    def step(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stepped = [env.step(actions[s]) for s, env in enumerate(envs)]
        return torch.stack([o for o, _ in stepped]), torch.stack([r for _, r in stepped])

    return play_population(unroll, step, obs, noise)


def play_population(unroll: Unroller,
                    step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                    obs: torch.Tensor, noise: torch.Tensor) -> list[Rollout]:
    """The loop of :func:`collect_population_rollout`: from the population's first
    observations ``obs`` ``(S, B, D)`` (its mazes just reset), with its Gumbel noise ``noise``
    ``(T, S, B, A)``, ``T`` steps of ``step`` (actions ``(S, B)`` -> observations ``(S, B, D)``
    and rewards ``(S, B)``). Nothing here reads a value on the host: on a GPU, with mazes on
    the device, it can be captured as a CUDA graph (:class:`agents.population.
    PopulationTrainer`, ``cuda_graph=True``)."""
    length, size, batch = noise.shape[:3]
    device = noise.device
    actions = torch.empty(length, size, batch, dtype=torch.long, device=device)
    rewards = torch.empty(length, size, batch, device=device)
    observations = torch.empty(length, size, batch, obs.shape[-1], device=device)
    for t in range(length):
        observations[t] = obs
        logits = unroll.step(obs)
        torch.argmax(logits + noise[t], dim=-1, out=actions[t])
        obs, rewards[t] = step(actions[t])
    logits, values = unroll.outputs()
    return [Rollout(logits[:, s].contiguous(), values[:, s].contiguous(),
                    actions[:, s].contiguous(), rewards[:, s].contiguous(),
                    observations[:, s].contiguous()) for s in range(size)]


__all__ = ["Rollout", "collect_population_rollout", "collect_rollout", "episode_seeds",
           "gumbel_noise", "play_population"]
