"""warp_rl.distributed: the single-process identity, splitting rules, seeds, and collectives on
2 real CPU processes (gloo): averaging, gathering, rank-0 decisions, and a dead or hung rank
that makes the other fail with a clear error within the collective timeout.

:func:`launch` (also used by the other ``test_distributed_*`` files) starts ``world`` spawned
processes with torchrun's environment variables on a free port and returns what each rank's
function returned (saved with ``torch.save``) and the exit codes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from warp_rl import distributed
from warp_rl.distributed import DistributedError


# ------------------------------------------------------------------------------------------------
# The launcher
# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, result_dir: str,
           args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        result = fn(rank, *args)
        torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def launch(fn: Callable[..., Any], world: int, result_dir: Path, *args: Any,
           timeout: float = 90.0) -> tuple[list[Any], list[int | None]]:
    """Run ``fn(rank, *args)`` on ``world`` spawned ranks; returns (results, exit codes).

    A rank that wrote no result (it died or raised) has ``None``. Fails the test if a rank is
    still running after ``timeout`` seconds (it is killed).
    """
    result_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, str(result_dir), args))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    hung = []
    for r, p in enumerate(procs):
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            hung.append(r)
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {timeout} s"
    results = []
    for r in range(world):
        path = result_dir / f"rank{r}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else None)
    return results, [p.exitcode for p in procs]


# ------------------------------------------------------------------------------------------------
# Single process: everything is the identity
# ------------------------------------------------------------------------------------------------
def test_single_process_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert not distributed.is_distributed()
    t = torch.tensor([1.0, 2.0])
    distributed.all_reduce_mean_([t])
    assert t.tolist() == [1.0, 2.0]
    assert distributed.all_reduce_sum(t).tolist() == [1.0, 2.0]
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.run_on_rank0(lambda x: x + 1, 1) == 2
    assert distributed.even_share(30) == 30
    assert distributed.local_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: no group either
    assert distributed.init_from_env() is False


def test_bad_settings_are_named(monkeypatch):
    with pytest.raises(ValueError, match="timeout_s"):
        distributed.init_from_env(timeout_s=0)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        distributed.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        distributed.init_from_env()


def test_shards_cover_everything_once():
    for count in range(0, 12):
        for world in range(1, 5):
            parts = [list(range(count))[distributed.shard(count, r, world)]
                     for r in range(world)]
            assert [i for part in parts for i in part] == list(range(count))
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_rank_seeds():
    assert distributed.rank_seed(7, 0) == 7
    seeds = {distributed.rank_seed(7, r) for r in range(1, 5)} | {7}
    assert len(seeds) == 5
    assert distributed.rank_seed(7, 1) == distributed.rank_seed(7, 1)
    assert distributed.rank_seed(7, 1) != distributed.rank_seed(8, 1)
    assert all(0 <= s < 2**62 for s in seeds)


# ------------------------------------------------------------------------------------------------
# Two ranks
# ------------------------------------------------------------------------------------------------
def _collectives(rank: int) -> dict:
    assert distributed.init_from_env(timeout_s=10)
    out: dict[str, Any] = {"rank": distributed.rank(), "world": distributed.world_size()}
    a = torch.full((2, 3), float(rank + 1))
    b = torch.arange(4, dtype=torch.float64) * (rank + 1)
    distributed.all_reduce_mean_([a, b])
    out["a"], out["b"] = a, b
    out["sum"] = distributed.all_reduce_sum(torch.tensor([rank + 1.0]))
    out["gathered"] = distributed.all_gather_object(("rank", rank))
    out["from0"] = distributed.run_on_rank0(lambda: f"decided by rank {distributed.rank()}")
    try:
        distributed.run_on_rank0(lambda: int("x"))
        out["error"] = None
    except ValueError as err:
        out["error"] = str(err)
    out["share"] = distributed.even_share(6, "meta_batch_size")
    try:
        distributed.even_share(5, "meta_batch_size")
    except ValueError as err:
        out["share_error"] = str(err)
    module = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(module.weight, float(rank))
    distributed.broadcast_module_(module)
    out["weight"] = module.weight.detach().clone()
    distributed.barrier()
    everyone = distributed.all_gather_object(out)
    # Then rank 1 crashes (no clean shutdown) and rank 0 reaches the next collective alone.
    if rank == 1:
        os._exit(3)
    start = time.monotonic()
    try:
        distributed.all_reduce_mean_([torch.ones(3)])
        dead_error = None
    except DistributedError as err:
        dead_error = str(err)
    return {"everyone": everyone, "dead_error": dead_error, "seconds": time.monotonic() - start}


def _hangs(rank: int, result_dir: Path) -> dict:
    distributed.init_from_env(timeout_s=1.5)
    if rank == 1:  # alive but never reaches the collective (until rank 0 has given up)
        deadline = time.monotonic() + 30
        while not (result_dir / "rank0.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os._exit(0)
    start = time.monotonic()
    try:
        distributed.all_reduce_mean_([torch.ones(3)])
        return {"error": None}
    except DistributedError as err:
        return {"error": str(err), "seconds": time.monotonic() - start}


def test_collectives_on_two_ranks_and_a_dead_rank(tmp_path):
    results, codes = launch(_collectives, 2, tmp_path)
    assert codes == [0, 3], codes
    assert results[1] is None
    for r, out in enumerate(results[0]["everyone"]):
        assert (out["rank"], out["world"]) == (r, 2)
        torch.testing.assert_close(out["a"], torch.full((2, 3), 1.5), rtol=0, atol=0)
        torch.testing.assert_close(out["b"], torch.arange(4, dtype=torch.float64) * 1.5)
        assert out["sum"].item() == 3.0
        assert out["gathered"] == [("rank", 0), ("rank", 1)]
        assert out["from0"] == "decided by rank 0"
        assert "invalid literal" in out["error"]
        assert out["share"] == 3
        assert "meta_batch_size=5 must be divisible by the number of processes (2)" in \
            out["share_error"]
        assert torch.equal(out["weight"], torch.zeros(2, 3))
    # The crash of rank 1: rank 0 stops with a clear error, not a hang.
    err = results[0]["dead_error"]
    assert err is not None, "rank 0 finished a collective with a dead peer"
    assert "rank 0 of 2: all_reduce (gradient average) failed" in err
    assert "10 s collective timeout" in err
    assert results[0]["seconds"] < 10 + 5


def test_a_hung_rank_times_out(tmp_path):
    results, _ = launch(_hangs, 2, tmp_path, tmp_path, timeout=60)
    err = results[0]["error"]
    assert err is not None, "rank 0 finished a collective with a hung peer"
    assert "1.5 s collective timeout" in err
    assert 1.0 < results[0]["seconds"] < 1.5 + 2.5
