"""Each baseline trains through the maze trainer (agents/trainer.py) at tiny sizes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from script_loader import load_script

from agents.backpropamine import BackpropamineAgent
from agents.trainer import LOG_NAME, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(agent: str, **kw) -> TrainConfig:
    return TrainConfig(agent=agent, seed=0, episodes=3, batch_size=3, hidden_size=8,
                       maze_size=5, episode_length=12, warmup_episodes=0,
                       checkpoint_every=100, **kw)


def train(config: TrainConfig, out: Path, agent=None) -> tuple[dict, dict, Trainer]:
    trainer = Trainer(config, out, agent=agent)
    before = {n: p.detach().clone() for n, p in trainer.agent.named_parameters()}
    try:
        trainer.train(progress=False)
    finally:
        trainer.close()
    after = {n: p.detach().clone() for n, p in trainer.agent.named_parameters()}
    return before, after, trainer


@pytest.mark.parametrize("name", ["rnn", "lstm", "backpropamine"])
def test_baseline_trains_through_the_trainer(tmp_path, name):
    before, after, trainer = train(tiny_config(name), tmp_path)
    assert trainer.warp_opt is None  # baselines: one optimiser over every weight
    with open(tmp_path / LOG_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["episode"]) for r in rows] == [0, 1, 2]
    assert all(r["fast_step"] == "1" and r["warp_step"] == "0" for r in rows)
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(before), f"never updated: {set(before) - changed}"
    assert (tmp_path / "checkpoint.pt").is_file()


def test_retroactive_backpropamine_trains(tmp_path):
    torch.manual_seed(0)
    agent = BackpropamineAgent(17, 4, hidden_size=8, modulation="retroactive")
    before, after, _ = train(tiny_config("backpropamine"), tmp_path, agent=agent)
    for n in ("cell.alpha", "cell.modulator.weight", "cell.eta_logit"):
        assert not torch.equal(before[n], after[n]), n


def test_same_seed_same_training(tmp_path):
    _, a, _ = train(tiny_config("backpropamine"), tmp_path / "a")
    _, b, _ = train(tiny_config("backpropamine"), tmp_path / "b")
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=0)


def test_plot_reads_trainer_runs(tmp_path):
    """The comparison script reads the trainer's folders (agent name from checkpoint.pt)."""
    for name in ("rnn", "lstm"):
        train(tiny_config(name), tmp_path / "runs" / name)
    plot_maze = load_script("plot_maze")
    table = plot_maze.main([str(tmp_path / "runs"), "--smooth", "2", "--last", "2",
                            "--out", str(tmp_path / "cmp.png")])
    agents = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert agents == ["lstm", "rnn"]
    assert (tmp_path / "cmp.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["rnn", "lstm", "backpropamine"])
def test_baseline_trains_through_train_maze_script(tmp_path, name):
    """The command-line path of the issue: scripts/train_maze.py --agent NAME."""
    script = load_script("train_maze")
    out = tmp_path / name
    code = script.main(["--agent", name, "--episodes", "2", "--batch-size", "2",
                        "--hidden-size", "8", "--maze-size", "5", "--episode-length", "10",
                        "--warmup-episodes", "0", "--out", str(out), "--quiet", "--no-plot"])
    assert code == 0
    with open(out / LOG_NAME, newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert json.loads((out / "config.json").read_text())["agent"] == name
