"""The maze trainer's warp objectives: two_timescale, algorithm2, algorithm2_detached and
algorithm2_interval."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_agent_trainer import assert_same_run, resume_run, small, train_run

from agents import make_agent, warp_objectives
from agents.a2c import A2CLoss, a2c_loss, discounted_returns
from agents.rollout import Rollout
from agents.trainer import Trainer, load_checkpoint, make_optimizers
from agents.warp_objectives import WARP_OBJECTIVES, Algorithm2, WarpContext, make_warp_objective
from agents.warp_rnn import WarpRNNAgent
from warp_rl.objectives import adam_step
from warp_rl.utils import seed_everything

D, A, H, T, B = 17, 4, 5, 5, 3


def test_adam_step_is_torch_adam():
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    for k in range(4):
        g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        g[0] = 0.0  # a row that never has a gradient: v stays 0
        st = opt.state.get(p, {})
        before = {"w": p.detach().clone()}
        m = st["exp_avg"].clone() if st else torch.zeros_like(p)
        v = st["exp_avg_sq"].clone() if st else torch.zeros_like(p)
        expected = adam_step(before, {"w": g}, {"w": m}, {"w": v}, k, 0.05, (0.8, 0.99), 1e-6)
        p.grad = g
        opt.step()
        torch.testing.assert_close(expected["w"], p.detach(), rtol=1e-13, atol=1e-15)
    # The zero-gradient row has a finite (zero) derivative through the step.
    g = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    out = adam_step({"w": p.detach()}, {"w": g}, {"w": torch.zeros_like(g)},
                    {"w": torch.zeros_like(g)}, 0, 0.1)["w"].sum()
    (grad,) = torch.autograd.grad(out, g)
    assert torch.isfinite(grad).all()


def episode(seed: int) -> Rollout:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.rand(T, B, D, generator=gen, dtype=torch.float64)
    actions = torch.randint(A, (T, B), generator=gen)
    rewards = (torch.rand(T, B, generator=gen, dtype=torch.float64) < 0.3).double() * 10
    return Rollout(None, None, actions, rewards, obs)


def objective_on_two_episodes(name: str, max_grad_norm: float, gates: str = "tanh"):
    """A float64 agent whose fast Adam has taken one step, and episodes k, k + 1 recorded."""
    torch.manual_seed(0)
    agent = WarpRNNAgent(D, A, H, gates=gates).double()
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.3 * torch.randn_like(p))
    part, fast_opt, warp_opt = make_optimizers(agent, lr=0.05, warp_lr=0.01)
    fast = part.adapt_parameters()
    for p in fast:
        p.grad = torch.randn_like(p)
    fast_opt.step()
    ctx = WarpContext(agent=agent, fast_params=fast, warp_params=part.warp_parameters(),
                      fast_opt=fast_opt, warp_opt=warp_opt, meta_interval=2, warmup_episodes=0,
                      max_grad_norm=max_grad_norm, gamma=0.9, value_coef=0.1,
                      penalty_coef=0.03, warp_pairs=1, seed=0)
    objective = make_warp_objective(name, ctx)
    for p in ctx.warp_params:  # what the trainer leaves for record (algorithm2_interval sums it)
        p.grad = torch.zeros_like(p)
    objective.record(0, episode(1), fast_step=True)
    objective.record(1, episode(2), fast_step=True)
    return objective, agent, part, fast_opt


def direct_meta_loss(agent, part, fast_opt, rec_k, rec_k1, max_grad_norm: float,
                     second_order: bool) -> torch.Tensor:
    """The meta-loss written out independently: replay, clip, Adam by hand."""
    names = {id(p): n for n, p in agent.named_parameters()}
    phi = {names[id(p)]: p for p in part.warp_parameters()}
    fast = part.adapt_parameters()
    theta = {names[id(p)]: p.detach().clone().requires_grad_() for p in fast}

    def loss(params, rec: Rollout) -> torch.Tensor:
        state, logits, values = agent.initial_state(B), [], []
        for t in range(T):
            out = torch.func.functional_call(agent, {**params, **phi}, (rec.observations[t],
                                                                       state))
            logits.append(out[0])
            values.append(out[1])
            state = out[2]
        return a2c_loss(torch.stack(logits), torch.stack(values), rec.actions, rec.rewards,
                        0.9, 0.1, 0.03).total

    grads = torch.autograd.grad(loss(theta, rec_k), list(theta.values()),
                                create_graph=second_order)
    if not second_order:
        grads = [g.detach() for g in grads]
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    scale = torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)
    stepped = {}
    for (name, th), g, p in zip(theta.items(), grads, fast, strict=True):
        st = fast_opt.state[p]
        t = int(st["step"]) + 1
        g = g * scale
        m = 0.9 * st["exp_avg"] + 0.1 * g
        v = 0.999 * st["exp_avg_sq"] + 0.001 * g * g
        stepped[name] = th.detach() - 0.05 / (1 - 0.9 ** t) * m / (
            v.sqrt() / (1 - 0.999 ** t) ** 0.5 + 1e-8)
    return loss(stepped, rec_k1)


@pytest.mark.parametrize("max_grad_norm", [1e3, 0.05])  # clipping off / active
@pytest.mark.parametrize("name", ["algorithm2", "algorithm2_detached"])
def test_meta_gradient_equals_direct_autograd_and_finite_differences(name, max_grad_norm):
    objective, agent, part, fast_opt = objective_on_two_episodes(name, max_grad_norm)
    first, second = objective.records
    warp = part.warp_parameters()
    got = torch.autograd.grad(objective.meta_loss(first, second), warp)
    ref = torch.autograd.grad(direct_meta_loss(agent, part, fast_opt, episode(1), episode(2),
                                               max_grad_norm, name == "algorithm2"), warp)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    assert max(float(g.abs().max()) for g in got) > 1e-6


def smooth_a2c_loss(logits, values, actions, rewards, gamma, value_coef, penalty_coef):
    """The A2C loss without its stop-gradient on the advantage: a smooth function whose
    derivative finite differences can check (the real loss's gradient is, by design, not the
    derivative of its value)."""
    returns = discounted_returns(rewards.to(values.dtype), gamma)
    advantages = returns - values
    log_probs = torch.log_softmax(logits, dim=-1)
    taken = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    total = (-(taken * advantages).mean() + value_coef * advantages.pow(2).mean()
             + penalty_coef * log_probs.exp().pow(2).sum(-1).mean())
    return A2CLoss(total, total, total, total)


@pytest.mark.parametrize("max_grad_norm", [1e3, 0.05])
def test_algorithm2_meta_gradient_matches_finite_differences(monkeypatch, max_grad_norm):
    monkeypatch.setattr(warp_objectives, "a2c_loss", smooth_a2c_loss)
    objective, _, part, _ = objective_on_two_episodes("algorithm2", max_grad_norm)
    first, second = objective.records
    warp = part.warp_parameters()
    got = torch.autograd.grad(objective.meta_loss(first, second), warp)
    gen = torch.Generator().manual_seed(5)
    eps = 1e-6
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in warp]
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(warp, direction, strict=True):
                    p.add_(sign * eps * d)
            values.append(float(objective.meta_loss(first, second).detach()))
            with torch.no_grad():
                for p, d in zip(warp, direction, strict=True):
                    p.sub_(sign * eps * d)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum(float((g * d).sum()) for g, d in zip(got, direction, strict=True))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9)


def test_second_order_term_is_what_separates_algorithm2_from_algorithm2_detached():
    a2, _, part, _ = objective_on_two_episodes("algorithm2", 1e3)
    g2 = torch.autograd.grad(a2.meta_loss(*a2.records), part.warp_parameters())
    fo, _, part_fo, _ = objective_on_two_episodes("algorithm2_detached", 1e3)
    g1 = torch.autograd.grad(fo.meta_loss(*fo.records), part_fo.warp_parameters())
    diff = max(float((a - b).abs().max()) for a, b in zip(g2, g1, strict=True))
    assert diff > 1e-8 * max(float(a.abs().max()) for a in g2)


@pytest.mark.parametrize("max_grad_norm", [1e3, 0.05])
def test_interval_correction_is_the_second_order_term_alone(max_grad_norm):
    """algorithm2_interval's replayed loss differentiates to algorithm2's meta-gradient minus
    algorithm2_detached's: the term through the inner gradient, without the direct one."""
    objective, agent, part, fast_opt = objective_on_two_episodes("algorithm2_interval",
                                                                 max_grad_norm)
    warp = part.warp_parameters()
    got = torch.autograd.grad(objective.second_order_loss(*objective.records), warp)
    full, direct = (torch.autograd.grad(direct_meta_loss(
        agent, part, fast_opt, episode(1), episode(2), max_grad_norm, second_order), warp)
        for second_order in (True, False))
    for g, f, d in zip(got, full, direct, strict=True):
        torch.testing.assert_close(g, f - d, rtol=1e-8, atol=1e-12)
    assert max(float(g.abs().max()) for g in got) > 1e-6


@pytest.mark.parametrize("warp_pairs", [2, 1])
def test_interval_objective_sums_algorithm2_over_the_interval(tmp_path, warp_pairs):
    """At a warp step the warp Adam gets the schedule's sum of the interval's recorded warp
    gradients plus P / m times the second-order terms of the m replayed pairs (of P). With
    every pair replayed that is the summed Algorithm 2 meta-gradient of the interval's pairs,
    plus the direct gradient of the one episode no pair ends in, computed here from replays
    alone (no clipping: the fast step is replayed exactly)."""
    cfg = small(agent="warp_identity_orth", warp_objective="algorithm2_interval",
                warmup_episodes=0, meta_interval=3, warp_pairs=warp_pairs, clip="separate",
                max_grad_norm=1e6, episodes=3)
    seed_everything(cfg.seed)
    agent = make_agent(cfg.agent, obs_dim=17, num_actions=4, hidden_size=cfg.hidden_size)
    tr = Trainer(cfg, tmp_path, agent=agent.double())
    objective = tr.objective
    given, expected = [], []
    real_step = tr.warp_opt.step

    def step_and_check(*args, **kwargs):
        episode = tr.episode
        given.append([p.grad.clone() for p in tr.warp_params])
        pairs = objective.pairs(episode)
        chosen = objective.choose(pairs, episode)
        # episode 0 ends no pair: its own loss's warp gradient, replayed
        first_record = objective.records[0]
        phi = dict(zip(objective.warp_names, tr.warp_params, strict=True))
        theta_0 = dict(zip(objective.fast_names, first_record.theta, strict=True))
        total = [g.clone() for g in torch.autograd.grad(
            objective.replay_loss({**theta_0, **phi}, first_record), tr.warp_params)]
        for first, second in pairs:  # the interval's Algorithm 2 meta-gradient
            for acc, g in zip(total, torch.autograd.grad(
                    Algorithm2.meta_loss(objective, first, second), tr.warp_params), strict=True):
                acc.add_(g)
        replayed = {id(first) for first, _ in chosen}
        for first, second in pairs:  # with each pair's second-order term weighted P/m or 0
            weight = (len(pairs) / len(chosen) if id(first) in replayed else 0.0) - 1.0
            for acc, g in zip(total, torch.autograd.grad(
                    objective.second_order_loss(first, second), tr.warp_params), strict=True):
                acc.add_(weight * g)
        expected.append(total)
        return real_step(*args, **kwargs)

    tr.warp_opt.step = step_and_check
    for _ in range(3):
        tr.train_episode()
    tr.close()
    assert len(given) == 1  # the warp step after episode 2
    assert [r.episode for r in objective.records] == [0, 1, 2]
    assert len(objective.choose(objective.pairs(2), 2)) == warp_pairs
    for g, e in zip(given[0], expected[0], strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-14)
    assert max(float(g.abs().max()) for g in given[0]) > 1e-6


@pytest.mark.parametrize("agent", ["warp", "warp_identity_orth"])
def test_replayed_fast_step_reproduces_the_real_one(tmp_path, agent):
    """theta' computed from episode k's record equals the fast weights that played k + 1:
    the recorded observations, actions and rewards, the loss and the Adam step all match."""
    cfg = small(agent=agent, warp_objective="algorithm2", warmup_episodes=0, meta_interval=5,
                clip="separate", max_grad_norm=1e6, episodes=3)
    tr = Trainer(cfg, tmp_path)
    for _ in range(3):
        tr.train_episode()
    tr.close()
    recs = list(tr.objective.records)
    assert [r.episode for r in recs] == [0, 1, 2]
    for first, second in itertools.pairwise(recs):
        stepped = tr.objective.stepped_fast_weights(first)
        for name, real in zip(tr.objective.fast_names, second.theta, strict=True):
            assert not torch.equal(real, dict(zip(tr.objective.fast_names, first.theta,
                                                  strict=True))[name])  # the step moved it
            torch.testing.assert_close(stepped[name].detach(), real, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(WARP_OBJECTIVES))
def test_resume_in_the_middle_of_a_warp_interval_is_exact(tmp_path, name):
    """Warp steps after episodes 4 and 7; the split at 6 leaves objective state (a non-zero
    gradient sum, recorded episodes) that a resume must restore."""
    cfg = small(agent="warp", warp_objective=name, warp_pairs=2, episodes=10,
                checkpoint_every=4)
    straight = train_run(cfg, tmp_path / "straight")
    train_run(cfg, tmp_path / "split", episodes=6)
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["warp_objective"]
    assert "warp_grad_sum" in state or "records" in state
    if "warp_grad_sum" in state:
        assert any(float(g.abs().max()) > 0 for g in state["warp_grad_sum"])
    if "records" in state:
        assert [int(r["episode"]) for r in state["records"]] == [2, 3, 4, 5]
    _, resumed_at = resume_run(tmp_path / "split", 10)
    assert resumed_at == 6
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    warp_steps = [r for r in range(10) if straight.is_warp_step(r)]
    assert warp_steps == [4, 7]


def test_algorithm2_moves_the_warp_weights_at_warp_steps_only(tmp_path):
    cfg = small(agent="warp_identity_orth", warp_objective="algorithm2", warmup_episodes=1,
                meta_interval=2, episodes=5)
    tr = Trainer(cfg, tmp_path)
    rows = []
    for _ in range(5):
        before = [p.detach().clone() for p in tr.warp_params]
        rows.append(tr.train_episode())
        moved = any(not torch.equal(b, p) for b, p in zip(before, tr.warp_params, strict=True))
        assert moved == bool(rows[-1]["warp_step"])
    tr.close()
    assert [r["warp_step"] for r in rows] == [0, 0, 1, 0, 1]


def test_unknown_objective_is_named():
    with pytest.raises(ValueError, match="warp_objective must be one of two_timescale, "
                                         "algorithm2, algorithm2_detached, "
                                         "algorithm2_interval"):
        small(warp_objective="maml").validate()
