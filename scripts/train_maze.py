"""Train a maze agent with A2C: fast weights every episode, warp weights by a warp objective.

    python scripts/train_maze.py                       # quick run of the recommended warp variant
    python scripts/train_maze.py --paper               # the paper's configuration and agent
    python scripts/train_maze.py --paper --agent warp_identity_orth --meta-interval 5
    python scripts/train_maze.py --paper --agent lstm --seed 1 --out runs/lstm1
    python scripts/train_maze.py --paper --out runs/lstm1 --resume --episodes 20000
    python scripts/train_maze.py --paper --agent lstm --seeds 0 1 2 --out runs/lstm   # population

Writes to --out: log.csv (one row per episode), checkpoint.pt (at the start, every
--checkpoint-every episodes and at the end; atomic, the one before kept as checkpoint.prev.pt),
config.json, learning_curve.png (at the end). The run holds --out's lock while it lives: a second
run on the same folder is refused (warp_rl/runs.py, docs/DESIGN.md).
--resume continues the run in --out exactly where its checkpoint left off; only --episodes
(not fewer than done), --checkpoint-every, --threads and --device may differ from the original
run. Refused flags, paths and files exit with code 2, a non-finite loss with code 3.

--seeds S1 S2 ... trains one run per seed in one process (agents/population.py): the agents'
arithmetic is batched over the seeds, every other part (clipping, optimisers, warp objective,
log, checkpoint) is each run's own, and each seed's run is written to OUT/seed<S> as an
ordinary run folder that can also be resumed on its own. The agents that support it are listed
in docs/agent.md ("Many seeds in one process").

On several processes, GPUs or nodes (docs/distributed.md):

    torchrun --nproc_per_node=2 scripts/train_maze.py --batch-size 30 --out runs/maze/ddp2

--batch-size stays the global number of mazes per episode; each of the P ranks steps
batch-size / P of them, gradients are averaged over ranks before clipping, rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Only torch-free modules here, so that --help answers at once; torch comes with the trainer,
# imported where it is used, after the arguments are parsed.
from agents import AGENTS, WARP_OBJECTIVE_NAMES
from warp_rl import runs
from warp_rl.cli import DIST_TIMEOUT_S
from warp_rl.runs import CHECKPOINT_NAME, LOG_NAME

if TYPE_CHECKING:
    from agents.trainer import TrainConfig

# The agent of the main job (the recommended warp variant, docs/agent.md), and the published
# agent that --paper selects when no --agent is given.
DEFAULT_AGENT = "warp_identity_orth"
PAPER_AGENT_NAME = "warp"
# The paper's configuration (REFERENCE.md): every number can still be overridden by a flag.
PAPER = dict(episodes=10_000, batch_size=30, hidden_size=100, lr=1e-3, warp_lr=1e-3,
             meta_interval=30, warmup_episodes=100, maze_size=13, episode_length=200,
             checkpoint_every=500)
# Per-agent departures from PAPER under --paper: each baseline at its own paper's step size.
# Backpropamine's maze code (Miconi et al., 2019) trains with Adam at lr 1e-4; at 1e-3 our run
# rose to about 20 and collapsed to random play by episode 600 (docs/baselines.md).
PAPER_AGENT = {"backpropamine": dict(lr=1e-4)}
# The default quick run: a smaller maze, shorter episodes and a smaller network, so that the
# reward visibly rises above random play within a few minutes on a laptop CPU.
QUICK = dict(episodes=600, batch_size=30, hidden_size=64, lr=3e-3, warp_lr=3e-3,
             meta_interval=10, warmup_episodes=20, maze_size=9, episode_length=100,
             checkpoint_every=100)

CONFIG_FLAGS = ("agent", "seed", "episodes", "batch_size", "hidden_size", "lr", "warp_lr",
                "meta_interval", "warmup_episodes", "maze_size", "episode_length", "device",
                "checkpoint_every", "threads", "clip", "warp_objective", "warp_pairs")


def paper_preset(agent: str) -> dict:
    """The ``--paper`` settings for ``agent``: :data:`PAPER` with :data:`PAPER_AGENT`'s changes."""
    return {**PAPER, **PAPER_AGENT.get(agent, {})}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a maze agent with A2C (WarpGrad's maze experiment).",
        epilog="Without --paper the defaults are the quick run: " + ", ".join(
            f"{k}={v}" for k, v in QUICK.items()) + ". With --paper: " + ", ".join(
            f"{k}={v}" for k, v in PAPER.items()) + "; for " + "; ".join(
            f"{a}: " + ", ".join(f"{k}={v}" for k, v in d.items())
            for a, d in PAPER_AGENT.items()) + ".")
    p.add_argument("--agent", choices=sorted(AGENTS),
                   help=f"agent to train (default: {DEFAULT_AGENT}, the recommended warp "
                   f"variant; with --paper: {PAPER_AGENT_NAME}, the published agent)")
    p.add_argument("--seed", type=int, help="seed of weights, mazes and actions (default: 0)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="train one run per seed in one process, as a population "
                   "(agents/population.py): each seed's run goes to OUT/seed<SEED>, an ordinary "
                   "run folder; OUT defaults to runs/maze/AGENT-population[-paper]. With "
                   "--resume, continues those folders together")
    p.add_argument("--episodes", type=int, help="total training episodes")
    p.add_argument("--batch-size", type=int, help="mazes per episode")
    p.add_argument("--hidden-size", type=int, help="recurrent width")
    p.add_argument("--lr", type=float, help="Adam learning rate of the fast weights")
    p.add_argument("--warp-lr", type=float, help="Adam learning rate of the warp weights")
    p.add_argument("--meta-interval", type=int, help="episodes between warp steps")
    p.add_argument("--warmup-episodes", type=int, help="first episodes without any step")
    p.add_argument("--maze-size", type=int, help="odd side of the square maze")
    p.add_argument("--episode-length", type=int, help="steps per episode")
    p.add_argument("--warp-objective", choices=sorted(WARP_OBJECTIVE_NAMES),
                   help="how the warp weights are meta-learned: two_timescale (the paper's "
                   "schedule, default), algorithm2 (WarpGrad's Algorithm 2 on replayed episode "
                   "pairs), algorithm2_detached (algorithm2 without the second-order term) or "
                   "algorithm2_interval (two_timescale's sum plus Algorithm 2's second-order "
                   "term, estimated from replayed pairs)")
    p.add_argument("--warp-pairs", type=int, help="episode pairs replayed per warp step by "
                   "algorithm2, algorithm2_detached and algorithm2_interval (default: 2)")
    p.add_argument("--clip", choices=("joint", "separate"),
                   help="clip the fast and warp gradients to the norm 4.0 together (joint, "
                   "default) or each on its own (separate)")
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --seeds on a GPU: capture each episode (rollout, loss and "
                   "backward of every seed) as one CUDA graph and replay it, instead of "
                   "launching its kernels one by one (--seeds S trains one seed this way)")
    p.add_argument("--checkpoint-every", type=int, help="episodes between checkpoints")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1; at batch 30 "
                   "the matrices are small, so run one seed per core instead)")
    p.add_argument("--paper", action="store_true", help="the paper's configuration")
    p.add_argument("--out", help="output folder (default: runs/maze/AGENT-seedSEED[-paper])")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out even if it holds a run")
    p.add_argument("--no-plot", action="store_true", help="skip the learning-curve PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT_S,
                   help="under torchrun: seconds a rank waits for the others in a collective "
                   "before failing with an error (default: %(default)g)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from warp_rl import distributed

    try:
        distributed.init_from_env(args.dist_timeout)  # no-op without torchrun
    except ValueError as err:
        parser.error(str(err))
    try:
        return run(parser, args)
    except distributed.DistributedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Train as ``args`` say (on this rank, under torchrun; rank 0 alone writes and prints)."""
    from warp_rl import distributed

    main_rank = distributed.is_main()
    if not main_rank:  # every rank reaches the same errors; only rank 0 prints them
        parser.error = lambda message: sys.exit(2)  # type: ignore[method-assign]
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other; pick one")
    explicit = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    agent = explicit.get("agent", PAPER_AGENT_NAME if args.paper else DEFAULT_AGENT)
    if args.cuda_graph and (args.seeds is None or not (args.device or "").startswith("cuda")):
        parser.error("--cuda-graph captures a population's episodes on a GPU: give --seeds "
                     "(one seed or more) and --device cuda")
    if args.seeds is not None:
        if args.seed is not None:
            parser.error("--seed and --seeds contradict each other; pick one")
        if distributed.world_size() > 1:
            parser.error("--seeds trains a population in one process; it does not combine "
                         "with torchrun")
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            parser.error(f"--seeds must be distinct integers >= 0; got {args.seeds}")
        from agents.population import population_agents

        if not args.resume and agent not in population_agents():
            parser.error(f"agent {agent!r} cannot train as a population (--seeds); these can: "
                         f"{', '.join(population_agents())}")
        out = Path(args.out) if args.out is not None else Path("runs") / "maze" / (
            f"{agent}-population" + ("-paper" if args.paper else ""))
        try:
            if args.out is not None:
                runs.check_out_dir(args.out)
            return _train_population(parser, args, out, explicit, agent)
        except ValueError as err:  # runs.RunError included
            parser.error(str(err))
    seed = explicit.get("seed", 0)
    out = Path(args.out) if args.out is not None else Path("runs") / "maze" / (
        f"{agent}-seed{seed}" + ("-paper" if args.paper else ""))

    lock = None
    try:
        if args.out is not None:
            runs.check_out_dir(args.out)  # "" (the current folder), a file, unwritable: refused
        if main_rank:  # held until the end; the trainer shares it
            lock = runs.acquire_lock(out)
        return _train(parser, args, out, explicit, agent)
    except ValueError as err:  # runs.RunError included
        parser.error(str(err))
    finally:
        if lock is not None:
            lock.release()


def _resume_overrides(args: argparse.Namespace, explicit: dict, out: Path) -> dict:
    """The settings a ``--resume`` of the run in ``out`` passes on (see the module docstring)."""
    from agents.trainer import Trainer, load_checkpoint

    overrides = dict(explicit)
    if args.paper:  # --paper on resume only checks that the run used its settings
        run_agent = explicit.get("agent") or load_checkpoint(
            out / CHECKPOINT_NAME)["config"]["agent"]
        overrides.update({k: v for k, v in paper_preset(run_agent).items()
                          if k not in Trainer.RESUME_OVERRIDABLE and k not in explicit})
    return overrides


def _new_config(args: argparse.Namespace, explicit: dict, agent: str) -> TrainConfig:
    from agents.trainer import TrainConfig

    preset = paper_preset(agent) if args.paper else QUICK
    config = TrainConfig(**{**preset, "agent": agent, **explicit})
    config.validate()
    return config


def _clear_out(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path) -> None:
    """Refuse to start over a run in ``out`` unless ``--overwrite``; then clear it."""
    from agents.trainer import CURVE_NAME

    existing = runs.existing_checkpoints(out / CHECKPOINT_NAME)
    if existing and not args.overwrite:
        parser.error(f"{out} already holds a run ({', '.join(existing)}); pass --resume to "
                     "continue it, --overwrite to start over, or another --out")
    runs.remove_checkpoint(out / CHECKPOINT_NAME)
    for name in (LOG_NAME, CURVE_NAME, runs.CONFIG_NAME):
        (out / name).unlink(missing_ok=True)


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path,
           explicit: dict, agent: str) -> int:
    """Build or resume the trainer in ``out`` (locked) and train."""
    from agents.trainer import NonFiniteLossError, Trainer
    from warp_rl import distributed

    main_rank = distributed.is_main()
    try:
        if args.resume:
            trainer = Trainer.resume(out, _resume_overrides(args, explicit, out))
        else:
            config = _new_config(args, explicit, agent)
            # rank 0's folder decides, for every rank
            distributed.run_on_rank0(lambda: _clear_out(parser, args, out))
            trainer = Trainer(config, out)
    except FileNotFoundError as err:  # runs.NoCheckpointError
        parser.error(f"{err}; nothing to resume in {out} (start without --resume)")

    config = trainer.config
    world = distributed.world_size()
    if main_rank:
        runs.write_json(out / runs.CONFIG_NAME, dataclasses.asdict(config))
        print(f"training {config.agent} (seed {config.seed}) for {config.episodes} episodes of "
              f"{config.batch_size} mazes {config.maze_size}x{config.maze_size}, "
              f"{config.episode_length} steps, on {config.device}; writing to {out}"
              + (f"; {world} processes of {config.batch_size // world} mazes" if world > 1
                 else "")
              + (f"; resuming at episode {trainer.episode}" if args.resume else ""))
    try:
        trainer.train(progress=not args.quiet)
    except NonFiniteLossError as err:
        if main_rank:
            print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume --out {out} (from the last checkpoint)",
              file=sys.stderr)
        return 130
    finally:
        trainer.close()

    if main_rank:
        _summarise(args, config, out)
    return 0


def _train_population(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path,
                      explicit: dict, agent: str) -> int:
    """Build or resume one run per ``--seeds`` in ``out/seed<S>`` and train them together."""
    folders = [out / f"seed{seed}" for seed in args.seeds]
    locks = []  # every folder's lock, held until the end (the runs share them)
    try:
        for folder in folders:
            locks.append(runs.acquire_lock(folder))
        return _train_locked_population(parser, args, out, explicit, agent, folders)
    finally:
        for lock in locks:
            lock.release()


def _train_locked_population(parser: argparse.ArgumentParser, args: argparse.Namespace,
                             out: Path, explicit: dict, agent: str, folders: list[Path]) -> int:
    from agents.population import PopulationTrainer
    from agents.trainer import NonFiniteLossError

    try:
        if args.resume:
            population = PopulationTrainer.resume(
                folders, _resume_overrides(args, explicit, folders[0]),
                cuda_graph=args.cuda_graph)
        else:
            config = _new_config(args, explicit, agent)
            for folder in folders:
                _clear_out(parser, args, folder)
            population = PopulationTrainer.create(config, args.seeds, folders,
                                                  cuda_graph=args.cuda_graph)
    except FileNotFoundError as err:  # runs.NoCheckpointError
        parser.error(f"{err}; nothing to resume (start without --resume)")

    config = population.config
    for run in population.runs:
        runs.write_json(run.out_dir / runs.CONFIG_NAME, dataclasses.asdict(run.config))
    print(f"training {config.agent} (seeds {' '.join(map(str, args.seeds))}, one population) "
          f"for {config.episodes} episodes of {config.batch_size} mazes "
          f"{config.maze_size}x{config.maze_size}, {config.episode_length} steps, on "
          f"{config.device}; writing to {out}/seed<S>"
          + (f"; resuming at episode {population.episode}" if args.resume else ""))
    try:
        population.train(progress=not args.quiet)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume --seeds {' '.join(map(str, args.seeds))} "
              f"--out {out} (from the last checkpoints)", file=sys.stderr)
        return 130
    finally:
        population.close()
    for run in population.runs:
        _summarise(args, run.config, run.out_dir)
    return 0


def _summarise(args: argparse.Namespace, config: TrainConfig, out: Path) -> None:
    """Print a finished run's closing lines and draw its learning curve."""
    import numpy as np

    from agents.trainer import CURVE_NAME, random_play_reward, read_log, save_learning_curve

    log = read_log(out / LOG_NAME)
    last = log["reward_mean"][-100:]
    random_reward = random_play_reward(config)
    print(f"seed {config.seed}: mean reward per episode over the last {len(last)} episodes: "
          f"{np.mean(last):.1f} (random play: {random_reward:.1f}); "
          f"{np.mean(log['rollout_s'] + log['update_s']):.3f} s/episode")
    if not args.no_plot:
        title = (f"{config.agent}, {config.maze_size}x{config.maze_size}, batch "
                 f"{config.batch_size}, {config.episode_length} steps, seed {config.seed}")
        save_learning_curve(out / LOG_NAME, out / CURVE_NAME, title, random_reward)
        print(f"learning curve: {out / CURVE_NAME}")
    print(f"checkpoint: {out / CHECKPOINT_NAME}")


if __name__ == "__main__":
    sys.exit(main())
