"""Updaters: what :meth:`warp_rl.Warp.backward` runs over the replay buffer.

An updater is any object with the :class:`Updater` interface (a ``typing.Protocol``: no base
class to inherit): ``init_objective`` and ``backward(warp, step_fn) -> MetaUpdateInfo``. Its
``backward`` sees the model through :class:`MetaModel`, the part of :class:`warp_rl.Warp` meant
for updaters: the replay buffer, the partition, the detached meta-parameters
(:meth:`MetaModel.meta_tree`) and the setter of their gradients
(:meth:`MetaModel.assign_meta_grads`). :class:`DualUpdater` is the implementation this package
ships: WarpGrad's warp objective (Algorithm 2, its detached variant, or first order) and the
Leap initialisation objective.

This module does not import :mod:`warp_rl.warp`; ``warp.py`` imports it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from warp_rl import objectives
from warp_rl.buffer import ReplayBuffer, State, TaskRecord
from warp_rl.partition import Partition

WarpObjective = Literal["algorithm2", "algorithm2_detached", "first_order"]
WARP_OBJECTIVES: tuple[str, ...] = ("algorithm2", "algorithm2_detached", "first_order")
InitObjective = Literal["leap"]
Batching = Literal["auto", "vmap", "loop"]


@dataclass(frozen=True)
class MetaUpdateInfo:
    """What one ``Warp.backward`` did: the mean warp-objective loss over the replayed states
    (before any meta-step, ``nan`` without a warp objective), how many states were replayed,
    how many times ``step_fn`` was called, and whether states were evaluated with vmap."""

    meta_loss: float
    num_states: int
    num_steps: int
    batching: str


class MetaModel(Protocol):
    """What an updater uses of the model it meta-updates (:class:`warp_rl.Warp` implements it).

    Attributes:
        model: the wrapped model (``model(x)`` is what the task loss is computed on).
        partition: its adaptable and warp parameters and buffers.
        buffer: the replay buffer of this meta-update (adaptation states per task).
        tracks_momentum: whether states carry the adaptation optimiser's momentum buffers.
        learn_init: whether the initialisation is meta-learned.
        device: device of the adaptable parameters.
    """

    model: nn.Module
    partition: Partition
    buffer: ReplayBuffer
    tracks_momentum: bool
    learn_init: bool

    @property
    def device(self) -> torch.device: ...

    def meta_tree(self) -> dict[str, Any]:
        """Detached meta tensors: ``{"warp": {name: tensor}, "step_size": (n,), "momentum":
        (n,)}``, one step size and momentum per adaptable tensor (``adapt_names`` order)."""
        ...

    def assign_meta_grads(self, grads: dict[str, Any]) -> None:
        """Set the ``.grad`` of every meta-parameter from ``grads`` (keys as in
        :meth:`meta_tree`, plus ``"init"``: ``{name: tensor}``); a missing group gets
        ``None``."""
        ...

    def project_optimizer_parameters(self) -> None:
        """Clip learned step sizes to ``>= 0`` and momenta to ``[0, 0.999]`` (after a step)."""
        ...


@runtime_checkable
class Updater(Protocol):
    """The meta-objective :class:`warp_rl.Warp` runs in :meth:`~warp_rl.Warp.backward`.

    Attributes:
        init_objective: the name of the initialisation objective, or ``None``; ``Warp``
            meta-learns the initialisation by default when it is not ``None``.
    """

    init_objective: str | None

    def backward(
        self, warp: MetaModel, step_fn: Callable[[], Any] | None = None
    ) -> MetaUpdateInfo:
        """Meta-gradients from ``warp.buffer``: set them with ``warp.assign_meta_grads`` and
        call ``step_fn()`` (when given) to step the meta optimiser; see
        :meth:`warp_rl.Warp.backward` for the contract. Does not clear the buffer."""
        ...


def _stack(items: list[Any]) -> Any:
    """Stack a list of identical pytrees of tensors along a new leading dimension."""
    return tree_map(lambda *ts: torch.stack(ts), *items)


class DualUpdater:
    """The WarpGrad meta-objective for warp parameters, and optionally the initialisation (an
    :class:`Updater`).

    Args:
        criterion: task loss ``criterion(output, y) -> scalar``; an ``nn.Module`` class (as in
            the original README, ``CrossEntropyLoss``) is instantiated with no arguments.
        warp_objective: ``"algorithm2"`` (one differentiable inner step on a first batch, loss
            on a second batch), ``"algorithm2_detached"`` (the same with the inner gradient
            detached, as the original code computes it: first order, at the stepped point),
            ``"first_order"`` (loss at the replayed state, no inner step), or ``None``.
        init_objective: ``"leap"`` (simplified Leap, meta-learns the initialisation the
            adaptable parameters are reset to) or ``None``.
        meta_batch_size: replayed states per meta-gradient, i.e. per ``step_fn`` call; ``1``
            reproduces the original (one meta-step per state); ``None`` uses the whole buffer.
        epochs: passes over the buffer per ``backward``.
        leap_normalise: divide each trajectory step by its norm in the Leap objective.
        batching: ``"vmap"`` evaluates a meta-batch in one ``torch.func.vmap``, ``"loop"`` one
            state at a time; ``"auto"`` checks once that vmap works and matches the loop on the
            first meta-batch of two or more states (in full float32, to 1e-3 relative error),
            then keeps vmap (else warns and loops). vmap pays on GPUs and for small models;
            on CPUs, convolutional models are often faster with ``"loop"``.
        vmap_chunk_size: at most this many states per vmap call (bounds memory).
        seed: seed of the generator that shuffles states and draws task batches.
    """

    def __init__(
        self,
        criterion: Callable[..., torch.Tensor] | type[nn.Module],
        warp_objective: WarpObjective | None = "algorithm2",
        init_objective: InitObjective | None = "leap",
        meta_batch_size: int | None = 1,
        epochs: int = 1,
        leap_normalise: bool = True,
        batching: Batching = "auto",
        vmap_chunk_size: int = 32,
        seed: int = 0,
    ) -> None:
        if isinstance(criterion, type) and issubclass(criterion, nn.Module):
            criterion = criterion()
        if not callable(criterion):
            raise TypeError(f"criterion must be callable, got {type(criterion).__name__}")
        if warp_objective is not None and warp_objective not in WARP_OBJECTIVES:
            raise ValueError(
                f"warp_objective must be one of {list(WARP_OBJECTIVES)} or None, "
                f"got {warp_objective!r}"
            )
        if init_objective not in ("leap", None):
            raise ValueError(f"init_objective must be 'leap' or None, got {init_objective!r}")
        if meta_batch_size is not None and meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1 or None, got {meta_batch_size}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if batching not in ("auto", "vmap", "loop"):
            raise ValueError(f"batching must be 'auto', 'vmap' or 'loop', got {batching!r}")
        if vmap_chunk_size < 1:
            raise ValueError(f"vmap_chunk_size must be >= 1, got {vmap_chunk_size}")
        self.criterion = criterion
        self.warp_objective = warp_objective
        self.init_objective = init_objective
        self.meta_batch_size = meta_batch_size
        self.epochs = epochs
        self.leap_normalise = leap_normalise
        self.batching = batching
        self.vmap_chunk_size = vmap_chunk_size
        self.generator = torch.Generator().manual_seed(seed)
        self._vmap_ok: bool | None = {"vmap": True, "loop": False}.get(batching)
        #: relative error of vmap against the loop found by the "auto" check (None: not run)
        self.vmap_check_error: float | None = None

    # -- the per-state loss ---------------------------------------------------------------

    def state_loss(self, warp: MetaModel) -> objectives.StateLoss:
        """The per-state objective ``(meta, state, data, functional) -> loss`` for ``warp``.

        ``meta = {"warp": phi, "step_size": (n,), "momentum": (n,)}`` (one entry per adaptable
        tensor, in ``warp.partition.adapt_names`` order); ``state`` is a :class:`State` as a
        dict; ``data`` is ``(x1, y1, x2, y2)`` (Algorithm 2) or ``(x, y)`` (first order).
        """
        loss_fn = objectives.make_loss_fn(warp.model, self.criterion)
        names = warp.partition.adapt_names
        use_momentum = warp.tracks_momentum
        detach_inner = self.warp_objective == "algorithm2_detached"

        def algorithm2(
            meta: dict[str, Any], state: dict[str, Any], data: tuple, functional: bool
        ) -> torch.Tensor:
            x1, y1, x2, y2 = data
            alpha = {n: meta["step_size"][i] for i, n in enumerate(names)}
            mu = {n: meta["momentum"][i] for i, n in enumerate(names)} if use_momentum else None
            return objectives.algorithm2_loss(
                loss_fn, state["params"], meta["warp"], (x1, y1), (x2, y2), alpha,
                buffers=state["buffers"], momenta=mu,
                momentum_buffers=state["momentum_buffers"] if use_momentum else None,
                functional=functional,
                detach_inner=detach_inner,
            )

        def first_order(
            meta: dict[str, Any], state: dict[str, Any], data: tuple, functional: bool
        ) -> torch.Tensor:
            x, y = data
            return objectives.first_order_loss(
                loss_fn, state["params"], meta["warp"], (x, y), buffers=state["buffers"]
            )

        return first_order if self.warp_objective == "first_order" else algorithm2

    # -- the meta-update ------------------------------------------------------------------

    def backward(
        self, warp: MetaModel, step_fn: Callable[[], Any] | None = None
    ) -> MetaUpdateInfo:
        """Meta-gradients from ``warp.buffer``; see :meth:`warp_rl.Warp.backward`."""
        records = [r for r in warp.buffer.tasks if r.states]
        if not records:
            raise RuntimeError(
                "the replay buffer is empty: nothing was collected since the last meta-update. "
                "Call model.init_adaptation(), model.register_task(task), model.collect() and "
                "run forward passes in training mode while the task adapts"
            )
        num_steps = 0
        losses: list[torch.Tensor] = []
        accumulated: dict[str, Any] | None = None
        num_states = 0
        with objectives.affine_outside_norms(warp.model):
            if self.warp_objective is not None:
                items = [(r, s) for r in records for s in r.states]
                for _ in range(self.epochs):
                    order = torch.randperm(len(items), generator=self.generator).tolist()
                    size = self.meta_batch_size or len(items)
                    for start in range(0, len(order), size):
                        chunk = [items[i] for i in order[start : start + size]]
                        grads, chunk_losses = self._chunk_gradient(warp, chunk)
                        losses.append(chunk_losses)
                        num_states += len(chunk)
                        if step_fn is None:
                            accumulated = (
                                grads if accumulated is None
                                else tree_map(torch.add, accumulated, grads)
                            )
                            continue
                        n = len(chunk)
                        warp.assign_meta_grads(tree_map(lambda g, n=n: g / n, grads))
                        step_fn()
                        warp.project_optimizer_parameters()
                        num_steps += 1
            init_grads = None
            if self.init_objective == "leap" and warp.learn_init:
                init_grads = objectives.leap_gradient(
                    [r.normalised_path for r in records],  # type: ignore[misc]
                    [r.displacement() for r in records],
                    normalise=self.leap_normalise,
                )
            if step_fn is None:
                grads = {} if accumulated is None else tree_map(
                    lambda g: g / max(num_states, 1), accumulated
                )
                if init_grads is not None:
                    grads["init"] = init_grads
                warp.assign_meta_grads(grads)
            elif init_grads is not None:
                warp.assign_meta_grads({"init": init_grads})
                step_fn()
                num_steps += 1
        meta_loss = torch.cat(losses).mean().item() if losses else float("nan")
        batching = {True: "vmap", False: "loop", None: "one state per meta-batch"}[self._vmap_ok]
        return MetaUpdateInfo(meta_loss, num_states, num_steps, batching)

    def _chunk_gradient(
        self, warp: MetaModel, chunk: list[tuple[TaskRecord, State]]
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """Summed meta-gradient of one meta-batch of replayed states, and per-state losses."""
        device = warp.device
        meta = warp.meta_tree()
        state_loss = self.state_loss(warp)
        # draw each task's batches with one call: 2 per state (Algorithm 2) or 1 (first order)
        per_state = 1 if self.warp_objective == "first_order" else 2
        counts: dict[int, int] = {}
        for rec, _ in chunk:
            counts[id(rec)] = counts.get(id(rec), 0) + 1
        drawn: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        used: dict[int, int] = {}
        for rec, _ in chunk:
            if id(rec) not in drawn:
                drawn[id(rec)] = rec.sampler.sample_batches(
                    per_state * counts[id(rec)], self.generator
                )
                used[id(rec)] = 0
        states, data = [], []
        for rec, st in chunk:
            x, y = drawn[id(rec)]
            m, i = counts[id(rec)], used[id(rec)]
            used[id(rec)] += 1
            d = (x[i], y[i], x[m + i], y[m + i]) if per_state == 2 else (x[i], y[i])
            data.append(d)
            states.append(
                {"params": st.params, "buffers": st.buffers,
                 "momentum_buffers": st.momentum_buffers}
            )
        try:
            stacked = [(_stack(states), _stack(data))]
        except RuntimeError:  # tasks with batches of different shapes: one group per state
            stacked = [(_stack([s]), _stack([d])) for s, d in zip(states, data, strict=True)]
        to_dev = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        total: dict[str, Any] | None = None
        losses = []
        for st, d in stacked:
            st, d = tree_map(to_dev, st), tree_map(to_dev, d)
            g, ls = self._group_gradient(state_loss, meta, st, d)
            total = g if total is None else tree_map(torch.add, total, g)
            losses.append(ls)
        assert total is not None
        return total, torch.cat(losses)

    def _group_gradient(
        self, state_loss: objectives.StateLoss, meta: Any, states: Any, data: Any
    ) -> tuple[Any, torch.Tensor]:
        num = tree_leaves(states)[0].shape[0]
        if num == 1 or self._vmap_ok is False:
            return objectives.meta_gradient(state_loss, meta, states, data, use_vmap=False)
        if self._vmap_ok is None:  # "auto": check vmap once against the loop
            return self._check_vmap(state_loss, meta, states, data)
        return objectives.meta_gradient(
            state_loss, meta, states, data, use_vmap=True, chunk_size=self.vmap_chunk_size
        )

    def _check_vmap(
        self, state_loss: objectives.StateLoss, meta: Any, states: Any, data: Any
    ) -> tuple[Any, torch.Tensor]:
        """Decide ``"auto"`` batching: compare vmap with the loop on one meta-batch.

        Both are computed in full float32 (TF32 matmuls/convolutions off), so that round-off
        (~1e-6 relative) stays far below the errors of the PyTorch batching bugs this guards
        against (5e-2 and more); vmap is kept if every gradient tensor agrees to 1e-3
        relative (L2) error. The relative error is kept in :attr:`vmap_check_error`.
        """
        with _full_float32():
            looped = objectives.meta_gradient(state_loss, meta, states, data, use_vmap=False)
            try:
                mapped = objectives.meta_gradient(
                    state_loss, meta, states, data, True, self.vmap_chunk_size
                )
            except Exception as err:  # any failure means: do not vmap this model
                warnings.warn(
                    f"vmap over replayed states failed ({type(err).__name__}: {err}); "
                    "evaluating states one at a time",
                    RuntimeWarning,
                    stacklevel=5,
                )
                self._vmap_ok = False
                return looped
        errors = []
        for a, b in zip(tree_leaves(mapped[0]), tree_leaves(looped[0]), strict=True):
            diff, ref = float(torch.linalg.vector_norm(a - b)), float(torch.linalg.vector_norm(b))
            errors.append(diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf))
        self.vmap_check_error = max(errors, default=0.0)
        self._vmap_ok = self.vmap_check_error <= 1e-3
        if not self._vmap_ok:
            warnings.warn(
                "vmap over replayed states gave gradients that differ from the loop for this "
                f"model (relative error {self.vmap_check_error:.2e}); evaluating states one "
                "at a time",
                RuntimeWarning,
                stacklevel=5,
            )
        return looped


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """Turn TF32 off for CUDA matmuls and cuDNN convolutions inside the block."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
