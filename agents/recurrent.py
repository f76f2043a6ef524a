"""Plain recurrent actor-critic baselines: ``rnn`` (tanh RNN) and ``lstm``.

These are the "learning to reinforcement learn" agents (Wang et al. 2016; Duan et al. 2016):
a recurrent core over the observation (which already carries the previous reward and action),
a linear policy head and a linear value head. Every weight is learned together by the
trainer's single optimiser; there are no warp modules. The recurrent state is reset to zeros at
the start of every episode, so whatever the agent learns about the current maze lives in its
hidden activity only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from agents.base import RecurrentAgent, RecurrentState, Unroller, check_population


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
        weight = self.policy.weight
        return (torch.zeros(batch_size, self.hidden_size, dtype=weight.dtype,
                            device=weight.device if device is None else device),)

    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: obs ``(B, obs_dim)`` -> logits ``(B, A)``, value ``(B,)``, ``(h,)``."""
        _check_obs(self, obs)
        (h,) = state
        h = self.cell(obs, h)
        return self.policy(h), self.value(h).squeeze(-1), (h,)

    @classmethod
    def population_unroller(cls, agents: Sequence[RNNAgent], batch_size: int, length: int,
                            device: torch.device | str | None = None) -> Unroller:
        """:class:`StackedCellUnroller` over ``agents`` (a population)."""
        return StackedCellUnroller(agents, batch_size, device)


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
        weight = self.policy.weight
        zeros = torch.zeros(batch_size, self.hidden_size, dtype=weight.dtype,
                            device=weight.device if device is None else device)
        return (zeros, zeros.clone())

    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: obs ``(B, obs_dim)`` -> logits ``(B, A)``, value ``(B,)``, ``(h, c)``."""
        _check_obs(self, obs)
        h, c = self.cell(obs, state)
        return self.policy(h), self.value(h).squeeze(-1), (h, c)

    @classmethod
    def population_unroller(cls, agents: Sequence[LSTMAgent], batch_size: int, length: int,
                            device: torch.device | str | None = None) -> Unroller:
        """:class:`StackedCellUnroller` over ``agents`` (a population)."""
        return StackedCellUnroller(agents, batch_size, device)


class StackedCellUnroller(Unroller):
    """A population of ``S`` :class:`RNNAgent` or :class:`LSTMAgent` (one per seed), stepped
    together with autograd on their stacked parameters.

    Each agent's parameters are stacked along a leading dimension (``torch.stack``, in the
    autograd graph, so each agent receives its own gradient), and a step is the cell's own
    arithmetic, as ``nn.RNNCell`` / ``nn.LSTMCell`` compute it on CPU (``W_hh h + b_hh`` plus
    ``W_ih x + b_ih``; LSTM gates in the order i, f, g, o), with batched matrix products over
    the members: one small operation per step for all ``S`` runs instead of ``S``.

    Shapes: :meth:`step` takes obs ``(S, B, D)`` and returns logits ``(S, B, A)``;
    :meth:`outputs` gives logits ``(T, S, B, A)`` and values ``(T, S, B)``.
    """

    def __init__(self, agents: Sequence[RNNAgent | LSTMAgent], batch_size: int,
                 device: torch.device | str | None = None) -> None:
        check_population(agents)
        first = agents[0]
        self.lstm = isinstance(first.cell, nn.LSTMCell)

        def stack(get) -> torch.Tensor:
            return torch.stack([get(a) for a in agents])

        self.w_ih_t = stack(lambda a: a.cell.weight_ih).mT  # (S, D, G)
        self.w_hh_t = stack(lambda a: a.cell.weight_hh).mT  # (S, H, G)
        self.b_ih = stack(lambda a: a.cell.bias_ih).unsqueeze(1)  # (S, 1, G)
        self.b_hh = stack(lambda a: a.cell.bias_hh).unsqueeze(1)
        self.w_policy_t = stack(lambda a: a.policy.weight).mT  # (S, H, A)
        self.b_policy = stack(lambda a: a.policy.bias).unsqueeze(1)
        self.w_value_t = stack(lambda a: a.value.weight).mT  # (S, H, 1)
        self.b_value = stack(lambda a: a.value.bias).unsqueeze(1)
        weight = first.policy.weight
        self.dtype = weight.dtype
        self.h = torch.zeros(len(agents), batch_size, first.hidden_size, dtype=weight.dtype,
                             device=weight.device if device is None else device)
        self.c = self.h.clone()
        self.logits: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def step(self, obs: torch.Tensor) -> torch.Tensor:
        gates = (torch.baddbmm(self.b_hh, self.h, self.w_hh_t)
                 + torch.baddbmm(self.b_ih, obs.to(self.dtype), self.w_ih_t))
        if self.lstm:
            i, f, g, o = gates.chunk(4, dim=-1)
            self.c = f.sigmoid() * self.c + i.sigmoid() * g.tanh()
            self.h = o.sigmoid() * self.c.tanh()
        else:
            self.h = gates.tanh()
        logits = torch.baddbmm(self.b_policy, self.h, self.w_policy_t)
        self.logits.append(logits)
        self.values.append(torch.baddbmm(self.b_value, self.h, self.w_value_t).squeeze(-1))
        return logits.detach()

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.logits), torch.stack(self.values)


__all__ = ["LSTMAgent", "RNNAgent", "StackedCellUnroller"]
