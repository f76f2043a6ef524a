"""Data-parallel training on ``torch.distributed``: the few helpers the trainers share.

A script launched by ``torchrun`` finds its place in the job in environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_from_env` joins the process group they describe; without them (a plain
``python script.py``), or with ``WORLD_SIZE=1``, it does nothing and every helper below is the
single-process identity (``rank() == 0``, ``world_size() == 1``, reductions return their input),
so the trainers run exactly as before.

Backends are chosen automatically: ``gloo`` for CPU tensors, plus ``nccl`` for CUDA tensors when
CUDA is available (one GPU per rank: rank ``LOCAL_RANK`` of a node uses ``cuda:LOCAL_RANK``,
see :func:`local_device`). Every collective has a timeout (``timeout_s``, default
:data:`~warp_rl.cli.DIST_TIMEOUT_S`): a rank that died or hangs makes the others raise
:class:`DistributedError` (with the cause) instead of waiting forever.

The data-parallel rule of both trainers: every rank computes the gradient of the *mean* loss
over its equal share of the batch; :func:`all_reduce_mean_` averages these gradients before any
clipping or optimiser step. The mean of equal-sized per-rank means is the mean over the whole
batch, so the update equals the single-process update on the concatenated batch (to float
round-off), and every rank applies the same update to the same parameters.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from warp_rl.cli import DIST_TIMEOUT_S

T = TypeVar("T")

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_timeout_s = DIST_TIMEOUT_S


class DistributedError(RuntimeError):
    """A collective failed: another rank died, or did not reach it within the timeout."""


# ------------------------------------------------------------------------------------------------
# Joining and leaving the process group
# ------------------------------------------------------------------------------------------------
def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


def launched_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by ``torchrun``)."""
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world} must be >= 1")
    return world


def init_from_env(timeout_s: float = DIST_TIMEOUT_S, backend: str | None = None) -> bool:
    """Join the process group described by ``torchrun``'s environment variables.

    Args:
        timeout_s: seconds any collective may wait for the other ranks (> 0).
        backend: ``torch.distributed`` backend string; default ``"cpu:gloo,cuda:nccl"`` when
            CUDA is available (CPU tensors over gloo, CUDA tensors over NCCL), else ``"gloo"``.

    Returns:
        True if this process is now one rank of a group of two or more; False for a single
        process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``: no process group is created).

    Raises:
        ValueError: bad ``timeout_s`` or incomplete/invalid environment variables.
    """
    global _timeout_s
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0; got {timeout_s!r}")
    world = launched_world_size()
    if world == 1:
        return False
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise RuntimeError(f"a process group of {dist.get_world_size()} ranks exists but "
                               f"WORLD_SIZE={world}")
        return True
    missing = [k for k in _ENV_VARS if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with "
                         "torchrun (it sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    rank_, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if not 0 <= rank_ < world:
        raise ValueError(f"RANK={rank_} must be in [0, WORLD_SIZE={world})")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)
    _timeout_s = float(timeout_s)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank_, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group (no-op without one). Call at the end, also after errors."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Where am I
# ------------------------------------------------------------------------------------------------
def is_distributed() -> bool:
    """True inside a process group of two or more ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in ``[0, world_size())`` (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank within this node (``LOCAL_RANK``; 0 without a process group)."""
    return _env_int("LOCAL_RANK", 0) if is_distributed() else 0


def is_main() -> bool:
    """True on rank 0, the only rank that writes logs, checkpoints and plots."""
    return rank() == 0


def timeout_s() -> float:
    """The collective timeout in seconds."""
    return _timeout_s


def local_device(device: str | torch.device) -> torch.device:
    """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun
    (one GPU per rank); CPU devices, and every device in a single process, are unchanged.

    Raises:
        ValueError: an explicit ``cuda:N`` other than ``cuda:LOCAL_RANK`` with two or more ranks,
            or more ranks on this node than visible GPUs.
    """
    dev = torch.device(device)
    if dev.type != "cuda" or not is_distributed():
        return dev
    local = local_rank()
    if dev.index is not None and dev.index != local:
        raise ValueError(f"device {str(dev)!r} under torchrun: each rank uses the GPU of its "
                         f"LOCAL_RANK (here cuda:{local}); pass cuda without an index")
    count = torch.cuda.device_count()
    if local >= count:
        raise ValueError(f"LOCAL_RANK={local} but only {count} GPU(s) are visible on this node; "
                         f"start at most {count} processes per node (--nproc_per_node)")
    return torch.device("cuda", local)


# ------------------------------------------------------------------------------------------------
# Splitting work and seeds
# ------------------------------------------------------------------------------------------------
def even_share(total: int, what: str = "batch_size") -> int:
    """``total / world_size()``, the equal share of one rank.

    Raises:
        ValueError: naming ``what`` if ``total`` is not a multiple of the number of ranks.
    """
    world = world_size()
    if total % world:
        raise ValueError(f"{what}={total} must be divisible by the number of processes "
                         f"({world}): each rank takes an equal share of {what}")
    return total // world


def check_resume_world_size(saved: int, what: str = "batch split") -> None:
    """Refuse to resume a run written by ``saved`` processes on a different number of them:
    the ``what`` and the ranks' seeds depend on the world size."""
    current = world_size()
    if saved != current:
        raise ValueError(
            f"the checkpoint was written by a run on {saved} process(es); resume it on "
            f"{saved}, not {current} (the {what} and the ranks' seeds depend on the number of "
            "processes)")


def shard(count: int, rank_: int | None = None, world: int | None = None) -> slice:
    """Rank ``rank_``'s contiguous part of ``count`` items (like ``numpy.array_split``: the
    first ``count % world`` ranks get one item more; a part may be empty)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    base, extra = divmod(count, world)
    start = rank_ * base + min(rank_, extra)
    return slice(start, start + base + (rank_ < extra))


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """Seed of rank ``rank_``'s own random stream in run ``seed``: ``seed`` itself on rank 0 (so
    rank 0 and a single process draw the same numbers), and a 62-bit seed from
    ``numpy.random.SeedSequence([seed, rank_])`` on the others."""
    rank_ = rank() if rank_ is None else rank_
    if rank_ == 0:
        return seed
    state = np.random.SeedSequence([seed, rank_]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(2))


# ------------------------------------------------------------------------------------------------
# Collectives (each a no-op for a single process)
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:  # DistBackendError and gloo/NCCL errors are RuntimeErrors
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {what} failed: another rank stopped, or did not "
            f"reach it within the {_timeout_s:g} s collective timeout (--dist-timeout). "
            f"Cause: {err}") from err


def barrier(what: str = "barrier") -> None:
    """Wait until every rank gets here (an all-reduce of a CPU scalar: gloo, with timeout)."""
    if is_distributed():
        with _collective(what):
            dist.all_reduce(torch.zeros(1))


def all_reduce_mean_(tensors: Sequence[torch.Tensor], what: str = "gradient average") -> None:
    """Replace each tensor, in place, by its mean over the ranks (one collective per
    device/dtype group: the tensors are flattened into one buffer).

    Every rank must pass tensors of the same shapes in the same order (the gradients of the
    same parameters).
    """
    if not is_distributed() or not tensors:
        return
    world = world_size()
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        with _collective(f"all_reduce ({what})"):
            dist.all_reduce(flat)
        flat.div_(world)
        for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
            t.copy_(part.view_as(t))


def average_gradients_(parameters: Sequence[torch.Tensor]) -> None:
    """:func:`all_reduce_mean_` over the ``.grad`` of ``parameters`` (those without a gradient
    are skipped; they must be the same on every rank)."""
    all_reduce_mean_([p.grad for p in parameters if p.grad is not None])


def all_reduce_sum(tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (a new tensor; ``tensor`` itself is unchanged)."""
    out = tensor.detach().clone()
    if is_distributed():
        with _collective(what):
            dist.all_reduce(out)
    return out


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (in place)."""
    if not is_distributed():
        return
    with torch.no_grad(), _collective("broadcast of the initial parameters"):
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src)


def all_gather_object(obj: T, what: str = "all_gather_object") -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    with _collective(what):
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T | None, src: int = 0, what: str = "broadcast_object") -> T:
    """Rank ``src``'s ``obj`` (picklable) on every rank (others pass anything, e.g. None)."""
    if not is_distributed():
        return obj  # type: ignore[return-value]
    box = [obj if rank() == src else None]
    with _collective(what):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_rank0(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` on rank 0 only and return its result on every rank; if it
    raises (``SystemExit`` included), every rank raises that exception.

    For what must be decided once, from rank 0's files: loading the checkpoint to resume,
    checking or clearing the output folder.
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    payload: tuple[bool, Any] | None = None
    if rank() == 0:
        try:
            payload = (True, fn(*args, **kwargs))
        except (Exception, SystemExit) as err:
            try:
                pickle.loads(pickle.dumps(err))
                payload = (False, err)
            except Exception:  # an exception that does not survive pickling
                payload = (False, RuntimeError(f"{type(err).__name__}: {err}"))
    ok, value = broadcast_object(payload, what=f"broadcast of {getattr(fn, '__name__', 'a')} "
                                 "result from rank 0")
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def rank0_first(what: str = "rank0_first") -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (e.g. filling a shared cache)."""
    if is_distributed() and rank() != 0:
        barrier(what)
    yield
    if is_distributed() and rank() == 0:
        barrier(what)
