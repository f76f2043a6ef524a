"""Property tests (hypothesis) of the maze rules, over sizes, view sizes, penalties and both
layouts, for the single env and the vector env (two separate implementations).

Checked at every step: the agent is never in a wall; the goal is never a wall or the start; a
reward comes only on entering the goal (and a wall bump costs the penalty); a teleport lands on
a free cell that is not the goal; the observed window equals the grid around the agent; the
other observation slots hold what they should.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.maze import MOVES, start_cell

SETTINGS = settings(max_examples=30, deadline=None)

options = st.fixed_dictionaries(
    {
        "size": st.sampled_from([5, 7, 9, 11, 13, 15]),
        "view_size": st.sampled_from([1, 3, 5, 7]),
        "layout": st.sampled_from(["grid", "random"]),
        "wall_penalty": st.sampled_from([0.0, 0.5]),
        "episode_length": st.integers(1, 40),
    }
)


def window_around(walls: np.ndarray, cell: tuple[int, int], v: int) -> np.ndarray:
    """Reference: the v x v window of wall flags centred on ``cell``, outside the grid = 1."""
    size, h = walls.shape[0], v // 2
    out = np.ones((v, v), dtype=np.float32)
    for i in range(v):
        for j in range(v):
            r, c = cell[0] - h + i, cell[1] - h + j
            if 0 <= r < size and 0 <= c < size:
                out[i, j] = float(walls[r, c])
    return out.ravel()


def check_observation(obs, walls, agent, t, T, last_reward, last_action, v) -> None:
    lay = envs.ObsLayout(v)
    np.testing.assert_array_equal(obs[lay.window], window_around(walls, agent, v))
    assert obs[lay.unused] == 0.0 and obs[lay.bias] == 1.0
    assert obs[lay.time] == np.float32(t / T)
    assert obs[lay.last_reward] == np.float32(last_reward)
    onehot = np.zeros(4, dtype=np.float32)
    onehot[last_action] = 1.0
    np.testing.assert_array_equal(obs[lay.prev_action], onehot)


def check_transition(walls, before, goal, action, after, new_goal, reward, opts) -> None:
    """One step of one maze against the rules."""
    assert not walls[after], "agent in a wall"
    assert new_goal == goal, "the goal moved within an episode"
    dr, dc = MOVES[action]
    target = (before[0] + dr, before[1] + dc)
    if walls[target]:
        assert after == before and reward == -opts["wall_penalty"]
    elif target == goal:
        assert reward == 10.0, "entering the goal must pay"
        assert after != goal and not walls[after], "teleport into the goal or a wall"
    else:
        assert after == target and reward == 0.0, "a reward without entering the goal"


def check_episode_start(walls, agent, goal, layout) -> None:
    start = start_cell(walls.shape[0], layout)
    assert agent == start and not walls[start]
    assert not walls[goal] and goal != start


@SETTINGS
@given(opts=options, seed=st.integers(0, 2**31 - 1),
       actions=st.lists(st.integers(0, 3), min_size=1, max_size=80))
def test_single_env_rules(opts, seed, actions):
    env = envs.WarpMazeEnv(**opts)
    obs, info = env.reset(seed=seed)
    T, v = opts["episode_length"], opts["view_size"]
    walls = env.walls
    agent, goal = tuple(info["agent_cell"]), tuple(info["goal_cell"])
    check_episode_start(walls, agent, goal, opts["layout"])
    check_observation(obs, walls, agent, 0, T, 0.0, 0, v)
    for a in actions:
        if env.t == T:
            obs, info = env.reset()
            walls = env.walls
            agent, goal = tuple(info["agent_cell"]), tuple(info["goal_cell"])
            check_episode_start(walls, agent, goal, opts["layout"])
            continue
        obs, reward, terminated, truncated, info = env.step(a)
        after, new_goal = tuple(info["agent_cell"]), tuple(info["goal_cell"])
        check_transition(walls, agent, goal, a, after, new_goal, reward, opts)
        check_observation(obs, walls, after, env.t, T, reward, a, v)
        assert not terminated and truncated == (env.t == T)
        agent = after


@SETTINGS
@given(opts=options, seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4),
       steps=st.integers(1, 80), same_step=st.booleans())
def test_vector_env_rules(opts, seed, n, steps, same_step):
    mode = "SameStep" if same_step else "NextStep"
    vec = envs.WarpMazeVectorEnv(n, autoreset_mode=mode, **opts)
    obs, info = vec.reset(seed=seed)
    T, v = opts["episode_length"], opts["view_size"]
    rng = np.random.default_rng(seed)

    def start_episode(obs, info):
        walls = vec.walls.copy()
        for i in range(n):
            agent, goal = tuple(info["agent_cell"][i]), tuple(info["goal_cell"][i])
            check_episode_start(walls[i], agent, goal, opts["layout"])
            check_observation(obs[i], walls[i], agent, 0, T, 0.0, 0, v)
        return walls, info["agent_cell"].copy(), info["goal_cell"].copy()

    walls, agents, goals = start_episode(obs, info)
    pending_reset = False
    for _ in range(steps):
        actions = rng.integers(0, 4, n)
        obs, reward, terminated, truncated, info = vec.step(actions)
        assert not terminated.any()
        if pending_reset:  # NEXT_STEP: this step was the reset
            assert not reward.any() and not truncated.any()
            walls, agents, goals = start_episode(obs, info)
            pending_reset = False
            continue
        final_obs = info["final_obs"] if same_step and truncated.any() else obs
        final_info = info["final_info"] if same_step and truncated.any() else info
        for i in range(n):
            after = tuple(final_info["agent_cell"][i])
            check_transition(walls[i], tuple(agents[i]), tuple(goals[i]), actions[i],
                             after, tuple(final_info["goal_cell"][i]), reward[i], opts)
            t = T if truncated.any() else vec.t
            check_observation(final_obs[i], walls[i], after, t, T, reward[i], actions[i], v)
        assert truncated.all() or not truncated.any()  # lockstep
        if truncated.any():
            if same_step:
                walls, agents, goals = start_episode(obs, info)
            else:
                pending_reset = True
        else:
            agents = info["agent_cell"].copy()
