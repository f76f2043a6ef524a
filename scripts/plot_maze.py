"""Overlay maze training runs: reward per episode by agent, median and inter-quartile band.

Reads the ``log.csv`` of each run folder (written by ``scripts/train_maze.py`` /
``agents.trainer`` or by ``scripts/train_maze_sb3.py``: one row per episode of ``n`` mazes with
``episode``, ``reward_mean`` and ``wall_s``), groups the runs by agent, and draws reward per
episode against episodes and against wall-clock: one colour per agent, the median over seeds
as a line and the 25-75 % band around it, after a trailing moving average of ``--smooth``
episodes. It also prints a markdown table per agent:

* final reward: the mean raw reward of each run's last ``--last`` episodes, median over seeds
  (with the range over seeds);
* episodes to reach 50 / 100 (``--thresholds``): the first episode at which the smoothed curve
  reaches the threshold, median over seeds (a seed that never reaches it counts as infinite; the
  cell says how many seeds reached it when not all did);
* seconds of training per episode, median over seeds.

Runs are truncated to the shortest run of their agent so that every point of a curve has every
seed. The agent of a run is read from ``config.json`` / ``args.json`` (key ``agent``) or from the
trainer's ``checkpoint.pt``; ``--label`` overrides it.

Usage::

    python scripts/plot_maze.py runs/warp_s* runs/lstm_s* runs/sb3_rppo_s0 --out maze.png
    python scripts/plot_maze.py runs/ --smooth 250 --last 250 --table maze_table.md
    python scripts/plot_maze.py a/ b/ --label warp --label lstm   # one label per folder
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Runnable from a clean clone without installing: the repository root holds warp_rl/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from warp_rl import runs as run_folders
from warp_rl.cli import finite_float as _finite
from warp_rl.cli import positive_int as _positive_int
from warp_rl.runs import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME

LOG_NAMES = (LOG_NAME, LOG_NAME + ".gz")  # a run's log, plain or gzip-compressed (results/)
LOG_PART_GLOB = "log.part*.csv.gz"  # or a long run's log cut in parts (results/; in order)
CONFIG_NAMES = (CONFIG_NAME, "args.json")
# Accepted spellings of the three columns (ours first).
EPISODE_COLUMNS = ("episode",)
REWARD_COLUMNS = ("reward_mean", "mean_reward", "reward")
WALL_COLUMNS = ("wall_s", "wall_time")
COLOURS = {
    "warp": "tab:red", "rnn": "tab:blue", "lstm": "tab:green", "backpropamine": "tab:purple",
    "sb3-recurrent_ppo": "tab:orange", "sb3-a2c": "tab:brown",
}
OTHER_COLOURS = ("tab:pink", "tab:olive", "tab:cyan", "tab:gray", "black", "gold", "navy",
                 "lime", "maroon", "teal", "darkorange", "magenta", "slateblue", "peru")


@dataclass
class Run:
    """One training run: per-episode arrays of equal length ``n``."""

    path: Path
    agent: str
    episode: np.ndarray  # (n,) episode index
    reward: np.ndarray  # (n,) reward per episode (mean over the mazes)
    wall_s: np.ndarray  # (n,) seconds of training since the run began


# ------------------------------------------------------------------------------------------------
# Reading runs
# ------------------------------------------------------------------------------------------------
def find_runs(path: Path) -> list[Path]:
    """Run folders at or under ``path``: ``path`` itself if it holds ``log.csv`` (or
    ``log.csv.gz``), else every folder below it that does (sorted)."""
    if not path.exists():
        raise FileNotFoundError(f"run path {path} does not exist")
    if path.is_file():
        if path.name not in LOG_NAMES:
            raise ValueError(f"{path} is a file but not a {' or '.join(LOG_NAMES)}; give run "
                             "folders")
        return [path.parent]
    if any((path / name).is_file() for name in LOG_NAMES) or any(path.glob(LOG_PART_GLOB)):
        return [path]
    found = sorted({p.parent for name in (*LOG_NAMES, LOG_PART_GLOB) for p in path.rglob(name)})
    if not found:
        raise FileNotFoundError(f"no {' or '.join(LOG_NAMES)} in {path} or any folder below it")
    return found


def agent_name(run_dir: Path) -> str | None:
    """The ``agent`` recorded in the run's config file or checkpoint, or ``None``."""
    for name in CONFIG_NAMES:
        cfg = run_dir / name
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            if isinstance(data, dict) and isinstance(data.get("agent"), str):
                return data["agent"]
    ckpt = run_dir / CHECKPOINT_NAME
    if run_folders.checkpoint_exists(ckpt):
        try:  # tensors and plain data only, with the checkpoint.prev.pt fallback
            data, _ = run_folders.load_checkpoint(ckpt, warn=lambda message: None)
        except run_folders.CheckpointError:
            return None
        config = data.get("config") if isinstance(data, dict) else None
        if isinstance(config, dict) and isinstance(config.get("agent"), str):
            return config["agent"]
    return None


def _column(header: Sequence[str], accepted: Sequence[str], path: Path) -> int:
    for name in accepted:
        if name in header:
            return list(header).index(name)
    raise ValueError(f"{path} has no column {' or '.join(accepted)}; its columns: "
                     f"{', '.join(header)}")


def _part_number(path: Path) -> int:
    return int(path.name[len("log.part"):-len(".csv.gz")])


def read_run(run_dir: Path, label: str | None = None) -> Run:
    """Load ``run_dir/log.csv`` (or ``log.csv.gz``, or the parts ``log.part0.csv.gz``,
    ``log.part1.csv.gz``, ... of a long run, each with the header, read in order); ``label``
    (or the recorded agent name) names its agent."""
    path = run_dir / LOG_NAME
    if not path.is_file() and (run_dir / (LOG_NAME + ".gz")).is_file():
        path = run_dir / (LOG_NAME + ".gz")
    parts = sorted(run_dir.glob(LOG_PART_GLOB), key=_part_number)
    rows: list[list[str]] = []
    for part in parts if parts and not path.is_file() else [path]:
        opener = gzip.open if part.suffix == ".gz" else open
        with opener(part, "rt", newline="") as f:
            part_rows = list(csv.reader(f))
        if rows and part_rows and part_rows[0] != rows[0]:
            raise ValueError(f"{part}: its columns differ from those of the parts before it")
        rows += part_rows if not rows else part_rows[1:]
    if not rows:
        raise ValueError(f"{path} is empty")
    header, body = rows[0], [r for r in rows[1:] if r]
    cols = [_column(header, names, path)
            for names in (EPISODE_COLUMNS, REWARD_COLUMNS, WALL_COLUMNS)]
    try:
        data = np.array([[float(r[c]) for c in cols] for r in body], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: unreadable row ({err})") from None
    data = data.reshape(-1, 3)
    if len(data) == 0:
        raise ValueError(f"{path} has a header but no episodes yet")
    if parts and not np.array_equal(data[:, 0], np.arange(len(data))):
        raise ValueError(f"{run_dir}: the parts of its log do not continue one another "
                         "(episodes missing or repeated)")
    agent = label or agent_name(run_dir)
    if agent is None:
        raise ValueError(f"cannot tell the agent of {run_dir}: no config.json/args.json/"
                         "checkpoint.pt with an 'agent' entry; pass --label")
    return Run(run_dir, agent, data[:, 0], data[:, 1], data[:, 2])


def load_runs(paths: Sequence[Path], labels: Sequence[str] | None = None,
              label_parent: bool = False) -> list[Run]:
    """Every run under ``paths``; ``labels``: none, one for all, or one per path;
    ``label_parent``: label each run by the name of the folder that holds its folder (the
    layout of ``results/maze/<label>/seed<S>/``)."""
    labels = list(labels or [])
    if len(labels) not in (0, 1, len(paths)):
        raise ValueError(f"give --label once (for every run) or once per path ({len(paths)}); "
                         f"got {len(labels)}")
    if labels and label_parent:
        raise ValueError("--label and --label-parent contradict each other; pick one")
    runs = []
    for i, path in enumerate(paths):
        label = labels[0] if len(labels) == 1 else (labels[i] if labels else None)
        runs += [read_run(d, d.resolve().parent.name if label_parent else label)
                 for d in find_runs(Path(path))]
    return runs


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------
def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: ``out[i] = mean(x[max(0, i - window + 1) : i + 1])``."""
    if window < 1:
        raise ValueError(f"window must be >= 1; got {window}")
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(len(x))
    lo = np.maximum(0, i - window + 1)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)


def first_episodes(run: Run, count: int) -> Run:
    """``run`` cut to its first ``count`` episodes (a screen at a fixed length)."""
    return Run(run.path, run.agent, run.episode[:count], run.reward[:count], run.wall_s[:count])


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by agent, agents in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.agent, []).append(run)
    return groups


def first_reach(curve: np.ndarray, episodes: np.ndarray, threshold: float) -> float:
    """The episode at which ``curve`` first reaches ``threshold`` (``inf`` if never)."""
    hit = np.flatnonzero(curve >= threshold)
    return float(episodes[hit[0]]) if len(hit) else math.inf


@dataclass
class Summary:
    """One table row (see the module docstring for the definitions)."""

    agent: str
    seeds: int
    episodes: int  # common length of the runs
    final: float  # median over seeds of the mean of the last `last` episodes
    final_min: float
    final_max: float
    reach: dict[float, tuple[float, int]]  # threshold -> (median episode, seeds reaching it)
    s_per_episode: float
    at: dict[int, float] = field(default_factory=dict)  # E -> median smoothed reward after E


def summarise(runs: Sequence[Run], window: int, last: int,
              thresholds: Sequence[float], at: Sequence[int] = ()) -> Summary:
    """Table row for the runs of one agent (truncated to their common length).

    ``at``: episode counts E at which to report the smoothed reward (the trailing mean of the
    ``window`` episodes up to episode E), median over seeds; counts past the runs' length are
    left out."""
    n = min(len(r.reward) for r in runs)
    k = min(last, n)
    finals = np.array([r.reward[:n][-k:].mean() for r in runs])
    reach = {}
    for t in thresholds:
        hits = np.array([first_reach(smooth(r.reward[:n], window), r.episode[:n], t)
                         for r in runs])
        reach[t] = (float(np.median(hits)), int(np.isfinite(hits).sum()))
    speed = np.median([r.wall_s[n - 1] / n for r in runs])
    curves = [smooth(r.reward[:n], window) for r in runs]
    at_values = {e: float(np.median([c[e - 1] for c in curves])) for e in at if 1 <= e <= n}
    return Summary(runs[0].agent, len(runs), n, float(np.median(finals)), float(finals.min()),
                   float(finals.max()), reach, float(speed), at_values)


def markdown_table(summaries: Sequence[Summary], last: int, at: Sequence[int] = ()) -> str:
    """The summaries as a GitHub markdown table (``at``: the smoothed-reward columns)."""
    thresholds = list(summaries[0].reach) if summaries else []
    head = (["agent", "seeds", "episodes", f"final reward (last {last}, median [range])"]
            + [f"at {e}" for e in at]
            + [f"episodes to {t:g}" for t in thresholds] + ["s / episode"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s.agent, str(s.seeds), str(s.episodes),
                 f"{s.final:.1f} [{s.final_min:.1f}, {s.final_max:.1f}]"]
        cells += [f"{s.at[e]:.1f}" if e in s.at else "-" for e in at]
        for t in thresholds:
            ep, reached = s.reach[t]
            text = "not reached" if math.isinf(ep) else f"{ep:.0f}"
            if 0 < reached < s.seeds:
                text += f" ({reached}/{s.seeds} seeds)"
            cells.append(text)
        cells.append(f"{s.s_per_episode:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------
def colours(agents: Sequence[str]) -> dict[str, str]:
    """A fixed colour for each known agent, the next of :data:`OTHER_COLOURS` for the rest."""
    unknown = [a for a in agents if a not in COLOURS]
    return {a: COLOURS.get(a) or OTHER_COLOURS[unknown.index(a) % len(OTHER_COLOURS)]
            for a in agents}


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds < 120:
        return "s", 1.0
    if seconds < 2 * 3600:
        return "min", 60.0
    return "h", 3600.0


def plot(groups: dict[str, list[Run]], window: int, title: str = "") -> bytes:
    """PNG bytes: reward against episodes (left) and against wall-clock (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ep, ax_wall) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    longest = max(r.wall_s[min(len(x.reward) for x in runs) - 1]
                  for runs in groups.values() for r in runs)
    unit, scale = _time_unit(longest)
    palette = colours(list(groups))
    for agent, runs in groups.items():
        colour = palette[agent]
        n = min(len(r.reward) for r in runs)
        curves = np.stack([smooth(r.reward[:n], window) for r in runs])
        x = runs[0].episode[:n]
        q25, med, q75 = np.percentile(curves, [25, 50, 75], axis=0)
        label = f"{agent} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        ax_ep.plot(x, med, color=colour, lw=1.8, label=label)
        ax_ep.fill_between(x, q25, q75, color=colour, alpha=0.2, lw=0)
        # Wall-clock: each seed's curve interpolated onto a common time grid.
        end = min(r.wall_s[n - 1] for r in runs)
        grid = np.linspace(0.0, end, 400)
        walls = np.stack([np.interp(grid, r.wall_s[:n], c) for r, c in zip(runs, curves,
                                                                           strict=True)])
        q25, med, q75 = np.percentile(walls, [25, 50, 75], axis=0)
        ax_wall.plot(grid / scale, med, color=colour, lw=1.8, label=label)
        ax_wall.fill_between(grid / scale, q25, q75, color=colour, alpha=0.2, lw=0)
    ax_ep.set_xlabel("episode")
    ax_ep.set_ylabel(f"reward per episode (moving average of {window})")
    ax_wall.set_xlabel(f"training wall-clock ({unit})")
    for ax in (ax_ep, ax_wall):
        ax.grid(alpha=0.3)
    ax_ep.legend(loc="upper left", fontsize=9)
    fig.suptitle(title or "Maze: median over seeds, 25-75 % band")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Overlay maze runs (median and IQR over seeds per agent) and print a "
                    "markdown table of final reward and episodes to reach thresholds.")
    p.add_argument("runs", nargs="+", type=Path,
                   help="run folders (holding log.csv) or folders above them")
    p.add_argument("--label", action="extend", nargs="+", default=None,
                   help="agent name: once for all runs, or once per path, in order "
                        "(--label a b, or --label a --label b)")
    p.add_argument("--label-parent", action="store_true",
                   help="label each run by the name of the folder above its folder "
                        "(results/maze/<label>/seed<S>/)")
    p.add_argument("--max-episodes", type=_positive_int, default=None,
                   help="use only each run's first this many episodes (compare runs of "
                        "different lengths at one length)")
    p.add_argument("--smooth", type=_positive_int, default=100,
                   help="moving-average window in episodes (100)")
    p.add_argument("--last", type=_positive_int, default=250,
                   help="final reward = mean over this many last episodes (250)")
    p.add_argument("--thresholds", type=_finite, nargs="+", default=[50.0, 100.0],
                   help="rewards for the 'episodes to reach' columns (50 100)")
    p.add_argument("--at", type=_positive_int, nargs="+", default=[],
                   help="episode counts at which to also report the smoothed reward")
    p.add_argument("--out", type=Path, default=Path("maze_comparison.png"), help="PNG path")
    p.add_argument("--table", type=Path, default=None, help="also write the table here")
    p.add_argument("--title", default="", help="figure title")
    return p


def main(argv: list[str] | None = None) -> str:
    """Plot and print the table; returns the table's markdown."""
    from warp_rl.utils import atomic_write_bytes, atomic_write_text

    args = build_parser().parse_args(argv)
    try:
        runs = load_runs(args.runs, args.label, args.label_parent)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"plot_maze: {err}") from None
    if args.max_episodes is not None:
        runs = [first_episodes(r, args.max_episodes) for r in runs]
    groups = group_runs(runs)
    summaries = [summarise(g, args.smooth, args.last, args.thresholds, args.at)
                 for g in groups.values()]
    table = markdown_table(summaries, args.last, args.at)
    atomic_write_bytes(args.out, plot(groups, args.smooth, args.title))
    if args.table is not None:
        atomic_write_text(args.table, table)
    print(table, end="")
    print(f"\nwrote {args.out} ({len(runs)} runs, {len(groups)} agents; smoothing "
          f"{args.smooth} episodes)", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
