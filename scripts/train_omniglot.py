"""Meta-train a few-shot learner on Omniglot and test it on 10 held-out alphabets.

The WarpGrad/Leap protocol (see docs/omniglot.md): 20-way tasks, one alphabet each,
15 adaptation and 5 held-out drawings per character, random affine distortion.

    python scripts/train_omniglot.py --meta-model warp_leap --num-pretrain 25 --meta-steps 1000
    python scripts/train_omniglot.py --out runs/omniglot/warp_leap-seed0 --resume   # continue
    python scripts/train_omniglot.py --out DIR --resume --meta-steps N --one-shot    # evaluate

Outputs in --out: config.json, train.csv, val.csv, checkpoint.pt, test.json, test_tasks.csv,
test_curve.csv, curves.png (and oneshot results in test.json with --one-shot).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, not installed

from warp_rl.omniglot.cli import build_parser  # torch-free


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (``--help`` and bad flags answer here, before torch is imported), then run
    :func:`warp_rl.omniglot.train.main` on it; returns its summary."""
    build_parser().parse_args(argv)
    from warp_rl.omniglot.train import main as train

    return train(argv)


if __name__ == "__main__":
    main()
