"""The maze trainer: A2C on a batch of mazes; fast weights stepped every episode, warp weights
meta-learned by a swappable warp objective.

One *episode* of training is::

    rollout = collect_rollout(agent, env, ...)           # agents/rollout.py: B mazes in lockstep,
                                                         # T steps, Gumbel-max action samples
    loss = a2c_loss(logits, values, actions, rewards)    # agents/a2c.py
    loss.backward(); clip (jointly, or fast and warp separately: --clip)
    fast_step = episode >= warmup_episodes
    objective.record(episode, rollout, fast_step)        # agents/warp_objectives.py
    if fast_step:
        fast_opt.step()                                  # fast weights, every episode
    objective.step(episode)                              # warp weights, when the objective says

The default objective, ``two_timescale``, is the paper's schedule: it sums the warp gradients of
the post-warm-up episodes and steps the warp Adam on the sum every ``meta_interval`` episodes.
``algorithm2`` and ``algorithm2_detached`` meta-learn the warp weights with WarpGrad's
Algorithm 2 on replayed episode pairs; ``algorithm2_interval`` adds Algorithm 2's second-order
term, estimated on replayed pairs, to the schedule's sum (see :mod:`agents.warp_objectives`).

The fast/warp split comes from :func:`warp_rl.partition` over the agent's
``adapt_modules()`` / ``warp_modules()``; agents without warp modules (the baselines) get one
Adam over all their parameters. Fast weights are never reset between episodes: the agent keeps
learning across mazes, and whatever it learns about *this* maze lives in its recurrent state.

The batched environment is ``envs.WarpMazeVectorEnv`` (numpy) on CPU and ``envs.TorchMazeBatch``
on CUDA, so on a GPU nothing crosses to the host during an episode. There is no per-maze Python
loop anywhere on this path.

Reproducibility: every episode's maze layout/goals and action noise come from seeds derived from
``(config.seed, episode)``, so the whole random stream is a function of the episode counter.
A checkpoint (model, both optimisers, the warp gradient sum, every RNG state, the episode counter
and the byte length of the CSV log) lets ``resume`` continue exactly where a straight run would
be; on CPU, 2N episodes straight and N + resume to 2N give identical parameters and log.

The run folder follows :mod:`warp_rl.runs`: the trainer holds the folder's lock while it lives
(until :meth:`Trainer.close`), writes a checkpoint at episode 0 of a new run (so a folder with a
log always has a checkpoint to resume), keeps the previous checkpoint as ``checkpoint.prev.pt``
and falls back to it if the latest is unusable, and loads checkpoints with
``weights_only=True`` only.

Data-parallel training (``torchrun --nproc_per_node=P scripts/train_maze.py``, see
:mod:`warp_rl.distributed`): each of the P ranks steps ``batch_size / P`` mazes (``batch_size``
is the global batch and must be divisible by P) with its own seeds, ``episode_seeds(seed,
episode, rank)``; after ``backward`` the gradients are averaged over the ranks *before*
clipping, so every rank clips, steps and accumulates the same gradient as a single process
would on the concatenated batch (the A2C loss is a mean over mazes), and all ranks keep
identical parameters. The logged loss and reward are global (means over all mazes). Rank 0
alone writes the log and the checkpoint, which holds every rank's RNG states; ``resume`` gives
every rank rank 0's checkpoint and needs the same number of ranks.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

import envs.batch_env
from agents import AGENTS, make_agent
from agents.a2c import GAMMA, PENALTY_COEF, VALUE_COEF, A2CLoss, a2c_loss
from agents.base import RecurrentAgent
from agents.rollout import Rollout, collect_rollout, episode_seeds
from agents.warp_objectives import (
    WARP_OBJECTIVES,
    WarpContext,
    WarpObjective,
    make_warp_objective,
)
from envs.batch_env import BatchEnv
from envs.maze import NUM_ACTIONS
from warp_rl import Partition, distributed, partition, runs
from warp_rl.runs import CHECKPOINT_NAME, LOG_NAME
from warp_rl.utils import (
    atomic_write_bytes,
    global_rng_states,
    seed_everything,
    set_global_rng_states,
)

CURVE_NAME = "learning_curve.png"
CHECKPOINT_FORMAT = 1
CLIP_MODES = ("joint", "separate")
MAX_LR = 1e6
"""Largest accepted learning rate: far above any useful one, and far below the ``1e37`` at which
Adam's first step (``10 * lr``) overflows float32 inside the optimiser."""


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are the paper's settings.

    Attributes:
        agent: name in :data:`agents.AGENTS` (``warp`` and its variants, ``rnn``, ``lstm``,
            ``backpropamine``).
        seed: seeds the initial weights, every maze and every action sample.
        episodes: total number of training episodes (one episode = ``batch_size`` mazes).
        batch_size: mazes per episode, run in lockstep.
        hidden_size: recurrent width.
        lr: Adam learning rate of the fast weights (all weights for baselines).
        warp_lr: Adam learning rate of the warp weights.
        meta_interval: warp step every this many (post-warmup) episodes.
        warp_objective: how the warp weights are meta-learned, a name in
            :data:`agents.warp_objectives.WARP_OBJECTIVES` (``two_timescale``, the paper's;
            ``algorithm2``; ``algorithm2_detached``; ``algorithm2_interval``). Ignored by
            agents without warp weights.
        warp_pairs: episode pairs replayed per warp step by the ``algorithm2`` objectives.
        warmup_episodes: no optimiser step at all during the first this many episodes.
        maze_size: odd side length of the square maze (13 in the paper).
        episode_length: steps per episode (200).
        gamma, value_coef, penalty_coef: the A2C loss (see :mod:`agents.a2c`).
        max_grad_norm: the episode gradient is clipped to this L2 norm (see ``clip``).
        clip: ``joint`` (the fast and warp gradients together, as one vector: a large fast
            gradient also shrinks that episode's warp contribution) or ``separate`` (the fast
            and the warp gradients each to ``max_grad_norm`` on their own). Agents without
            warp weights clip all their weights together either way.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        env_backend: ``auto`` (numpy on CPU, torch on CUDA), ``numpy`` or ``torch``.
        checkpoint_every: write the checkpoint every this many episodes (and at the end).
        threads: torch CPU threads (1 by default: the paper's matrices are small; run one seed
            per core instead).
    """

    agent: str = "warp"
    seed: int = 0
    episodes: int = 10_000
    batch_size: int = 30
    hidden_size: int = 100
    lr: float = 1e-3
    warp_lr: float = 1e-3
    meta_interval: int = 30
    warp_objective: str = "two_timescale"
    warp_pairs: int = 2
    warmup_episodes: int = 100
    maze_size: int = 13
    episode_length: int = 200
    gamma: float = GAMMA
    value_coef: float = VALUE_COEF
    penalty_coef: float = PENALTY_COEF
    max_grad_norm: float = 4.0
    clip: str = "joint"
    device: str = "cpu"
    env_backend: str = "auto"
    checkpoint_every: int = 500
    threads: int = 1

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what is accepted."""

        def bad(name: str, accepted: str) -> ValueError:
            return ValueError(f"{name} must be {accepted}; got {getattr(self, name)!r}")

        if self.agent not in AGENTS:
            raise bad("agent", f"one of {', '.join(sorted(AGENTS))}")
        for name, low in (("episodes", 1), ("batch_size", 1), ("hidden_size", 1),
                          ("meta_interval", 1), ("warmup_episodes", 0), ("episode_length", 1),
                          ("warp_pairs", 1),
                          ("checkpoint_every", 1), ("threads", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise bad(name, f"an integer >= {low}")
        if (not isinstance(self.maze_size, int) or self.maze_size < 5
                or self.maze_size % 2 == 0):
            raise bad("maze_size", "an odd integer >= 5")
        for name in ("lr", "warp_lr"):  # Adam's first step is 10 * lr: keep it a float32
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not (
                    0 < value <= MAX_LR):
                raise bad(name, f"a number in (0, {MAX_LR:g}]")
        for name in ("max_grad_norm",):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise bad(name, "a finite number > 0")
        for name in ("value_coef", "penalty_coef"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise bad(name, "a finite number >= 0")
        if not isinstance(self.gamma, int | float) or not 0.0 <= self.gamma <= 1.0:
            raise bad("gamma", "a number in [0, 1]")
        if self.warp_objective not in WARP_OBJECTIVES:
            raise bad("warp_objective", f"one of {', '.join(WARP_OBJECTIVES)}")
        if self.clip not in CLIP_MODES:
            raise bad("clip", f"one of {', '.join(CLIP_MODES)}")
        if self.env_backend not in ("auto", "numpy", "torch"):
            raise bad("env_backend", "one of auto, numpy, torch")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise bad("device", "cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise bad("device", "cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available here; "
                             "use --device cpu")
        if device.type == "cuda" and self.env_backend == "numpy":
            raise bad("env_backend", "auto or torch on a CUDA device (numpy would copy per step)")


# ------------------------------------------------------------------------------------------------
# The batched maze (envs/batch_env.py) for a config
# ------------------------------------------------------------------------------------------------
def make_batch_env(config: TrainConfig, num_envs: int | None = None,
                   device: torch.device | None = None) -> BatchEnv:
    """The batched maze for ``config`` (see :attr:`TrainConfig.env_backend`): ``num_envs``
    mazes (default ``config.batch_size``) on ``device`` (default ``config.device``)."""
    device = torch.device(config.device) if device is None else device
    num_envs = config.batch_size if num_envs is None else num_envs
    return envs.batch_env.make_batch_env(num_envs, config.maze_size, config.episode_length,
                                         device, config.env_backend)


# ------------------------------------------------------------------------------------------------
# Optimisers
# ------------------------------------------------------------------------------------------------
def make_optimizers(agent: RecurrentAgent, lr: float, warp_lr: float
                    ) -> tuple[Partition, torch.optim.Adam, torch.optim.Adam | None]:
    """The fast/warp split and its two Adams.

    Returns:
        ``(partition, fast_opt, warp_opt)``; ``warp_opt`` is ``None`` for agents without warp
        modules, whose ``fast_opt`` then holds every parameter.
    """
    warp_modules = agent.warp_modules()
    if warp_modules:
        part = partition(agent, adapt=agent.adapt_modules(), warp=warp_modules)
    else:
        part = partition(agent, adapt=lambda _name: True, warp=[])
    fast_opt = torch.optim.Adam(part.adapt_parameters(), lr=lr)
    warp_params = part.warp_parameters()
    warp_opt = torch.optim.Adam(warp_params, lr=warp_lr) if warp_params else None
    return part, fast_opt, warp_opt


# ------------------------------------------------------------------------------------------------
# CSV log
# ------------------------------------------------------------------------------------------------
LOG_FIELDS = (
    "episode",  # 0-based index of the episode
    "reward_mean",  # total reward of the episode, mean over the B mazes
    "reward_std",  # ... and its standard deviation over the mazes
    "loss", "policy_loss", "value_loss", "penalty",  # the A2C loss and its parts
    "grad_norm",  # L2 norm of the episode gradient before clipping
    "fast_step",  # 1 if the fast optimiser stepped after this episode
    "warp_step",  # 1 if the warp optimiser stepped after this episode
    "rollout_s", "update_s",  # seconds spent acting / in loss + backward + steps
    "wall_s",  # training wall-clock since the run began (continues across resumes)
)
TIMING_FIELDS = ("rollout_s", "update_s", "wall_s")


class CSVLog(runs.CsvLog):
    """The maze trainer's log: :class:`warp_rl.runs.CsvLog` with :data:`LOG_FIELDS`, one row per
    episode. Rows past the checkpoint's byte length (or a torn last line from a crash) are
    dropped on resume and re-written by the resumed run."""

    def __init__(self, path: Path, resume_bytes: int | None = None) -> None:
        super().__init__(path, LOG_FIELDS, resume_bytes)


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """The CSV log as ``{column: float64 array}`` (a torn last line, left by a crash, is
    skipped)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if all(r.get(k) for k in LOG_FIELDS)]
    return {k: np.array([float(r[k]) for r in rows]) for k in LOG_FIELDS}


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------
class EpisodeNumbers(NamedTuple):
    """What one episode leaves for its log row: the rollout and the (host) numbers."""

    rollout: Rollout
    total: float  # the A2C loss and its parts
    policy: float
    value: float
    penalty: float
    grad_norm: float  # L2 norm of the gradient before clipping
    reward_mean: float  # episode reward, mean and population std over the mazes
    reward_std: float


class NonFiniteLossError(runs.NonFiniteError):
    """The loss or the gradient became NaN/inf; no optimiser step was taken."""


class Trainer:
    """Trains a :class:`~agents.base.RecurrentAgent` on the maze (see the module docstring).

    Args:
        config: the run's settings (validated here).
        out_dir: folder for ``log.csv``, ``checkpoint.pt`` and ``learning_curve.png``.
        agent: an agent instance to train instead of ``make_agent(config.agent, ...)`` (tests).
        _resume: internal; use :meth:`resume`.
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path,
                 agent: RecurrentAgent | None = None, _resume: dict | None = None) -> None:
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        # Under torchrun: this rank's share of the mazes and its GPU (see warp_rl.distributed).
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.local_batch_size = distributed.even_share(config.batch_size, "batch_size")
        self.device = distributed.local_device(config.device)
        torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.env = make_batch_env(config, self.local_batch_size, self.device)
        if agent is None:
            agent = make_agent(config.agent, obs_dim=self.env.obs_dim, num_actions=NUM_ACTIONS,
                               hidden_size=config.hidden_size)
        if agent.obs_dim != self.env.obs_dim:
            raise ValueError(f"agent.obs_dim={agent.obs_dim} but the maze gives "
                             f"observations of length {self.env.obs_dim}")
        self.agent = agent.to(self.device)
        distributed.broadcast_module_(self.agent)  # same start on every rank
        self.partition, self.fast_opt, self.warp_opt = make_optimizers(
            self.agent, config.lr, config.warp_lr)
        self.params = [p for p in self.agent.parameters() if p.requires_grad]
        self.warp_params = self.partition.warp_parameters()
        self.fast_params = self.partition.adapt_parameters()
        # How the warp weights learn (None for agents without warp weights).
        self.objective: WarpObjective | None = None
        if self.warp_opt is not None:
            self.objective = make_warp_objective(config.warp_objective, WarpContext(
                agent=self.agent, fast_params=self.fast_params, warp_params=self.warp_params,
                fast_opt=self.fast_opt, warp_opt=self.warp_opt,
                meta_interval=config.meta_interval, warmup_episodes=config.warmup_episodes,
                max_grad_norm=config.max_grad_norm, gamma=config.gamma,
                value_coef=config.value_coef, penalty_coef=config.penalty_coef,
                warp_pairs=config.warp_pairs, seed=config.seed))
        self.generator = torch.Generator(device=self.device)
        self.episode = 0
        self.wall_s = 0.0
        self.recent_rewards: deque[float] = deque(maxlen=100)
        if _resume is not None:
            self._load_state(_resume)
        self.log: CSVLog | runs.NoLog = runs.NoLog()
        self.last_checkpoint_episode = self.episode if _resume is not None else -1
        # The run folder's lock, held by rank 0 until close() (re-entrant within the process).
        self._lock = runs.acquire_lock(self.out_dir) if distributed.is_main() else None
        try:
            if distributed.is_main():
                self.log = CSVLog(self.out_dir / LOG_NAME,
                                  resume_bytes=None if _resume is None else _resume["log_bytes"])
            if _resume is None:  # a folder with a log always has a checkpoint to resume
                self.save_checkpoint()
        except BaseException:
            self.close()
            raise

    # --------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def is_warmup(self, episode: int) -> bool:
        """No optimiser steps during the first ``warmup_episodes`` episodes."""
        return episode < self.config.warmup_episodes

    def is_warp_step(self, episode: int) -> bool:
        """True if the warp optimiser steps after ``episode`` (0-based)."""
        return self.objective is not None and self.objective.is_warp_step(episode)

    def train_episode(self) -> dict[str, Any]:
        """Collect one batch of episodes, compute the loss and take the scheduled steps.

        Returns the episode's log row. Raises :class:`NonFiniteLossError` (before any step) if
        the loss or the gradient is not finite.
        """
        start = time.perf_counter()
        rollout = self.collect_rollout()
        rollout_done = time.perf_counter()
        loss = self.loss(rollout)
        for p in self.params:
            p.grad = None
        loss.total.backward()
        numbers = self.clip_and_check(rollout, loss)
        return self.take_steps(numbers, start, rollout_done)

    def begin_episode(self) -> int:
        """Seed this episode's action noise (``self.generator``); returns its maze seed."""
        env_seed, sample_seed = episode_seeds(self.config.seed, self.episode, self.rank)
        self.generator.manual_seed(sample_seed)
        return env_seed

    def collect_rollout(self) -> Rollout:
        """Play this episode's mazes with the current weights (:func:`agents.rollout.
        collect_rollout`)."""
        env_seed = self.begin_episode()
        return collect_rollout(self.agent, self.env, self.config.episode_length, env_seed,
                               self.generator)

    def loss(self, rollout: Rollout) -> A2CLoss:
        """The A2C loss of ``rollout`` with this run's coefficients."""
        cfg = self.config
        return a2c_loss(rollout.logits, rollout.values, rollout.actions, rollout.rewards,
                        cfg.gamma, cfg.value_coef, cfg.penalty_coef)

    def clip_and_check(self, rollout: Rollout, loss: A2CLoss) -> EpisodeNumbers:
        """With the episode's gradient in the parameters' ``.grad``: average it over ranks,
        clip it (``config.clip``) and return the numbers for the log. Raises
        :class:`NonFiniteLossError` if the loss or the gradient is not finite (no step has been
        taken)."""
        cfg, episode = self.config, self.episode
        if self.world_size > 1:  # the mean of the ranks' mean-loss gradients, before clipping
            distributed.average_gradients_(self.params)
        if cfg.clip == "separate" and self.warp_params:
            fast_norm = nn.utils.clip_grad_norm_(self.fast_params, cfg.max_grad_norm)
            warp_norm = nn.utils.clip_grad_norm_(self.warp_params, cfg.max_grad_norm)
            grad_norm = torch.hypot(fast_norm, warp_norm)  # the joint norm, before clipping
        else:
            grad_norm = nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        # One host sync per episode: the numbers for the log and the finiteness check.
        episode_reward = rollout.rewards.sum(0)
        if self.world_size > 1:
            numbers = self._global_numbers(loss, grad_norm, episode_reward)
        else:
            numbers = torch.stack([loss.total.detach(), loss.policy.detach(),
                                   loss.value.detach(), loss.penalty.detach(), grad_norm.detach(),
                                   episode_reward.mean(), episode_reward.std(correction=0)]
                                  ).tolist()
        total, policy, value, penalty, norm, reward_mean, reward_std = numbers
        if not (math.isfinite(total) and math.isfinite(norm)):
            raise NonFiniteLossError(
                f"non-finite loss at episode {episode}: loss={total}, policy={policy}, "
                f"value={value}, penalty={penalty}, grad_norm={norm}")
        return EpisodeNumbers(rollout, total, policy, value, penalty, norm, reward_mean,
                              reward_std)

    def take_steps(self, numbers: EpisodeNumbers, start: float, rollout_done: float
                   ) -> dict[str, Any]:
        """Take the episode's scheduled steps (fast every post-warm-up episode, warp when the
        objective says) with the clipped gradient in ``.grad``, clear the gradients, advance the
        episode counter and return the log row (``start`` and ``rollout_done`` are
        ``time.perf_counter()`` readings of when the episode and its rollout began and ended)."""
        episode = self.episode
        fast_step = not self.is_warmup(episode)
        if self.objective is not None:
            self.objective.record(episode, numbers.rollout, fast_step)
        if fast_step:
            self.fast_opt.step()
        warp_step = self.objective is not None and self.objective.step(episode)
        for p in self.params:
            p.grad = None
        end = time.perf_counter()

        self.episode += 1
        self.wall_s += end - start
        self.recent_rewards.append(numbers.reward_mean)
        return {
            "episode": episode, "reward_mean": numbers.reward_mean,
            "reward_std": numbers.reward_std, "loss": numbers.total,
            "policy_loss": numbers.policy, "value_loss": numbers.value,
            "penalty": numbers.penalty, "grad_norm": numbers.grad_norm,
            "fast_step": int(fast_step), "warp_step": int(warp_step),
            "rollout_s": rollout_done - start, "update_s": end - rollout_done,
            "wall_s": self.wall_s,
        }

    def _global_numbers(self, loss: A2CLoss, grad_norm: torch.Tensor,
                        episode_reward: torch.Tensor) -> list[float]:
        """The log's numbers over all ranks' mazes: the loss parts averaged over ranks (equal
        shares: the mean over all mazes), the reward's mean and population std over all mazes;
        ``grad_norm`` is already global (taken after the gradient average)."""
        local = torch.stack([loss.total.detach(), loss.policy.detach(), loss.value.detach(),
                             loss.penalty.detach()]).double()
        reward = episode_reward.double()
        stats = torch.cat([local, torch.stack([reward.sum(), reward.pow(2).sum()])])
        total = distributed.all_reduce_sum(stats, "all_reduce of the episode's log numbers")
        parts = (total[:4] / self.world_size).tolist()
        count = self.config.batch_size
        mean = float(total[4]) / count
        std = math.sqrt(max(float(total[5]) / count - mean * mean, 0.0))
        return [*parts[:4], float(grad_norm), mean, std]

    def train(self, until_episode: int | None = None, progress: bool = True) -> None:
        """Train until ``until_episode`` episodes are done (default ``config.episodes``).

        Writes a log row per episode and the checkpoint every ``checkpoint_every`` episodes and
        at the end. On a non-finite loss, writes the checkpoint of the state before the failing
        episode (parameters are still finite: no step was taken) and re-raises.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        until = cfg.episodes if until_episode is None else until_episode
        bar = tqdm(total=until, initial=self.episode, unit="ep",
                   disable=not (progress and distributed.is_main()),
                   dynamic_ncols=True, desc=f"{cfg.agent} seed {cfg.seed}")
        try:
            while self.episode < until:
                try:
                    row = self.train_episode()
                except NonFiniteLossError as err:
                    where = self._save_after_failure()
                    raise NonFiniteLossError(f"{err}. Training stopped; {where}") from None
                self.log.append(row)
                bar.update(1)
                bar.set_postfix(reward=f"{np.mean(self.recent_rewards):.1f}",
                                s_per_ep=f"{row['rollout_s'] + row['update_s']:.3f}",
                                refresh=False)
                if self.episode % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.last_checkpoint_episode != self.episode:
                self.save_checkpoint()
        finally:
            bar.close()

    # --------------------------------------------------------------------------------------------
    # Checkpoints
    # --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :meth:`resume`)."""
        rng = {**global_rng_states(), "generator": self.generator.get_state()}
        return {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.config),
            "agent_class": f"{type(self.agent).__module__}:{type(self.agent).__qualname__}",
            "episode": self.episode,
            "agent": self.agent.state_dict(),
            "fast_opt": self.fast_opt.state_dict(),
            "warp_opt": None if self.warp_opt is None else self.warp_opt.state_dict(),
            "warp_objective": None if self.objective is None else self.objective.state_dict(),
            "rng": rng,
            "log_bytes": self.log.sync(),
            "wall_s": self.wall_s,
            "recent_rewards": list(self.recent_rewards),
            **self._distributed_state(rng),
        }

    def _distributed_state(self, rng: dict[str, Any]) -> dict[str, Any]:
        """Under torchrun: the number of ranks and every rank's RNG states (gathered; a
        collective, so every rank calls it); nothing for a single process."""
        if self.world_size == 1:
            return {}
        return {"world_size": self.world_size,
                "rank_rng": distributed.all_gather_object(rng, "all_gather of RNG states")}

    def save_checkpoint(self) -> Path:
        """Write ``out_dir/checkpoint.pt`` atomically, the one it replaces becoming
        ``checkpoint.prev.pt`` (:func:`warp_rl.runs.save_checkpoint`). Under torchrun every rank
        calls it (the RNG states are gathered) and rank 0 writes."""
        state = self.state_dict()
        if distributed.is_main():
            runs.save_checkpoint(state, self.checkpoint_path)
        self.last_checkpoint_episode = self.episode
        return self.checkpoint_path

    def _save_after_failure(self) -> str:
        for p in self.params:
            p.grad = None
        if all(bool(torch.isfinite(p).all()) for p in self.agent.parameters()):
            self.save_checkpoint()
            return (f"the checkpoint {self.checkpoint_path} holds the (finite) state before "
                    f"episode {self.episode}")
        if self.last_checkpoint_episode >= 0:
            return (f"the parameters are not finite, so the last checkpoint "
                    f"{self.checkpoint_path} (episode {self.last_checkpoint_episode}) is kept")
        return "the parameters are not finite and no checkpoint had been written"

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        distributed.check_resume_world_size(int(ckpt.get("world_size", 1)), "batch split")
        self.agent.load_state_dict(ckpt["agent"])
        self.fast_opt.load_state_dict(ckpt["fast_opt"])
        if (ckpt["warp_opt"] is None) != (self.warp_opt is None):
            raise ValueError("checkpoint and agent disagree on whether there are warp weights")
        if self.warp_opt is not None:
            self.warp_opt.load_state_dict(ckpt["warp_opt"])
        if self.objective is not None:
            # (checkpoints written before objectives existed hold the sum at the top level)
            state = ckpt.get("warp_objective") or {"warp_grad_sum": ckpt["warp_grad_sum"]}
            self.objective.load_state_dict(state)
        rng = ckpt["rng"] if self.world_size == 1 else ckpt["rank_rng"][self.rank]
        set_global_rng_states(rng)
        self.generator.set_state(rng["generator"])
        self.episode = int(ckpt["episode"])
        self.wall_s = float(ckpt["wall_s"])
        self.recent_rewards.extend(ckpt["recent_rewards"])

    RESUME_OVERRIDABLE = ("episodes", "checkpoint_every", "threads", "device")

    @classmethod
    def resume(cls, out_dir: str | Path, overrides: dict[str, Any] | None = None,
               agent: RecurrentAgent | None = None) -> Trainer:
        """Continue the run in ``out_dir`` from its checkpoint.

        The resume policy is :func:`warp_rl.runs.check_resume`'s: fields in
        :attr:`RESUME_OVERRIDABLE` may change, every other must equal the checkpoint's, and
        ``episodes`` may not be less than the episodes already done.

        Args:
            out_dir: the run's folder (holding ``checkpoint.pt`` and ``log.csv``).
            overrides: new values for :attr:`RESUME_OVERRIDABLE` fields (e.g. more episodes).
            agent: a fresh agent instance if the run was started with one.

        Raises:
            FileNotFoundError: no checkpoint (:class:`warp_rl.runs.NoCheckpointError`).
            ValueError: a :class:`warp_rl.runs.RunError` naming what is wrong (changed settings,
                fewer episodes than done, no usable checkpoint, a missing or shortened log).
        """
        out_dir = Path(out_dir)
        # The lock first: nobody may write the checkpoint while it is read.
        lock = runs.acquire_lock(out_dir) if distributed.is_main() else None
        try:
            # Under torchrun rank 0 reads the file and every rank gets its content.
            ckpt = distributed.run_on_rank0(load_checkpoint, out_dir / CHECKPOINT_NAME)
            config = TrainConfig(**ckpt["config"])
            overrides = dict(overrides or {})
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config)})
            if unknown:
                raise ValueError(f"unknown setting {unknown[0]!r}")
            runs.check_resume(dataclasses.asdict(config), overrides, cls.RESUME_OVERRIDABLE,
                              length_key="episodes", done=int(ckpt["episode"]),
                              flag_of=lambda k: k, where=f"the run in {out_dir}")
            config = dataclasses.replace(config, **overrides)
            return cls(config, out_dir, agent=agent, _resume=ckpt)
        finally:
            if lock is not None:
                lock.release()  # the trainer holds its own

    def close(self) -> None:
        """Close the log and release the run folder's lock."""
        self.log.close()
        if self._lock is not None:
            self._lock.release()


def _check_checkpoint(ckpt: Any) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a maze-trainer checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [k for k in ("config", "episode", "agent", "fast_opt", "rng", "log_bytes")
               if k not in ckpt]
    if missing:
        raise ValueError(f"a maze-trainer checkpoint without {', '.join(missing)}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :meth:`Trainer.save_checkpoint`: tensors and plain data
    only (``weights_only=True``), falling back to ``checkpoint.prev.pt`` with a warning if the
    latest is unusable (:func:`warp_rl.runs.load_checkpoint`).

    Raises:
        FileNotFoundError: neither file exists (:class:`warp_rl.runs.NoCheckpointError`).
        ValueError: neither file is a usable maze-trainer checkpoint
            (:class:`warp_rl.runs.CheckpointError`, naming both files).
    """
    ckpt, _ = runs.load_checkpoint(path, _check_checkpoint, map_location)
    return ckpt


def load_agent(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[RecurrentAgent, TrainConfig]:
    """The trained agent (in eval mode) and the run's config, from a checkpoint file."""
    ckpt = load_checkpoint(path, map_location=device)
    import envs

    try:
        config = TrainConfig(**ckpt["config"])
        agent = make_agent(config.agent, obs_dim=envs.obs_dim(), num_actions=NUM_ACTIONS,
                           hidden_size=config.hidden_size)
        agent.load_state_dict(ckpt["agent"])
    except (TypeError, KeyError, RuntimeError) as err:
        raise runs.CheckpointError(
            f"{path}: its config or weights do not fit this project's agents "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); expected "
            "a checkpoint written by scripts/train_maze.py of this version") from None
    return agent.to(device).eval(), config


# ------------------------------------------------------------------------------------------------
# Reference and plot
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def random_play_reward(config: TrainConfig, episodes: int = 4, seed: int = 12345) -> float:
    """Mean episode reward of uniformly random actions on ``config``'s maze (the floor)."""
    env = make_batch_env(dataclasses.replace(config, device="cpu", env_backend="auto"))
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for k in range(episodes):
        env.reset(seed + k)
        for _ in range(config.episode_length):
            actions = torch.randint(NUM_ACTIONS, (env.num_envs,), generator=gen)
            total += float(env.step(actions)[1].sum())
    return total / (episodes * env.num_envs)


def save_learning_curve(log_path: str | Path, png_path: str | Path, title: str = "",
                        random_reward: float | None = None, window: int = 100) -> None:
    """Plot reward per episode (mean over mazes) and its running mean; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = read_log(log_path)
    episodes, reward = log["episode"], log["reward_mean"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(episodes, reward, color="tab:blue", alpha=0.25, lw=0.8, label="per episode")
    if len(reward):
        w = max(1, min(window, len(reward)))
        running = np.convolve(reward, np.ones(w) / w, mode="valid")
        ax.plot(episodes[w - 1:], running, color="tab:blue", lw=2, label=f"mean of last {w}")
    if random_reward is not None:
        ax.axhline(random_reward, color="gray", ls="--", lw=1,
                   label=f"random play ({random_reward:.1f})")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward per episode (mean over mazes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
