"""Seconds per round of RecurrentPPO on the maze: SB3 / sb3-contrib as they come vs this package.

Runs ``scripts/train_maze_sb3.py`` three times with the comparison's settings (30 mazes,
``--n-steps 200 --batch-size 3840 --n-epochs 4``, one thread), each for ``--rounds`` rounds of
6,000 steps, and reads the rounds' times from ``log.csv``:

* ``--per-maze-envs --step-by-step-lstm``: SB3's ``make_vec_env`` and sb3-contrib's policy, the
  baseline;
* ``--per-maze-envs``: the one-call LSTM update only;
* default: the one-call LSTM update and ``envs.WarpMazeSB3VecEnv``.

Seconds per round = (clock at the last round - clock at the first) / (rounds - 1): steady
state, a rollout and an update each, without start-up. The same seed gives the same rewards
on all three (checked here)::

    python scripts/bench_sb3.py              # 6 rounds of each variant, one thread

The figures, with the machine that gave them, are in docs/baselines.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from warp_rl.cli import positive_int

VARIANTS = {
    "sb3 + sb3-contrib as they come": ["--per-maze-envs", "--step-by-step-lstm"],
    "one-call LSTM update": ["--per-maze-envs"],
    "one-call LSTM + batched VecEnv": [],
}
SETTINGS = ["--algo", "recurrent_ppo", "--seed", "0", "--n-envs", "30", "--n-steps", "200",
            "--batch-size", "3840", "--n-epochs", "4", "--threads", "1", "--no-progress"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=6, help="rounds per variant (6, >= 2)")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error(f"--rounds must be at least 2 (times are differences); got {args.rounds}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_maze_sb3

    from warp_rl.runs import LOG_NAME

    seconds: dict[str, float] = {}
    rewards: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, flags) in enumerate(VARIANTS.items()):
            out = train_maze_sb3.main([*SETTINGS, *flags, "--episodes", str(args.rounds),
                                       "--out", str(Path(tmp) / str(i))])
            with open(out / LOG_NAME, newline="") as f:
                rows = list(csv.DictReader(f))
            wall = [float(r["wall_s"]) for r in rows]
            seconds[name] = (wall[-1] - wall[0]) / (len(wall) - 1)
            rewards[name] = [r["reward_mean"] for r in rows]
    base = seconds[next(iter(VARIANTS))]
    print(f"\nRecurrentPPO, 30 mazes, {args.rounds} rounds of 6,000 steps, one thread")
    print("| code path | s / round | speed-up |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.2f} | {base / s:.2f}x |")
    first = rewards[next(iter(VARIANTS))]
    same = rewards["one-call LSTM update"] == first
    print(f"same rewards with the one-call LSTM as with sb3-contrib's loop: {same}")
    return seconds


if __name__ == "__main__":
    main()
