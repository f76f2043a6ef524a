"""The original WarpGrad README flow, who moves what, the replay buffer, and bad input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import CrossEntropyLoss

import warp_rl


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Tasks:
    """Synthetic 3-way classification tasks: a random linear labelling of 5-d inputs."""

    def __init__(self, per_batch: int = 4, steps: int = 5, seed: int = 0) -> None:
        self.per_batch, self.steps = per_batch, steps
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> list[warp_rl.TensorTask]:
        tasks = []
        for _ in range(self.per_batch):
            seed = int(torch.randint(2**31, (1,), generator=self.generator))
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(48, 5, generator=g)
            y = (x @ torch.randn(5, 3, generator=g)).argmax(1)
            tasks.append(warp_rl.TensorTask(x, y, batch_size=12, steps=self.steps, seed=seed))
        return tasks


def make_model() -> tuple[nn.Module, list[nn.Module], list[nn.Module]]:
    """Interleaved layers as in the original README (with a batch-norm layer)."""
    layers = [nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
              nn.Linear(16, 3)]
    return nn.Sequential(*layers), [layers[0], layers[1], layers[5]], [layers[3]]


def test_readme_flow_runs_as_written() -> None:
    torch.manual_seed(0)
    model, adapt_layers, warp_layers = make_model()
    tasks = Tasks()
    criterion = CrossEntropyLoss()
    evaluated = []

    def evaluate(task: warp_rl.TensorTask, model: warp_rl.Warp) -> None:
        with torch.no_grad():
            evaluated.append((model(task.x).argmax(1) == task.y).float().mean().item())

    # ---- the flow of the original README, with warp_rl in place of warpgrad ----
    updater = warp_rl.DualUpdater(criterion=CrossEntropyLoss())
    buffer = warp_rl.ReplayBuffer()
    model = warp_rl.Warp(model, adapt_layers, warp_layers, updater, buffer)
    meta_opt = torch.optim.SGD(model.warp_parameters(), lr=0.1)

    def meta_step_fn() -> None:
        meta_opt.step()
        meta_opt.zero_grad()

    warp_before = [p.detach().clone() for p in model.warp_parameters()]
    for _meta_step in range(2):
        for task in tasks.sample():
            model.init_adaptation(); model.register_task(task); model.collect()  # noqa: E702
            opt = torch.optim.SGD(model.adapt_parameters(), lr=0.1)
            for x, y in task:
                loss = criterion(model(x), y); loss.backward(); opt.step(); opt.zero_grad()  # noqa: E702
            model.eval(); model.no_collect(); evaluate(task, model)  # noqa: E702
        assert len(buffer) == 4 * 6  # theta_0 .. theta_5 for each of the 4 tasks
        model.backward(meta_step_fn)  # meta_step_fn steps meta_opt
        assert len(buffer) == 0
    # ------------------------------------------------------------------------------
    assert len(evaluated) == 8
    moved = [not torch.equal(a, b) for a, b in zip(warp_before, model.warp_parameters(),
                                                   strict=True)]
    assert all(moved)


def test_original_style_criterion_class_is_accepted() -> None:
    updater = warp_rl.DualUpdater(criterion=CrossEntropyLoss)  # the original README's spelling
    assert isinstance(updater.criterion, CrossEntropyLoss)


def _adapt(model: warp_rl.Warp, task: warp_rl.TensorTask) -> None:
    opt = torch.optim.SGD(model.adapt_parameters(), lr=0.1)
    for x, y in task:
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def test_warp_never_moves_during_adaptation_and_adapt_never_during_meta_update() -> None:
    torch.manual_seed(0)
    net, adapt_layers, warp_layers = make_model()
    updater = warp_rl.DualUpdater(CrossEntropyLoss(), meta_batch_size=3)
    model = warp_rl.Warp(net, adapt_layers, warp_layers, updater, warp_rl.ReplayBuffer(),
                         learn_step_size=True)
    # an optimiser that (wrongly) holds every parameter still cannot move the warp layers
    opt_all = torch.optim.SGD(model.model.parameters(), lr=0.1)
    for task in Tasks(per_batch=2).sample():
        model.init_adaptation()
        model.register_task(task)
        model.collect()
        warp0 = [p.detach().clone() for p in model.warp_parameters()]
        adapt0 = [p.detach().clone() for p in model.adapt_parameters()]
        for x, y in task:
            nn.functional.cross_entropy(model(x), y).backward()
            opt_all.step()
            opt_all.zero_grad()
        assert all(not p.requires_grad for p in model.warp_parameters())
        assert all(torch.equal(a, b) for a, b in zip(warp0, model.warp_parameters(),
                                                     strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(adapt0, model.adapt_parameters(),
                                                         strict=True))
        model.no_collect()
    adapt1 = [t.detach().clone()
              for t in model.adapt_parameters() + model.partition.adapt_buffers()]
    warp1 = [p.detach().clone() for p in model.warp_parameters()]
    init1 = [p.detach().clone() for p in model.init_parameters()]
    meta_opt = torch.optim.SGD(model.meta_parameters(), lr=0.1)
    info = model.backward(meta_opt.step)
    assert info.num_states == 12 and info.num_steps == 4 + 1  # 4 meta-batches of 3, one Leap
    after = model.adapt_parameters() + model.partition.adapt_buffers()
    assert all(torch.equal(a, b) for a, b in zip(adapt1, after, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(warp1, model.warp_parameters(),
                                                     strict=True))
    assert not torch.equal(model.step_size.detach(), torch.full((6,), 0.1))  # learned
    # (the linear bias before batch norm gets no gradient, so its initialisation stays put)
    assert not all(torch.equal(a, b) for a, b in zip(init1, model.init_parameters(), strict=True))


def test_init_adaptation_resets_parameters_and_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    net, adapt_layers, warp_layers = make_model()
    updater = warp_rl.DualUpdater(CrossEntropyLoss(), init_objective=None)
    model = warp_rl.Warp(net, adapt_layers, warp_layers, updater, warp_rl.ReplayBuffer())
    assert not model.learn_init and len(model.meta_parameters()) == 2
    start = {k: v.clone() for k, v in net.state_dict().items()}
    model.init_adaptation()
    _adapt(model, Tasks(per_batch=1).sample()[0])
    bn = adapt_layers[1]
    assert int(bn.num_batches_tracked) == 5
    assert not torch.equal(bn.running_mean, start["1.running_mean"])
    model.init_adaptation()
    for k, v in net.state_dict().items():
        assert torch.equal(v, start[k]), k


def test_collection_stores_one_state_per_step_and_the_final_state() -> None:
    torch.manual_seed(0)
    net, adapt_layers, warp_layers = make_model()
    model = warp_rl.Warp(net, adapt_layers, warp_layers, warp_rl.DualUpdater(CrossEntropyLoss()),
                         warp_rl.ReplayBuffer())
    task = Tasks(per_batch=1, steps=3).sample()[0]
    model.init_adaptation()
    model.register_task(task)
    model.collect()
    opt = torch.optim.SGD(model.adapt_parameters(), lr=0.1)
    expected = []
    for x, y in task:
        expected.append([p.detach().clone() for p in model.adapt_parameters()])
        for _ in range(3):  # several forward passes per step store one state
            out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        model.eval()
        model(task.x)  # evaluation mode: nothing stored
    expected.append([p.detach().clone() for p in model.adapt_parameters()])
    model.no_collect()  # stores the final state
    model.train()
    model(task.x)  # not collecting: nothing stored
    states = model.buffer.tasks[0].states
    assert len(states) == 4
    for state, params in zip(states, expected, strict=True):
        for got, want in zip(state.params.values(), params, strict=True):
            assert torch.equal(got, want) and got.device.type == "cpu"


def test_replay_buffer_reservoir_cap_is_uniform_and_seeded() -> None:
    def run(seed: int, n: int = 20, cap: int = 5) -> list[int]:
        buf = warp_rl.ReplayBuffer(max_states_per_task=cap, seed=seed)
        t = buf.new_task([(torch.zeros(2, 1), torch.zeros(2))])
        for i in range(n):
            buf.add(t, warp_rl.State(params={"w": torch.tensor([float(i)])}))
        rec = buf.tasks[t]
        assert len(rec.states) == cap and rec.seen == n and len(buf) == cap
        assert rec.num_steps == n - 1
        torch.testing.assert_close(rec.displacement()["w"], torch.tensor([-(n - 1.0)]))
        torch.testing.assert_close(rec.normalised_path["w"], torch.tensor([-(n - 1.0)]))
        return sorted(int(s.params["w"]) for s in rec.states)

    assert run(7) == run(7)
    counts = torch.zeros(20)
    for seed in range(400):
        counts[run(seed)] += 1
    # each of the 20 states is kept with probability 5/20: 100 of 400 expected per index
    # (binomial sd ~8.7); a keep-the-first or keep-the-last policy would give 400 / 0
    assert counts.sum() == 2000
    assert counts.min() > 65 and counts.max() < 135, counts


def test_reservoir_cap_bounds_stored_states_through_warp() -> None:
    torch.manual_seed(0)
    net, adapt_layers, warp_layers = make_model()
    model = warp_rl.Warp(net, adapt_layers, warp_layers, warp_rl.DualUpdater(CrossEntropyLoss()),
                         warp_rl.ReplayBuffer(max_states_per_task=3))
    task = Tasks(per_batch=1, steps=10).sample()[0]
    model.init_adaptation()
    model.register_task(task)
    model.collect()
    _adapt(model, task)
    model.no_collect()
    assert len(model.buffer) == 3 and model.buffer.tasks[0].seen == 11


def test_iterable_tasks_are_cached_once() -> None:
    class CountingLoader:
        def __init__(self) -> None:
            self.iterations = 0
            g = torch.Generator().manual_seed(0)
            self.batches = [(torch.randn(6, 5, generator=g), torch.randint(3, (6,), generator=g))
                            for _ in range(4)] + [(torch.randn(2, 5), torch.randint(3, (2,)))]

        def __iter__(self):
            self.iterations += 1
            return iter(self.batches)

    torch.manual_seed(0)
    net, adapt_layers, warp_layers = make_model()
    model = warp_rl.Warp(net, adapt_layers, warp_layers,
                         warp_rl.DualUpdater(CrossEntropyLoss(), meta_batch_size=2),
                         warp_rl.ReplayBuffer(max_batches_per_task=3))
    loader = CountingLoader()
    model.init_adaptation()
    model.register_task(loader)
    model.collect()
    _adapt(model, loader)
    model.no_collect()
    cache = model.buffer.tasks[0].sampler
    assert isinstance(cache, warp_rl.CachedBatches) and len(cache) == 3
    info = model.backward(lambda: None)
    assert loader.iterations == 2  # once at registration, once by the adaptation loop
    assert info.num_states == 6 and info.num_steps == 3 + 1


def test_errors_are_clear() -> None:
    torch.manual_seed(0)
    net, adapt_layers, warp_layers = make_model()
    model = warp_rl.Warp(net, adapt_layers, warp_layers, warp_rl.DualUpdater(CrossEntropyLoss()),
                         warp_rl.ReplayBuffer())
    with pytest.raises(RuntimeError, match="replay buffer is empty"):
        model.backward(lambda: None)
    model.init_adaptation()
    model.collect()  # no register_task: nothing is stored, and backward says so
    model(torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="register_task"):
        model.backward(lambda: None)
    with pytest.raises(RuntimeError, match="no task registered"):
        model.collect_state()
    with pytest.raises(TypeError, match="one-shot iterator"):
        model.register_task(iter([(torch.zeros(1, 5), torch.zeros(1))]))
    with pytest.raises(TypeError, match=r"\(x, y\) pairs"):
        model.register_task([torch.zeros(3)])
    with pytest.raises(TypeError, match="iterable of"):
        model.register_task(3)
    with pytest.raises(ValueError, match="warp_objective"):
        warp_rl.DualUpdater(CrossEntropyLoss(), warp_objective="maml")
    with pytest.raises(ValueError, match="meta_batch_size"):
        warp_rl.DualUpdater(CrossEntropyLoss(), meta_batch_size=0)
    with pytest.raises(ValueError, match="batching"):
        warp_rl.DualUpdater(CrossEntropyLoss(), batching="threads")
    with pytest.raises(ValueError, match="max_states_per_task"):
        warp_rl.ReplayBuffer(max_states_per_task=0)
    with pytest.raises(ValueError, match="batch_size"):
        warp_rl.TensorTask(torch.zeros(4, 2), torch.zeros(4), batch_size=5)
    with pytest.raises(ValueError, match="momentum"):
        warp_rl.Warp(nn.Linear(2, 2), lambda n: True, None, warp_rl.DualUpdater(nn.MSELoss()),
                     warp_rl.ReplayBuffer(), momentum=1.0)
    with pytest.raises(TypeError, match="DualUpdater"):
        warp_rl.Warp(nn.Linear(2, 2), lambda n: True, None, nn.MSELoss(), warp_rl.ReplayBuffer())
