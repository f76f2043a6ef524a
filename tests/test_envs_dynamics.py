"""WarpMaze dynamics: the three implementations agree step by step; autoreset modes; random
mazes are perfect; a uniformly random policy earns what the Markov chain says (about 5.4)."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import envs
from envs.maze import MOVES, carve_random_mazes, grid_walls, start_cell


class Stream:
    """A fixed sequence of uniforms, handed out in order (stands in for a generator)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64).ravel()
        self.used = 0

    def take(self, n: int) -> np.ndarray:
        out = self.values[self.used:self.used + n]
        assert out.size == n, "stream exhausted"
        self.used += n
        return out


def inject(env, stream: Stream) -> None:
    """Make ``env`` draw its goal and teleport uniforms from ``stream``."""
    if isinstance(env, envs.WarpMazeEnv):
        env._uniform = lambda: float(stream.take(1)[0])
    elif isinstance(env, envs.WarpMazeVectorEnv):
        env._uniform = stream.take
    else:  # TorchMazeBatch draws the episode's uniforms at reset: replace those still unused
        rest = env._uniforms[env._draws:]
        rest.copy_(torch.as_tensor(stream.take(rest.numel())).view_as(rest))


def next_to(walls: np.ndarray, goals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each maze, a random free cell next to its goal, int ``(N, 2)``."""
    cells = []
    for w, (r, c) in zip(walls, goals, strict=True):
        near = [(r + dr, c + dc) for dr, dc in MOVES if not w[r + dr, c + dc]]
        cells.append(near[rng.integers(len(near))])
    return np.array(cells)


OPTION_SETS = [
    dict(layout="grid"),
    dict(layout="grid", size=7, view_size=5, wall_penalty=0.5, reward=2.5),
    dict(layout="random"),
    dict(layout="random", size=9, view_size=1, wall_penalty=1.0),
    dict(layout="random", size=11, view_size=7),
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_single_env_equals_vector_env_of_one_with_the_same_seed(options):
    """Same seed, same actions: identical episodes, including resets and random mazes."""
    opts = dict(options, episode_length=40)
    single = envs.WarpMazeEnv(**opts)
    vec = envs.WarpMazeVectorEnv(1, **opts)
    o1, i1 = single.reset(seed=11)
    o2, i2 = vec.reset(seed=11)
    np.testing.assert_array_equal(o1, o2[0])
    hits = 0
    for step, a in enumerate(np.random.default_rng(0).integers(0, 4, 200)):
        if single.t == 40:  # NEXT_STEP: the vector env's next step is the reset
            o1, i1 = single.reset()
            o2, r2, _, tr2, i2 = vec.step(np.array([a]))
            assert r2[0] == 0 and not tr2[0]
            np.testing.assert_array_equal(single.walls, vec.walls[0])
        else:
            o1, r1, te1, tr1, i1 = single.step(int(a))
            o2, r2, te2, tr2, i2 = vec.step(np.array([a]))
            assert r1 == r2[0] and te1 == te2[0] and tr1 == tr2[0], step
            hits += r1 > 0
        np.testing.assert_array_equal(o1, o2[0])
        np.testing.assert_array_equal(i1["agent_cell"], i2["agent_cell"][0])
        np.testing.assert_array_equal(i1["goal_cell"], i2["goal_cell"][0])
    if options.get("size", 13) <= 9:
        assert hits > 0  # goal hits and teleports were compared too


@pytest.mark.parametrize("options", OPTION_SETS)
def test_vector_env_equals_n_single_envs_from_the_same_state(options):
    """N mazes in one vector env versus N single envs, driven from the same mazes, goals,
    positions, actions and uniforms."""
    N, T = 8, 30
    opts = dict(options, episode_length=T)
    vec = envs.WarpMazeVectorEnv(N, **opts)
    vec.reset(seed=1)
    walls = vec.walls.copy()
    rng = np.random.default_rng(2)
    agents = next_to(walls, vec.goal_cells, rng)  # so that goals are hit early and often
    vec.set_state(walls=walls, agent=agents, goal=vec.goal_cells)
    singles = []
    for i in range(N):
        env = envs.WarpMazeEnv(**opts)
        env.reset(seed=100 + i)
        env.set_state(walls=walls[i], agent=tuple(agents[i]), goal=tuple(vec.goal_cells[i]))
        singles.append(env)
    steps = T + (T if options["layout"] == "grid" else 0)  # the grid continues past a reset
    uniforms = rng.random((steps + 1, N))
    inject(vec, Stream(uniforms))
    for i, env in enumerate(singles):
        inject(env, Stream(uniforms[:, i]))
    hits = 0
    for t, a in enumerate(rng.integers(0, 4, (steps, N))):
        obs, reward, _, truncated, info = vec.step(a)
        for i, env in enumerate(singles):
            if t == T:  # NEXT_STEP reset of the vector env; the single envs reset too
                o, _ = env.reset()
                r, tr = 0.0, False
            else:
                o, r, _, tr, _ = env.step(int(a[i]))
            np.testing.assert_array_equal(obs[i], o, err_msg=f"t={t} maze {i}")
            assert reward[i] == r and truncated[i] == tr
            np.testing.assert_array_equal(info["agent_cell"][i], env.agent_cell)
            np.testing.assert_array_equal(info["goal_cell"][i], env.goal_cell)
        hits += np.count_nonzero(reward > 0)
    assert hits > 0


@pytest.mark.parametrize("options", OPTION_SETS)
def test_torch_batch_equals_vector_env(options):
    N, T = 16, 60
    opts = dict(options, episode_length=T)
    vec = envs.WarpMazeVectorEnv(N, **opts)
    vec.reset(seed=3)
    batch = envs.TorchMazeBatch(N, **opts)
    batch.reset(seed=4)
    rng = np.random.default_rng(5)
    agents = next_to(vec.walls, vec.goal_cells, rng)
    o_t = batch.set_state(walls=vec.walls, agent=agents, goal=vec.goal_cells)
    o_v = vec.set_state(agent=agents)
    np.testing.assert_array_equal(o_v, o_t.numpy())
    uniforms = rng.random((T, N))
    inject(vec, Stream(uniforms))
    inject(batch, Stream(uniforms))
    hits = 0
    for t, a in enumerate(rng.integers(0, 4, (T, N))):
        o_v, r_v, _, tr_v, info = vec.step(a)
        o_t, r_t, done = batch.step(torch.as_tensor(a))
        assert o_t.dtype == torch.float32 and r_t.dtype == torch.float32
        np.testing.assert_array_equal(o_v, o_t.numpy(), err_msg=f"t={t}")
        np.testing.assert_array_equal(r_v.astype(np.float32), r_t.numpy())
        assert done == tr_v.all() == (t == T - 1)
        np.testing.assert_array_equal(info["agent_cell"], batch.agent_cells.numpy())
        np.testing.assert_array_equal(info["goal_cell"], batch.goal_cells.numpy())
        hits += np.count_nonzero(r_v > 0)
    assert hits > 0


def test_torch_batch_reset_matches_the_rules():
    batch = envs.TorchMazeBatch(64, layout="random", size=9)
    obs = batch.reset(seed=0)
    assert obs.shape == (64, 17) and obs.dtype == torch.float32
    walls = batch.walls.numpy()
    goals, agents = batch.goal_cells.numpy(), batch.agent_cells.numpy()
    assert (agents == start_cell(9, "random")).all()
    assert not walls[np.arange(64), goals[:, 0], goals[:, 1]].any()
    assert (goals != agents).any(axis=1).all()
    assert len({tuple(g) for g in goals}) > 10
    assert len({w.tobytes() for w in walls}) == 64  # one maze each


# --------------------------------------------------------------------------- autoreset


def test_autoreset_next_step_and_same_step():
    T, N = 5, 4
    nxt = envs.WarpMazeVectorEnv(N, episode_length=T, size=7)
    same = envs.WarpMazeVectorEnv(N, episode_length=T, size=7, autoreset_mode="SameStep")
    assert same.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    o_n, _ = nxt.reset(seed=9)
    o_s, _ = same.reset(seed=9)
    np.testing.assert_array_equal(o_n, o_s)
    lay = nxt.obs_layout
    actions = np.random.default_rng(0).integers(0, 4, (3 * T, N))
    k = 0
    for _ in range(2):  # two episodes
        for t in range(1, T + 1):
            o_n, r_n, te_n, tr_n, i_n = nxt.step(actions[k])
            o_s, r_s, te_s, tr_s, i_s = same.step(actions[k])
            k += 1
            np.testing.assert_array_equal(r_n, r_s)
            assert not te_n.any() and not te_s.any()
            assert (tr_n == (t == T)).all() and (tr_s == (t == T)).all()
            if t < T:
                np.testing.assert_array_equal(o_n, o_s)
                assert "final_obs" not in i_s
        # the last step: NEXT_STEP returns the final observation; SAME_STEP the new episode's
        np.testing.assert_array_equal(i_s["final_obs"], o_n)
        assert i_s["_final_obs"].all() and i_s["_final_info"].all()
        np.testing.assert_array_equal(i_s["final_info"]["agent_cell"], i_n["agent_cell"])
        assert (o_n[:, lay.time] == 1.0).all() and (o_s[:, lay.time] == 0.0).all()
        # NEXT_STEP: the next step ignores the actions and resets
        o_n, r_n, te_n, tr_n, i_n = nxt.step(actions[k])
        assert not r_n.any() and not te_n.any() and not tr_n.any()
        np.testing.assert_array_equal(o_n, o_s)  # the same new episode
        np.testing.assert_array_equal(i_n["agent_cell"], i_s["agent_cell"])
        np.testing.assert_array_equal(i_n["goal_cell"], i_s["goal_cell"])
        assert (o_n[:, lay.prev_action.start] == 1).all() and (o_n[:, lay.last_reward] == 0).all()
        assert (i_n["agent_cell"] == start_cell(7)).all()


def test_vector_env_runs_in_lockstep():
    vec = envs.WarpMazeVectorEnv(6, episode_length=4)
    vec.reset(seed=0)
    for t in range(1, 5):
        *_, truncated, _ = vec.step(np.zeros(6, dtype=np.int64))
        assert truncated.all() if t == 4 else not truncated.any()
        assert vec.t == t


# --------------------------------------------------------------------------- mazes


@pytest.mark.parametrize("size", [5, 7, 9, 13, 15])
def test_random_mazes_are_perfect(size):
    k = (size - 1) // 2
    walls = carve_random_mazes(np.random.default_rng(size), 12, size)
    assert walls.shape == (12, size, size) and walls.dtype == bool
    start = start_cell(size, "random")
    for w in walls:
        assert w[0].all() and w[-1].all() and w[:, 0].all() and w[:, -1].all()
        free = {tuple(c) for c in np.argwhere(~w)}
        assert len(free) == 2 * k * k - 1 and start in free
        # connected: a breadth-first search from the start reaches every free cell
        seen, todo = {start}, deque([start])
        while todo:
            r, c = todo.popleft()
            for dr, dc in MOVES:
                nxt = (r + dr, c + dc)
                if nxt in free and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen == free
        # no loops: a connected graph is a tree iff it has one edge fewer than nodes
        edges = sum((r + 1, c) in free for r, c in free) + sum((r, c + 1) in free for r, c in free)
        assert edges == len(free) - 1
    # a 2x2 lattice has 4 spanning trees, 3x3 has 192, 4x4 already 100,352
    distinct = len({w.tobytes() for w in walls})
    assert distinct == 12 if size >= 9 else distinct > 1


def test_carving_is_reproducible_and_vectorised_consistently():
    a = carve_random_mazes(np.random.default_rng(0), 5, 13)
    b = carve_random_mazes(np.random.default_rng(0), 5, 13)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- random policy


def exact_random_policy_return(walls: np.ndarray, start: tuple[int, int], T: int,
                               reward: float) -> float:
    """Expected return of the uniformly random policy, by propagating the agent's
    distribution through the rules (goal uniform over free cells but the start; on entering the
    goal, reward and a uniform teleport to a free cell other than the goal)."""
    free = [tuple(c) for c in np.argwhere(~walls)]
    index = {c: i for i, c in enumerate(free)}
    F = len(free)
    move = np.zeros((F, F))
    for i, (r, c) in enumerate(free):
        for dr, dc in MOVES:
            move[i, index.get((r + dr, c + dc), i)] += 0.25
    goals = [index[c] for c in free if c != start]
    G = len(goals)
    p = np.zeros((G, F))
    p[:, index[start]] = 1.0
    rows = np.arange(G)
    hits = np.zeros(G)
    for _ in range(T):
        p = p @ move
        h = p[rows, goals].copy()
        hits += h
        p[rows, goals] = 0.0
        p += h[:, None] / (F - 1)  # teleport: uniform over the F - 1 other free cells
        p[rows, goals] -= h / (F - 1)
    return reward * hits.mean()


def test_exact_value_is_about_the_papers_5_4():
    value = exact_random_policy_return(grid_walls(13), (6, 6), 200, 10.0)
    assert 5.3 < value < 5.5, value


def test_random_policy_collects_about_5_4_per_episode():
    """32,768 episodes of 200 steps on 13x13. The sample mean must lie within 4 standard errors
    (computed from the sample) of the exact expectation; that expectation is itself 'about 5.4'
    (test above). A false alarm has probability about 6e-5; with SE ~ 0.04 the test detects a
    bias of ~0.2 reward per episode (4%)."""
    N, episodes_each = 8192, 4
    vec = envs.WarpMazeVectorEnv(N)
    vec.reset(seed=2024)
    rng = np.random.default_rng(2024)
    returns = []
    for _ in range(episodes_each):
        total = np.zeros(N)
        for _ in range(200):
            _, reward, _, truncated, _ = vec.step(rng.integers(0, 4, N))
            total += reward
        assert truncated.all()
        returns.append(total)
        vec.step(np.zeros(N, dtype=np.int64))  # NEXT_STEP reset
    returns = np.concatenate(returns)
    exact = exact_random_policy_return(grid_walls(13), (6, 6), 200, 10.0)
    se = returns.std(ddof=1) / math.sqrt(returns.size)
    assert se < 0.06
    assert abs(returns.mean() - exact) < 4 * se, (returns.mean(), exact, se)


def test_torch_random_policy_agrees_with_the_exact_value():
    B = 8192
    batch = envs.TorchMazeBatch(B)
    batch.reset(seed=7)
    gen = torch.Generator().manual_seed(7)
    total = torch.zeros(B)
    done = False
    while not done:
        _, reward, done = batch.step(torch.randint(0, 4, (B,), generator=gen))
        total += reward
    exact = exact_random_policy_return(grid_walls(13), (6, 6), 200, 10.0)
    se = total.std().item() / math.sqrt(B)
    assert abs(total.mean().item() - exact) < 4 * se, (total.mean().item(), exact, se)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layout", ["grid", "random"])
def test_torch_batch_on_cuda_equals_the_vector_env(layout):
    N, T = 256, 50
    vec = envs.WarpMazeVectorEnv(N, layout=layout, episode_length=T, wall_penalty=0.5)
    vec.reset(seed=0)
    batch = envs.TorchMazeBatch(N, layout=layout, episode_length=T, wall_penalty=0.5,
                                device="cuda")
    obs = batch.reset(seed=0)
    assert obs.device.type == "cuda"
    rng = np.random.default_rng(1)
    agents = next_to(vec.walls, vec.goal_cells, rng)
    batch.set_state(walls=vec.walls, agent=agents, goal=vec.goal_cells)
    vec.set_state(agent=agents)
    uniforms = rng.random((T, N))
    inject(vec, Stream(uniforms))
    inject(batch, Stream(uniforms))
    for a in rng.integers(0, 4, (T, N)):
        o_v, r_v, *_ = vec.step(a)
        o_t, r_t, _ = batch.step(torch.as_tensor(a, device="cuda"))
        np.testing.assert_array_equal(o_v, o_t.cpu().numpy())
        np.testing.assert_array_equal(r_v.astype(np.float32), r_t.cpu().numpy())
    # and a seeded reset draws goals on the GPU (its own generator again) that obey the rules
    batch.reset(seed=3)
    walls = batch.walls.cpu().numpy()
    goals = batch.goal_cells.cpu().numpy()
    assert not walls[np.arange(N), goals[:, 0], goals[:, 1]].any()


@pytest.mark.parametrize("layout", ["grid", "random"])
def test_torch_batch_reset_with_group_seeds_plays_each_group_as_its_own_batch(layout):
    # A population on one device: group k of a batch reset with seeds [s0, s1, s2] must play
    # exactly what a batch of its size reset with s_k plays (not a shared or shifted stream).
    G, B, T, seeds = 3, 4, 40, [11, 12, 13]
    whole = envs.TorchMazeBatch(G * B, layout=layout, size=9, episode_length=T)
    parts = [envs.TorchMazeBatch(B, layout=layout, size=9, episode_length=T) for _ in seeds]
    obs = whole.reset(seeds)
    for k, (part, seed) in enumerate(zip(parts, seeds, strict=True)):
        torch.testing.assert_close(obs[k * B:(k + 1) * B], part.reset(seed), rtol=0, atol=0)
    rng = np.random.default_rng(0)
    differ = False
    for _ in range(T):
        a = torch.as_tensor(rng.integers(0, 4, G * B))
        obs, reward, _ = whole.step(a)
        for k, part in enumerate(parts):
            o, r, _ = part.step(a[k * B:(k + 1) * B])
            torch.testing.assert_close(obs[k * B:(k + 1) * B], o, rtol=0, atol=0)
            torch.testing.assert_close(reward[k * B:(k + 1) * B], r, rtol=0, atol=0)
        torch.testing.assert_close(whole.observation(), obs, rtol=0, atol=0)
        differ |= not torch.equal(whole.goal_cells[:B], whole.goal_cells[B:2 * B])
    assert differ  # the groups' goals do differ
    with pytest.raises(ValueError, match="whose length divides num_envs=12"):
        whole.reset([1, 2, 3, 4, 5])
