"""``WarpMazeEnv``: one maze, written plainly; the reference the batched envs are tested against.

The task (REFERENCE.md, "Maze navigation"; Miconi et al.'s grid maze as used by WarpGrad): each
episode hides a goal in a free cell other than the start; the agent starts at the start cell and
sees only the walls around it. Entering the goal pays ``reward`` and teleports the agent to a
uniformly random free cell that is not the goal. A move into a wall leaves the agent in place and
costs ``wall_penalty``. The episode is truncated (never terminated) after ``episode_length`` steps.
See :mod:`envs.maze` for layouts, the observation layout and how randomness is spent.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.maze import (
    MOVES,
    NUM_ACTIONS,
    MazeConfig,
    check_walls,
    make_walls,
    render_ansi,
    render_rgb,
)

Cell = tuple[int, int]


def check_reset_options(options: dict[str, Any] | None) -> None:
    """The mazes take no reset options; anything but ``None`` or ``{}`` is an error."""
    if options:
        raise ValueError(
            f"reset options {sorted(options)!r} are not accepted: the maze takes no reset "
            "options (pass None or {})"
        )


def check_render_mode(render_mode: str | None, accepted: list[str]) -> None:
    if render_mode is not None and render_mode not in accepted:
        raise ValueError(
            f"render_mode={render_mode!r} is not accepted: expected None or one of {accepted}"
        )


def _is_action(action: Any) -> bool:
    """An integer (Python, numpy, or a 0-d integer array) in [0, 4); what Discrete(4) contains."""
    if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
        action = action.item()
    return (
        isinstance(action, int | np.integer)
        and not isinstance(action, bool)
        and 0 <= action < NUM_ACTIONS
    )


class WarpMazeEnv(gym.Env[np.ndarray, np.int64]):
    """The grid maze of WarpGrad / Miconi et al. as a Gymnasium env.

    Args:
        size: side of the grid, odd, >= 5 (13).
        episode_length: steps per episode (200).
        reward: reward for entering the goal (10.0).
        wall_penalty: cost of bumping into a wall, >= 0 (0.0).
        view_size: side of the window of walls the agent sees, odd (3).
        layout: ``"grid"`` (the paper's pillar grid) or ``"random"`` (a new perfect maze per
            episode).
        render_mode: ``None``, ``"ansi"`` (text), ``"rgb_array"`` (uint8 ``(H, W, 3)``) or
            ``"human"`` (a matplotlib window).

    Spaces:
        observation: float32 ``Box`` of shape ``(view_size**2 + 8,)`` (17 at the defaults), laid
        out as :class:`envs.maze.ObsLayout` documents. action: ``Discrete(4)``: 0 up, 1 down,
        2 left, 3 right.

    ``info`` (from ``reset`` and ``step``): ``"agent_cell"`` and ``"goal_cell"``, int64 ``(2,)``
    ``(row, col)`` arrays, for analysis only (the goal is never in the observation).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["human", "ansi", "rgb_array"],
        "render_fps": 8,
    }

    def __init__(
        self,
        size: int = 13,
        episode_length: int = 200,
        reward: float = 10.0,
        wall_penalty: float = 0.0,
        view_size: int = 3,
        layout: str = "grid",
        render_mode: str | None = None,
    ) -> None:
        self.config = MazeConfig.create(
            size, episode_length, reward, wall_penalty, view_size, layout
        )
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.obs_layout = self.config.obs_layout
        low, high = self.config.observation_bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(NUM_ACTIONS)

        self._walls: np.ndarray | None = None  # (S, S) bool, True = wall
        self._free_cells: list[Cell] = []  # free cells in row-major order
        self._agent: Cell = self.config.start_cell
        self._goal: Cell = self.config.start_cell
        self._t: int | None = None  # None until the first reset
        self._last_reward = 0.0
        self._last_action = 0
        self._figure: Any = None  # matplotlib (figure, image) for render_mode="human"

    # ----------------------------------------------------------------- Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: new maze (``"random"`` layout), new goal, agent at the start."""
        super().reset(seed=seed)
        check_reset_options(options)
        self._set_walls(make_walls(self.np_random, 1, self.config)[0])
        start = self.config.start_cell
        self._goal = self._pick_free_cell(self._uniform(), exclude=start)
        self._agent = start
        self._t = 0
        self._last_reward = 0.0
        self._last_action = 0
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info()

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Move (or bump), collect the goal reward and teleport, advance time by one step."""
        T = self.config.episode_length
        if self._t is None:
            raise RuntimeError("step() was called before reset(): call reset() first")
        if self._t >= T:
            raise RuntimeError(
                f"the episode ended at t={self._t} (episode_length={T}); call reset() before "
                "step()"
            )
        if not _is_action(action):
            raise ValueError(
                f"action={action!r} is not accepted: expected an integer in [0, {NUM_ACTIONS}) "
                "(0 up, 1 down, 2 left, 3 right)"
            )
        a = int(action)
        d_row, d_col = MOVES[a]
        row, col = self._agent
        reward = 0.0
        if self._walls[row + d_row, col + d_col]:
            reward -= self.config.wall_penalty  # bumped: stay in place
        else:
            row, col = row + d_row, col + d_col
        u = self._uniform()  # one uniform per step, used on a goal hit
        if (row, col) == self._goal:
            reward += self.config.reward
            row, col = self._pick_free_cell(u, exclude=self._goal)
        self._agent = (row, col)
        self._t += 1
        self._last_reward = reward
        self._last_action = a
        if self.render_mode == "human":
            self.render()
        return self._observation(), reward, False, self._t >= T, self._info()

    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: text grid (``#`` wall, ``.`` free, ``A`` agent, ``G`` goal);
        ``"rgb_array"``: uint8 ``(16 S, 16 S, 3)``; ``"human"``: draws in a matplotlib window."""
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render_mode; pass render_mode='ansi', "
                "'rgb_array' or 'human' to the constructor"
            )
            return None
        if self._walls is None:
            raise RuntimeError("render() was called before reset(): call reset() first")
        if self.render_mode == "ansi":
            return render_ansi(self._walls, self._agent, self._goal)
        frame = render_rgb(self._walls, self._agent, self._goal)
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def close(self) -> None:
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure[0])
            self._figure = None

    # ----------------------------------------------------------------- state, for analysis/tests

    @property
    def walls(self) -> np.ndarray:
        """The current maze, bool ``(S, S)``, ``True`` = wall (a copy)."""
        if self._walls is None:
            raise RuntimeError("there is no maze before reset(): call reset() first")
        return self._walls.copy()

    @property
    def agent_cell(self) -> Cell:
        return self._agent

    @property
    def goal_cell(self) -> Cell:
        return self._goal

    @property
    def t(self) -> int | None:
        """Steps taken in this episode (``None`` before the first reset)."""
        return self._t

    def set_state(
        self,
        *,
        walls: np.ndarray | None = None,
        agent: Cell | None = None,
        goal: Cell | None = None,
        t: int | None = None,
    ) -> np.ndarray:
        """Overwrite parts of the state (after a reset) and return the new observation.

        For tests and analysis: ``walls`` bool ``(S, S)`` (outer ring all wall; needs ``agent``
        and ``goal`` too), ``agent`` and ``goal`` free ``(row, col)`` cells that differ, ``t`` in
        ``[0, episode_length)``. The previous reward and action are kept.
        """
        if self._t is None:
            raise RuntimeError("set_state() needs a reset() first")
        if walls is not None:
            if agent is None or goal is None:
                raise ValueError("set_state(walls=...) also needs agent=... and goal=...")
            walls = check_walls(walls, self.config.size)
            if walls.ndim != 2:
                raise ValueError(f"walls of shape {walls.shape} is not accepted: expected (S, S)")
            self._set_walls(walls)
        new_agent = self._agent if agent is None else (int(agent[0]), int(agent[1]))
        new_goal = self._goal if goal is None else (int(goal[0]), int(goal[1]))
        for name, cell in (("agent", new_agent), ("goal", new_goal)):
            if cell not in self._free_cells:
                raise ValueError(f"{name}={cell!r} is not accepted: expected a free cell")
        if new_agent == new_goal:
            raise ValueError(f"agent and goal {new_agent!r} are not accepted: they must differ")
        if t is not None and not 0 <= t < self.config.episode_length:
            raise ValueError(
                f"t={t!r} is not accepted: expected 0 <= t < {self.config.episode_length}"
            )
        self._agent, self._goal = new_agent, new_goal
        if t is not None:
            self._t = int(t)
        return self._observation()

    # ----------------------------------------------------------------- internals

    def _set_walls(self, walls: np.ndarray) -> None:
        self._walls = np.array(walls, dtype=bool)
        self._padded = np.pad(self._walls, self.config.view_size // 2, constant_values=True)
        self._free_cells = [(int(r), int(c)) for r, c in np.argwhere(~self._walls)]

    def _uniform(self) -> float:
        """The only source of randomness besides maze carving: one float64 uniform."""
        return float(self.np_random.random(1)[0])

    def _pick_free_cell(self, u: float, exclude: Cell) -> Cell:
        """Candidate ``floor(u * n)`` of the ``n`` free cells other than ``exclude``, row-major."""
        candidates = [cell for cell in self._free_cells if cell != exclude]
        return candidates[min(int(u * len(candidates)), len(candidates) - 1)]

    def _observation(self) -> np.ndarray:
        lay = self.obs_layout
        obs = np.zeros(lay.dim, dtype=np.float32)
        row, col = self._agent  # the padded grid shifts the window's top-left corner here
        v = self.config.view_size
        obs[lay.window] = self._padded[row:row + v, col:col + v].ravel()
        obs[lay.bias] = 1.0
        obs[lay.time] = self._t / self.config.episode_length
        obs[lay.last_reward] = self._last_reward
        obs[lay.prev_action.start + self._last_action] = 1.0
        return obs

    def _info(self) -> dict[str, Any]:
        return {
            "agent_cell": np.array(self._agent, dtype=np.int64),
            "goal_cell": np.array(self._goal, dtype=np.int64),
        }

    def _show(self, frame: np.ndarray) -> None:
        import matplotlib.pyplot as plt

        if self._figure is None:
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.set_axis_off()
            image = ax.imshow(frame)
            self._figure = (fig, image)
            if plt.get_backend().lower() != "agg":
                plt.show(block=False)
        else:
            self._figure[1].set_data(frame)
        fig = self._figure[0]
        fig.canvas.draw_idle()
        fig.canvas.flush_events()
        if plt.get_backend().lower() != "agg":
            plt.pause(1.0 / self.metadata["render_fps"])
