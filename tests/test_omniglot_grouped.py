"""--task-batching grouped against the loop, in float64: every task's own parameters, losses and
stored states after several adaptation steps, every learner's meta-gradient and random streams;
a deliberately broken grouped model (statistics shared across tasks, labels of the wrong task,
running statistics not written back) fails the same comparison; float32 accuracy; chunks; how
``auto`` decides; the script and the bench."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from warp_rl.omniglot import grouped
from warp_rl.omniglot.grouped import GroupedModel, tasks_per_chunk, use_grouped
from warp_rl.omniglot.meta_learners import OptimConfig, make_learner
from warp_rl.omniglot.models import OmniConv, WarpConfig
from warp_rl.omniglot.tasks import TaskPool

FILTERS, BATCH, STEPS = 5, 6, 4
#: warp layers with batch norm and residuals, inner momentum, learned step sizes, a capped
#: buffer: batch norm over 6 images of 1x1 pixels (the last block) amplifies round-off, so this
#: case is compared to 1e-7 of each quantity's scale instead of 1e-10
RICH_WARP = dict(warp=WarpConfig(layers=2, filters=4, residual=True, batch_norm=True,
                                 activation="relu", final_head=True),
                 momentum=0.5, learn_step_size=True, max_states=2, meta_batch_size=3)
CASES = {
    "leap": ("leap", {}), "reptile": ("reptile", {}), "fomaml": ("fomaml", {}),
    "maml": ("maml", {}), "no": ("no", {}), "ft": ("ft", {}),
    "leap-fresh-head": ("leap", {"task_head": "fresh"}),
    "warp_leap": ("warp_leap", {}), "warp": ("warp", {}),
    "warp_leap-bn-residual-momentum-learned-steps": ("warp_leap", RICH_WARP),
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool() -> TaskPool:
    """Ink-like binary images in float64 (exact ties in max-pooling included)."""
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(3, 20, 15, 28, 28, generator=g, dtype=torch.float64) > 0.8).double()
    test = (torch.rand(3, 20, 5, 28, 28, generator=g, dtype=torch.float64) > 0.8).double()
    pool = TaskPool.from_tensors(["a", "b", "c"], train, test)
    pool.train_images, pool.test_images = train, test  # (from_tensors makes them float32)
    return pool


def sample(pool: TaskPool, seed: int, ids=(0, 2, 1)):
    return pool.sample(torch.tensor(ids), STEPS, BATCH, torch.Generator().manual_seed(seed))


def learner(method: str, batching: str, **kw):
    """A float64 learner (its modules converted in place, so its optimisers stay valid)."""
    kw = dict(kw)
    inner = OptimConfig("sgd", 0.1, kw.pop("momentum", 0.0))
    if method.startswith("warp"):
        kw = {"warp": WarpConfig(filters=4), "meta_batch_size": 4, **kw}
    lr = make_learner(method, inner, OptimConfig("sgd", 0.1), seed=1, num_filters=FILTERS,
                      num_pretrain=3, task_batching=batching, **kw)
    for value in list(vars(lr).values()):
        if isinstance(value, nn.Module):
            value.double()
    return lr


def close(a, b, what: str, tol: float = 1e-10, scale: float | None = None) -> None:
    """``max |a - b| <= tol * scale`` (default scale: ``max(1, max |b|)``); integers equal."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    if not a.is_floating_point():
        assert torch.equal(a, b), what
        return
    scale = max(1.0, b.abs().max().item()) if scale is None else scale
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= tol * scale, f"{what}: max |difference| {err:.3g} > {tol:g} x {scale:.3g}"


def tensors(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(tensors(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


def compare(pool, method: str, kw: dict, tol: float = 1e-10) -> None:
    """Evaluation, then a meta-step, with the loop and grouped: results, the gradient at every
    outer step (to ``tol`` of its largest element), the state afterwards (model included) and
    the random streams agree."""
    runs = {}
    for batching in ("loop", "grouped"):
        lr = learner(method, batching, **kw)
        grads: list = []
        lr.grad_sync = lambda ps, grads=grads: grads.append([p.grad.clone() for p in ps])
        evaluated = lr.evaluate(sample(pool, 1))
        stepped = lr.meta_step(sample(pool, 2)) if lr.trains else None
        assert lr.groups(sample(pool, 2)) == (batching == "grouped")
        runs[batching] = (lr, evaluated, stepped, grads)
    (a, ea, sa, ga), (b, eb, sb, gb) = runs["loop"], runs["grouped"]
    for what, x, y in (("evaluate", ea, eb), ("meta_step", sa, sb)):
        if x is None:
            continue
        for f in ("train_loss", "test_loss", "train_acc", "test_acc", "task_ids"):
            close(getattr(x, f), getattr(y, f), f"{what} {f}", tol)
    assert len(ga) == len(gb) and (ga or method in ("no", "ft"))  # ft: no outer step
    for i, (x, y) in enumerate(zip(ga, gb, strict=True)):
        scale = max(g.abs().max().item() for g in x)
        for j, (gx, gy) in enumerate(zip(x, y, strict=True)):
            close(gy, gx, f"meta-gradient {j} of outer step {i}", tol, scale)
    if a.last_info is not None:
        assert a.last_info.num_states == b.last_info.num_states
        close(torch.tensor(b.last_info.meta_loss), torch.tensor(a.last_info.meta_loss),
              "meta-loss", tol)
    sx, sy = tensors(a.state_dict()), tensors(b.state_dict())
    assert sx.keys() == sy.keys()
    for k in sx:
        close(sy[k], sx[k], f"state {k}", tol)
    for name, gen in a.random_streams().items():
        assert torch.equal(gen.get_state(), b.random_streams()[name].get_state()), name


@pytest.mark.parametrize("case", list(CASES))
def test_grouped_matches_the_loop(pool, case):
    method, kw = CASES[case]
    compare(pool, method, kw, 1e-7 if kw is RICH_WARP else 1e-10)


def test_every_task_keeps_its_own_weights_and_stored_states(pool):
    """Per-task parameters after STEPS steps, and the replay buffer's states (parameters,
    batch-norm statistics, momentum) and Leap path statistics, task by task."""
    tasks = sample(pool, 3)
    loop, group = learner("warp_leap", "loop", **RICH_WARP), learner("warp_leap", "grouped",
                                                                      **RICH_WARP)
    finals = []
    for i in range(tasks.num_tasks):
        loop.adapt(tasks.task(i))
        finals.append({n: p.detach().clone() for n, p in loop.warp.named_adapt_parameters()})
    _, params, _ = group.adapt_grouped(tasks)
    for i, final in enumerate(finals):
        for n, p in final.items():
            close(params[n][i], p, f"task {i} {n}", 1e-7)
    # the states stored for the meta-update
    loop.warp.collect()
    for i in range(tasks.num_tasks):
        loop.adapt(tasks.task(i))
    loop.warp.no_collect()
    group._adapt_grouped_storing(tasks)
    ra, rb = loop.warp.buffer.tasks, group.warp.buffer.tasks
    assert len(ra) == len(rb) == 3
    for i, (x, y) in enumerate(zip(ra, rb, strict=True)):
        assert x.seen == y.seen == STEPS + 1 and len(x.states) == len(y.states) == 2
        for sx, sy in zip(x.states, y.states, strict=True):
            for part in ("params", "buffers", "momentum_buffers"):
                px, py = getattr(sx, part), getattr(sy, part)
                assert px.keys() == py.keys() and px
                for n in px:
                    close(py[n], px[n], f"task {i} stored {part} {n}", 1e-7)
        for n in x.normalised_path:
            close(y.normalised_path[n], x.normalised_path[n], f"task {i} Leap path {n}", 1e-7)
    assert torch.equal(loop.warp.buffer.generator.get_state(),
                       group.warp.buffer.generator.get_state())


def _shared_statistics(self, name, m, z):
    """Broken on purpose: batch statistics over every task's batch together."""
    b, tc, h, w = z.shape
    c = tc // self.t
    zz = z.reshape(b, self.t, c, h, w).transpose(0, 1).reshape(self.t * b, c, h, w)
    zz = nn.functional.batch_norm(zz, None, None, None, None, True, 0.0, m.eps)
    zz = zz.reshape(self.t, b, c, h, w).transpose(0, 1).reshape(b, tc, h, w)
    weight, bias = self._stacked(f"{name}.weight"), self._stacked(f"{name}.bias")
    return zz * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def _labels_of_the_next_task(losses):
    def wrong(self, params, buffers, x, y, *args, **kwargs):
        return losses(self, params, buffers, x, y.roll(1, dims=0), *args, **kwargs)

    return wrong


def _statistics_not_written_back(train):
    def lost(z, weight, bias, running_mean, running_var, *args):
        return train(z, weight, bias, running_mean.clone(), running_var.clone(), *args)

    return lost


@pytest.mark.parametrize("method", ["leap", "warp_leap"])
@pytest.mark.parametrize("breakage", ["shared batch-norm statistics", "labels of another task",
                                      "running statistics not written back"])
def test_a_broken_grouped_model_fails_the_comparison(pool, monkeypatch, method, breakage):
    if breakage == "shared batch-norm statistics":
        monkeypatch.setattr(grouped._Run, "batch_norm", _shared_statistics)
    elif breakage == "labels of another task":
        monkeypatch.setattr(GroupedModel, "losses", _labels_of_the_next_task(GroupedModel.losses))
    else:
        monkeypatch.setattr(grouped, "batch_norm_train",
                            _statistics_not_written_back(grouped.batch_norm_train))
    with pytest.raises(AssertionError):
        compare(pool, method, {})


def test_chunks_give_the_numbers_of_one_call(pool):
    torch.manual_seed(0)
    model = OmniConv(num_filters=FILTERS, warp=WarpConfig(filters=4, batch_norm=True)).double()
    tasks = sample(pool, 4)
    x, y = tasks.train_batch(0)
    params = {n: p.detach().unsqueeze(0).repeat(3, *[1] * p.dim()).requires_grad_()
              for n, p in model.named_parameters() if not n.startswith("warps")}
    buffers = {n: b.unsqueeze(0).repeat(3, *[1] * b.dim()) for n, b in model.named_buffers()}
    one = GroupedModel(model).losses(params, dict(buffers), x, y, grads=True)
    per_task = BATCH * FILTERS * 28 * 28 * 8
    chunked_model = GroupedModel(model, max_chunk_bytes=per_task)  # one task per call
    assert len(chunked_model.chunks(3, x)) == 3
    split = chunked_model.losses(params, dict(buffers), x, y, grads=True)
    close(split[0], one[0], "loss")
    close(split[1], one[1], "accuracy")
    for n in params:
        close(split[2][n], one[2][n], f"gradient {n}")


def test_auto_and_the_chunk_size():
    model = OmniConv(num_filters=64)
    assert tasks_per_chunk(model, 20, "cpu") == 4  # 4 MB of first-block output per task
    assert tasks_per_chunk(OmniConv(num_filters=32), 20, "cpu") == 8
    assert tasks_per_chunk(model, 128, "cpu") == 1 and tasks_per_chunk(model, 20, "cuda") is None
    assert use_grouped("auto", 20, 4) and use_grouped("auto", 20, None)
    assert not use_grouped("auto", 1, 4) and not use_grouped("auto", 20, 1)
    assert use_grouped("grouped", 1, 1) and not use_grouped("loop", 20, None)
    with pytest.raises(ValueError, match="task_batching 'vmap' unknown"):
        make_learner("leap", OptimConfig(), OptimConfig(), task_batching="vmap")


def test_script_loop_and_grouped_agree_and_resume_across_modes(tmp_path):
    """scripts/train_omniglot.py: the same run with --task-batching loop and grouped (float32:
    round-off only), and a run resumed with the other mode (a resumable setting)."""
    import csv
    import json

    from warp_rl.omniglot.synthetic import write_npz_pair
    from warp_rl.omniglot.train import main

    root = write_npz_pair(tmp_path / "data", num_alphabets=14, characters=[20] * 14)

    def run(out, *extra):
        return main(["--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
                     "--out", str(tmp_path / out), "--meta-model", "leap", "--num-pretrain",
                     "3", "--task-steps", "3", "--task-batch-size", "5", "--meta-batch-size",
                     "3", "--num-filters", "8", "--val-tasks", "1", "--eval-tasks", "2",
                     "--validate-every", "2", "--threads", "1", "--no-progress", *extra])

    def rows(out):
        with open(tmp_path / out / "train.csv", newline="") as f:
            return [{k: float(v) for k, v in r.items() if k not in ("seconds", "meta_loss")}
                    for r in csv.DictReader(f)]

    loop = run("loop", "--meta-steps", "2", "--task-batching", "loop")
    group = run("grouped", "--meta-steps", "2", "--task-batching", "grouped")
    assert json.loads((tmp_path / "grouped" / "config.json").read_text())["task_batching"] == (
        "grouped")
    # losses to float32 round-off; an accuracy may flip one prediction on a near-tie
    for a, b in zip(rows("loop"), rows("grouped"), strict=True):
        for k in a:
            assert a[k] == pytest.approx(b[k], **({"rel": 1e-4, "abs": 1e-5} if "loss" in k
                                                  else {"abs": 0.1})), k
    assert loop["test_acc"] == pytest.approx(group["test_acc"], abs=0.1)
    run("mixed", "--meta-steps", "1", "--task-batching", "loop", "--no-test")
    run("mixed", "--meta-steps", "2", "--task-batching", "grouped", "--resume")
    assert len(rows("mixed")) == 2


def test_float32_error_is_the_loops():
    """In float32 the grouped gradients are as close to float64 as the loop's (the CPU's
    channels-last batch norm, which sums in float32, was 4.6x further off here)."""
    torch.manual_seed(0)
    model = OmniConv(num_filters=16, warp=WarpConfig(filters=16))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 20, 1, 28, 28, generator=g)
    y = torch.randint(20, (3, 20), generator=g)
    adapt = [n for n, _ in model.named_parameters() if not n.startswith("warps")]

    def loop(m, x):
        out = []
        for t in range(3):
            m.zero_grad()
            nn.functional.cross_entropy(m(x[t]), y[t]).backward()
            out.append(torch.cat([dict(m.named_parameters())[n].grad.flatten() for n in adapt]))
        return torch.stack(out).double()

    def group(m, x):
        params = {n: dict(m.named_parameters())[n].detach().unsqueeze(0).repeat(
            3, *[1] * dict(m.named_parameters())[n].dim()).requires_grad_() for n in adapt}
        buffers = {n: b.unsqueeze(0).repeat(3, *[1] * b.dim()) for n, b in m.named_buffers()}
        _, _, grads = GroupedModel(m).losses(params, buffers, x, y, grads=True)
        return torch.cat([grads[n].flatten(1) for n in adapt], 1).double()

    reference = loop(copy.deepcopy(model).double(), x.double())
    err_loop = (loop(model, x) - reference).norm() / reference.norm()
    err_group = (group(model, x) - reference).norm() / reference.norm()
    assert err_group < 2 * err_loop


def test_bench_times_both_modes_and_reports_the_speed_up(real, capsys, tmp_path):
    from warp_rl.omniglot import bench

    rows = bench.main(["--meta-model", "warp_leap", "--tasks", "2", "--task-steps", "1",
                       "--num-filters", "4", "--task-batch-size", "4", "--warp-max-states", "1",
                       "--json", str(tmp_path / "rows.json")])
    timed = [r for r in rows if "task_batching" in r]
    assert [(r["task_batching"], r["grouped"]) for r in timed] == [("loop", False),
                                                                   ("grouped", True)]
    for r in timed:
        assert r["s_per_meta_step"] > 0 and r["cpu_s_per_meta_step"] > 0
        assert r["adapt_s"] > 0 and r["states"] == 2 and "s_per_meta_step_20_tasks" in r
    (ratio,) = [r for r in rows if "speedup_of" in r]
    assert ratio["speedup"] == pytest.approx(timed[0]["s_per_meta_step"]
                                             / timed[1]["s_per_meta_step"])
    assert {"cpu_speedup", "adapt_speedup"} <= ratio.keys()
    out = capsys.readouterr().out
    assert "| 2 | 1 | grouped |" in out and (tmp_path / "rows.json").is_file()
