"""Evaluate a trained maze agent: reward over N episodes and an animated GIF of one of them.

    python scripts/evaluate_maze.py runs/maze/warp-seed0                 # the run's checkpoint
    python scripts/evaluate_maze.py runs/maze/warp-seed0/checkpoint.pt --episodes 300
    python scripts/evaluate_maze.py RUN --deterministic --gif episode.gif --gif-episode best

The agent is evaluated as trained: its weights are fixed, and whatever it learns about each
maze (where the goal is) lives in its recurrent state within the episode. Evaluation mazes use
seeds disjoint from training's (``--seed``, default 10**6). The checkpoint is loaded with
``weights_only=True`` (tensors and plain data only); a refused file, flag or path is one line
of error and exit code 2. Prints the mean reward per episode, its standard deviation over
episodes and the standard error of the mean.

The GIF shows one of the evaluated episodes, by default a representative one: the episode whose
reward is closest to the median (``--gif-episode median``; or ``best``, ``worst``, or an
episode's index). Each frame shows the maze, the agent (blue) and the goal (green, outlined so
that it stays visible under the agent), the step number and the reward collected so far. The
script prints which episode it drew and its reward.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
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
GIF_CHOICES = ("median", "best", "worst")
"""Named choices of ``--gif-episode`` (besides an episode's index)."""


@dataclass
class Track:
    """What one evaluated episode did, enough to draw it again.

    Attributes:
        walls: bool ``(S, S)``, ``True`` = wall.
        agent: int ``(T + 1, 2)``: the agent's ``(row, col)`` at the start and after each step
            (after a teleport, where the step reached the goal).
        goal: int ``(T + 1, 2)``: the goal's cell at the same times.
        reward: float ``(T,)``: the reward of each step.
    """

    walls: np.ndarray
    agent: np.ndarray
    goal: np.ndarray
    reward: np.ndarray


def evaluate(agent: RecurrentAgent, config: TrainConfig, episodes: int, batch_size: int,
             seed: int, deterministic: bool = False,
             tracks: list[Track] | None = None) -> np.ndarray:
    """Total reward of each of ``episodes`` episodes, ``(episodes,)`` float64.

    Runs ``ceil(episodes / batch_size)`` batches of mazes on ``envs.WarpMazeVectorEnv``. With
    ``tracks``, one :class:`Track` per episode is appended to it, in the same order (recording
    reads the mazes' state only: the rewards are the same with or without it).
    """
    import torch

    import envs

    device = next(agent.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    totals = []
    with torch.no_grad():
        for k in range(-(-episodes // batch_size)):
            n = min(batch_size, episodes - k * batch_size)
            venv = envs.WarpMazeVectorEnv(n, size=config.maze_size,
                                          episode_length=config.episode_length)
            obs, _ = venv.reset(seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
            state = agent.initial_state(n, device)
            total = np.zeros(n)
            cells = [(venv.agent_cells.copy(), venv.goal_cells.copy())]
            rewards = []
            for _ in range(config.episode_length):
                logits, _, state = agent(torch.as_tensor(obs, device=device), state)
                if deterministic:
                    actions = logits.argmax(-1)
                else:
                    actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
                obs, reward, _, _, _ = venv.step(actions.cpu().numpy())
                total += reward
                if tracks is not None:
                    cells.append((venv.agent_cells.copy(), venv.goal_cells.copy()))
                    rewards.append(np.asarray(reward, dtype=np.float64))
            totals.append(total)
            if tracks is not None:
                walls = np.array(venv.walls)
                agents = np.stack([a for a, _ in cells], axis=1)  # (n, T + 1, 2)
                goals = np.stack([g for _, g in cells], axis=1)
                steps = np.stack(rewards, axis=1)  # (n, T)
                tracks += [Track(walls[i], agents[i], goals[i], steps[i]) for i in range(n)]
    return np.concatenate(totals)


def pick_episode(rewards: np.ndarray, which: str | int) -> int:
    """The index of the episode to draw: ``"median"``, the one whose reward is closest to the
    median reward (the first of several); ``"best"`` / ``"worst"``, the first with the highest /
    lowest reward; an ``int``, that episode.

    Raises:
        ValueError: an index outside ``[0, len(rewards))`` or an unknown name.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if isinstance(which, int):
        if not 0 <= which < len(rewards):
            raise ValueError(f"episode {which} does not exist: {len(rewards)} were evaluated "
                             f"(0 to {len(rewards) - 1})")
        return which
    if which == "median":
        return int(np.argmin(np.abs(rewards - np.median(rewards))))
    if which == "best":
        return int(np.argmax(rewards))
    if which == "worst":
        return int(np.argmin(rewards))
    raise ValueError(f"expected one of {', '.join(GIF_CHOICES)} or an episode's index; got "
                     f"{which!r}")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # older Pillow: the small bitmap font
        return ImageFont.load_default()


def draw_frame(track: Track, t: int, cell_px: int | None = None) -> np.ndarray:
    """The frame after ``t`` steps (``t = 0``: the start), uint8 ``(H, W, 3)``.

    The maze as :func:`envs.maze.render_rgb` draws it (walls dark, the agent a blue square, the
    goal a green one), the goal's cell outlined in green, and above it a banner with the step
    number (``step t/T``), the reward collected in steps ``1..t`` and a legend of the colours.
    ``cell_px`` defaults to the size that makes the maze at least 240 pixels wide.
    """
    from PIL import Image, ImageDraw

    from envs.maze import COLOURS, render_rgb

    size = track.walls.shape[0]
    cell_px = cell_px or max(16, -(-240 // size))
    maze = render_rgb(track.walls, tuple(track.agent[t]), tuple(track.goal[t]), cell_px)
    line_px = 18  # the banner: two lines of 14-pixel text
    banner_px = 2 * line_px + 6
    image = Image.new("RGB", (maze.shape[1], maze.shape[0] + banner_px), (255, 255, 255))
    image.paste(Image.fromarray(maze), (0, banner_px))
    draw = ImageDraw.Draw(image)
    row, col = (int(v) for v in track.goal[t])
    draw.rectangle([col * cell_px, banner_px + row * cell_px, (col + 1) * cell_px - 1,
                    banner_px + (row + 1) * cell_px - 1], outline=COLOURS["goal"],
                   width=max(2, cell_px // 8))
    font = _font(14)
    steps = len(track.reward)
    so_far = float(track.reward[:t].sum())
    draw.text((4, 2), f"step {t}/{steps}   reward {so_far:g}", fill=(0, 0, 0), font=font)
    x, y = 4, line_px + 4
    for name in ("agent", "goal"):
        draw.rectangle([x, y + 2, x + 11, y + 13], fill=COLOURS[name])
        draw.text((x + 16, y), name, fill=(0, 0, 0), font=font)
        x += 16 + int(draw.textlength(name, font=font)) + 12
    return np.asarray(image)


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 8) -> None:
    """Write an animated GIF (looping) atomically with Pillow."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    atomic_write_bytes(path, buf.getvalue())


def gif_episode(text: str) -> str | int:
    """``--gif-episode``: a name of :data:`GIF_CHOICES` or an episode's index (>= 0)."""
    if text in GIF_CHOICES:
        return text
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise argparse.ArgumentTypeError(f"expected {', '.join(GIF_CHOICES)} or an episode's "
                                         f"index (an integer >= 0); got {text!r}")
    return index


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
    p.add_argument("--gif-episode", type=gif_episode, default="median",
                   help="which evaluated episode the GIF shows: median (default: the one whose "
                   "reward is closest to the median), best, worst, or an episode's index "
                   "(0 to --episodes - 1)")
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
    if isinstance(args.gif_episode, int) and args.gif_episode >= args.episodes:
        p.error(f"--gif-episode {args.gif_episode}: only {args.episodes} episodes are evaluated "
                f"(0 to {args.episodes - 1}); pass a smaller index or more --episodes")
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

    tracks: list[Track] | None = None if args.no_gif else []
    rewards = evaluate(agent, config, args.episodes, min(args.batch_size, args.episodes),
                       args.seed, args.deterministic, tracks)
    sem = rewards.std(ddof=1) / np.sqrt(len(rewards)) if len(rewards) > 1 else float("nan")
    print(f"{config.agent} ({path}): {len(rewards)} episodes of {config.episode_length} steps "
          f"on {config.maze_size}x{config.maze_size}, "
          f"{'deterministic' if args.deterministic else 'sampled'} actions")
    print(f"reward per episode: mean {rewards.mean():.2f}, std {rewards.std():.2f}, "
          f"sem {sem:.2f}, min {rewards.min():.0f}, max {rewards.max():.0f}")
    if tracks is not None:
        index = pick_episode(rewards, args.gif_episode)
        track = tracks[index]
        frames = [draw_frame(track, t) for t in range(len(track.reward) + 1)]
        try:
            save_gif(frames, gif, args.fps)
        except OSError as err:
            p.error(f"--gif {gif}: cannot be written ({err.strerror or err}); pass another "
                    "--gif, or --no-gif")
        why = {"median": f"the closest to the median reward, {np.median(rewards):g}",
               "best": "the best", "worst": "the worst"}.get(args.gif_episode, "chosen")
        print(f"GIF of one episode: episode {index} of {len(rewards)} ({why}), reward "
              f"{rewards[index]:g}, {len(frames) - 1} steps: {gif}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
