"""scripts/probe_second_order.py: what it reports is what algorithm2_interval adds to the
schedule's sum, and it never touches the run it probes."""

from __future__ import annotations

import hashlib

import pytest
from script_loader import load_script
from test_agent_trainer import small

from agents import make_agent
from agents.trainer import Trainer

probe = load_script("probe_second_order")
train_maze = load_script("train_maze")

TINY = ["--batch-size", "3", "--hidden-size", "8", "--maze-size", "7", "--episode-length", "10",
        "--warmup-episodes", "1", "--meta-interval", "3", "--checkpoint-every", "2", "--quiet",
        "--no-plot"]


@pytest.mark.parametrize("term_clip", [None, 1e-2])  # the term's clip off, and active
def test_probe_reports_the_term_the_objective_adds(tmp_path, term_clip):
    """The gradient handed to the warp Adam is the direct sum plus the probe's term: their
    difference has the probe's norm and its cosine with the direct sum."""
    # float64; a large fast lr makes the term large enough (~0.4) for a clip of 1e-2 to act
    cfg = small(agent="warp", warp_objective="algorithm2_interval", warmup_episodes=0,
                meta_interval=3, warp_pairs=1, max_grad_norm=1e6, clip="separate",
                episodes=6, lr=1.0)
    agent = make_agent("warp", obs_dim=17, num_actions=4, hidden_size=cfg.hidden_size)
    tr = Trainer(cfg, tmp_path, agent=agent.double())
    obj = tr.objective
    if term_clip is not None:  # the objective's clip (term and replayed fast gradient)
        obj.ctx.max_grad_norm = term_clip
    reports, handed, direct = [], [], []
    real_objective_step, real_warp_step = obj.step, tr.warp_opt.step

    def objective_step(episode):
        if obj.is_warp_step(episode) and obj.pairs(episode):
            reports.append(probe.probe_step(obj, episode, pairs_to_replay=2))
            direct.append(probe.flat(obj.schedule.warp_grad_sum).clone())
        return real_objective_step(episode)

    def warp_step(*args, **kwargs):
        handed.append(probe.flat(p.grad for p in tr.warp_params))
        return real_warp_step(*args, **kwargs)

    obj.step, tr.warp_opt.step = objective_step, warp_step
    for _ in range(6):
        tr.train_episode()
    tr.close()
    assert len(reports) == len(handed) == 2  # after episodes 2 and 5
    for r, g, d in zip(reports, handed, direct, strict=True):
        term = g - d
        assert r["term"] == pytest.approx(float(term.norm()), rel=1e-9)
        assert r["direct"] == pytest.approx(float(d.norm()), rel=1e-12)
        assert r["cos"] == pytest.approx(float(term @ d / (term.norm() * d.norm())), abs=1e-9)
        assert r["pairs"] == (3 if r["episode"] == 5 else 2)
        assert -1.0 <= r["shared"] <= 1.0 + 1e-9
    assert max(r["term"] for r in reports) > 0
    if term_clip is not None:  # the clip was active: P times the clip norm, up to its 1e-6
        assert all(r["term"] == pytest.approx(r["pairs"] * term_clip, rel=1e-3) for r in reports)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_probe_script_leaves_the_run_alone_and_refuses_other_runs(tmp_path, capsys):
    run = tmp_path / "a2i"
    assert train_maze.main(["--episodes", "4", "--warp-objective", "algorithm2_interval",
                            "--out", str(run), *TINY]) == 0
    before = digest(run)
    capsys.readouterr()
    assert probe.main([str(run), "--episodes", "6", "--pairs", "2"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("episode ") for line in out.splitlines()) == 2
    assert "warp steps from episode 4" in out
    assert digest(run) == before

    plain = tmp_path / "tt"
    assert train_maze.main(["--episodes", "2", "--out", str(plain), *TINY]) == 0
    capsys.readouterr()
    for argv, message in [([str(plain)], "trained with --warp-objective two_timescale"),
                          ([str(tmp_path / "none")], "no checkpoint.pt there"),
                          ([str(run), "--pairs", "1"], "--pairs must be >= 2")]:
        with pytest.raises(SystemExit) as exc:
            probe.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
