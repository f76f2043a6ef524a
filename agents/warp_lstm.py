"""``warp_lstm``: a Warp-RNN whose fast cell is an LSTM with its own memory.

In the published Warp-RNN (:mod:`agents.warp_rnn`) the only part with memory is the gating
LSTM, a *warp* module stepped on the slow time-scale; the fast cell is a plain tanh RNN. Here
the fast cell is an LSTM cell, so what the agent learns within a maze can live in fast weights
with their own cell state, while a slow gating LSTM (the warp) still modulates every one of its
products at every time step::

    (l_t, c^l_t) = LSTMCell_warp([x_t, h_{t-1}], (l_{t-1}, c^l_{t-1}))          # warp
    g            = gate_fn(W_proj l_t)     # (B, D + H + 12 H), cut into
                   g_x (D) | g_h (H) | g_i (4H) | g_hh (4H) | g_b (4H)
    pre          = (W_ih (x_t * g_x)) * g_i + (W_hh (h_{t-1} * g_h)) * g_hh + b * g_b  # fast
    i, f, z, o   = split(pre, 4)           # nn.LSTMCell's gate order
    c_t          = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(z)
    h_t          = sigmoid(o) * tanh(c_t)
    logits = W_pi h_t + b_pi;  value = w_v h_t + b_v                                 # fast

``gate_fn`` is ``1 + tanh(.)`` with ``W_proj`` initialised to zero by default (identity-centred
gates: the agent starts as a plain LSTM A2C that the warp learns to modulate) or ``tanh(.)``
(the published gates). ``W_ih`` and ``W_hh`` are initialised orthogonally per ``H x H`` block,
the bias to zero, unless ``fast_init="uniform"``.

Warp weights: the gating LSTM and ``W_proj``. Fast weights: ``W_ih``, ``W_hh``, ``b`` and the
two heads. Training runs through autograd (:class:`agents.base.AutogradUnroller`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from agents.base import RecurrentState
from agents.warp_rnn import FAST_INITS, GATE_FNS, WarpGatedAgent


class GatedLSTMCell(nn.Module):
    """The fast LSTM cell, gated by externally supplied gates (module docstring).

    Args:
        input_size: ``D``.
        hidden_size: ``H``.
        init: ``"orthogonal"`` (per ``H x H`` block, zero bias) or ``"uniform"``
            (``U(-1/sqrt(H), 1/sqrt(H))``, as ``nn.LSTMCell``).
    """

    def __init__(self, input_size: int, hidden_size: int, init: str = "orthogonal") -> None:
        super().__init__()
        if init not in FAST_INITS:
            raise ValueError(f"init must be one of {', '.join(FAST_INITS)}; got {init!r}")
        H = hidden_size
        self.w_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.w_hh = nn.Parameter(torch.empty(4 * H, H))
        self.bias = nn.Parameter(torch.empty(4 * H))
        with torch.no_grad():
            if init == "uniform":
                bound = 1.0 / math.sqrt(H)
                for p in (self.w_ih, self.w_hh, self.bias):
                    p.uniform_(-bound, bound)
            else:
                for w in (self.w_ih, self.w_hh):
                    for block in w.split(H, dim=0):
                        nn.init.orthogonal_(block)
                self.bias.zero_()

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                g_x: torch.Tensor, g_h: torch.Tensor, g_i: torch.Tensor, g_hh: torch.Tensor,
                g_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, D)``, ``h, c (B, H)``, gates ``g_x (B, D)``, ``g_h (B, H)``,
        ``g_i, g_hh, g_b (B, 4H)`` -> the next ``(h, c)``, each ``(B, H)``."""
        pre = (x * g_x) @ self.w_ih.T * g_i + (h * g_h) @ self.w_hh.T * g_hh + self.bias * g_b
        i, f, z, o = pre.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
        return torch.sigmoid(o) * torch.tanh(c), c


class WarpLSTMAgent(WarpGatedAgent):
    """A gated fast LSTM cell under a slow gating LSTM (module docstring).

    Args:
        obs_dim: observation length ``D`` (17 for the paper's maze).
        num_actions: number of discrete actions ``A`` (4).
        hidden_size: ``H``, width of the fast cell and of the gating LSTM (100 in the paper).
        gates: ``"identity"`` (default) or ``"tanh"``.
        fast_init: ``"orthogonal"`` (default) or ``"uniform"``.

    State: ``(h, c, lstm_h, lstm_c)``, each ``(B, H)``, zeros at the start of an episode.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100,
                 gates: str = "identity", fast_init: str = "orthogonal") -> None:
        for name, value in (("obs_dim", obs_dim), ("num_actions", num_actions),
                            ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if gates not in GATE_FNS:
            raise ValueError(f"gates must be one of {', '.join(GATE_FNS)}; got {gates!r}")
        super().__init__(obs_dim, num_actions, hidden_size)
        D, H = obs_dim, hidden_size
        self.gate_fn = gates
        # Fast weights.
        self.cell = GatedLSTMCell(D, H, init=fast_init)
        self.policy = nn.Linear(H, num_actions)
        self.value = nn.Linear(H, 1)
        # Warp weights.
        self.gate_lstm = nn.LSTMCell(D + H, H)
        self.gate_proj = nn.Linear(H, D + H + 12 * H, bias=False)
        self.gate_sizes: tuple[int, ...] = (D, H, 4 * H, 4 * H, 4 * H)
        if gates == "identity":
            nn.init.zeros_(self.gate_proj.weight)

    def initial_state(self, batch_size: int,
                      device: torch.device | str | None = None) -> RecurrentState:
        """Zeros ``(h, c, lstm_h, lstm_c)``, each ``(batch_size, hidden_size)``."""
        return self._zero_state(4, batch_size, device)

    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: obs ``(B, D)`` -> logits ``(B, A)``, value ``(B,)``, next state."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}); got {tuple(obs.shape)}")
        h, c, lstm_h, lstm_c = state
        gates, lstm_state = self.warp_gates(obs, h, (lstm_h, lstm_c))
        h, c = self.cell(obs, h, c, *gates)
        return self.policy(h), self.value(h).squeeze(-1), (h, c, *lstm_state)


__all__ = ["GatedLSTMCell", "WarpLSTMAgent"]
