"""Meta-training and evaluation on Omniglot (the engine of ``scripts/train_omniglot.py``).

A run writes into ``--out``:

- ``config.json``: the settings; ``train.csv``: one row per meta-step (results on the
  meta-batch's tasks, seconds); ``val.csv``: one row per validation;
- ``checkpoint.pt``: everything needed to continue exactly (``--resume``), written atomically
  at the start, every ``--checkpoint-every`` meta-steps and at the end, the one before kept as
  ``checkpoint.prev.pt``;
- ``test.json`` / ``test_tasks.csv`` / ``test_curve.csv``: the final test on the 10 meta-test
  alphabets (held-out accuracy, area under the adaptation curve, per task, per step);
- ``oneshot.json`` with ``--one-shot``; ``curves.png``: validation and test curves.

Under ``torchrun --nproc_per_node=P`` each meta-batch's tasks, and the evaluation tasks, are
split over the P ranks (:mod:`warp_rl.omniglot.distributed`); rank 0 alone writes.

The run folder follows :mod:`warp_rl.runs` (as the maze trainers do): rank 0 holds its lock for
the run's lifetime; checkpoints are loaded with ``weights_only=True`` (falling back to
``checkpoint.prev.pt`` if the latest is unusable); ``--resume`` needs the logs the checkpoint
expects, the same settings (but :data:`RESUMABLE`), a ``--meta-steps`` not below the steps done
and the same data (a fingerprint of the images); a non-finite loss or parameter stops the run
(exit code 3) keeping the last finite checkpoint; ``test.json`` is strict JSON. Refused flags,
paths and files exit with code 2 and one paragraph of error.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from warp_rl import distributed, runs

from .cli import WARP_FILTERS_DEFAULT, build_parser
from .data import OmniglotDataError, default_data_root, load_omniglot
from .distributed import DataParallelLearner
from .meta_learners import (
    FRESH_HEAD_METHODS,
    MetaLearner,
    OptimConfig,
    TaskResults,
    make_learner,
)
from .models import WarpConfig
from .oneshot import identify_alphabets, read_runs, runs_pool
from .tasks import TaskPool, TaskSampler, split_alphabets

CHECKPOINT_FORMAT = 2
"""Format 2 (this version) adds the logs' byte lengths and the data fingerprint; format-1
checkpoints (no ``format`` key) cannot be resumed."""

# settings that may change when a run is resumed (everything else must match)
RESUMABLE = {
    "meta_steps", "validate_every", "val_tasks", "eval_tasks", "device", "threads", "out",
    "resume", "one_shot", "one_shot_path", "progress", "checkpoint_every", "data_root",
    "cache_dir", "download", "test", "dist_timeout", "task_batching",
}


WARP_FLAGS = ["warp_layers", "warp_filters", "warp_residual", "warp_batch_norm", "warp_act",
              "warp_final_head", "warp_objective", "warp_meta_batch_size", "warp_max_states",
              "warp_batching", "learn_step_size"]
#: flags that apply to some meta-models only (refused with the others unless at the default)
FLAG_METHODS: dict[str, tuple[str, ...]] = {
    **{name: ("warp_leap", "warp") for name in WARP_FLAGS},
    "maml_unroll": ("maml",),
    "task_head": FRESH_HEAD_METHODS,
    "ft_heads": ("ft",),
}


def check_args(args: argparse.Namespace) -> None:
    """Range checks with messages that name the flag, the value and what is accepted."""
    positive = ["meta_batch_size", "task_batch_size", "task_steps", "num_filters", "warp_layers",
                "warp_filters", "warp_meta_batch_size", "eval_tasks", "checkpoint_every"]
    for name in positive:
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    for name in ["meta_steps", "validate_every"]:
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 0")
    for name in ["warp_max_states", "maml_unroll", "val_tasks", "threads"]:
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={v}: must be >= 1 (or left out)")
    for name in ["inner_lr", "outer_lr"]:
        v = getattr(args, name)
        if not (v > 0 and math.isfinite(v)):
            raise SystemExit(f"--{name.replace('_', '-')}={v}: must be a positive number")
    if not 0 <= args.inner_momentum < 1:
        raise SystemExit(f"--inner-momentum={args.inner_momentum}: must be in [0, 1)")
    defaults = build_parser().parse_args([])
    for name, methods in FLAG_METHODS.items():
        if getattr(args, name) != getattr(defaults, name) and args.meta_model not in methods:
            listed = " and ".join([", ".join(methods[:-1]), methods[-1]] if len(methods) > 1
                                  else methods)
            raise SystemExit(f"--{name.replace('_', '-')} applies to {listed} only, not to "
                             f"--meta-model {args.meta_model}")
    if args.task_batch_size > 300:
        raise SystemExit(f"--task-batch-size={args.task_batch_size}: a task has 300 "
                         "adaptation images; must be <= 300")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else must be a usable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SystemExit(
            f"--device={name!r}: not a device; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device={name!r}: CUDA is not available here; use --device cpu")
    return dev


def derived_seed(seed: int, tag: str) -> int:
    """A 62-bit seed for the stream ``tag`` of run ``seed`` (independent of the method)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{tag}".encode()).digest()[:8], "little") >> 2


def eval_batch(pool: TaskPool, count: int, args: argparse.Namespace, tag: str):
    """``count`` evaluation tasks (the pool's alphabets in turn), fixed for (seed, tag)."""
    g = torch.Generator().manual_seed(derived_seed(args.seed, tag))
    ids = torch.arange(count) % len(pool)
    return pool.sample(ids, args.task_steps, args.task_batch_size, g)


def _fmt(x: float) -> str:
    """A log number: 6 significant digits; non-finite ones as an empty field (never NaN)."""
    return f"{x:.6g}" if math.isfinite(x) else ""


def _row(step: int, res: TaskResults, **extra) -> dict:
    s = res.summary()
    return {"step": step, **{k: _fmt(v) for k, v in s.items()}, **extra}


SUMMARY_FIELDS = ["test_acc", "test_acc_std", "test_loss", "auc_acc", "auc_loss",
                  "final_train_acc"]


def _config(args: argparse.Namespace) -> dict:
    return {k: v for k, v in sorted(vars(args).items())}


def _warp_config(args: argparse.Namespace) -> WarpConfig | None:
    if not args.meta_model.startswith("warp"):
        return None
    return WarpConfig(args.warp_layers, args.warp_filters, args.warp_residual,
                      args.warp_batch_norm, args.warp_act, args.warp_final_head)


def build_learner(args: argparse.Namespace, device: torch.device) -> MetaLearner:
    """The learner of ``args`` (model seeded with ``--seed``)."""
    inner = OptimConfig(args.inner_opt, args.inner_lr, args.inner_momentum)
    outer = OptimConfig(args.outer_opt, args.outer_lr)
    warp_kwargs = {}
    if args.meta_model.startswith("warp"):
        batching = args.warp_batching or ("auto" if device.type == "cuda" else "loop")
        warp_kwargs = dict(objective=args.warp_objective,
                           meta_batch_size=args.warp_meta_batch_size,
                           max_states=args.warp_max_states, batching=batching,
                           learn_step_size=args.learn_step_size)
    return make_learner(args.meta_model, inner, outer, seed=args.seed, device=device,
                        num_pretrain=args.num_pretrain, num_filters=args.num_filters,
                        warp=_warp_config(args), maml_unroll=args.maml_unroll,
                        task_head=args.task_head, ft_heads=args.ft_heads,
                        task_batching=args.task_batching, **warp_kwargs)


#: a run whose rest is estimated (after its first meta-step) to take longer than this many
#: seconds prints a one-line estimate of its duration
ESTIMATE_AFTER_S = 120.0


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"`` or ``"3 h 05 min"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """The run's one progress bar (stderr, rank 0 only), shown from the start: its description
    names the phase (loading, validating task i of n, meta-steps, testing) and it counts
    meta-steps."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, desc="loading Omniglot", unit="step", disable=not enabled,
                        dynamic_ncols=True)

    def phase(self, text: str) -> None:
        self.bar.set_description_str(text)

    def restart(self, start: int, total: int) -> None:
        """Count from meta-step ``start`` of ``total`` (after ``--resume``)."""
        self.bar.reset(total=total)
        self.bar.initial = self.bar.n = start
        self.bar.refresh()

    def step(self, **postfix: str) -> None:
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def write(self, line: str) -> None:
        """A line above the bar (on stderr, also with the bar off)."""
        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def evaluate_with_progress(
    learner: MetaLearner, tasks, progress: Progress, label: str, world: int
) -> TaskResults:
    """``learner.evaluate(tasks)``, one task at a time in a single process so that the bar
    names the task being adapted (the same results: every task adapts independently from the
    learner's state, which evaluation does not change); under torchrun all at once."""
    n = tasks.num_tasks
    if world > 1:
        progress.phase(f"{label} ({n} tasks)")
        return learner.evaluate(tasks)
    parts = []
    for i in range(n):
        progress.phase(f"{label} {i + 1}/{n}")
        parts.append(learner.evaluate(tasks.task(i)))
    return TaskResults.cat(parts)


def estimate(
    args: argparse.Namespace, step: int, steps: int, step_s: float, eval_task_s: float,
    val_count: int,
) -> tuple[float, str]:
    """Seconds the rest of a run will take, and a line that says so, from its first meta-step
    (``step_s`` seconds, at ``step`` of ``steps``), the seconds one evaluation task takes
    (``eval_task_s``) and the number of validation tasks (``val_count``)."""
    left = steps - step
    n_val = sum(1 for s in range(step + 1, steps + 1)
                if args.validate_every and s % args.validate_every == 0)
    val_s = eval_task_s * val_count
    test_s = eval_task_s * ((args.eval_tasks if args.test else 0) + (20 if args.one_shot else 0))
    total = left * step_s + n_val * val_s + test_s
    return total, (f"estimate: about {format_duration(total)} to go ({left} meta-steps at "
            f"{step_s:.1f} s, {n_val} validations at {format_duration(val_s)}, final test "
            f"{format_duration(test_s)}); finishing around "
            f"{time.strftime('%H:%M %Z', time.localtime(time.time() + total))}")


def run_folder(args: argparse.Namespace) -> Path:
    """``--out``, by default ``runs/omniglot/<meta-model>-seed<seed>``."""
    return Path(args.out or f"runs/omniglot/{args.meta_model}-seed{args.seed}")


def data_fingerprint(data) -> str:
    """A short SHA-256 of the loaded images (per-drawing hashes, alphabets, character counts):
    equal for the same data wherever it lives, different for other data."""
    h = hashlib.sha256(data.hashes.tobytes())
    h.update("\n".join(data.alphabets).encode())
    h.update(data.offsets.astype("int64").tobytes())
    return h.hexdigest()[:32]


def _nonfinite_tensors(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in ``tree`` (nested dicts/lists) holding NaN/inf."""
    bad = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(
        tree, list | tuple) else []
    for k, v in items:
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                bad.append(f"{prefix}{k}")
        else:
            bad += _nonfinite_tensors(v, f"{prefix}{k}.")
    return bad


def _flag(name: str) -> str:
    """The command-line flag of the setting ``name`` (``vars(args)`` key)."""
    return {"progress": "--no-progress", "test": "--no-test"}.get(
        name, "--" + name.replace("_", "-"))


def _check_checkpoint(ckpt) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an Omniglot checkpoint of format {CHECKPOINT_FORMAT} (runs "
                         "written before that format cannot be resumed by this version)")
    missing = [k for k in ("step", "config", "learner", "generator", "sampler", "logs", "data")
               if k not in ckpt]
    if missing:
        raise ValueError(f"an Omniglot checkpoint without {', '.join(missing)}")


def run(args: argparse.Namespace) -> dict:
    """Meta-train, validate, test (and run the one-shot benchmark); returns the test summary.

    Under torchrun (a process group is set up by :func:`main`), every rank runs this; rank 0
    decides about the output folder, holds its lock (:func:`warp_rl.runs.acquire_lock`) and
    alone writes into it."""
    check_args(args)
    if args.out is not None and not str(args.out).strip():
        raise SystemExit("--out is empty; expected a folder for the run's files (it is created "
                         "if needed); pass a path such as --out runs/omniglot/my-run")
    out = run_folder(args)
    lock = None
    if distributed.is_main():
        try:
            lock = runs.acquire_lock(out)
        except runs.RunError as e:
            raise SystemExit(str(e)) from None
    try:
        return _run(args, out)
    finally:
        if lock is not None:
            lock.release()


def _run(args: argparse.Namespace, out: Path) -> dict:
    """:func:`run` with ``out`` locked."""
    main_rank, world = distributed.is_main(), distributed.world_size()
    try:
        device = distributed.local_device(resolve_device(args.device))
        if world > 1:
            distributed.even_share(args.meta_batch_size, "--meta-batch-size")
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    if main_rank and args.warp_layers == 1 and args.warp_filters != WARP_FILTERS_DEFAULT:
        print(f"note: --warp-filters {args.warp_filters} changes nothing with --warp-layers 1 "
              "(the only warp layer of a block has --num-filters channels)", file=sys.stderr)
    ckpt_path = out / runs.CHECKPOINT_NAME

    def check_out() -> None:
        existing = runs.existing_checkpoints(ckpt_path)
        if existing and not args.resume:
            raise SystemExit(f"{out} already holds a run ({', '.join(existing)}): pass --resume "
                             "to continue that run, or choose another --out")
        if args.resume and not runs.checkpoint_exists(ckpt_path):
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path} (nor "
                             f"{runs.previous_path(ckpt_path).name}); nothing to resume: start "
                             "without --resume")

    distributed.run_on_rank0(check_out)
    progress = Progress(args.meta_steps, args.progress and main_rank)
    try:
        with distributed.rank0_first("loading Omniglot"):  # rank 0 fills the cache
            data = load_omniglot(args.data_root, args.cache_dir, download=args.download)
    except OmniglotDataError as e:
        raise SystemExit(f"Omniglot data: {e}") from None
    try:
        split = split_alphabets(data.alphabets, data.num_characters, args.num_pretrain, args.seed)
    except ValueError as e:
        raise SystemExit(f"--num-pretrain: {e}") from None
    train_pool = TaskPool(data, split.train, args.seed, device)
    val_pool = TaskPool(data, split.val, args.seed, device)
    test_pool = TaskPool(data, split.test, args.seed, device)

    learner = build_learner(args, device)
    if world > 1:
        try:
            learner = DataParallelLearner(learner, args.seed)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    generator = torch.Generator().manual_seed(derived_seed(args.seed, "meta-train"))
    sampler = TaskSampler(len(train_pool))
    fields = ["step", *SUMMARY_FIELDS]
    start = 0
    config = _config(args)
    fingerprint = data_fingerprint(data)
    log_bytes: dict = {"train": None, "val": None}
    last_val = ""
    if args.resume:
        # rank 0 reads the file, every rank gets its content (on the CPU when distributed);
        # tensors and plain data only, with the fallback to checkpoint.prev.pt
        try:
            ckpt, _ = distributed.run_on_rank0(runs.load_checkpoint, ckpt_path,
                                               _check_checkpoint,
                                               map_location=device if world == 1 else "cpu")
        except runs.RunError as e:
            raise SystemExit(f"--resume: {e}") from None
        saved_world = ckpt["learner"].get("world_size", 1)
        if saved_world != world:
            raise SystemExit(f"--resume: the checkpoint was written by {saved_world} "
                             f"process(es); resume it on {saved_world}, not {world}")
        start = int(ckpt["step"])
        try:
            # a setting newer than the checkpoint counts as what the run had: its default
            saved = {**vars(build_parser().parse_args([])), **ckpt["config"]}
            runs.check_resume(saved, config, RESUMABLE, length_key="meta_steps",
                              done=start if learner.trains else None,
                              where=f"the run in {out}", flag_of=_flag)
        except runs.RunError as e:
            raise SystemExit(str(e)) from None
        if ckpt["data"] != fingerprint:
            raise SystemExit(
                f"--resume: the Omniglot data loaded now ({data.source}) differ from the data "
                f"the run in {out} was trained on (fingerprint {fingerprint}, expected "
                f"{ckpt['data']}); resume with the run's own --data-root (config.json's "
                "data_source), or start a new run")
        learner.load_state_dict(ckpt["learner"])
        generator.set_state(ckpt["generator"])
        sampler.load_state_dict(ckpt["sampler"])
        log_bytes = ckpt["logs"]
    train_log: runs.CsvLog | runs.NoLog = runs.NoLog()
    val_log: runs.CsvLog | runs.NoLog = runs.NoLog()
    if main_rank:
        try:
            train_log = runs.CsvLog(out / "train.csv", [*fields, "seconds", "meta_loss"],
                                    log_bytes["train"])
            val_log = runs.CsvLog(out / "val.csv", fields, log_bytes["val"])
        except runs.RunError as e:
            raise SystemExit(f"--resume: {e}") from None
        if args.resume:
            with open(out / "val.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            last_val = rows[-1]["test_acc"] if rows else ""
        runs.write_json(out / runs.CONFIG_NAME, {
            **config, "split": {"train": split.train, "val": split.val, "test": split.test},
            "data_source": data.source, "data_fingerprint": fingerprint})

    val_tasks = eval_batch(val_pool, args.val_tasks or len(val_pool), args, "val")

    val_times: list[float] = []  # seconds per validation task

    def validate(step: int) -> dict:
        t0 = time.perf_counter()
        res = evaluate_with_progress(learner, val_tasks, progress, f"validating (step {step})",
                                     world)
        val_times.append((time.perf_counter() - t0) / val_tasks.num_tasks)
        loss = res.test_loss.mean().item()
        if not math.isfinite(loss):
            raise runs.NonFiniteError(
                f"non-finite validation loss at meta-step {step} (test_loss={loss}): adapting "
                f"to a task diverges. Training stopped; {kept()}")
        row = _row(step, res)
        val_log.append(row)
        progress.phase(f"{args.meta_model} meta-steps")
        return row

    saved_step = start if args.resume else None

    def kept() -> str:
        if saved_step is None:
            return "no checkpoint had been written"
        return (f"the last finite checkpoint, {ckpt_path} (meta-step {saved_step}), is kept; "
                "lower --outer-lr / --inner-lr and start a new run, or resume from it")

    def save(step: int) -> None:
        nonlocal saved_step
        state = {"format": CHECKPOINT_FORMAT, "step": step, "config": config,
                 "learner": learner.state_dict(), "generator": generator.get_state(),
                 "sampler": sampler.state_dict(), "data": fingerprint,
                 "logs": {"train": train_log.sync(), "val": val_log.sync()}}
        bad = _nonfinite_tensors(state["learner"])
        if bad:  # every rank holds the same state: every rank stops here
            raise runs.NonFiniteError(
                f"non-finite parameters after meta-step {step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}). Training stopped; {kept()}")
        if main_rank:  # (learner.state_dict() is a collective under torchrun: all ranks call)
            runs.save_checkpoint(state, ckpt_path)
        saved_step = step

    steps = args.meta_steps if learner.trains else 0
    progress.restart(start, steps)
    if not args.resume:  # a resumed run's step-0 validation is already in val.csv
        if args.validate_every and learner.trains:
            last_val = validate(0)["test_acc"]
        save(0)  # a folder with logs always has a checkpoint to resume
    progress.phase(f"{args.meta_model} meta-steps")
    for step in range(start + 1, steps + 1):
        t0 = time.perf_counter()
        ids = sampler(args.meta_batch_size, generator)
        tasks = train_pool.sample(ids, args.task_steps, args.task_batch_size, generator)
        res = learner.meta_step(tasks)
        seconds = time.perf_counter() - t0
        info = learner.last_info
        losses = {"test_loss": res.test_loss.mean().item(), "train_loss":
                  res.train_loss.mean().item()}
        if info is not None:
            losses["meta_loss"] = float(info.meta_loss)
        if not all(math.isfinite(v) for v in losses.values()):
            progress.close()
            raise runs.NonFiniteError(
                f"non-finite loss at meta-step {step} ("
                + ", ".join(f"{k}={v}" for k, v in losses.items())
                + f"). Training stopped; {kept()}")
        train_log.append(_row(step, res, seconds=_fmt(seconds),
                              meta_loss=_fmt(info.meta_loss) if info else ""))
        if args.validate_every and step % args.validate_every == 0:
            last_val = validate(step)["test_acc"]
        if step % args.checkpoint_every == 0 or step == steps:
            save(step)
        progress.step(train_acc=f"{res.test_acc.mean().item():.3f}", val_acc=last_val,
                      s_per_step=f"{seconds:.1f}")
        if step == start + 1 and step < steps and main_rank:
            task_s = val_times[0] if val_times else seconds / args.meta_batch_size
            total, line = estimate(args, step, steps, seconds, task_s, val_tasks.num_tasks)
            if total > ESTIMATE_AFTER_S:
                progress.write(line)
    if saved_step != steps:
        save(steps)

    summary: dict = {"meta_model": args.meta_model, "seed": args.seed,
                     "meta_steps": steps, "num_pretrain": args.num_pretrain}
    if args.test:
        test_tasks = eval_batch(test_pool, args.eval_tasks, args, "test")
        res = evaluate_with_progress(learner, test_tasks, progress, "testing", world)
        summary.update(res.summary())
        summary["test_alphabets"] = list(split.test)
        task_rows = []
        for i in range(len(res.test_acc)):
            task_rows.append({
                "step": steps, "alphabet": test_pool.names[int(res.task_ids[i])],
                "test_acc": _fmt(res.test_acc[i].item()),
                "test_loss": _fmt(res.test_loss[i].item()),
                "auc_acc": _fmt(res.train_acc[i].mean().item()),
                "auc_loss": _fmt(res.train_loss[i].mean().item())})
        curve_rows = [{"step": k, "train_acc": _fmt(a), "train_loss": _fmt(l)} for k, (a, l) in
                      enumerate(zip(res.train_acc.mean(0).tolist(),
                                    res.train_loss.mean(0).tolist(), strict=True))]
        if main_rank:
            runs.write_csv(out / "test_tasks.csv", ["step", "alphabet", "test_acc",
                                                    "test_loss", "auc_acc", "auc_loss"],
                           task_rows)
            runs.write_csv(out / "test_curve.csv", ["step", "train_acc", "train_loss"],
                           curve_rows)
    if args.one_shot:
        progress.phase("one-shot runs")
        summary["one_shot"] = one_shot(learner, args, data, split, device)
    progress.close()
    if not main_rank:
        return summary
    runs.write_json(out / "test.json", summary)  # strict JSON: a non-finite number is null
    try:
        from .plots import plot_run

        plot_run(out)
    except Exception as e:  # a plot must never lose a finished run's numbers
        print(f"warning: plot failed: {e}", file=sys.stderr)
    return summary


def one_shot(learner: MetaLearner, args, data, split, device) -> dict:
    """Adapt to each official one-shot run; mean accuracy and how many runs were unseen."""
    path = Path(args.one_shot_path) if args.one_shot_path else (
        Path(args.data_root) if args.data_root else default_data_root()) / "all_runs.zip"
    try:
        runs = read_runs(path)
    except OmniglotDataError as e:
        raise SystemExit(f"--one-shot: {e}") from None
    pool = runs_pool(runs, device)
    g = torch.Generator().manual_seed(derived_seed(args.seed, "one-shot"))
    tasks = pool.sample(torch.arange(len(pool)), args.task_steps, len(runs[0].train), g,
                        distort=True, distort_test=False)
    res = learner.evaluate(tasks)
    alphabets = identify_alphabets(runs, data)
    seen = set(split.train)
    per_run = []
    for i, run in enumerate(runs):
        names = sorted({a for a in alphabets[i] if a is not None})
        per_run.append({"run": run.name, "acc": res.test_acc[i].item(), "alphabets": names,
                        "meta_trained_on_alphabet": any(a in seen for a in names)})
    unseen = [r["acc"] for r in per_run if not r["meta_trained_on_alphabet"]]
    return {"acc": res.test_acc.mean().item(), "auc_acc": res.train_acc.mean().item(),
            "acc_unseen_alphabets": sum(unseen) / len(unseen) if unseen else None,
            "num_unseen_runs": len(unseen), "runs": per_run}


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point: parse ``argv``, run, print the summary (rank 0 under torchrun)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except SystemExit as e:  # bad flag values: argparse's usage line, the message, exit code 2
        parser.error(str(e.code))
    joined = distributed.is_distributed()  # a caller's process group is left to the caller
    try:
        distributed.init_from_env(args.dist_timeout)  # no-op without torchrun
    except ValueError as e:
        raise SystemExit(f"torchrun environment: {e}") from None
    main_rank = distributed.is_main()
    try:
        summary = run(args)
    except runs.NonFiniteError as e:
        if main_rank:
            print(f"error: {e}", file=sys.stderr)
        raise runs.ExitWithMessage(str(e), runs.EXIT_NONFINITE) from None
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        if main_rank:  # one paragraph, no traceback, exit code 2 (as argparse's errors)
            print(f"error: {e.code}", file=sys.stderr)
        raise runs.ExitWithMessage(e.code, runs.EXIT_USAGE) from None
    finally:
        if not joined:
            distributed.shutdown()
    if not main_rank:
        return summary
    keys = ["meta_model", "seed", "meta_steps", "test_acc", "test_acc_std", "auc_acc"]
    print(runs.dumps_strict({k: summary[k] for k in keys if k in summary}, indent=None))
    if "one_shot" in summary:
        o = summary["one_shot"]
        print(runs.dumps_strict({"one_shot_acc": o["acc"], "unseen_runs": o["num_unseen_runs"],
                                 "one_shot_acc_unseen": o["acc_unseen_alphabets"]}, indent=None))
    out = run_folder(args)
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    print(f"outputs in {out}/: {', '.join(files)}")
    return summary
