"""Agent-steps per second of Warp-RNN maze training: this package's trainer vs the original style.

The *baseline* is written here the way the original maze script worked (Miconi et al.'s maze
code, which WarpGrad's maze script follows): a Python loop over the mazes of the batch to build
each observation and to move each agent, a fresh numpy array copied into a torch tensor every
step, a ``torch.distributions.Categorical`` built every step, and the returns and loss
accumulated in a Python loop over time. The original's defects are fixed in the baseline too
(per-maze value baseline, aligned rewards, no teleport into pillars, clipping applied), so both
sides run the same model, the same loss and the same optimiser schedule; only the mechanics
differ.

The *fast* side is :meth:`agents.trainer.Trainer.train_episode` itself (numpy vector env,
Gumbel-max sampling, vectorised loss).

One agent-step = one maze advanced by one step, including the loss, backward and optimiser
steps of the episode. Run on one CPU thread by default::

    python scripts/bench_train_maze.py                      # batch 30 and 1024
    python scripts/bench_train_maze.py --batch-sizes 30 --episodes 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.trainer import TrainConfig, Trainer
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
    b, steps = mazes.batch_size, cfg.episode_length
    mazes.reset()
    state = agent.initial_state(b)
    loss = torch.zeros(())
    logprobs, rewards, values = [], [], []
    for numstep in range(steps):
        inputs = torch.from_numpy(mazes.observation(numstep))
        logits, value, state = agent(inputs, state)
        probs = torch.softmax(logits, dim=1)
        distrib = torch.distributions.Categorical(probs)
        actions = distrib.sample()
        logprobs.append(distrib.log_prob(actions))
        rewards.append(mazes.step(actions.data.cpu().numpy()))
        values.append(value)
        loss = loss + cfg.penalty_coef * probs.pow(2).sum() / b
    returns = torch.zeros(b)
    lossv = torch.zeros(())
    for t in reversed(range(steps)):
        returns = cfg.gamma * returns + torch.from_numpy(rewards[t])
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


def time_original(cfg: TrainConfig, warmup: int, episodes: int) -> float:
    """Seconds per training episode of the original style."""
    torch.manual_seed(cfg.seed)
    agent = WarpRNNAgent(17, 4, cfg.hidden_size)
    warp_params = [p for m in agent.warp_modules() for p in m.parameters()]
    fast_params = [p for m in agent.adapt_modules() for p in m.parameters()]
    fast_opt = torch.optim.Adam(fast_params, lr=cfg.lr)
    warp_opt = torch.optim.Adam(warp_params, lr=cfg.warp_lr)
    warp_sum = [torch.zeros_like(p) for p in warp_params]
    mazes = OriginalStyleMazes(cfg.batch_size, cfg.maze_size, cfg.episode_length, cfg.seed)
    for e in range(warmup + episodes):
        if e == warmup:
            start = time.perf_counter()
        original_style_episode(agent, mazes, fast_opt, warp_opt, warp_params, warp_sum, e, cfg)
    return (time.perf_counter() - start) / episodes


def time_trainer(cfg: TrainConfig, warmup: int, episodes: int) -> float:
    """Seconds per training episode of :class:`agents.trainer.Trainer`."""
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out)
        for _ in range(warmup):
            trainer.train_episode()
        start = time.perf_counter()
        for _ in range(episodes):
            trainer.train_episode()
        elapsed = time.perf_counter() - start
        trainer.close()
    return elapsed / episodes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[30, 1024])
    parser.add_argument("--episodes", type=int, default=3, help="timed episodes per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed episodes first")
    parser.add_argument("--episode-length", type=int, default=200)
    parser.add_argument("--hidden-size", type=int, default=100)
    parser.add_argument("--maze-size", type=int, default=13)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-original-above", type=int, default=4096,
                        help="skip the (slow) original style for batches above this")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        parser.error("--episodes must be >= 1, --warmup >= 0 and batch sizes >= 1")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), maze {args.maze_size}, "
          f"{args.episode_length} steps, hidden {args.hidden_size}, Warp-RNN, "
          f"{args.episodes} timed episode(s) after {args.warmup} untimed")
    print(f"{'batch':>6} {'impl':>10} {'s/episode':>10} {'agent-steps/s':>14} {'speed-up':>9}")
    for batch in args.batch_sizes:
        cfg = TrainConfig(batch_size=batch, hidden_size=args.hidden_size,
                          maze_size=args.maze_size, episode_length=args.episode_length,
                          warmup_episodes=0, threads=args.threads, episodes=1)
        steps = batch * args.episode_length
        fast = time_trainer(cfg, args.warmup, args.episodes)
        orig = (time_original(cfg, args.warmup, args.episodes)
                if batch <= args.skip_original_above else float("nan"))
        print(f"{batch:>6} {'original':>10} {orig:>10.3f} {steps / orig:>14.0f} {'1.00x':>9}")
        print(f"{batch:>6} {'trainer':>10} {fast:>10.3f} {steps / fast:>14.0f} "
              f"{orig / fast:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
