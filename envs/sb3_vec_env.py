"""``WarpMazeSB3VecEnv``: the numpy-batched maze in Stable-Baselines3's ``VecEnv`` convention.

SB3 algorithms take a ``VecEnv``; the usual one, ``make_vec_env`` (``n_envs`` Gymnasium envs,
each in a ``Monitor``, stepped one by one in a ``DummyVecEnv``), spends most of its time in
Python per maze and in deep copies of every info dict. This one steps all mazes in one
:class:`envs.vector_env.WarpMazeVectorEnv` call (the vector entry point of ``WarpMaze-v0``,
tested step by step against the single env) and speaks SB3's convention:

* a finished maze is reset in the same step (the batch runs in ``AutoresetMode.SAME_STEP``);
  its last observation is in ``info["terminal_observation"]``;
* ``info["TimeLimit.truncated"]`` says the episode was cut by the clock (always, here);
* ``info["episode"] = {"r": return, "l": length, "t": seconds}``, as SB3's ``Monitor`` writes
  it, so SB3's logging and callbacks see episode returns.

The Gymnasium env's own infos (agent and goal cells) are not passed on. Seeding: SB3's
``env.seed(s)`` (which ``model = PPO(..., seed=s)`` calls) seeds the next reset of the whole
batch with ``s``. With one maze and the same seed it is exactly
``DummyVecEnv([lambda: Monitor(gymnasium.make("WarpMaze-v0"))])`` (``tests/test_baselines_sb3.py``).

Example::

    from sb3_contrib import RecurrentPPO
    from envs.sb3_vec_env import WarpMazeSB3VecEnv

    env = WarpMazeSB3VecEnv(30)                 # 30 mazes of WarpMaze-v0
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=200, seed=0).learn(600_000)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from envs.vector_env import WarpMazeVectorEnv


class WarpMazeSB3VecEnv(VecEnv):
    """``num_envs`` mazes as an SB3 ``VecEnv``, stepped together by numpy.

    Args:
        num_envs: number of mazes ``N`` (>= 1).
        **maze_kwargs: passed to :class:`envs.vector_env.WarpMazeVectorEnv` (``size``,
            ``episode_length``, ``reward``, ``wall_penalty``, ``view_size``, ``layout``,
            ``render_mode``); ``autoreset_mode`` is fixed to ``SAME_STEP``.

    ``reset()`` returns float32 observations ``(N, D)``; ``step(actions)`` takes int actions
    ``(N,)`` and returns observations ``(N, D)``, float32 rewards ``(N,)``, bool dones ``(N,)``
    and a list of ``N`` info dicts (empty except where a maze's episode ended).
    """

    def __init__(self, num_envs: int, **maze_kwargs: Any) -> None:
        if "autoreset_mode" in maze_kwargs:
            raise ValueError("autoreset_mode is not accepted: SB3's VecEnv convention needs "
                             "AutoresetMode.SAME_STEP, which this class always uses")
        self.batch = WarpMazeVectorEnv(num_envs, autoreset_mode=AutoresetMode.SAME_STEP,
                                       **maze_kwargs)
        super().__init__(num_envs, self.batch.single_observation_space,
                         self.batch.single_action_space)
        self.actions = np.zeros(num_envs, dtype=np.int64)
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.start = time.perf_counter()

    def reset(self) -> np.ndarray:
        obs, _ = self.batch.reset(seed=self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        self.returns[:] = 0.0
        self.lengths[:] = 0
        return obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self.batch.step(self.actions)
        dones = terminated | truncated
        self.returns += rewards
        self.lengths += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i] = {
                "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                "terminal_observation": info["final_obs"][i].copy(),
                "episode": {"r": round(float(self.returns[i]), 6), "l": int(self.lengths[i]),
                            "t": round(time.perf_counter() - self.start, 6)},
            }
            self.returns[i] = 0.0
            self.lengths[i] = 0
        return obs.copy(), rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.batch.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.batch.render()
        return list(frames) if frames is not None else [None] * self.num_envs

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batch env's attribute, once per index (the mazes share one env)."""
        return [getattr(self.batch, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise NotImplementedError("the mazes of this VecEnv share one batch env: set "
                                  f"{attr_name!r} on .batch (a WarpMazeVectorEnv) instead")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        raise NotImplementedError("the mazes of this VecEnv share one batch env: call "
                                  f"{method_name!r} on .batch (a WarpMazeVectorEnv) instead")

    def env_is_wrapped(self, wrapper_class: type[gymnasium.Wrapper],
                       indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
