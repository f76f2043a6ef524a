"""Figures and tables of Omniglot runs (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _read_csv(path: Path) -> list[dict]:
    """The rows of ``path``, or of ``path.gz`` (a run's logs as the repository keeps them);
    none if neither exists."""
    if path.is_file():
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        with gzip.open(gz, "rt", newline="") as f:
            return list(csv.DictReader(f))
    return []


def _col(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]


def plot_run(out: str | Path) -> Path:
    """``curves.png`` of one run: held-out accuracy of meta-training tasks and validation
    tasks against meta-steps, and the mean adaptation curve on the test tasks."""
    out = Path(out)
    train, val, curve = (_read_csv(out / n) for n in ("train.csv", "val.csv", "test_curve.csv"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    if train:
        ax.plot(_col(train, "step"), _col(train, "test_acc"), lw=0.8, alpha=0.6,
                label="meta-train tasks (held-out)")
    if val:
        ax.plot(_col(val, "step"), _col(val, "test_acc"), marker="o", label="validation")
    ax.set(xlabel="meta-step", ylabel="held-out accuracy", title="meta-training")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    ax = axes[1]
    if curve:
        ax.plot(_col(curve, "step"), _col(curve, "train_acc"))
    ax.set(xlabel="adaptation step", ylabel="training-batch accuracy",
           title="adaptation on test alphabets")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def collect_runs(dirs: list[Path]) -> dict[str, list[dict]]:
    """``{meta_model: [run summary, ...]}`` from folders holding ``test.json``."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for d in dirs:
        path = d / "test.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        summary["dir"] = d
        runs[summary["meta_model"]].append(summary)
    return dict(runs)


def seeds_of(runs: list[dict]) -> str:
    """The distinct seeds of ``runs``, sorted, as text (``"0, 1"``); ``?`` for a run whose
    summary has none. Two runs of one seed count once: they are one seed run twice."""
    seeds = {r.get("seed") for r in runs}
    known = sorted(s for s in seeds if s is not None)
    return ", ".join([*map(str, known), *(["?"] if None in seeds else [])])


def table(runs: dict[str, list[dict]]) -> str:
    """Markdown table: per method, the number of runs, their distinct seeds, and the mean +- std
    over the runs of held-out accuracy and AUC."""
    lines = [
        "| method | runs | seeds | meta-steps | test accuracy (%) | AUC accuracy (%) | "
        "one-shot (%) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = sorted(runs, key=lambda m: -_mean_std([r["test_acc"] for r in runs[m]])[0])
    for method in order:
        rs = runs[method]
        acc = _mean_std([100 * r["test_acc"] for r in rs])
        auc = _mean_std([100 * r["auc_acc"] for r in rs])
        shots = [100 * r["one_shot"]["acc"] for r in rs if "one_shot" in r]
        one = "" if not shots else "{:.1f} +- {:.1f}".format(*_mean_std(shots))
        steps = sorted({r["meta_steps"] for r in rs})
        lines.append(
            f"| {method} | {len(rs)} | {seeds_of(rs)} | {'/'.join(map(str, steps))} | "
            f"{acc[0]:.1f} +- {acc[1]:.1f}"
            f" | {auc[0]:.1f} +- {auc[1]:.1f} | {one} |"
        )
    return "\n".join(lines)


def plot_comparison(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """Validation accuracy against meta-steps (mean over runs, each run thin) and test
    adaptation curves (mean over runs)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in sorted(runs):
        rs = runs[method]
        vals = [_read_csv(Path(r["dir"]) / "val.csv") for r in rs]
        vals = [v for v in vals if v]
        if vals:
            n = min(len(v) for v in vals)
            steps = _col(vals[0][:n], "step")
            mean = [sum(_col(v[:n], "test_acc")[i] for v in vals) / len(vals) for i in range(n)]
            line, = axes[0].plot(steps, mean, marker="o", ms=3, label=method)
            if len(vals) > 1:  # each run, thin, under the mean
                for v in vals:
                    axes[0].plot(_col(v, "step"), _col(v, "test_acc"), lw=0.7, alpha=0.35,
                                 color=line.get_color())
        curves = [_read_csv(Path(r["dir"]) / "test_curve.csv") for r in rs]
        curves = [c for c in curves if c]
        if curves:
            n = min(len(c) for c in curves)
            mean = [sum(_col(c[:n], "train_acc")[i] for c in curves) / len(curves)
                    for i in range(n)]
            axes[1].plot(range(n), mean, label=method)
    axes[0].set(xlabel="meta-step", ylabel="validation held-out accuracy",
                title="meta-training (mean over runs)")
    axes[1].set(xlabel="adaptation step", ylabel="training-batch accuracy",
                title="adaptation on the test alphabets")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def step0_val_acc(run: dict) -> float:
    """Validation held-out accuracy at meta-step 0 (before any meta-training) of the run whose
    folder is ``run["dir"]``; NaN if its ``val.csv`` has no step-0 row."""
    rows = [r for r in _read_csv(Path(run["dir"]) / "val.csv") if r.get("step") == "0"]
    return float(rows[0]["test_acc"]) if rows else math.nan


def paired(runs: dict[str, list[dict]], baseline: str, candidate: str,
           min_seeds: int = 3) -> tuple[str, str]:
    """``candidate`` against ``baseline``, seed by seed, and the verdict of the rule fixed before
    the fair test (docs/omniglot.md):

    * the spread is the larger of the two methods' ranges (max - min) of test accuracy over the
      paired seeds;
    * ``candidate`` is **ahead** only if it beats ``baseline`` on every paired seed by more than
      the spread, **behind** if ``baseline`` beats it that way, and otherwise no difference is
      shown;
    * with fewer than ``min_seeds`` paired seeds there is no verdict.

    Returns ``(markdown table, verdict line)``; accuracies in percent. Seeds that only one of
    the methods ran are left out (named in the verdict line); two runs of one method with one
    seed, and paired runs tested after different numbers of meta-steps, are refused.
    """
    by_seed: dict[str, dict[int, dict]] = {}
    for method in (baseline, candidate):
        if method not in runs:
            raise ValueError(f"no finished runs of {method!r}; have {sorted(runs)}")
        seeds: dict[int, dict] = {}
        for r in runs[method]:
            if r.get("seed") is None:
                raise ValueError(f"a run of {method} in {r.get('dir')} has no seed in test.json")
            if r["seed"] in seeds:
                raise ValueError(f"two runs of {method} with seed {r['seed']}: "
                                 f"{seeds[r['seed']].get('dir')} and {r.get('dir')}")
            seeds[r["seed"]] = r
        by_seed[method] = seeds
    shared = sorted(set(by_seed[baseline]) & set(by_seed[candidate]))
    steps = {(m, s): by_seed[m][s].get("meta_steps") for m in by_seed for s in shared}
    # (0: a method that does not meta-train, such as ``no``)
    if len(set(steps.values()) - {0}) > 1:  # e.g. one run's test after its first chunk only
        raise ValueError("the paired runs were tested after different numbers of meta-steps: "
                         + ", ".join(f"{m} seed {s}: {n}" for (m, s), n in steps.items()))
    unpaired = sorted(set(by_seed[baseline]) ^ set(by_seed[candidate]))
    lines = [f"| seed | {baseline} at step 0 | {candidate} at step 0 | {baseline} | "
             f"{candidate} | {candidate} - {baseline} |",
             "| --- | --- | --- | --- | --- | --- |"]
    acc = {m: [100 * by_seed[m][s]["test_acc"] for s in shared] for m in (baseline, candidate)}
    diffs = [c - b for b, c in zip(acc[baseline], acc[candidate], strict=True)]
    for i, s in enumerate(shared):
        b0, c0 = (100 * step0_val_acc(by_seed[m][s]) for m in (baseline, candidate))
        lines.append(f"| {s} | {b0:.1f} | {c0:.1f} | {acc[baseline][i]:.1f} | "
                     f"{acc[candidate][i]:.1f} | {diffs[i]:+.1f} |")
    note = f" (left out, run by one method only: seeds {unpaired})" if unpaired else ""
    if len(shared) < min_seeds:
        return "\n".join(lines), (f"no verdict: {len(shared)} paired seed(s), the rule needs "
                                  f"{min_seeds}{note}")
    spread = max(max(acc[m]) - min(acc[m]) for m in acc)
    if all(d > spread for d in diffs):
        verdict = f"{candidate} is ahead of {baseline}"
    elif all(-d > spread for d in diffs):
        verdict = f"{candidate} is behind {baseline}"
    else:
        verdict = f"no difference shown between {candidate} and {baseline}"
    return "\n".join(lines), (f"{verdict}: differences {', '.join(f'{d:+.1f}' for d in diffs)} "
                              f"points against a spread between seeds of {spread:.1f}{note}")
