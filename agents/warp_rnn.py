"""The Warp-RNN maze agent of WarpGrad (Flennerhag et al., ICLR 2020), original defects fixed.

A one-layer recurrent actor-critic whose recurrent cell is *gated* at every time step by a
second, slow network:

* **Warp weights** (slow, meta-learned, stepped every ``meta_interval`` episodes):

  - ``gate_lstm``: an ``LSTMCell`` over ``[x_t, h_{t-1}]`` (``obs_dim + hidden -> hidden``);
  - ``gate_proj``: ``tanh(Linear(hidden -> obs_dim + 4 * hidden, no bias))`` of the gating LSTM's
    output, cut into five multiplicative gates with *cumulative* offsets::

        g_x  = g[:, 0          : D        ]   # (B, D)  input gate
        g_h  = g[:, D          : D +   H  ]   # (B, H)  recurrent-state gate
        g_i  = g[:, D +   H    : D + 2 H  ]   # (B, H)  input pre-activation gate
        g_hh = g[:, D + 2 H    : D + 3 H  ]   # (B, H)  recurrent pre-activation gate
        g_b  = g[:, D + 3 H    : D + 4 H  ]   # (B, H)  bias gate

    (the original split with non-cumulative offsets, so three gates were the same slice and
    about 30,000 projection weights never received a gradient).

* **Fast weights** (adapted by the trainer's fast optimiser after every episode):

  - ``cell``: the gated RNN cell
    ``h_t = tanh((W_ih (x_t * g_x)) * g_i + (W_hh (h_{t-1} * g_h)) * g_hh + b * g_b)``;
  - ``policy`` (``hidden -> num_actions``) and ``value`` (``hidden -> 1``) linear heads.

The split is declared once, by :meth:`WarpRNNAgent.warp_modules`, and turned into parameter
lists by :func:`warp_rl.partition` (see :func:`agents.trainer.make_optimizers`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from agents.base import RecurrentAgent, State

NUM_GATES_H = 4  # g_h, g_i, g_hh, g_b: the four gates of width ``hidden_size``


def _check_size(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


class GatedRNNCell(nn.Module):
    """The fast recurrent cell, gated by externally supplied gates.

    ``h_t = tanh((W_ih (x * g_x)) * g_i + (W_hh (h * g_h)) * g_hh + b * g_b)``

    Args:
        input_size: ``D``, the observation length.
        hidden_size: ``H``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.w_ih = nn.Linear(input_size, hidden_size, bias=False)
        self.w_hh = nn.Linear(hidden_size, hidden_size, bias=False)
        self.bias = nn.Parameter(torch.empty(hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # nn.RNNCell's initialisation
        for p in (self.w_ih.weight, self.w_hh.weight, self.bias):
            nn.init.uniform_(p, -bound, bound)

    def forward(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        g_x: torch.Tensor,
        g_h: torch.Tensor,
        g_i: torch.Tensor,
        g_hh: torch.Tensor,
        g_b: torch.Tensor,
    ) -> torch.Tensor:
        """``x (B, D)``, ``h (B, H)``, gates ``g_x (B, D)`` and ``g_h, g_i, g_hh, g_b (B, H)``
        -> the next hidden state ``(B, H)``."""
        pre = self.w_ih(x * g_x) * g_i + self.w_hh(h * g_h) * g_hh + self.bias * g_b
        return torch.tanh(pre)


class WarpRNNAgent(RecurrentAgent):
    """The Warp-RNN actor-critic (see the module docstring for the equations).

    Args:
        obs_dim: observation length ``D`` (17 for the paper's maze).
        num_actions: number of discrete actions ``A`` (4).
        hidden_size: ``H``, width of both the fast cell and the gating LSTM (100 in the paper).

    State: ``(h, lstm_h, lstm_c)``, each ``(B, H)``: the fast cell's hidden state and the
    gating LSTM's hidden and cell states. All zeros at the start of an episode.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100) -> None:
        for name, value in (("obs_dim", obs_dim), ("num_actions", num_actions),
                            ("hidden_size", hidden_size)):
            _check_size(name, value)
        super().__init__(obs_dim, num_actions, hidden_size)
        # Fast weights.
        self.cell = GatedRNNCell(obs_dim, hidden_size)
        self.policy = nn.Linear(hidden_size, num_actions)
        self.value = nn.Linear(hidden_size, 1)
        # Warp weights.
        self.gate_lstm = nn.LSTMCell(obs_dim + hidden_size, hidden_size)
        self.gate_proj = nn.Linear(hidden_size, obs_dim + NUM_GATES_H * hidden_size, bias=False)
        # Cumulative split points of the projection output: [g_x | g_h | g_i | g_hh | g_b].
        self.gate_sizes: tuple[int, ...] = (obs_dim,) + (hidden_size,) * NUM_GATES_H

    def warp_modules(self) -> list[nn.Module]:
        """The gating LSTM and its projection: the slow, meta-learned weights."""
        return [self.gate_lstm, self.gate_proj]

    def adapt_modules(self) -> list[nn.Module]:
        """The gated RNN cell and the policy and value heads: the fast weights."""
        return [self.cell, self.policy, self.value]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zeros: ``(h, lstm_h, lstm_c)``, each ``(batch_size, hidden_size)``."""
        if device is None:
            device = self.policy.weight.device
        zeros = torch.zeros(3, batch_size, self.hidden_size, device=device)
        return (zeros[0], zeros[1], zeros[2])

    def gates(
        self, obs: torch.Tensor, state: State
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
        """The five gates for this step and the gating LSTM's next ``(lstm_h, lstm_c)``.

        Returns:
            ``((g_x, g_h, g_i, g_hh, g_b), (lstm_h, lstm_c))`` with ``g_x (B, D)``, the other
            gates ``(B, H)``, all in ``(-1, 1)``.
        """
        h, lstm_h, lstm_c = state
        lstm_h, lstm_c = self.gate_lstm(torch.cat((obs, h), dim=1), (lstm_h, lstm_c))
        g = torch.tanh(self.gate_proj(lstm_h))
        return torch.split(g, self.gate_sizes, dim=1), (lstm_h, lstm_c)

    def forward(
        self, obs: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One step: obs ``(B, D)`` -> logits ``(B, A)``, value ``(B,)``, next state."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}); got {tuple(obs.shape)}")
        (g_x, g_h, g_i, g_hh, g_b), (lstm_h, lstm_c) = self.gates(obs, state)
        h = self.cell(obs, state[0], g_x, g_h, g_i, g_hh, g_b)
        return self.policy(h), self.value(h).squeeze(-1), (h, lstm_h, lstm_c)
