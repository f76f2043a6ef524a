"""WarpMaze envs: registration, options, spaces, seeding, truncation, info, errors, renders,
Gymnasium's and SB3's env checkers, and an SB3 A2C run."""

from __future__ import annotations

import subprocess
import sys
import warnings

import matplotlib

matplotlib.use("Agg")

import gymnasium
import numpy as np
import pytest
import torch

import envs
from envs.maze import COLOURS, grid_walls, start_cell


def random_actions(seed: int, n: int, shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=(n, *shape))


def rollout(env: gymnasium.Env, seed: int, actions: np.ndarray) -> list:
    """Observations, rewards and info cells of one seeded episode prefix."""
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, info["agent_cell"], info["goal_cell"])]
    for a in actions:
        obs, r, _, _, info = env.step(int(a))
        out.append((obs, r, info["agent_cell"], info["goal_cell"]))
    return out


# --------------------------------------------------------------------------- registration


def test_import_registers_both_ids_idempotently():
    assert set(envs.ENV_IDS) == {"WarpMaze-v0", "WarpMazeRandom-v0"}
    envs.register_envs()  # a second registration is a no-op, not an error or a warning
    for env_id, layout in envs.ENV_IDS.items():
        spec = gymnasium.spec(env_id)
        assert spec.vector_entry_point == "envs.vector_env:WarpMazeVectorEnv"
        env = gymnasium.make(env_id)
        assert isinstance(env.unwrapped, envs.WarpMazeEnv)
        assert env.unwrapped.config.layout == layout
        env.close()


def test_make_with_module_prefix_needs_no_prior_import():
    code = (
        "import sys, gymnasium\n"
        "assert 'envs' not in sys.modules\n"
        "env = gymnasium.make('envs:WarpMaze-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert obs.shape == (17,), obs.shape\n"
        "env = gymnasium.make('envs:WarpMazeRandom-v0')\n"
        "assert env.unwrapped.config.layout == 'random'\n"
        "assert 'torch' not in sys.modules  # import envs stays light\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("env_id", ["WarpMaze-v0", "WarpMazeRandom-v0"])
def test_make_vec_returns_the_numpy_vector_env(env_id):
    vec = gymnasium.make_vec(env_id, num_envs=5, size=9)
    assert isinstance(vec, envs.WarpMazeVectorEnv)
    assert vec.num_envs == 5 and vec.config.size == 9
    assert vec.config.layout == envs.ENV_IDS[env_id]
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (5, 17) and obs.dtype == np.float32
    same = gymnasium.make_vec(env_id, num_envs=2, autoreset_mode="SameStep")
    assert same.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP


def test_exports():
    assert envs.TorchMazeBatch.__name__ == "TorchMazeBatch"
    assert issubclass(envs.WarpMazeVectorEnv, gymnasium.vector.VectorEnv)
    assert issubclass(envs.WarpMazeEnv, gymnasium.Env)


# --------------------------------------------------------------------------- options


BAD_OPTIONS = [
    ("size", 4), ("size", 3), ("size", 12), ("size", 13.0), ("size", "13"), ("size", True),
    ("episode_length", 0), ("episode_length", -5), ("episode_length", 2.5),
    ("reward", float("nan")), ("reward", float("inf")), ("reward", "10"),
    ("wall_penalty", -0.1), ("wall_penalty", float("nan")),
    ("view_size", 0), ("view_size", 2), ("view_size", 4), ("view_size", 3.0),
    ("layout", "maze"), ("layout", None),
]


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS)
def test_invalid_options_raise_naming_value_and_accepted(name, value):
    for make in (
        lambda: envs.WarpMazeEnv(**{name: value}),
        lambda: envs.WarpMazeVectorEnv(2, **{name: value}),
        lambda: envs.TorchMazeBatch(2, **{name: value}),
    ):
        with pytest.raises(ValueError, match="expected") as err:
            make()
        assert f"{name}={value!r}" in str(err.value)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "4"])
def test_invalid_num_envs(value):
    for cls in (envs.WarpMazeVectorEnv, envs.TorchMazeBatch):
        with pytest.raises(ValueError, match=r"num_envs=.*expected an integer >= 1"):
            cls(value)


def test_invalid_render_and_autoreset_modes():
    with pytest.raises(ValueError, match=r"render_mode='video'.*expected"):
        envs.WarpMazeEnv(render_mode="video")
    with pytest.raises(ValueError, match=r"render_mode='human'.*expected"):
        envs.WarpMazeVectorEnv(2, render_mode="human")
    for mode in ("Disabled", "bogus"):
        with pytest.raises(ValueError, match=f"autoreset_mode='{mode}'.*expected"):
            envs.WarpMazeVectorEnv(2, autoreset_mode=mode)


def test_valid_options_are_used():
    env = envs.WarpMazeEnv(size=7, episode_length=9, reward=3.0, wall_penalty=0.5, view_size=5)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (25 + 8,)
    assert env.walls.shape == (7, 7)
    assert env.config.episode_length == 9 and env.config.reward == 3.0


# --------------------------------------------------------------------------- spaces and layout


@pytest.mark.parametrize("view_size", [1, 3, 5, 7])
def test_spaces(view_size):
    env = envs.WarpMazeEnv(view_size=view_size, wall_penalty=2.0)
    space = env.observation_space
    assert isinstance(space, gymnasium.spaces.Box)
    assert space.shape == (view_size**2 + 8,) == (envs.obs_dim(view_size),)
    assert space.dtype == np.float32
    assert np.isfinite(space.low).all() and np.isfinite(space.high).all()
    assert env.action_space == gymnasium.spaces.Discrete(4)
    lay = env.obs_layout
    assert (space.low[lay.last_reward], space.high[lay.last_reward]) == (-2.0, 10.0)
    obs, _ = env.reset(seed=0)
    assert space.contains(obs)
    for a in random_actions(0, 300):
        obs, *_ , truncated, _ = env.step(int(a))
        assert space.contains(obs)
        if truncated:
            obs, _ = env.reset()
    vec = envs.WarpMazeVectorEnv(3, view_size=view_size)
    assert vec.single_observation_space == space.__class__(
        vec.single_observation_space.low, vec.single_observation_space.high, dtype=np.float32
    )
    assert vec.observation_space.shape == (3, view_size**2 + 8)
    assert vec.action_space == gymnasium.spaces.MultiDiscrete([4, 4, 4])


def test_default_observation_is_the_papers_17_inputs():
    env = envs.WarpMazeEnv()
    obs, info = env.reset(seed=3)
    assert obs.shape == (17,)
    walls = env.walls
    r, c = info["agent_cell"]
    assert (r, c) == (6, 6)
    np.testing.assert_array_equal(obs[0:9], walls[r - 1:r + 2, c - 1:c + 2].ravel())
    assert obs[9] == 0.0 and obs[10] == 1.0 and obs[11] == 0.0 and obs[12] == 0.0
    np.testing.assert_array_equal(obs[13:17], [1, 0, 0, 0])  # action 0 at t = 0
    # move right, then check the slots again
    obs, reward, *_ = env.step(3)
    r, c = env.agent_cell
    assert (r, c) == (6, 7)
    np.testing.assert_array_equal(obs[0:9], walls[r - 1:r + 2, c - 1:c + 2].ravel())
    assert obs[9] == 0.0 and obs[10] == 1.0
    assert obs[11] == np.float32(1 / 200) and obs[12] == reward == 0.0
    np.testing.assert_array_equal(obs[13:17], [0, 0, 0, 1])


def test_grid_layout_matches_the_paper():
    walls = grid_walls(13)
    assert (~walls).sum() == 97
    assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
    assert not walls[6, 6]  # the centre is free
    for r in range(1, 12):
        for c in range(1, 12):
            expected = r % 2 == 0 and c % 2 == 0 and (r, c) != (6, 6)
            assert walls[r, c] == expected
    assert start_cell(13, "grid") == (6, 6)
    assert start_cell(13, "random") == (5, 5) and start_cell(11, "random") == (5, 5)


# --------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("layout", ["grid", "random"])
def test_seeding_reproduces_episodes(layout):
    actions = random_actions(1, 150)
    env = envs.WarpMazeEnv(layout=layout, size=7)  # small: the goal is reached often
    first, second = rollout(env, 42, actions), rollout(env, 42, actions)
    assert sum(step[1] for step in first) > 0  # the run includes goal hits and teleports
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_array_equal(a[3], b[3])
    goals = {tuple(rollout(env, seed, actions[:1])[0][3]) for seed in range(20)}
    assert len(goals) > 5  # different seeds, different goals


def test_random_layout_draws_a_new_maze_per_episode():
    env = envs.WarpMazeEnv(layout="random")
    env.reset(seed=0)
    a = env.walls
    env.reset()
    b = env.walls
    env.reset(seed=0)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(env.walls, a)
    vec = envs.WarpMazeVectorEnv(4, layout="random")
    vec.reset(seed=0)
    w = vec.walls
    assert all(not np.array_equal(w[0], w[i]) for i in (1, 2, 3))


def test_vector_and_torch_seeding():
    actions = random_actions(2, 60, (6,))
    runs = []
    for _ in range(2):
        vec = envs.WarpMazeVectorEnv(6, layout="random", size=7)
        obs, _ = vec.reset(seed=7)
        seq = [obs] + [vec.step(a)[0] for a in actions]
        runs.append(np.stack(seq))
    np.testing.assert_array_equal(runs[0], runs[1])
    runs = []
    for _ in range(2):
        batch = envs.TorchMazeBatch(6, layout="random", size=7)
        obs = batch.reset(seed=7)
        seq = [obs] + [batch.step(torch.as_tensor(a))[0] for a in actions]
        runs.append(torch.stack(seq))
    assert torch.equal(runs[0], runs[1])


# --------------------------------------------------------------------------- truncation, info


def test_truncation_at_episode_length():
    env = envs.WarpMazeEnv(episode_length=7)
    env.reset(seed=0)
    for t in range(1, 8):
        obs, _, terminated, truncated, _ = env.step(0)
        assert terminated is False
        assert truncated is (t == 7)
        assert obs[env.obs_layout.time] == np.float32(t / 7)
    with pytest.raises(RuntimeError, match=r"episode ended at t=7.*reset\(\)"):
        env.step(0)
    env.reset()
    env.step(0)  # fine again after a reset


def test_gymnasium_make_truncates_too():
    env = gymnasium.make("WarpMaze-v0", episode_length=5)
    env.reset(seed=0)
    flags = [env.step(1)[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]


def test_info_carries_agent_and_goal_cells():
    env = envs.WarpMazeEnv(size=7)
    _, info = env.reset(seed=5)
    assert set(info) == {"agent_cell", "goal_cell"}
    for key in info:
        assert info[key].shape == (2,) and info[key].dtype == np.int64
    walls = env.walls
    for a in random_actions(3, 100):
        *_, info = env.step(int(a))
        assert not walls[tuple(info["agent_cell"])] and not walls[tuple(info["goal_cell"])]
        assert tuple(info["agent_cell"]) == env.agent_cell
        assert tuple(info["goal_cell"]) == env.goal_cell


def test_vector_info_matches_sync_vector_env_structure():
    vec = envs.WarpMazeVectorEnv(3)
    sync = gymnasium.vector.SyncVectorEnv([lambda: envs.WarpMazeEnv()] * 3)
    _, info_v = vec.reset(seed=0)
    _, info_s = sync.reset(seed=0)
    assert set(info_v) == set(info_s) == {"agent_cell", "_agent_cell", "goal_cell", "_goal_cell"}
    a = np.array([0, 1, 2])
    info_v, info_s = vec.step(a)[4], sync.step(a)[4]
    for key in info_s:
        assert info_v[key].shape == info_s[key].shape
        assert info_v[key].dtype.kind == info_s[key].dtype.kind


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("action", [4, -1, 1.5, "1", True, np.array([1]), np.float32(2), None])
def test_single_env_rejects_bad_actions(action):
    env = envs.WarpMazeEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action=.*expected an integer in \[0, 4\)"):
        env.step(action)


def test_single_env_accepts_numpy_integer_actions():
    env = envs.WarpMazeEnv()
    env.reset(seed=0)
    for action in (np.int64(1), np.uint8(2), np.array(3), 0):
        env.step(action)


@pytest.mark.parametrize(
    "actions",
    [np.array([0, 1, 4]), np.array([0, -1, 2]), np.array([0.0, 1.0, 2.0]), np.array([0, 1]),
     np.array([[0, 1, 2]]), np.array([0, 1, 2], dtype=np.int8) - 3, [0, 1, 5]],
)
def test_vector_env_rejects_bad_actions(actions):
    vec = envs.WarpMazeVectorEnv(3)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions=.*expected integers in \[0, 4\) of shape"):
        vec.step(actions)


def test_vector_env_accepts_lists_and_small_int_dtypes():
    vec = envs.WarpMazeVectorEnv(3)
    vec.reset(seed=0)
    vec.step([0, 1, 2])
    vec.step(np.array([3, 2, 1], dtype=np.uint8))
    vec.step(np.array([3, 2, 1], dtype=np.int32))


def test_torch_batch_rejects_bad_actions():
    batch = envs.TorchMazeBatch(3)
    batch.reset(seed=0)
    for actions in (torch.tensor([0, 1, 4]), torch.tensor([0, -1, 2]), torch.tensor([0.0, 1, 2]),
                    torch.tensor([0, 1]), np.array([0, 1, 2])):
        with pytest.raises(ValueError, match=r"actions=.*expected an integer tensor"):
            batch.step(actions)


def test_step_before_reset_and_bad_reset_options():
    with pytest.raises(RuntimeError, match=r"before reset\(\)"):
        envs.WarpMazeEnv().step(0)
    with pytest.raises(RuntimeError, match=r"before reset\(\)"):
        envs.WarpMazeVectorEnv(2).step(np.array([0, 0]))
    with pytest.raises(RuntimeError, match=r"before reset\(\)"):
        envs.TorchMazeBatch(2).step(torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"\['foo'\] are not accepted"):
        envs.WarpMazeEnv().reset(options={"foo": 1})
    with pytest.raises(ValueError, match=r"\['reset_mask'\] are not accepted"):
        envs.WarpMazeVectorEnv(2).reset(options={"reset_mask": np.array([True, False])})
    envs.WarpMazeEnv().reset(options={})  # an empty dict is fine (Gymnasium's checker uses it)


def test_torch_batch_step_after_done_raises():
    batch = envs.TorchMazeBatch(2, episode_length=3)
    batch.reset(seed=0)
    dones = [batch.step(torch.tensor([0, 1]))[2] for _ in range(3)]
    assert dones == [False, False, True]
    with pytest.raises(RuntimeError, match=r"episode ended at t=3.*reset\(\)"):
        batch.step(torch.tensor([0, 1]))


def test_set_state_validates():
    env = envs.WarpMazeEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"agent=\(2, 2\) is not accepted: expected a free cell"):
        env.set_state(agent=(2, 2))
    with pytest.raises(ValueError, match="must differ"):
        env.set_state(agent=(1, 1), goal=(1, 1))
    vec = envs.WarpMazeVectorEnv(2)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="expected free cells"):
        vec.set_state(goal=np.array([[2, 2], [1, 1]]))
    bad = grid_walls(13).copy()
    bad[0, 3] = False
    with pytest.raises(ValueError, match="outer ring"):
        vec.set_state(walls=bad, agent=np.array([[1, 1]] * 2), goal=np.array([[1, 3]] * 2))


# --------------------------------------------------------------------------- renders


def test_render_ansi():
    env = envs.WarpMazeEnv(render_mode="ansi", size=9)
    env.reset(seed=4)
    text = env.render()
    lines = text.splitlines()
    assert len(lines) == 9 and all(len(line) == 9 for line in lines)
    walls = env.walls
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            if (r, c) == env.agent_cell:
                assert ch == "A"
            elif (r, c) == env.goal_cell:
                assert ch == "G"
            else:
                assert ch == ("#" if walls[r, c] else ".")


@pytest.mark.parametrize("layout", ["grid", "random"])
def test_render_rgb_array(layout):
    env = envs.WarpMazeEnv(render_mode="rgb_array", layout=layout)
    env.reset(seed=2)
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    px = img.shape[0] // 13
    assert img.shape == (13 * px, 13 * px, 3) and px >= 8

    def centre(cell):
        return tuple(img[cell[0] * px + px // 2, cell[1] * px + px // 2])

    walls = env.walls
    assert centre(env.agent_cell) == COLOURS["agent"]
    assert centre(env.goal_cell) == COLOURS["goal"]
    assert centre((0, 0)) == COLOURS["wall"]
    free = [tuple(c) for c in np.argwhere(~walls) if tuple(c) not in (env.agent_cell,
                                                                       env.goal_cell)]
    assert all(centre(c) == COLOURS["free"] for c in free)
    assert len({COLOURS[k] for k in COLOURS}) == 4  # four distinguishable colours


def test_render_human_with_a_non_interactive_backend():
    env = envs.WarpMazeEnv(render_mode="human")
    env.reset(seed=0)
    assert env.render() is None
    env.step(1)
    env.close()


def test_vector_render_one_frame_per_maze():
    vec = envs.WarpMazeVectorEnv(3, render_mode="rgb_array", layout="random")
    vec.reset(seed=0)
    frames = vec.render()
    assert len(frames) == 3 and all(f.shape == (208, 208, 3) for f in frames)
    texts = envs.WarpMazeVectorEnv(2, render_mode="ansi")
    texts.reset(seed=0)
    assert all(t.count("A") == 1 and t.count("G") == 1 for t in texts.render())


def test_render_without_mode_warns_and_returns_none():
    env = envs.WarpMazeEnv()
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None


# --------------------------------------------------------------------------- checkers, SB3


@pytest.mark.parametrize("env_id", ["WarpMaze-v0", "WarpMazeRandom-v0"])
def test_gymnasium_check_env(env_id):
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker must not find anything to warn about
        check_env(env.unwrapped)
    env.close()


def test_sb3_check_env():
    from stable_baselines3.common.env_checker import check_env

    for layout in ("grid", "random"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(envs.WarpMazeEnv(layout=layout), warn=True)


def test_sb3_a2c_learns_a_few_thousand_steps():
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    torch.set_num_threads(1)
    vec = make_vec_env("WarpMaze-v0", n_envs=4, seed=0)
    model = A2C("MlpPolicy", vec, seed=0, device="cpu")
    model.set_logger(Logger(folder=None, output_formats=[]))  # no SB3-<date> folder in /tmp
    model.learn(total_timesteps=3000)
    assert model.num_timesteps >= 3000
    obs = vec.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (4,) and set(actions.tolist()) <= {0, 1, 2, 3}
    vec.close()
