"""``WarpMazeVectorEnv``: ``num_envs`` mazes stepped together with numpy, no per-maze Python loop.

Same dynamics as :class:`envs.maze_env.WarpMazeEnv` (tested step by step), written in the style
of Gymnasium's ``CartPoleVectorEnv``. All mazes share the episode clock: they start together,
truncate together at ``episode_length`` and are reset together (lockstep), which is what the A2C
trainer wants and what lets a whole batch reset in one vectorised call.

Representation (chosen so that a step is about a dozen numpy calls whatever ``N``):

* Each maze is padded with ``pad`` rings of wall and flattened; the agent, goal and start are
  integer indices into the flat cells, one block of ``W*W`` cells (``W = size + 2 pad``) shared
  by all mazes for the ``"grid"`` layout, one block per maze for ``"random"`` (maze ``i`` at
  offset ``i*W*W``).
* ``_next[cell, action]`` is the cell a move leads to (the same cell for a wall): a move is one
  gather. (Per-maze walls make this table ``N*W*W*4`` integers: 29 MB at N=4096, 13x13.)
* ``_obs_rows`` holds the observation of a cell without the time, reward and action slots: one
  row per cell for shared walls; for per-maze walls at ``view_size <= 3``, one row per window
  pattern, each cell's pattern being a 9-bit code in ``_codes``; larger per-maze windows are
  gathered from the walls at every step.
* Goals and teleport destinations are drawn for all mazes at once with
  :func:`envs.maze.pick_rank` over each maze's row-major list of free cells. The per-step
  uniforms are drawn in blocks of up to 64 steps that never cross an episode's end, which
  consumes the generator exactly as one draw per step would.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs.maze import (
    NUM_ACTIONS,
    MazeConfig,
    check_walls,
    flatten_mazes,
    make_walls,
    move_table,
    pick_rank,
    render_ansi,
    render_rgb,
)
from envs.maze_env import check_render_mode, check_reset_options

AUTORESET_MODES: tuple[AutoresetMode, ...] = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
UNIFORM_BLOCK: int = 64
"""Steps of uniforms drawn at once (see the module docstring)."""


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class WarpMazeVectorEnv(gym.vector.VectorEnv):
    """A batch of ``num_envs`` mazes as a Gymnasium vector env (numpy-batched, lockstep).

    Args:
        num_envs: number of mazes ``N`` (>= 1).
        size, episode_length, reward, wall_penalty, view_size, layout: as for
            :class:`envs.maze_env.WarpMazeEnv`.
        render_mode: ``None``, ``"ansi"`` or ``"rgb_array"``; ``render()`` then returns one
            frame per maze (a tuple).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default: the step after the last one
            resets every maze, ignores the actions and returns reward 0) or
            ``AutoresetMode.SAME_STEP`` (the last step returns the new episode's first
            observation, and the last one in ``info["final_obs"]``); or their string values.

    Returns of ``step``: observations float32 ``(N, D)``, rewards float64 ``(N,)``, terminated
    bool ``(N,)`` (always False), truncated bool ``(N,)`` (all True on the last step), info.
    ``info`` has ``"agent_cell"`` and ``"goal_cell"`` int64 ``(N, 2)`` with the masks
    ``"_agent_cell"``, ``"_goal_cell"`` (all True), as ``SyncVectorEnv`` would give. In
    SAME_STEP mode the last step's info also has ``"final_obs"``, a float32 ``(N, D)`` array
    (``SyncVectorEnv`` gives an object array; here every maze ends together), ``"final_info"``
    (the last step's info) and their masks. Arrays in ``info`` may be read-only.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["ansi", "rgb_array"],
        "render_fps": 8,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        size: int = 13,
        episode_length: int = 200,
        reward: float = 10.0,
        wall_penalty: float = 0.0,
        view_size: int = 3,
        layout: str = "grid",
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is not accepted: expected an integer >= 1")
        self.config = cfg = MazeConfig.create(
            size, episode_length, reward, wall_penalty, view_size, layout
        )
        check_render_mode(render_mode, self.metadata["render_modes"])
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            mode = None
        if mode not in AUTORESET_MODES:
            raise ValueError(
                f"autoreset_mode={autoreset_mode!r} is not accepted: expected one of "
                f"{list(AUTORESET_MODES)} or their values {[m.value for m in AUTORESET_MODES]}"
            )
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.num_envs = N = int(num_envs)
        self.render_mode = render_mode
        self.obs_layout = lay = cfg.obs_layout

        low, high = cfg.observation_bounds()
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, N)
        self.single_action_space = spaces.Discrete(NUM_ACTIONS)
        self.action_space = batch_space(self.single_action_space, N)

        # geometry of the padded, flattened grid
        self._pad = p = cfg.pad
        self._width = W = cfg.size + 2 * p
        h = cfg.view_size // 2
        self._offsets = np.array(
            [dr * W + dc for dr in range(-h, h + 1) for dc in range(-h, h + 1)], dtype=np.intp
        )
        rows, cols = np.divmod(np.arange(W * W), W)
        self._cell_of = np.stack([rows - p, cols - p], axis=1)  # flat -> (row, col), unpadded
        self._rows = np.arange(N)
        self._action_slot = self._rows * lay.dim + lay.prev_action.start  # flat index, action 0
        self._time_slot, self._reward_slot = lay.time, lay.last_reward
        self._all_true = _read_only(np.ones(N, dtype=bool))

        # state (set by reset)
        self._walls_flat = np.zeros(0, dtype=bool)  # (W*W,) shared or (N*W*W,) per maze
        self._shared = True
        self._base = np.zeros(N, dtype=np.intp)  # offset of maze i's block
        self._next = np.zeros((0, NUM_ACTIONS), dtype=np.intp)  # cell after each action
        self._free = np.zeros((N, 0), dtype=np.intp)  # free cells, row-major (absolute)
        self._num_free = np.zeros(N, dtype=np.intp)
        self._free_cumsum = np.zeros((N, 0), dtype=np.intp)
        self._codes: np.ndarray | None = None
        self._obs_rows: np.ndarray | None = None
        self._pos = np.zeros(N, dtype=np.intp)
        self._goal = np.zeros(N, dtype=np.intp)
        self._goal_rank = np.zeros(N, dtype=np.intp)
        self._goal_cell = np.zeros((N, 2), dtype=np.intp)
        self._last_action = np.zeros(N, dtype=np.intp)
        self._last_reward = np.zeros(N)
        self._ublock = np.zeros((0, N))  # pre-drawn per-step uniforms
        self._ublock_next = 0
        self._t: int | None = None
        self._autoreset_pending = False
        self._walls_are_grid = False

    # ----------------------------------------------------------------- Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every maze (lockstep). ``seed`` seeds the one generator all mazes share."""
        super().reset(seed=seed)
        check_reset_options(options)
        self._new_episode()
        return self._observation(), self._info()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every maze with ``actions``, integers ``(N,)`` in ``{0, 1, 2, 3}``."""
        if self._t is None:
            raise RuntimeError("step() was called before reset(): call reset() first")
        N, cfg = self.num_envs, self.config
        actions = np.asarray(actions)
        if (
            actions.shape != (N,)
            or actions.dtype.kind not in "iu"
            # a >> 2 is 0 exactly for 0 <= a < 4 (negative numbers shift to -1)
            or np.count_nonzero(actions >> 2)
        ):
            raise ValueError(
                f"actions={actions!r} are not accepted: expected integers in [0, {NUM_ACTIONS}) "
                f"of shape ({N},) (0 up, 1 down, 2 left, 3 right)"
            )
        if self._autoreset_pending:  # NEXT_STEP: this step only resets
            self._new_episode()
            false = np.zeros(N, dtype=bool)
            return self._observation(), np.zeros(N), false, false.copy(), self._info()

        pos = self._next[self._pos, actions]
        hit = pos == self._goal
        reward = hit * cfg.reward
        if cfg.wall_penalty:
            reward -= (pos == self._pos) * cfg.wall_penalty  # stayed in place: bumped a wall
        u = self._step_uniforms()  # one per maze per step (see envs.maze)
        if np.count_nonzero(hit):  # teleport to a free cell other than the goal
            idx = np.flatnonzero(hit)
            rank = pick_rank(u[idx], self._num_free[idx], self._goal_rank[idx])
            pos[idx] = self._free[idx, rank]
        self._pos = pos
        self._last_action = actions.copy()
        self._last_reward = reward
        self._t += 1

        obs, info = self._observation(), self._info()
        done = self._t >= cfg.episode_length
        terminated = np.zeros(N, dtype=bool)
        truncated = np.ones(N, dtype=bool) if done else np.zeros(N, dtype=bool)
        if done:
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs, final_info = obs, info
                self._new_episode()
                obs, info = self._observation(), self._info()
                info.update(
                    final_obs=final_obs, _final_obs=self._all_true,
                    final_info=final_info, _final_info=self._all_true,
                )
            else:
                self._autoreset_pending = True
        return obs, reward, terminated, truncated, info

    def render(self) -> tuple[Any, ...] | None:
        """One frame per maze: text (``"ansi"``) or uint8 ``(H, W, 3)`` (``"rgb_array"``)."""
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render_mode; pass render_mode='ansi' or "
                "'rgb_array' to the constructor"
            )
            return None
        if self._t is None:
            raise RuntimeError("render() was called before reset(): call reset() first")
        draw = render_ansi if self.render_mode == "ansi" else render_rgb
        walls, agents, goals = self.walls, self.agent_cells, self.goal_cells
        return tuple(
            draw(walls[i], tuple(agents[i]), tuple(goals[i])) for i in range(self.num_envs)
        )

    # ----------------------------------------------------------------- state, for analysis/tests

    @property
    def t(self) -> int | None:
        """Steps taken in the current episode (shared by all mazes; ``None`` before reset)."""
        return self._t

    @property
    def walls(self) -> np.ndarray:
        """Current mazes, bool ``(N, S, S)``, ``True`` = wall (read-only)."""
        W, p, S = self._width, self._pad, self.config.size
        blocks = self._walls_flat.reshape(-1, W, W)[:, p:p + S, p:p + S]
        return _read_only(np.broadcast_to(blocks, (self.num_envs, S, S)))

    @property
    def agent_cells(self) -> np.ndarray:
        """``(row, col)`` of every agent, int ``(N, 2)``."""
        return self._cell_of[self._pos - self._base]

    @property
    def goal_cells(self) -> np.ndarray:
        """``(row, col)`` of every goal, int ``(N, 2)``."""
        return self._goal_cell.copy()

    def set_state(
        self,
        *,
        walls: np.ndarray | None = None,
        agent: np.ndarray | None = None,
        goal: np.ndarray | None = None,
        t: int | None = None,
    ) -> np.ndarray:
        """Overwrite parts of the state (after a reset); returns the observations ``(N, D)``.

        For tests and analysis: ``walls`` bool ``(S, S)`` (all mazes) or ``(N, S, S)`` (needs
        ``agent`` and ``goal`` too); ``agent``, ``goal`` int ``(N, 2)`` free cells that differ
        per maze; ``t`` in ``[0, episode_length)``. The previous rewards and actions are kept;
        uniforms drawn ahead for later steps are discarded.
        """
        if self._t is None:
            raise RuntimeError("set_state() needs a reset() first")
        N, S = self.num_envs, self.config.size
        if walls is not None:
            if agent is None or goal is None:
                raise ValueError("set_state(walls=...) also needs agent=... and goal=...")
            w = check_walls(walls, S)
            if w.ndim == 3 and w.shape[0] != N:
                raise ValueError(f"walls of shape {w.shape} is not accepted: expected N={N} mazes")
            self._install_walls(w)
            self._walls_are_grid = False
        agent_abs = self._pos if agent is None else self._cells_to_abs(agent, "agent")
        goal_abs = self._goal if goal is None else self._cells_to_abs(goal, "goal")
        if (agent_abs == goal_abs).any():
            raise ValueError("agent and goal are not accepted: they must differ in every maze")
        if t is not None and not 0 <= t < self.config.episode_length:
            raise ValueError(
                f"t={t!r} is not accepted: expected 0 <= t < {self.config.episode_length}"
            )
        self._pos = agent_abs.copy()
        self._set_goal(goal_abs)
        if t is not None:
            self._t = int(t)
        self._autoreset_pending = False
        self._ublock, self._ublock_next = self._ublock[:0], 0
        return self._observation()

    # ----------------------------------------------------------------- internals

    def _new_episode(self) -> None:
        """New mazes (``"random"``), new goals, agents at the start; all mazes together."""
        cfg, N = self.config, self.num_envs
        if cfg.layout == "random":
            self._install_walls(make_walls(self.np_random, N, cfg))
        elif not self._walls_are_grid:
            self._install_walls(make_walls(self.np_random, 1, cfg)[0])
            self._walls_are_grid = True
        r, c = cfg.start_cell
        start = self._base + (r + self._pad) * self._width + (c + self._pad)
        rank = pick_rank(self._uniform(N), self._num_free, self._rank_of(start))
        self._set_goal(self._free[self._rows, rank])
        self._pos = start
        self._last_action = np.zeros(N, dtype=np.intp)
        self._last_reward = np.zeros(N)
        self._t = 0
        self._autoreset_pending = False
        self._ublock, self._ublock_next = self._ublock[:0], 0

    def _install_walls(self, walls: np.ndarray) -> None:
        """Walls ``(S, S)`` (shared) or ``(N, S, S)``: flat walls, move table, free cells, and
        the observation tables."""
        N, W, lay = self.num_envs, self._width, self.obs_layout
        self._shared = walls.ndim == 2
        flat = flatten_mazes(walls[None] if self._shared else walls, self._pad)
        self._walls_flat = flat.walls.reshape(-1)
        self._base = np.zeros(N, dtype=np.intp) if self._shared else self._rows * (W * W)
        self._free = np.broadcast_to(flat.free + self._base[:, None], (N, flat.free.shape[1]))
        self._num_free = np.broadcast_to(flat.num_free, (N,))
        self._free_cumsum = np.broadcast_to(flat.free_cumsum, (N, W * W))

        self._next = move_table(self._walls_flat, W)

        v2 = lay.window.stop
        local = np.arange(W * W)
        around = np.clip(local[:, None] + self._offsets, 0, W * W - 1)  # (W*W, v2)
        self._codes, self._obs_rows = None, None
        if self._shared:  # one row per cell
            rows = np.zeros((W * W, lay.dim), dtype=np.float32)
            rows[:, :v2] = flat.walls[0][around]
        elif v2 <= 9:  # one row per window pattern; each cell's pattern as a v2-bit code
            bits = flat.walls[:, around]  # (N, W*W, v2)
            self._codes = (bits.astype(np.intp) @ (1 << np.arange(v2))).reshape(-1)
            rows = np.zeros((2**v2, lay.dim), dtype=np.float32)
            rows[:, :v2] = (np.arange(2**v2)[:, None] >> np.arange(v2)) & 1
        else:  # gathered at every step
            return
        rows[:, lay.bias] = 1.0
        self._obs_rows = rows

    def _uniform(self, n: int) -> np.ndarray:
        """The only source of randomness besides maze carving: ``n`` float64 uniforms."""
        return self.np_random.random(n)

    def _step_uniforms(self) -> np.ndarray:
        """This step's ``(N,)`` uniforms, from a block that ends by the episode's end."""
        if self._ublock_next == len(self._ublock):
            steps = min(UNIFORM_BLOCK, self.config.episode_length - self._t)
            self._ublock = self._uniform(steps * self.num_envs).reshape(steps, self.num_envs)
            self._ublock_next = 0
        self._ublock_next += 1
        return self._ublock[self._ublock_next - 1]

    def _rank_of(self, cell_abs: np.ndarray) -> np.ndarray:
        """Row-major rank of free cells (absolute indices ``(N,)``) among their maze's free
        cells."""
        return self._free_cumsum[self._rows, cell_abs - self._base] - 1

    def _set_goal(self, goal_abs: np.ndarray) -> None:
        self._goal = goal_abs
        self._goal_rank = self._rank_of(goal_abs)
        self._goal_cell = _read_only(self._cell_of[goal_abs - self._base])

    def _cells_to_abs(self, cells: np.ndarray, name: str) -> np.ndarray:
        cells = np.asarray(cells)
        N, S, p, W = self.num_envs, self.config.size, self._pad, self._width
        if cells.shape != (N, 2) or cells.dtype.kind not in "iu":
            raise ValueError(
                f"{name} of shape {cells.shape} is not accepted: expected int ({N}, 2)"
            )
        if ((cells < 0) | (cells >= S)).any():
            raise ValueError(
                f"{name}={cells.tolist()} is not accepted: cells must be inside the grid"
            )
        flat = self._base + (cells[:, 0] + p) * W + (cells[:, 1] + p)
        if self._walls_flat[flat].any():
            raise ValueError(f"{name}={cells.tolist()} is not accepted: expected free cells")
        return flat.astype(np.intp)

    def _observation(self) -> np.ndarray:
        """Observations float32 ``(N, D)`` (layout: :class:`envs.maze.ObsLayout`)."""
        if self._codes is not None:
            obs = self._obs_rows.take(self._codes[self._pos], axis=0)
        elif self._obs_rows is not None:
            obs = self._obs_rows.take(self._pos, axis=0)
        else:
            lay = self.obs_layout
            obs = np.zeros((self.num_envs, lay.dim), dtype=np.float32)
            obs[:, lay.window] = self._walls_flat[self._pos[:, None] + self._offsets]
            obs[:, lay.bias] = 1.0
        obs[:, self._time_slot] = self._t / self.config.episode_length
        obs[:, self._reward_slot] = self._last_reward
        obs.reshape(-1)[self._action_slot + self._last_action] = 1.0
        return obs

    def _info(self) -> dict[str, Any]:
        agent = self._cell_of.take(self._pos if self._shared else self._pos - self._base, 0)
        return {
            "agent_cell": agent, "_agent_cell": self._all_true,
            "goal_cell": self._goal_cell, "_goal_cell": self._all_true,
        }
