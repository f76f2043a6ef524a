"""The advantage actor-critic (A2C) loss of the maze experiments, vectorised over time and mazes.

Conventions (``T`` time steps, ``B`` mazes, ``A`` actions):

* ``actions[t]`` is the action taken after seeing the observation at step ``t``;
* ``rewards[t]`` is the reward *that action earned*: the reward returned by ``env.step`` with
  ``actions[t]`` (the original code accumulated returns with rewards shifted by one step);
* ``values[t]`` is the value head's estimate for step ``t`` of *each* maze (the original used the
  value of maze 0 as the baseline of every maze in the batch).

The loss, averaged over the ``T * B`` (step, maze) pairs, is the paper's::

    R_t      = sum_{k >= 0} gamma^k r_{t+k}          discounted return to the end of the episode
    A_t      = R_t - V_t                             advantage, per maze
    policy   = -mean(log pi(a_t | .) * stop_grad(A_t))          policy-gradient term
    value    =  mean(A_t ** 2)                                  value regression
    penalty  =  mean(sum_a pi(a | .) ** 2)                      "entropy" penalty of the paper:
                                                                smallest for uniform policies
    loss     = policy + value_coef * value + penalty_coef * penalty

with the paper's ``gamma = 0.9``, ``value_coef = 0.1``, ``penalty_coef = 0.03``. The original
script summed over steps and mazes and divided by ``T`` and ``B``; that is the same mean. The
episode is truncated at ``T`` (the maze itself changes), so returns are not bootstrapped.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

GAMMA = 0.9
VALUE_COEF = 0.1
PENALTY_COEF = 0.03


class A2CLoss(NamedTuple):
    """The loss and its parts (scalar tensors); ``total`` is the one to differentiate."""

    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    penalty: torch.Tensor


def discount_matrix(length: int, gamma: float, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Upper-triangular ``(T, T)`` matrix ``M[t, s] = gamma ** (s - t)`` for ``s >= t``, else 0,
    so that ``M @ rewards`` gives the discounted returns of every step at once."""
    t = torch.arange(length, device=device)
    lag = t[None, :] - t[:, None]  # s - t
    powers = torch.full((), gamma, dtype=torch.float64, device=device) ** lag.clamp(min=0)
    return torch.where(lag >= 0, powers, 0.0).to(dtype)


def discounted_returns(rewards: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """``R_t = r_t + gamma * R_{t+1}`` (with ``R_T = 0``) for all steps at once.

    Args:
        rewards: ``(T, B)``; ``rewards[t]`` is the reward earned by the action of step ``t``.
        gamma: discount in ``[0, 1]``.

    Returns:
        ``(T, B)`` returns, same dtype and device.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (T, B); got {tuple(rewards.shape)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1]; got {gamma}")
    matrix = discount_matrix(rewards.shape[0], gamma, rewards.device, rewards.dtype)
    return matrix @ rewards


def a2c_loss(
    logits: torch.Tensor,
    values: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    gamma: float = GAMMA,
    value_coef: float = VALUE_COEF,
    penalty_coef: float = PENALTY_COEF,
) -> A2CLoss:
    """The A2C loss of one batch of episodes (see the module docstring).

    Args:
        logits: ``(T, B, A)`` unnormalised action log-probabilities.
        values: ``(T, B)`` value estimates.
        actions: ``(T, B)`` int64, the actions taken.
        rewards: ``(T, B)``, ``rewards[t]`` earned by ``actions[t]``.
        gamma: discount.
        value_coef: weight of the value regression term.
        penalty_coef: weight of the ``sum_a p^2`` penalty.

    Returns:
        :class:`A2CLoss` of scalar tensors.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (T, B, A); got {tuple(logits.shape)}")
    shape = logits.shape[:2]
    for name, x in (("values", values), ("actions", actions), ("rewards", rewards)):
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)} (T, B); got {tuple(x.shape)}")
    returns = discounted_returns(rewards.to(values.dtype), gamma)
    advantages = returns - values
    log_probs = F.log_softmax(logits, dim=-1)
    taken = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    policy = -(taken * advantages.detach()).mean()
    value = advantages.pow(2).mean()
    penalty = log_probs.exp().pow(2).sum(-1).mean()
    total = policy + value_coef * value + penalty_coef * penalty
    return A2CLoss(total, policy, value, penalty)
