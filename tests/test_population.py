"""Population training (agents/population.py): S seeds in one process, each an ordinary run.

The bugs feared most: runs that leak into each other (a shared noise generator, clipping over
the whole population instead of per run, gradients summed across runs) and state lost on
resume. Every member of a population must match a separate run of its seed: in float64 to
rounding (the batched products of a population are not always the same bits as a single run's
product), with the very same actions and rewards; and a population split and resumed must
equal the straight population exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from script_loader import load_script

from agents import make_agent
from agents.population import PopulationTrainer, population_agents
from agents.trainer import LOG_FIELDS, TIMING_FIELDS, TrainConfig, Trainer, read_log
from warp_rl import runs
from warp_rl.utils import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = (3, 4, 5)
# Clipping is active in every episode (norm 0.05), so that clipping the population's joint
# gradient instead of each run's would change every run.
TINY = dict(batch_size=4, hidden_size=8, maze_size=7, episode_length=12, warmup_episodes=1,
            meta_interval=2, episodes=5, checkpoint_every=2, max_grad_norm=0.05)


def float64_run(config: TrainConfig, out: Path) -> Trainer:
    """A run of ``config`` whose agent is built exactly as the trainer builds it, in float64."""
    seed_everything(config.seed)
    agent = make_agent(config.agent, obs_dim=17, num_actions=4,
                       hidden_size=config.hidden_size).double()
    return Trainer(config, out, agent=agent)


def finish(run) -> None:
    run.train(progress=False)
    run.close()


def assert_runs_agree(pop: Path, alone: Path, params_pop, params_alone, rtol: float) -> None:
    """Same actions and rewards (reward columns equal), the other numbers and the parameters
    equal to ``rtol``."""
    a, b = read_log(pop / "log.csv"), read_log(alone / "log.csv")
    assert len(a["episode"]) == len(b["episode"]) > 0
    for key in ("episode", "reward_mean", "reward_std", "fast_step", "warp_step"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in set(LOG_FIELDS) - set(TIMING_FIELDS):
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-12, err_msg=key)
    for (name, p), q in zip(params_pop.items(), params_alone.values(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-12, msg=name)


@pytest.mark.parametrize("agent", ["warp_identity_orth", "warp", "lstm", "rnn"])
def test_each_member_matches_a_separate_run_of_its_seed_in_float64(tmp_path, agent):
    config = TrainConfig(agent=agent, **TINY)
    population = PopulationTrainer([float64_run(dataclasses.replace(config, seed=s),
                                                tmp_path / f"pop{s}") for s in SEEDS])
    finish(population)
    rewards = []
    for member, seed in zip(population.runs, SEEDS, strict=True):
        alone = float64_run(dataclasses.replace(config, seed=seed), tmp_path / f"alone{seed}")
        finish(alone)
        assert member.episode == alone.episode == config.episodes
        assert_runs_agree(tmp_path / f"pop{seed}", tmp_path / f"alone{seed}",
                          member.agent.state_dict(), alone.agent.state_dict(), rtol=1e-9)
        torch.testing.assert_close(member.fast_opt.state_dict()["state"],
                                   alone.fast_opt.state_dict()["state"], rtol=1e-9, atol=1e-12)
        rewards.append(read_log(tmp_path / f"pop{seed}" / "log.csv")["reward_mean"])
    assert not np.array_equal(rewards[0], rewards[1])  # the seeds do differ


@pytest.mark.parametrize("objective", ["algorithm2", "algorithm2_detached",
                                       "algorithm2_interval"])
def test_population_with_a_replaying_objective_matches_separate_runs(tmp_path, objective):
    # algorithm2 replays each run's own recorded episodes: a population must hand every run the
    # rows of its own mazes, not the whole batch's or another seed's
    config = TrainConfig(agent="warp_identity_orth", warp_objective=objective,
                         **{**TINY, "episodes": 6})
    population = PopulationTrainer([float64_run(dataclasses.replace(config, seed=s),
                                                tmp_path / f"pop{s}") for s in SEEDS[:2]])
    finish(population)
    for member, seed in zip(population.runs, SEEDS[:2], strict=True):
        alone = float64_run(dataclasses.replace(config, seed=seed), tmp_path / f"alone{seed}")
        finish(alone)
        assert read_log(tmp_path / f"pop{seed}" / "log.csv")["warp_step"].sum() >= 2
        assert_runs_agree(tmp_path / f"pop{seed}", tmp_path / f"alone{seed}",
                          member.agent.state_dict(), alone.agent.state_dict(), rtol=1e-9)


@pytest.mark.parametrize("agent", ["warp_identity_orth", "lstm"])
def test_population_on_the_torch_mazes_matches_separate_runs_in_float64(tmp_path, agent):
    # env_backend="torch" is what every GPU run uses: the population steps one batch of S x B
    # mazes (TorchMazeBatch reset with one seed per group) instead of S batches.
    config = TrainConfig(agent=agent, env_backend="torch", **TINY)
    population = PopulationTrainer([float64_run(dataclasses.replace(config, seed=s),
                                                tmp_path / f"pop{s}") for s in SEEDS])
    assert population.mazes is not None and population.mazes.num_envs == 3 * TINY["batch_size"]
    finish(population)
    for member, seed in zip(population.runs, SEEDS, strict=True):
        alone = float64_run(dataclasses.replace(config, seed=seed), tmp_path / f"alone{seed}")
        finish(alone)
        assert_runs_agree(tmp_path / f"pop{seed}", tmp_path / f"alone{seed}",
                          member.agent.state_dict(), alone.agent.state_dict(), rtol=1e-9)


def test_cuda_graph_is_refused_off_a_gpu(tmp_path):
    config = TrainConfig(agent="lstm", **TINY)
    with pytest.raises(ValueError, match="cuda_graph=True needs runs on a CUDA device"):
        PopulationTrainer.create(config, SEEDS[:2], [tmp_path / "a", tmp_path / "b"],
                                 cuda_graph=True)
    # the runs built before the refusal were closed: no lock on their folders is still held
    for folder in ("a", "b"):
        assert (tmp_path / folder / "log.csv").exists()  # they were built, then refused
        assert str((tmp_path / folder).resolve()) not in runs._HELD


def test_float32_population_through_the_script_matches_separate_runs(tmp_path):
    script = load_script("train_maze")
    flags = ["--agent", "warp_identity_orth", "--episodes", "4", "--batch-size", "4",
             "--hidden-size", "8", "--maze-size", "7", "--episode-length", "12",
             "--warmup-episodes", "1", "--meta-interval", "2", "--quiet", "--no-plot"]
    assert script.main([*flags, "--seeds", "3", "4", "--out", str(tmp_path / "pop")]) == 0
    for seed in (3, 4):
        assert script.main([*flags, "--seed", str(seed), "--out",
                            str(tmp_path / f"alone{seed}")]) == 0
        pop, alone = tmp_path / "pop" / f"seed{seed}", tmp_path / f"alone{seed}"
        assert (pop / "config.json").read_text() == (alone / "config.json").read_text()
        a, b = read_log(pop / "log.csv"), read_log(alone / "log.csv")
        np.testing.assert_array_equal(a["reward_mean"], b["reward_mean"])
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)


def test_a_split_population_resumes_exactly_and_members_resume_alone(tmp_path):
    config = TrainConfig(agent="warp_identity_orth", **{**TINY, "episodes": 6,
                                                       "meta_interval": 4})
    straight = PopulationTrainer.create(config, SEEDS, [tmp_path / f"a{s}" for s in SEEDS])
    finish(straight)
    # Split in the middle of a warp interval (episode 3: one episode summed, not stepped).
    split = PopulationTrainer.create(dataclasses.replace(config, episodes=3), SEEDS,
                                     [tmp_path / f"b{s}" for s in SEEDS])
    finish(split)
    resumed = PopulationTrainer.resume([tmp_path / f"b{s}" for s in SEEDS], {"episodes": 6})
    assert resumed.episode == 3
    finish(resumed)
    for seed, a, b in zip(SEEDS, straight.runs, resumed.runs, strict=True):
        log_a, log_b = read_log(tmp_path / f"a{seed}" / "log.csv"), read_log(
            tmp_path / f"b{seed}" / "log.csv")
        for key in set(LOG_FIELDS) - set(TIMING_FIELDS):
            np.testing.assert_array_equal(log_a[key], log_b[key], err_msg=key)
        for p, q in zip(a.agent.parameters(), b.agent.parameters(), strict=True):
            assert torch.equal(p, q)
    # One member's folder is an ordinary run: it resumes on its own, as a single run.
    alone = Trainer.resume(tmp_path / "a4", {"episodes": 8})
    finish(alone)
    assert len(read_log(tmp_path / "a4" / "log.csv")["episode"]) == 8


def test_refusals(tmp_path, capsys):
    config = TrainConfig(agent="lstm", **TINY)
    mixed = [Trainer(dataclasses.replace(config, seed=1), tmp_path / "x1"),
             Trainer(dataclasses.replace(config, seed=2, lr=0.1), tmp_path / "x2")]
    with pytest.raises(ValueError, match=r"differ only in seed.*\blr\b"):
        PopulationTrainer(mixed)
    for run in mixed:
        run.close()
    with pytest.raises(ValueError, match="seeds of a population must differ"):
        PopulationTrainer.create(config, [1, 1], [tmp_path / "y1", tmp_path / "y2"])
    one = Trainer(dataclasses.replace(config, seed=1), tmp_path / "z1")
    one.train(until_episode=2, progress=False)
    other = Trainer(dataclasses.replace(config, seed=2), tmp_path / "z2")
    with pytest.raises(ValueError, match="same episode"):
        PopulationTrainer([one, other])
    one.close()
    other.close()
    with pytest.raises(ValueError, match="cannot train as a population"):
        PopulationTrainer.create(dataclasses.replace(config, agent="backpropamine"), [1, 2],
                                 [tmp_path / "b1", tmp_path / "b2"])
    assert "backpropamine" not in population_agents() and "lstm" in population_agents()

    script = load_script("train_maze")
    for argv, message in (
            (["--agent", "warp_lstm", "--seeds", "0", "1"], "cannot train as a population"),
            (["--seeds", "0", "1", "--seed", "2"], "contradict"),
            (["--seeds", "0", "0"], "distinct"),
            (["--seeds", "0", "--cuda-graph"], "--cuda-graph captures"),
            (["--seed", "0", "--device", "cuda", "--cuda-graph"], "give --seeds")):
        with pytest.raises(SystemExit) as exit_info:
            script.main([*argv, "--out", str(tmp_path / "s")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything was written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("agent", ["warp_identity_orth", "lstm"])
def test_cuda_population_matches_separate_runs(tmp_path, agent):
    config = TrainConfig(agent=agent, device="cuda", **TINY)
    population = PopulationTrainer.create(config, SEEDS, [tmp_path / f"pop{s}" for s in SEEDS])
    finish(population)
    for member, seed in zip(population.runs, SEEDS, strict=True):
        alone = Trainer(dataclasses.replace(config, seed=seed), tmp_path / f"alone{seed}")
        finish(alone)
        a = read_log(tmp_path / f"pop{seed}" / "log.csv")
        b = read_log(tmp_path / f"alone{seed}" / "log.csv")
        np.testing.assert_array_equal(a["reward_mean"], b["reward_mean"])
        for p, q in zip(member.agent.parameters(), alone.agent.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("agent", ["warp_identity_orth", "lstm"])
def test_cuda_graph_population_matches_the_eager_population(tmp_path, agent):
    # Episode 0 runs eagerly, episode 1 is captured and replayed, episodes 2.. are replays: a
    # graph that read a stale input (mazes, noise, parameters) or lost a gradient would drift.
    config = TrainConfig(agent=agent, device="cuda", **dict(TINY, episodes=6))
    graphed = PopulationTrainer.create(config, SEEDS, [tmp_path / f"g{s}" for s in SEEDS],
                                       cuda_graph=True)
    finish(graphed)
    assert graphed._graph is not None
    eager = PopulationTrainer.create(config, SEEDS, [tmp_path / f"e{s}" for s in SEEDS])
    finish(eager)
    for g_run, e_run, seed in zip(graphed.runs, eager.runs, SEEDS, strict=True):
        a = read_log(tmp_path / f"g{seed}" / "log.csv")
        b = read_log(tmp_path / f"e{seed}" / "log.csv")
        np.testing.assert_array_equal(a["reward_mean"], b["reward_mean"])
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-6)
        for p, q in zip(g_run.agent.parameters(), e_run.agent.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_through_the_script_and_resume(tmp_path):
    script = load_script("train_maze")
    base = ["--agent", "warp_identity_orth", "--device", "cuda", "--batch-size", "4",
            "--hidden-size", "8", "--maze-size", "7", "--episode-length", "12",
            "--warmup-episodes", "1", "--meta-interval", "2", "--checkpoint-every", "2",
            "--no-plot", "--quiet"]
    assert script.main([*base, "--seeds", "3", "4", "--episodes", "5", "--cuda-graph",
                        "--out", str(tmp_path / "straight")]) == 0
    assert script.main([*base, "--seeds", "3", "4", "--episodes", "3", "--cuda-graph",
                        "--out", str(tmp_path / "split")]) == 0
    assert script.main([*base, "--seeds", "3", "4", "--episodes", "5", "--cuda-graph",
                        "--resume", "--out", str(tmp_path / "split")]) == 0
    for seed in (3, 4):
        a = read_log(tmp_path / "straight" / f"seed{seed}" / "log.csv")
        b = read_log(tmp_path / "split" / f"seed{seed}" / "log.csv")
        np.testing.assert_array_equal(a["episode"], np.arange(5))
        np.testing.assert_array_equal(a["reward_mean"], b["reward_mean"])
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-6)
