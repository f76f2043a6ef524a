"""Env-steps per second of the maze implementations, on one CPU thread.

Measures, in one run:

* ``single``: one :class:`envs.WarpMazeEnv` through ``gymnasium.make`` (with its default
  wrappers), resetting when an episode ends;
* ``sync``: ``gymnasium.vector.SyncVectorEnv`` of N single envs;
* ``vector``: :class:`envs.WarpMazeVectorEnv` from ``gymnasium.make_vec`` at several N;
* ``torch``: :class:`envs.TorchMazeBatch` on the CPU, or the devices given by
  ``--torch-devices`` (``--no-torch`` to skip);
* ``loop``: the baseline, written below: N mazes stepped the way the original experiment code
  did (Miconi et al.'s maze, as used by WarpGrad): numpy arrays per maze and a Python loop over
  the batch for the moves, the rewards, the teleports and the observations.

Every row reports env-steps/s (one env-step = one maze advanced by one step) and its ratio to the
loop baseline at the same N. Actions are drawn up front, so action sampling is not timed. CPU
rows are timed by the process's CPU time (robust on a shared machine; ``--wall-clock`` to use
wall time), rounds interleave the rows, and each row keeps its best round.

    python scripts/bench_env.py                          # 3 rounds of 0.5 s per row
    python scripts/bench_env.py --seconds 0.1 --rounds 1  # a quick check

The figures, with the command and machine that gave them, are in docs/envs.md ("Speed").
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # one CPU thread, set before numpy/torch load

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# gymnasium, torch and the mazes (envs) are imported where they are used, after the arguments
# are parsed, so that --help answers at once.


class LoopMazes:
    """Baseline: ``n`` grid mazes stepped with Python loops over the batch (numpy per maze).

    Written the way the original experiment code stepped its batch of mazes (one array of wall
    flags, per-maze row/column arrays, a ``for`` loop over the batch at every step), but with
    the rules of this project (teleports never land in a wall or on the goal).
    """

    def __init__(self, n: int, size: int = 13, episode_length: int = 200, seed: int = 0) -> None:
        from envs.maze import grid_walls

        self.n, self.size, self.episode_length = n, size, episode_length
        self.lab = grid_walls(size).astype(np.int64)  # 1 = wall
        self.rfsize = 3
        self.rew = 10.0
        self.rng = np.random.default_rng(seed)
        self.posr = np.zeros(n, dtype=np.int64)
        self.posc = np.zeros(n, dtype=np.int64)
        self.rposr = np.zeros(n, dtype=np.int64)
        self.rposc = np.zeros(n, dtype=np.int64)
        self.t = 0

    def _random_free_cell(self, not_r: int, not_c: int) -> tuple[int, int]:
        while True:  # rejection sampling, as the original did
            r = self.rng.integers(1, self.size - 1)
            c = self.rng.integers(1, self.size - 1)
            if self.lab[r, c] == 0 and not (r == not_r and c == not_c):
                return r, c

    def reset(self) -> np.ndarray:
        centre = self.size // 2
        for nb in range(self.n):
            self.rposr[nb], self.rposc[nb] = self._random_free_cell(centre, centre)
            self.posr[nb], self.posc[nb] = centre, centre
        self.t = 0
        return self._inputs(np.zeros(self.n), np.zeros(self.n, dtype=np.int64))

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        lab, reward = self.lab, np.zeros(self.n)
        for nb in range(self.n):
            r, c, a = self.posr[nb], self.posc[nb], actions[nb]
            if a == 0:
                if lab[r - 1][c] == 0:
                    r -= 1
            elif a == 1:
                if lab[r + 1][c] == 0:
                    r += 1
            elif a == 2:
                if lab[r][c - 1] == 0:
                    c -= 1
            elif a == 3:
                if lab[r][c + 1] == 0:
                    c += 1
            if r == self.rposr[nb] and c == self.rposc[nb]:
                reward[nb] += self.rew
                r, c = self._random_free_cell(r, c)
            self.posr[nb], self.posc[nb] = r, c
        self.t += 1
        return self._inputs(reward, actions), reward, self.t >= self.episode_length

    def _inputs(self, reward: np.ndarray, actions: np.ndarray) -> np.ndarray:
        rf, half = self.rfsize, self.rfsize // 2
        inputs = np.zeros((self.n, rf * rf + 8), dtype=np.float32)
        for nb in range(self.n):
            r, c = self.posr[nb], self.posc[nb]
            inputs[nb, 0:rf * rf] = self.lab[r - half:r + half + 1, c - half:c + half + 1].flatten()
            inputs[nb, rf * rf + 1] = 1.0  # bias
            inputs[nb, rf * rf + 2] = self.t / self.episode_length
            inputs[nb, rf * rf + 3] = reward[nb]
            inputs[nb, rf * rf + 4 + actions[nb]] = 1.0
        return inputs


def timed(step: Callable[[int], None], n: int, seconds: float, cpu_clock: bool) -> float:
    """Call ``step(i)`` for i = 0, 1, ... for about ``seconds``; return env-steps/s (n per call).

    With ``cpu_clock`` the time is this process's CPU time (``time.process_time``), so that
    other jobs on a shared machine do not count against the row; otherwise wall time. The
    clock is read after chunks of calls that grow to about 5 ms, to keep its cost out.
    """
    clock = time.process_time if cpu_clock else time.perf_counter
    calls, chunk, start = 0, 1, clock()
    while True:
        chunk_start = clock()
        for _ in range(chunk):
            step(calls)
            calls += 1
        now = clock()
        if now - start >= seconds:
            return calls * n / (now - start)
        if now - chunk_start < 0.005:
            chunk *= 2


Step = Callable[[int], None]


def make_single(actions: np.ndarray) -> Step:
    import gymnasium

    import envs  # noqa: F401  (registers WarpMaze-v0)

    env = gymnasium.make("WarpMaze-v0")
    env.reset(seed=0)
    acts = [int(a) for a in actions[:, 0]]

    def step(i: int) -> None:
        _, _, terminated, truncated, _ = env.step(acts[i % len(acts)])
        if terminated or truncated:
            env.reset()

    return step


def make_sync(n: int, actions: np.ndarray) -> Step:
    import gymnasium

    import envs  # noqa: F401  (registers WarpMaze-v0)

    vec = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("WarpMaze-v0")] * n)
    vec.reset(seed=0)
    return lambda i: vec.step(actions[i % len(actions), :n])


def make_vector(n: int, actions: np.ndarray) -> Step:
    import gymnasium

    import envs  # noqa: F401  (registers WarpMaze-v0)

    vec = gymnasium.make_vec("WarpMaze-v0", num_envs=n)
    vec.reset(seed=0)
    return lambda i: vec.step(actions[i % len(actions), :n])


def make_torch(n: int, actions: np.ndarray, device: str) -> Step:
    import torch

    import envs

    batch = envs.TorchMazeBatch(n, device=device, validate_actions=False)
    batch.reset(seed=0)
    acts = torch.as_tensor(actions[:, :n], device=device)

    def step(i: int) -> None:
        if batch.step(acts[i % len(acts)])[2]:
            batch.reset()
        if device != "cpu" and i % 64 == 63:
            torch.cuda.synchronize()  # keep the launch queue honest

    return step


def make_loop(n: int, actions: np.ndarray) -> Step:
    mazes = LoopMazes(n)
    mazes.reset()

    def step(i: int) -> None:
        if mazes.step(actions[i % len(actions), :n])[2]:
            mazes.reset()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per row and round (s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each row keeps its best")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 30, 256, 4096],
        help="batch sizes N for the vector env, the torch batch and the loop baseline",
    )
    parser.add_argument("--sync-sizes", type=int, nargs="+", default=[30],
                        help="N for SyncVectorEnv")
    parser.add_argument("--wall-clock", action="store_true",
                        help="time CPU rows by wall clock instead of process CPU time")
    parser.add_argument("--no-torch", action="store_true", help="skip TorchMazeBatch")
    parser.add_argument("--torch-devices", nargs="+", default=["cpu"],
                        help="devices for TorchMazeBatch rows, e.g. cpu cuda")
    args = parser.parse_args(argv)
    import gymnasium
    import torch

    if args.seconds <= 0 or args.rounds < 1 or min(args.sizes + args.sync_sizes) < 1:
        parser.error("--seconds must be > 0, --rounds >= 1 and every size >= 1")
    torch.set_num_threads(1)

    max_n = max(args.sizes + args.sync_sizes)
    actions = np.random.default_rng(0).integers(0, 4, size=(512, max_n))
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}, gymnasium {gymnasium.__version__}, torch {torch.__version__},"
          f" 1 thread, best of {args.rounds} rounds of {args.seconds:g} s per row, "
          f"{'wall' if args.wall_clock else 'process CPU'} time (CUDA rows: wall time)")

    loop_sizes = sorted({1, *args.sizes, *args.sync_sizes})
    benches: list[tuple[str, int, Step]] = [("single (gymnasium.make)", 1, make_single(actions))]
    benches += [("SyncVectorEnv", n, make_sync(n, actions)) for n in args.sync_sizes]
    benches += [("WarpMazeVectorEnv", n, make_vector(n, actions)) for n in args.sizes]
    if not args.no_torch:
        benches += [(f"TorchMazeBatch ({dev})", n, make_torch(n, actions, dev))
                    for dev in args.torch_devices for n in args.sizes]
    benches += [("loop baseline", n, make_loop(n, actions)) for n in loop_sizes]

    # rounds interleave every row, and each row keeps its best round: on a busy machine this
    # compares the implementations under similar load
    best = [0.0] * len(benches)
    for _ in range(args.rounds):
        for k, (name, n, step) in enumerate(benches):
            on_gpu = "cuda" in name
            rate = timed(step, n, args.seconds, cpu_clock=not on_gpu and not args.wall_clock)
            if on_gpu:
                torch.cuda.synchronize()
            best[k] = max(best[k], rate)
    loop = {n: rate for (name, n, _), rate in zip(benches, best, strict=True)
            if name == "loop baseline"}

    print(f"| {'implementation':<24} | {'N':>5} | {'env-steps/s':>12} | {'x loop baseline':>15} |")
    print(f"|{'-' * 26}|{'-' * 6}:|{'-' * 13}:|{'-' * 16}:|")
    for (name, n, _), rate in zip(benches, best, strict=True):
        print(f"| {name:<24} | {n:>5} | {rate:>12,.0f} | {rate / loop[n]:>15.1f} |")


if __name__ == "__main__":
    main()
