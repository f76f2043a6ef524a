"""The Warp-RNN agent: gates, the fast/warp partition, the fused tape, SB3-style predict."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

import envs  # noqa: F401  (registers WarpMaze-v0)
from agents import make_agent
from agents.base import AutogradUnroller
from agents.trainer import make_optimizers
from agents.warp_rnn import WarpRNNAgent, WarpRNNTape

D, A, H = 17, 4, 10


def agent64(seed: int = 0, scale: float = 3.0) -> WarpRNNAgent:
    """A float64 agent with weights scaled up so that every gate is far from 0."""
    torch.manual_seed(seed)
    agent = WarpRNNAgent(D, A, H).double()
    with torch.no_grad():
        for p in agent.parameters():
            p.mul_(scale)
    return agent


def test_gates_are_cumulative_slices_of_the_projection():
    agent = agent64()
    obs = torch.rand(5, D, dtype=torch.float64)
    state = tuple(torch.randn(5, H, dtype=torch.float64) for _ in range(3))
    gates, (lstm_h, lstm_c) = agent.gates(obs, state)
    ref_h, ref_c = agent.gate_lstm(torch.cat((obs, state[0]), 1), (state[1], state[2]))
    torch.testing.assert_close(lstm_h, ref_h)
    torch.testing.assert_close(lstm_c, ref_c)
    g = torch.tanh(lstm_h @ agent.gate_proj.weight.T)
    assert agent.gate_proj.weight.shape == (D + 4 * H, H)
    offsets = [0, D, D + H, D + 2 * H, D + 3 * H, D + 4 * H]
    assert [x.shape[1] for x in gates] == [D, H, H, H, H]
    for k, gate in enumerate(gates):
        torch.testing.assert_close(gate, g[:, offsets[k]:offsets[k + 1]])
    # Five different slices: no two gates of width H are the same numbers.
    for a in range(1, 5):
        for b in range(a + 1, 5):
            assert not torch.allclose(gates[a], gates[b])


def test_every_projection_weight_gets_a_gradient():
    agent = agent64(scale=1.0)
    state = agent.initial_state(6)
    loss = torch.zeros((), dtype=torch.float64)
    for _ in range(4):
        logits, value, state = agent(torch.rand(6, D, dtype=torch.float64) + 0.1, state)
        loss = loss + logits.pow(2).sum() + value.sum()
    loss.backward()
    grad = agent.gate_proj.weight.grad
    assert grad is not None and grad.shape == (D + 4 * H, H)
    assert (grad != 0).all(), f"{int((grad == 0).sum())} projection weights got no gradient"


def test_partition_splits_gating_network_from_fast_weights():
    agent = WarpRNNAgent(D, A, H)
    part, fast_opt, warp_opt = make_optimizers(agent, lr=1e-3, warp_lr=1e-3)
    assert set(part.warp_names) == {"gate_lstm.weight_ih", "gate_lstm.weight_hh",
                                    "gate_lstm.bias_ih", "gate_lstm.bias_hh",
                                    "gate_proj.weight"}
    assert set(part.adapt_names) == {"cell.w_ih.weight", "cell.w_hh.weight", "cell.bias",
                                     "policy.weight", "policy.bias", "value.weight",
                                     "value.bias"}
    fast_ids = {id(p) for g in fast_opt.param_groups for p in g["params"]}
    warp_ids = {id(p) for g in warp_opt.param_groups for p in g["params"]}
    assert fast_ids == {id(p) for p in part.adapt_parameters()}
    assert warp_ids == {id(p) for p in part.warp_parameters()}
    assert fast_ids.isdisjoint(warp_ids)
    assert fast_ids | warp_ids == {id(p) for p in agent.parameters()}


def test_each_optimiser_moves_only_its_own_weights():
    agent = WarpRNNAgent(D, A, H)
    part, fast_opt, warp_opt = make_optimizers(agent, lr=1e-2, warp_lr=1e-2)
    for which, opt in (("fast", fast_opt), ("warp", warp_opt)):
        before = {n: p.detach().clone() for n, p in agent.named_parameters()}
        for p in agent.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        moved = {n for n, p in agent.named_parameters() if not torch.equal(p, before[n])}
        expected = set(part.adapt_names if which == "fast" else part.warp_names)
        assert moved == expected, which


def test_baseline_without_warp_modules_gets_one_optimiser():
    agent = make_agent("lstm", D, A, H)
    _, fast_opt, warp_opt = make_optimizers(agent, lr=1e-3, warp_lr=1e-3)
    assert warp_opt is None
    assert {id(p) for p in fast_opt.param_groups[0]["params"]} == {
        id(p) for p in agent.parameters()}


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 9])
def test_fused_tape_matches_autograd(steps: int, device: str):
    agent = agent64(seed=1).to(device)
    batch = 5
    obs = torch.rand(steps, batch, D, dtype=torch.float64, device=device)
    weights = torch.randn(steps, batch, A + 1, dtype=torch.float64, device=device)

    def run(unroller):
        for t in range(steps):
            unroller.step(obs[t])
        logits, values = unroller.outputs()
        loss = (logits * weights[..., :A]).sum() + (values * weights[..., A]).sum() \
            + 0.3 * torch.log_softmax(logits, -1).exp().pow(2).sum()
        return logits, values, torch.autograd.grad(loss, agent.tape_parameters())

    tape = agent.unroller(batch, steps + 2)
    assert isinstance(tape, WarpRNNTape)
    ref = run(AutogradUnroller(agent, batch))
    got = run(tape)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-12)
    for g, r in zip(got[2], ref[2], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)
        assert r.abs().max() > 0 or steps == 1  # (W_hh sees h_{-1} = 0 at step 0)


def test_fused_tape_float32_and_fused_flag():
    torch.manual_seed(0)
    agent = WarpRNNAgent(D, A, H)
    obs = torch.rand(20, 3, D)
    tape = agent.unroller(3, 20)
    state = agent.initial_state(3)
    for t in range(20):
        logits = tape.step(obs[t])
        ref, _, state = agent(obs[t], state)
        torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-6)
    agent.fused_unroll = False
    assert isinstance(agent.unroller(3, 20), AutogradUnroller)


def test_tape_refuses_stale_weights_and_extra_steps():
    agent = WarpRNNAgent(D, A, H)
    tape = agent.unroller(2, 1)
    tape.step(torch.rand(2, D))
    with pytest.raises(RuntimeError, match="holds 1 steps"):
        tape.step(torch.rand(2, D))
    logits, values = tape.outputs()
    with torch.no_grad():
        agent.policy.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="parameters changed"):
        (logits.sum() + values.sum()).backward()


def test_tape_workspace_is_reused_but_never_shared_by_two_live_episodes():
    agent = WarpRNNAgent(D, A, H)
    first = agent.unroller(2, 3)
    first.step(torch.rand(2, D))
    logits, values = first.outputs()
    second = agent.unroller(2, 3)  # same shape: takes the workspace over
    assert second.ws is first.ws
    with pytest.raises(RuntimeError, match="newer WarpRNNTape"):
        (logits.sum() + values.sum()).backward()
    with pytest.raises(RuntimeError, match="newer WarpRNNTape"):
        first.step(torch.rand(2, D))
    other = agent.unroller(4, 3)  # another shape gets fresh buffers
    assert other.ws is not first.ws


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="hidden_size"):
        WarpRNNAgent(D, A, 0)
    agent = WarpRNNAgent(D, A, H)
    with pytest.raises(ValueError, match=r"\(B, 17\)"):
        agent(torch.rand(2, 5), agent.initial_state(2))


def test_predict_resets_state_at_episode_start():
    agent = WarpRNNAgent(D, A, H)
    obs = np.random.default_rng(0).random((3, D), dtype=np.float32)
    a1, s1 = agent.predict(obs, deterministic=True)
    _, s2 = agent.predict(obs, state=s1, deterministic=True)
    a3, s3 = agent.predict(obs, state=s2, episode_start=np.ones(3, bool), deterministic=True)
    assert a1.shape == (3,) and a1.dtype == np.int64
    np.testing.assert_array_equal(a1, a3)
    assert any(not torch.equal(x, y) for x, y in zip(s1, s2, strict=True))
    for x, y in zip(s1, s3, strict=True):
        torch.testing.assert_close(x, y)
    single, _ = agent.predict(obs[0], deterministic=True)
    assert np.ndim(single) == 0 and int(single) == int(a1[0])


def test_sb3_evaluate_policy_on_warpmaze():
    torch.manual_seed(0)
    agent = WarpRNNAgent(D, A, 8)
    env = Monitor(gym.make("WarpMaze-v0", episode_length=50))
    mean, std = evaluate_policy(agent, env, n_eval_episodes=3, deterministic=False)
    assert np.isfinite(mean) and np.isfinite(std) and mean >= 0
    rewards, lengths = evaluate_policy(agent, env, n_eval_episodes=2,
                                       return_episode_rewards=True)
    assert lengths == [50, 50] and len(rewards) == 2
