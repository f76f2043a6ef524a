"""Backpropamine: a recurrent actor-critic with neuromodulated Hebbian plasticity.

Rebuilt from the description in Miconi, Rawal, Clune, Stanley, "Backpropamine: training
self-modifying neural networks with differentiable neuromodulated plasticity", ICLR 2019.

Each recurrent connection ``i -> j`` has a fixed weight ``w_ij`` and a learned plasticity
coefficient ``alpha_ij``; its effective weight at time ``t`` is ``w_ij + alpha_ij Hebb_ij(t)``,
where the Hebbian trace ``Hebb`` belongs to the episode (it is part of the recurrent state,
starts at zero in every episode and is never a parameter)::

    h_t    = tanh(W_in x_t + b + h_{t-1} (w + alpha * Hebb_t))       # row-vector convention
    M_t    = tanh(m . h_t + m_0)                                     # the neuromodulator
    Hebb_{t+1} = clip(Hebb_t + M_t * outer(h_{t-1}, h_t), -c, c)     # "simple" modulation

``M_t`` is a scalar per maze, computed by the network itself, that sets the sign and rate of
plasticity at every step; ``clip`` bounds the trace to ``[-1, 1]`` (``c = 1``) as in the paper.
This is the paper's *simple* neuromodulation, the default here.

With ``modulation="retroactive"`` the network instead keeps an eligibility trace ``E`` (a
running average of recent Hebbian products) and the neuromodulator gates *that* into the
trace, so that a reward can reinforce co-activations from several steps back::

    Hebb_{t+1} = clip(Hebb_t + M_t * E_t, -c, c)
    E_{t+1}    = (1 - eta) E_t + eta * outer(h_{t-1}, h_t),     eta = sigmoid(learned scalar)

All learned weights (``W_in``, ``b``, ``w``, ``alpha``, the modulator readout, ``eta``, the
heads) are fast weights trained by the trainer's single optimiser; there are no warp modules.
Traces are batched tensors ``(B, H, H)``: one per maze, no Python loop over the batch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from agents.base import RecurrentAgent, RecurrentState
from agents.recurrent import _check_obs, _check_sizes

Modulation = Literal["simple", "retroactive"]
MODULATIONS: tuple[str, ...] = ("simple", "retroactive")


class PlasticRNNCell(nn.Module):
    """The plastic recurrent layer (see the module docstring for the equations).

    Args:
        input_size: length of ``x_t``.
        hidden_size: ``H``, the number of recurrent units.
        modulation: ``"simple"`` or ``"retroactive"``.
        clip: the trace is clipped to ``[-clip, clip]`` (1.0 in the paper).
        eta_init: initial eligibility-trace rate (retroactive only), in ``(0, 1)``.

    Parameters: ``input.weight (H, input_size)``, ``input.bias (H,)``, ``w (H, H)`` and
    ``alpha (H, H)`` indexed ``[pre, post]``, ``modulator.weight (1, H)``,
    ``modulator.bias (1,)`` and, if retroactive, ``eta_logit ()``.
    """

    def __init__(self, input_size: int, hidden_size: int, modulation: Modulation = "simple",
                 clip: float = 1.0, eta_init: float = 0.1) -> None:
        super().__init__()
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}; got {modulation!r}")
        if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip must be a positive finite number; got {clip!r}")
        if not 0.0 < eta_init < 1.0:
            raise ValueError(f"eta_init must lie in (0, 1); got {eta_init!r}")
        self.hidden_size = hidden_size
        self.modulation = modulation
        self.clip = float(clip)
        self.input = nn.Linear(input_size, hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)  # nn.RNNCell's initialisation for w
        self.w = nn.Parameter(torch.empty(hidden_size, hidden_size).uniform_(-bound, bound))
        # Small positive plasticity coefficients, as in the paper's code (0.01 * U(0, 1)).
        self.alpha = nn.Parameter(0.01 * torch.rand(hidden_size, hidden_size))
        self.modulator = nn.Linear(hidden_size, 1)
        if modulation == "retroactive":
            self.eta_logit = nn.Parameter(torch.tensor(math.log(eta_init / (1.0 - eta_init))))

    @property
    def retroactive(self) -> bool:
        return self.modulation == "retroactive"

    def initial_state(self, batch_size: int,
                      device: torch.device | str | None = None) -> RecurrentState:
        """``(h, hebb)`` or ``(h, hebb, eligibility)``: zeros ``(B, H)``, ``(B, H, H)``..."""
        H = self.hidden_size
        state = [torch.zeros(batch_size, H, device=device),
                 torch.zeros(batch_size, H, H, device=device)]
        if self.retroactive:
            state.append(torch.zeros(batch_size, H, H, device=device))
        return tuple(state)

    def forward(self, x: torch.Tensor,
                state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """One step: ``x (B, input_size)`` -> ``h_t (B, H)`` and the next state."""
        expected = 3 if self.retroactive else 2
        if len(state) != expected:
            raise ValueError(
                f"{self.modulation} Backpropamine state has {expected} tensors; got {len(state)}"
            )
        h_prev, hebb = state[0], state[1]
        # h_{t-1} (w + alpha * Hebb): fixed part as a matmul, plastic part batched (B, 1, H) @ ...
        plastic = torch.bmm(h_prev.unsqueeze(1), self.alpha * hebb).squeeze(1)
        h = torch.tanh(self.input(x) + h_prev @ self.w + plastic)
        m = torch.tanh(self.modulator(h)).unsqueeze(-1)            # (B, 1, 1)
        # Outer products h_{t-1} h_t^T as (B, H, 1) @ (B, 1, H) products: autograd then keeps
        # only the (B, H) factors for the backward pass, not another (B, H, H) tensor.
        pre, post = h_prev.unsqueeze(2), h.unsqueeze(1)
        if self.retroactive:
            elig = state[2]
            hebb = torch.clamp(hebb + m * elig, -self.clip, self.clip)
            eta = torch.sigmoid(self.eta_logit)
            elig = (1.0 - eta) * elig + torch.bmm(eta * pre, post)
            return h, (h, hebb, elig)
        hebb = torch.clamp(torch.baddbmm(hebb, m * pre, post), -self.clip, self.clip)
        return h, (h, hebb)


class BackpropamineAgent(RecurrentAgent):
    """Neuromodulated plastic RNN actor-critic (Miconi et al., ICLR 2019).

    Args:
        obs_dim: observation length (17 for the maze).
        num_actions: number of discrete actions (4).
        hidden_size: ``H``, recurrent width (100 here, as for the other agents).
        modulation: ``"simple"`` (default; ``Hebb += M * outer(h_{t-1}, h_t)``) or
            ``"retroactive"`` (the neuromodulator gates an eligibility trace).
        clip: bound of the Hebbian trace (1.0, the paper's ``[-1, 1]``).
        eta_init: initial eligibility rate for the retroactive variant.

    State: ``(h (B, H), hebb (B, H, H))``, plus ``eligibility (B, H, H)`` when retroactive;
    all zeros at the start of each episode. Memory per step is ``O(B H^2)``: at ``B = 30``,
    ``H = 100`` one trace is 1.2 MB of float32.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100,
                 modulation: Modulation = "simple", clip: float = 1.0,
                 eta_init: float = 0.1) -> None:
        _check_sizes(obs_dim, num_actions, hidden_size)
        super().__init__(obs_dim, num_actions, hidden_size)
        self.cell = PlasticRNNCell(obs_dim, hidden_size, modulation, clip, eta_init)
        self.policy = nn.Linear(hidden_size, num_actions)
        self.value = nn.Linear(hidden_size, 1)

    @property
    def modulation(self) -> str:
        return self.cell.modulation

    def initial_state(self, batch_size: int,
                      device: torch.device | str | None = None) -> RecurrentState:
        """Zero activity and zero traces (see the class docstring for shapes)."""
        return self.cell.initial_state(batch_size, device)

    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: obs ``(B, obs_dim)`` -> logits ``(B, A)``, value ``(B,)``, next state."""
        _check_obs(self, obs)
        h, state = self.cell(obs, state)
        return self.policy(h), self.value(h).squeeze(-1), state


__all__ = ["MODULATIONS", "BackpropamineAgent", "PlasticRNNCell"]
