"""The maze itself: options, layouts, the observation layout, and rendering helpers.

Everything here is shared by the single env (:mod:`envs.maze_env`), the numpy vector env
(:mod:`envs.vector_env`) and the torch batch (:mod:`envs.torch_maze`), so that the three agree on
what a maze is and how randomness is spent.

Grid coordinates are ``(row, col)`` with row 0 at the top; ``walls[row, col]`` is ``True`` for a
wall. Actions: 0 up (row - 1), 1 down (row + 1), 2 left (col - 1), 3 right (col + 1).

Layouts
-------
``"grid"`` (the paper's, after Miconi et al.): the outer ring is wall, every inner cell whose row
and column are both even is a pillar, and the centre cell is free. 97 free cells at 13x13. The
agent starts at the centre.

``"random"``: a new *perfect* maze (every free cell reachable from every other by exactly one
path) per episode, carved from the episode's random generator. The maze is a spanning tree over
the lattice of cells with odd row and odd column: Kruskal's algorithm on the lattice edges taken
in a random order (one uniform weight per edge, ``rng.random((n, num_edges))``); an edge kept in
the tree opens the wall cell between its two lattice cells. :func:`carve_random_mazes` carves
``n`` mazes at once, looping over the edges (60 at 13x13), never over the mazes. The agent starts
at the lattice cell nearest the centre, ``(c, c)`` with ``c = size // 2`` if that is odd, else
``c - 1`` (e.g. ``(5, 5)`` at 13x13), which is always free and connected to every free cell.
A perfect maze on a ``k x k`` lattice (``k = (size - 1) // 2``) has ``2 k^2 - 1`` free cells (71
at 13x13).

How randomness is spent (the same in all three implementations)
----------------------------------------------------------------
* ``reset``: for ``"random"``, the mazes (:func:`carve_random_mazes`); then one uniform ``u`` per
  maze for the goal.
* every ``step``: one uniform ``u`` per maze, used only by the mazes whose agent enters the goal.
* A uniform picks among candidate cells with :func:`pick_rank`: the free cells in row-major order
  with one cell left out (the start for the goal, the goal for a teleport); candidate number
  ``floor(u * (F - 1))``, where ``F`` is the number of free cells.

So a single env and a vector env of one maze, seeded alike and given the same actions, produce
the same episodes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

LAYOUTS: tuple[str, ...] = ("grid", "random")
"""Accepted values of the ``layout`` option."""

MOVES: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""``(d_row, d_col)`` of actions 0..3."""
NUM_ACTIONS: int = 4

NUM_EXTRA_INPUTS: int = 4
"""The paper's "additional inputs" after the window: unused (0), bias (1), t/T, last reward."""


# --------------------------------------------------------------------------- options


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


@dataclass(frozen=True)
class MazeConfig:
    """Validated maze options (build it with :meth:`MazeConfig.create`).

    Attributes:
        size: side of the square grid in cells, odd, at least 5 (13 in the paper).
        episode_length: steps per episode, ``T`` (200 in the paper).
        reward: reward for entering the goal (10 in the paper).
        wall_penalty: cost of a move into a wall, subtracted from the reward (0 in the paper).
        view_size: side of the square window of wall flags the agent sees, odd (3 in the paper).
        layout: ``"grid"`` or ``"random"`` (see the module docstring).
    """

    size: int = 13
    episode_length: int = 200
    reward: float = 10.0
    wall_penalty: float = 0.0
    view_size: int = 3
    layout: str = "grid"

    @classmethod
    def create(
        cls,
        size: int = 13,
        episode_length: int = 200,
        reward: float = 10.0,
        wall_penalty: float = 0.0,
        view_size: int = 3,
        layout: str = "grid",
    ) -> MazeConfig:
        """Check every option and return the config; raise ``ValueError`` naming the bad value."""
        if not _is_int(size) or size < 5 or size % 2 == 0:
            raise ValueError(f"size={size!r} is not accepted: expected an odd integer >= 5")
        if not _is_int(episode_length) or episode_length < 1:
            raise ValueError(
                f"episode_length={episode_length!r} is not accepted: expected an integer >= 1"
            )
        if not _is_real(reward):
            raise ValueError(f"reward={reward!r} is not accepted: expected a finite number")
        if not _is_real(wall_penalty) or wall_penalty < 0:
            raise ValueError(
                f"wall_penalty={wall_penalty!r} is not accepted: expected a finite number >= 0"
            )
        # Observations and rewards are float32: an episode's return must stay finite in it.
        for name, value in (("reward", reward), ("wall_penalty", wall_penalty)):
            if abs(float(value)) * episode_length > FLOAT32_MAX:
                raise ValueError(
                    f"{name}={value!r} is not accepted: expected |{name}| * episode_length <= "
                    f"{FLOAT32_MAX:.3g} (float32's largest number), so that a return over "
                    f"{episode_length} steps cannot overflow; use a smaller {name}"
                )
        if not _is_int(view_size) or view_size < 1 or view_size % 2 == 0:
            raise ValueError(
                f"view_size={view_size!r} is not accepted: expected an odd integer >= 1"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} is not accepted: expected one of {LAYOUTS}")
        return cls(
            int(size), int(episode_length), float(reward), float(wall_penalty), int(view_size),
            str(layout),
        )

    @property
    def obs_layout(self) -> ObsLayout:
        return ObsLayout(self.view_size)

    @property
    def start_cell(self) -> tuple[int, int]:
        """Where every episode starts (see the module docstring)."""
        return start_cell(self.size, self.layout)

    @property
    def pad(self) -> int:
        """Margin of wall added around the grid so that every window stays inside the array."""
        return max(1, self.view_size // 2)

    def reward_bounds(self) -> tuple[float, float]:
        """Smallest and largest reward one step can give: ``{0, reward, -wall_penalty}``."""
        values = (0.0, self.reward, -self.wall_penalty)
        return min(values), max(values)

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` float32 arrays of shape ``(obs_dim,)``, all finite.

        Every slot lies in [0, 1] except the last reward, in :meth:`reward_bounds`. (The
        constant slots, unused 0 and bias 1, also get [0, 1]: Gymnasium warns about a Box whose
        low equals its high.)
        """
        lay = self.obs_layout
        low = np.zeros(lay.dim, dtype=np.float32)
        high = np.ones(lay.dim, dtype=np.float32)
        low[lay.last_reward], high[lay.last_reward] = self.reward_bounds()
        return low, high


# --------------------------------------------------------------------------- observation


@dataclass(frozen=True)
class ObsLayout:
    """Where each input sits in the observation vector, for a window of side ``view_size``.

    With ``v = view_size`` and ``v2 = v * v`` (the paper: ``v = 3``, 17 inputs):

    ============  ===============  =================================================
    slots         default (v=3)    meaning
    ============  ===============  =================================================
    ``[0:v2]``    ``[0:9]``        wall flags of the v x v window around the agent,
                                   row-major (1 = wall; cells outside the grid = 1)
    ``v2``        ``9``            unused, always 0 (kept for the paper's layout)
    ``v2 + 1``    ``10``           bias, always 1
    ``v2 + 2``    ``11``           time ``t / episode_length`` (0 at reset, 1 at the end)
    ``v2 + 3``    ``12``           reward received on the previous step (0 at reset)
    ``[v2+4:]``   ``[13:17]``      one-hot previous action (action 0 at reset)
    ============  ===============  =================================================
    """

    view_size: int = 3

    @property
    def window(self) -> slice:
        return slice(0, self.view_size**2)

    @property
    def unused(self) -> int:
        return self.view_size**2

    @property
    def bias(self) -> int:
        return self.view_size**2 + 1

    @property
    def time(self) -> int:
        return self.view_size**2 + 2

    @property
    def last_reward(self) -> int:
        return self.view_size**2 + 3

    @property
    def prev_action(self) -> slice:
        start = self.view_size**2 + NUM_EXTRA_INPUTS
        return slice(start, start + NUM_ACTIONS)

    @property
    def dim(self) -> int:
        return self.view_size**2 + NUM_EXTRA_INPUTS + NUM_ACTIONS


def obs_dim(view_size: int = 3) -> int:
    """Length of the observation vector: ``view_size**2 + 8`` (17 at the default)."""
    return ObsLayout(view_size).dim


# --------------------------------------------------------------------------- layouts


def start_cell(size: int, layout: str = "grid") -> tuple[int, int]:
    """The start cell: the centre for ``"grid"``; the lattice cell nearest it for ``"random"``."""
    c = size // 2
    if layout == "random" and c % 2 == 0:
        c -= 1
    return c, c


def grid_walls(size: int = 13) -> np.ndarray:
    """The paper's pillar grid: bool ``(size, size)``, ``True`` = wall (97 free cells at 13)."""
    walls = np.zeros((size, size), dtype=bool)
    walls[[0, -1], :] = True
    walls[:, [0, -1]] = True
    walls[2:-1:2, 2:-1:2] = True  # pillars: both coordinates even
    c = size // 2
    walls[c, c] = False  # the centre (a pillar when size // 2 is even) is free
    return walls


def _lattice_edges(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges of the k x k lattice: endpoints (cell ids) and the grid cell between them."""
    k = (size - 1) // 2
    ids = np.arange(k * k).reshape(k, k)
    a = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
    b = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
    # lattice cell id i sits at grid (2 * (i // k) + 1, 2 * (i % k) + 1); the wall between two
    # neighbours is at the mean of their grid coordinates
    mid_row = (2 * (a // k) + 1 + 2 * (b // k) + 1) // 2
    mid_col = (2 * (a % k) + 1 + 2 * (b % k) + 1) // 2
    return a, b, mid_row, mid_col


def carve_random_mazes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Carve ``n`` independent perfect mazes; bool ``(n, size, size)``, ``True`` = wall.

    Randomised Kruskal, vectorised over the mazes: every maze gets its own random edge order
    (one ``rng.random((n, num_edges))`` draw); the loop runs over the edge positions of that
    order (``2 k (k - 1)``, 60 at 13x13), each iteration handling all mazes at once with
    component labels (merging relabels the whole component).
    """
    k = (size - 1) // 2
    a, b, mid_row, mid_col = _lattice_edges(size)
    num_edges = a.size
    order = np.argsort(rng.random((n, num_edges)), axis=1)
    rows = np.arange(n)
    label = np.tile(np.arange(k * k), (n, 1))
    keep = np.zeros((n, num_edges), dtype=bool)
    for step in range(num_edges):
        e = order[:, step]
        la = label[rows, a[e]]
        lb = label[rows, b[e]]
        keep[rows, e] = la != lb
        # merge b's component into a's (a no-op where they already are one component)
        label = np.where(label == lb[:, None], la[:, None], label)
    walls = np.ones((n, size, size), dtype=bool)
    walls[:, 1::2, 1::2] = False
    walls[:, mid_row, mid_col] = ~keep
    return walls


def make_walls(rng: np.random.Generator, n: int, config: MazeConfig) -> np.ndarray:
    """Walls for ``n`` mazes, ``(n, S, S)`` bool; for ``"grid"`` a read-only broadcast view."""
    if config.layout == "grid":
        return np.broadcast_to(grid_walls(config.size), (n, config.size, config.size))
    return carve_random_mazes(rng, n, config.size)


def pick_rank(u: np.ndarray, num_free: np.ndarray, skip_rank: np.ndarray) -> np.ndarray:
    """Map uniforms to candidate ranks: free cells in row-major order, one rank skipped.

    Args:
        u: uniforms in [0, 1), float64 ``(n,)``.
        num_free: number of free cells ``F`` per maze, ``(n,)`` ints (>= 2).
        skip_rank: rank (row-major position among the free cells) of the excluded cell, ``(n,)``.

    Returns:
        Rank in ``[0, F)`` of the chosen free cell, never ``skip_rank``; int64 ``(n,)``.
    """
    j = np.minimum(np.floor(u * (num_free - 1)).astype(np.int64), num_free - 2)
    return j + (j >= skip_rank)


@dataclass(frozen=True)
class FlatMazes:
    """Mazes padded with ``pad`` rings of wall and flattened, for the batched implementations.

    With ``W = S + 2 pad`` and ``n`` mazes: ``walls`` bool ``(n, W*W)``; ``free`` int64
    ``(n, F_max)``: the flat (padded, per-maze) indices of each maze's free cells in row-major
    order (entries past ``num_free[i]`` are meaningless); ``num_free`` int64 ``(n,)``;
    ``free_cumsum`` int64 ``(n, W*W)``, so that the rank of free cell ``x`` among its maze's free
    cells is ``free_cumsum[i, x] - 1``.
    """

    walls: np.ndarray
    free: np.ndarray
    num_free: np.ndarray
    free_cumsum: np.ndarray


def flatten_mazes(walls: np.ndarray, pad: int) -> FlatMazes:
    """Pad and flatten bool walls ``(n, S, S)`` (see :class:`FlatMazes`); no loop over mazes."""
    n, size = walls.shape[0], walls.shape[1]
    width = size + 2 * pad
    padded = np.pad(walls, ((0, 0), (pad, pad), (pad, pad)), constant_values=True)
    flat = padded.reshape(n, width * width)
    free2d = ~flat
    counts = free2d.sum(axis=1)
    if (counts == counts[0]).all():  # always for the layouts: one nonzero() does it
        free = np.nonzero(free2d)[1].reshape(n, counts[0])
    else:  # a stable argsort puts each maze's free cells first, in row-major order
        free = np.argsort(flat, axis=1, kind="stable")[:, : counts.max()]
    return FlatMazes(flat, free.astype(np.int64), counts.astype(np.int64),
                     np.cumsum(free2d, axis=1))


def move_table(walls_flat: np.ndarray, width: int) -> np.ndarray:
    """Where each action leads from each cell of flat padded walls: int ``(cells, 4)``.

    ``walls_flat`` is the concatenation of mazes padded to ``width x width`` (see
    :class:`FlatMazes`); a move into a wall stays on the same cell. A move never leaves its
    maze's block, since the padding is wall.
    """
    cells = np.arange(walls_flat.size)
    delta = np.array([dr * width + dc for dr, dc in MOVES])
    target = np.clip(cells[:, None] + delta, 0, cells.size - 1)
    return np.where(walls_flat[target], cells[:, None], target)


def check_walls(walls: np.ndarray, size: int) -> np.ndarray:
    """Validate user-given walls ``(S, S)`` or ``(n, S, S)``; returns a bool array.

    Accepted: the outer ring all wall and at least 2 free cells per maze.
    """
    w = np.asarray(walls)
    if w.shape[-2:] != (size, size) or w.ndim not in (2, 3):
        raise ValueError(
            f"walls of shape {w.shape} is not accepted: expected ({size}, {size}) or "
            f"(n, {size}, {size})"
        )
    w = w.astype(bool)
    ring = np.concatenate([w[..., 0, :], w[..., -1, :], w[..., :, 0], w[..., :, -1]], axis=-1)
    if not ring.all():
        raise ValueError("walls are not accepted: the outer ring must be all wall (True)")
    if ((~w).reshape(*w.shape[:-2], -1).sum(-1) < 2).any():
        raise ValueError("walls are not accepted: every maze needs at least 2 free cells")
    return w


# --------------------------------------------------------------------------- rendering

COLOURS: dict[str, tuple[int, int, int]] = {
    "wall": (40, 40, 48),
    "free": (235, 235, 228),
    "agent": (30, 110, 230),
    "goal": (40, 170, 60),
}


def render_ansi(walls: np.ndarray, agent: tuple[int, int], goal: tuple[int, int]) -> str:
    """Text grid: ``#`` wall, ``.`` free, ``A`` agent, ``G`` goal; one line per row."""
    chars = np.where(walls, "#", ".")
    chars[goal] = "G"
    chars[agent] = "A"
    return "\n".join("".join(row) for row in chars) + "\n"


def render_rgb(
    walls: np.ndarray, agent: tuple[int, int], goal: tuple[int, int], cell_px: int = 16
) -> np.ndarray:
    """Picture of the maze: uint8 ``(S * cell_px, S * cell_px, 3)``.

    Walls dark, free cells light, the goal a green square, the agent a blue square (drawn with a
    light border so that both stay visible at a glance).
    """
    img = np.where(walls[..., None], COLOURS["wall"], COLOURS["free"]).astype(np.uint8)
    img = np.repeat(np.repeat(img, cell_px, axis=0), cell_px, axis=1)
    m = max(1, cell_px // 8)
    for cell, name in ((goal, "goal"), (agent, "agent")):
        r, c = cell
        img[r * cell_px + m:(r + 1) * cell_px - m, c * cell_px + m:(c + 1) * cell_px - m] = (
            COLOURS[name]
        )
    return img
