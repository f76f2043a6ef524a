"""Every Omniglot meta-learner on tiny synthetic tasks: one meta-step, what it changes, and
the meta-gradients checked against independent computations."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from warp_rl.omniglot.meta_learners import (
    METHODS,
    OptimConfig,
    TaskResults,
    make_learner,
)
from warp_rl.omniglot.models import WarpConfig
from warp_rl.omniglot.tasks import TaskPool

STEPS, BATCH, FILTERS = 3, 10, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pool(num_tasks: int = 3, dtype=torch.float32, binary: bool = True) -> TaskPool:
    """Random images; binary ones look like ink, continuous ones avoid exact max-pool ties."""
    g = torch.Generator().manual_seed(0)
    train = torch.rand(num_tasks, 20, 15, 28, 28, generator=g, dtype=torch.float64)
    test = torch.rand(num_tasks, 20, 5, 28, 28, generator=g, dtype=torch.float64)
    if binary:
        train, test = (train > 0.8).to(dtype), (test > 0.8).to(dtype)
    pool = TaskPool.from_tensors([f"a{i}" for i in range(num_tasks)], train, test)
    pool.train_images, pool.test_images = pool.train_images.to(dtype), pool.test_images.to(dtype)
    return pool


def tasks(pool: TaskPool, ids=(0, 1), steps: int = STEPS, seed: int = 0):
    return pool.sample(torch.tensor(ids), steps, BATCH, torch.Generator().manual_seed(seed))


def learner(method: str, outer_lr: float = 0.1, seed: int = 0, **kw):
    warp = {}
    if method.startswith("warp"):
        warp = dict(warp=WarpConfig(filters=FILTERS), meta_batch_size=4)
    kw = {"num_filters": FILTERS, **kw}
    return make_learner(method, OptimConfig("sgd", 0.1), OptimConfig("sgd", outer_lr), seed=seed,
                        num_pretrain=3, **warp, **kw)


def snapshot(sd):
    """Deep copy of a (nested) state dict's tensors."""
    return copy.deepcopy(sd)


def tensors(sd, prefix=""):
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out.update(tensors(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
    return out


def changed(before, after):
    a, b = tensors(before), tensors(after)
    return {k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "no"])
def test_one_meta_step_changes_only_what_is_meta_learned(method):
    pool = tiny_pool()
    lr = learner(method)
    before = snapshot(lr.state_dict())
    res = lr.meta_step(tasks(pool))
    assert isinstance(res, TaskResults)
    assert res.train_loss.shape == res.train_acc.shape == (2, STEPS)
    assert res.test_acc.shape == (2,) and torch.isfinite(res.train_loss).all()
    diff = changed(before, lr.state_dict())
    if method in ("reptile", "fomaml", "leap", "maml"):
        assert any(k.startswith("init_model.blocks.0.0.weight") for k in diff)
    if method == "ft":
        assert "backbone.blocks.0.0.weight" in diff
        assert {"heads.0.weight", "heads.1.weight"} <= diff and "heads.2.weight" not in diff
    if method.startswith("warp"):
        assert "warp.model.warps.0.0.conv.weight" in diff
        assert ("warp.init.0" in diff) == (method == "warp_leap")
        info = lr.last_info
        assert info.num_states == 2 * (STEPS + 1)  # theta_0 ... theta_K of both tasks
        assert info.num_steps == 2 + (method == "warp_leap")  # 8 states / 4, + the Leap step


@pytest.mark.parametrize("method", METHODS)
def test_evaluate_leaves_meta_state_alone_and_is_repeatable(method):
    pool = tiny_pool()
    lr = learner(method)
    before = snapshot(lr.state_dict())
    a = lr.evaluate(tasks(pool, ids=(2, 0)))
    b = lr.evaluate(tasks(pool, ids=(2, 0)))
    diff = changed(before, lr.state_dict())
    meta = {k for k in diff if not k.startswith(("model.", "warp.model."))}
    # the task model's adaptable weights move; nothing meta-learned does (warp weights included)
    assert {k for k in meta if "warps" in k or k.startswith(("init", "backbone", "heads"))} == set()
    assert torch.equal(a.test_acc, b.test_acc) and torch.equal(a.train_loss, b.train_loss)
    assert a.train_acc.shape == (2, STEPS) and a.task_ids.tolist() == [2, 0]
    if method == "no":
        with pytest.raises(RuntimeError, match="no meta-training"):
            lr.meta_step(tasks(pool))


def test_reptile_moves_the_init_to_the_mean_adapted_weights():
    pool = tiny_pool()
    lr = learner("reptile", outer_lr=1.0)
    batch = tasks(pool)
    finals = []
    for i in range(2):  # adapt each task independently from the same init
        lr.adapt(batch.task(i))
        finals.append({n: p.detach().clone() for n, p in lr.model.named_parameters()})
    lr.meta_step(batch)
    for n, p in lr.init_model.named_parameters():
        torch.testing.assert_close(p.detach(), (finals[0][n] + finals[1][n]) / 2)


def test_leap_gradient_is_the_mean_normalised_path():
    pool = tiny_pool()
    lr = learner("leap", outer_lr=1.0)
    batch = tasks(pool, steps=2)
    init = {n: p.detach().clone() for n, p in lr.init_model.named_parameters()}
    expect = {n: torch.zeros_like(p) for n, p in init.items()}
    for i in range(2):
        path = [init]
        lr.adapt(batch.task(i), after_step=lambda path=path: path.append(
            {n: p.detach().clone() for n, p in lr.model.named_parameters()}))
        for a, b in itertools.pairwise(path):
            norm = torch.sqrt(sum(((a[n] - b[n]).double() ** 2).sum() for n in a))
            for n in a:
                expect[n] += (a[n] - b[n]) / norm / 2
    lr.meta_step(batch)
    for n, p in lr.init_model.named_parameters():
        torch.testing.assert_close(p.detach(), init[n] - expect[n], rtol=1e-4, atol=1e-6)


def test_maml_meta_gradient_matches_finite_differences():
    """The unrolled meta-gradient against central differences of an independent computation.

    ReLU and max-pool make the adapted loss only piecewise smooth (its gradient jumps), so the
    check swaps them for Softplus and average pooling: the unrolling is what is tested.
    """
    pool = tiny_pool(2, dtype=torch.float64, binary=False)
    lr = learner("maml", outer_lr=1.0)
    for m in (lr.model, lr.init_model):
        for block in m.blocks:
            block[1], block[3] = torch.nn.AvgPool2d(2), torch.nn.Softplus()
        m.double()
    lr.outer_opt = torch.optim.SGD(lr.init_model.parameters(), lr=1.0)
    batch = tasks(pool, ids=(0,), steps=2)
    init = {n: p.detach().clone() for n, p in lr.init_model.named_parameters()}
    net = copy.deepcopy(lr.model)

    def held_out_loss(params) -> float:
        """Independent reference: 2 steps of torch.optim.SGD, then the query loss (train mode)."""
        net.load_state_dict(params, strict=False)
        net.reset_batch_norm()
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for k in range(2):
            x, y = batch.train_batch(k)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[0]), y[0]).backward()
            opt.step()
        xt, yt = batch.test_set()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(net(xt[0]), yt[0]).item()

    g = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in init.items()}
    eps = 1e-6
    plus = held_out_loss({n: init[n] + eps * direction[n] for n in init})
    minus = held_out_loss({n: init[n] - eps * direction[n] for n in init})
    lr.meta_step(batch)
    grad = {n: init[n] - p.detach() for n, p in lr.init_model.named_parameters()}
    analytic = sum((grad[n] * direction[n]).sum() for n in init).item()
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-5)


def test_maml_refuses_adam_and_ft_refuses_warp():
    with pytest.raises(ValueError, match="maml unrolls plain SGD only"):
        make_learner("maml", OptimConfig("adam", 0.001), OptimConfig())
    with pytest.raises(ValueError, match="warp-layer options apply to warp_leap and warp"):
        make_learner("reptile", OptimConfig(), OptimConfig(), warp=WarpConfig())
    with pytest.raises(ValueError, match="meta-model 'metasgd' unknown"):
        make_learner("metasgd", OptimConfig(), OptimConfig())


def test_warp_state_cap_and_first_order_objective():
    pool = tiny_pool()
    lr = learner("warp", max_states=2, objective="first_order")
    lr.meta_step(tasks(pool))
    assert lr.last_info.num_states == 4 and lr.last_info.num_steps == 1


@pytest.mark.parametrize("method", ["warp_leap", "reptile", "maml"])
def test_grad_sync_sees_every_outer_step(method):
    pool = tiny_pool()
    lr = learner(method)
    calls = []

    def sync(params):  # e.g. averaging over ranks; here: record, then halve every gradient
        calls.append(sum(p.grad is not None for p in params))
        for p in params:
            if p.grad is not None:
                p.grad.mul_(0.5)

    lr.grad_sync = sync
    before = snapshot(lr.state_dict())
    lr.meta_step(tasks(pool))
    plain = learner(method)
    plain.meta_step(tasks(pool))
    expected_calls = lr.last_info.num_steps if method == "warp_leap" else 1
    assert len(calls) == expected_calls and all(c > 0 for c in calls)
    # the halved gradients moved the meta-parameters less than the plain learner did
    key = "warp.model.warps.0.0.conv.weight" if method == "warp_leap" else (
        "init_model.blocks.0.0.weight")
    b, a, p = (tensors(sd)[key] for sd in (before, lr.state_dict(), plain.state_dict()))
    assert 0 < (a - b).norm() < (p - b).norm()


def test_select_keeps_the_draws():
    pool = tiny_pool()
    batch = tasks(pool, ids=(2, 0, 1))
    sub = batch.select(slice(1, 3))
    assert sub.task_ids.tolist() == [0, 1] and sub.num_tasks == 2
    assert torch.equal(sub.train_batch(2)[0], batch.train_batch(2)[0][1:])
    assert torch.equal(sub.test_set()[0], batch.test_set()[0][1:])


# --------------------------------------------------------------------------- the original's choices


def _start_heads(lr, run):
    """Heads and conv weights the model starts each task with while ``run()`` executes."""
    starts = []
    adapt = lr.adapt_from_here

    def spy(task, after_step=None):
        starts.append((lr.model.head.weight.detach().clone(),
                       lr.model.blocks[0][0].weight.detach().clone()))
        return adapt(task, after_step)

    lr.adapt_from_here = spy
    run()
    lr.adapt_from_here = adapt
    return starts


@pytest.mark.parametrize("method", ["leap", "reptile", "fomaml"])
def test_fresh_task_heads(method):
    pool = tiny_pool()
    learned, fresh = learner(method), learner(method, task_head="fresh")
    init_head = fresh.init_model.head.weight.detach().clone()
    init_conv = fresh.init_model.blocks[0][0].weight.detach().clone()
    # default: every task starts from the learned initialisation, head included
    learned_head = learned.init_model.head.weight.detach().clone()
    for head, _ in _start_heads(learned, lambda: learned.meta_step(tasks(pool))):
        assert torch.equal(head, learned_head)
    # fresh: a new head per meta-training task, the learned body
    starts = _start_heads(fresh, lambda: fresh.meta_step(tasks(pool)))
    assert len(starts) == 2 and not torch.equal(starts[0][0], starts[1][0])
    for head, conv in starts:
        assert not torch.equal(head, init_head) and torch.equal(conv, init_conv)
        assert head.abs().max() <= 1 / FILTERS**0.5  # nn.Linear's initialisation range
    # the initialisation's head is not meta-learned (never used); its body is
    assert torch.equal(fresh.init_model.head.weight, init_head)
    assert not torch.equal(fresh.init_model.blocks[0][0].weight, init_conv)
    # evaluation: one fixed fresh head for every task and every call, restored on resume
    evals = _start_heads(fresh, lambda: [fresh.evaluate(tasks(pool, ids=(2, 0)))
                                         for _ in range(2)])
    assert len(evals) == 4 and all(torch.equal(h, evals[0][0]) for h, _ in evals)
    assert not torch.equal(evals[0][0], fresh.init_model.head.weight)
    other = learner(method, task_head="fresh", seed=5)
    other.load_state_dict(fresh.state_dict())
    a, b = fresh.evaluate(tasks(pool)), other.evaluate(tasks(pool))
    assert torch.equal(a.test_loss, b.test_loss)


def test_fresh_head_no_baseline_and_refusals():
    lr = learner("no", task_head="fresh")
    (head, _), = _start_heads(lr, lambda: lr.evaluate(tasks(tiny_pool(), ids=(1,))))
    assert not torch.equal(head, lr.init_model.head.weight)
    with pytest.raises(ValueError, match=r"task_head='fresh' applies to"):
        learner("warp_leap", task_head="fresh")
    with pytest.raises(ValueError, match=r"ft_heads='shared' applies to 'ft'"):
        learner("leap", ft_heads="shared")
    with pytest.raises(ValueError, match=r"task_head 'new' unknown"):
        learner("leap", task_head="new")


@pytest.mark.parametrize("heads", ["per_alphabet", "shared"])
def test_ft_heads(heads):
    pool = tiny_pool()
    lr = learner("ft", ft_heads=heads)
    assert len(lr.heads) == (1 if heads == "shared" else 3)
    before = snapshot(lr.state_dict())
    lr.meta_step(tasks(pool, ids=(1, 2)))  # alphabet 0 is not in the meta-batch
    diff = changed(before, lr.state_dict())
    # a shared head is trained by every alphabet; per-alphabet heads only by their own
    assert ("heads.0.weight" in diff) == (heads == "shared")
    if heads == "per_alphabet":
        assert {"heads.1.weight", "heads.2.weight"} <= diff


def test_registry_names_every_learner_and_data_parallel_refuses_ft():
    from warp_rl.omniglot.distributed import DataParallelLearner
    from warp_rl.omniglot.meta_learners import LEARNERS

    assert METHODS == tuple(LEARNERS)
    for name, cls in LEARNERS.items():
        lr = learner(name)
        assert type(lr) is cls and lr.name == name == cls.name
        assert (lr.model.warp_config is not None) == cls.warped
        assert lr.random_streams()["learner"] is lr.generator
    with pytest.raises(ValueError, match="ft cannot run on several processes"):
        DataParallelLearner(learner("ft"), seed=0)
