"""The maze baselines: RNN, LSTM and Backpropamine (shapes, reset semantics, gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.backpropamine import BackpropamineAgent

OBS, ACT, HID = 17, 4, 12
VARIANTS = [("rnn", {}), ("lstm", {}), ("backpropamine", {}),
            ("backpropamine", {"modulation": "retroactive"})]
IDS = ["rnn", "lstm", "bp-simple", "bp-retroactive"]


def build(name: str, kw: dict, seed: int = 0, hidden: int = HID):
    torch.manual_seed(seed)
    return make_agent(name, obs_dim=OBS, num_actions=ACT, hidden_size=hidden, **kw)


def observations(T: int, B: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, OBS, generator=g)


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_forward_shapes_and_zero_initial_state(name, kw):
    agent = build(name, kw)
    B = 5
    state = agent.initial_state(B)
    for s in state:
        assert s.shape[0] == B
        assert torch.count_nonzero(s) == 0
    logits, value, nxt = agent(observations(1, B)[0], state)
    assert logits.shape == (B, ACT) and value.shape == (B,)
    assert [s.shape for s in nxt] == [s.shape for s in state]
    assert all(torch.isfinite(t).all() for t in (logits, value, *nxt))
    assert agent.warp_modules() == []


def test_backpropamine_state_shapes():
    simple = build("backpropamine", {})
    retro = build("backpropamine", {"modulation": "retroactive"})
    assert [tuple(s.shape) for s in simple.initial_state(3)] == [(3, HID), (3, HID, HID)]
    assert [tuple(s.shape) for s in retro.initial_state(3)] == [
        (3, HID), (3, HID, HID), (3, HID, HID)]


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_every_parameter_is_in_an_adapt_module(name, kw):
    """Baselines have one optimiser over everything: no parameter may sit outside the
    modules the trainer's partition sees."""
    agent = build(name, kw)
    covered = {id(p) for m in agent.adapt_modules() for p in m.parameters()}
    assert covered == {id(p) for p in agent.parameters()}


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_batch_elements_are_independent(name, kw):
    """A maze's outputs do not depend on the other mazes in the batch (no leakage through
    the batched traces)."""
    agent = build(name, kw)
    obs = observations(6, 4)
    state_all, state_one = agent.initial_state(4), agent.initial_state(1)
    for t in range(6):
        logits_all, value_all, state_all = agent(obs[t], state_all)
        logits_one, value_one, state_one = agent(obs[t, 2:3], state_one)
        torch.testing.assert_close(logits_all[2:3], logits_one)
        torch.testing.assert_close(value_all[2:3], value_one)


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_same_seed_same_numbers(name, kw):
    obs = observations(3, 2)
    outs = []
    for _ in range(2):
        agent = build(name, kw, seed=7)
        state = agent.initial_state(2)
        for t in range(3):
            logits, _, state = agent(obs[t], state)
        outs.append(logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    other = build(name, kw, seed=8)
    assert not torch.equal(other.policy.weight, build(name, kw, seed=7).policy.weight)


# ------------------------------------------------------------------------------------------------
# Backpropamine equations against an element-by-element reference
# ------------------------------------------------------------------------------------------------
def reference_step(cell, x, h_prev, hebb, elig=None):
    """Loop-by-element Backpropamine step (the paper's equations, written out)."""
    B, H = h_prev.shape
    w, alpha = cell.w.detach(), cell.alpha.detach()
    W_in, b_in = cell.input.weight.detach(), cell.input.bias.detach()
    m_w, m_b = cell.modulator.weight.detach()[0], cell.modulator.bias.detach()[0]
    h = torch.zeros(B, H)
    new_hebb, new_elig = hebb.clone(), None if elig is None else elig.clone()
    for b in range(B):
        for j in range(H):
            total = float(W_in[j] @ x[b] + b_in[j])
            for i in range(H):
                total += float(h_prev[b, i] * (w[i, j] + alpha[i, j] * hebb[b, i, j]))
            h[b, j] = np.tanh(total)
        m = np.tanh(float(m_w @ h[b] + m_b))
        for i in range(H):
            for j in range(H):
                hebbian = float(h_prev[b, i] * h[b, j])
                if elig is None:
                    new_hebb[b, i, j] = np.clip(float(hebb[b, i, j]) + m * hebbian,
                                                -cell.clip, cell.clip)
                else:
                    eta = float(torch.sigmoid(cell.eta_logit.detach()))
                    new_hebb[b, i, j] = np.clip(float(hebb[b, i, j] + m * elig[b, i, j]),
                                                -cell.clip, cell.clip)
                    new_elig[b, i, j] = (1 - eta) * elig[b, i, j] + eta * hebbian
    return h, new_hebb, new_elig


@pytest.mark.parametrize("modulation", ["simple", "retroactive"])
def test_backpropamine_step_matches_the_equations(modulation):
    torch.manual_seed(3)
    agent = BackpropamineAgent(OBS, ACT, hidden_size=5, modulation=modulation, clip=0.3)
    with torch.no_grad():
        agent.cell.alpha.normal_(0, 0.5)  # make the plastic term matter
    B, H = 2, 5
    x = torch.rand(B, OBS)
    h_prev = torch.rand(B, H) * 2 - 1
    hebb = (torch.rand(B, H, H) * 2 - 1) * 0.3
    state = (h_prev, hebb)
    elig = None
    if modulation == "retroactive":
        elig = torch.rand(B, H, H) * 2 - 1
        state = (*state, elig)
    with torch.no_grad():
        _, _, nxt = agent(x, state)
    h_ref, hebb_ref, elig_ref = reference_step(agent.cell, x, h_prev, hebb, elig)
    torch.testing.assert_close(nxt[0], h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt[1], hebb_ref, atol=1e-5, rtol=1e-5)
    if elig is not None:
        torch.testing.assert_close(nxt[2], elig_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("modulation", ["simple", "retroactive"])
def test_trace_changes_within_an_episode_and_is_clipped(modulation):
    agent = BackpropamineAgent(OBS, ACT, hidden_size=HID, modulation=modulation, clip=0.05)
    with torch.no_grad():
        agent.cell.modulator.bias.fill_(5.0)  # M ~ +1: strong, steady plasticity
    state = agent.initial_state(3)
    obs = observations(15, 3)
    with torch.no_grad():
        for t in range(15):
            _, _, state = agent(obs[t], state)
    hebb = state[1]
    assert torch.count_nonzero(hebb) > 0
    assert hebb.abs().max() <= 0.05 + 1e-7
    assert torch.isclose(hebb.abs().max(), torch.tensor(0.05))  # the clip was reached


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_predict_episode_start_resets_the_state(name, kw):
    """predict(episode_start=True) forgets the previous episode (for Backpropamine: its
    Hebbian traces); False carries the state on."""
    agent = build(name, kw)
    obs = observations(6, 2).numpy()
    state = None
    for t in range(5):
        _, state = agent.predict(obs[t], state, episode_start=np.array([t == 0, t == 0]))
    if name == "backpropamine":
        assert torch.count_nonzero(state[1]) > 0  # the traces moved within the episode
    carried = tuple(s.clone() for s in state)
    _, new_state = agent.predict(obs[5], state, episode_start=np.array([True, False]))
    with torch.no_grad():
        _, _, fresh = agent(torch.as_tensor(obs[5]), agent.initial_state(2))
        _, _, cont = agent(torch.as_tensor(obs[5]), carried)
    for got, f, c in zip(new_state, fresh, cont, strict=True):
        torch.testing.assert_close(got[0], f[0])  # maze 0 started over
        torch.testing.assert_close(got[1], c[1])  # maze 1 continued
    assert not torch.allclose(fresh[0][1], cont[0][1])  # the two differ, so the test can fail


@pytest.mark.parametrize("modulation", ["simple", "retroactive"])
def test_gradients_reach_alpha_and_the_neuromodulator(modulation):
    agent = BackpropamineAgent(OBS, ACT, hidden_size=HID, modulation=modulation)
    state = agent.initial_state(3)
    obs = observations(4, 3)
    loss = torch.zeros(())
    for t in range(4):
        logits, value, state = agent(obs[t], state)
        loss = loss + logits.log_softmax(-1)[:, 0].sum() + value.square().sum()
    loss.backward()
    names = ["cell.alpha", "cell.w", "cell.modulator.weight", "cell.modulator.bias",
             "cell.input.weight", "policy.weight", "value.weight"]
    if modulation == "retroactive":
        names.append("cell.eta_logit")
    params = dict(agent.named_parameters())
    for n in names:
        assert params[n].grad is not None and params[n].grad.abs().sum() > 0, n


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"modulation.*'hebbian'"):
        BackpropamineAgent(OBS, ACT, modulation="hebbian")
    with pytest.raises(ValueError, match="clip"):
        BackpropamineAgent(OBS, ACT, clip=0.0)
    with pytest.raises(ValueError, match="eta_init"):
        BackpropamineAgent(OBS, ACT, modulation="retroactive", eta_init=1.5)
    for name in ("rnn", "lstm", "backpropamine"):
        with pytest.raises(ValueError, match="hidden_size"):
            make_agent(name, obs_dim=OBS, num_actions=ACT, hidden_size=0)
        agent = make_agent(name, obs_dim=OBS, num_actions=ACT, hidden_size=4)
        with pytest.raises(ValueError, match=r"\(B, 17\)"):
            agent(torch.zeros(2, 16), agent.initial_state(2))
    simple = BackpropamineAgent(OBS, ACT, hidden_size=4)
    retro = BackpropamineAgent(OBS, ACT, hidden_size=4, modulation="retroactive")
    with pytest.raises(ValueError, match="3 tensors"):
        retro(torch.zeros(2, OBS), simple.initial_state(2))
