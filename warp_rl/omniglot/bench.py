"""Seconds per meta-step of an Omniglot meta-learner: task batching, tasks and task steps.

    python -m warp_rl.omniglot.bench                      # loop and grouped at 5 and 20 tasks
    python -m warp_rl.omniglot.bench --meta-model leap --tasks 5 20 --task-steps 10
    python -m warp_rl.omniglot.bench --device cuda --tasks 20 --task-steps 100 --warmup 1

For every number of task steps and of tasks (``--tasks``, the meta-batch) it builds one fresh
learner per ``--task-batching`` mode (seed 0, the paper's settings otherwise) and times
``--meta-steps`` meta-steps on the real data after ``--warmup`` untimed ones, the modes taking
turns on the same tasks (so that a busy machine slows them alike). It prints one JSON row per
mode: wall seconds per meta-step (``s_per_meta_step``, CUDA synchronised before and after), on
the CPU also this process's CPU seconds (``cpu_s_per_meta_step``: steadier than wall time on a
shared machine), for the warp learners the split into adaptation (``adapt_s``) and meta-update
(``meta_update_s``); then one row per comparison with each mode's speed-up over the first mode
(``loop`` by default), and a table of all of it. With fewer than 20 tasks a row also gives the
time scaled to 20 tasks (a meta-step is a sum over tasks). ``--profile`` adds the torch
profile (operators by self CPU time) of one more meta-step of each mode.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

# torch-free: the rest is imported after the arguments are parsed (docs/DESIGN.md)
from .cli import METHODS, TASK_BATCHING

if TYPE_CHECKING:
    import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meta-model", default="warp_leap", choices=METHODS)
    p.add_argument("--tasks", type=int, nargs="+", default=[5, 20],
                   help="tasks per meta-step (meta-batch sizes)")
    p.add_argument("--task-steps", type=int, nargs="+", default=[25])
    p.add_argument("--task-batching", nargs="+", default=["loop", "grouped"],
                   choices=TASK_BATCHING, help="modes to time; speed-ups are over the first")
    p.add_argument("--task-batch-size", type=int, default=20)
    p.add_argument("--num-filters", type=int, default=64)
    p.add_argument("--meta-steps", type=int, default=1, help="timed meta-steps per mode")
    p.add_argument("--warmup", type=int, default=0, help="untimed meta-steps first")
    p.add_argument("--warp-meta-batch-size", type=int, default=1)
    p.add_argument("--warp-max-states", type=int, default=None)
    p.add_argument("--warp-batching", default="loop", choices=["loop", "vmap", "auto"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--profile", action="store_true",
                   help="also print the profile of one more meta-step of each mode")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", default=None, help="also write the rows here")
    return p


def _learner(args: argparse.Namespace, mode: str, device: torch.device, pretrain: int):
    from .meta_learners import OptimConfig, make_learner

    kw = {}
    if args.meta_model.startswith("warp"):
        kw = dict(meta_batch_size=args.warp_meta_batch_size,
                  max_states=args.warp_max_states, batching=args.warp_batching)
    return make_learner(args.meta_model, OptimConfig("sgd", 0.1), OptimConfig("sgd", 0.1),
                        seed=0, device=device, num_pretrain=pretrain,
                        num_filters=args.num_filters, task_batching=mode, **kw)


def _profile(learner, tasks) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.meta_step(tasks)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    import torch

    from .data import load_omniglot
    from .meta_learners import _synchronize
    from .tasks import TaskPool, split_alphabets

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    data = load_omniglot(args.data_root, args.cache_dir)
    split = split_alphabets(data.alphabets, data.num_characters, 25, seed=0)
    pool = TaskPool(data, split.train, seed=0, device=device)
    rows: list[dict] = []
    for steps in args.task_steps:
        for num in args.tasks:
            learners = {m: _learner(args, m, device, len(pool)) for m in args.task_batching}
            g = torch.Generator().manual_seed(0)
            ids = torch.arange(num) % len(pool)
            wall: dict[str, list[float]] = {m: [] for m in learners}
            cpu_s: dict[str, list[float]] = {m: [] for m in learners}
            parts: dict[str, list[dict]] = {m: [] for m in learners}
            for i in range(args.warmup + args.meta_steps):
                tasks = pool.sample(ids, steps, args.task_batch_size, g)
                for mode, learner in learners.items():  # the modes take turns on the same tasks
                    _synchronize(device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    learner.meta_step(tasks)
                    _synchronize(device)
                    if i >= args.warmup:
                        wall[mode].append(time.perf_counter() - t0)
                        cpu_s[mode].append(time.process_time() - c0)
                        parts[mode].append(dict(learner.last_times))
            found = {}
            for mode, learner in learners.items():
                sec = sum(wall[mode]) / len(wall[mode])
                row = {"meta_model": args.meta_model, "device": str(device),
                       "threads": torch.get_num_threads(), "tasks": num, "task_steps": steps,
                       "num_filters": args.num_filters, "task_batching": mode,
                       "grouped": learner.groups(tasks), "s_per_meta_step": sec}
                if cpu:
                    row["cpu_s_per_meta_step"] = sum(cpu_s[mode]) / len(cpu_s[mode])
                if num < 20:
                    row["s_per_meta_step_20_tasks"] = sec * 20 / num
                if parts[mode] and parts[mode][0]:
                    for key in ("adapt_s", "meta_update_s"):
                        row[key] = sum(q[key] for q in parts[mode]) / len(parts[mode])
                if learner.last_info is not None:
                    row["states"] = learner.last_info.num_states
                    row["outer_steps"] = learner.last_info.num_steps
                rows.append(row)
                found[mode] = row
                print(json.dumps(row), flush=True)
            base = args.task_batching[0]
            for mode in args.task_batching[1:]:
                ratio = {"meta_model": args.meta_model, "device": str(device), "tasks": num,
                         "task_steps": steps, "speedup_of": mode, "over": base}
                for key in ("s_per_meta_step", "cpu_s_per_meta_step", "adapt_s"):
                    if key in found[mode]:
                        ratio[key.replace("s_per_meta_step", "speedup").replace(
                            "adapt_s", "adapt_speedup")] = found[base][key] / found[mode][key]
                rows.append(ratio)
                print(json.dumps(ratio), flush=True)
            if args.profile:
                tasks = pool.sample(ids, steps, args.task_batch_size, g)
                for mode, learner in learners.items():
                    print(f"profile: {args.meta_model}, {num} tasks, {steps} steps, {mode}")
                    print(_profile(learner, tasks), flush=True)
    print(table(rows))
    if args.json:
        from warp_rl.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return rows


def table(rows: list[dict]) -> str:
    """A markdown table of the timing rows with the speed-up of each over the first mode."""
    speed = {(r["tasks"], r["task_steps"], r["speedup_of"]): r for r in rows if "speedup_of" in r}
    lines = ["| tasks | task steps | task batching | s / meta-step | CPU s / meta-step "
             "| adaptation s | speed-up (wall) | speed-up (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(x) -> str:
        return "" if x is None else f"{x:.3g}"

    for r in rows:
        if "speedup_of" in r:
            continue
        s = speed.get((r["tasks"], r["task_steps"], r["task_batching"]), {})
        lines.append(f"| {r['tasks']} | {r['task_steps']} | {r['task_batching']} | "
                     f"{fmt(r['s_per_meta_step'])} | {fmt(r.get('cpu_s_per_meta_step'))} | "
                     f"{fmt(r.get('adapt_s'))} | {fmt(s.get('speedup'))} | "
                     f"{fmt(s.get('cpu_speedup'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
