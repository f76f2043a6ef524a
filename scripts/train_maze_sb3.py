"""Stable-Baselines3 baselines on ``WarpMaze-v0``: RecurrentPPO and a frame-stacked A2C.

Off-the-shelf deep RL on exactly the maze our trainer uses, logged in the same CSV shape so
that ``scripts/plot_maze.py`` overlays the curves. One *episode* here means what it means in
``agents/trainer.py``: one 200-step round of the ``n_envs`` mazes (they truncate together), i.e.
``n_envs * episode_length`` environment steps. Each round writes one row of ``log.csv``::

    episode       0-based index of the round
    reward_mean   total reward of a 200-step maze episode, mean over the mazes finishing then
    reward_std    ... and its standard deviation over those mazes
    timesteps     environment steps so far (all envs together)
    wall_s        seconds since training began

Algorithms (SB3 defaults unless a flag says otherwise):

* ``recurrent_ppo``: ``sb3_contrib.RecurrentPPO`` with sb3-contrib's ``MlpLstmPolicy`` and an
  LSTM of ``--hidden`` units (100, like our agents). Needs sb3-contrib
  (``pip install "warp-rl[contrib]"``). The policy is :class:`agents.sb3_lstm.OneCallLstmPolicy`,
  sb3-contrib's with the update's LSTM run in one call instead of step by step where episodes
  start (the same function, tested); ``--step-by-step-lstm`` uses sb3-contrib's own.
* ``a2c``: ``stable_baselines3.A2C("MlpPolicy")`` over ``VecFrameStack`` of the last
  ``--n-stack`` observations (4): a feed-forward policy with a short memory, no recurrence.

The mazes are stepped together by :class:`envs.sb3_vec_env.WarpMazeSB3VecEnv`, the
numpy-batched ``WarpMaze-v0`` in SB3's ``VecEnv`` convention; ``--per-maze-envs`` uses SB3's
``make_vec_env`` instead (``n_envs`` ``gymnasium.make`` envs, each in a ``Monitor``, in a
``DummyVecEnv``). ``scripts/bench_sb3.py`` times the three code paths: with the comparison's
settings, 4.10 s per round with both flags, 1.57 s with ``--per-maze-envs`` only and 1.19 s
with neither (3.43x) on the 2-core AMD EPYC machine.

Usage::

    python scripts/train_maze_sb3.py --algo recurrent_ppo --seed 0 --episodes 5000 \\
        --n-steps 200 --batch-size 3840 --n-epochs 4 --out runs/sb3_rppo_s0
    python scripts/train_maze_sb3.py --algo a2c --seed 0 --timesteps 3000000 --out runs/sb3_a2c_s0

The folder gets ``log.csv``, ``config.json`` (the arguments, with ``agent`` = ``sb3-<algo>``
for the plot script), ``checkpoint.pkl`` (every ``--checkpoint-every`` 50 rounds and at the end)
and ``model.zip`` (the final SB3 model), each written atomically except the append-only log,
which is flushed every row. A crash or Ctrl-C leaves the last checkpoint usable;
``--resume`` continues from it exactly (same numbers as an uninterrupted run, on the same
machine and CPU; tested), to the ``--episodes`` or ``--timesteps`` given then, dropping log rows
written after the checkpoint. A checkpoint holds the SB3 model with its optimiser and last
observations, the LSTM states SB3 does not save, the env with its generators and half-finished
episodes, and Python's, numpy's and torch's global generators. An ``--out`` that already holds
a run needs ``--resume`` or ``--overwrite``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Runnable from a clean clone without installing: the repository root holds envs/, warp_rl/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from warp_rl.cli import nonneg_int as _nonneg_int
from warp_rl.cli import positive_float as _positive_float
from warp_rl.cli import positive_int as _positive_int

ALGOS = ("recurrent_ppo", "a2c")
ENV_ID = "WarpMaze-v0"
LOG_NAME = "log.csv"
CONFIG_NAME = "config.json"
MODEL_NAME = "model.zip"
CHECKPOINT_NAME = "checkpoint.pkl"
RUN_KEYS = ("algo", "seed", "n_envs", "hidden", "n_stack", "n_steps", "batch_size", "n_epochs",
            "lr", "gamma", "size", "episode_length", "per_maze_envs", "step_by_step_lstm")
"""Arguments a resumed run must share with the run in ``--out`` (the budget may change)."""
LOG_FIELDS = ("episode", "reward_mean", "reward_std", "timesteps", "wall_s")
CONTRIB_HINT = ('RecurrentPPO needs sb3-contrib, which is not installed; install it with '
                '`pip install "warp-rl[contrib]"` (or `pip install sb3-contrib`)')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train Stable-Baselines3 RecurrentPPO or frame-stacked A2C on WarpMaze-v0 "
                    "and log reward per 200-step episode in the maze trainer's CSV shape.")
    p.add_argument("--algo", choices=ALGOS, required=True)
    p.add_argument("--seed", type=_nonneg_int, default=0)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--timesteps", type=_positive_int,
                        help="total environment steps (all envs together)")
    budget.add_argument("--episodes", type=_positive_int,
                        help="rounds of n_envs maze episodes; timesteps = episodes * n_envs * "
                             "episode_length (matches the trainer's episode count)")
    p.add_argument("--n-envs", type=_positive_int, default=30,
                   help="mazes stepped together (30, the trainer's batch)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--hidden", type=_positive_int, default=100,
                   help="LSTM width for recurrent_ppo (100)")
    p.add_argument("--n-stack", type=_positive_int, default=4,
                   help="observations stacked for a2c (4)")
    p.add_argument("--n-steps", type=_positive_int, default=None,
                   help="steps per env per update (SB3 default: 128 for PPO, 5 for A2C)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="recurrent_ppo minibatch size (SB3's 128, capped at one rollout)")
    p.add_argument("--n-epochs", type=_positive_int, default=None,
                   help="recurrent_ppo epochs per rollout (SB3's 10)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (SB3 default: 3e-4 for PPO, 7e-4 for A2C)")
    p.add_argument("--gamma", type=float, default=0.99, help="discount (SB3's 0.99)")
    p.add_argument("--size", type=int, default=13, help="maze side, odd (13)")
    p.add_argument("--episode-length", type=_positive_int, default=200,
                   help="steps per maze episode (200)")
    p.add_argument("--per-maze-envs", action="store_true",
                   help="step the mazes as n_envs gymnasium.make envs in SB3's DummyVecEnv "
                        "(slower) instead of the numpy-batched vector env")
    p.add_argument("--step-by-step-lstm", action="store_true",
                   help="recurrent_ppo: sb3-contrib's own step-by-step LSTM in the update "
                        "(same function, slower; see the module doc)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=50,
                   help="rounds between checkpoints (50; one is also written at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, exactly, up to the "
                        "(possibly larger) --episodes / --timesteps")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that already holds a run")
    p.add_argument("--device", default="cpu", help="torch device for SB3 (cpu)")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def import_algo(algo: str) -> type:
    """The SB3 class for ``algo``; a clear ``SystemExit`` if sb3-contrib is missing."""
    if algo == "recurrent_ppo":
        try:
            from sb3_contrib import RecurrentPPO
        except ImportError as err:
            raise SystemExit(f"{CONTRIB_HINT} ({err})") from None
        return RecurrentPPO
    if algo == "a2c":
        from stable_baselines3 import A2C

        return A2C
    raise ValueError(f"algo must be one of {', '.join(ALGOS)}; got {algo!r}")


def env_bytes(env: Any) -> bytes:
    """The VecEnv, pickled; SB3's ``VecFrameStack`` is not picklable, so for ``a2c`` the
    frame stack is stored as its wrapped env and its stacked observations."""
    from stable_baselines3.common.vec_env import VecFrameStack

    if isinstance(env, VecFrameStack):
        return pickle.dumps({"venv": env.venv, "stacked_obs": env.stacked_obs})
    return pickle.dumps({"venv": env})


def env_from_bytes(data: bytes, n_stack: int) -> Any:
    """The inverse of :func:`env_bytes`."""
    from stable_baselines3.common.vec_env import VecFrameStack

    state = pickle.loads(data)
    env = state["venv"]
    if "stacked_obs" in state:
        env = VecFrameStack(env, n_stack=n_stack)
        env.stacked_obs = state["stacked_obs"]
    return env


def sb3_model_bytes(model: Any) -> bytes:
    """``model.save`` into memory: what ``model.zip`` holds."""
    buf = io.BytesIO()
    model.save(buf)
    return buf.getvalue()


def checkpoint_bytes(model: Any, sb3_model: bytes, rounds: int, wall_s: float,
                     recent: list[float]) -> bytes:
    """Everything a run needs to go on exactly: the SB3 model (``sb3_model``: weights,
    optimiser, step counts, last observations), the LSTM states SB3 does not save, the env with
    its generators and half-finished episodes, the global generators and the log's position."""
    from warp_rl.utils import global_rng_states

    return pickle.dumps({
        "format": 1,
        "sb3_model": sb3_model,
        "last_lstm_states": getattr(model, "_last_lstm_states", None),
        "env": env_bytes(model.get_env()),
        "rng": global_rng_states(),
        "rounds": rounds,
        "wall_s": wall_s,
        "recent": recent,
    })


def make_episode_logger(out: Path, total_rounds: int | None, progress: bool,
                        checkpoint_every: int, start: dict[str, Any] | None = None):
    """An SB3 callback writing one CSV row per round of maze episodes (see the module doc).

    It also writes ``checkpoint.pkl`` (atomically) at the first rollout start at least
    ``checkpoint_every`` rounds after the last one. ``start`` (a loaded checkpoint) continues
    a run: the log keeps its first ``start["rounds"]`` rows and the clock goes on from there.
    """
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    from warp_rl.utils import atomic_write_bytes, atomic_write_text

    path = out / LOG_NAME

    class MazeEpisodeLogger(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rounds = start["rounds"] if start else 0
            self.saved_rounds = self.rounds
            self.wall_offset = start["wall_s"] if start else 0.0
            self.recent: list[float] = list(start["recent"]) if start else []
            self.start = 0.0
            self.file: io.TextIOBase | None = None
            self.bar = None

        def elapsed(self) -> float:
            return self.wall_offset + time.perf_counter() - self.start

        def _on_training_start(self) -> None:
            header = ",".join(LOG_FIELDS) + "\n"
            if start:  # drop the rows logged after the checkpoint: they are run again
                lines = path.read_text().splitlines(keepends=True)
                atomic_write_text(path, "".join([header, *lines[1:1 + self.rounds]]))
            else:
                atomic_write_text(path, header)
            self.file = open(path, "a", newline="")
            self.bar = tqdm(total=total_rounds, initial=self.rounds, disable=not progress,
                            unit="ep", dynamic_ncols=True, desc=out.name)
            self.start = time.perf_counter()

        def _on_rollout_start(self) -> None:
            if self.rounds - self.saved_rounds >= checkpoint_every:
                self.save_checkpoint()

        def save_checkpoint(self) -> bytes:
            """Write the checkpoint; returns the SB3 model in it (``model.zip``'s bytes)."""
            sb3_model = sb3_model_bytes(self.model)
            atomic_write_bytes(out / CHECKPOINT_NAME, checkpoint_bytes(
                self.model, sb3_model, self.rounds, self.elapsed(), self.recent))
            self.saved_rounds = self.rounds
            return sb3_model

        def _on_step(self) -> bool:
            # The env puts {"r": return, "l": length, ...} into the info of every maze whose
            # episode ends at this step (SB3's Monitor does so for --per-maze-envs); the mazes
            # end together.
            returns = [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            if returns:
                r = np.asarray(returns, dtype=np.float64)
                row = (self.rounds, repr(float(r.mean())), repr(float(r.std())),
                       self.num_timesteps, repr(self.elapsed()))
                self.file.write(",".join(map(str, row)) + "\n")
                self.file.flush()
                self.rounds += 1
                self.recent = ([*self.recent, float(r.mean())])[-100:]
                self.bar.update(1)
                self.bar.set_postfix(reward=f"{np.mean(self.recent):.1f}", refresh=False)
            return True

        def _on_training_end(self) -> None:
            if self.bar is not None:
                self.bar.close()
            if self.file is not None:
                self.file.close()

    return MazeEpisodeLogger()


def train(args: argparse.Namespace) -> Path:
    """Train (or, with ``--resume``, continue) as ``args`` says; returns the run folder."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    import envs  # noqa: F401  (registers WarpMaze-v0)
    from envs.sb3_vec_env import WarpMazeSB3VecEnv
    from warp_rl.utils import atomic_write_bytes, atomic_write_text, set_global_rng_states

    if args.size < 5 or args.size % 2 == 0:
        raise SystemExit(f"--size must be an odd integer >= 5; got {args.size}")
    if not 0.0 <= args.gamma <= 1.0:
        raise SystemExit(f"--gamma must lie in [0, 1]; got {args.gamma}")
    if args.resume and args.overwrite:
        raise SystemExit("--resume and --overwrite contradict each other; pick one")
    if args.algo != "recurrent_ppo":
        for flag in ("batch_size", "n_epochs", "step_by_step_lstm"):
            if getattr(args, flag) not in (None, False):
                raise SystemExit(f"--{flag.replace('_', '-')} applies to recurrent_ppo only; "
                                 f"got it with --algo {args.algo}")
    algo_cls = import_algo(args.algo)
    torch.set_num_threads(args.threads)
    timesteps = args.timesteps or args.episodes * args.n_envs * args.episode_length
    out: Path = args.out

    kwargs: dict[str, Any] = {"seed": args.seed, "device": args.device, "gamma": args.gamma}
    if args.n_steps is not None:
        kwargs["n_steps"] = args.n_steps
    if args.lr is not None:
        kwargs["learning_rate"] = args.lr
    if args.algo == "recurrent_ppo":
        if args.step_by_step_lstm:
            policy = "MlpLstmPolicy"
        else:
            from agents.sb3_lstm import OneCallLstmPolicy

            policy = OneCallLstmPolicy
        kwargs["policy_kwargs"] = {"lstm_hidden_size": args.hidden}
        # PPO's minibatch must not exceed a rollout (n_steps * n_envs).
        kwargs["batch_size"] = min(args.batch_size or 128,
                                   kwargs.get("n_steps", 128) * args.n_envs)
        if args.n_epochs is not None:
            kwargs["n_epochs"] = args.n_epochs
    else:
        policy = "MlpPolicy"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(agent=f"sb3-{args.algo}", env_id=ENV_ID, total_timesteps=timesteps,
                  policy=policy if isinstance(policy, str) else policy.__name__,
                  sb3_kwargs={k: v for k, v in kwargs.items() if k != "device"})

    start: dict[str, Any] | None = None
    if args.resume:
        if not (out / CHECKPOINT_NAME).exists():
            raise SystemExit(f"--resume: no {CHECKPOINT_NAME} in {out}; nothing to resume "
                             "(start without --resume)")
        run_config = json.loads((out / CONFIG_NAME).read_text())
        differ = [f"--{k.replace('_', '-')} {run_config.get(k)!r} (run) vs {config[k]!r}"
                  for k in RUN_KEYS if run_config.get(k) != config[k]]
        if differ:
            raise SystemExit("--resume: the run in " + str(out) + " was started with other "
                             "arguments: " + "; ".join(differ) + ". Pass the run's values; "
                             "only the budget, --threads, --device and --no-progress may change")
        start = pickle.loads((out / CHECKPOINT_NAME).read_bytes())
        env = env_from_bytes(start["env"], args.n_stack)
        model = algo_cls.load(io.BytesIO(start["sb3_model"]), env=env, device=args.device,
                              force_reset=False)  # keep the last observations: no reset
        if start["last_lstm_states"] is not None:
            model._last_lstm_states = start["last_lstm_states"]
        set_global_rng_states(start["rng"])  # after load, which reseeds the global generators
        print(f"resuming {out} at round {start['rounds']} ({model.num_timesteps} steps)")
    else:
        existing = [n for n in (CHECKPOINT_NAME, LOG_NAME) if (out / n).exists()]
        if existing and not args.overwrite:
            raise SystemExit(f"{out} already holds a run ({', '.join(existing)}); pass --resume "
                             "to continue it, --overwrite to start over, or another --out")
        out.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT_NAME, LOG_NAME, MODEL_NAME):
            (out / name).unlink(missing_ok=True)
        if args.per_maze_envs:
            env = make_vec_env(ENV_ID, n_envs=args.n_envs, seed=args.seed,
                               env_kwargs={"size": args.size,
                                           "episode_length": args.episode_length})
        else:
            env = WarpMazeSB3VecEnv(args.n_envs, size=args.size,
                                    episode_length=args.episode_length)
            env.seed(args.seed)
        if args.algo == "a2c":
            env = VecFrameStack(env, n_stack=args.n_stack)
        model = algo_cls(policy, env, **kwargs)
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    total_rounds = math.ceil(timesteps / (args.n_envs * args.episode_length))
    logger = make_episode_logger(out, total_rounds, not args.no_progress,
                                 args.checkpoint_every, start)
    try:
        model.learn(total_timesteps=max(timesteps - model.num_timesteps, 0),
                    reset_num_timesteps=not args.resume, callback=logger)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume --out {out} (from the last checkpoint, "
              f"round {logger.saved_rounds})", file=sys.stderr)
        raise SystemExit(130) from None
    sb3_model = logger.save_checkpoint()
    env.close()
    atomic_write_bytes(out / MODEL_NAME, sb3_model)
    return out


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    out = train(args)
    print(f"wrote {out / LOG_NAME}, {out / CONFIG_NAME}, {out / CHECKPOINT_NAME} and "
          f"{out / MODEL_NAME}")
    return out


if __name__ == "__main__":
    main()
