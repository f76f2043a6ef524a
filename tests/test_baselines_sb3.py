"""scripts/train_maze_sb3.py: RecurrentPPO and frame-stacked A2C on WarpMaze-v0, tiny runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_baselines_{name}",
                                                  ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sb3_script = load_script("train_maze_sb3")

# 3 rounds of 2 mazes x 25 steps on the 5x5 maze (small enough that goals are found).
TINY = ["--n-envs", "2", "--episode-length", "25", "--size", "5", "--n-steps", "5",
        "--episodes", "3", "--no-progress"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


@pytest.mark.parametrize("algo", ["recurrent_ppo", "a2c"])
def test_tiny_run_writes_the_log(tmp_path, algo):
    extra = ["--batch-size", "5", "--n-epochs", "2"] if algo == "recurrent_ppo" else []
    out = sb3_script.main(["--algo", algo, "--seed", "1", "--out", str(tmp_path), *TINY,
                           *extra])
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
    with pytest.raises(SystemExit):
        sb3_script.main(["--algo", "dqn", "--episodes", "1", "--out", str(tmp_path)])
    assert "invalid choice: 'dqn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the budget is required, in one form only
        sb3_script.main(["--algo", "a2c", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        sb3_script.main(["--algo", "a2c", "--episodes", "0", "--out", str(tmp_path)])
    assert "expected a positive integer; got 0" in capsys.readouterr().err
