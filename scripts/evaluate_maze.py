"""Evaluate a trained maze agent: reward over N episodes and an animated GIF of one episode.

    python scripts/evaluate_maze.py runs/maze/warp-seed0                 # the run's checkpoint
    python scripts/evaluate_maze.py runs/maze/warp-seed0/checkpoint.pt --episodes 300
    python scripts/evaluate_maze.py RUN --deterministic --gif episode.gif

The agent is evaluated as trained: its weights are fixed, and whatever it learns about each
maze (where the goal is) lives in its recurrent state within the episode. Evaluation mazes use
seeds disjoint from training's (``--seed``, default 10**6). The checkpoint is loaded with
``weights_only=True`` (tensors and plain data only); a refused file, flag or path is one line
of error and exit code 2. Prints the mean reward per episode,
its standard deviation over episodes and the standard error of the mean.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Only torch-free modules here, so that --help answers at once; torch, the environments and the
# trainer are imported where they are used, after the arguments are parsed.
from warp_rl.runs import CHECKPOINT_NAME
from warp_rl.utils import atomic_write_bytes

if TYPE_CHECKING:
    from agents.base import RecurrentAgent
    from agents.trainer import TrainConfig

MAX_SEED = 2**63 - 1


def evaluate(agent: RecurrentAgent, config: TrainConfig, episodes: int, batch_size: int,
             seed: int, deterministic: bool = False) -> np.ndarray:
    """Total reward of each of ``episodes`` episodes, ``(episodes,)`` float64.

    Runs ``ceil(episodes / batch_size)`` batches of mazes on ``envs.WarpMazeVectorEnv``.
    """
    import torch

    import envs

    with torch.no_grad():
        device = next(agent.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        totals = []
        for k in range(-(-episodes // batch_size)):
            n = min(batch_size, episodes - k * batch_size)
            venv = envs.WarpMazeVectorEnv(n, size=config.maze_size,
                                          episode_length=config.episode_length)
            obs, _ = venv.reset(seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
            state = agent.initial_state(n, device)
            total = np.zeros(n)
            for _ in range(config.episode_length):
                logits, _, state = agent(torch.as_tensor(obs, device=device), state)
                if deterministic:
                    actions = logits.argmax(-1)
                else:
                    actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
                obs, reward, _, _, _ = venv.step(actions.cpu().numpy())
                total += reward
            totals.append(total)
        return np.concatenate(totals)


def record_episode(agent: RecurrentAgent, config: TrainConfig, seed: int,
                   deterministic: bool = False) -> tuple[list[np.ndarray], float]:
    """Frames (uint8 ``(H, W, 3)``, one per step plus the start) and total reward of one
    episode on a single ``envs.WarpMazeEnv``."""
    import torch

    import envs

    with torch.no_grad():
        device = next(agent.parameters()).device
        env = envs.WarpMazeEnv(size=config.maze_size, episode_length=config.episode_length,
                               render_mode="rgb_array")
        obs, _ = env.reset(seed=seed)
        state = agent.initial_state(1, device)
        gen = torch.Generator(device=device).manual_seed(seed)
        frames, total = [env.render()], 0.0
        for _ in range(config.episode_length):
            logits, _, state = agent(torch.as_tensor(obs, device=device)[None], state)
            if deterministic:
                action = int(logits.argmax(-1))
            else:
                action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            frames.append(env.render())
            if terminated or truncated:
                break
        env.close()
        return frames, total


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 8) -> None:
    """Write an animated GIF (looping) atomically with Pillow."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate a trained maze agent.")
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt, or the run folder holding it")
    p.add_argument("--episodes", type=int, default=100, help="episodes to average (default 100)")
    p.add_argument("--batch-size", type=int, default=100, help="mazes run at once")
    p.add_argument("--seed", type=int, default=10**6, help="evaluation seed")
    p.add_argument("--deterministic", action="store_true", help="most likely action")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--gif", type=Path, help="GIF path (default: episode.gif next to the "
                   "checkpoint)")
    p.add_argument("--no-gif", action="store_true", help="do not record an episode")
    p.add_argument("--fps", type=int, default=8, help="GIF frames per second")
    args = p.parse_args(argv)
    import torch

    from agents.trainer import load_agent

    for name in ("episodes", "batch_size", "fps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if not 0 <= args.seed <= MAX_SEED:
        p.error(f"--seed must be an integer in [0, 2**63 - 1]; got {args.seed}")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    path = args.checkpoint / CHECKPOINT_NAME if args.checkpoint.is_dir() else args.checkpoint
    gif = args.gif or path.parent / "episode.gif"
    if not args.no_gif and gif.is_dir():
        p.error(f"--gif {gif} is a folder; expected the path of a .gif file to write, such as "
                f"{gif / 'episode.gif'}")
    try:
        agent, config = load_agent(path, args.device)
    except (FileNotFoundError, ValueError) as err:  # warp_rl.runs.CheckpointError included
        p.error(f"cannot evaluate {path}: {err}")
    torch.set_num_threads(config.threads)

    rewards = evaluate(agent, config, args.episodes, min(args.batch_size, args.episodes),
                       args.seed, args.deterministic)
    sem = rewards.std(ddof=1) / np.sqrt(len(rewards)) if len(rewards) > 1 else float("nan")
    print(f"{config.agent} ({path}): {len(rewards)} episodes of {config.episode_length} steps "
          f"on {config.maze_size}x{config.maze_size}, "
          f"{'deterministic' if args.deterministic else 'sampled'} actions")
    print(f"reward per episode: mean {rewards.mean():.2f}, std {rewards.std():.2f}, "
          f"sem {sem:.2f}, min {rewards.min():.0f}, max {rewards.max():.0f}")
    if not args.no_gif:
        frames, total = record_episode(agent, config, args.seed, args.deterministic)
        try:
            save_gif(frames, gif, args.fps)
        except OSError as err:
            p.error(f"--gif {gif}: cannot be written ({err.strerror or err}); pass another "
                    "--gif, or --no-gif")
        print(f"GIF of one episode ({len(frames) - 1} steps, reward {total:.0f}): {gif}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
