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
``DummyVecEnv``). ``scripts/bench_sb3.py`` times the three code paths (seconds per round of
maze episodes, steady state, with the comparison's settings) and checks that they give the same
rewards; its figures are in docs/baselines.md.

Usage::

    python scripts/train_maze_sb3.py --algo recurrent_ppo --seed 0 --episodes 5000 \\
        --n-steps 200 --batch-size 3840 --n-epochs 4 --out runs/sb3_rppo_s0
    python scripts/train_maze_sb3.py --algo a2c --seed 0 --timesteps 3000000 --out runs/sb3_a2c_s0

The folder gets ``log.csv``, ``config.json`` (the arguments, with ``agent`` = ``sb3-<algo>``
for the plot script), ``checkpoint.pt`` (every ``--checkpoint-every`` 50 rounds and at the end,
the one before kept as ``checkpoint.prev.pt``) and ``model.zip`` (the final SB3 model), each
written atomically except the append-only log, which is flushed every row. The run folder
follows :mod:`warp_rl.runs`: the run holds the folder's lock (a second run on it is refused), a
crash or Ctrl-C leaves the last checkpoint usable, and ``--resume`` continues from it exactly
(same numbers as an uninterrupted run, on the same machine and CPU; tested), to the
``--episodes`` or ``--timesteps`` given then (not fewer than done), dropping log rows written
after the checkpoint.

The checkpoint holds tensors and plain data only, loaded with ``torch.load(weights_only=True)``:
it never goes through SB3's ``load`` (whose ``model.zip`` holds cloudpickled fields that run
code when loaded). Resuming rebuilds the model and the env from the run's own settings, then
restores the policy's and the optimiser's state dicts, the model's counters and last
observations, the LSTM states, the env's state (its generators and half-finished episodes, as
plain data: :func:`warp_rl.runs.object_state`) and Python's, numpy's and torch's global
generators. An ``--out`` that already holds a run needs ``--resume`` or ``--overwrite``. A
non-finite parameter stops the run (exit code 3) keeping the last finite checkpoint; refused
flags, paths and files exit with code 2.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Runnable from a clean clone without installing: the repository root holds envs/, warp_rl/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from warp_rl import runs
from warp_rl.cli import nonneg_int as _nonneg_int
from warp_rl.cli import positive_float as _positive_float
from warp_rl.cli import positive_int as _positive_int
from warp_rl.runs import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME

ALGOS = ("recurrent_ppo", "a2c")
ENV_ID = "WarpMaze-v0"
MODEL_NAME = "model.zip"
CHECKPOINT_FORMAT = 2
"""2: tensors and plain data (``weights_only=True``); format 1 was a pickle and is refused."""
RUN_KEYS = ("algo", "seed", "n_envs", "hidden", "n_stack", "n_steps", "batch_size", "n_epochs",
            "lr", "gamma", "size", "episode_length", "per_maze_envs", "step_by_step_lstm")
"""Arguments a resumed run must share with the run in ``--out`` (the budget may change)."""
RESUME_MAY_CHANGE = ("timesteps", "episodes", "threads", "device", "checkpoint_every",
                     "no_progress")
"""Arguments that may differ on resume (the budget may grow, not shrink below what is done)."""
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
    p.add_argument("--out", required=True, help="run folder")
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


def silent_logger() -> Any:
    """An SB3 logger with no outputs and no folder. The run logs itself (``log.csv``); SB3's
    own logger, at ``verbose=0``, prints nothing either but creates an empty ``SB3-<date>``
    folder in the temp folder at every ``learn``."""
    from stable_baselines3.common.logger import Logger

    return Logger(folder=None, output_formats=[])


def sb3_model_bytes(model: Any) -> bytes:
    """``model.save`` into memory: what ``model.zip`` holds."""
    buf = io.BytesIO()
    model.save(buf)
    return buf.getvalue()


def model_state(model: Any) -> dict[str, Any]:
    """The SB3 model's own attributes as plain data (what ``model.save`` would store besides
    the weights: step counters, last observations and episode starts, episode-info buffers,
    the LSTM states SB3 does not save...), without the policy, the env and the buffers."""
    keep = {"_last_lstm_states"}  # RecurrentPPO's: excluded from SB3's save, needed here
    exclude = {*model._excluded_save_params(), "policy", "env", "rollout_buffer"} - keep
    return runs.object_state(model, exclude=exclude)


def non_finite_parameters(model: Any) -> list[str]:
    """Names of the policy's parameters holding NaN or inf."""
    import torch

    return [name for name, p in model.policy.named_parameters()
            if not bool(torch.isfinite(p).all())]


def checkpoint_state(model: Any, config: dict[str, Any], rounds: int, wall_s: float,
                     recent: list[float], log_bytes: int) -> dict[str, Any]:
    """Everything a run needs to go on exactly, as tensors and plain data: the policy's and the
    optimiser's state dicts, the model's attributes (:func:`model_state`), the env with its
    generators and half-finished episodes, the global generators and the log's position."""
    from warp_rl.utils import global_rng_states

    return {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "policy": model.policy.state_dict(),
        "optimizer": model.policy.optimizer.state_dict(),
        "model": model_state(model),
        "env": runs.object_state(model.get_env()),
        "rng": global_rng_states(),
        "rounds": rounds,
        "wall_s": wall_s,
        "recent": recent,
        "log_bytes": log_bytes,
    }


def check_checkpoint(ckpt: Any) -> None:
    """Reject what is not a checkpoint of this script's format (for the fallback)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a train_maze_sb3 checkpoint of format {CHECKPOINT_FORMAT}")
    missing = [k for k in ("config", "policy", "optimizer", "model", "env", "rng", "rounds",
                           "wall_s", "recent", "log_bytes") if k not in ckpt]
    if missing:
        raise ValueError(f"a train_maze_sb3 checkpoint without {', '.join(missing)}")


def restore(model: Any, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint's state into ``model`` (built from the run's settings, with its env)."""
    from warp_rl.utils import set_global_rng_states

    runs.load_object_state(model.get_env(), ckpt["env"])
    runs.load_object_state(model, ckpt["model"])
    model.policy.load_state_dict(ckpt["policy"])
    model.policy.optimizer.load_state_dict(ckpt["optimizer"])
    set_global_rng_states(ckpt["rng"])  # after building the model, which seeds them


def make_episode_logger(out: Path, total_rounds: int | None, progress: bool,
                        checkpoint_every: int, config: dict[str, Any],
                        start: dict[str, Any] | None = None):
    """An SB3 callback writing one CSV row per round of maze episodes (see the module doc).

    It also writes ``checkpoint.pt`` (atomically) at the first rollout start at least
    ``checkpoint_every`` rounds after the last one, after checking that the policy's parameters
    are finite (:class:`warp_rl.runs.NonFiniteError` otherwise: the last checkpoint is kept).
    ``start`` (a loaded checkpoint) continues a run: the log is truncated to the checkpoint's
    byte length and the clock goes on from there.
    """
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    path = out / LOG_NAME

    class MazeEpisodeLogger(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rounds = start["rounds"] if start else 0
            self.saved_rounds = self.rounds
            self.wall_offset = start["wall_s"] if start else 0.0
            self.recent: list[float] = list(start["recent"]) if start else []
            self.start = 0.0
            self.log: runs.CsvLog | None = None
            self.bar = None

        def elapsed(self) -> float:
            return self.wall_offset + time.perf_counter() - self.start

        def _on_training_start(self) -> None:
            # Resuming drops the rows logged after the checkpoint: they are run again.
            self.log = runs.CsvLog(path, LOG_FIELDS, start["log_bytes"] if start else None)
            if not start:  # a folder with a log always has a checkpoint to resume
                self.save_checkpoint()
            self.bar = tqdm(total=total_rounds, initial=self.rounds, disable=not progress,
                            unit="ep", dynamic_ncols=True, desc=out.name)
            self.start = time.perf_counter()

        def _on_rollout_start(self) -> None:
            if self.rounds - self.saved_rounds >= checkpoint_every:
                self.save_checkpoint()

        def save_checkpoint(self) -> None:
            """Write the checkpoint (refused, keeping the last one, if a parameter is not
            finite)."""
            bad = non_finite_parameters(self.model)
            if bad:
                raise runs.NonFiniteError(
                    f"non-finite parameters after {self.model.num_timesteps} steps (round "
                    f"{self.rounds}: {', '.join(bad[:3])}). Training stopped; the last finite "
                    f"checkpoint, {out / CHECKPOINT_NAME} (round {self.saved_rounds}), is kept; "
                    "lower --lr and start a new run, or resume from it")
            log_bytes = self.log.sync() if self.log is not None else 0
            runs.save_checkpoint(checkpoint_state(self.model, config, self.rounds,
                                                  self.elapsed(), self.recent, log_bytes),
                                 out / CHECKPOINT_NAME)
            self.saved_rounds = self.rounds

        def _on_step(self) -> bool:
            # The env puts {"r": return, "l": length, ...} into the info of every maze whose
            # episode ends at this step (SB3's Monitor does so for --per-maze-envs); the mazes
            # end together.
            returns = [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            if returns:
                r = np.asarray(returns, dtype=np.float64)
                self.log.append({"episode": self.rounds, "reward_mean": float(r.mean()),
                                 "reward_std": float(r.std()), "timesteps": self.num_timesteps,
                                 "wall_s": self.elapsed()})
                self.rounds += 1
                self.recent = ([*self.recent, float(r.mean())])[-100:]
                self.bar.update(1)
                self.bar.set_postfix(reward=f"{np.mean(self.recent):.1f}", refresh=False)
            return True

        def _on_training_end(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return MazeEpisodeLogger()


def build_env(args: argparse.Namespace) -> Any:
    """The run's VecEnv, as a new run starts it (seeded, not yet reset)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    import envs  # noqa: F401  (registers WarpMaze-v0)
    from envs.sb3_vec_env import WarpMazeSB3VecEnv

    if args.per_maze_envs:
        env = make_vec_env(ENV_ID, n_envs=args.n_envs, seed=args.seed,
                           env_kwargs={"size": args.size, "episode_length": args.episode_length})
    else:
        env = WarpMazeSB3VecEnv(args.n_envs, size=args.size, episode_length=args.episode_length)
        env.seed(args.seed)
    if args.algo == "a2c":
        env = VecFrameStack(env, n_stack=args.n_stack)
    return env


def train(args: argparse.Namespace) -> Path:
    """Train (or, with ``--resume``, continue) as ``args`` says; returns the run folder.

    Raises:
        SystemExit: a refused argument (message as its ``code``).
        warp_rl.runs.RunError: a refused folder, checkpoint or resume.
        warp_rl.runs.NonFiniteError: a parameter became NaN or inf.
    """
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
    out = runs.check_out_dir(args.out)  # "" (the current folder), a file, unwritable: refused
    with runs.acquire_lock(out):  # for the run's lifetime: a second run here is refused
        return _train_locked(args, algo_cls, out)


def _train_locked(args: argparse.Namespace, algo_cls: type, out: Path) -> Path:
    """:func:`train` in the locked folder ``out``."""
    import torch

    torch.set_num_threads(args.threads)
    timesteps = args.timesteps or args.episodes * args.n_envs * args.episode_length

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
    checkpoint = out / CHECKPOINT_NAME
    if args.resume:
        if not runs.checkpoint_exists(checkpoint):
            raise SystemExit(f"--resume: no {CHECKPOINT_NAME} in {out}; nothing to resume "
                             "(start without --resume)")
        start, _ = runs.load_checkpoint(checkpoint, check_checkpoint)
        run_config = start["config"]
        done = int(start["model"]["__object__"]["num_timesteps"])
        runs.check_resume({k: run_config.get(k) for k in RUN_KEYS},
                          {k: config[k] for k in RUN_KEYS}, RESUME_MAY_CHANGE,
                          where=f"the run in {out}")
        runs.check_resume({"total_timesteps": run_config["total_timesteps"]},
                          {"total_timesteps": timesteps}, ("total_timesteps",),
                          length_key="total_timesteps", done=done,
                          flag_of=lambda _: "--timesteps (or --episodes x --n-envs x "
                          "--episode-length)", where=f"the run in {out}")
        model = algo_cls(policy, build_env(args), **kwargs)
        restore(model, start)
        print(f"resuming {out} at round {start['rounds']} ({model.num_timesteps} steps)")
    else:
        existing = runs.existing_checkpoints(checkpoint)
        if existing and not args.overwrite:
            raise SystemExit(f"{out} already holds a run ({', '.join(existing)}); pass --resume "
                             "to continue it, --overwrite to start over, or another --out")
        runs.remove_checkpoint(checkpoint)
        for name in (LOG_NAME, MODEL_NAME, CONFIG_NAME):
            (out / name).unlink(missing_ok=True)
        model = algo_cls(policy, build_env(args), **kwargs)
    model.set_logger(silent_logger())
    runs.write_json(out / CONFIG_NAME, config)

    total_rounds = math.ceil(timesteps / (args.n_envs * args.episode_length))
    logger = make_episode_logger(out, total_rounds, not args.no_progress,
                                 args.checkpoint_every, config, start)
    try:
        model.learn(total_timesteps=max(timesteps - model.num_timesteps, 0),
                    reset_num_timesteps=not args.resume, callback=logger)
        logger.save_checkpoint()
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume --out {out} (from the last checkpoint, "
              f"round {logger.saved_rounds})", file=sys.stderr)
        raise SystemExit(130) from None
    except ValueError as err:  # e.g. torch's distribution check on NaN logits, mid-update
        if isinstance(err, runs.RunError) or not non_finite_parameters(model):
            raise
        reason = str(err).split(":")[0]
        raise runs.NonFiniteError(
            f"non-finite parameters during the update after {model.num_timesteps} steps "
            f"({reason}). Training stopped; the last finite checkpoint, {checkpoint} (round "
            f"{logger.saved_rounds}), is kept; lower --lr and start a new run, or resume from "
            "it") from None
    finally:
        if logger.log is not None:
            logger.log.close()
    model.get_env().close()
    from warp_rl.utils import atomic_write_bytes

    atomic_write_bytes(out / MODEL_NAME, sb3_model_bytes(model))
    return out


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` and train; a refused argument, folder or file prints one paragraph and
    exits with code 2, a non-finite parameter with code 3."""
    args = build_parser().parse_args(argv)
    try:
        out = train(args)
    except runs.NonFiniteError as err:
        raise runs.report_and_exit(err, runs.EXIT_NONFINITE) from None
    except runs.RunError as err:
        raise runs.report_and_exit(err) from None
    except SystemExit as err:
        if not isinstance(err.code, str):
            raise
        raise runs.report_and_exit(err.code) from None
    print(f"wrote {out / LOG_NAME}, {out / CONFIG_NAME}, {out / CHECKPOINT_NAME} and "
          f"{out / MODEL_NAME}")
    return out


if __name__ == "__main__":
    main()
