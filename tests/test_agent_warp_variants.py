"""The Warp-RNN variants (agents/warp_rnn.py options, agents/warp_lstm.py) and the trainer's
separate clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agents import AGENTS, make_agent
from agents.base import AutogradUnroller
from agents.trainer import TrainConfig, Trainer
from agents.warp_lstm import WarpLSTMAgent
from agents.warp_rnn import WarpRNNAgent, WarpRNNTape

D, A, H = 17, 4, 6


def perturbed(agent: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Add noise to every weight, so that zero-initialised projections (identity gates) and
    zero biases do not hide a wrong gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return agent


@pytest.mark.parametrize("name", ["warp_identity", "warp_orthogonal", "warp_identity_orth",
                                  "warp_lstm"])
def test_variants_are_registered_with_warp_and_fast_parts(name):
    agent = make_agent(name, obs_dim=D, num_actions=A, hidden_size=H)
    warp = {id(p) for m in agent.warp_modules() for p in m.parameters()}
    fast = {id(p) for m in agent.adapt_modules() for p in m.parameters()}
    assert name in AGENTS and warp and fast and not warp & fast
    assert warp | fast == {id(p) for p in agent.parameters()}
    assert {id(p) for p in agent.gate_lstm.parameters()} <= warp


def test_identity_gates_start_at_one_so_the_agent_starts_as_a_plain_rnn():
    torch.manual_seed(0)
    agent = WarpRNNAgent(D, A, H, gates="identity")
    rnn = nn.RNNCell(D, H)
    with torch.no_grad():
        rnn.weight_ih.copy_(agent.cell.w_ih.weight)
        rnn.weight_hh.copy_(agent.cell.w_hh.weight)
        rnn.bias_ih.copy_(agent.cell.bias)
        rnn.bias_hh.zero_()
    state, h = agent.initial_state(3), torch.zeros(3, H)
    for _ in range(4):
        obs = torch.rand(3, D)
        gates, _ = agent.gates(obs, state)
        for g in gates:
            assert torch.equal(g, torch.ones_like(g))
        _, _, state = agent(obs, state)
        h = rnn(obs, h)
        torch.testing.assert_close(state[0], h)
    # The published gates start far from 1 (near 0).
    published = WarpRNNAgent(D, A, H)
    gates, _ = published.gates(torch.rand(3, D), published.initial_state(3))
    assert max(float(g.detach().abs().max()) for g in gates) < 0.5


def test_orthogonal_fast_init():
    torch.manual_seed(0)
    agent = WarpRNNAgent(D, A, H, fast_init="orthogonal")
    w_hh, w_ih = agent.cell.w_hh.weight, agent.cell.w_ih.weight
    torch.testing.assert_close(w_hh @ w_hh.T, torch.eye(H), atol=1e-5, rtol=0)
    # W_ih is H x D with H < D: orthonormal rows, so W_ih^T W_ih is a projection of rank H.
    torch.testing.assert_close(w_ih @ w_ih.T, torch.eye(H), atol=1e-5, rtol=0)
    proj = w_ih.T @ w_ih
    torch.testing.assert_close(proj @ proj, proj, atol=1e-5, rtol=0)
    assert torch.trace(proj).item() == pytest.approx(H, abs=1e-4)
    assert torch.equal(agent.cell.bias, torch.zeros(H))
    lstm = WarpLSTMAgent(D, A, H)
    for block in lstm.cell.w_hh.split(H, dim=0):
        torch.testing.assert_close(block @ block.T, torch.eye(H), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="init must be one of"):
        WarpRNNAgent(D, A, H, fast_init="xavier")
    with pytest.raises(ValueError, match="gates must be one of"):
        WarpLSTMAgent(D, A, H, gates="sigmoid")


@pytest.mark.parametrize("gates,fast_init", [("identity", "uniform"),
                                             ("identity", "orthogonal"),
                                             ("tanh", "orthogonal")])
def test_fused_tape_matches_autograd_for_the_variants(gates, fast_init):
    torch.manual_seed(2)
    agent = perturbed(WarpRNNAgent(D, A, H, gates=gates, fast_init=fast_init).double())
    steps, batch = 7, 4
    obs = torch.rand(steps, batch, D, dtype=torch.float64)
    weights = torch.randn(steps, batch, A + 1, dtype=torch.float64)

    def run(unroller):
        for t in range(steps):
            unroller.step(obs[t])
        logits, values = unroller.outputs()
        loss = (logits * weights[..., :A]).sum() + (values * weights[..., A]).sum()
        return logits, torch.autograd.grad(loss, agent.tape_parameters())

    tape = agent.unroller(batch, steps)
    assert isinstance(tape, WarpRNNTape)
    ref, got = run(AutogradUnroller(agent, batch)), run(tape)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
    for g, r in zip(got[1], ref[1], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)
        assert r.abs().max() > 0


def test_warp_lstm_with_unit_gates_is_an_lstm_cell():
    torch.manual_seed(0)
    agent = WarpLSTMAgent(D, A, H)  # identity gates: all 1 at initialisation
    ref = nn.LSTMCell(D, H)
    with torch.no_grad():
        ref.weight_ih.copy_(agent.cell.w_ih)
        ref.weight_hh.copy_(agent.cell.w_hh)
        ref.bias_ih.copy_(agent.cell.bias + 0.1)
        ref.bias_hh.fill_(-0.1)
    state, hc = agent.initial_state(3), (torch.zeros(3, H), torch.zeros(3, H))
    for _ in range(5):
        obs = torch.rand(3, D)
        _, _, state = agent(obs, state)
        hc = ref(obs, hc)
        torch.testing.assert_close(state[0], hc[0])
        torch.testing.assert_close(state[1], hc[1])


def test_warp_lstm_gates_multiply_the_right_products():
    """Against the equations written out with explicit gates (published tanh gates, so that
    every gate differs from 1)."""
    torch.manual_seed(1)
    agent = perturbed(WarpLSTMAgent(D, A, H, gates="tanh").double())
    obs = torch.rand(2, D, dtype=torch.float64)
    state = tuple(torch.randn(2, H, dtype=torch.float64) for _ in range(4))
    h, c, lh, lc = state
    lh2, lc2 = agent.gate_lstm(torch.cat((obs, h), 1), (lh, lc))
    g = torch.tanh(lh2 @ agent.gate_proj.weight.T)
    gx, gh = g[:, :D], g[:, D:D + H]
    gi, ghh, gb = g[:, D + H:].chunk(3, dim=1)
    w = agent.cell
    pre = (w.w_ih @ (obs * gx).T).T * gi + (w.w_hh @ (h * gh).T).T * ghh + w.bias * gb
    i, f, z, o = pre.chunk(4, dim=1)
    c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
    h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    logits, value, (h2, c2, lh3, lc3) = agent(obs, state)
    torch.testing.assert_close(h2, h_ref)
    torch.testing.assert_close(c2, c_ref)
    torch.testing.assert_close(lh3, lh2)
    torch.testing.assert_close(lc3, lc2)
    torch.testing.assert_close(logits, agent.policy(h_ref))
    torch.testing.assert_close(value, agent.value(h_ref).squeeze(-1))


def test_warp_lstm_gradients_match_finite_differences():
    torch.manual_seed(3)
    agent = perturbed(WarpLSTMAgent(D, A, 3).double(), scale=0.3)
    obs = torch.rand(4, 2, D, dtype=torch.float64)
    names = [n for n, _ in agent.named_parameters()]

    def loss_of(*params):
        values = dict(zip(names, params, strict=True))
        state, total = agent.initial_state(2), 0.0
        for t in range(4):
            logits, value, state = torch.func.functional_call(agent, values, (obs[t], state))
            total = total + logits.pow(2).sum() + value.sum()
        return total

    assert torch.autograd.gradcheck(loss_of, tuple(p.detach().clone().requires_grad_()
                                                   for p in agent.parameters()))


@pytest.mark.parametrize("clip", ["joint", "separate"])
def test_separate_clipping_bounds_fast_and_warp_gradients_each(clip, tmp_path, monkeypatch):
    """With a tiny clip norm the warp gradient sum grows by at most max_grad_norm per episode
    when clipped separately, and the fast and warp parts share the norm when clipped jointly."""
    config = TrainConfig(agent="warp_identity_orth", episodes=2, batch_size=3, hidden_size=8,
                         maze_size=5, episode_length=12, warmup_episodes=0, meta_interval=10,
                         max_grad_norm=1e-3, clip=clip, checkpoint_every=10)
    trainer = Trainer(config, tmp_path)
    seen = {}
    original = torch.optim.Adam.step

    def spy(opt, *args, **kwargs):
        if opt is trainer.fast_opt:
            seen["fast"] = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in trainer.fast_params]))
        return original(opt, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    row = trainer.train_episode()
    trainer.close()
    warp = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(g) for g in trainer.objective.warp_grad_sum]))
    assert row["grad_norm"] > 1e-2  # far above the clip norm: clipping is active
    if clip == "separate":
        torch.testing.assert_close(seen["fast"].item(), 1e-3, rtol=1e-4, atol=0)
        torch.testing.assert_close(warp.item(), 1e-3, rtol=1e-4, atol=0)
    else:
        joint = torch.hypot(seen["fast"], warp).item()
        torch.testing.assert_close(joint, 1e-3, rtol=1e-4, atol=0)
        assert seen["fast"].item() < 1e-3 and warp.item() < 1e-3


def test_bad_clip_mode_is_named():
    with pytest.raises(ValueError, match="clip must be one of joint, separate"):
        TrainConfig(clip="both").validate()
