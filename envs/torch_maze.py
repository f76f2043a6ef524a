"""``TorchMazeBatch``: the batched maze on torch tensors, for a trainer that lives on the GPU.

The dynamics are those of :class:`envs.vector_env.WarpMazeVectorEnv` (tested equal, step by
step, from the same mazes, goals, positions, actions and uniforms), with every per-step tensor
staying on ``device``: no host round trip per step. The episode clock is a Python int (all mazes
run in lockstep), so ``done`` needs no synchronisation.

Randomness: mazes of the ``"random"`` layout are carved on the host with numpy
(:func:`envs.maze.carve_random_mazes`, once per episode) and copied to the device; goals and
teleports use a ``torch.Generator`` on ``device``. ``reset(seed)`` seeds both, and draws the
whole episode's uniforms at once (one per maze for the first goal, one per maze and step for
the teleports; on the CPU the same numbers, in the same order, as one draw per step).

The state an episode starts from lives in tensors that ``reset`` writes in place, so a CUDA
graph captured over a whole episode (``agents.population``, ``cuda_graph=True``) replays from
the state of each new ``reset``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from envs.maze import (
    NUM_ACTIONS,
    MazeConfig,
    check_walls,
    flatten_mazes,
    make_walls,
    move_table,
)


class TorchMazeBatch:
    """``num_envs`` mazes stepped together on ``device``.

    Args:
        num_envs: batch size ``B`` (>= 1).
        size, episode_length, reward, wall_penalty, view_size, layout: as for
            :class:`envs.maze_env.WarpMazeEnv`.
        device: where every tensor lives.
        validate_actions: check that actions lie in ``[0, 4)`` on the host, with a clear
            ``ValueError`` (on a GPU this synchronises once per step; a trainer that samples
            from a ``Categorical`` may turn it off). Off, the check runs on the device without
            a sync (``torch._assert_async``): an out-of-range action still fails (on a GPU as a
            device-side assert) instead of wrapping around to another action.

    Attributes:
        obs_dim: ``D = view_size**2 + 8`` (17 at the defaults). num_actions: 4.
    """

    def __init__(
        self,
        num_envs: int,
        size: int = 13,
        episode_length: int = 200,
        reward: float = 10.0,
        wall_penalty: float = 0.0,
        view_size: int = 3,
        layout: str = "grid",
        device: torch.device | str = "cpu",
        validate_actions: bool = True,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or (
                num_envs < 1):
            raise ValueError(f"num_envs={num_envs!r} is not accepted: expected an integer >= 1")
        num_envs = int(num_envs)
        self.config = cfg = MazeConfig.create(
            size, episode_length, reward, wall_penalty, view_size, layout
        )
        self.num_envs = B = num_envs
        self.device = dev = torch.device(device)
        self.validate_actions = validate_actions
        self.obs_layout = cfg.obs_layout
        self.obs_dim = self.obs_layout.dim
        self.num_actions = NUM_ACTIONS

        self._pad = p = cfg.pad
        self._width = W = cfg.size + 2 * p
        h = cfg.view_size // 2
        self._offsets = torch.tensor(
            [dr * W + dc for dr in range(-h, h + 1) for dc in range(-h, h + 1)], device=dev
        )
        rows, cols = np.divmod(np.arange(W * W), W)
        self._cell_of = torch.as_tensor(np.stack([rows - p, cols - p], axis=1), device=dev)
        self._eye = torch.eye(NUM_ACTIONS, device=dev)
        self._unused_bias = torch.tensor([[0.0, 1.0]], device=dev).expand(B, 2)
        self._rows = torch.arange(B, device=dev)

        # The episode's state at reset, written in place (a captured CUDA graph of an episode
        # reads these very tensors), and the episode's uniforms, drawn at reset: row 0 places
        # the first goal, row k the teleport of the k-th step after reset.
        self._pos0 = torch.zeros(B, dtype=torch.long, device=dev)
        self._goal0 = torch.zeros(B, dtype=torch.long, device=dev)
        self._goal_rank0 = torch.zeros(B, dtype=torch.long, device=dev)
        self._last_action0 = torch.zeros(B, dtype=torch.long, device=dev)
        self._last_reward0 = torch.zeros(B, device=dev)
        self._uniforms = torch.zeros(cfg.episode_length + 1, B, dtype=torch.float64, device=dev)
        self._draws = 0

        self._np_rngs: list[np.random.Generator] = []
        self._gens: list[torch.Generator] | None = None  # one per group of mazes (reset)
        self._walls_host: np.ndarray | None = None  # (B or 1, S, S) bool, for set_state / walls
        self._walls_are_grid = False
        self._t: int | None = None

    # ----------------------------------------------------------------- API

    @torch.no_grad()
    def reset(self, seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Start a new episode in every maze; returns observations float32 ``(B, D)``.

        ``seed`` (an integer >= 0, any size, as the vector env takes) reseeds the generators;
        ``None`` continues them (seeding from fresh entropy on first use). The torch generator
        takes ``seed`` itself below 2**64 and a 64-bit hash of it above.

        A sequence of ``G`` seeds (``G`` dividing ``B``) makes the batch ``G`` groups of
        ``B / G`` consecutive mazes, group ``k`` with its own generators seeded by
        ``seed[k]``: each group then plays exactly what a batch of ``B / G`` mazes reset with
        ``seed[k]`` plays (a population of runs on one device, ``agents.population``).
        ``None`` afterwards continues every group's generators.
        """
        seeds = self._check_seeds(seed)
        if seeds is not None or self._gens is None:
            if seeds is None:
                seeds = [int(np.random.SeedSequence().generate_state(1, np.uint32)[0])]
            self._np_rngs = [np.random.default_rng(s) for s in seeds]
            self._gens = []
            for s in seeds:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(s if s < 2**64 else int(
                    np.random.SeedSequence(s).generate_state(1, np.uint64)[0]))
                self._gens.append(gen)
        cfg, B = self.config, self.num_envs
        group = B // len(self._gens)
        if cfg.layout == "random":
            self._install_walls(np.concatenate([make_walls(rng, group, cfg)
                                                for rng in self._np_rngs]))
        elif not self._walls_are_grid:
            self._install_walls(make_walls(self._np_rngs[0], 1, cfg))
            self._walls_are_grid = True
        steps = cfg.episode_length + 1
        for k, gen in enumerate(self._gens):
            self._uniforms[:, k * group:(k + 1) * group].copy_(
                self._uniform(steps * group, gen).view(steps, group))
        r, c = cfg.start_cell
        self._draws = 1
        rank = self._pick_rank(self._uniforms[0], self._start_rank)
        self._goal0.copy_(self._free.gather(1, rank[:, None]).squeeze(1))
        self._goal_rank0.copy_(rank)
        self._pos0.copy_(self._base + (r + self._pad) * self._width + (c + self._pad))
        self._last_action0.zero_()
        self._last_reward0.zero_()
        # step() and set_state() rebind these names to new tensors, never write into them.
        self._set_goal(self._goal0, self._goal_rank0)
        self._pos, self._last_action, self._last_reward = (
            self._pos0, self._last_action0, self._last_reward0)
        self._t = 0
        return self._observation()

    @torch.no_grad()
    def observation(self) -> torch.Tensor:
        """The current observations, float32 ``(B, D)``: what the last :meth:`reset` or
        :meth:`step` returned (computed again from the state, as a new tensor)."""
        if self._t is None:
            raise RuntimeError("observation() was called before reset(): call reset() first")
        return self._observation()

    @torch.no_grad()
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Step every maze.

        Args:
            actions: integer tensor ``(B,)`` on ``device``, values in ``{0, 1, 2, 3}``.

        Returns:
            ``(obs, reward, done)``: observations float32 ``(B, D)``, rewards float32 ``(B,)``,
            and ``done``, True on the step that reaches ``episode_length`` (then call
            :meth:`reset`; stepping further raises).
        """
        cfg = self.config
        if self._t is None:
            raise RuntimeError("step() was called before reset(): call reset() first")
        if self._t >= cfg.episode_length:
            raise RuntimeError(
                f"the episode ended at t={self._t} (episode_length={cfg.episode_length}); "
                "call reset() before step()"
            )
        self._check_actions(actions)
        actions = actions.long()
        pos = self._next[self._pos, actions]  # a move into a wall stays in place
        hit = pos == self._goal
        reward = hit.float() * cfg.reward
        if cfg.wall_penalty:
            reward = reward - (pos == self._pos).float() * cfg.wall_penalty
        u = self._uniforms[self._draws]
        self._draws += 1
        rank = self._pick_rank(u, self._goal_rank)
        dest = self._free.gather(1, rank[:, None]).squeeze(1)
        self._pos = torch.where(hit, dest, pos)  # teleport after entering the goal
        self._last_reward = reward
        self._last_action = actions
        self._t += 1
        return self._observation(), reward, self._t >= cfg.episode_length

    @property
    def t(self) -> int | None:
        """Steps taken in the current episode (``None`` before the first reset)."""
        return self._t

    @property
    def agent_cells(self) -> torch.Tensor:
        """``(row, col)`` of every agent, long ``(B, 2)`` on ``device``."""
        return self._cell_of[self._pos - self._base]

    @property
    def goal_cells(self) -> torch.Tensor:
        """``(row, col)`` of every goal, long ``(B, 2)`` on ``device``."""
        return self._cell_of[self._goal - self._base]

    @property
    def walls(self) -> torch.Tensor:
        """Current mazes, bool ``(B, S, S)`` on ``device`` (``True`` = wall)."""
        w = torch.as_tensor(self._walls_host, device=self.device)
        return w.expand(self.num_envs, -1, -1)

    @torch.no_grad()
    def set_state(
        self,
        *,
        walls: np.ndarray | torch.Tensor | None = None,
        agent: np.ndarray | torch.Tensor | None = None,
        goal: np.ndarray | torch.Tensor | None = None,
        t: int | None = None,
    ) -> torch.Tensor:
        """Overwrite parts of the state (after a reset); returns observations ``(B, D)``.

        For tests and analysis (not fast: checks run on the host). ``walls`` bool ``(S, S)`` or
        ``(B, S, S)`` (needs ``agent`` and ``goal`` too); ``agent``, ``goal`` int ``(B, 2)``
        free cells that differ per maze;
        ``t`` in ``[0, episode_length)``. The previous rewards and actions are kept.
        """
        if self._t is None:
            raise RuntimeError("set_state() needs a reset() first")
        cfg, B, p, W = self.config, self.num_envs, self._pad, self._width
        if walls is not None:
            if agent is None or goal is None:
                raise ValueError("set_state(walls=...) also needs agent=... and goal=...")
            w = check_walls(_to_numpy(walls), cfg.size)
            w = w[None] if w.ndim == 2 else w
            if w.shape[0] not in (1, B):
                raise ValueError(f"walls of shape {w.shape} is not accepted: expected B={B} mazes")
            self._install_walls(w)
            self._walls_are_grid = False
        walls_host = np.broadcast_to(self._walls_host, (B, cfg.size, cfg.size))

        def cells(x: np.ndarray | torch.Tensor | None, current: torch.Tensor, name: str):
            if x is None:
                return current
            x = _to_numpy(x)
            if x.shape != (B, 2) or x.dtype.kind not in "iu" or (x < 0).any() or (
                x >= cfg.size
            ).any():
                raise ValueError(f"{name}={x!r} is not accepted: expected int ({B}, 2) cells")
            if walls_host[np.arange(B), x[:, 0], x[:, 1]].any():
                raise ValueError(f"{name}={x.tolist()} is not accepted: expected free cells")
            x = torch.as_tensor(x, device=self.device, dtype=torch.long)
            return self._base + (x[:, 0] + p) * W + (x[:, 1] + p)

        agent_abs = cells(agent, self._pos, "agent")
        goal_abs = cells(goal, self._goal, "goal")
        if bool((agent_abs == goal_abs).any()):
            raise ValueError("agent and goal are not accepted: they must differ in every maze")
        if t is not None and not 0 <= t < cfg.episode_length:
            raise ValueError(f"t={t!r} is not accepted: expected 0 <= t < {cfg.episode_length}")
        self._pos = agent_abs
        rank = self._free_cumsum[self._rows, goal_abs - self._base] - 1
        self._set_goal(goal_abs, rank)
        if t is not None:
            self._t = int(t)
        return self._observation()

    # ----------------------------------------------------------------- internals

    def _install_walls(self, walls: np.ndarray) -> None:
        """Walls ``(1, S, S)`` (shared by the batch) or ``(B, S, S)`` -> flat device tensors."""
        B, W, dev = self.num_envs, self._width, self.device
        shared = walls.shape[0] == 1
        flat = flatten_mazes(walls, self._pad)
        self._walls_host = np.array(walls, dtype=bool)
        self._walls_float = torch.as_tensor(flat.walls.reshape(-1), device=dev).float()
        self._next = torch.as_tensor(move_table(flat.walls.reshape(-1), W), device=dev)
        self._base = (
            torch.zeros(B, dtype=torch.long, device=dev) if shared else self._rows * (W * W)
        )
        free = torch.as_tensor(flat.free, device=dev) + self._base[:, None]
        self._free = free.expand(B, -1) if shared else free
        num_free = torch.as_tensor(flat.num_free, device=dev).expand(B)
        self._num_free_1, self._num_free_2 = num_free - 1, num_free - 2
        self._free_cumsum = torch.as_tensor(flat.free_cumsum, device=dev).expand(B, -1)
        r, c = self.config.start_cell
        start_local = (r + self._pad) * W + (c + self._pad)
        self._start_rank = self._free_cumsum[:, start_local] - 1

    def _uniform(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The only source of randomness besides maze carving: ``n`` float64 uniforms."""
        return torch.rand(n, dtype=torch.float64, generator=generator, device=self.device)

    def _check_seeds(self, seed: int | Sequence[int] | None) -> list[int] | None:
        """``seed`` as a list of group seeds (``None`` stays ``None``), or a clear error."""
        if seed is None:
            return None

        def ok(s: object) -> bool:
            return not isinstance(s, bool) and isinstance(s, int | np.integer) and s >= 0

        if ok(seed):
            return [int(seed)]
        if isinstance(seed, Sequence) and not isinstance(seed, str) and seed and all(
                ok(s) for s in seed) and self.num_envs % len(seed) == 0:
            return [int(s) for s in seed]
        raise ValueError(f"seed={seed!r} is not accepted: expected an integer >= 0, None, or a "
                         f"non-empty sequence of integers >= 0 whose length divides "
                         f"num_envs={self.num_envs}")

    def _pick_rank(self, u: torch.Tensor, skip_rank: torch.Tensor) -> torch.Tensor:
        """:func:`envs.maze.pick_rank` on tensors (float64 products, as numpy computes them;
        truncation is the floor here since ``u >= 0``)."""
        j = torch.minimum((u * self._num_free_1).long(), self._num_free_2)
        return j + (j >= skip_rank)

    def _set_goal(self, goal_abs: torch.Tensor, rank: torch.Tensor) -> None:
        self._goal = goal_abs
        self._goal_rank = rank

    def _check_actions(self, actions: torch.Tensor) -> None:
        ok = (
            isinstance(actions, torch.Tensor)
            and actions.shape == (self.num_envs,)
            and not actions.is_floating_point()
            and not actions.is_complex()
            and actions.dtype != torch.bool
            and _same_device(actions.device, self.device)
        )
        if ok:
            in_range = ((actions >= 0) & (actions < NUM_ACTIONS)).all()
            if self.validate_actions:
                ok = bool(in_range)
            elif actions.is_cuda and torch.cuda.is_current_stream_capturing():
                pass  # inside a CUDA graph (agents.population): actions come from argmax
            else:  # no host sync; never let -1 index the last action
                try:
                    torch._assert_async(in_range, f"actions out of [0, {NUM_ACTIONS})")
                except RuntimeError:  # raised here on the CPU (on a GPU: a device assert)
                    ok = False
        if not ok:
            raise ValueError(
                f"actions={actions!r} are not accepted: expected an integer tensor of shape "
                f"({self.num_envs},) on {self.device} with values in [0, {NUM_ACTIONS})"
            )

    def _observation(self) -> torch.Tensor:
        B = self.num_envs
        window = self._walls_float[self._pos[:, None] + self._offsets]
        time = torch.full((B, 1), self._t / self.config.episode_length, device=self.device)
        return torch.cat(
            [window, self._unused_bias, time, self._last_reward[:, None],
             self._eye[self._last_action]],
            dim=1,
        )


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name the same device when the current device is 0."""
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (
            b.index if b.index is not None else current
        )
    return True


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
