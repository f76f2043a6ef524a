"""Omniglot meta-learning on 2 CPU ranks (gloo): the averaged meta-gradients equal the
single-process ones on the concatenated meta-batch (warp and Leap, and the other learners'),
ranks keep identical meta-parameters, split evaluation gathers the single-process results, and
scripts/train_omniglot.py's engine writes from rank 0 only and resumes exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from test_distributed_helpers import launch

from warp_rl import distributed
from warp_rl.omniglot.data import load_omniglot
from warp_rl.omniglot.distributed import DataParallelLearner
from warp_rl.omniglot.meta_learners import OptimConfig, make_learner
from warp_rl.omniglot.models import WarpConfig
from warp_rl.omniglot.synthetic import write_npz_pair
from warp_rl.omniglot.tasks import TaskPool, split_alphabets
from warp_rl.omniglot.train import build_learner, build_parser, eval_batch, main

# warp_leap: the warp meta-gradient (Algorithm 2) and Leap; leap: the path shared by the
# initialisation learners (reptile and fomaml step the same way); maml: its own outer step.
METHODS = ("warp_leap", "leap", "maml")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_learner(method: str, **warp_kwargs):
    kw = dict(warp=WarpConfig(filters=4), **warp_kwargs) if method.startswith("warp") else {}
    return make_learner(method, OptimConfig("sgd", 0.1), OptimConfig("sgd", 0.1), seed=4,
                        num_filters=4, **kw)


def full_set_tasks(num_tasks: int):
    """Tasks of 20 classes x 1 image with batches of all 20 images and no distortion: every
    batch, however drawn, holds the same images, so the meta-objective's random draws (which
    differ between one process and two ranks) cannot change the meta-gradient."""
    g = torch.Generator().manual_seed(0)
    pool = TaskPool.from_tensors([f"a{i}" for i in range(4)], torch.rand(4, 20, 1, 28, 28,
                                 generator=g), torch.rand(4, 20, 1, 28, 28, generator=g))
    return pool.sample(torch.arange(num_tasks), 2, 20, g, distort=False)


def varied_tasks(num_tasks: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pool = TaskPool.from_tensors([f"a{i}" for i in range(4)], torch.rand(4, 20, 3, 28, 28,
                                 generator=g), torch.rand(4, 20, 2, 28, 28, generator=g))
    return pool.sample(torch.arange(num_tasks) % 4, 3, 5, g)


def record_outer_steps(learner) -> list:
    """The gradients (after any averaging) at every outer optimiser step."""
    calls: list = []
    params = (learner.warp.meta_parameters() if hasattr(learner, "warp")
              else list(learner.init_model.parameters()))
    step = learner.outer_opt.step

    def recording_step(*args, **kwargs):
        calls.append([None if p.grad is None else p.grad.detach().clone() for p in params])
        return step(*args, **kwargs)

    learner.outer_opt.step = recording_step
    return calls


def argv(data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    root, cache = data
    return ["--data-root", str(root), "--cache-dir", str(cache), "--out", str(out),
            "--meta-model", "warp_leap", "--num-pretrain", "3", "--task-steps", "2",
            "--task-batch-size", "5", "--meta-batch-size", "2", "--num-filters", "8",
            "--warp-filters", "8", "--val-tasks", "1", "--eval-tasks", "3",
            "--validate-every", "2", "--warp-meta-batch-size", "3", "--threads", "1",
            "--no-progress", "--dist-timeout", "300", *extra]


def _worker(rank: int, root: Path, data: tuple[Path, Path]) -> dict:
    distributed.init_from_env(timeout_s=300)
    out: dict = {"grads": {}}
    # One meta-step of every learner on 2 tasks, one per rank.
    for method in METHODS:
        learner = tiny_learner(method, meta_batch_size=None, batching="loop")
        dp = DataParallelLearner(learner, seed=4)
        calls = record_outer_steps(learner)
        results = dp.meta_step(full_set_tasks(2))
        out["grads"][method] = calls
        if method == "warp_leap":
            out["meta_loss"] = dp.last_info.meta_loss
            out["train_results"] = results
    # Several meta-steps with one replayed state per warp step and distorted batches.
    dp = DataParallelLearner(tiny_learner("warp_leap", meta_batch_size=1, batching="loop"), 4)
    for step in range(2):
        dp.meta_step(varied_tasks(4, seed=step))
    out["params"] = {k: v.detach().clone() for k, v in dp.learner.warp.named_meta_parameters()}
    out["learner_state"] = dp.state_dict()
    out["evaluated"] = dp.evaluate(varied_tasks(3, seed=9))  # uneven split: 2 + 1 tasks

    # The script's engine: a straight run, and a halted one resumed.
    out["straight"] = main(argv(data, root / "straight", "--meta-steps", "3"))
    main(argv(data, root / "halted", "--meta-steps", "2", "--no-test"))
    out["resumed"] = main(argv(data, root / "halted", "--meta-steps", "3", "--resume"))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot2")
    data_root = write_npz_pair(root / "data", num_alphabets=14, characters=[20] * 13 + [21])
    data = (data_root, root / "cache")
    # generous limits: they only stop a hung run, and a loaded 2-core machine took over 150 s
    results, codes = launch(_worker, 2, root / "results", root, data, timeout=600)
    assert codes == [0, 0], codes
    return root, data, results


@pytest.fixture(scope="module")
def reference():
    """Single-process meta-steps on the concatenated meta-batch (both tasks), per method:
    the recorded outer-step gradients, the results and the meta-loss."""
    out = {}
    for method in METHODS:
        learner = tiny_learner(method, meta_batch_size=None, batching="loop")
        grads = record_outer_steps(learner)
        results = learner.meta_step(full_set_tasks(2))
        info = getattr(learner, "last_info", None)
        out[method] = (grads, results, None if info is None else info.meta_loss)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_meta_gradient_equals_single_process_on_concatenated_batch(run, reference, method):
    _, _, (r0, r1) = run
    expected = reference[method][0]
    assert len(r0["grads"][method]) == len(r1["grads"][method]) == len(expected) >= 1
    for got0, got1, want in zip(r0["grads"][method], r1["grads"][method], expected,
                                strict=True):
        for g0, g1, w in zip(got0, got1, want, strict=True):
            assert (g0 is None) == (g1 is None) == (w is None)
            if w is not None:
                assert torch.equal(g0, g1)
                torch.testing.assert_close(g0, w, rtol=1e-4, atol=1e-5)
    # The check can fail: the first task's meta-gradient alone is not the average.
    alone_learner = tiny_learner(method, meta_batch_size=None, batching="loop")
    alone = record_outer_steps(alone_learner)
    alone_learner.meta_step(full_set_tasks(2).select(slice(0, 1)))
    assert any(w is not None and not torch.allclose(a, w, rtol=1e-2, atol=1e-6)
               for a, w in zip(alone[0], expected[0], strict=True))


def test_gathered_train_results_and_meta_loss(run, reference):
    _, _, (r0, r1) = run
    _, res, meta_loss = reference["warp_leap"]
    for r in (r0, r1):
        assert r["train_results"].task_ids.tolist() == [0, 1]
        torch.testing.assert_close(r["train_results"].test_acc, res.test_acc)
        torch.testing.assert_close(r["train_results"].train_loss, res.train_loss)
        assert r["meta_loss"] == pytest.approx(meta_loss, rel=1e-4)


def test_ranks_keep_identical_meta_parameters(run):
    _, _, (r0, r1) = run
    fresh = dict(tiny_learner("warp_leap").warp.named_meta_parameters())
    assert r0["params"].keys() == fresh.keys()
    for name, value in r0["params"].items():  # warp layers and initialisation
        assert torch.equal(value, r1["params"][name]), name
    for group in ("warp.", "init."):  # ...and both moved
        assert any(not torch.equal(v, fresh[n]) for n, v in r0["params"].items()
                   if n.startswith(group)), group
    streams = r0["learner_state"]["rank_streams"]
    assert len(streams) == 2 and not torch.equal(streams[0]["updater"], streams[1]["updater"])


def test_split_evaluation_gathers_the_single_process_results(run):
    _, _, (r0, r1) = run
    learner = tiny_learner("warp_leap", meta_batch_size=1, batching="loop")
    learner.load_state_dict(r0["learner_state"])
    expected = learner.evaluate(varied_tasks(3, seed=9))
    for r in (r0, r1):
        assert r["evaluated"].task_ids.tolist() == expected.task_ids.tolist()
        torch.testing.assert_close(r["evaluated"].test_acc, expected.test_acc)
        torch.testing.assert_close(r["evaluated"].train_loss, expected.train_loss)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_script_engine_writes_from_rank0_and_resumes_exactly(run):
    root, data, (r0, r1) = run
    straight, halted = root / "straight", root / "halted"
    assert r0["straight"] == r1["straight"]
    assert r0["straight"]["test_acc"] == r0["resumed"]["test_acc"]
    assert _rows(straight / "train.csv") == _rows(halted / "train.csv")
    assert [r["step"] for r in _rows(straight / "train.csv")] == ["1", "2", "3"]
    assert _rows(straight / "val.csv") == _rows(halted / "val.csv")
    ckpt = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert ckpt["learner"]["world_size"] == 2

    # The gathered test equals a single-process evaluation of the final checkpoint.
    args = build_parser().parse_args(argv(data, straight, "--meta-steps", "3"))
    omniglot = load_omniglot(data[0], data[1])
    split = split_alphabets(omniglot.alphabets, omniglot.num_characters, 3, args.seed)
    learner = build_learner(args, torch.device("cpu"))
    learner.load_state_dict(ckpt["learner"])
    res = learner.evaluate(eval_batch(TaskPool(omniglot, split.test, args.seed), 3, args, "test"))
    tasks = _rows(straight / "test_tasks.csv")
    assert [t["alphabet"] for t in tasks] == list(split.test[:3])
    for row, acc in zip(tasks, res.test_acc.tolist(), strict=True):
        assert float(row["test_acc"]) == pytest.approx(acc, abs=1e-5)

    # A single process refuses to resume the 2-process run.
    with pytest.raises(SystemExit, match=r"written by 2 process\(es\); resume it on 2, not 1"):
        main(argv(data, straight, "--meta-steps", "4", "--resume"))
