"""scripts/train_maze_sb3.py: RecurrentPPO and frame-stacked A2C on WarpMaze-v0, tiny runs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]



sb3_script = load_script("train_maze_sb3")

# 3 rounds of 2 mazes x 25 steps on the 5x5 maze (small enough that goals are found).
TINY = ["--n-envs", "2", "--episode-length", "25", "--size", "5", "--n-steps", "5",
        "--episodes", "3", "--no-progress"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


@pytest.mark.parametrize("algo, flags", [
    ("recurrent_ppo", []),
    ("recurrent_ppo", ["--per-maze-envs", "--step-by-step-lstm"]),  # sb3's own code paths
    ("a2c", []),
    ("a2c", ["--per-maze-envs"]),
])
def test_tiny_run_writes_the_log(tmp_path, algo, flags):
    extra = ["--batch-size", "5", "--n-epochs", "2"] if algo == "recurrent_ppo" else []
    out = sb3_script.main(["--algo", algo, "--seed", "1", "--out", str(tmp_path), *TINY,
                           *extra, *flags])
    header, rows = read_csv(out / "log.csv")
    assert header == list(sb3_script.LOG_FIELDS)
    for name in ("episode", "reward_mean", "wall_s"):  # the columns plot_maze.py reads
        assert name in header
    assert [int(r["episode"]) for r in rows] == [0, 1, 2]
    assert [int(r["timesteps"]) for r in rows] == [50, 100, 150]  # 2 mazes x 25 steps per row
    rewards = np.array([float(r["reward_mean"]) for r in rows])
    # Each maze's return is a multiple of the goal reward 10; the mean over 2 mazes of 5.
    assert np.all(rewards >= 0) and np.allclose(rewards % 5, 0)
    assert rewards.sum() > 0  # goals are found on the 5x5 maze: the rewards reach the log
    walls = [float(r["wall_s"]) for r in rows]
    assert walls == sorted(walls) and walls[0] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["agent"] == f"sb3-{algo}" and config["total_timesteps"] == 150
    if algo == "recurrent_ppo":
        assert config["sb3_kwargs"]["batch_size"] == 5 and config["sb3_kwargs"]["n_epochs"] == 2
        assert config["policy"] == ("MlpLstmPolicy" if flags else "OneCallLstmPolicy")
        from sb3_contrib import RecurrentPPO

        model = RecurrentPPO.load(out / "model.zip")  # the saved policy class loads back
        assert type(model.policy).__name__ == ("RecurrentActorCriticPolicy" if flags
                                               else "OneCallLstmPolicy")
    assert (out / "model.zip").stat().st_size > 0


def test_same_seed_same_rewards(tmp_path):
    logs = []
    for run in ("a", "b"):
        out = sb3_script.main(["--algo", "a2c", "--seed", "3", "--out", str(tmp_path / run),
                               *TINY])
        logs.append([r["reward_mean"] for r in read_csv(out / "log.csv")[1]])
    assert logs[0] == logs[1]


def test_a2c_sees_stacked_frames(tmp_path):
    out = sb3_script.main(["--algo", "a2c", "--n-stack", "3", "--out", str(tmp_path), *TINY])
    from stable_baselines3 import A2C

    model = A2C.load(out / "model.zip")
    assert model.observation_space.shape == (3 * 17,)


def test_missing_sb3_contrib_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)  # import raises ImportError
    with pytest.raises(SystemExit, match=r"sb3-contrib.*warp-rl\[contrib\]"):
        sb3_script.main(["--algo", "recurrent_ppo", "--out", str(tmp_path), *TINY])
    assert not (tmp_path / "log.csv").exists()


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--size must be an odd integer >= 5; got 8"):
        sb3_script.main(["--algo", "a2c", "--out", str(tmp_path),
                         *TINY[:4], "--size", "8", "--episodes", "1"])
    with pytest.raises(SystemExit, match="--batch-size applies to recurrent_ppo only"):
        sb3_script.main(["--algo", "a2c", "--batch-size", "64", "--out", str(tmp_path), *TINY])
    with pytest.raises(SystemExit, match="--step-by-step-lstm applies to recurrent_ppo only"):
        sb3_script.main(["--algo", "a2c", "--step-by-step-lstm", "--out", str(tmp_path), *TINY])
    with pytest.raises(SystemExit):
        sb3_script.main(["--algo", "dqn", "--episodes", "1", "--out", str(tmp_path)])
    assert "invalid choice: 'dqn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the budget is required, in one form only
        sb3_script.main(["--algo", "a2c", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        sb3_script.main(["--algo", "a2c", "--episodes", "0", "--out", str(tmp_path)])
    assert "expected a positive integer; got 0" in capsys.readouterr().err


def test_batched_vec_env_equals_dummy_vec_env_of_one_maze():
    """The numpy-batched SB3 VecEnv is DummyVecEnv(Monitor(WarpMaze-v0)) for one maze."""
    import gymnasium
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    import envs  # noqa: F401
    from envs.sb3_vec_env import WarpMazeSB3VecEnv

    batched = WarpMazeSB3VecEnv(1, size=5, episode_length=25)
    dummy = DummyVecEnv([lambda: Monitor(gymnasium.make("WarpMaze-v0", size=5,
                                                         episode_length=25))])
    for env in (batched, dummy):
        env.seed(7)
    obs_b, obs_d = batched.reset(), dummy.reset()
    np.testing.assert_array_equal(obs_b, obs_d)
    actions = np.random.default_rng(0).integers(0, 4, size=(70, 1))  # 2.8 episodes
    ends = 0
    for action in actions:
        obs_b, rew_b, done_b, info_b = batched.step(action)
        obs_d, rew_d, done_d, info_d = dummy.step(action)
        np.testing.assert_array_equal(obs_b, obs_d)
        np.testing.assert_array_equal(rew_b, rew_d)
        assert rew_b.dtype == rew_d.dtype and done_b.dtype == done_d.dtype
        np.testing.assert_array_equal(done_b, done_d)
        if not done_b[0]:
            assert info_b == [{}]
        else:
            ends += 1
            assert info_b[0]["TimeLimit.truncated"] is info_d[0]["TimeLimit.truncated"] is True
            np.testing.assert_array_equal(info_b[0]["terminal_observation"],
                                          info_d[0]["terminal_observation"])
            for key in ("r", "l"):
                assert info_b[0]["episode"][key] == info_d[0]["episode"][key]
    assert ends == 2
    assert batched.get_attr("render_mode") == [None]
    assert batched.env_is_wrapped(Monitor) == [False]


def test_one_call_lstm_equals_sb3_contribs_step_by_step_loop():
    """Same outputs, final states and gradients as RecurrentActorCriticPolicy._process_sequence."""
    import torch
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    from agents.sb3_lstm import OneCallLstmPolicy, lstm_over_sequences

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 5).double()
    n_seq, max_len = 4, 7
    features = torch.randn(n_seq * max_len, 6, dtype=torch.float64, requires_grad=True)
    states = (torch.randn(1, n_seq, 5, dtype=torch.float64),
              torch.randn(1, n_seq, 5, dtype=torch.float64))
    starts_at_first = torch.zeros(n_seq, max_len, dtype=torch.float64)
    starts_at_first[[0, 2], 0] = 1.0  # PPO-update sequences: starts only at the first step
    starts_inside = starts_at_first.clone()
    starts_inside[1, 3] = 1.0  # a start mid-sequence: the loop is needed, and used
    for starts in (starts_at_first, starts_inside, starts_at_first[:, :1]):
        n = starts.numel()
        x = features[:n]
        ours = lstm_over_sequences(x, states, starts.reshape(-1), lstm)
        theirs = RecurrentActorCriticPolicy._process_sequence(x, states, starts.reshape(-1),
                                                              lstm)
        torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-12)
        for a, b in zip(ours[1], theirs[1], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        grad_ours = torch.autograd.grad(ours[0].square().sum(), [x, *lstm.parameters()])
        grad_theirs = torch.autograd.grad(theirs[0].square().sum(), [x, *lstm.parameters()])
        for a, b in zip(grad_ours, grad_theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert OneCallLstmPolicy._process_sequence is lstm_over_sequences


def test_batched_vec_env_reports_every_maze_and_refuses_what_it_cannot_do():
    from envs.sb3_vec_env import WarpMazeSB3VecEnv

    env = WarpMazeSB3VecEnv(3, size=5, episode_length=10)
    env.seed(0)
    obs = env.reset()
    assert obs.shape == (3, 17) and obs.dtype == np.float32
    totals = np.zeros(3)
    rng = np.random.default_rng(1)
    for t in range(10):
        obs, rewards, dones, infos = env.step(rng.integers(0, 4, size=3))
        totals += rewards
        assert dones.all() == (t == 9)
    assert [info["episode"]["l"] for info in infos] == [10, 10, 10]
    np.testing.assert_allclose([info["episode"]["r"] for info in infos], totals)
    assert all(info["terminal_observation"].shape == (17,) for info in infos)
    obs, rewards, dones, infos = env.step(np.zeros(3, dtype=np.int64))  # a new episode
    assert infos == [{}, {}, {}] and not dones.any()
    with pytest.raises(ValueError, match="autoreset_mode is not accepted"):
        WarpMazeSB3VecEnv(2, autoreset_mode="NextStep")
    with pytest.raises(NotImplementedError, match=r"set 'size' on \.batch"):
        env.set_attr("size", 7)
    with pytest.raises(NotImplementedError, match=r"call 'reset' on \.batch"):
        env.env_method("reset")


def model_parameters(path: Path, algo: str) -> dict:
    cls = sb3_script.import_algo(algo)
    return {k: v.clone() for k, v in cls.load(path).policy.state_dict().items()}


@pytest.mark.parametrize("algo, flags, first_leg", [
    # 3 rollouts of 10 steps: the first leg stops mid-episode, LSTM states and all.
    ("recurrent_ppo", ["--batch-size", "5", "--n-epochs", "2", "--n-steps", "10"],
     ["--timesteps", "60"]),
    # SB3's DummyVecEnv of Monitors, under a frame stack; stops after round 2.
    ("a2c", ["--per-maze-envs"], ["--episodes", "2"]),
])
def test_resume_continues_exactly(tmp_path, algo, flags, first_leg):
    common = ["--algo", algo, "--seed", "2", *TINY[:-3], "--checkpoint-every", "1", *flags]
    straight = sb3_script.main([*common, "--episodes", "4", "--out", str(tmp_path / "a")])
    resumed = tmp_path / "b"
    sb3_script.main([*common, *first_leg, "--out", str(resumed)])
    rows = len(read_csv(resumed / "log.csv")[1])
    with open(resumed / "log.csv", "a") as f:  # a row logged after the last checkpoint...
        f.write(f"{rows},99.0,0.0,150,1.0\n")
    sb3_script.main([*common, "--episodes", "4", "--out", str(resumed), "--resume"])
    assert json.loads((resumed / "config.json").read_text())["episodes"] == 4
    rows_a, rows_b = (read_csv(run / "log.csv")[1] for run in (straight, resumed))
    drop_clock = [{k: v for k, v in r.items() if k != "wall_s"} for r in rows_a]
    assert drop_clock == [{k: v for k, v in r.items() if k != "wall_s"} for r in rows_b]
    assert [int(r["episode"]) for r in rows_b] == [0, 1, 2, 3]  # ... is run again, not kept
    walls = [float(r["wall_s"]) for r in rows_b]
    assert walls == sorted(walls)  # the clock goes on from the checkpoint
    params_a = model_parameters(straight / "model.zip", algo)
    params_b = model_parameters(resumed / "model.zip", algo)
    assert params_a.keys() == params_b.keys()
    for name, value in params_a.items():
        assert (value == params_b[name]).all(), name


def test_resume_and_overwrite_errors(tmp_path):
    common = ["--algo", "a2c", *TINY, "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"no checkpoint\.pt in .*start without --resume"):
        sb3_script.main([*common, "--resume"])
    sb3_script.main(common)
    before = (tmp_path / "log.csv").read_text()
    with pytest.raises(SystemExit, match=r"already holds a run .*--resume.*--overwrite"):
        sb3_script.main(common)
    assert (tmp_path / "log.csv").read_text() == before  # nothing lost
    with pytest.raises(SystemExit,
                       match=r"cannot change --seed on resume \(the run has 0, asked for 1\)"):
        sb3_script.main([*common, "--resume", "--seed", "1"])
    with pytest.raises(SystemExit, match="--resume and --overwrite contradict"):
        sb3_script.main([*common, "--resume", "--overwrite"])
    sb3_script.main([*common, "--overwrite", "--seed", "5"])
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 5
