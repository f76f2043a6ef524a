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
