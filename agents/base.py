"""The interface every maze agent implements, and Stable-Baselines3-style ``predict``.

An agent is a recurrent actor-critic: at every time step it maps a batch of observations and
its recurrent state to action logits, a value estimate and the next state. Its parameters are
split, through :func:`warp_rl.partition`, into *fast* (task-adaptable) weights and *warp*
(slow, meta-learned) weights. Plain baselines have no warp weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

RecurrentState = tuple[torch.Tensor, ...]
"""Recurrent state: a tuple of tensors whose first dimension is the batch."""


class Unroller(ABC):
    """Runs an agent through one training episode, step by step, and returns the whole
    episode's outputs in the autograd graph.

    The trainer calls :meth:`step` once per time step (the returned logits are detached, for
    sampling the action) and :meth:`outputs` once at the end; the loss is then differentiated
    through ``outputs()`` to the agent's parameters.
    """

    @abstractmethod
    def step(self, obs: torch.Tensor) -> torch.Tensor:
        """Advance one step: obs ``(B, obs_dim)`` -> detached logits ``(B, num_actions)``."""

    @abstractmethod
    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (T, B, num_actions), values (T, B))`` of all steps so far, differentiable
        with respect to the agent's parameters."""


class AutogradUnroller(Unroller):
    """The plain unroller: :meth:`RecurrentAgent.forward` per step with autograd recording."""

    def __init__(self, agent: RecurrentAgent, batch_size: int,
                 device: torch.device | str | None = None) -> None:
        self.agent = agent
        self.dtype = next(agent.parameters()).dtype
        self.state = agent.initial_state(batch_size, device)
        self.logits: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def step(self, obs: torch.Tensor) -> torch.Tensor:
        logits, value, self.state = self.agent(obs.to(self.dtype), self.state)
        self.logits.append(logits)
        self.values.append(value)
        return logits.detach()

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.logits), torch.stack(self.values)


class RecurrentAgent(nn.Module, ABC):
    """Base class of the maze agents.

    Args:
        obs_dim: length of one observation vector (17 for the paper's maze).
        num_actions: number of discrete actions (4).
        hidden_size: width of the recurrent layer (100 in the paper).
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.hidden_size = hidden_size

    @abstractmethod
    def initial_state(self, batch_size: int,
                      device: torch.device | str | None = None) -> RecurrentState:
        """The state at the start of an episode: tensors of shape ``(batch_size, ...)``."""

    @abstractmethod
    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One time step.

        Args:
            obs: float tensor ``(B, obs_dim)``.
            state: the previous recurrent state (batch first).

        Returns:
            ``(logits, value, next_state)``: logits ``(B, num_actions)`` (unnormalised
            log-probabilities), value ``(B,)``, and the next state.
        """

    def warp_modules(self) -> list[nn.Module]:
        """Modules holding slow, meta-learned warp weights (none for plain baselines)."""
        return []

    def adapt_modules(self) -> list[nn.Module]:
        """Modules holding fast, task-adaptable weights (by default: every child module
        that is not a warp module)."""
        warp = {id(m) for m in self.warp_modules()}
        return [m for m in self.children() if id(m) not in warp]

    def unroller(self, batch_size: int, length: int,
                 device: torch.device | str | None = None) -> Unroller:
        """An :class:`Unroller` that runs one training episode of ``length`` steps from
        :meth:`initial_state`. The default steps :meth:`forward` with autograd on; an agent may
        return a faster one (e.g. a fused forward/backward through time), which must give the
        same outputs and gradients."""
        return AutogradUnroller(self, batch_size, device)

    @classmethod
    def population_unroller(cls, agents: Sequence[RecurrentAgent], batch_size: int, length: int,
                            device: torch.device | str | None = None) -> Unroller:
        """An :class:`Unroller` that plays a *population*, ``S`` agents of this class (one per
        seed), side by side: :meth:`Unroller.step` takes obs ``(S, B, obs_dim)`` and returns
        logits ``(S, B, num_actions)``, :meth:`Unroller.outputs` gives ``(T, S, B, ...)``, and
        each agent's own parameters receive its own gradient. Each member's outputs and
        gradients must equal what its own :meth:`unroller` gives.

        Raises:
            NotImplementedError: this agent class cannot train as a population (the default).
        """
        raise NotImplementedError(f"{cls.__name__} cannot be trained as a population (it "
                                  "defines no population_unroller)")

    # ----------------------------------------------------------------------------------------
    # Stable-Baselines3 convention
    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        observation: np.ndarray,
        state: RecurrentState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, RecurrentState]:
        """Choose actions in Stable-Baselines3's convention (usable by ``evaluate_policy``).

        Args:
            observation: ``(obs_dim,)`` or ``(n_envs, obs_dim)``.
            state: the state returned by the previous call, or ``None`` at the start.
            episode_start: bool ``(n_envs,)``; where True the state is reset to
                :meth:`initial_state` before acting.
            deterministic: take the most likely action instead of sampling.

        Returns:
            ``(actions, next_state)`` with actions an int64 array ``(n_envs,)`` (or a scalar
            array for a single unbatched observation).
        """
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        if single:
            obs = obs[None]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"observation must have shape ({self.obs_dim},) or (n_envs, {self.obs_dim}); "
                f"got {np.asarray(observation).shape}"
            )
        device = next(self.parameters()).device
        n = obs.shape[0]
        fresh = self.initial_state(n, device)
        if state is None:
            state = fresh
        if episode_start is not None:
            start = torch.as_tensor(np.asarray(episode_start, dtype=bool).reshape(n), device=device)
            state = tuple(
                torch.where(start.view(-1, *([1] * (s.dim() - 1))), f, s)
                for s, f in zip(state, fresh, strict=True)
            )
        logits, _, next_state = self(torch.as_tensor(obs, device=device), state)
        if deterministic:
            actions = logits.argmax(dim=-1)
        else:
            actions = torch.distributions.Categorical(logits=logits).sample()
        out = actions.cpu().numpy()
        return (out[0] if single else out), next_state


def check_population(agents: Sequence[RecurrentAgent]) -> None:
    """A population is one or more agents of one class, size, dtype and device."""
    if not agents:
        raise ValueError("a population needs at least one agent")
    first = agents[0]
    for other in agents[1:]:
        if (type(other) is not type(first) or other.hidden_size != first.hidden_size
                or other.obs_dim != first.obs_dim or other.num_actions != first.num_actions
                or next(other.parameters()).dtype != next(first.parameters()).dtype
                or next(other.parameters()).device != next(first.parameters()).device):
            raise ValueError("a population's agents must share class, sizes, dtype and device; "
                             f"got {type(first).__name__} and {type(other).__name__}")
