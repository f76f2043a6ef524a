"""The command line of the Omniglot trainer (``scripts/train_omniglot.py``,
:func:`warp_rl.omniglot.train.main`), free of torch so that ``--help`` answers at once.

The accepted values below restate names defined with the code that implements them (which
imports torch); ``tests/test_scripts_help.py`` checks that each equals its source.
"""

from __future__ import annotations

import argparse

from warp_rl.cli import DIST_TIMEOUT_S

METHODS: tuple[str, ...] = ("warp_leap", "warp", "leap", "reptile", "fomaml", "maml", "ft", "no")
"""``--meta-model``: :data:`warp_rl.omniglot.meta_learners.METHODS`."""
TASK_HEADS: tuple[str, ...] = ("learned", "fresh")
"""``--task-head``: :data:`warp_rl.omniglot.meta_learners.TASK_HEADS`."""
FT_HEADS: tuple[str, ...] = ("per_alphabet", "shared")
"""``--ft-heads``: :data:`warp_rl.omniglot.meta_learners.FT_HEADS`."""
ACTIVATIONS: tuple[str, ...] = ("leakyrelu", "none", "relu", "sigmoid", "tanh")
"""``--warp-act``: the sorted names of :data:`warp_rl.omniglot.models.ACTIVATIONS`."""
WARP_OBJECTIVES: tuple[str, ...] = ("algorithm2", "algorithm2_detached", "first_order")
"""``--warp-objective``: :data:`warp_rl.updaters.WARP_OBJECTIVES`."""
TASK_BATCHING: tuple[str, ...] = ("loop", "grouped", "auto")
"""``--task-batching``: :data:`warp_rl.omniglot.grouped.TASK_BATCHING`."""
WARP_FILTERS_DEFAULT = 64
"""``--warp-filters``: the default of :attr:`warp_rl.omniglot.models.WarpConfig.filters`."""


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default once: appended as ``(default: X)`` (``off`` for a switch) unless
    the help text already says it or the default is None (such helps say what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is None:
            return text
        if action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


DEFAULT_THREADS = 1
"""The default of ``--threads``: one torch thread was measured fastest for these small
convolutions (docs/omniglot.md, "Threads")."""


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags, named after the paper's settings (defaults: the paper's)."""
    p = argparse.ArgumentParser(
        description="Meta-train a few-shot learner on Omniglot (WarpGrad/Leap protocol) and "
        "test it on 10 held-out alphabets.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("protocol")
    g.add_argument("--meta-model", default="warp_leap", choices=METHODS,
                   help="what is meta-learned (docs/omniglot.md has a table)")
    g.add_argument("--num-pretrain", type=int, default=25, help="meta-training alphabets")
    g.add_argument("--meta-steps", type=int, default=1000, help="meta-training steps")
    g.add_argument("--task-steps", type=int, default=100, help="adaptation steps per task")
    g.add_argument("--task-batch-size", type=int, default=20, help="images per adaptation step")
    g.add_argument("--meta-batch-size", type=int, default=20, help="tasks per meta-step")
    g.add_argument("--seed", type=int, default=0,
                   help="fixes the alphabet split, the tasks, the model and every random draw")
    g = p.add_argument_group("optimisers")
    g.add_argument("--inner-opt", default="sgd", choices=["sgd", "adam"],
                   help="adaptation (inner) optimiser")
    g.add_argument("--inner-lr", type=float, default=0.1,
                   help="learning rate of the adaptation (inner) optimiser")
    g.add_argument("--inner-momentum", type=float, default=0.0,
                   help="momentum of the inner SGD, in [0, 1)")
    g.add_argument("--outer-opt", default="sgd", choices=["sgd", "adam"],
                   help="meta (outer) optimiser")
    g.add_argument("--outer-lr", type=float, default=0.1,
                   help="learning rate of the meta (outer) optimiser")
    g = p.add_argument_group("the original code's choices (docs/omniglot.md, \"Reproducing "
                             "the paper\")")
    g.add_argument("--task-head", default="learned", choices=TASK_HEADS,
                   help="leap, reptile, fomaml, no: a task's classifier head starts from the "
                   "learned initialisation, or fresh: newly initialised for every task, as in "
                   "the original code")
    g.add_argument("--ft-heads", default="per_alphabet", choices=FT_HEADS,
                   help="ft: one pretraining head per alphabet, or shared: one head for all "
                   "alphabets, which is what the original code's [linear] * N builds")
    g = p.add_argument_group("model and warp layers (warp_leap, warp)")
    g.add_argument("--num-filters", type=int, default=64, help="channels of the conv blocks")
    g.add_argument("--warp-layers", type=int, default=1, help="warp layers per block")
    g.add_argument("--warp-filters", type=int, default=WARP_FILTERS_DEFAULT,
                   help="channels of the inner warp layers of a block; the last warp layer has "
                   "--num-filters channels, so this changes nothing with --warp-layers 1")
    g.add_argument("--warp-residual", action="store_true", help="residual warp layers")
    g.add_argument("--warp-batch-norm", action="store_true", help="batch norm in warp layers")
    g.add_argument("--warp-act", default="none", choices=ACTIVATIONS,
                   help="activation inside each warp layer (none: linear warp layers)")
    g.add_argument("--warp-final-head", action="store_true", help="warp the classifier head")
    g.add_argument("--warp-objective", default="algorithm2", choices=WARP_OBJECTIVES,
                   help="the warp layers' meta-objective: Algorithm 2 with its second-order "
                   "term; algorithm2_detached, the same with the inner gradient detached (what "
                   "the original code computed); or first_order, the loss at the replayed "
                   "state (no inner step)")
    g.add_argument(
        "--warp-meta-batch-size", type=int, default=1,
        help="replayed states per outer step (1: one step per state, as the paper's code)",
    )
    g.add_argument(
        "--warp-max-states", type=int, default=None,
        help="adaptation states kept per task (reservoir sample; default: all)",
    )
    g.add_argument(
        "--warp-batching", default=None, choices=["loop", "vmap", "auto"],
        help="evaluate a meta-batch of states one by one or with vmap "
        "(default: loop on CPU, auto on CUDA)",
    )
    g.add_argument("--learn-step-size", action="store_true", help="meta-learn inner step sizes")
    g.add_argument(
        "--maml-unroll", type=int, default=None,
        help="maml: inner steps unrolled during meta-training (default: --task-steps)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--data-root", default=None, help="Omniglot folder (default: "
                   "$WARP_RL_OMNIGLOT or ../shared/data/omniglot)")
    g.add_argument("--cache-dir", default=None, help="resized-image cache "
                   "(default: $WARP_RL_CACHE/omniglot or ~/.cache/warp_rl/omniglot)")
    g.add_argument("--download", action="store_true", help="fetch the official archives "
                   "into --data-root if no data is there (verified by checksum)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--task-batching", default="auto", choices=TASK_BATCHING,
                   help="how the tasks of a meta-batch adapt: one after another (loop), or all "
                   "together, one grouped convolution per layer and step (grouped; every "
                   "method's meta-step but ft's pretraining, and the one-shot runs); auto: "
                   "grouped where measured faster (2 or more tasks, on the CPU at least 2 per "
                   "16 MiB chunk; docs/omniglot.md), else loop")
    g.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="torch CPU threads (1 was measured fastest for these small convolutions "
                   "on a 2-core machine, see docs/omniglot.md)")
    g.add_argument("--out", default=None, help="output folder (default runs/omniglot/"
                   "<meta-model>-seed<seed>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    g.add_argument("--validate-every", type=int, default=20, help="meta-steps between "
                   "validations (0: never)")
    g.add_argument("--val-tasks", type=int, default=None, help="validation tasks (default: "
                   "one per validation alphabet)")
    g.add_argument("--eval-tasks", type=int, default=10, help="final test tasks (the 10 test "
                   "alphabets in turn)")
    g.add_argument("--checkpoint-every", type=int, default=1, help="meta-steps between "
                   "checkpoints")
    g.add_argument("--no-test", dest="test", action="store_false",
                   help="skip the final test (default: run it)")
    g.add_argument("--one-shot", action="store_true", help="also run the 20 official one-shot "
                   "runs (all_runs.zip)")
    g.add_argument("--one-shot-path", default=None, help="all_runs.zip or its folder (default: "
                   "<data-root>/all_runs.zip)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a bar on stderr from the start)")
    g.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT_S,
                   help="under torchrun: seconds a rank waits for the others in a collective "
                   "before failing with an error")
    return p
