"""Data-parallel scaling: maze training throughput and Omniglot meta-step time on 1 and P ranks.

    python scripts/bench_distributed.py                        # small sizes, 1x1 vs 2x1
    python scripts/bench_distributed.py --configs 1x1 2x1 1x2  # also 1 process with 2 threads
    python scripts/bench_distributed.py --only maze --batch-size 30 --maze-size 13 \\
        --episode-length 200 --hidden-size 100 --episodes 10   # the paper's maze sizes
    python scripts/bench_distributed.py --device cuda --configs 1x1 2x1 4x1   # 1 GPU per rank

A configuration ``PxT`` runs P processes (ranks, launched here with torch.multiprocessing and
torchrun's environment variables; gloo on CPU, NCCL on CUDA) of T torch threads each. Every
configuration does the same global work: the maze's ``--batch-size`` mazes per episode and the
Omniglot meta-batch of ``--tasks`` tasks are split evenly over the ranks (see
docs/distributed.md). After one untimed warm-up episode / meta-step, the ranks meet at a
barrier, run the timed ones, and meet again; rank 0 reports the wall time in between.

Printed: maze agent-steps per second (mazes x steps per episode / seconds per episode, all
ranks together) and seconds per Omniglot warp_leap meta-step, each with its ratio to the first
configuration (above 1: faster). Omniglot uses ``--data-root`` (default: the shared data) or,
when it is missing or with ``--synthetic``, generated alphabets of the same shape. The figures,
with the commands and machines that gave them, are in docs/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# torch, the trainer and warp_rl.distributed are imported where they are used, after the
# arguments are parsed, so that --help answers at once.


def parse_config(text: str) -> tuple[int, int]:
    """``"PxT"`` -> (processes, threads per process)."""
    try:
        procs, threads = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a configuration is PROCESSESxTHREADS, e.g. 2x1") from None
    if procs < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: processes and threads must be >= 1")
    return procs, threads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", nargs="+", type=parse_config, default=["1x1", "2x1"],
                   help="PROCESSESxTHREADS configurations to time")
    p.add_argument("--only", choices=["maze", "omniglot"], help="run one benchmark only")
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per rank)")
    p.add_argument("--timeout", type=float, default=300.0, help="collective timeout, seconds")
    g = p.add_argument_group("maze (A2C, Warp-RNN)")
    g.add_argument("--agent", default="warp")
    g.add_argument("--batch-size", type=int, default=16, help="global mazes per episode")
    g.add_argument("--maze-size", type=int, default=9)
    g.add_argument("--episode-length", type=int, default=50)
    g.add_argument("--hidden-size", type=int, default=64)
    g.add_argument("--episodes", type=int, default=8, help="timed episodes")
    g = p.add_argument_group("omniglot (warp_leap meta-step)")
    g.add_argument("--tasks", type=int, default=4, help="global tasks per meta-step")
    g.add_argument("--task-steps", type=int, default=10)
    g.add_argument("--task-batch-size", type=int, default=20)
    g.add_argument("--num-filters", type=int, default=32)
    g.add_argument("--warp-meta-batch-size", type=int, default=4,
                   help="replayed states per warp step, per rank")
    g.add_argument("--meta-steps", type=int, default=2, help="timed meta-steps")
    g.add_argument("--data-root", default=None)
    g.add_argument("--cache-dir", default=None)
    g.add_argument("--synthetic", action="store_true", help="use generated alphabets")
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p


# ------------------------------------------------------------------------------------------------
# Rank bodies (run in spawned processes)
# ------------------------------------------------------------------------------------------------
def _timed(step, warmup: int, count: int) -> float:
    """Wall seconds of ``count`` calls of ``step`` after ``warmup`` untimed ones, between two
    barriers (so the slowest rank counts)."""
    from warp_rl import distributed

    for _ in range(warmup):
        step()
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(count):
        step()
    distributed.barrier()
    return time.perf_counter() - start


def maze_rank(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """One rank of the maze benchmark: agent-steps per second of ``Trainer.train_episode``."""
    from agents.trainer import TrainConfig, Trainer

    config = TrainConfig(agent=args.agent, batch_size=args.batch_size, maze_size=args.maze_size,
                         episode_length=args.episode_length, hidden_size=args.hidden_size,
                         warmup_episodes=0, meta_interval=4, threads=threads,
                         device=args.device, episodes=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, tmp)
        seconds = _timed(trainer.train_episode, 1, args.episodes)
        trainer.close()
    steps = args.batch_size * args.episode_length * args.episodes
    return {"agent_steps_per_s": steps / seconds, "s_per_episode": seconds / args.episodes}


def omniglot_rank(args: argparse.Namespace, threads: int, data_root: str) -> dict[str, Any]:
    """One rank of the Omniglot benchmark: seconds per ``warp_leap`` meta-step."""
    import torch

    from warp_rl import distributed
    from warp_rl.omniglot.data import load_omniglot
    from warp_rl.omniglot.distributed import DataParallelLearner
    from warp_rl.omniglot.meta_learners import OptimConfig, make_learner
    from warp_rl.omniglot.models import WarpConfig
    from warp_rl.omniglot.tasks import TaskPool, split_alphabets

    torch.set_num_threads(threads)
    device = distributed.local_device(args.device)
    with distributed.rank0_first("loading Omniglot"):
        data = load_omniglot(data_root or None, args.cache_dir)
    split = split_alphabets(data.alphabets, data.num_characters,
                            min(25, len(data.alphabets) - 11), seed=0)
    pool = TaskPool(data, split.train, seed=0, device=device)
    learner = make_learner("warp_leap", OptimConfig("sgd", 0.1), OptimConfig("sgd", 0.1),
                           seed=0, device=device, num_filters=args.num_filters,
                           warp=WarpConfig(filters=args.num_filters),
                           meta_batch_size=args.warp_meta_batch_size, batching="loop")
    if distributed.world_size() > 1:
        learner = DataParallelLearner(learner, seed=0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.arange(args.tasks) % len(pool)

    def step() -> None:
        learner.meta_step(pool.sample(ids, args.task_steps, args.task_batch_size, generator))

    seconds = _timed(step, 1, args.meta_steps)
    return {"s_per_meta_step": seconds / args.meta_steps, "data": data.source}


def _rank_main(rank: int, world: int, port: int, threads: int, bench: str,
               args: argparse.Namespace, data_root: str, queue: Any) -> None:
    import torch

    from warp_rl import distributed

    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    else:
        os.environ["WORLD_SIZE"] = "1"
    torch.set_num_threads(threads)
    try:
        distributed.init_from_env(args.timeout)
        if bench == "maze":
            result = maze_rank(args, threads)
        else:
            result = omniglot_rank(args, threads, data_root)
        if rank == 0:
            queue.put(result)
    finally:
        distributed.shutdown()


def run_config(bench: str, procs: int, threads: int, args: argparse.Namespace,
               data_root: str) -> dict[str, Any]:
    """Launch ``procs`` ranks of ``threads`` threads; rank 0's result."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = [ctx.Process(target=_rank_main, args=(r, procs, port, threads, bench, args,
                                                    data_root, queue)) for r in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    codes = [w.exitcode for w in workers]
    if any(codes):
        raise SystemExit(f"{bench} {procs}x{threads}: a rank failed (exit codes {codes})")
    return queue.get(timeout=10)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    args.configs = [parse_config(c) if isinstance(c, str) else c for c in args.configs]
    for name in ("batch_size", "tasks"):
        for procs, _ in args.configs:
            if getattr(args, name) % procs:
                parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be "
                             f"divisible by every configuration's process count ({procs})")
    if torch.device(args.device).type == "cuda":
        available = torch.cuda.device_count()
        if max(p for p, _ in args.configs) > available:
            parser.error(f"--device cuda: {available} GPU(s) visible, fewer than the ranks asked")
    benches = [args.only] if args.only else ["maze", "omniglot"]
    data_root, tmp = args.data_root, None
    if "omniglot" in benches:
        from warp_rl.omniglot.data import default_data_root

        root = Path(data_root) if data_root else default_data_root()
        if args.synthetic or not root.exists():
            from warp_rl.omniglot.synthetic import write_npz_pair

            tmp = tempfile.TemporaryDirectory()
            data_root = str(write_npz_pair(Path(tmp.name) / "data", num_alphabets=40))
            args.cache_dir = str(Path(tmp.name) / "cache")
            print(f"(Omniglot: {'--synthetic' if args.synthetic else f'no data at {root}'}; "
                  "using generated alphabets)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"({os.cpu_count()} CPU cores, load average {load:.2f} before the runs)")
    rows: list[dict[str, Any]] = []
    try:
        for bench in benches:
            base = None
            for procs, threads in args.configs:
                result = run_config(bench, procs, threads, args, data_root or "")
                figure = (result["agent_steps_per_s"] if bench == "maze"
                          else 1.0 / result["s_per_meta_step"])
                base = figure if base is None else base
                row = {"bench": bench, "config": f"{procs}x{threads}", "processes": procs,
                       "threads": threads, **result, "speedup": figure / base}
                rows.append(row)
                if bench == "maze":
                    print(f"maze      {procs} process(es) x {threads} thread(s): "
                          f"{result['agent_steps_per_s']:9.0f} agent-steps/s "
                          f"({result['s_per_episode']:.3f} s/episode)  x{row['speedup']:.2f}")
                else:
                    print(f"omniglot  {procs} process(es) x {threads} thread(s): "
                          f"{result['s_per_meta_step']:9.2f} s/meta-step  x{row['speedup']:.2f}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"(maze: {args.batch_size} mazes {args.maze_size}x{args.maze_size}, "
          f"{args.episode_length} steps, {args.agent} hidden {args.hidden_size}; omniglot: "
          f"warp_leap, {args.tasks} tasks x {args.task_steps} steps x {args.task_batch_size} "
          f"images, {args.num_filters} filters; device {args.device})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
