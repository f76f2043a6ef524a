"""Every trainer under fault: a concurrent run, hostile and corrupt checkpoints, NaN, bad paths,
lost logs, short resumes, other data; plus the evaluation script's and the envs' bad inputs.

Each refused input must give one paragraph naming the flag or file, exit code 2 and no
traceback; a non-finite loss or parameter exits with code 3 keeping a finite checkpoint."""

from __future__ import annotations

import base64
import csv
import json
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from script_loader import load_script
from test_runs import (
    Evil,
    corrupt,
    hold_lock_in_subprocess,
    write_hostile_pickle,
    write_hostile_torch_file,
)

from agents.trainer import load_checkpoint
from warp_rl import runs
from warp_rl.omniglot import data as D
from warp_rl.omniglot.synthetic import write_npz_pair
from warp_rl.omniglot.train import main as omniglot_main

ROOT = Path(__file__).resolve().parents[1]



train_maze = load_script("train_maze")
evaluate_maze = load_script("evaluate_maze")
train_sb3 = load_script("train_maze_sb3")


def exit_of(fn, argv, capsys) -> tuple[int, str]:
    """Run ``fn(argv)``; its exit code (0 if it returned) and stderr, which must hold no
    traceback."""
    capsys.readouterr()
    try:
        result = fn(argv)
        code = result if isinstance(result, int) else 0  # train_maze.main returns its code
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def rows(path: Path, drop=("wall_s", "seconds", "rollout_s", "update_s")) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------------------------
# Maze trainer
# ------------------------------------------------------------------------------------------------
MAZE = ["--batch-size", "3", "--hidden-size", "8", "--maze-size", "7", "--episode-length", "10",
        "--warmup-episodes", "1", "--meta-interval", "2", "--checkpoint-every", "2", "--quiet",
        "--no-plot"]


def test_maze_run_on_a_folder_in_use_is_refused(tmp_path, capsys):
    proc = hold_lock_in_subprocess(tmp_path)
    try:
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, err = exit_of(train_maze.main, ["--episodes", "2", "--out", str(tmp_path),
                                                  *MAZE, *extra], capsys)
            assert code == 2 and f"in use by another run (pid {proc.pid}" in err
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "log.csv").exists()


@pytest.mark.parametrize("how", ["truncated", "random bytes", "empty"])
def test_maze_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(tmp_path, capsys, how):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train_maze.main(["--episodes", "4", "--out", str(straight), *MAZE]) == 0
    assert train_maze.main(["--episodes", "4", "--out", str(broken), *MAZE]) == 0
    corrupt(broken / "checkpoint.pt", how)
    code, err = exit_of(train_maze.main, ["--resume", "--out", str(broken), "--quiet",
                                          "--no-plot"], capsys)
    assert code == 0
    assert "warning: the latest checkpoint could not be used" in err and "checkpoint.prev" in err
    assert rows(straight / "log.csv") == rows(broken / "log.csv")
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(broken / "checkpoint.pt")
    assert a["episode"] == b["episode"] == 4
    for name, value in a["agent"].items():
        assert torch.equal(value, b["agent"][name]), name


def test_maze_both_checkpoints_corrupt_is_one_clear_error(tmp_path, capsys):
    assert train_maze.main(["--episodes", "4", "--out", str(tmp_path), *MAZE]) == 0
    corrupt(tmp_path / "checkpoint.pt", "random bytes")
    corrupt(tmp_path / "checkpoint.prev.pt", "truncated")
    code, err = exit_of(train_maze.main, ["--resume", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "checkpoint.pt:" in err and "checkpoint.prev.pt:" in err
    assert "weights_only=False" not in err


@pytest.mark.parametrize("writer", [write_hostile_torch_file, write_hostile_pickle])
def test_maze_hostile_checkpoint_never_runs(tmp_path, capsys, writer):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    writer(run / "checkpoint.pt", marker)
    code, err = exit_of(train_maze.main, ["--resume", "--out", str(run)], capsys)
    assert code == 2 and "refused" in err
    code, err = exit_of(evaluate_maze.main, [str(run), "--no-gif"], capsys)
    assert code == 2 and "refused" in err
    assert not marker.exists()


def test_maze_resume_cannot_shrink_the_run_nor_rewrite_its_config(tmp_path, capsys):
    assert train_maze.main(["--episodes", "4", "--out", str(tmp_path), *MAZE]) == 0
    config = (tmp_path / "config.json").read_text()
    code, err = exit_of(train_maze.main, ["--resume", "--episodes", "2", "--out",
                                          str(tmp_path)], capsys)
    assert code == 2 and "episodes 2: it has already done 4" in err
    assert (tmp_path / "config.json").read_text() == config


def test_maze_log_and_config_stay_strict_after_a_nan(tmp_path, capsys, monkeypatch):
    import agents.trainer as trainer_mod

    real = trainer_mod.a2c_loss
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss._replace(total=loss.total * np.nan) if len(calls) > 2 else loss

    monkeypatch.setattr(trainer_mod, "a2c_loss", poisoned)
    code, err = exit_of(train_maze.main, ["--episodes", "5", "--out", str(tmp_path), *MAZE],
                        capsys)
    assert code == 3 and "non-finite loss at episode 2" in err
    text = (tmp_path / "log.csv").read_text().lower()
    assert "nan" not in text and "inf" not in text
    assert load_checkpoint(tmp_path / "checkpoint.pt")["episode"] == 2
    json.loads((tmp_path / "config.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} in config.json"))


@pytest.mark.parametrize(("out", "message"), [("", "--out is empty"),
                                              ("FILE", "is a file, not a folder")])
def test_bad_out_folders_are_refused_by_every_trainer(tmp_path, capsys, omniglot_data, out,
                                                      message):
    if out == "FILE":
        out = str(tmp_path / "file")
        Path(out).write_text("not a folder")
    code, err = exit_of(train_maze.main, ["--episodes", "1", "--out", out, *MAZE], capsys)
    assert code == 2 and message in err
    code, err = exit_of(train_sb3.main, ["--algo", "a2c", *SB3, "--episodes", "1", "--out",
                                         out], capsys)
    assert code == 2 and message in err
    code, err = exit_of(omniglot_main, omniglot_argv(omniglot_data, out), capsys)
    assert code == 2 and message in err
    assert not (Path.cwd() / "log.csv").exists() and not (Path.cwd() / "train.csv").exists()


# ------------------------------------------------------------------------------------------------
# Maze evaluation script
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maze_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("maze_run")
    assert train_maze.main(["--episodes", "1", "--out", str(out), *MAZE]) == 0
    return out


@pytest.mark.parametrize(("target", "flags", "message"), [
    ("random.pt", [], "is not a readable torch checkpoint"),
    ("log.csv", [], "log.csv: is not a readable torch checkpoint"),
    ("RUN", ["--seed", "-1"], "--seed must be an integer in [0, 2**63 - 1]; got -1"),
    ("RUN", ["--seed", str(2**70)], "--seed must be an integer in [0, 2**63 - 1]"),
    ("RUN", ["--device", "tpu"], "--device 'tpu': expected cpu, cuda or cuda:N"),
    ("RUN", ["--device", "cuda:x"], "--device 'cuda:x'"),
    ("RUN", ["--gif", "FOLDER"], "is a folder; expected the path of a .gif file"),
])
def test_evaluate_refuses_bad_files_and_flags(maze_run, tmp_path, capsys, target, flags,
                                              message):
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).bytes(300))
    path = {"RUN": maze_run, "log.csv": maze_run / "log.csv"}.get(target, tmp_path / target)
    flags = [str(tmp_path) if f == "FOLDER" else f for f in flags]
    code, err = exit_of(evaluate_maze.main, [str(path), "--episodes", "1", *flags], capsys)
    assert code == 2 and message in err


# ------------------------------------------------------------------------------------------------
# SB3 baselines
# ------------------------------------------------------------------------------------------------
SB3 = ["--n-envs", "2", "--episode-length", "25", "--size", "5", "--n-steps", "5",
       "--no-progress", "--checkpoint-every", "1", "--seed", "2"]


def test_sb3_run_on_a_folder_in_use_is_refused(tmp_path, capsys):
    proc = hold_lock_in_subprocess(tmp_path)
    try:
        code, err = exit_of(train_sb3.main, ["--algo", "a2c", *SB3, "--episodes", "2", "--out",
                                             str(tmp_path), "--overwrite"], capsys)
        assert code == 2 and f"in use by another run (pid {proc.pid}" in err
    finally:
        proc.kill()
        proc.wait()


def test_sb3_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(tmp_path, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train_sb3.main(["--algo", "a2c", *SB3, "--episodes", "4", "--out", str(straight)])
    train_sb3.main(["--algo", "a2c", *SB3, "--episodes", "3", "--out", str(broken)])
    corrupt(broken / "checkpoint.pt", "truncated")
    code, err = exit_of(train_sb3.main, ["--algo", "a2c", *SB3, "--episodes", "4", "--resume",
                                         "--out", str(broken)], capsys)
    assert code == 0 and "continuing from the previous one" in err
    assert rows(straight / "log.csv") == rows(broken / "log.csv")


def _hostile_sb3_zip(path: Path, marker: Path) -> None:
    """A model.zip whose cloudpickled ``:serialized:`` field would create ``marker``."""
    payload = base64.b64encode(pickle.dumps(Evil(marker))).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": payload},
            "lr_schedule": {":type:": "<class 'function'>", ":serialized:": payload}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps(data))
        zf.writestr("_stable_baselines3_version", "2.3.0")


def test_sb3_resume_never_loads_pickles(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    train_sb3.main(["--algo", "a2c", *SB3, "--episodes", "2", "--out", str(run)])
    _hostile_sb3_zip(run / "model.zip", marker)  # resume never reads model.zip
    code, _ = exit_of(train_sb3.main, ["--algo", "a2c", *SB3, "--episodes", "3", "--resume",
                                       "--out", str(run)], capsys)
    assert code == 0 and not marker.exists()
    assert [r["episode"] for r in rows(run / "log.csv")] == ["0", "1", "2"]
    for path in (run / "checkpoint.pt", run / "checkpoint.prev.pt"):
        write_hostile_torch_file(path, marker)
    code, err = exit_of(train_sb3.main, ["--algo", "a2c", *SB3, "--episodes", "4", "--resume",
                                         "--out", str(run)], capsys)
    assert code == 2 and "refused" in err and not marker.exists()


def test_sb3_resume_cannot_shrink_the_run(tmp_path, capsys):
    train_sb3.main(["--algo", "a2c", *SB3, "--episodes", "2", "--out", str(tmp_path)])
    code, err = exit_of(train_sb3.main, ["--algo", "a2c", *SB3, "--episodes", "1", "--resume",
                                         "--out", str(tmp_path)], capsys)
    assert code == 2 and "it has already done 100" in err


def test_sb3_nan_stops_keeping_a_finite_checkpoint(tmp_path, capsys):
    code, err = exit_of(train_sb3.main, ["--algo", "a2c", *SB3, "--episodes", "4", "--lr",
                                         "1e30", "--out", str(tmp_path)], capsys)
    assert code == 3 and "non-finite parameters" in err
    ckpt = runs.safe_load(tmp_path / "checkpoint.pt")
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["policy"].values())
    assert "nan" not in (tmp_path / "log.csv").read_text().lower()


# ------------------------------------------------------------------------------------------------
# Omniglot
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def omniglot_data(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("omniglot_faults")
    root = write_npz_pair(base / "data", num_alphabets=14, characters=[20] * 13 + [21])
    return root, base / "cache"


def omniglot_argv(data, out, *extra) -> list[str]:
    root, cache = data
    return ["--data-root", str(root), "--cache-dir", str(cache), "--out", str(out),
            "--meta-model", "reptile", "--num-pretrain", "3", "--task-steps", "2",
            "--task-batch-size", "5", "--meta-batch-size", "2", "--num-filters", "8",
            "--val-tasks", "1", "--eval-tasks", "2", "--validate-every", "2", "--threads", "1",
            "--no-progress", "--no-test", *extra]


def test_omniglot_run_on_a_folder_in_use_is_refused(omniglot_data, tmp_path, capsys):
    proc = hold_lock_in_subprocess(tmp_path)
    try:
        code, err = exit_of(omniglot_main, omniglot_argv(omniglot_data, tmp_path), capsys)
        assert code == 2 and f"in use by another run (pid {proc.pid}" in err
    finally:
        proc.kill()
        proc.wait()


def test_omniglot_hostile_checkpoint_never_runs(omniglot_data, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    write_hostile_torch_file(run / "checkpoint.pt", marker)
    code, err = exit_of(omniglot_main, omniglot_argv(omniglot_data, run, "--resume"), capsys)
    assert code == 2 and "refused" in err and not marker.exists()


def test_omniglot_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(omniglot_data,
                                                                          tmp_path, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    omniglot_main(omniglot_argv(omniglot_data, straight, "--meta-steps", "3"))
    omniglot_main(omniglot_argv(omniglot_data, broken, "--meta-steps", "3"))
    corrupt(broken / "checkpoint.pt", "random bytes")
    code, err = exit_of(omniglot_main, omniglot_argv(omniglot_data, broken, "--meta-steps", "3",
                                                     "--resume"), capsys)
    assert code == 0 and "continuing from the previous one" in err
    for name in ("train.csv", "val.csv"):
        assert rows(straight / name) == rows(broken / name), name


def test_omniglot_resume_refuses_lost_history_shorter_runs_and_other_data(omniglot_data,
                                                                         tmp_path, capsys):
    run = tmp_path / "run"
    omniglot_main(omniglot_argv(omniglot_data, run, "--meta-steps", "2"))
    code, err = exit_of(omniglot_main, omniglot_argv(omniglot_data, run, "--meta-steps", "1",
                                                     "--resume"), capsys)
    assert code == 2 and "--meta-steps 1: it has already done 2" in err

    other = write_npz_pair(tmp_path / "other", num_alphabets=14, characters=[20] * 13 + [21],
                           seed=5)
    code, err = exit_of(omniglot_main, omniglot_argv((other, omniglot_data[1]), run,
                                                     "--meta-steps", "3", "--resume"), capsys)
    assert code == 2 and "differ from the data" in err and "--data-root" in err
    same = tmp_path / "copy"
    shutil.copytree(omniglot_data[0], same)  # the same data elsewhere is fine
    code, _ = exit_of(omniglot_main, omniglot_argv((same, omniglot_data[1]), run,
                                                   "--meta-steps", "2", "--resume"), capsys)
    assert code == 0

    (run / "train.csv").unlink()
    code, err = exit_of(omniglot_main, omniglot_argv(omniglot_data, run, "--meta-steps", "3",
                                                     "--resume"), capsys)
    assert code == 2 and "train.csv is missing" in err and "history is lost" in err


def test_omniglot_zero_steps_then_resume_validates_step_zero_once(omniglot_data, tmp_path):
    run = tmp_path / "run"
    omniglot_main(omniglot_argv(omniglot_data, run, "--meta-steps", "0"))
    omniglot_main(omniglot_argv(omniglot_data, run, "--meta-steps", "0", "--resume"))
    assert [r["step"] for r in rows(run / "val.csv")] == ["0"]
    omniglot_main(omniglot_argv(omniglot_data, run, "--meta-steps", "2", "--resume"))
    assert [r["step"] for r in rows(run / "val.csv")] == ["0", "2"]


@pytest.mark.parametrize("flag", ["--outer-lr", "--inner-lr"])
def test_omniglot_nan_stops_keeping_a_finite_checkpoint(omniglot_data, tmp_path, capsys, flag):
    code, err = exit_of(omniglot_main, omniglot_argv(omniglot_data, tmp_path, "--meta-steps",
                                                     "4", flag, "1e30"), capsys)
    assert code == 3 and "non-finite" in err and "Training stopped" in err
    assert not (tmp_path / "test.json").exists()
    for name in ("train.csv", "val.csv"):
        text = (tmp_path / name).read_text().lower()
        assert "nan" not in text and "inf" not in text
    for path in (tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"):
        if path.exists():
            state = runs.safe_load(path)["learner"]
            flat = [v for v in _tensors(state) if v.is_floating_point()]
            assert flat and all(bool(torch.isfinite(v).all()) for v in flat)


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(
        tree, list | tuple) else []
    return [t for v in items for t in _tensors(v)]


def test_omniglot_non_utf8_alphabets_csv_is_a_clear_error(tmp_path):
    root = write_npz_pair(tmp_path / "data", num_alphabets=3, characters=20, num_evaluation=1)
    path = root / "alphabets.csv"
    path.write_bytes(path.read_bytes().replace(b"Alphabet", b"Alph\xe9bet", 1))
    with pytest.raises(D.OmniglotDataError, match=r"alphabets\.csv: not UTF-8 text"):
        D.load_omniglot(root, cache_dir=tmp_path / "c")


def test_omniglot_npz_with_a_known_sha256_is_checked_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.delenv(D.CHECKSUM_CACHE_ENV, raising=False)
    root = write_npz_pair(tmp_path / "data", num_alphabets=3, characters=20, num_evaluation=1)
    background = root / "images_background.npz"
    real = D.file_digest(background)
    known = D.KnownFile("sha256", real, characters=40)  # this pair claims to be "official"
    monkeypatch.setitem(D.KNOWN_FILES, "images_background.npz", known)
    cache = tmp_path / "cache"
    D.load_omniglot(root, cache_dir=cache)
    assert (cache / D.CHECKSUM_CACHE_NAME).is_file()  # next to the image cache, not in ~

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again although size and mtime are unchanged")

    monkeypatch.setattr(D, "file_digest", no_hashing)
    D.load_omniglot(root, cache_dir=cache)  # later runs pay nothing
    monkeypatch.undo()
    monkeypatch.delenv(D.CHECKSUM_CACHE_ENV, raising=False)

    with np.load(background) as d:  # an edited file (new mtime and size) is hashed and refused
        images = d["images"].copy()
    images[0, 0, 0, 0] = ~images[0, 0, 0, 0]
    np.savez_compressed(background, images=images)
    monkeypatch.setitem(D.KNOWN_FILES, "images_background.npz", known)
    with pytest.raises(D.ChecksumError, match=r"images_background\.npz: sha256 .*expected"):
        D.load_omniglot(root, cache_dir=cache)


# ------------------------------------------------------------------------------------------------
# Environments
# ------------------------------------------------------------------------------------------------
def test_envs_refuse_rewards_that_overflow_float32():
    import envs

    for make in (lambda: envs.WarpMazeEnv(reward=1e39),
                 lambda: envs.WarpMazeVectorEnv(2, reward=1e39),
                 lambda: envs.TorchMazeBatch(2, reward=1e39),
                 lambda: envs.WarpMazeEnv(reward=1e37, episode_length=200)):
        with pytest.raises(ValueError, match=r"reward=.* is not accepted: expected \|reward\|"):
            make()


def test_torch_maze_batch_checks_actions_seeds_and_sizes_like_the_vector_env():
    import envs

    batch = envs.TorchMazeBatch(np.int64(4), size=5, validate_actions=False)
    assert batch.num_envs == 4 and type(batch.num_envs) is int
    batch.reset(seed=2**64)
    batch.reset(seed=np.uint64(7))
    with pytest.raises(ValueError, match="values in"):
        batch.step(torch.tensor([0, 1, 2, -1]))  # no longer the same as action 3
    with pytest.raises(ValueError, match="seed=-1 is not accepted"):
        batch.reset(seed=-1)
    vec = envs.WarpMazeVectorEnv(np.int64(4), size=5)
    vec.reset(seed=2**64)


def test_maze_trainer_that_cannot_start_releases_the_folder(tmp_path):
    import subprocess

    from agents.trainer import TrainConfig, Trainer

    cfg = TrainConfig(batch_size=3, hidden_size=8, maze_size=7, episode_length=10, episodes=2,
                      warmup_episodes=1, meta_interval=2)
    trainer = Trainer(cfg, tmp_path)
    trainer.train(progress=False)
    trainer.close()
    (tmp_path / "log.csv").unlink()
    with pytest.raises(runs.RunError, match=r"log\.csv is missing"):
        Trainer.resume(tmp_path)
    script = ("import sys; sys.path.insert(0, sys.argv[2]); from warp_rl import runs; "
              "runs.acquire_lock(sys.argv[1])")
    assert subprocess.run([sys.executable, "-c", script, str(tmp_path), str(ROOT)]).returncode == 0


def test_evaluate_a_folder_without_checkpoint_says_so(tmp_path, capsys):
    code, err = exit_of(evaluate_maze.main, [str(tmp_path), "--no-gif"], capsys)
    assert code == 2 and f"no checkpoint at {tmp_path / 'checkpoint.pt'}" in err
    assert "resume" not in err
