"""Agent-steps per second of Warp-RNN maze training: this package's trainer vs the original style.

The *baseline* is written here the way the original maze script worked (Miconi et al.'s maze
code, which WarpGrad's maze script follows): a Python loop over the mazes of the batch to build
each observation and to move each agent, a fresh numpy array copied into a torch tensor every
step, a ``torch.distributions.Categorical`` built every step, and the returns and loss
accumulated in a Python loop over time. The original's defects are fixed in the baseline too
(per-maze value baseline, aligned rewards, no teleport into pillars, clipping applied), so both
sides run the same model, the same loss and the same optimiser schedule; only the mechanics
differ.

The *trainer* rows are :meth:`agents.trainer.Trainer.train_episode` itself (numpy vector env
on CPU, torch batch on CUDA, Gumbel-max sampling, vectorised loss, the Warp-RNN's fused
forward/backward tape); the *autograd* rows are the same trainer with the tape switched off
(autograd through the module's forward at every step), to show what each part buys.

One agent-step = one maze advanced by one step, including the loss, backward and optimiser
steps of the episode. Run on one CPU thread by default::

    python scripts/bench_train_maze.py                      # batch 30 and 1024
    python scripts/bench_train_maze.py --batch-sizes 30 --episodes 2
    python scripts/bench_train_maze.py --device cuda       # the original also ran on a GPU
    python scripts/bench_train_maze.py --objectives        # cost of each warp objective
    python scripts/bench_train_maze.py --population 1 3 10 30 --agent lstm   # many seeds

``--population S ...`` measures population training (:mod:`agents.population`): ``S`` seeds
in one process against the same ``S`` seeds trained one after the other by separate
single-seed trainers, agent-steps per second and the ratio, for each ``S``.

``--objectives`` measures instead what each warp objective (``agents.warp_objectives``) costs
at the paper's size: seconds per episode averaged over whole warp intervals (so the warp
steps' replays are included), seconds per warp step, and the peak resident memory of a fresh
process that trains with it, each objective in its own process.

Speed-ups are wall-clock against the original style at the same batch size; "cpu s/ep" is the
process CPU time, a steadier figure on a busy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agents import WARP_OBJECTIVE_NAMES  # torch-free

# torch and the trainer are imported where they are used, after the arguments are parsed, so
# that --help answers at once.
if TYPE_CHECKING:
    import torch

    from agents.trainer import TrainConfig
    from agents.warp_rnn import WarpRNNAgent


# ------------------------------------------------------------------------------------------------
# The original style
# ------------------------------------------------------------------------------------------------
class OriginalStyleMazes:
    """The grid maze stepped one maze at a time, as the original script did."""

    def __init__(self, batch_size: int, size: int, episode_length: int, seed: int) -> None:
        self.batch_size, self.size, self.episode_length = batch_size, size, episode_length
        lab = np.zeros((size, size), dtype=np.int64)
        lab[0, :] = lab[-1, :] = lab[:, 0] = lab[:, -1] = 1
        for row in range(2, size - 1, 2):
            for col in range(2, size - 1, 2):
                lab[row, col] = 1
        lab[size // 2, size // 2] = 0
        self.lab = lab
        self.rng = np.random.RandomState(seed)

    def reset(self) -> None:
        b, c = self.batch_size, self.size // 2
        self.posr = np.full(b, c)
        self.posc = np.full(b, c)
        self.rposr = np.zeros(b, dtype=np.int64)
        self.rposc = np.zeros(b, dtype=np.int64)
        for nb in range(b):
            while True:
                r, col = self.rng.randint(1, self.size - 1), self.rng.randint(1, self.size - 1)
                if self.lab[r, col] == 0 and (r, col) != (c, c):
                    break
            self.rposr[nb], self.rposc[nb] = r, col
        self.reward = np.zeros(b, dtype=np.float32)
        self.actions = np.zeros(b, dtype=np.int64)

    def observation(self, numstep: int) -> np.ndarray:
        inputs = np.zeros((self.batch_size, 17), dtype=np.float32)
        for nb in range(self.batch_size):
            r, c = self.posr[nb], self.posc[nb]
            inputs[nb, 0:9] = self.lab[r - 1:r + 2, c - 1:c + 2].flatten() * 1.0
            inputs[nb, 10] = 1.0
            inputs[nb, 11] = numstep / self.episode_length
            inputs[nb, 12] = 1.0 * self.reward[nb]
            inputs[nb, 13 + self.actions[nb]] = 1
        return inputs

    def step(self, actions: np.ndarray) -> np.ndarray:
        reward = np.zeros(self.batch_size, dtype=np.float32)
        for nb in range(self.batch_size):
            action = actions[nb]
            tr, tc = self.posr[nb], self.posc[nb]
            if action == 0:
                tr -= 1
            elif action == 1:
                tr += 1
            elif action == 2:
                tc -= 1
            elif action == 3:
                tc += 1
            if self.lab[tr][tc] == 0:
                self.posr[nb], self.posc[nb] = tr, tc
            if self.rposr[nb] == self.posr[nb] and self.rposc[nb] == self.posc[nb]:
                reward[nb] += 10.0
                while True:
                    r, c = self.rng.randint(1, self.size - 1), self.rng.randint(1, self.size - 1)
                    if self.lab[r, c] == 0 and (r, c) != (self.rposr[nb], self.rposc[nb]):
                        break
                self.posr[nb], self.posc[nb] = r, c
        self.reward, self.actions = reward, np.asarray(actions)
        return reward


def original_style_episode(agent: WarpRNNAgent, mazes: OriginalStyleMazes,
                           fast_opt: torch.optim.Optimizer, warp_opt: torch.optim.Optimizer,
                           warp_params: list[torch.nn.Parameter], warp_sum: list[torch.Tensor],
                           episode: int, cfg: TrainConfig) -> float:
    """One training episode in the original style; same model, loss and optimiser schedule."""
    import torch

    b, steps, device = mazes.batch_size, cfg.episode_length, torch.device(cfg.device)
    mazes.reset()
    state = agent.initial_state(b, device)
    loss = torch.zeros((), device=device)
    logprobs, rewards, values = [], [], []
    for numstep in range(steps):
        inputs = torch.from_numpy(mazes.observation(numstep)).to(device)
        logits, value, state = agent(inputs, state)
        probs = torch.softmax(logits, dim=1)
        distrib = torch.distributions.Categorical(probs)
        actions = distrib.sample()
        logprobs.append(distrib.log_prob(actions))
        rewards.append(mazes.step(actions.data.cpu().numpy()))
        values.append(value)
        loss = loss + cfg.penalty_coef * probs.pow(2).sum() / b
    returns = torch.zeros(b, device=device)
    lossv = torch.zeros((), device=device)
    for t in reversed(range(steps)):
        returns = cfg.gamma * returns + torch.from_numpy(rewards[t]).to(device)
        advantage = returns - values[t]
        lossv = lossv + advantage.pow(2).sum() / b
        loss = loss - (logprobs[t] * advantage.detach()).sum() / b
    loss = (loss + cfg.value_coef * lossv) / steps
    fast_opt.zero_grad()
    warp_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
    if episode >= cfg.warmup_episodes:
        fast_opt.step()
        for s, p in zip(warp_sum, warp_params, strict=True):
            s += p.grad
        if (episode - cfg.warmup_episodes + 1) % cfg.meta_interval == 0:
            for s, p in zip(warp_sum, warp_params, strict=True):
                p.grad = s.clone()
                s.zero_()
            warp_opt.step()
    return float(np.sum(rewards)) / b


def original_runner(cfg: TrainConfig) -> Callable[[], None]:
    """One training episode of the original style per call."""
    import torch

    from agents.warp_rnn import WarpRNNAgent

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    agent = WarpRNNAgent(17, 4, cfg.hidden_size).to(device)
    warp_params = [p for m in agent.warp_modules() for p in m.parameters()]
    fast_params = [p for m in agent.adapt_modules() for p in m.parameters()]
    fast_opt = torch.optim.Adam(fast_params, lr=cfg.lr)
    warp_opt = torch.optim.Adam(warp_params, lr=cfg.warp_lr)
    warp_sum = [torch.zeros_like(p) for p in warp_params]
    mazes = OriginalStyleMazes(cfg.batch_size, cfg.maze_size, cfg.episode_length, cfg.seed)
    counter = iter(range(10**9))

    def run() -> None:
        original_style_episode(agent, mazes, fast_opt, warp_opt, warp_params, warp_sum,
                               next(counter), cfg)

    return run


def trainer_runner(cfg: TrainConfig, out: str, fused: bool = True) -> Callable[[], None]:
    """One :meth:`agents.trainer.Trainer.train_episode` per call; ``fused=False`` trains
    through autograd per step instead of the Warp-RNN's fused tape."""
    from agents.trainer import Trainer

    trainer = Trainer(cfg, out)
    trainer.agent.fused_unroll = fused
    return trainer.train_episode


def time_interleaved(runners: dict[str, Callable[[], None]], warmup: int, episodes: int,
                     device: torch.device) -> dict[str, tuple[float, float]]:
    """Median wall-clock and process-CPU seconds per call of each runner. The runners take
    turns, episode by episode, so that a change in the machine's load hits them alike."""
    import torch

    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for _ in range(episodes):
        for name, run in runners.items():
            w, c = time.perf_counter(), time.process_time()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - w, time.process_time() - c))
    return {name: (float(np.median([t[0] for t in ts])), float(np.median([t[1] for t in ts])))
            for name, ts in times.items()}


def one_objective(args: argparse.Namespace) -> dict[str, float]:
    """Train ``args.intervals`` warp intervals with objective ``args.one_objective``; the
    costs as a dict (run in a fresh process by :func:`objective_costs`)."""
    import resource

    from agents.trainer import TrainConfig, Trainer

    cfg = TrainConfig(agent=args.agent, batch_size=args.batch_sizes[0],
                      hidden_size=args.hidden_size, maze_size=args.maze_size,
                      episode_length=args.episode_length, warmup_episodes=0,
                      meta_interval=args.meta_interval, warp_objective=args.one_objective,
                      warp_pairs=args.warp_pairs, threads=args.threads, episodes=1,
                      device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        trainer.train_episode()  # untimed: first-touch of buffers
        for _ in range(args.meta_interval - 1):  # to the end of the first interval
            trainer.train_episode()
        wall, cpu = time.perf_counter(), time.process_time()
        rows = [trainer.train_episode() for _ in range(args.intervals * args.meta_interval)]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        trainer.close()
    warp = [r["update_s"] for r in rows if r["warp_step"]]
    return {"s_per_episode": wall / len(rows), "cpu_s_per_episode": cpu / len(rows),
            "s_per_warp_step": float(np.median(warp)) if warp else float("nan"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def objective_costs(args: argparse.Namespace) -> None:
    """Print the cost of every objective in ``args.objectives``, each in a fresh process."""
    import json
    import subprocess

    print(f"warp objectives: agent {args.agent}, batch {args.batch_sizes[0]}, maze "
          f"{args.maze_size}x{args.maze_size}, {args.episode_length} steps, hidden "
          f"{args.hidden_size}, warp step every {args.meta_interval} episodes, "
          f"{args.warp_pairs} replayed pair(s) per warp step, {args.intervals} interval(s) "
          f"timed, {args.threads} thread(s) on {args.device}")
    print(f"{'objective':>19} {'s/episode':>10} {'cpu s/ep':>9} {'s/warp step':>12} "
          f"{'peak RSS MB':>12} {'wall vs two_timescale':>22} {'cpu vs two_timescale':>21}")
    # The baseline is measured first, in the same run, whatever order the names came in.
    names = ["two_timescale"] + [n for n in args.objectives if n != "two_timescale"]
    base = None
    for name in names:
        cmd = [sys.executable, __file__, "--one-objective", name, "--agent", args.agent,
               "--batch-sizes", str(args.batch_sizes[0]), "--meta-interval",
               str(args.meta_interval), "--warp-pairs", str(args.warp_pairs), "--intervals",
               str(args.intervals), "--episode-length", str(args.episode_length),
               "--hidden-size", str(args.hidden_size), "--maze-size", str(args.maze_size),
               "--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        base = r if base is None else base
        print(f"{name:>19} {r['s_per_episode']:>10.3f} {r['cpu_s_per_episode']:>9.3f} "
              f"{r['s_per_warp_step']:>12.3f} {r['peak_rss_mb']:>12.0f} "
              f"{r['s_per_episode'] / base['s_per_episode']:>21.2f}x "
              f"{r['cpu_s_per_episode'] / base['cpu_s_per_episode']:>20.2f}x", flush=True)


def population_costs(args: argparse.Namespace) -> None:
    """Agent-steps per second of ``S`` seeds trained as one population
    (:class:`agents.population.PopulationTrainer`) against the same ``S`` seeds as separate
    single-seed trainers run one after the other, for every ``S`` in ``args.population``
    (interleaved episode by episode, so that the machine's load hits both alike)."""
    import torch

    from agents.population import PopulationTrainer
    from agents.trainer import TrainConfig, Trainer

    batch = args.batch_sizes[0]
    print(f"population training: agent {args.agent}, batch {batch}, maze {args.maze_size}x"
          f"{args.maze_size}, {args.episode_length} steps, hidden {args.hidden_size}, "
          f"{args.threads} thread(s) on {args.device}; median of {args.episodes} timed "
          f"episode(s) after {args.warmup} untimed")
    print(f"{'seeds':>6} {'impl':>10} {'s/episode':>10} {'cpu s/ep':>9} {'agent-steps/s':>14} "
          f"{'vs separate':>12} {'cpu vs sep.':>12}")
    cfg = TrainConfig(agent=args.agent, batch_size=batch, hidden_size=args.hidden_size,
                      maze_size=args.maze_size, episode_length=args.episode_length,
                      warmup_episodes=0, meta_interval=args.meta_interval, threads=args.threads,
                      episodes=10**6, device=args.device)
    warmup = max(args.warmup, 2) if args.cuda_graph else args.warmup  # eager, then capture
    for size in args.population:
        seeds = list(range(size))
        with tempfile.TemporaryDirectory() as tmp:
            population = PopulationTrainer.create(cfg, seeds, [f"{tmp}/p{s}" for s in seeds])
            separate = [Trainer(dataclasses.replace(cfg, seed=s), f"{tmp}/s{s}") for s in seeds]

            def one_by_one(runs: list[Trainer] = separate) -> None:
                for run in runs:
                    run.train_episode()

            runners = {"population": population.train_episode, "separate": one_by_one}
            if args.cuda_graph:
                graphed = PopulationTrainer.create(cfg, seeds, [f"{tmp}/g{s}" for s in seeds],
                                                   cuda_graph=True)
                runners = {"graphed": graphed.train_episode, **runners}
            results = time_interleaved(runners, warmup, args.episodes,
                                       torch.device(args.device))
            population.close()
            if args.cuda_graph:
                graphed.close()
            for run in separate:
                run.close()
        steps = size * batch * args.episode_length
        sep_wall, sep_cpu = results["separate"]
        if args.profile:
            profile_population(cfg, size, cuda_graph=args.cuda_graph)
        for name, (wall, cpu) in results.items():
            print(f"{size:>6} {name:>10} {wall:>10.3f} {cpu:>9.3f} {steps / wall:>14.0f} "
                  f"{sep_wall / wall:>11.2f}x {sep_cpu / cpu:>11.2f}x", flush=True)


def profile_population(cfg: TrainConfig, size: int, top: int = 8,
                       cuda_graph: bool = False) -> None:
    """Where one population episode of ``size`` seeds spends its CPU time: the matrix products
    (arithmetic that batching over seeds cannot shrink) against everything else (per-operation
    overhead, which it can), and the ``top`` operations by self time. On a GPU, also the time
    its kernels kept the device busy, against the episode's wall-clock time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from agents.population import PopulationTrainer

    on_gpu = torch.device(cfg.device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with tempfile.TemporaryDirectory() as tmp:
        population = PopulationTrainer.create(cfg, list(range(size)),
                                              [f"{tmp}/p{s}" for s in range(size)],
                                              cuda_graph=cuda_graph)
        for _ in range(2 if cuda_graph else 1):  # untimed: first touch (and the capture)
            population.train_episode()
        if on_gpu:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            population.train_episode()
            if on_gpu:
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        population.close()
    events = prof.key_averages()
    if on_gpu:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
                   for e in kernels)
        print(f"{'':>6} profile of {size} seed(s){' (CUDA graph)' if cuda_graph else ''}: "
              f"{len(kernels)} GPU kernels and copies, busy {busy / 1e3:.1f} ms of the "
              f"episode's {wall * 1e3:.1f} ms")
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events
                 if e.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"))
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    print(f"{'':>6} profile of {size} seed(s): matrix products {100 * matmul / total:.0f}% of "
          f"{total / 1e6:.3f} s; top: " + ", ".join(
              f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in ranked))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[30, 1024])
    parser.add_argument("--episodes", type=int, default=3, help="timed episodes per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed episodes first")
    parser.add_argument("--episode-length", type=int, default=200)
    parser.add_argument("--hidden-size", type=int, default=100)
    parser.add_argument("--maze-size", type=int, default=13)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--skip-original-above", type=int, default=4096,
                        help="skip the (slow) original style for batches above this")
    parser.add_argument("--objectives", nargs="*", default=None,
                        help="measure the warp objectives instead (default with no names: all of "
                        f"{' '.join(WARP_OBJECTIVE_NAMES)}), at the first --batch-sizes; "
                        "two_timescale, the baseline of the ratios, is always measured first")
    parser.add_argument("--agent", default="warp", help="agent for --objectives (warp)")
    parser.add_argument("--meta-interval", type=int, default=5,
                        help="episodes between warp steps for --objectives (5)")
    parser.add_argument("--warp-pairs", type=int, default=2,
                        help="replayed pairs per warp step for --objectives (2)")
    parser.add_argument("--intervals", type=int, default=2,
                        help="timed warp intervals per objective (2)")
    parser.add_argument("--population", type=int, nargs="+", default=None, metavar="S",
                        help="measure population training instead: S seeds in one process "
                        "against S separate runs, for each S (e.g. 1 3 10 30), agent --agent, "
                        "at the first --batch-sizes")
    parser.add_argument("--profile", action="store_true",
                        help="with --population: also profile one population episode per S")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="with --population on a GPU: also time the population with its "
                        "episode captured as a CUDA graph (the 'graphed' rows)")
    parser.add_argument("--one-objective", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [n for n in args.objectives or [] if n not in WARP_OBJECTIVE_NAMES]
    if unknown:
        parser.error(f"unknown warp objective(s) {', '.join(unknown)}; "
                     f"accepted: {', '.join(WARP_OBJECTIVE_NAMES)}")
    if args.cuda_graph and (args.population is None or not args.device.startswith("cuda")):
        parser.error("--cuda-graph times populations on a GPU: give --population S ... and "
                     "--device cuda")
    import torch

    from agents.trainer import TrainConfig

    if args.one_objective is not None:
        import json

        torch.set_num_threads(args.threads)
        print(json.dumps(one_objective(args)))
        return
    if args.population is not None:
        torch.set_num_threads(args.threads)
        population_costs(args)
        return
    if args.objectives is not None:
        args.objectives = args.objectives or list(WARP_OBJECTIVE_NAMES)
        objective_costs(args)
        return
    if args.episodes < 1 or args.warmup < 0 or min(args.batch_sizes) < 1 or args.threads < 1:
        parser.error("--episodes and --threads must be >= 1, --warmup >= 0, batch sizes >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__} on {args.device} ({where}), {args.threads} CPU "
          f"thread(s); Warp-RNN training, maze {args.maze_size}x{args.maze_size}, "
          f"{args.episode_length} steps, hidden {args.hidden_size}; median of {args.episodes} "
          f"timed episode(s) after {args.warmup} untimed")
    print(f"{'batch':>6} {'impl':>9} {'s/episode':>10} {'cpu s/ep':>9} {'agent-steps/s':>14} "
          f"{'speed-up':>9}")
    for batch in args.batch_sizes:
        cfg = TrainConfig(batch_size=batch, hidden_size=args.hidden_size,
                          maze_size=args.maze_size, episode_length=args.episode_length,
                          warmup_episodes=0, threads=args.threads, episodes=1,
                          device=args.device)
        steps = batch * args.episode_length
        with tempfile.TemporaryDirectory() as tmp:
            runners = {}
            if batch <= args.skip_original_above:
                runners["original"] = original_runner(cfg)
            runners["autograd"] = trainer_runner(cfg, f"{tmp}/autograd", fused=False)
            runners["trainer"] = trainer_runner(cfg, f"{tmp}/trainer", fused=True)
            results = time_interleaved(runners, args.warmup, args.episodes,
                                       torch.device(args.device))
        base = results["original"][0] if "original" in results else float("nan")
        for name, (wall, cpu) in results.items():
            print(f"{batch:>6} {name:>9} {wall:>10.3f} {cpu:>9.3f} {steps / wall:>14.0f} "
                  f"{base / wall:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
