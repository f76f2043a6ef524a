"""How the maze trainer meta-learns the warp weights: swappable *warp objectives*.

The trainer (:class:`agents.trainer.Trainer`) computes every episode's A2C gradient, clips it and
then hands control of the warp weights to a :class:`WarpObjective`::

    objective.record(episode, rollout, fast_step)   # gradients in p.grad, before the fast step
    if fast_step: fast_opt.step()                    # the fast weights, every post-warm-up episode
    warp_step = objective.step(episode)              # the objective steps warp_opt if it wants to

Four objectives (``--warp-objective``, :data:`WARP_OBJECTIVES`):

``two_timescale`` (the paper's schedule, the default)
    Sums the warp gradient of every post-warm-up episode's own A2C loss and gives the sum to
    the warp Adam every ``meta_interval`` episodes.
``algorithm2`` (WarpGrad's meta-objective, Algorithm 2, for the RL loss)
    Keeps, for each post-warm-up episode ``k``, the fast weights ``theta_k`` that played it, the
    fast Adam's state before its step, and the episode's observations, actions and rewards. At a
    warp step it replays up to ``warp_pairs`` consecutive pairs ``(k, k + 1)`` whose second
    episode falls in the interval that just ended, and for each computes, with the warp weights
    ``phi`` as the variable::

        g_k(phi)     = clip(grad_theta L_k(theta_k, phi))        # episode k's A2C loss, replayed
        theta'(phi)  = AdamStep(theta_k, g_k(phi); Adam state before step k, held fixed)
        meta-loss    = L_{k+1}(theta'(phi), phi)                  # episode k+1's A2C loss

    ``theta'`` is (up to how the fast gradient was clipped, see below, and, for the interval's
    first pair, up to the warp step taken between ``k`` and ``k + 1``) the ``theta_{k+1}`` that
    played episode ``k + 1``, so the meta-loss is an on-policy A2C loss. Its gradient with
    respect to ``phi`` goes through ``g_k`` (second order) and is averaged over the pairs, clipped
    to ``max_grad_norm`` and given to the warp Adam. Replaying a recorded episode feeds the
    agent the recorded observations from the zero state (teacher forcing): at ``theta_{k+1}``
    this reproduces exactly the logits and values that chose the recorded actions.
``algorithm2_detached``
    ``algorithm2`` with ``g_k`` treated as a constant (the inner gradient detached): the
    meta-gradient is the warp gradient of ``L_{k+1}`` at ``theta'``, without the term that goes
    through the fast step. Since ``theta' = theta_{k+1}``, this is the warp gradient of episode
    ``k + 1``'s own loss, the quantity ``two_timescale`` sums; ``algorithm2_detached`` averages a
    sample of them instead of summing all. It isolates what the second-order term adds.
``algorithm2_interval``
    Algorithm 2 summed over every pair of the interval: ``two_timescale``'s sum (the pairs'
    direct terms, exact) plus the second-order term estimated from ``warp_pairs`` replayed
    pairs (:class:`Algorithm2Interval`).

The fast gradient in the replayed step is clipped on its own to ``max_grad_norm`` (as with
``--clip separate``); under the default joint clipping the real step scaled it by the joint
norm of the fast and warp gradients, so ``theta'`` then differs from ``theta_{k+1}`` in the
episodes where clipping was active. Under ``torchrun`` each rank replays its own mazes and the
meta-gradients are averaged over the ranks before clipping.

Adding an objective: subclass :class:`WarpObjective` (``record``, ``step``, ``state_dict``,
``load_state_dict``), add one line to :data:`WARP_OBJECTIVES` and its name to
:data:`agents.WARP_OBJECTIVE_NAMES` (the command line's list, kept free of torch; a test checks
that the two agree); ``--warp-objective NAME`` then selects it, and its ``state_dict`` goes into
the trainer's checkpoint (tensors and plain data only), so ``--resume`` continues it exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from agents.a2c import a2c_loss
from agents.base import RecurrentAgent
from warp_rl import distributed
from warp_rl.objectives import adam_step

if TYPE_CHECKING:
    from agents.rollout import Rollout


@dataclass
class WarpContext:
    """What an objective may use: the agent, its two parameter groups and their optimisers,
    and the settings of the run.

    Attributes:
        agent: the agent being trained.
        fast_params, warp_params: the partition's parameter lists (``warp_params`` non-empty).
        fast_opt, warp_opt: the fast and warp Adams.
        meta_interval: post-warm-up episodes between warp steps.
        warmup_episodes: episodes without any step at the start.
        max_grad_norm: clip norm (the meta-gradient and the replayed fast gradient).
        gamma, value_coef, penalty_coef: the A2C loss.
        warp_pairs: episode pairs replayed per warp step (the ``algorithm2`` objectives).
        seed: the run's seed (which pairs are replayed is a function of it and the episode).
    """

    agent: RecurrentAgent
    fast_params: list[nn.Parameter]
    warp_params: list[nn.Parameter]
    fast_opt: torch.optim.Adam
    warp_opt: torch.optim.Adam
    meta_interval: int
    warmup_episodes: int
    max_grad_norm: float
    gamma: float
    value_coef: float
    penalty_coef: float
    warp_pairs: int
    seed: int


class WarpObjective(ABC):
    """Decides what the warp optimiser is given and when it steps (module docstring)."""

    name: ClassVar[str]

    def __init__(self, ctx: WarpContext) -> None:
        self.ctx = ctx

    def is_warp_step(self, episode: int) -> bool:
        """True if the warp optimiser steps after ``episode`` (0-based): every
        ``meta_interval``-th post-warm-up episode."""
        ctx = self.ctx
        if episode < ctx.warmup_episodes:
            return False
        return (episode - ctx.warmup_episodes + 1) % ctx.meta_interval == 0

    @abstractmethod
    def record(self, episode: int, rollout: Rollout, fast_step: bool) -> None:
        """Called after the episode's (clipped) gradients are in ``p.grad`` and before the fast
        optimiser steps (``fast_step`` says whether it will)."""

    @abstractmethod
    def step(self, episode: int) -> bool:
        """Called after the fast step. Steps ``warp_opt`` if this objective's schedule says so
        (leaving ``p.grad`` of the warp weights to the trainer to clear); returns whether it
        stepped."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The objective's state for the checkpoint: tensors and plain data only."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


class TwoTimescale(WarpObjective):
    """The paper's schedule: the warp Adam steps every ``meta_interval`` post-warm-up episodes
    on the sum of those episodes' warp gradients."""

    name = "two_timescale"

    def __init__(self, ctx: WarpContext) -> None:
        super().__init__(ctx)
        # Sum of the warp gradients since the last warp step.
        self.warp_grad_sum = [torch.zeros_like(p) for p in ctx.warp_params]

    def record(self, episode: int, rollout: Rollout, fast_step: bool) -> None:
        if fast_step:
            torch._foreach_add_(self.warp_grad_sum, [p.grad for p in self.ctx.warp_params])

    def step(self, episode: int) -> bool:
        if not self.is_warp_step(episode):
            return False
        for p, g in zip(self.ctx.warp_params, self.warp_grad_sum, strict=True):
            p.grad = g.clone()
        self.ctx.warp_opt.step()
        for g in self.warp_grad_sum:
            g.zero_()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"warp_grad_sum": [g.clone() for g in self.warp_grad_sum]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, saved in zip(self.warp_grad_sum, state["warp_grad_sum"], strict=True):
            g.copy_(saved)


@dataclass
class EpisodeRecord:
    """One post-warm-up episode as :class:`Algorithm2` keeps it (all tensors detached).

    Attributes:
        episode: its index.
        theta: the fast weights that played it, in ``fast_params`` order.
        exp_avg, exp_avg_sq: the fast Adam's moments before the step that followed it.
        adam_step: the fast Adam's step count before that step.
        observations: ``(T, B, D)``; actions ``(T, B)`` int64; rewards ``(T, B)``.
    """

    episode: int
    theta: list[torch.Tensor]
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    adam_step: int
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, tensors not copied (for the checkpoint)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class Algorithm2(WarpObjective):
    """WarpGrad's Algorithm 2 with the A2C loss, on replayed consecutive episode pairs
    (module docstring). ``second_order=False`` is :class:`Algorithm2Detached`."""

    name = "algorithm2"
    second_order: ClassVar[bool] = True

    def __init__(self, ctx: WarpContext) -> None:
        super().__init__(ctx)
        if not isinstance(ctx.fast_opt, torch.optim.Adam):
            raise TypeError("algorithm2 replays the fast optimiser's step; it needs Adam")
        group = ctx.fast_opt.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or len(ctx.fast_opt.param_groups) != 1:
            raise ValueError("algorithm2 replays plain Adam (one group, no weight decay, "
                             "no AMSGrad)")
        named = dict(ctx.agent.named_parameters())
        ids = {id(p): n for n, p in named.items()}
        self.fast_names = [ids[id(p)] for p in ctx.fast_params]
        self.warp_names = [ids[id(p)] for p in ctx.warp_params]
        # The episodes since one before the last warp step: enough for every pair (k, k + 1)
        # with k + 1 in the current interval.
        self.records: deque[EpisodeRecord] = deque(maxlen=ctx.meta_interval + 1)
        self.last_meta_loss = float("nan")

    # -- recording ---------------------------------------------------------------------------
    def record(self, episode: int, rollout: Rollout, fast_step: bool) -> None:
        if not fast_step:  # no fast step follows: theta_{k+1} = theta_k, not a pair's start
            return
        opt = self.ctx.fast_opt
        states = [opt.state.get(p, {}) for p in self.ctx.fast_params]
        steps = {int(st["step"]) for st in states if "step" in st}
        if len(steps) > 1:
            raise RuntimeError("the fast Adam's parameters disagree on their step count")
        zeros = [torch.zeros_like(p) for p in self.ctx.fast_params]
        self.records.append(EpisodeRecord(
            episode=episode,
            theta=[p.detach().clone() for p in self.ctx.fast_params],
            exp_avg=[st["exp_avg"].clone() if "exp_avg" in st else z
                     for st, z in zip(states, zeros, strict=True)],
            exp_avg_sq=[st["exp_avg_sq"].clone() if "exp_avg_sq" in st else z.clone()
                        for st, z in zip(states, zeros, strict=True)],
            adam_step=steps.pop() if steps else 0,
            observations=rollout.observations.detach().clone(),
            actions=rollout.actions.detach().clone(),
            rewards=rollout.rewards.detach().clone(),
        ))

    def pairs(self, episode: int) -> list[tuple[EpisodeRecord, EpisodeRecord]]:
        """The pairs ``(k, k + 1)`` available at the warp step after ``episode``: both recorded
        (a fast step followed ``k``), ``k + 1`` in the interval that ends at ``episode``."""
        first = episode - self.ctx.meta_interval + 1
        recs = list(self.records)
        return [(a, b) for a, b in itertools.pairwise(recs)
                if b.episode == a.episode + 1 and b.episode >= first]

    def choose(self, pairs: list, episode: int) -> list:
        """Up to ``warp_pairs`` of ``pairs``, without replacement, drawn from a generator
        seeded by ``(seed, episode)`` (nothing to checkpoint)."""
        if len(pairs) <= self.ctx.warp_pairs:
            return pairs
        rng = np.random.default_rng(np.random.SeedSequence([self.ctx.seed, episode, 2020]))
        picked = sorted(rng.choice(len(pairs), size=self.ctx.warp_pairs, replace=False))
        return [pairs[i] for i in picked]

    # -- the meta-loss -----------------------------------------------------------------------
    def replay_loss(self, tensors: dict[str, torch.Tensor], rec: EpisodeRecord) -> torch.Tensor:
        """The A2C loss of the recorded episode ``rec`` with the agent's weights replaced by
        ``tensors`` (name -> tensor): the recorded observations fed from the zero state."""
        agent, ctx = self.ctx.agent, self.ctx
        obs = rec.observations
        state = agent.initial_state(obs.shape[1], obs.device)
        logits, values = [], []
        for t in range(obs.shape[0]):
            step_logits, value, state = functional_call(agent, tensors, (obs[t], state))
            logits.append(step_logits)
            values.append(value)
        return a2c_loss(torch.stack(logits), torch.stack(values), rec.actions, rec.rewards,
                        ctx.gamma, ctx.value_coef, ctx.penalty_coef).total

    def meta_loss(self, first: EpisodeRecord, second: EpisodeRecord) -> torch.Tensor:
        """``L_{k+1}(AdamStep(theta_k, clip(grad L_k(theta_k, phi))), phi)`` as a function of
        the live warp parameters (``first`` is episode ``k``, ``second`` episode ``k + 1``)."""
        phi = dict(zip(self.warp_names, self.ctx.warp_params, strict=True))
        return self.replay_loss({**self.stepped_fast_weights(first), **phi}, second)

    def stepped_fast_weights(self, first: EpisodeRecord) -> dict[str, torch.Tensor]:
        """``theta' = AdamStep(theta_k, clip(grad_theta L_k(theta_k, phi)))`` by fast-weight
        name, differentiable with respect to the live warp parameters (through the inner
        gradient, unless ``second_order`` is False)."""
        ctx = self.ctx
        phi = dict(zip(self.warp_names, ctx.warp_params, strict=True))
        theta = {n: t.clone().requires_grad_(True)
                 for n, t in zip(self.fast_names, first.theta, strict=True)}
        inner = self.replay_loss({**theta, **phi}, first)
        grads = torch.autograd.grad(inner, list(theta.values()), create_graph=self.second_order,
                                    allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(
            theta.values(), grads, strict=True)]
        if not self.second_order:
            grads = [g.detach() for g in grads]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = torch.clamp(ctx.max_grad_norm / (norm + 1e-6), max=1.0)  # as clip_grad_norm_
        group = ctx.fast_opt.param_groups[0]
        names = self.fast_names
        return adam_step(
            {n: t.detach() for n, t in theta.items()},
            {n: g * scale for n, g in zip(names, grads, strict=True)},
            dict(zip(names, first.exp_avg, strict=True)),
            dict(zip(names, first.exp_avg_sq, strict=True)),
            first.adam_step, group["lr"], group["betas"], group["eps"])

    def replayed_gradient(self, chosen: list, loss_fn) -> float:
        """Set the warp parameters' ``.grad`` to the mean over the ``chosen`` pairs of the
        gradient of ``loss_fn(first, second)`` (averaged over the ranks under torchrun),
        clipped to ``max_grad_norm``; returns the norm before clipping."""
        ctx = self.ctx
        total = [torch.zeros_like(p) for p in ctx.warp_params]
        losses = []
        for first, second in chosen:
            loss = loss_fn(first, second)
            grads = torch.autograd.grad(loss, ctx.warp_params, allow_unused=True)
            for acc, g in zip(total, grads, strict=True):
                if g is not None:
                    acc.add_(g)
            losses.append(float(loss.detach()))
        self.last_meta_loss = float(np.mean(losses))
        for p, g in zip(ctx.warp_params, total, strict=True):
            p.grad = g / len(chosen)
        if distributed.world_size() > 1:
            distributed.average_gradients_(ctx.warp_params)
        return float(nn.utils.clip_grad_norm_(ctx.warp_params, ctx.max_grad_norm))

    def step(self, episode: int) -> bool:
        if not self.is_warp_step(episode):
            return False
        chosen = self.choose(self.pairs(episode), episode)
        if not chosen:  # nothing to replay yet (the first interval at meta_interval 1); the
            return False  # same on every rank, which all follow one schedule
        if not math.isfinite(self.replayed_gradient(chosen, self.meta_loss)):
            raise FloatingPointError(f"non-finite {self.name} meta-gradient at episode {episode}")
        self.ctx.warp_opt.step()
        return True

    # -- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"records": [r.as_dict() for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records.clear()
        for r in state["records"]:
            self.records.append(EpisodeRecord(**{**r, "episode": int(r["episode"]),
                                                 "adam_step": int(r["adam_step"])}))


class Algorithm2Detached(Algorithm2):
    """:class:`Algorithm2` with the inner gradient detached (no second-order term)."""

    name = "algorithm2_detached"
    second_order = False


class Algorithm2Interval(Algorithm2):
    """Algorithm 2's meta-gradient summed over *every* pair of the interval, its first-order
    part exact and its second-order part estimated from ``warp_pairs`` sampled pairs.

    A pair's meta-gradient splits in two (``theta'`` is a function of ``phi`` through the
    inner gradient ``g_k``)::

        d/dphi L_{k+1}(theta'(phi), phi) = dL_{k+1}/dphi at theta'          # direct
                                         + (dtheta'/dphi)^T dL_{k+1}/dtheta'  # second order

    Since ``theta' = theta_{k+1}``, the direct term is the warp gradient of episode ``k + 1``'s
    own loss, which :class:`TwoTimescale` already sums over the interval at no extra cost.
    This objective sums it the same way and adds the second-order term of ``m = warp_pairs``
    of the ``P`` pairs (``P <= meta_interval``), averaged, clipped to ``max_grad_norm`` and
    scaled by ``P``: an estimate of the sum of the ``P`` second-order terms (unbiased before
    the clip). With every pair replayed (``warp_pairs >= meta_interval``) the warp Adam gets
    the summed Algorithm 2 meta-gradient of the whole interval (up to clipping); with 2 pairs
    it costs what ``algorithm2`` costs. ``algorithm2`` and ``algorithm2_detached`` instead use
    only the sampled pairs' direct terms, a sample of what ``two_timescale`` sums.
    """

    name = "algorithm2_interval"

    def __init__(self, ctx: WarpContext) -> None:
        super().__init__(ctx)
        # Sums the direct warp gradients since the last warp step (its step() is not used).
        self.schedule = TwoTimescale(ctx)

    def record(self, episode: int, rollout: Rollout, fast_step: bool) -> None:
        self.schedule.record(episode, rollout, fast_step)
        super().record(episode, rollout, fast_step)

    def second_order_loss(self, first: EpisodeRecord, second: EpisodeRecord) -> torch.Tensor:
        """The meta-loss with ``phi`` held constant in episode ``k + 1``'s forward pass: its
        gradient with respect to ``phi`` is the second-order term alone."""
        phi = {n: p.detach() for n, p in zip(self.warp_names, self.ctx.warp_params, strict=True)}
        return self.replay_loss({**self.stepped_fast_weights(first), **phi}, second)

    def step(self, episode: int) -> bool:
        if not self.is_warp_step(episode):
            return False
        ctx = self.ctx
        pairs = self.pairs(episode)
        chosen = self.choose(pairs, episode)
        direct_sum = self.schedule.warp_grad_sum
        if chosen:  # .grad = the clipped mean of the replayed second-order terms
            self.replayed_gradient(chosen, self.second_order_loss)
        for p, direct in zip(ctx.warp_params, direct_sum, strict=True):
            p.grad = direct + len(pairs) * p.grad if chosen else direct.clone()
        if not all(bool(torch.isfinite(p.grad).all()) for p in ctx.warp_params):
            raise FloatingPointError(f"non-finite {self.name} meta-gradient at episode {episode}")
        ctx.warp_opt.step()
        for g in direct_sum:
            g.zero_()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.schedule.load_state_dict(state)


#: ``--warp-objective`` name -> class.
WARP_OBJECTIVES: dict[str, type[WarpObjective]] = {
    TwoTimescale.name: TwoTimescale,
    Algorithm2.name: Algorithm2,
    Algorithm2Detached.name: Algorithm2Detached,
    Algorithm2Interval.name: Algorithm2Interval,
}


def make_warp_objective(name: str, ctx: WarpContext) -> WarpObjective:
    """The objective called ``name`` (one of :data:`WARP_OBJECTIVES`)."""
    if name not in WARP_OBJECTIVES:
        raise ValueError(f"unknown warp objective {name!r}; accepted: "
                         f"{', '.join(WARP_OBJECTIVES)}")
    return WARP_OBJECTIVES[name](ctx)


__all__ = [
    "WARP_OBJECTIVES",
    "Algorithm2",
    "Algorithm2Detached",
    "Algorithm2Interval",
    "EpisodeRecord",
    "TwoTimescale",
    "WarpContext",
    "WarpObjective",
    "make_warp_objective",
]
