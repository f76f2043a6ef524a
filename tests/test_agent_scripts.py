"""scripts/train_maze.py, scripts/evaluate_maze.py and scripts/bench_train_maze.py end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script

import agents.trainer as trainer_mod
from agents.trainer import load_checkpoint, read_log

ROOT = Path(__file__).resolve().parents[1]



train_maze = load_script("train_maze")
evaluate_maze = load_script("evaluate_maze")

TINY = ["--batch-size", "3", "--hidden-size", "8", "--maze-size", "7", "--episode-length", "10",
        "--warmup-episodes", "1", "--meta-interval", "2", "--checkpoint-every", "2", "--quiet"]


def test_train_resume_evaluate_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_maze.main(["--episodes", "3", "--out", str(out), *TINY]) == 0
    for name in ("log.csv", "checkpoint.pt", "config.json", "learning_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean reward per episode" in capsys.readouterr().out

    # Same command again: refused (it would overwrite the run) ...
    with pytest.raises(SystemExit) as exc:
        train_maze.main(["--episodes", "3", "--out", str(out), *TINY])
    assert exc.value.code == 2
    assert "already holds a run" in capsys.readouterr().err
    # ... a changed setting on resume is refused too ...
    with pytest.raises(SystemExit):
        train_maze.main(["--resume", "--out", str(out), "--lr", "0.5", "--quiet"])
    assert "cannot change lr on resume" in capsys.readouterr().err
    # ... and --resume continues to more episodes.
    assert train_maze.main(["--resume", "--episodes", "5", "--out", str(out), "--quiet"]) == 0
    assert list(read_log(out / "log.csv")["episode"]) == [0, 1, 2, 3, 4]
    assert load_checkpoint(out / "checkpoint.pt")["episode"] == 5

    gif = tmp_path / "episode.gif"
    assert evaluate_maze.main([str(out), "--episodes", "4", "--batch-size", "3",
                               "--gif", str(gif)]) == 0
    text = capsys.readouterr().out
    assert "reward per episode: mean" in text and "GIF of one episode" in text
    with Image.open(gif) as im:  # the start and 10 steps; Pillow merges repeated frames
        total_ms = 0
        for k in range(im.n_frames):
            im.seek(k)
            total_ms += im.info["duration"]
    assert im.n_frames >= 2 and abs(total_ms - 11 * 125) <= 11 * 10  # GIF: 10 ms units


def test_evaluate_is_reproducible(tmp_path):
    out = tmp_path / "run"
    assert train_maze.main(["--episodes", "1", "--out", str(out), "--no-plot", *TINY]) == 0
    agent, config = trainer_mod.load_agent(out / "checkpoint.pt")
    a = evaluate_maze.evaluate(agent, config, episodes=5, batch_size=2, seed=7)
    b = evaluate_maze.evaluate(agent, config, episodes=5, batch_size=2, seed=7)
    assert a.shape == (5,)
    np.testing.assert_array_equal(a, b)


def test_pick_episode_median_best_worst_and_index() -> None:
    pick = evaluate_maze.pick_episode
    assert pick(np.array([5.0, 1.0, 9.0, 4.0, 7.0]), "median") == 0  # the median itself
    assert pick(np.array([1.0, 2.0, 3.0, 10.0]), "median") == 1  # median 2.5: 2 and 3 tie
    assert pick(np.array([0.0, 30.0, 10.0, 20.0, 40.0]), "median") == 3
    assert pick(np.array([3.0, 8.0, 8.0, 1.0]), "best") == 1
    assert pick(np.array([3.0, 8.0, 1.0, 1.0]), "worst") == 2
    assert pick(np.array([3.0, 8.0, 1.0]), 2) == 2
    with pytest.raises(ValueError, match="episode 3 does not exist: 3 were evaluated"):
        pick(np.array([3.0, 8.0, 1.0]), 3)


def _track(rewards: list[float], agent: tuple[int, int] = (3, 3),
           goal: tuple[int, int] = (1, 1)) -> object:
    from envs.maze import grid_walls

    steps = len(rewards)
    return evaluate_maze.Track(grid_walls(7), np.array([agent] * (steps + 1)),
                               np.array([goal] * (steps + 1)), np.array(rewards))


def test_gif_frames_show_the_step_the_reward_so_far_and_the_goal() -> None:
    from envs.maze import COLOURS

    track = _track([0.0, 10.0, 0.0, 0.0])
    frames = [evaluate_maze.draw_frame(track, t, cell_px=20) for t in range(5)]
    maze_px = 7 * 20
    banner = frames[0].shape[0] - maze_px
    assert banner > 0 and all(f.shape == frames[0].shape for f in frames)
    # The agent and the goal stay put: the maze part of every frame is the same ...
    for f in frames[1:]:
        np.testing.assert_array_equal(f[banner:], frames[0][banner:])
    # ... while the banner changes with the step number and the reward so far.
    assert not np.array_equal(frames[1][:banner], frames[2][:banner])  # reward 0 -> 10
    assert not np.array_equal(frames[2][:banner], frames[3][:banner])  # step 2 -> 3, reward 10
    same_step = evaluate_maze.draw_frame(_track([0.0, 0.0, 0.0, 0.0]), 2, cell_px=20)
    assert not np.array_equal(same_step[:banner], frames[2][:banner])  # only the reward differs
    # The goal's cell is outlined in the goal's colour, also when the agent stands on it.
    on_goal = evaluate_maze.draw_frame(_track([0.0], agent=(1, 1)), 1, cell_px=20)
    cell = on_goal[banner + 20:banner + 40, 20:40]
    assert (cell[0] == COLOURS["goal"]).all() and (cell[:, 0] == COLOURS["goal"]).all()
    assert (cell[10, 10] == COLOURS["agent"]).all()


def test_evaluate_draws_the_median_episode(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_maze.main(["--episodes", "1", "--out", str(out), "--no-plot", *TINY]) == 0
    agent, config = trainer_mod.load_agent(out / "checkpoint.pt")
    tracks: list = []
    rewards = evaluate_maze.evaluate(agent, config, episodes=7, batch_size=3, seed=5,
                                     tracks=tracks)
    np.testing.assert_array_equal(
        rewards, evaluate_maze.evaluate(agent, config, episodes=7, batch_size=3, seed=5))
    assert len(tracks) == 7
    for track, total in zip(tracks, rewards, strict=True):  # a track replays its episode
        assert track.agent.shape == (11, 2) and track.reward.sum() == total
    median = evaluate_maze.pick_episode(rewards, "median")
    gif = tmp_path / "median.gif"
    capsys.readouterr()
    assert evaluate_maze.main([str(out), "--episodes", "7", "--batch-size", "3", "--seed", "5",
                               "--gif", str(gif)]) == 0
    text = capsys.readouterr().out
    assert f"episode {median} of 7 (the closest to the median reward" in text
    assert f"reward {rewards[median]:g}, 10 steps" in text
    assert evaluate_maze.main([str(out), "--episodes", "7", "--batch-size", "3", "--seed", "5",
                               "--gif", str(gif), "--gif-episode", "6"]) == 0
    assert f"episode 6 of 7 (chosen), reward {rewards[6]:g}" in capsys.readouterr().out
    with Image.open(gif) as im:
        assert im.n_frames == 11  # the start and 10 steps, each frame with its own step number
    with pytest.raises(SystemExit):
        evaluate_maze.main([str(out), "--episodes", "7", "--gif-episode", "7"])
    assert "only 7 episodes are evaluated" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--episodes", "0"], "episodes must be an integer >= 1; got 0"),
    (["--maze-size", "8"], "maze_size must be an odd integer >= 5; got 8"),
    (["--lr", "-1"], "lr must be a number in (0, 1e+06]; got -1.0"),
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N; got 'tpu'"),
    (["--agent", "gru"], "invalid choice: 'gru'"),
    (["--batch-size", "many"], "invalid int value: 'many'"),
    (["--resume", "--overwrite"], "contradict"),
])
def test_bad_flags_get_clear_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        train_maze.main([*argv, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_maze.main(["--resume", "--out", str(tmp_path / "none")])
    assert "nothing to resume" in capsys.readouterr().err


def test_nan_exits_with_a_message(tmp_path, capsys, monkeypatch):
    real = trainer_mod.a2c_loss
    monkeypatch.setattr(trainer_mod, "a2c_loss",
                        lambda *a, **k: real(*a, **k)._replace(total=real(*a, **k).total * np.nan))
    assert train_maze.main(["--episodes", "3", "--out", str(tmp_path), *TINY]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss at episode 0" in err and "checkpoint" in err
    assert load_checkpoint(tmp_path / "checkpoint.pt")["episode"] == 0


def test_benchmark_prints_its_figures(capsys):
    bench = load_script("bench_train_maze")
    bench.main(["--batch-sizes", "2", "--episodes", "1", "--warmup", "0", "--episode-length",
                "5", "--hidden-size", "8", "--maze-size", "7"])
    lines = capsys.readouterr().out.splitlines()
    original = next(x for x in lines if "original" in x.split())
    trainer = next(x for x in lines if "trainer" in x.split())
    assert float(original.split()[3]) > 0 and trainer.split()[-1].endswith("x")


def test_objective_benchmark_measures_its_baseline_first(capsys):
    """The ratios are against two_timescale whatever order the names come in: it is measured
    first, in the same run, even when not asked for; an unknown name is refused (exit 2)."""
    bench = load_script("bench_train_maze")
    bench.main(["--objectives", "algorithm2_detached", "--batch-sizes", "2", "--episode-length",
                "5", "--hidden-size", "8", "--maze-size", "7", "--meta-interval", "2",
                "--intervals", "1", "--warp-pairs", "1"])
    rows = [x.split() for x in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["two_timescale", "algorithm2_detached"]
    assert rows[0][-2:] == ["1.00x", "1.00x"]
    assert all(float(r.rstrip("x")) > 0 for r in rows[1][-2:])
    with pytest.raises(SystemExit) as exc:
        bench.main(["--objectives", "algorithm3"])
    assert exc.value.code == 2 and "accepted: two_timescale" in capsys.readouterr().err


@pytest.mark.parametrize("agent, lr", [("backpropamine", 1e-4), ("lstm", 1e-3)])
def test_paper_preset_uses_each_agents_published_step_size(tmp_path, agent, lr):
    """--paper gives Backpropamine its own paper's Adam lr (1e-4), the others the WarpGrad
    paper's 1e-3; --resume --paper accepts the run it started and an explicit --lr still wins."""
    out = tmp_path / agent
    small = ["--batch-size", "2", "--hidden-size", "4", "--maze-size", "7", "--episode-length", "4",
             "--quiet", "--no-plot"]
    assert train_maze.main(["--paper", "--agent", agent, "--episodes", "1", "--out", str(out),
                            *small]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["config"]["lr"] == lr
    assert train_maze.main(["--paper", "--resume", "--episodes", "2", "--out", str(out),
                            *small]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["episode"] == 2
    other = tmp_path / f"{agent}-lr"
    assert train_maze.main(["--paper", "--agent", agent, "--lr", "0.01", "--episodes", "1",
                            "--out", str(other), *small]) == 0
    assert load_checkpoint(other / "checkpoint.pt")["config"]["lr"] == 0.01


@pytest.mark.parametrize(("flags", "agent"), [([], train_maze.DEFAULT_AGENT),
                                              (["--paper"], "warp"),
                                              (["--paper", "--agent", "warp_lstm"], "warp_lstm")])
def test_main_job_trains_the_recommended_variant_and_paper_the_published_agent(
        tmp_path, flags, agent):
    out = tmp_path / "run"
    assert train_maze.main([*flags, "--episodes", "1", "--out", str(out), "--no-plot",
                            *TINY]) == 0
    assert json.loads((out / "config.json").read_text())["agent"] == agent
    assert train_maze.DEFAULT_AGENT != "warp" and train_maze.DEFAULT_AGENT.startswith("warp_")
