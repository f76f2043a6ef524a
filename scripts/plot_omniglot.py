"""Compare Omniglot runs: a markdown table (mean +- std over runs) and a figure.

    python scripts/plot_omniglot.py runs/omniglot/* --out runs/omniglot/comparison.png

Every folder given (or found one level below a folder given) that holds a finished run's
test.json is grouped by its meta-model; the table goes to stdout and next to the figure
(comparison.md). Its ``runs`` column counts the runs of a method and ``seeds`` lists their
distinct seeds: two runs of seed 0 are two runs of one seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, not installed


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (or folders of run folders)")
    p.add_argument("--out", default="runs/omniglot/comparison.png", help="figure path")
    p.add_argument("--pair", nargs=2, metavar=("BASELINE", "CANDIDATE"),
                   help="also compare two methods seed by seed, with the verdict of the fair "
                        "test's rule (docs/omniglot.md): CANDIDATE is ahead only if it beats "
                        "BASELINE on every seed by more than the spread between seeds")
    args = p.parse_args(argv)
    from warp_rl.omniglot.plots import collect_runs, paired, plot_comparison, table  # matplotlib
    from warp_rl.utils import atomic_write_text

    dirs: list[Path] = []
    for r in map(Path, args.runs):
        dirs += [r] if (r / "test.json").is_file() else sorted(d for d in r.glob("*/"))
    runs = collect_runs(dirs)
    if not runs:
        p.error(f"no finished runs (folders with test.json) among {args.runs}")
    text = table(runs)
    if args.pair:
        try:
            pair_table, verdict = paired(runs, *args.pair)
        except ValueError as e:
            p.error(f"--pair: {e}")
        text += "\n\n" + pair_table + "\n\n" + verdict
    fig = plot_comparison(runs, args.out)
    atomic_write_text(Path(args.out).with_suffix(".md"), text + "\n")
    print(text)
    print(f"figure: {fig}")
    return text


if __name__ == "__main__":
    main()
