"""The maze trainer on 2 CPU ranks (gloo): identical parameters on every rank, the 2-rank update
equal to the single-process update on the concatenated batch, rank 0 alone writing, exact resume;
and scripts/train_maze.py under torchrun."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed_helpers import launch

from agents.a2c import a2c_loss
from agents.rollout import Rollout, collect_rollout, episode_seeds
from agents.trainer import (
    LOG_FIELDS,
    TIMING_FIELDS,
    TrainConfig,
    Trainer,
    load_checkpoint,
    make_batch_env,
    read_log,
)
from warp_rl import distributed

ROOT = Path(__file__).resolve().parents[1]
# Tiny, and no clipping (max_grad_norm huge) so that a wrongly scaled average would show;
# meta_interval 1 and no warmup: fast and warp weights both step after every episode.
TINY = dict(agent="warp", seed=3, episodes=4, batch_size=4, hidden_size=8, maze_size=5,
            episode_length=12, warmup_episodes=0, meta_interval=1, max_grad_norm=1e6,
            checkpoint_every=100, lr=1e-2, warp_lr=1e-2)


def _record_first_step(trainer: Trainer, params, opt, key: str, store: dict) -> None:
    """Keep the gradient ``opt`` receives at its first step."""
    step = opt.step

    def recording_step(*args, **kwargs):
        store.setdefault(key, [p.grad.detach().clone() for p in params])
        return step(*args, **kwargs)

    opt.step = recording_step


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.agent.state_dict().items()}


def _maze_worker(rank: int, root: Path) -> dict:
    distributed.init_from_env(timeout_s=60)
    config = TrainConfig(**TINY)
    out: dict = {}
    straight = Trainer(config, root / "straight")
    _record_first_step(straight, straight.partition.adapt_parameters(), straight.fast_opt,
                       "fast", out)
    _record_first_step(straight, straight.warp_params, straight.warp_opt, "warp", out)
    straight.train(progress=False)
    straight.close()
    out["straight"] = _params(straight)
    out["local_batch"] = straight.env.num_envs

    halted = Trainer(dataclasses.replace(config), root / "halted")
    halted.train(until_episode=2, progress=False)
    halted.close()
    resumed = Trainer.resume(root / "halted")
    out["resumed_from"] = resumed.episode
    resumed.train(progress=False)
    resumed.close()
    out["resumed"] = _params(resumed)
    # WarpGrad's Algorithm 2: each rank replays its own mazes, the meta-gradients are averaged.
    a2 = Trainer(dataclasses.replace(config, warp_objective="algorithm2", meta_interval=2),
                 root / "algorithm2")
    a2.train(progress=False)
    a2.close()
    out["algorithm2"] = _params(a2)
    try:
        Trainer(dataclasses.replace(config, batch_size=5), root / "odd")
    except ValueError as err:
        out["odd_batch_error"] = str(err)
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("maze2")
    results, codes = launch(_maze_worker, 2, root / "results", root)
    assert codes == [0, 0], codes
    return root, results


def test_ranks_hold_identical_parameters(two_ranks):
    _, (r0, r1) = two_ranks
    assert r0["local_batch"] == r1["local_batch"] == TINY["batch_size"] // 2
    for key in ("straight", "resumed", "algorithm2"):
        for name, value in r0[key].items():
            assert torch.equal(value, r1[key][name]), (key, name)
    # ...and training moved them (both optimisers stepped every episode).
    fresh = Trainer(TrainConfig(**TINY), two_ranks[0] / "fresh")
    fresh.close()
    moved = {n for n, v in _params(fresh).items() if not torch.equal(v, r0["straight"][n])}
    assert any(n.startswith("cell.") for n in moved) and any("gate" in n for n in moved)
    moved = {n for n, v in _params(fresh).items() if not torch.equal(v, r0["algorithm2"][n])}
    assert any("gate" in n for n in moved)  # algorithm2 stepped the warp weights


def test_two_rank_update_equals_single_process_on_concatenated_batch(two_ranks, tmp_path):
    root, (r0, r1) = two_ranks
    config = TrainConfig(**TINY)
    ref = Trainer(config, tmp_path / "ref")  # same seed: the ranks' initial weights
    ref.close()
    ref.agent.fused_unroll = False  # plain autograd: the two shares' graphs stay independent
    rollouts = []
    for rank in range(2):  # each rank's share of the mazes, with that rank's seeds
        env_seed, sample_seed = episode_seeds(config.seed, 0, rank)
        env = make_batch_env(config, num_envs=config.batch_size // 2)
        gen = torch.Generator().manual_seed(sample_seed)
        rollouts.append(collect_rollout(ref.agent, env, config.episode_length, env_seed, gen))
    batch = Rollout(*(torch.cat(parts, dim=1) for parts in zip(*rollouts, strict=True)))
    assert batch.actions.shape == (config.episode_length, config.batch_size)

    def grads(rollout: Rollout, params) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = a2c_loss(rollout.logits, rollout.values, rollout.actions, rollout.rewards,
                        config.gamma, config.value_coef, config.penalty_coef)
        return loss.total, list(torch.autograd.grad(loss.total, params, retain_graph=True))

    fast, warp = ref.partition.adapt_parameters(), ref.warp_params
    loss, expected = grads(batch, fast + warp)
    for r in (r0, r1):
        got = r["fast"] + r["warp"]
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    # The check can fail: one share's gradient alone is not the update.
    _, alone = grads(rollouts[0], fast + warp)
    assert any(not torch.allclose(a, e, rtol=1e-2, atol=1e-5)
               for a, e in zip(alone, expected, strict=True))

    # The log (rank 0 only) holds the global numbers of the concatenated batch.
    log = read_log(root / "straight" / "log.csv")
    assert log["episode"].tolist() == [0, 1, 2, 3]
    assert log["loss"][0] == pytest.approx(float(loss.detach()), rel=1e-5)
    episode_reward = batch.rewards.sum(0)
    assert log["reward_mean"][0] == pytest.approx(float(episode_reward.mean()), abs=1e-5)
    assert log["reward_std"][0] == pytest.approx(float(episode_reward.std(correction=0)),
                                                 abs=1e-4)


def test_batch_must_split_evenly(two_ranks):
    _, (r0, r1) = two_ranks
    for r in (r0, r1):
        assert "batch_size=5 must be divisible by the number of processes (2)" in \
            r["odd_batch_error"]


def test_rank0_writes_and_resume_is_exact(two_ranks):
    root, (r0, _) = two_ranks
    assert sorted(p.name for p in (root / "straight").iterdir()) == [
        ".lock", "checkpoint.prev.pt", "checkpoint.pt", "log.csv"]  # rank 0's files only
    ckpt = load_checkpoint(root / "straight" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rng"]) == 2
    assert ckpt["episode"] == 4
    assert r0["resumed_from"] == 2
    for name, value in r0["straight"].items():
        assert torch.equal(value, r0["resumed"][name]), name
    a, b = read_log(root / "straight" / "log.csv"), read_log(root / "halted" / "log.csv")
    for field in LOG_FIELDS:
        if field not in TIMING_FIELDS:
            assert a[field].tolist() == b[field].tolist(), field


def test_resume_needs_the_same_number_of_processes(two_ranks, tmp_path):
    root, _ = two_ranks
    with pytest.raises(ValueError, match=r"written by a run on 2 process\(es\); resume it on 2"):
        Trainer.resume(root / "straight", {"episodes": 6})


# ------------------------------------------------------------------------------------------------
# The script under torchrun
# ------------------------------------------------------------------------------------------------
def _torchrun(*args: str, log_dir: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``scripts/train_maze.py ARGS`` under torchrun; torchrun's logs go to ``log_dir`` (its
    default, a ``torchelastic_*`` folder in the temp folder, is never removed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", f"--log-dir={log_dir}",
           str(ROOT / "scripts" / "train_maze.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)


def test_train_maze_script_under_torchrun(tmp_path):
    out = tmp_path / "run"
    tiny = ["--batch-size", "4", "--maze-size", "5", "--episode-length", "10",
            "--hidden-size", "8", "--warmup-episodes", "0", "--meta-interval", "2",
            "--no-plot", "--quiet", "--out", str(out)]
    run = _torchrun("--episodes", "2", *tiny, log_dir=tmp_path / "torchrun")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("training warp") == 1  # rank 0 alone prints
    assert "2 processes of 2 mazes" in run.stdout
    assert read_log(out / "log.csv")["episode"].tolist() == [0, 1]
    assert load_checkpoint(out / "checkpoint.pt")["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoint.prev.pt", "checkpoint.pt", "config.json", "log.csv"]
