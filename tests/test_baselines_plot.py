"""scripts/plot_maze.py on synthetic run folders whose statistics are known exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
plot_maze = load_script("plot_maze")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, reward: np.ndarray, seconds_per_episode: float,
              agent: str | None = None, where: str = "config.json",
              columns: tuple[str, str, str] = ("episode", "reward_mean", "wall_s")) -> None:
    folder.mkdir(parents=True)
    wall = seconds_per_episode * np.arange(1, len(reward) + 1)
    lines = [",".join((*columns, "extra"))]
    lines += [f"{i},{float(r)!r},{float(w)!r},0"
              for i, (r, w) in enumerate(zip(reward, wall, strict=True))]
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    if agent is not None and where == "config.json":
        (folder / "config.json").write_text(json.dumps({"agent": agent, "seed": 0}))
    elif agent is not None and where == "checkpoint.pt":  # the trainer's layout
        torch.save({"config": {"agent": agent}}, folder / "checkpoint.pt")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """'linear': seed s earns (episode + 10 s) / 10, 1000 episodes (+ s extra), 0.5 s each;
    'flat': 3 seeds earning 20 + s, 600 episodes, agent in checkpoint.pt; 'nolabel': 1 seed."""
    ep = np.arange(1000, dtype=np.float64)
    for s in range(3):
        write_run(tmp_path / "all" / f"linear_s{s}", np.append((ep + 10 * s) / 10, [0.0] * s),
                  0.5, "linear")
        write_run(tmp_path / "all" / f"flat_s{s}", np.full(600, 20.0 + s), 0.2 + 0.1 * s,
                  "flat", where="checkpoint.pt")
    write_run(tmp_path / "nolabel", np.full(50, 1.0), 1.0,
              columns=("episode", "mean_reward", "wall_time"))
    return tmp_path


def test_smooth_is_a_trailing_mean():
    x = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(plot_maze.smooth(x, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(plot_maze.smooth(x, 10), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="window must be >= 1; got 0"):
        plot_maze.smooth(x, 0)


def test_table_and_png(runs, tmp_path):
    png = tmp_path / "out" / "cmp.png"
    table = plot_maze.main([str(runs / "all"), str(runs / "nolabel"), "--label", "linear",
                            "--label", "nolabel", "--smooth", "11", "--last", "100", "--out",
                            str(png), "--table", str(tmp_path / "t.md")])
    assert (tmp_path / "t.md").read_text() == table
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    import matplotlib.pyplot as plt

    assert plt.imread(png).shape[2] in (3, 4)

    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines()[2:]}
    # --label "linear" applies to every run under all/, overriding config files and checkpoints.
    assert set(rows) == {"linear", "nolabel"}
    # One --label may carry several names, in path order.
    assert plot_maze.main([str(runs / "all"), str(runs / "nolabel"), "--label", "linear",
                           "nolabel", "--smooth", "11", "--last", "100", "--out",
                           str(png)]) == table


def test_statistics(runs):
    groups = plot_maze.group_runs(plot_maze.load_runs([runs / "all"]))
    assert list(groups) == ["flat", "linear"]  # sorted folder order; agents from config/ckpt
    lin = plot_maze.summarise(groups["linear"], window=11, last=101, thresholds=[50, 100])
    assert lin.seeds == 3 and lin.episodes == 1000  # truncated to the shortest seed
    # Mean of the last 101 of (e + 10 s) / 10, e = 899..999: 94.9 + s.
    assert lin.final == pytest.approx(95.9)
    assert (lin.final_min, lin.final_max) == (pytest.approx(94.9), pytest.approx(96.9))
    # Trailing mean of 11 at episode e: (e - 5 + 10 s) / 10 >= T  <=>  e >= 10 T + 5 - 10 s.
    assert lin.reach[50] == (495.0, 3)
    assert lin.reach[100] == (995.0, 2)  # seed 0 never gets there: median of (inf, 995, 985)
    assert lin.s_per_episode == pytest.approx(0.5)
    flat = plot_maze.summarise(groups["flat"], window=11, last=101, thresholds=[50, 100])
    assert flat.final == pytest.approx(21.0) and flat.reach[50] == (math.inf, 0)
    assert flat.s_per_episode == pytest.approx(0.3)
    table = plot_maze.markdown_table([lin, flat], last=101)
    assert "final reward (last 101, median [range])" in table.splitlines()[0]
    assert "| linear | 3 | 1000 | 95.9 [94.9, 96.9] | 495 | 995 (2/3 seeds) | 0.500 |" in table
    assert "| flat | 3 | 600 | 21.0 [20.0, 22.0] | not reached | not reached | 0.300 |" in table


def test_other_column_spellings_are_read(runs):
    (run,) = plot_maze.load_runs([runs / "nolabel"], ["x"])
    assert run.agent == "x" and len(run.reward) == 50 and run.wall_s[-1] == 50.0


def test_errors_are_clear(runs, tmp_path):
    with pytest.raises(SystemExit, match="pass --label"):
        plot_maze.main([str(runs / "nolabel"), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match=r"no log\.csv or log\.csv\.gz in"):
        (tmp_path / "empty").mkdir()
        plot_maze.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="once per path \\(2\\); got 3"):
        plot_maze.main([str(runs / "all"), str(runs / "nolabel"), "--label", "a",
                        "--label", "b", "--label", "c"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "log.csv").write_text("episode,score\n0,1\n")
    with pytest.raises(SystemExit, match="no column reward_mean or mean_reward or reward"):
        plot_maze.main([str(bad), "--label", "b", "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_smoothed_reward_at_given_episodes(runs):
    groups = plot_maze.group_runs(plot_maze.load_runs([runs / "all"]))
    lin = plot_maze.summarise(groups["linear"], window=11, last=101, thresholds=[50],
                              at=[500, 1000, 5000])
    # Trailing mean of 11 after E episodes: (E - 6 + 10 s) / 10, median over s = 0, 1, 2.
    assert lin.at == {500: pytest.approx(50.4), 1000: pytest.approx(100.4)}  # 5000 > length
    table = plot_maze.markdown_table([lin], last=101, at=[500, 1000, 5000])
    assert table.splitlines()[0].count("| at ") == 3
    assert "| 50.4 | 100.4 | - |" in table


def test_compressed_logs_give_the_same_table(runs, tmp_path):
    """results/ keeps logs as log.csv.gz; the table from them equals the table from log.csv."""
    import gzip
    import shutil

    plain = plot_maze.main([str(runs / "all"), "--out", str(tmp_path / "a.png"), "--at", "500"])
    packed = tmp_path / "packed"
    shutil.copytree(runs / "all", packed)
    for log in packed.rglob("log.csv"):
        with open(log, "rb") as src, gzip.open(log.with_name("log.csv.gz"), "wb") as dst:
            dst.write(src.read())
        log.unlink()
    got = plot_maze.main([str(packed), "--out", str(tmp_path / "b.png"), "--at", "500"])
    assert got == plain and "linear" in got and "flat" in got


def test_a_log_in_parts_reads_as_the_whole_and_a_missing_part_is_refused(runs, tmp_path):
    """Long runs are kept as log.part0.csv.gz, log.part1.csv.gz, ... (each with the header)."""
    import gzip
    import shutil

    plain = plot_maze.main([str(runs / "all"), "--out", str(tmp_path / "a.png"), "--at", "500"])
    parted = tmp_path / "parted"
    shutil.copytree(runs / "all", parted)
    for log in parted.rglob("log.csv"):
        head, *body = log.read_text().splitlines(keepends=True)
        for k in range(0, len(body), 80):  # parts 0..N, numbered past 9 to test the order
            with gzip.open(log.with_name(f"log.part{k // 80}.csv.gz"), "wt") as dst:
                dst.write(head + "".join(body[k:k + 80]))
        log.unlink()
    assert any(parted.rglob("log.part10.csv.gz"))
    got = plot_maze.main([str(parted), "--out", str(tmp_path / "b.png"), "--at", "500"])
    assert got == plain
    next(parted.rglob("log.part3.csv.gz")).unlink()
    with pytest.raises(SystemExit, match="do not continue one another"):
        plot_maze.main([str(parted), "--out", str(tmp_path / "c.png")])


def test_label_parent_groups_by_the_folder_above(runs, tmp_path):
    import shutil

    for s in range(3):
        shutil.copytree(runs / "all" / f"flat_s{s}", tmp_path / "res" / "group_a" / f"seed{s}")
    shutil.copytree(runs / "all" / "linear_s0", tmp_path / "res" / "group_b" / "seed0")
    loaded = plot_maze.load_runs([tmp_path / "res"], label_parent=True)
    assert sorted({r.agent for r in loaded}) == ["group_a", "group_b"]
    assert sum(r.agent == "group_a" for r in loaded) == 3
    with pytest.raises(ValueError, match="contradict"):
        plot_maze.load_runs([tmp_path / "res"], ["x"], label_parent=True)


def test_max_episodes_cuts_every_run(runs, tmp_path):
    full = plot_maze.main([str(runs / "all"), "--out", str(tmp_path / "a.png"), "--last", "100"])
    cut = plot_maze.main([str(runs / "all"), "--out", str(tmp_path / "b.png"), "--last", "100",
                          "--max-episodes", "500"])
    assert cut != full
    # 'linear' seed s earns (episode + 10 s) / 10: over episodes 400-499 seed s earns 44.95 + s
    line = next(row for row in cut.splitlines() if row.startswith("| linear"))
    assert line.startswith("| linear | 3 | 500 | 46.0 [45.0, 47.0] |")
