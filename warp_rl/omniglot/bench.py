"""Seconds per meta-step of an Omniglot meta-learner, and how it scales with task steps.

    python -m warp_rl.omniglot.bench --meta-model warp_leap --tasks 20 --task-steps 25 50 100

Each configuration builds a fresh learner (seed 0, the paper's settings otherwise), runs
``--warmup`` untimed meta-steps, then times ``--meta-steps`` meta-steps on the real data. For
the warp learners the time is split into adaptation (the tasks' SGD steps, states stored) and
the meta-update (WarpGrad's Algorithm 2 over the stored states plus the Leap step). With fewer
than 20 tasks per meta-step the table also gives the time scaled to 20 tasks (meta-step time is
a sum over tasks: adaptation per task, and the meta-update per stored state).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .data import load_omniglot
from .meta_learners import METHODS, OptimConfig, _synchronize, make_learner
from .tasks import TaskPool, split_alphabets


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meta-model", default="warp_leap", choices=METHODS)
    p.add_argument("--tasks", type=int, default=20, help="tasks per meta-step")
    p.add_argument("--task-steps", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--task-batch-size", type=int, default=20)
    p.add_argument("--meta-steps", type=int, default=1, help="timed meta-steps")
    p.add_argument("--warmup", type=int, default=0, help="untimed meta-steps first")
    p.add_argument("--warp-meta-batch-size", type=int, default=1)
    p.add_argument("--warp-max-states", type=int, default=None)
    p.add_argument("--warp-batching", default="loop", choices=["loop", "vmap", "auto"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_omniglot(args.data_root, args.cache_dir)
    split = split_alphabets(data.alphabets, data.num_characters, 25, seed=0)
    pool = TaskPool(data, split.train, seed=0, device=device)
    rows = []
    for steps in args.task_steps:
        kw = {}
        if args.meta_model.startswith("warp"):
            kw = dict(meta_batch_size=args.warp_meta_batch_size,
                      max_states=args.warp_max_states, batching=args.warp_batching)
        learner = make_learner(args.meta_model, OptimConfig("sgd", 0.1), OptimConfig("sgd", 0.1),
                               seed=0, device=device, num_pretrain=len(pool), **kw)
        g = torch.Generator().manual_seed(0)
        ids = torch.arange(args.tasks) % len(pool)
        times, parts = [], []
        for i in range(args.warmup + args.meta_steps):
            tasks = pool.sample(ids, steps, args.task_batch_size, g)
            _synchronize(device)
            t0 = time.perf_counter()
            learner.meta_step(tasks)
            _synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                parts.append(dict(learner.last_times))
        sec = sum(times) / len(times)
        row = {"meta_model": args.meta_model, "device": str(device),
               "threads": torch.get_num_threads(), "tasks": args.tasks, "task_steps": steps,
               "s_per_meta_step": sec, "s_per_meta_step_20_tasks": sec * 20 / args.tasks}
        if parts and parts[0]:
            row["adapt_s"] = sum(q["adapt_s"] for q in parts) / len(parts)
            row["meta_update_s"] = sum(q["meta_update_s"] for q in parts) / len(parts)
            info = learner.last_info
            row["states"], row["outer_steps"] = info.num_states, info.num_steps
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        from warp_rl.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
