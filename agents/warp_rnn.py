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

Training speed: :meth:`WarpRNNAgent.forward` is the readable definition (used for acting,
evaluation and as the reference in the tests). For training, :meth:`WarpRNNAgent.unroller`
returns a :class:`WarpRNNTape`, which runs the same equations without autograd, keeps the
activations of every step in preallocated buffers and back-propagates through time by hand
(:class:`_WarpRNNBackward`): the per-step work is only the recurrent part, and the weight
gradients are computed once per episode as a few large matrix products over all ``T * B``
(step, maze) pairs. Its outputs and gradients equal autograd's through :meth:`forward`
(``tests/test_agent_warp_rnn.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from agents.base import AutogradUnroller, RecurrentAgent, RecurrentState, Unroller, check_population

NUM_GATES_H = 4  # g_h, g_i, g_hh, g_b: the four gates of width ``hidden_size``
GATE_FNS = ("tanh", "identity")  # g = tanh(P l) (published) or g = 1 + tanh(P l), P = 0 at start
FAST_INITS = ("uniform", "orthogonal")


def _check_size(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


class GatedRNNCell(nn.Module):
    """The fast recurrent cell, gated by externally supplied gates.

    ``h_t = tanh((W_ih (x * g_x)) * g_i + (W_hh (h * g_h)) * g_hh + b * g_b)``

    Args:
        input_size: ``D``, the observation length.
        hidden_size: ``H``.
        init: ``"uniform"`` (``U(-1/sqrt(H), 1/sqrt(H))`` for every weight and the bias, as
            ``nn.RNNCell``; the default) or ``"orthogonal"`` (``W_ih`` and ``W_hh`` orthogonal,
            the bias zero, as the original code initialised them).
    """

    def __init__(self, input_size: int, hidden_size: int, init: str = "uniform") -> None:
        super().__init__()
        if init not in FAST_INITS:
            raise ValueError(f"init must be one of {', '.join(FAST_INITS)}; got {init!r}")
        self.w_ih = nn.Linear(input_size, hidden_size, bias=False)
        self.w_hh = nn.Linear(hidden_size, hidden_size, bias=False)
        self.bias = nn.Parameter(torch.empty(hidden_size))
        if init == "uniform":
            bound = 1.0 / math.sqrt(hidden_size)  # nn.RNNCell's initialisation
            for p in (self.w_ih.weight, self.w_hh.weight, self.bias):
                nn.init.uniform_(p, -bound, bound)
        else:  # the original code's: orthogonal weights, zero bias
            nn.init.orthogonal_(self.w_ih.weight)
            nn.init.orthogonal_(self.w_hh.weight)
            nn.init.zeros_(self.bias)

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


class WarpGatedAgent(RecurrentAgent):
    """What every Warp-RNN shares: a slow gating LSTM ``gate_lstm`` over ``[x_t, h_{t-1}]`` and
    its projection ``gate_proj`` (the warp weights), whose output, cut into ``gate_sizes``,
    gates a fast cell ``cell`` read by the ``policy`` and ``value`` heads (the fast weights).
    Subclasses build those modules and set ``gate_fn`` and ``gate_sizes``."""

    gate_lstm: nn.LSTMCell
    gate_proj: nn.Linear
    cell: nn.Module
    policy: nn.Linear
    value: nn.Linear
    gate_fn: str
    gate_sizes: tuple[int, ...]

    def warp_modules(self) -> list[nn.Module]:
        """The gating LSTM and its projection: the slow, meta-learned weights."""
        return [self.gate_lstm, self.gate_proj]

    def adapt_modules(self) -> list[nn.Module]:
        """The fast cell and the policy and value heads: the fast weights."""
        return [self.cell, self.policy, self.value]

    def _zero_state(self, parts: int, batch_size: int,
                    device: torch.device | str | None) -> RecurrentState:
        weight = self.policy.weight
        zeros = torch.zeros(parts, batch_size, self.hidden_size, dtype=weight.dtype,
                            device=weight.device if device is None else device)
        return tuple(zeros.unbind(0))

    def warp_gates(self, obs: torch.Tensor, h: torch.Tensor,
                   lstm_state: tuple[torch.Tensor, torch.Tensor]
                   ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
        """The gates for this step (``gate_fn`` of the projection, cut into ``gate_sizes``) and
        the gating LSTM's next ``(lstm_h, lstm_c)``, from obs ``(B, D)``, the fast cell's
        previous output ``h (B, H)`` and the gating LSTM's state."""
        lstm_h, lstm_c = self.gate_lstm(torch.cat((obs, h), dim=1), lstm_state)
        g = torch.tanh(self.gate_proj(lstm_h))
        if self.gate_fn == "identity":
            g = g + 1.0
        return torch.split(g, self.gate_sizes, dim=1), (lstm_h, lstm_c)


class WarpRNNAgent(WarpGatedAgent):
    """The Warp-RNN actor-critic (see the module docstring for the equations).

    Args:
        obs_dim: observation length ``D`` (17 for the paper's maze).
        num_actions: number of discrete actions ``A`` (4).
        hidden_size: ``H``, width of both the fast cell and the gating LSTM (100 in the paper).
        gates: ``"tanh"`` (the published gates, ``g = tanh(W_proj lstm_h)``, ``W_proj``
            initialised as ``nn.Linear``; they start near 0.03, so the fast path starts nearly
            silent) or ``"identity"`` (``g = 1 + tanh(W_proj lstm_h)`` with ``W_proj``
            initialised to zero: every gate starts at exactly 1, the network starts as the plain
            fast RNN, and the warp learns to modulate it; gates lie in ``(0, 2)``).
        fast_init: the fast cell's initialisation, ``"uniform"`` or ``"orthogonal"`` (see
            :class:`GatedRNNCell`).
        fused_unroll: train with :class:`WarpRNNTape` (True, the default) or with autograd
            through :meth:`forward` at every step (False; slower, the reference).

    The defaults are the published agent (``--agent warp``); the registered variants
    (``warp_identity``, ``warp_orthogonal``, ``warp_identity_orth``) change ``gates`` and
    ``fast_init`` only.

    State: ``(h, lstm_h, lstm_c)``, each ``(B, H)``: the fast cell's hidden state and the
    gating LSTM's hidden and cell states. All zeros at the start of an episode.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100,
                 gates: str = "tanh", fast_init: str = "uniform",
                 fused_unroll: bool = True) -> None:
        for name, value in (("obs_dim", obs_dim), ("num_actions", num_actions),
                            ("hidden_size", hidden_size)):
            _check_size(name, value)
        if gates not in GATE_FNS:
            raise ValueError(f"gates must be one of {', '.join(GATE_FNS)}; got {gates!r}")
        super().__init__(obs_dim, num_actions, hidden_size)
        self.gate_fn = gates
        # Fast weights.
        self.cell = GatedRNNCell(obs_dim, hidden_size, init=fast_init)
        self.policy = nn.Linear(hidden_size, num_actions)
        self.value = nn.Linear(hidden_size, 1)
        # Warp weights.
        self.gate_lstm = nn.LSTMCell(obs_dim + hidden_size, hidden_size)
        self.gate_proj = nn.Linear(hidden_size, obs_dim + NUM_GATES_H * hidden_size, bias=False)
        if gates == "identity":
            nn.init.zeros_(self.gate_proj.weight)
        # Cumulative split points of the projection output: [g_x | g_h | g_i | g_hh | g_b].
        self.gate_sizes: tuple[int, ...] = (obs_dim,) + (hidden_size,) * NUM_GATES_H
        self.fused_unroll = fused_unroll  # WarpRNNTape (True) or autograd through forward
        self._workspace: _TapeWorkspace | None = None  # the tape's buffers, reused

    def initial_state(self, batch_size: int,
                      device: torch.device | str | None = None) -> RecurrentState:
        """Zeros: ``(h, lstm_h, lstm_c)``, each ``(batch_size, hidden_size)``."""
        return self._zero_state(3, batch_size, device)

    def gates(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
        """The five gates for this step and the gating LSTM's next ``(lstm_h, lstm_c)``.

        Returns:
            ``((g_x, g_h, g_i, g_hh, g_b), (lstm_h, lstm_c))`` with ``g_x (B, D)``, the other
            gates ``(B, H)``, all in ``(-1, 1)`` (``(0, 2)`` for ``gates="identity"``).
        """
        return self.warp_gates(obs, state[0], (state[1], state[2]))

    def forward(
        self, obs: torch.Tensor, state: RecurrentState
    ) -> tuple[torch.Tensor, torch.Tensor, RecurrentState]:
        """One step: obs ``(B, D)`` -> logits ``(B, A)``, value ``(B,)``, next state."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}); got {tuple(obs.shape)}")
        (g_x, g_h, g_i, g_hh, g_b), (lstm_h, lstm_c) = self.gates(obs, state)
        h = self.cell(obs, state[0], g_x, g_h, g_i, g_hh, g_b)
        return self.policy(h), self.value(h).squeeze(-1), (h, lstm_h, lstm_c)

    def unroller(self, batch_size: int, length: int,
                 device: torch.device | str | None = None) -> Unroller:
        """:class:`WarpRNNTape` (or the plain autograd unroller if ``fused_unroll`` is False)."""
        if not self.fused_unroll:
            return AutogradUnroller(self, batch_size, device)
        return WarpRNNTape(self, batch_size, length, device)

    @classmethod
    def population_unroller(cls, agents: Sequence[WarpRNNAgent], batch_size: int, length: int,
                            device: torch.device | str | None = None) -> Unroller:
        """:class:`WarpRNNTape` over ``agents`` (a population; the fused tape whatever
        ``fused_unroll`` says)."""
        return WarpRNNTape(list(agents), batch_size, length, device)

    def tape_parameters(self) -> tuple[nn.Parameter, ...]:
        """The parameters in the order :class:`_WarpRNNBackward` returns their gradients."""
        lstm = self.gate_lstm
        return (self.cell.w_ih.weight, self.cell.w_hh.weight, self.cell.bias,
                self.policy.weight, self.policy.bias, self.value.weight, self.value.bias,
                lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh,
                self.gate_proj.weight)


class WarpIdentityAgent(WarpRNNAgent):
    """``warp_identity``: the published agent with identity-centred gates
    (``gates="identity"``), nothing else changed."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100) -> None:
        super().__init__(obs_dim, num_actions, hidden_size, gates="identity")


class WarpOrthogonalAgent(WarpRNNAgent):
    """``warp_orthogonal``: the published agent with the original code's orthogonal fast
    weights and zero bias (``fast_init="orthogonal"``), nothing else changed."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100) -> None:
        super().__init__(obs_dim, num_actions, hidden_size, fast_init="orthogonal")


class WarpIdentityOrthAgent(WarpRNNAgent):
    """``warp_identity_orth``: identity-centred gates and orthogonal fast weights together."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int = 100) -> None:
        super().__init__(obs_dim, num_actions, hidden_size, gates="identity",
                         fast_init="orthogonal")


class _TapeWorkspace:
    """The buffers of a :class:`WarpRNNTape` and their per-step views, kept by the (first) agent
    and reused from one episode to the next (allocating and first-touching tens of megabytes,
    and making thousands of views, every episode costs more than the small operations
    themselves). Every buffer is ``(T, S, B, ...)``: step, population member, maze.

    ``generation`` counts the tapes that used it: a tape refuses to run once a newer tape has
    taken the workspace over.
    """

    def __init__(self, T: int, S: int, B: int, D: int, H: int, A: int,
                 gate_sizes: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.key = (T, S, B, D, H, A, dtype, device)
        self.generation = 0

        def buf(*shape: int) -> torch.Tensor:
            return torch.zeros(T, S, B, *shape, device=device, dtype=dtype)

        # Forward activations. zz[t] = [x_t | h_{t-1} | lstm_h_{t-1}].
        self.zz = torch.zeros(T + 1, S, B, D + 2 * H, device=device, dtype=dtype)
        # gating LSTM cell state; lc[t + 1] after step t
        self.lc = torch.zeros(T + 1, S, B, H, device=device, dtype=dtype)
        self.act = buf(4 * H)  # LSTM gates after their nonlinearity: i, f, g, o
        self.tc = buf(H)  # tanh(lc[t + 1])
        self.gates = buf(D + 4 * H)  # g_x | g_h | g_i | g_hh | g_b
        self.xa = buf(D)  # x * g_x
        self.ha = buf(H)  # h_{t-1} * g_h
        # [u | w | b] = [W_ih (x * g_x) | W_hh (h_{t-1} * g_h) | bias]: what g_i, g_hh and g_b
        # multiply (b is filled in by the backward pass).
        self.uwb = buf(3, H)
        self.out = buf(A + 1)  # [logits | value]
        # Backward: gradients of the pre-activations, and the slopes of the nonlinearities
        # (computed for all steps at once before the loop through time).
        self.d_act = buf(4 * H)
        # dL/d(LSTM gate pre-activations) = [d_c, d_c, d_c, d_lh] * lstm_slope, with
        # lstm_slope = [g i', c_prev f', i g', tanh(c) o'] (' = the nonlinearity's derivative).
        self.lstm_slope = buf(4 * H)
        self.c_slope = buf(H)  # o (1 - tanh(c)^2): dL/dc from dL/dlstm_h
        self.h_slope = buf(H)  # 1 - h_t^2
        self.gates_slope = buf(D + 4 * H)  # 1 - gates^2
        self.d_gates = buf(D + 4 * H)
        self.d_pre = buf(H)
        self.d_uw = buf(2, H)
        # Per-step views (v_*[t] is step t's slice, (S, B, ...)).
        self.v_zz = self.zz.unbind(0)
        self.v_x, self.v_h, self.v_lh = (c.unbind(0) for c in self.zz.split((D, H, H), dim=-1))
        self.v_lc, self.v_tc = self.lc.unbind(0), self.tc.unbind(0)
        self.v_act = self.act.unbind(0)
        self.v_i, self.v_f, self.v_g, self.v_o = (c.unbind(0) for c in self.act.split(H, dim=-1))
        self.v_gates = self.gates.unbind(0)
        self.v_gx, self.v_gh, self.v_gi, self.v_ghh, self.v_gb = (
            c.unbind(0) for c in self.gates.split(gate_sizes, dim=-1))
        self.v_giw = self.gates[..., D + H:D + 3 * H].unflatten(-1, (2, H)).unbind(0)
        self.v_xa, self.v_ha, self.v_uwb = self.xa.unbind(0), self.ha.unbind(0), self.uwb.unbind(0)
        self.v_u, self.v_w = self.uwb[..., 0, :].unbind(0), self.uwb[..., 1, :].unbind(0)
        self.v_out = self.out.unbind(0)
        self.v_logits = self.out[..., :A].unbind(0)
        self.v_dact = self.d_act.unbind(0)
        self.v_dact3 = self.d_act[..., :3 * H].unflatten(-1, (3, H)).unbind(0)  # i, f, g
        self.v_do = self.d_act[..., 3 * H:].unbind(0)
        self.v_lslope3 = self.lstm_slope[..., :3 * H].unflatten(-1, (3, H)).unbind(0)
        self.v_lslope_o = self.lstm_slope[..., 3 * H:].unbind(0)
        self.v_cslope, self.v_hslope = self.c_slope.unbind(0), self.h_slope.unbind(0)
        self.v_gslope = self.gates_slope.unbind(0)
        self.v_dgates, self.v_dpre = self.d_gates.unbind(0), self.d_pre.unbind(0)
        self.v_dgx, self.v_dgh = (c.unbind(0) for c in self.d_gates.split(gate_sizes, -1)[:2])
        # dL/d[g_i | g_hh | g_b], the last three gates
        self.v_dgiwb = self.d_gates[..., D + H:].unflatten(-1, (3, H)).unbind(0)
        self.v_duw = self.d_uw.unbind(0)
        self.v_du, self.v_dw = self.d_uw[..., 0, :].unbind(0), self.d_uw[..., 1, :].unbind(0)


class WarpRNNTape(Unroller):
    """One training episode of a :class:`WarpRNNAgent`, or of a population of them (one per
    seed, trained side by side), forward step by step without autograd, with a hand-written
    backward through time.

    A population of ``S`` agents of the same shape runs as one: their parameters are stacked
    along a leading dimension (``torch.stack``, in the autograd graph, so each agent's own
    parameters receive its gradient) and every matrix product is a batched one over the ``S``
    members (``torch.bmm``; each member's slice equals its own product up to rounding).
    A single agent is a population of one whose ``step`` and ``outputs`` drop that dimension.

    Every step writes its activations into buffers of shape ``(T, S, B, ...)`` (see
    :class:`_TapeWorkspace`); ``zz[t]`` holds ``[x_t, h_{t-1}, lstm_h_{t-1}]`` (the gating LSTM's
    input and recurrent state, so that its two matrix products are one), and step ``t`` writes
    ``h_t`` and ``lstm_h_t`` straight into ``zz[t + 1]``. The episode starts from the zero
    state, which receives no gradient. The backward pass runs the recurrence in reverse with
    only the small per-step products, then computes every weight gradient as one matrix product
    over all ``T * B`` (step, maze) pairs of each member.

    Rules (checked): the agents' parameters must not change between the first :meth:`step` and
    the backward pass, and an episode must be back-propagated before the (first) agent's next
    tape of the same shape starts (they share the workspace).

    ``tanh(y)`` of the two large pre-activations (the LSTM's cell candidate and the five gates)
    is computed as ``2 sigmoid(2 y) - 1`` with the factor 2 folded into copies of the weights:
    the same function, and about twice as fast as ``torch.tanh`` on CPU.

    Args:
        agent: the agent, or a sequence of ``S`` agents of one class and size (a population);
            their current weights are used.
        batch_size: ``B``, mazes per member.
        length: ``T``, the most steps this tape can record.
        device: where the buffers live (default: the agents').

    Shapes: ``step`` takes obs ``(B, D)`` and returns logits ``(B, A)`` for one agent, ``(S, B,
    D)`` and ``(S, B, A)`` for a population; ``outputs`` gives ``(T, B, ...)`` or ``(T, S, B,
    ...)`` likewise.
    """

    def __init__(self, agent: WarpRNNAgent | Sequence[WarpRNNAgent], batch_size: int,
                 length: int, device: torch.device | str | None = None) -> None:
        self.single = isinstance(agent, nn.Module)
        agents = [agent] if self.single else list(agent)
        check_population(agents)
        first = agents[0]
        self.identity_gates = first.gate_fn == "identity"
        self.leaves = [p for a in agents for p in a.tape_parameters()]
        self.versions = [p._version for p in self.leaves]
        # (S, ...) stacks of the tape parameters, in the graph: gradients flow to each agent.
        self.params = tuple(torch.stack(ps) for ps in zip(*(a.tape_parameters() for a in agents),
                                                          strict=True))
        weight = first.policy.weight
        device = weight.device if device is None else torch.device(device)
        D, H, A, S = first.obs_dim, first.hidden_size, first.num_actions, len(agents)
        self.D, self.H, self.A, self.S, self.B, self.T = D, H, A, S, batch_size, length
        with torch.no_grad():
            (w_ih, w_hh, bias, w_pol, b_pol, w_val, b_val,
             w_lstm_ih, w_lstm_hh, b_lstm_ih, b_lstm_hh, w_proj) = (p.detach() for p in self.params)
            self.w_lstm = torch.cat((w_lstm_ih, w_lstm_hh), dim=-1)  # (S, 4H, D + 2H)
            self.w_proj = w_proj  # (S, D + 4H, H)
            self.w_ih, self.w_hh, self.bias = w_ih, w_hh, bias  # (S, H, D), (S, H, H), (S, H)
            self.w_heads = torch.cat((w_pol, w_val), dim=1)  # (S, A + 1, H)
            self.b_heads = torch.cat((b_pol, b_val), dim=1).unsqueeze(1)  # (S, 1, A + 1)
            # Forward copies, transposed for x @ W.T, with the cell candidate's rows (i, f, g, o
            # order) and the projection doubled, for tanh(y) = 2 sigmoid(2 y) - 1.
            w_lstm2 = self.w_lstm.clone()
            w_lstm2[:, 2 * H:3 * H] *= 2.0
            b_lstm2 = b_lstm_ih + b_lstm_hh
            b_lstm2[:, 2 * H:3 * H] *= 2.0
            self.b_lstm2 = b_lstm2.unsqueeze(1)  # (S, 1, 4H)
            self.w_lstm2_t, self.w_proj2_t = w_lstm2.mT, (2.0 * self.w_proj).mT
            self.w_ih_t, self.w_hh_t, self.w_heads_t = self.w_ih.mT, self.w_hh.mT, self.w_heads.mT

        key = (length, S, batch_size, D, H, A, weight.dtype, device)
        ws = first._workspace
        if ws is None or ws.key != key:
            ws = first._workspace = _TapeWorkspace(length, S, batch_size, D, H, A,
                                                   first.gate_sizes, weight.dtype, device)
        ws.generation += 1
        self.ws, self.generation = ws, ws.generation
        ws.zz[0, ..., D:] = 0.0  # h_{-1} = lstm_h_{-1} = 0
        ws.lc[0] = 0.0  # lstm_c_{-1} = 0
        self.t = 0

    def _check_workspace(self) -> None:
        if self.ws.generation != self.generation:
            raise RuntimeError("a newer WarpRNNTape of this agent has reused this episode's "
                               "buffers; back-propagate an episode before starting the next")

    @torch.no_grad()
    def step(self, obs: torch.Tensor) -> torch.Tensor:
        """One step of :meth:`WarpRNNAgent.forward`; returns logits ``(B, A)`` (``(S, B, A)``
        for a population; a view of the tape's buffer: read it before the next step, do not
        modify it)."""
        t, ws = self.t, self.ws
        self._check_workspace()
        if t >= self.T:
            raise RuntimeError(f"this tape holds {self.T} steps; step {t} is one too many")
        want = (self.B, self.D) if self.single else (self.S, self.B, self.D)
        if obs.shape != want:
            raise ValueError(f"obs must have shape {want}; got {tuple(obs.shape)}")
        x, h = ws.v_x[t], ws.v_h[t]
        x.copy_(obs)
        # Gating LSTM over [x_t, h_{t-1}] with state (lstm_h, lstm_c).
        torch.baddbmm(self.b_lstm2, ws.v_zz[t], self.w_lstm2_t, out=ws.v_act[t]).sigmoid_()
        g = ws.v_g[t].mul_(2.0).sub_(1.0)  # tanh of the cell candidate
        c = torch.addcmul(ws.v_f[t] * ws.v_lc[t], ws.v_i[t], g, out=ws.v_lc[t + 1])
        lstm_h = torch.mul(ws.v_o[t], torch.tanh(c, out=ws.v_tc[t]), out=ws.v_lh[t + 1])
        # The five gates, tanh(W_proj lstm_h) = 2 sigmoid(2 y) - 1 (+ 1 for identity gates).
        gates = torch.bmm(lstm_h, self.w_proj2_t, out=ws.v_gates[t]).sigmoid_().mul_(2.0)
        if not self.identity_gates:  # (1 + tanh(y) = 2 sigmoid(2 y) as it is)
            gates.sub_(1.0)
        # The fast, gated RNN cell.
        u = torch.bmm(torch.mul(x, ws.v_gx[t], out=ws.v_xa[t]), self.w_ih_t, out=ws.v_u[t])
        w = torch.bmm(torch.mul(h, ws.v_gh[t], out=ws.v_ha[t]), self.w_hh_t, out=ws.v_w[t])
        pre = (ws.v_gb[t] * self.bias.unsqueeze(1)).addcmul_(u, ws.v_gi[t]).addcmul_(
            w, ws.v_ghh[t])
        h_new = torch.tanh(pre, out=ws.v_h[t + 1])
        torch.baddbmm(self.b_heads, h_new, self.w_heads_t, out=ws.v_out[t])
        self.t = t + 1
        logits = ws.v_logits[t]
        return logits[0] if self.single else logits

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (T, B, A), values (T, B))`` of the recorded steps (``(T, S, B, A)`` and
        ``(T, S, B)`` for a population), in the autograd graph."""
        out = _WarpRNNBackward.apply(self, *self.params)
        if self.single:
            out = out[:, 0]
        return out[..., :self.A], out[..., self.A]

    @torch.no_grad()
    def backward(self, d_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Back-propagate ``d_out = dL/d[logits | value]`` ``(T, S, B, A + 1)`` through time;
        returns the gradients of the stacked :meth:`WarpRNNAgent.tape_parameters`, ``(S,
        ...)`` each, in that order."""
        self._check_workspace()
        if [p._version for p in self.leaves] != self.versions:
            raise RuntimeError("the agent's parameters changed between the rollout and the "
                               "backward pass; the recorded episode no longer matches them")
        T, S, B, D, H, A, ws = self.t, self.S, self.B, self.D, self.H, self.A, self.ws
        v_dout = d_out.unbind(0)
        # The slopes of every nonlinearity, for all steps at once (the loop below then needs
        # one product per slope): sigmoid' = s (1 - s) for i, f, o; tanh' = 1 - y^2 for the
        # cell candidate g, tanh(c), the gates and h.
        act, slope = ws.act[:T], ws.lstm_slope[:T]
        torch.mul(act, act, out=slope).neg_().add_(act)
        g_all, i_all = act[..., 2 * H:3 * H], act[..., :H]
        torch.mul(g_all, g_all, out=slope[..., 2 * H:3 * H]).neg_().add_(1.0)
        c_slope, tc = ws.c_slope[:T], ws.tc[:T]
        torch.mul(tc, tc, out=c_slope).neg_().add_(1.0).mul_(act[..., 3 * H:])
        slope[..., :H].mul_(g_all)  # dc/di = g
        slope[..., H:2 * H].mul_(ws.lc[:T])  # dc/df = c_prev
        slope[..., 2 * H:3 * H].mul_(i_all)  # dc/dg = i
        slope[..., 3 * H:].mul_(tc)  # dlstm_h/do = tanh(c)
        h_all = ws.zz[1:T + 1, ..., D:D + H]
        torch.mul(h_all, h_all, out=ws.h_slope[:T]).neg_().add_(1.0)
        gates = ws.gates[:T]
        if self.identity_gates:  # g = 1 + tanh(y): g' = 1 - (g - 1)^2 = g (2 - g)
            torch.mul(gates, 2.0 - gates, out=ws.gates_slope[:T])
        else:  # g = tanh(y): g' = 1 - g^2
            torch.mul(gates, gates, out=ws.gates_slope[:T]).neg_().add_(1.0)
        ws.uwb[:T, ..., 2, :] = self.bias.unsqueeze(1)  # what g_b multiplies, beside u and w

        d_h = ws.zz.new_zeros(S, B, H)  # dL/dh_t from the steps after t
        d_lh = ws.zz.new_zeros(S, B, H)  # dL/dlstm_h_t from the steps after t
        d_lc = ws.zz.new_zeros(S, B, H)  # dL/dlstm_c_t from the steps after t
        w_state = self.w_lstm[..., D:]  # (S, 4H, 2H): the columns of h_{t-1} and lstm_h_{t-1}
        for t in reversed(range(T)):
            # Heads, then h_t = tanh(pre): dL/dpre = dL/dh (1 - h^2).
            d_h = torch.baddbmm(d_h, v_dout[t], self.w_heads)
            dp = torch.mul(d_h, ws.v_hslope[t], out=ws.v_dpre[t])
            # pre = u * g_i + w * g_hh + b * g_b, u = W_ih (x * g_x), w = W_hh (h_{t-1} * g_h)
            dp2 = dp.unsqueeze(-2)
            torch.mul(dp2, ws.v_giw[t], out=ws.v_duw[t])
            torch.mul(dp2, ws.v_uwb[t], out=ws.v_dgiwb[t])
            torch.mul(torch.bmm(ws.v_du[t], self.w_ih), ws.v_x[t], out=ws.v_dgx[t])
            d_ha = torch.bmm(ws.v_dw[t], self.w_hh)
            torch.mul(d_ha, ws.v_h[t], out=ws.v_dgh[t])
            # gates = tanh(W_proj lstm_h)
            d_lh = torch.baddbmm(d_lh, ws.v_dgates[t].mul_(ws.v_gslope[t]), self.w_proj)
            # Gating LSTM: c = f * c_prev + i * g, lstm_h = o * tanh(c).
            d_c = torch.addcmul(d_lc, d_lh, ws.v_cslope[t])
            torch.mul(ws.v_lslope3[t], d_c.unsqueeze(-2), out=ws.v_dact3[t])  # i, f, g
            torch.mul(ws.v_lslope_o[t], d_lh, out=ws.v_do[t])
            d_lc = d_c * ws.v_f[t]
            d_state = torch.bmm(ws.v_dact[t], w_state)  # (S, B, 2H)
            d_lh = d_state[..., H:]
            d_h = torch.addcmul(d_state[..., :H], d_ha, ws.v_gh[t])

        # Weight gradients: one product over all T * B (step, maze) pairs per weight and member.
        def flat(x: torch.Tensor) -> torch.Tensor:  # (T, S, B, X) -> (S, T * B, X)
            return x.transpose(0, 1).reshape(S, T * B, x.shape[-1])

        d_out, d_act, d_gates = flat(d_out), flat(ws.d_act[:T]), flat(ws.d_gates[:T])
        g_heads = d_out.mT @ flat(ws.zz[1:T + 1, ..., D:D + H])  # (S, A + 1, H)
        gb_heads = d_out.sum(1)
        g_w_ih = flat(ws.d_uw[:T, ..., 0, :]).mT @ flat(ws.xa[:T])
        g_w_hh = flat(ws.d_uw[:T, ..., 1, :]).mT @ flat(ws.ha[:T])
        g_bias = (flat(ws.d_pre[:T]) * flat(ws.gates[:T, ..., D + 3 * H:])).sum(1)
        g_proj = d_gates.mT @ flat(ws.zz[1:T + 1, ..., D + H:])
        g_lstm = d_act.mT @ flat(ws.zz[:T])  # (S, 4H, D + 2H)
        gb_lstm = d_act.sum(1)
        return (g_w_ih, g_w_hh, g_bias, g_heads[:, :A], gb_heads[:, :A], g_heads[:, A:],
                gb_heads[:, A:], g_lstm[..., :D + H], g_lstm[..., D + H:], gb_lstm,
                gb_lstm.clone(), g_proj)


class _WarpRNNBackward(torch.autograd.Function):
    """Connects a :class:`WarpRNNTape`'s recorded outputs to the (stacked) parameters."""

    @staticmethod
    def forward(ctx, tape: WarpRNNTape, *params: torch.Tensor) -> torch.Tensor:
        ctx.tape = tape
        return tape.ws.out[:tape.t].clone()  # a copy: the workspace is reused next episode

    @staticmethod
    def backward(ctx, d_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, *ctx.tape.backward(d_out.contiguous()))
