"""The A2C loss against a plain, loop-based reference on small hand-made rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from agents.a2c import a2c_loss, discounted_returns


def reference_loss(logits, values, actions, rewards, gamma, value_coef, penalty_coef):
    """The paper's loss written out with Python loops, one (step, maze) pair at a time."""
    T, B, _ = logits.shape
    policy = value = penalty = 0.0
    for b in range(B):
        ret = 0.0
        for t in reversed(range(T)):
            ret = float(rewards[t, b]) + gamma * ret  # rewards[t] was earned by actions[t]
            adv = ret - float(values[t, b])  # this maze's own value as the baseline
            probs = torch.softmax(logits[t, b].double(), 0)
            policy -= math.log(float(probs[actions[t, b]])) * adv
            value += adv * adv
            penalty += float((probs**2).sum())
    n = T * B
    policy, value, penalty = policy / n, value / n, penalty / n
    return policy + value_coef * value + penalty_coef * penalty, policy, value, penalty


def test_returns_by_hand():
    rewards = torch.tensor([[0.0, 10.0], [10.0, 0.0], [0.0, 0.0], [10.0, 10.0]])
    got = discounted_returns(rewards, 0.9)
    expected = torch.tensor([
        [0.9 * 10 + 0.9**3 * 10, 10 + 0.9**3 * 10],
        [10 + 0.9**2 * 10, 0.9**2 * 10],
        [0.9 * 10, 0.9 * 10],
        [10.0, 10.0],
    ])
    torch.testing.assert_close(got, expected)


def test_returns_match_the_backward_recursion_on_long_episodes():
    rewards = (torch.rand(200, 7) < 0.05).float() * 10
    got = discounted_returns(rewards, 0.9)
    ret, expected = torch.zeros(7), torch.zeros(200, 7)
    for t in reversed(range(200)):
        ret = rewards[t] + 0.9 * ret
        expected[t] = ret
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_loss_matches_reference_on_a_hand_made_rollout():
    # 3 steps, 2 mazes, 4 actions; maze 0 finds the goal with its second action, maze 1 with
    # its first and third; the two mazes have very different values.
    logits = torch.tensor([[[0.1, 0.5, -0.2, 0.0], [1.0, 0.0, 0.0, -1.0]],
                           [[0.3, 0.3, 0.3, 0.3], [0.0, 2.0, 0.0, 0.0]],
                           [[-0.5, 0.0, 0.5, 1.0], [0.2, 0.1, 0.0, -0.1]]], requires_grad=True)
    values = torch.tensor([[1.0, 8.0], [2.0, 5.0], [0.5, 9.0]], requires_grad=True)
    actions = torch.tensor([[0, 3], [1, 1], [2, 0]])
    rewards = torch.tensor([[0.0, 10.0], [10.0, 0.0], [0.0, 10.0]])
    got = a2c_loss(logits, values, actions, rewards, 0.9, 0.1, 0.03)
    ref = reference_loss(logits.detach(), values.detach(), actions, rewards, 0.9, 0.1, 0.03)
    for g, r in zip(got, ref, strict=True):
        assert g.item() == pytest.approx(r, rel=1e-5)
    # The original's defects would give other numbers: maze 0's value for every maze, and
    # returns built from rewards shifted by one step.
    shared = a2c_loss(logits, values[:, :1].expand(3, 2), actions, rewards, 0.9, 0.1, 0.03)
    assert shared.value.item() != pytest.approx(got.value.item(), rel=1e-3)
    shifted = torch.cat([torch.zeros(1, 2), rewards[:-1]])
    wrong = a2c_loss(logits, values, actions, shifted, 0.9, 0.1, 0.03)
    assert wrong.policy.item() != pytest.approx(got.policy.item(), rel=1e-3)


def test_gradients_of_each_term():
    torch.manual_seed(0)
    T, B, A = 5, 3, 4
    logits = torch.randn(T, B, A, requires_grad=True)
    values = torch.randn(T, B, requires_grad=True)
    actions = torch.randint(A, (T, B))
    rewards = (torch.rand(T, B) < 0.3).float() * 10
    loss = a2c_loss(logits, values, actions, rewards)
    # The policy term does not train the value head (advantages are constants there) ...
    (g_v,) = torch.autograd.grad(loss.policy, values, retain_graph=True, allow_unused=True,
                                 materialize_grads=True)
    assert torch.count_nonzero(g_v) == 0
    # ... and the value term is the mean squared error to the returns.
    (g_v,) = torch.autograd.grad(loss.value, values, retain_graph=True)
    returns = discounted_returns(rewards, 0.9)
    torch.testing.assert_close(g_v, -2 * (returns - values.detach()) / (T * B))
    # Uniform logits minimise sum p^2, at 1 / A.
    flat = a2c_loss(torch.zeros(T, B, A), values, actions, rewards)
    assert flat.penalty.item() == pytest.approx(1 / A)
    assert loss.penalty.item() > 1 / A


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="rewards must have shape"):
        a2c_loss(torch.zeros(3, 2, 4), torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long),
                 torch.zeros(2, 3))
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.zeros(3, 2), 1.5)
