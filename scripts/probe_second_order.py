"""How big and how consistent is ``algorithm2_interval``'s second-order term in a trained run?

    python scripts/probe_second_order.py runs/objectives/warp-algorithm2_interval/seed0
    python scripts/probe_second_order.py RUN --episodes 300 --pairs 6

Continues a *copy* of the run (the folder itself is not touched) for ``--episodes`` episodes
and, at each warp step, before the objective steps, prints:

* ``direct``: the norm of the interval's summed direct warp gradients (what ``two_timescale``
  would step on);
* ``term``: the norm of the second-order term the objective adds (``P`` times the clipped mean
  over the pairs it replays);
* ``ratio`` (``term / direct``) and ``cos``, the cosine between the two;
* ``shared``: from ``--pairs`` of the interval's pairs, each replayed on its own, the part of
  the per-pair terms ``x_i`` that they have in common,
  ``mean_{i != j} <x_i, x_j> / mean_i |x_i|^2``: the squared norm of the mean term over the
  mean squared norm of one. Near 1, every pair gives the same term (an estimate from a few
  pairs is as good as from all); near 0, the pairs disagree (an estimate from a few is mostly
  noise). The pairs are drawn from a generator seeded by the episode.

A summary of medians follows. Only runs trained with ``--warp-objective algorithm2_interval``
can be probed (the others keep no replayable episodes, or no direct sum).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warp_rl.runs import CHECKPOINT_NAME  # torch-free, so --help answers at once

if TYPE_CHECKING:
    import torch

    from agents.warp_objectives import Algorithm2Interval


def flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The tensors as one float64 vector."""
    from torch.nn.utils import parameters_to_vector

    return parameters_to_vector(list(tensors)).double()


def probe_step(objective: Algorithm2Interval, episode: int,
               pairs_to_replay: int) -> dict[str, float]:
    """The statistics above for the warp step after ``episode``. Call it before the objective's
    own ``step``: it reads the records and the direct sum, and leaves in the warp parameters'
    ``.grad`` what that ``step`` overwrites."""
    import torch

    params = objective.ctx.warp_params
    pairs = objective.pairs(episode)
    # the objective's own replay of the pairs it will pick: .grad = their clipped mean term
    objective.replayed_gradient(objective.choose(pairs, episode), objective.second_order_loss)
    term = len(pairs) * flat(p.grad for p in params)
    rng = np.random.default_rng(np.random.SeedSequence([episode, 7]))
    sample = rng.choice(len(pairs), size=min(pairs_to_replay, len(pairs)), replace=False)
    xs = []
    for i in sorted(sample):
        grads = torch.autograd.grad(objective.second_order_loss(*pairs[i]), params,
                                    allow_unused=True)
        xs.append(flat(torch.zeros_like(p) if g is None else g
                       for g, p in zip(grads, params, strict=True)))
    direct = flat(objective.schedule.warp_grad_sum)
    gram = torch.stack(xs) @ torch.stack(xs).T
    n = len(sample)
    shared = float((gram.sum() - gram.diag().sum()) / (n * (n - 1)) / gram.diag().mean()) \
        if n > 1 else float("nan")
    return {"episode": episode, "pairs": len(pairs), "direct": float(direct.norm()),
            "term": float(term.norm()), "ratio": float(term.norm() / direct.norm()),
            "cos": float(term @ direct / (term.norm() * direct.norm())), "shared": shared}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Probe algorithm2_interval's second-order term.")
    p.add_argument("run", type=Path, help="the run folder (checkpoint.pt, log.csv)")
    p.add_argument("--episodes", type=int, default=300,
                   help="episodes to continue the copy for (default 300)")
    p.add_argument("--pairs", type=int, default=6,
                   help="pairs replayed one by one per warp step for 'shared' (default 6, >= 2)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1; got {args.episodes}")
    if args.pairs < 2:
        p.error(f"--pairs must be >= 2 (the shared part compares pairs); got {args.pairs}")
    if not (args.run / CHECKPOINT_NAME).is_file():
        p.error(f"{args.run}: no {CHECKPOINT_NAME} there; give a run folder of "
                "scripts/train_maze.py")
    import torch

    from agents.trainer import Trainer, load_checkpoint

    try:
        ckpt = load_checkpoint(args.run / CHECKPOINT_NAME)
    except (ValueError, RuntimeError, OSError) as e:
        p.error(f"{args.run / CHECKPOINT_NAME}: not a usable checkpoint ({e})")
    objective = ckpt["config"].get("warp_objective")
    if objective != "algorithm2_interval":
        p.error(f"{args.run} was trained with --warp-objective {objective}; only "
                "algorithm2_interval runs can be probed")
    done = int(ckpt["episode"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        copy.mkdir()
        for name in (CHECKPOINT_NAME, "log.csv", "config.json"):
            if (args.run / name).exists():
                shutil.copy2(args.run / name, copy / name)
        torch.set_num_threads(1)
        trainer = Trainer.resume(copy, {"episodes": done + args.episodes, "threads": 1})
        obj = trainer.objective
        real_step = obj.step

        def step(episode: int) -> bool:
            if obj.is_warp_step(episode) and obj.pairs(episode):
                r = probe_step(obj, episode, args.pairs)
                rows.append(r)
                print(f"episode {r['episode']:>6}  pairs {r['pairs']:>3}  direct "
                      f"{r['direct']:8.3f}  term {r['term']:8.3f}  ratio {r['ratio']:6.2f}  "
                      f"cos {r['cos']:+.2f}  shared {r['shared']:+.2f}", flush=True)
            return real_step(episode)

        obj.step = step
        try:
            trainer.train(progress=False)
        finally:
            trainer.close()
    if rows:
        med = {k: float(np.median([r[k] for r in rows])) for k in ("ratio", "shared")}
        abs_cos = float(np.median([abs(r["cos"]) for r in rows]))
        above = sum(r["ratio"] > 1 for r in rows)
        print(f"{len(rows)} warp steps from episode {done}: median ratio {med['ratio']:.2f} "
              f"(term larger than direct in {above}), median |cos| {abs_cos:.2f}, "
              f"median shared {med['shared']:+.2f}")
    else:
        print(f"no warp step in episodes {done} to {done + args.episodes - 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
