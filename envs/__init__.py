"""Gymnasium mazes of the WarpGrad maze-navigation task (REFERENCE.md, "Maze navigation").

``import envs`` registers, idempotently:

* ``WarpMaze-v0``: the paper's 13x13 pillar grid (:class:`WarpMazeEnv`, ``layout="grid"``);
* ``WarpMazeRandom-v0``: a new random perfect maze every episode (``layout="random"``).

Both have a ``vector_entry_point``, so ``gymnasium.make_vec(id, num_envs=N)`` returns the
numpy-batched :class:`WarpMazeVectorEnv`. ``gymnasium.make("envs:WarpMaze-v0")`` works without a
prior import (Gymnasium imports the module named before the colon). :class:`TorchMazeBatch`
(torch tensors, for GPU training) and :class:`WarpMazeSB3VecEnv` (the batch in Stable-Baselines3's
``VecEnv`` convention) are imported lazily so that ``import envs`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium

from envs.maze import LAYOUTS, MazeConfig, ObsLayout, obs_dim
from envs.maze_env import WarpMazeEnv
from envs.vector_env import WarpMazeVectorEnv

if TYPE_CHECKING:
    from envs.sb3_vec_env import WarpMazeSB3VecEnv
    from envs.torch_maze import TorchMazeBatch

__all__ = [
    "ENV_IDS",
    "LAYOUTS",
    "MazeConfig",
    "ObsLayout",
    "TorchMazeBatch",
    "WarpMazeEnv",
    "WarpMazeSB3VecEnv",
    "WarpMazeVectorEnv",
    "obs_dim",
    "register_envs",
]

ENV_IDS: dict[str, str] = {"WarpMaze-v0": "grid", "WarpMazeRandom-v0": "random"}
"""Registered ids and their layouts."""


def register_envs() -> None:
    """Register every id of :data:`ENV_IDS` that is not registered yet (safe to call twice)."""
    for env_id, layout in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="envs.maze_env:WarpMazeEnv",
                vector_entry_point="envs.vector_env:WarpMazeVectorEnv",
                kwargs={"layout": layout},
            )


def __getattr__(name: str) -> Any:
    if name == "TorchMazeBatch":
        from envs.torch_maze import TorchMazeBatch

        return TorchMazeBatch
    if name == "WarpMazeSB3VecEnv":
        from envs.sb3_vec_env import WarpMazeSB3VecEnv

        return WarpMazeSB3VecEnv
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


register_envs()
