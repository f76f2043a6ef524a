"""The maze trainer: schedule, clipping, checkpoints, exact resume, crash safety, NaN stop."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import agents.trainer as trainer_mod
from agents import AGENTS
from agents.trainer import (
    LOG_FIELDS,
    TIMING_FIELDS,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    load_checkpoint,
    read_log,
)
from envs.batch_env import NumpyBatchEnv

ROOT = Path(__file__).resolve().parents[1]


def small(**kw) -> TrainConfig:
    base = dict(batch_size=4, hidden_size=8, maze_size=7, episode_length=12, warmup_episodes=2,
                meta_interval=3, episodes=8, checkpoint_every=3, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def moved(before, params) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_warmup_and_meta_interval_schedule_and_warp_gradient_sum(tmp_path):
    tr = Trainer(small(warmup_episodes=3, meta_interval=2, episodes=9), tmp_path)
    fast, warp = tr.partition.adapt_parameters(), tr.partition.warp_parameters()
    episode_grads, step_grads = [], []
    fast_step, warp_step = tr.fast_opt.step, tr.warp_opt.step

    def record_fast(*args, **kwargs):
        episode_grads.append([p.grad.clone() for p in warp])  # this episode's warp gradient
        return fast_step(*args, **kwargs)

    def record_warp(*args, **kwargs):
        step_grads.append([p.grad.clone() for p in warp])  # what the warp Adam is given
        return warp_step(*args, **kwargs)

    tr.fast_opt.step, tr.warp_opt.step = record_fast, record_warp
    rows = []
    for episode in range(9):
        before_fast, before_warp = snapshot(fast), snapshot(warp)
        rows.append(tr.train_episode())
        assert moved(before_fast, fast) == (episode >= 3), episode
        assert moved(before_warp, warp) == (episode in (4, 6, 8)), episode
    assert [r["fast_step"] for r in rows] == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert [r["warp_step"] for r in rows] == [0, 0, 0, 0, 1, 0, 1, 0, 1]
    # Each warp step uses the sum of the warp gradients of the episodes since the last one.
    assert len(episode_grads) == 6 and len(step_grads) == 3
    for k in range(3):
        for got, a, b in zip(step_grads[k], episode_grads[2 * k], episode_grads[2 * k + 1],
                             strict=True):
            torch.testing.assert_close(got, a + b)
    tr.close()


def test_gradient_clipping_is_applied(tmp_path):
    tr = Trainer(small(warmup_episodes=0, max_grad_norm=1e-4), tmp_path)
    norms = []
    fast_step = tr.fast_opt.step

    def record(*args, **kwargs):
        norms.append(float(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in tr.agent.parameters()]))))
        return fast_step(*args, **kwargs)

    tr.fast_opt.step = record
    row = tr.train_episode()
    assert row["grad_norm"] > 1e-2  # the raw gradient is far above the limit ...
    assert norms[0] == pytest.approx(1e-4, rel=1e-3)  # ... and the step sees it clipped
    tr.close()


def non_timing_log(path: Path) -> dict[str, np.ndarray]:
    log = read_log(path)
    return {k: v for k, v in log.items() if k not in TIMING_FIELDS}


def train_run(cfg: TrainConfig, out: Path, episodes: int | None = None) -> Trainer:
    """A fresh run of ``cfg`` in ``out`` (to ``episodes`` if given), trained and closed."""
    tr = Trainer(cfg if episodes is None else dataclasses.replace(cfg, episodes=episodes), out)
    tr.train(progress=False)
    tr.close()
    return tr


def resume_run(out: Path, episodes: int) -> tuple[Trainer, int]:
    """Resume the run in ``out`` up to ``episodes``; returns it and the episode it resumed at."""
    tr = Trainer.resume(out, {"episodes": episodes})
    resumed_at = tr.episode
    tr.train(progress=False)
    tr.close()
    return tr, resumed_at


def assert_same_tree(a, b) -> None:
    """Equal nested dicts / lists of tensors and plain values (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["episode"] == cb["episode"]
    for name, tensor in ca["agent"].items():
        assert torch.equal(tensor, cb["agent"][name]), name
    for key in ("fast_opt", "warp_opt"):
        if ca[key] is None:
            assert cb[key] is None
            continue
        for pid, st in ca[key]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, cb[key]["state"][pid][k]), (key, pid, k)
    assert_same_tree(ca["warp_objective"], cb["warp_objective"])
    la, lb = non_timing_log(a / "log.csv"), non_timing_log(b / "log.csv")
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)


@pytest.mark.parametrize(("agent", "env_backend"),
                         [("warp", "numpy"), ("lstm", "numpy"), ("warp", "torch")])
def test_resume_is_exact(tmp_path, agent, env_backend):
    # env_backend="torch" is the GPU trainer's code path (TorchMazeBatch), here on the CPU.
    cfg = small(agent=agent, env_backend=env_backend, episodes=10, checkpoint_every=4)
    train_run(cfg, tmp_path / "straight")
    # N episodes, then a second process-worth of training from the checkpoint to 2N.
    train_run(cfg, tmp_path / "split", episodes=5)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["episode"] == 5
    _, resumed_at = resume_run(tmp_path / "split", 10)
    assert resumed_at == 5
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    assert len(read_log(tmp_path / "split" / "log.csv")["episode"]) == 10


def test_resume_after_a_crash_drops_log_rows_past_the_checkpoint(tmp_path):
    cfg = small(episodes=10, checkpoint_every=4)
    straight = Trainer(cfg, tmp_path / "straight")
    straight.train(progress=False)
    straight.close()

    crashed = Trainer(cfg, tmp_path / "crashed")
    crashed.train(until_episode=4, progress=False)  # checkpoint at 4
    for _ in range(2):  # two more episodes logged, then the process "dies"
        crashed.log.append(crashed.train_episode())
    crashed.log.file.write("6,12.5,3.")  # a torn last line
    crashed.close()
    assert len(read_log(tmp_path / "crashed" / "log.csv")["episode"]) == 6  # torn row skipped

    resumed = Trainer.resume(tmp_path / "crashed")
    assert resumed.episode == 4
    resumed.train(progress=False)
    resumed.close()
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")


def test_resume_refuses_changed_settings(tmp_path):
    tr = Trainer(small(episodes=2), tmp_path)
    tr.train(progress=False)
    tr.close()
    with pytest.raises(ValueError, match=r"cannot change lr on resume .* 0\.001"):
        Trainer.resume(tmp_path, {"lr": 0.01})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer.resume(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"episodes 1: it has already done 2"):
        Trainer.resume(tmp_path, {"episodes": 1})


def test_checkpoint_write_interrupted_in_process_keeps_the_old_one(tmp_path, monkeypatch):
    tr = Trainer(small(episodes=3, checkpoint_every=3), tmp_path)
    tr.train(progress=False)
    old = load_checkpoint(tmp_path / "checkpoint.pt")

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    tr.train_episode()
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint()
    monkeypatch.undo()
    new = load_checkpoint(tmp_path / "checkpoint.pt")
    assert new["episode"] == old["episode"] == 3
    assert sorted(os.listdir(tmp_path)) == [".lock", "checkpoint.prev.pt", "checkpoint.pt",
                                            "log.csv"]  # no temp file left
    tr.close()


def test_process_killed_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(ROOT)!r})
        from agents.trainer import TrainConfig, Trainer
        cfg = TrainConfig(batch_size=4, hidden_size=8, maze_size=7, episode_length=12,
                          warmup_episodes=1, meta_interval=2, episodes=6, checkpoint_every=3)
        tr = Trainer(cfg, sys.argv[1])
        tr.train(until_episode=3, progress=False)
        def slow_save(obj, f, *args, **kwargs):
            f.write(b"partial")
            f.flush()
            print("WRITING", flush=True)
            time.sleep(120)
        torch.save = slow_save
        tr.train(progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.kill()
        proc.wait()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["episode"] == 3
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert leftovers  # the torn temp file is there, but never under the checkpoint's name
    resumed = Trainer.resume(tmp_path)
    resumed.train(progress=False)
    resumed.close()
    assert list(read_log(tmp_path / "log.csv")["episode"]) == [0, 1, 2, 3, 4, 5]


def test_nan_loss_stops_with_a_usable_checkpoint(tmp_path, monkeypatch):
    tr = Trainer(small(episodes=10, checkpoint_every=2), tmp_path)
    real_loss = trainer_mod.a2c_loss

    def poisoned(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss._replace(total=loss.total * float("nan")) if tr.episode >= 5 else loss

    monkeypatch.setattr(trainer_mod, "a2c_loss", poisoned)
    before = snapshot(tr.agent.parameters())
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at episode 5.*checkpoint"):
        tr.train(progress=False)
    tr.close()
    assert moved(before, tr.agent.parameters())  # it did train before the NaN
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["episode"] == 5
    assert all(torch.isfinite(t).all() for t in ckpt["agent"].values())
    assert len(read_log(tmp_path / "log.csv")["episode"]) == 5
    monkeypatch.setattr(trainer_mod, "a2c_loss", real_loss)
    resumed = Trainer.resume(tmp_path, {"episodes": 7})
    resumed.train(progress=False)
    resumed.close()
    assert resumed.episode == 7


@pytest.mark.parametrize(("field", "value", "message"), [
    ("episodes", 0, "episodes must be an integer >= 1; got 0"),
    ("maze_size", 8, "maze_size must be an odd integer >= 5; got 8"),
    ("lr", float("nan"), "lr must be a number in (0, 1e+06]; got nan"),
    ("lr", 1e38, "lr must be a number in (0, 1e+06]; got 1e+38"),  # overflowed inside Adam
    ("warp_lr", -1.0, "warp_lr must be a number in (0, 1e+06]; got -1.0"),
    ("agent", "gru", f"agent must be one of {', '.join(sorted(AGENTS))}; got 'gru'"),
    ("device", "tpu", "device must be cpu, cuda or cuda:N; got 'tpu'"),
    ("gamma", 1.5, "gamma must be a number in [0, 1]; got 1.5"),
    ("meta_interval", 0, "meta_interval must be an integer >= 1; got 0"),
])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(TrainConfig(), **{field: value}).validate()


def test_log_has_one_row_per_episode_with_every_field(tmp_path):
    tr = Trainer(small(episodes=3), tmp_path)
    tr.train(progress=False)
    tr.close()
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == LOG_FIELDS
    log = read_log(tmp_path / "log.csv")
    assert list(log["episode"]) == [0, 1, 2]
    assert np.all(log["wall_s"] > 0) and np.all(np.diff(log["wall_s"]) > 0)
    assert np.all(np.isfinite(log["loss"]))


@pytest.mark.slow
def test_short_training_run_learns(tmp_path):
    cfg = TrainConfig(agent="warp", seed=1, batch_size=32, hidden_size=16, maze_size=5,
                      episode_length=30, lr=1e-2, warp_lr=1e-2, warmup_episodes=0,
                      meta_interval=5, episodes=150, checkpoint_every=1000)
    tr = Trainer(cfg, tmp_path)
    tr.train(progress=False)
    tr.close()
    reward = read_log(tmp_path / "log.csv")["reward_mean"]
    random_play = trainer_mod.random_play_reward(cfg)
    assert reward[:30].mean() < random_play + 3  # starts near random play (about 18)
    assert reward[-30:].mean() > reward[:30].mean() + 5  # and visibly learns (about 38)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_cpu_loss_and_runs(tmp_path):
    cfg = small(episodes=3, device="cuda")
    tr = Trainer(cfg, tmp_path / "gpu")
    assert tr.env.__class__.__name__ == "TorchBatchEnv"
    tr.train(progress=False)
    tr.close()
    log = read_log(tmp_path / "gpu" / "log.csv")
    assert np.all(np.isfinite(log["loss"])) and len(log["loss"]) == 3
    assert load_checkpoint(tmp_path / "gpu" / "checkpoint.pt")["episode"] == 3


def test_numpy_batch_env_hands_out_fresh_arrays_without_copying():
    """The trainer shares the env's observation and reward arrays with torch (no copy); that is
    only safe because the env builds new arrays every step and never writes to old ones."""
    env = NumpyBatchEnv(4, size=9, episode_length=10)
    first = env.reset(seed=0)
    kept = first.clone()
    actions = torch.tensor([0, 1, 2, 3])
    obs, reward = env.step(actions)
    obs2, reward2 = env.step(actions)
    assert first.dtype == obs.dtype == torch.float32 and reward.dtype.is_floating_point
    assert obs.data_ptr() != obs2.data_ptr() and reward.data_ptr() != reward2.data_ptr()
    assert torch.equal(first, kept)  # stepping did not write into an earlier observation
    assert not np.shares_memory(obs.numpy(), obs2.numpy())
