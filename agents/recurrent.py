"""Plain recurrent actor-critic baselines: ``rnn`` (tanh RNN) and ``lstm``.

These are the "learning to reinforcement learn" agents (Wang et al. 2016; Duan et al. 2016):
a recurrent core over the observation (which already carries the previous reward and action),
a linear policy head and a linear value head. Every weight is learned together by the
trainer's single optimiser; there are no warp modules. The recurrent state is reset to zeros at
the start of every episode, so whatever the agent learns about the current maze lives in its
hidden activity only.
"""

from __future__ import annotations

import torch
from torch import nn

from agents.base import RecurrentAgent, RecurrentState


def _check_sizes(obs_dim: int, num_actions: int, hidden_size: int) -> None:
    for name, value in (("obs_dim", obs_dim), ("num_actions", num_actions),
                        ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")


def _check_obs(agent: RecurrentAgent, obs: torch.Tensor) -> None:
    if obs.dim() != 2 or obs.shape[1] != agent.obs_dim:
        raise ValueError(
            f"obs must have shape (B, {agent.obs_dim}); got {tuple(obs.shape)}"
        )


class RNNAgent(RecurrentAgent):
    """Elman RNN actor-critic: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    Args:
        obs_dim: observation length (17 for the maze).
        num_actions: number of discrete actions (4).
        hidden_size: recurrent width (100 in the paper).

    State: ``(h,)`` with ``h`` of shape ``(B, hidden_size)``.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100) -> None:
        _check_sizes(obs_dim, num_actions, hidden_size)
        super().__init__(obs_dim, num_actions, hidden_size)
        self.cell = nn.RNNCell(obs_dim, hidden_size, nonlinearity="tanh")
        self.policy = nn.Linear(hidden_size, num_actions)
        self.value = nn.Linear(hidden_size, 1)

    def initial_state(self, batch_size: int,
                      device: torch.device | str | None = None) -> RecurrentState:
        """Zeros ``(batch_size, hidden_size)``."""
        return (torch.zeros(batch_size, self.hidden_size, device=device),)

    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: obs ``(B, obs_dim)`` -> logits ``(B, A)``, value ``(B,)``, ``(h,)``."""
        _check_obs(self, obs)
        (h,) = state
        h = self.cell(obs, h)
        return self.policy(h), self.value(h).squeeze(-1), (h,)


class LSTMAgent(RecurrentAgent):
    """LSTM actor-critic (``nn.LSTMCell``); the heads read the LSTM output ``h``.

    Args:
        obs_dim: observation length (17 for the maze).
        num_actions: number of discrete actions (4).
        hidden_size: LSTM width (100 in the paper).

    State: ``(h, c)``, each of shape ``(B, hidden_size)``.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100) -> None:
        _check_sizes(obs_dim, num_actions, hidden_size)
        super().__init__(obs_dim, num_actions, hidden_size)
        self.cell = nn.LSTMCell(obs_dim, hidden_size)
        self.policy = nn.Linear(hidden_size, num_actions)
        self.value = nn.Linear(hidden_size, 1)

    def initial_state(self, batch_size: int,
                      device: torch.device | str | None = None) -> RecurrentState:
        """``(h, c)``: zeros ``(batch_size, hidden_size)`` each."""
        zeros = torch.zeros(batch_size, self.hidden_size, device=device)
        return (zeros, zeros.clone())

    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: obs ``(B, obs_dim)`` -> logits ``(B, A)``, value ``(B,)``, ``(h, c)``."""
        _check_obs(self, obs)
        h, c = self.cell(obs, state)
        return self.policy(h), self.value(h).squeeze(-1), (h, c)


__all__ = ["LSTMAgent", "RNNAgent"]
