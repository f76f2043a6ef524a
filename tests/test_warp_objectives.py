"""The meta-gradients of warp_rl against plain autograd, finite differences and by-hand Leap.

The reference below does not use warp_rl or torch.func: it writes the tiny model's forward pass
by hand (two adaptable linear layers with a warp linear layer between) and differentiates
Algorithm 2 with ``torch.autograd.grad(create_graph=True)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import warp_rl

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Tiny(nn.Module):
    """x (B, 3) -> fc1 (adapt) -> tanh -> warp -> tanh -> fc2 (adapt) -> (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.warp = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.warp(torch.tanh(self.fc1(x)))))


ADAPT = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
WARP = ("warp.weight", "warp.bias")


def ref_loss(t: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the Tiny model written out by hand."""
    h = torch.tanh(x @ t["fc1.weight"].T + t["fc1.bias"])
    h = torch.tanh(h @ t["warp.weight"].T + t["warp.bias"])
    out = h @ t["fc2.weight"].T + t["fc2.bias"]
    return ((out - y) ** 2).mean()


def ref_algorithm2(theta, phi, b1, b2, alpha, mu=None, mom=None, detach=False) -> torch.Tensor:
    """L(theta - alpha * (mu * m + grad L(theta; b1)); b2), differentiable in phi/alpha/mu
    (with ``detach``, the inner gradient is a constant, as in the original code)."""
    th = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    inner = ref_loss({**th, **phi}, *b1)
    grads = torch.autograd.grad(inner, [th[k] for k in ADAPT], create_graph=not detach)
    stepped = {}
    for i, (k, g) in enumerate(zip(ADAPT, grads, strict=True)):
        direction = g if mu is None else mu[i] * mom[k] + g
        stepped[k] = th[k].detach() - alpha[i] * direction
    return ref_loss({**stepped, **phi}, *b2)


class FixedTask:
    """Adapts on ``steps`` random batches; the meta-objective always gets ``b1`` then ``b2``."""

    def __init__(self, b1, b2, steps: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.b1, self.b2 = b1, b2
        self.batches = [
            (torch.randn(6, 3, generator=g, dtype=DT), torch.randn(6, 2, generator=g, dtype=DT))
            for _ in range(steps)
        ]

    def __iter__(self):
        return iter(self.batches)

    def sample_batches(self, num: int, generator: torch.Generator):
        half = num // 2 if num > 1 else num
        xs = [self.b1[0]] * half + [self.b2[0]] * (num - half)
        ys = [self.b1[1]] * half + [self.b2[1]] * (num - half)
        return torch.stack(xs), torch.stack(ys)


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 3, generator=g, dtype=DT), torch.randn(5, 2, generator=g, dtype=DT)


def _adapted_warp(objective: str, learn: bool = False, momentum: float = 0.0, tasks: int = 2,
                  batching: str = "loop"):
    """A Warp over Tiny (float64) after adapting ``tasks`` FixedTasks with collection on."""
    torch.manual_seed(0)
    net = Tiny().to(DT)
    updater = warp_rl.DualUpdater(
        nn.MSELoss(), warp_objective=objective, init_objective=None, meta_batch_size=None,
        batching=batching,
    )
    model = warp_rl.Warp(
        net, [net.fc1, net.fc2], [net.warp], updater, warp_rl.ReplayBuffer(),
        step_size=0.3, momentum=momentum, learn_step_size=learn, learn_momentum=learn,
    )
    with torch.no_grad():  # distinct per-tensor step sizes / momenta, to catch index mix-ups
        model.step_size.copy_(torch.tensor([0.3, 0.2, 0.25, 0.35]))
        if momentum:
            model.momentum.copy_(torch.tensor([0.5, 0.4, 0.6, 0.3]))
    b1, b2 = _batch(1), _batch(2) if objective.startswith("algorithm2") else _batch(1)
    for t in range(tasks):
        task = FixedTask(b1, b2, seed=10 + t)
        model.init_adaptation()
        model.register_task(task)
        model.collect()
        opt = model.adapt_optimizer()
        for x, y in task:
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        model.no_collect()
    return model, net, b1, b2


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_algorithm2_matches_autograd_reference(batching: str) -> None:
    model, net, b1, b2 = _adapted_warp("algorithm2", batching=batching)
    states = [s for rec in model.buffer.tasks for s in rec.states]
    assert len(states) == 2 * 5  # theta_0..theta_4 per task
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()
           if k in WARP}
    alpha = model.step_size.detach()
    loss = sum(ref_algorithm2(s.params, phi, b1, b2, alpha) for s in states) / len(states)
    ref = torch.autograd.grad(loss, [phi[k] for k in WARP])
    info = model.backward()
    assert info.num_states == len(states) and info.num_steps == 0
    assert info.meta_loss == pytest.approx(loss.item(), rel=1e-10)
    for k, r in zip(WARP, ref, strict=True):
        torch.testing.assert_close(dict(net.named_parameters())[k].grad, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_detached_algorithm2_matches_its_reference_and_drops_the_second_order_term(
    batching: str,
) -> None:
    model, net, b1, b2 = _adapted_warp("algorithm2_detached", batching=batching)
    states = [s for rec in model.buffer.tasks for s in rec.states]
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()
           if k in WARP}
    alpha = model.step_size.detach()

    def reference(detach: bool) -> tuple[torch.Tensor, ...]:
        loss = sum(ref_algorithm2(s.params, phi, b1, b2, alpha, detach=detach)
                   for s in states) / len(states)
        return torch.autograd.grad(loss, [phi[k] for k in WARP])

    ref, full = reference(True), reference(False)
    model.backward()
    for k, r, f in zip(WARP, ref, full, strict=True):
        got = dict(net.named_parameters())[k].grad
        torch.testing.assert_close(got, r, rtol=1e-9, atol=1e-12)
        assert (got - f).abs().max() > 1e-6  # the second-order term is really gone


def test_first_order_matches_autograd_reference() -> None:
    model, net, b1, _ = _adapted_warp("first_order")
    states = [s for rec in model.buffer.tasks for s in rec.states]
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()
           if k in WARP}
    loss = sum(ref_loss({**s.params, **phi}, *b1) for s in states) / len(states)
    ref = torch.autograd.grad(loss, [phi[k] for k in WARP])
    model.backward()
    for k, r in zip(WARP, ref, strict=True):
        torch.testing.assert_close(dict(net.named_parameters())[k].grad, r, rtol=1e-9, atol=1e-12)


def test_learned_step_size_and_momentum_gradients() -> None:
    model, net, b1, b2 = _adapted_warp("algorithm2", learn=True, momentum=0.5)
    states = [s for rec in model.buffer.tasks for s in rec.states]
    # momentum buffers were stored: zero at theta_0, then the optimiser's buffers
    assert all(float(v.abs().sum()) == 0 for v in states[0].momentum_buffers.values())
    assert any(float(v.abs().sum()) > 0 for v in states[2].momentum_buffers.values())
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()
           if k in WARP}
    alpha = model.step_size.detach().clone().requires_grad_(True)
    mu = model.momentum.detach().clone().requires_grad_(True)
    loss = sum(
        ref_algorithm2(s.params, phi, b1, b2, alpha, mu, s.momentum_buffers) for s in states
    ) / len(states)
    ref = torch.autograd.grad(loss, [phi[k] for k in WARP] + [alpha, mu])
    model.backward()
    got = [dict(net.named_parameters())[k].grad for k in WARP]
    got += [model.step_size.grad, model.momentum.grad]
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    assert {n for n, _ in model.named_meta_parameters()} >= {"step_size", "momentum"}


def test_algorithm2_agrees_with_finite_differences() -> None:
    model, net, b1, b2 = _adapted_warp("algorithm2", tasks=1)
    states = [s for rec in model.buffer.tasks for s in rec.states]
    phi0 = {k: v.detach().clone() for k, v in net.named_parameters() if k in WARP}
    alpha = model.step_size.detach()

    def meta_loss(phi: dict[str, torch.Tensor]) -> float:
        total = sum(ref_algorithm2(s.params, phi, b1, b2, alpha) for s in states)
        return float(total.detach()) / len(states)

    model.backward()
    analytic = net.warp.weight.grad
    eps = 1e-6
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        plus = {k: v.clone() for k, v in phi0.items()}
        minus = {k: v.clone() for k, v in phi0.items()}
        plus["warp.weight"][i, j] += eps
        minus["warp.weight"][i, j] -= eps
        fd = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
        assert analytic[i, j].item() == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_leap_gradient_is_normalised_path_sum() -> None:
    torch.manual_seed(0)
    net = Tiny().to(DT)
    updater = warp_rl.DualUpdater(nn.MSELoss(), warp_objective=None, init_objective="leap")
    model = warp_rl.Warp(net, [net.fc1, net.fc2], [net.warp], updater,
                         warp_rl.ReplayBuffer(max_states_per_task=2))  # cap must not matter
    assert model.learn_init
    expected = {k: torch.zeros_like(p) for k, p in net.named_parameters() if k in ADAPT}
    num_tasks = 3
    for t in range(num_tasks):
        task = FixedTask(_batch(0), _batch(0), steps=5, seed=t)
        model.init_adaptation()
        model.register_task(task)
        model.collect()
        opt = torch.optim.SGD(model.adapt_parameters(), lr=0.2)
        path = [{k: p.detach().clone() for k, p in net.named_parameters() if k in ADAPT}]
        for x, y in task:
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            path.append({k: p.detach().clone() for k, p in net.named_parameters()
                         if k in ADAPT})
        model.eval()
        model.no_collect()
        for a, b in itertools.pairwise(path):
            norm = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in ADAPT))
            for k in ADAPT:
                expected[k] += (a[k] - b[k]) / norm / num_tasks
    init_before = [p.detach().clone() for p in model.init_parameters()]
    meta_opt = torch.optim.SGD(model.meta_parameters(), lr=0.1)
    info = model.backward(meta_opt.step)
    assert info.num_steps == 1
    for k, p, p0 in zip(ADAPT, model.init_parameters(), init_before, strict=True):
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.detach(), p0 - 0.1 * expected[k])
    # the next task starts from the meta-learned initialisation
    model.init_adaptation()
    for p, p0 in zip(model.adapt_parameters(), model.init_parameters(), strict=True):
        assert torch.equal(p, p0)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.LayerNorm])
def test_vmap_and_loop_agree_with_normalisation_layers(norm: type[nn.Module]) -> None:
    """Guards the batch-norm / layer-norm workaround (PyTorch's batched second-order bug)."""
    grads = []
    for batching in ("loop", "vmap"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 6), norm(6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(),
                            nn.Linear(6, 2)).to(DT)
        updater = warp_rl.DualUpdater(nn.MSELoss(), init_objective=None, meta_batch_size=None,
                                      batching=batching, seed=3)
        model = warp_rl.Warp(net, [net[0], net[1], net[5]], [net[3]], updater,
                             warp_rl.ReplayBuffer())
        x = torch.randn(40, 3, dtype=DT)
        task = warp_rl.TensorTask(x, torch.randn(40, 2, dtype=DT), batch_size=8, steps=3)
        model.init_adaptation()
        model.register_task(task)
        model.collect()
        opt = torch.optim.SGD(model.adapt_parameters(), lr=0.3)
        for xb, yb in task:
            nn.functional.mse_loss(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
        model.no_collect()
        info = model.backward()
        assert info.batching == batching
        grads.append([p.grad.clone() for p in model.warp_parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_auto_batching_falls_back_to_the_loop_when_vmap_disagrees(monkeypatch) -> None:
    """'auto' checks vmap against the loop once; a wrong vmap result means: loop, with a warning."""
    real = warp_rl.objectives.meta_gradient

    def wrong_when_vmapped(state_loss, meta, states, data, use_vmap, chunk_size=None):
        grads, losses = real(state_loss, meta, states, data, use_vmap, chunk_size)
        if use_vmap:
            grads = torch.utils._pytree.tree_map(lambda g: g * 1.1, grads)
        return grads, losses

    monkeypatch.setattr(warp_rl.objectives, "meta_gradient", wrong_when_vmapped)
    model, net, b1, b2 = _adapted_warp("algorithm2", batching="auto")
    states = [s for rec in model.buffer.tasks for s in rec.states]
    phi = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()
           if k in WARP}
    alpha = model.step_size.detach()
    loss = sum(ref_algorithm2(s.params, phi, b1, b2, alpha) for s in states) / len(states)
    ref = torch.autograd.grad(loss, [phi[k] for k in WARP])
    with pytest.warns(RuntimeWarning, match="differ from the loop"):
        info = model.backward()
    assert info.batching == "loop"
    for k, r in zip(WARP, ref, strict=True):
        torch.testing.assert_close(dict(net.named_parameters())[k].grad, r, rtol=1e-9, atol=1e-12)
