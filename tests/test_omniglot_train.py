"""scripts/train_omniglot.py end to end on synthetic data: outputs, exact resume, errors,
the one-shot benchmark and the comparison plot."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
import torch
from script_loader import load_script

from warp_rl.omniglot.synthetic import write_npz_pair, write_runs
from warp_rl.omniglot.train import main

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """14 synthetic alphabets of 20 characters (3 pretrain + 10 test + 1 val) and a cache."""
    base = tmp_path_factory.mktemp("omniglot")
    root = write_npz_pair(base / "data", num_alphabets=14, characters=[20] * 13 + [21])
    write_runs(root / "all_runs", num_runs=20, seed=2)
    return root, base / "cache"


def argv(data, out, method, *extra) -> list[str]:
    root, cache = data
    warp = ["--warp-filters", "8", "--warp-meta-batch-size", "3"] if "warp" in method else []
    return ["--data-root", str(root), "--cache-dir", str(cache), "--out", str(out),
            "--meta-model", method, "--num-pretrain", "3", "--task-steps", "2",
            "--task-batch-size", "5", "--meta-batch-size", "2", "--num-filters", "8",
            "--val-tasks", "1", "--eval-tasks", "2", "--validate-every", "2", "--threads", "1",
            "--no-progress", *warp, *extra]


def read_rows(path: Path, drop=("seconds",)) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def test_run_writes_every_output(data, tmp_path):
    out = tmp_path / "run"
    summary = main(argv(data, out, "reptile", "--meta-steps", "2"))
    for name in ("config.json", "train.csv", "val.csv", "checkpoint.pt", "test.json",
                 "test_tasks.csv", "test_curve.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert [r["step"] for r in read_rows(out / "train.csv")] == ["1", "2"]
    assert [r["step"] for r in read_rows(out / "val.csv")] == ["0", "2"]
    assert len(read_rows(out / "test_curve.csv")) == 2
    tasks = read_rows(out / "test_tasks.csv")
    assert len(tasks) == 2 and tasks[0]["alphabet"] != tasks[1]["alphabet"]
    saved = json.loads((out / "test.json").read_text())
    assert saved["test_acc"] == pytest.approx(summary["test_acc"])
    assert 0.0 <= saved["test_acc"] <= 1.0 and 0.0 <= saved["auc_acc"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert len(config["split"]["test"]) == 10 and len(config["split"]["val"]) == 1


@pytest.mark.parametrize("method", ["reptile", "ft", "warp_leap"])
def test_resume_is_exact(data, tmp_path, method):
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    a = main(argv(data, straight, method, "--meta-steps", "3"))
    main(argv(data, halted, method, "--meta-steps", "2", "--no-test"))
    b = main(argv(data, halted, method, "--meta-steps", "3", "--resume"))
    assert read_rows(straight / "train.csv") == read_rows(halted / "train.csv")
    assert read_rows(straight / "val.csv") == read_rows(halted / "val.csv")
    assert a["test_acc"] == b["test_acc"] and a["auc_acc"] == b["auc_acc"]
    sa = torch.load(straight / "checkpoint.pt", weights_only=True)["learner"]
    sb = torch.load(halted / "checkpoint.pt", weights_only=True)["learner"]
    flat_a, flat_b = _tensors(sa), _tensors(sb)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert torch.equal(flat_a[k], flat_b[k]), k


def _tensors(tree, prefix=""):
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for k, v in items:
        if isinstance(v, dict | list | tuple):
            out.update(_tensors(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
    return out


def test_refuses_overwrite_mismatch_and_bad_flags(data, tmp_path, capsys):
    out = tmp_path / "run"
    main(argv(data, out, "no", "--no-test"))
    with pytest.raises(SystemExit, match="pass --resume"):
        main(argv(data, out, "no"))
    with pytest.raises(SystemExit, match=r"other settings.*--meta-model"):
        main(argv(data, out, "leap", "--resume"))
    for method, flags, message in [
        ("leap", ["--warp-residual"], "--warp-residual applies to warp_leap and warp only"),
        ("no", ["--task-batch-size", "0"], "--task-batch-size=0: must be >= 1"),
        ("warp_leap", ["--task-head", "fresh"],
         "--task-head applies to leap, reptile, fomaml and no only"),
        ("leap", ["--ft-heads", "shared"], "--ft-heads applies to ft only"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv(data, tmp_path / "w", method, *flags))
        assert exc.value.code == 2  # a usage error: argparse's code, no traceback
        err = capsys.readouterr().err
        assert err.startswith("usage:") and message in err
    with pytest.raises(SystemExit, match=r"--num-pretrain: num_pretrain=4.*\[1, 3\]"):
        main(argv(data, tmp_path / "y", "leap", "--num-pretrain", "4"))
    with pytest.raises(SystemExit, match=r"Omniglot data: no Omniglot data under"):
        main(argv((tmp_path / "none", tmp_path / "c"), tmp_path / "z", "no"))


def test_one_shot_benchmark_and_comparison_plot(data, tmp_path):
    root, _ = data
    runs = []
    for method in ("no", "leap"):
        out = tmp_path / method
        main(argv(data, out, method, "--meta-steps", "1", "--one-shot",
                  "--one-shot-path", str(root / "all_runs")))
        runs.append(out)
    shot = json.loads((tmp_path / "leap" / "test.json").read_text())["one_shot"]
    assert len(shot["runs"]) == 20 and 0.0 <= shot["acc"] <= 1.0
    # synthetic runs are not in the data set: no alphabet can be identified
    assert shot["num_unseen_runs"] == 20 and shot["runs"][0]["alphabets"] == []
    plot = load_script("plot_omniglot")
    fig = tmp_path / "cmp" / "comparison.png"
    text = plot.main([str(tmp_path), "--out", str(fig)])
    assert fig.read_bytes()[:8] == PNG_MAGIC
    lines = text.splitlines()
    assert len(lines) == 4 and {lines[2].split()[1], lines[3].split()[1]} == {"no", "leap"}
    assert (tmp_path / "cmp" / "comparison.md").read_text().strip() == text
    text = plot.main([str(tmp_path), "--out", str(fig), "--pair", "no", "leap"])
    assert text.splitlines()[-1].startswith("no verdict: 1 paired seed(s)")
    with pytest.raises(SystemExit) as err:
        plot.main([str(tmp_path), "--out", str(fig), "--pair", "leap", "reptile"])
    assert err.value.code == 2


def test_comparison_table_counts_runs_and_distinct_seeds():
    from warp_rl.omniglot.plots import table

    def run(method: str, seed: int | None, acc: float) -> dict:
        summary = {"meta_model": method, "meta_steps": 1, "test_acc": acc, "auc_acc": acc}
        return summary if seed is None else {**summary, "seed": seed}

    text = table({"leap": [run("leap", 0, 0.5), run("leap", 0, 0.7)],
                  "no": [run("no", 1, 0.2), run("no", 0, 0.2), run("no", 1, 0.2)],
                  "ft": [run("ft", 2, 0.9), run("ft", None, 0.8)]})
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:4]] == ["method", "runs", "seeds"]
    cells = {row[0]: row[1:] for row in
             ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}
    assert cells["leap"][:2] == ["2", "0"]  # two runs of seed 0: one seed, not two
    assert cells["no"][:2] == ["3", "0, 1"]
    assert cells["ft"][:2] == ["2", "2, ?"]  # a summary without its seed


# --------------------------------------------------------------------------- the script's manners


def test_help_gives_every_flag_a_meaning_and_one_default():
    from warp_rl.omniglot.train import build_parser

    p = build_parser()
    text = p.format_help()
    assert "(default: None)" not in text and "(default: True)" not in text
    assert "(default: False)" not in text
    formatter = p._get_formatter()
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        shown = formatter._get_help_string(action) % {"default": action.default}
        assert action.help, f"{flag} has no help"
        assert shown.count("default") == 1, f"{flag}: {shown!r}"


def test_default_threads_is_one(data, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = argv(data, tmp_path / "t", "no", "--no-test")
        i = args.index("--threads")
        main(args[:i] + args[i + 2 :])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)


def test_progress_estimate_and_closing_line(data, tmp_path, capsys, monkeypatch):
    from warp_rl.omniglot import train

    monkeypatch.setattr(train, "ESTIMATE_AFTER_S", 0.0)  # every run counts as long here
    out = tmp_path / "run"
    args = [a for a in argv(data, out, "leap", "--meta-steps", "3") if a != "--no-progress"]
    capsys.readouterr()
    main(args)
    cap = capsys.readouterr()
    err = cap.err
    # the bar names the step-0 validation task by task, then the meta-steps and the test
    assert "validating (step 0) 1/1" in err and "leap meta-steps" in err and "testing 2/2" in err
    assert err.index("validating (step 0)") < err.index("leap meta-steps")
    estimates = [line for line in err.splitlines() if line.startswith("estimate:")]
    assert len(estimates) == 1 and "2 meta-steps at" in estimates[0]
    assert "1 validations" in estimates[0]  # step 2 of 3 (--validate-every 2)
    last = cap.out.strip().splitlines()[-1]
    assert last.startswith(f"outputs in {out}/: ") and "test.json" in last and "val.csv" in last
    # without the bar, nothing but the estimate reaches stderr
    main([*argv(data, tmp_path / "quiet", "leap", "--meta-steps", "3")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("estimate:")


def test_warp_filters_with_one_warp_layer_is_reported(data, tmp_path, capsys):
    capsys.readouterr()
    quick = ["--meta-steps", "0", "--no-test"]
    main(argv(data, tmp_path / "w", "warp_leap", *quick))  # --warp-filters 8, one warp layer
    assert "--warp-filters 8 changes nothing with --warp-layers 1" in capsys.readouterr().err
    main(argv(data, tmp_path / "w2", "warp_leap", *quick, "--warp-layers", "2"))
    assert "changes nothing" not in capsys.readouterr().err


def test_resume_of_a_checkpoint_older_than_the_paper_options(data, tmp_path):
    """A checkpoint written before --task-head / --ft-heads existed resumes (as their defaults)
    and is refused only when they are set to something else."""
    out = tmp_path / "old"
    main(argv(data, out, "leap", "--meta-steps", "1", "--no-test"))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    for key in ("task_head", "ft_heads"):
        del ckpt["config"][key]
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.raises(SystemExit, match=r"cannot change --task-head on resume"):
        main(argv(data, out, "leap", "--meta-steps", "2", "--resume", "--task-head", "fresh"))
    main(argv(data, out, "leap", "--meta-steps", "2", "--resume", "--no-test"))
    assert [r["step"] for r in read_rows(out / "train.csv")] == ["1", "2"]


def test_paired_verdict_follows_the_rule_fixed_in_advance(tmp_path):
    from warp_rl.omniglot.plots import paired

    def runs(leap: list[float], warp: list[float], seeds=(0, 1, 2)) -> dict:
        out = {}
        for method, accs in (("leap", leap), ("warp_leap", warp)):
            out[method] = []
            for seed, acc in zip(seeds, accs, strict=True):
                d = tmp_path / f"{method}-{seed}"
                d.mkdir(exist_ok=True)
                (d / "val.csv").write_text(f"step,test_acc\n0,{0.1 + seed / 100}\n20,0.9\n")
                out[method].append({"meta_model": method, "seed": seed, "test_acc": acc / 100,
                                    "meta_steps": 300, "dir": d})
        return out

    # spread 2 (either method's range), every gap 5: ahead
    text, verdict = paired(runs([50, 51, 52], [55, 56, 57]), "leap", "warp_leap")
    assert verdict.startswith("warp_leap is ahead of leap"), verdict
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()[2:]]
    assert rows[1] == ["1", "11.0", "11.0", "51.0", "56.0", "+5.0"]  # step 0 read from val.csv
    # one seed's gap (1.5) inside the spread (2.5): no difference, although the mean gap is 4
    _, verdict = paired(runs([50, 51, 52], [55, 56, 53.5]), "leap", "warp_leap")
    assert verdict.startswith("no difference shown"), verdict
    # the candidate's own spread counts too: gaps 5, 9.5 and 1.5 all beat leap's range (1),
    # not warp_leap's (7.5)
    _, verdict = paired(runs([50, 50.5, 51], [55, 60, 52.5]), "leap", "warp_leap")
    assert verdict.startswith("no difference shown"), verdict
    # a wide spread swallows a constant gap
    _, verdict = paired(runs([50, 51, 60], [55, 56, 65]), "leap", "warp_leap")
    assert verdict.startswith("no difference shown"), verdict
    _, verdict = paired(runs([55, 56, 57], [50, 51, 52]), "leap", "warp_leap")
    assert verdict.startswith("warp_leap is behind leap"), verdict
    # pairs by seed, not by position: warp_leap's seeds listed in another order
    _, verdict = paired(runs([50, 51, 52], [57, 55, 56], seeds=(2, 0, 1)), "leap", "warp_leap")
    assert verdict.startswith("warp_leap is ahead"), verdict
    # the logs as the repository keeps them: val.csv gzipped
    kept = runs([50, 51, 52], [55, 56, 57])
    val = kept["leap"][1]["dir"] / "val.csv"
    with gzip.open(val.with_name("val.csv.gz"), "wt") as f:
        f.write(val.read_text())
    val.unlink()
    text, _ = paired(kept, "leap", "warp_leap")
    assert text.splitlines()[3].split("|")[2].strip() == "11.0"
    _, verdict = paired(runs([50, 51], [55, 56], seeds=(0, 1)), "leap", "warp_leap")
    assert verdict.startswith("no verdict: 2 paired seed(s)"), verdict
    twice = runs([50, 51, 52], [55, 56, 57])
    twice["leap"].append(dict(twice["leap"][0]))
    with pytest.raises(ValueError, match="two runs of leap with seed 0"):
        paired(twice, "leap", "warp_leap")
    unequal = runs([50, 51, 52], [55, 56, 57])
    unequal["warp_leap"][2]["meta_steps"] = 100  # a run tested after its first chunk only
    with pytest.raises(ValueError,
                       match=r"different numbers of meta-steps: .*warp_leap seed 2: 100"):
        paired(unequal, "leap", "warp_leap")
    with pytest.raises(ValueError, match="no finished runs of 'reptile'"):
        paired(runs([50, 51, 52], [55, 56, 57]), "leap", "reptile")
