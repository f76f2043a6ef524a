"""One training episode on the batched maze: the rollout the A2C loss is computed from.

Reproducibility: every episode's maze layouts and goals and its action noise come from seeds
derived from ``(seed, episode, rank)`` (:func:`episode_seeds`), so the whole random stream of a
run is a function of the episode counter.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from agents.base import RecurrentAgent
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
    noise = torch.empty(length, batch, agent.num_actions, device=device)
    noise = noise.exponential_(generator=generator).log_().neg_()
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


__all__ = ["Rollout", "collect_rollout", "episode_seeds"]
