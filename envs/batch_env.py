"""The batched maze as torch tensors: what the maze trainer steps.

Two back-ends with one interface (:class:`BatchEnv`): :class:`NumpyBatchEnv` wraps the
numpy-batched ``WarpMazeVectorEnv`` (CPU), :class:`TorchBatchEnv` the torch ``TorchMazeBatch``
(any device; on a GPU nothing crosses to the host during an episode). Both step all mazes in
lockstep, with no per-maze Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

BACKENDS = ("auto", "numpy", "torch")


class BatchEnv(Protocol):
    """What the trainer needs from a batch of mazes (all tensors on the trainer's device)."""

    num_envs: int
    obs_dim: int

    def reset(self, seed: int) -> torch.Tensor:
        """Start a new episode in every maze; returns obs ``(B, D)`` float32."""

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``(B,)`` int64 -> ``(obs (B, D) float32, reward (B,) float32 or float64)``."""


@runtime_checkable
class GroupedBatchEnv(BatchEnv, Protocol):
    """A :class:`BatchEnv` whose mazes can be split into groups seeded separately, and whose
    current observations can be computed on the device: what a population of runs plays on one
    device (``agents.population``)."""

    def reset(self, seed: int | Sequence[int]) -> torch.Tensor:
        """``seed`` as for :class:`BatchEnv`, or ``G`` seeds: ``G`` groups of ``B / G``
        consecutive mazes, group ``k`` playing what ``B / G`` mazes reset with ``seed[k]``
        play."""

    def observation(self) -> torch.Tensor:
        """The current observations ``(B, D)``, computed again from the state."""


class NumpyBatchEnv:
    """``envs.WarpMazeVectorEnv`` seen through torch tensors (CPU).

    Observations and rewards are shared with the env's arrays, not copied: the env builds new
    arrays every step and never writes to them again (autograd may keep an observation for the
    backward pass; the Warp-RNN's tape copies it into its own buffer). Actions go in without a
    copy.
    """

    def __init__(self, num_envs: int, size: int, episode_length: int) -> None:
        from envs.vector_env import WarpMazeVectorEnv

        self.venv = WarpMazeVectorEnv(num_envs, size=size, episode_length=episode_length)
        self.num_envs = num_envs
        self.obs_dim = int(self.venv.single_observation_space.shape[0])

    def reset(self, seed: int) -> torch.Tensor:
        obs, _ = self.venv.reset(seed=seed)
        return torch.from_numpy(obs)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs, reward, _, _, _ = self.venv.step(actions.numpy())
        return torch.from_numpy(obs), torch.from_numpy(reward)


class TorchBatchEnv:
    """``envs.TorchMazeBatch``: the maze dynamics as torch ops on ``device``."""

    def __init__(self, num_envs: int, size: int, episode_length: int,
                 device: torch.device | str = "cpu") -> None:
        from envs.torch_maze import TorchMazeBatch

        # Actions come from argmax, always valid: skip the check (a host sync per step).
        self.batch = TorchMazeBatch(num_envs, size=size, episode_length=episode_length,
                                    device=device, validate_actions=False)
        self.num_envs = num_envs
        self.obs_dim = int(self.batch.obs_dim)

    def reset(self, seed: int | Sequence[int]) -> torch.Tensor:
        return self.batch.reset(seed)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs, reward, _ = self.batch.step(actions)
        return obs, reward.float()

    def observation(self) -> torch.Tensor:
        """The current observations ``(B, D)``, computed from the state on the device."""
        return self.batch.observation()


def make_batch_env(num_envs: int, size: int, episode_length: int,
                   device: torch.device | str = "cpu", backend: str = "auto") -> BatchEnv:
    """``num_envs`` mazes of side ``size`` and ``episode_length`` steps on ``device``.

    Args:
        backend: ``auto`` (numpy on CPU, torch elsewhere), ``numpy`` (CPU only) or ``torch``.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        backend = "numpy" if device.type == "cpu" else "torch"
    if backend == "numpy":
        if device.type != "cpu":
            raise ValueError(f"the numpy backend runs on the CPU; got device {device}")
        return NumpyBatchEnv(num_envs, size, episode_length)
    return TorchBatchEnv(num_envs, size, episode_length, device)


__all__ = ["BACKENDS", "BatchEnv", "GroupedBatchEnv", "NumpyBatchEnv", "TorchBatchEnv",
           "make_batch_env"]
