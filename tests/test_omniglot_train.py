"""scripts/train_omniglot.py end to end on synthetic data: outputs, exact resume, errors,
the one-shot benchmark and the comparison plot."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

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


def test_refuses_overwrite_mismatch_and_bad_flags(data, tmp_path):
    out = tmp_path / "run"
    main(argv(data, out, "no", "--no-test"))
    with pytest.raises(SystemExit, match="pass --resume"):
        main(argv(data, out, "no"))
    with pytest.raises(SystemExit, match=r"other settings.*--meta-model"):
        main(argv(data, out, "leap", "--resume"))
    with pytest.raises(SystemExit, match=r"--warp-residual applies to warp_leap and warp only"):
        main(argv(data, tmp_path / "w", "leap", "--warp-residual"))
    with pytest.raises(SystemExit, match=r"--task-batch-size=0: must be >= 1"):
        main(argv(data, tmp_path / "x", "no", "--task-batch-size", "0"))
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
    spec = importlib.util.spec_from_file_location("_omniglot_plot", ROOT / "scripts" /
                                                  "plot_omniglot.py")
    plot = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = plot
    spec.loader.exec_module(plot)
    fig = tmp_path / "cmp" / "comparison.png"
    text = plot.main([str(tmp_path), "--out", str(fig)])
    assert fig.read_bytes()[:8] == PNG_MAGIC
    lines = text.splitlines()
    assert len(lines) == 4 and {lines[2].split()[1], lines[3].split()[1]} == {"no", "leap"}
    assert (tmp_path / "cmp" / "comparison.md").read_text().strip() == text
