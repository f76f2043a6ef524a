"""``Warp``: a model wrapper that adapts some layers per task and meta-learns the others.

Parameters fall in four groups:

* adapt (fast): moved by the task optimiser during adaptation; never by ``backward``.
* warp: moved by the meta optimiser in ``backward``; frozen (``requires_grad=False``) by
  ``init_adaptation``, so adaptation never moves them.
* init (learned with the Leap objective): moved by the meta optimiser; ``init_adaptation``
  copies it into the adaptable parameters.
* step_size, momentum (one per adaptable tensor, learned on request): moved by the meta
  optimiser through Algorithm 2; ``adapt_optimizer()`` reads them.

``meta_parameters()`` returns the warp parameters plus those of the optional groups that are
learned; build the meta optimiser from it (or from ``warp_parameters()`` alone).

Collection. While ``collect()`` is on, the wrapped model is in training mode and a task is
registered, a forward pre-hook on the wrapped model stores the adaptable state whenever it has
changed since the last stored state (detected with the tensors' version counters, which every
in-place update such as ``optimizer.step()`` bumps). With the usual loop (forward, backward,
``opt.step()``) this stores ``theta_0, theta_1, ..., theta_{K-1}``, one state per optimiser
step, however many forward passes each step makes; ``no_collect()`` (and ``init_adaptation``,
``register_task`` and ``backward``) then store the final ``theta_K``. ``collect_state()`` stores
the current state explicitly (e.g. for updates made through ``.data``, which version counters do
not see).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from warp_rl.buffer import ReplayBuffer, State
from warp_rl.partition import Partition, Selector, partition
from warp_rl.updaters import MetaUpdateInfo, Updater


class Warp(nn.Module):
    """WarpGrad wrapper around ``model`` (use it as the model: ``out = warp(x)``).

    Args:
        model: the full model; ``model(x)`` is what the task loss is computed on.
        adapt_layers: task-adaptable part: submodules of ``model`` or a predicate on parameter
            names (see :func:`warp_rl.partition`).
        warp_layers: warp part, same forms; ``None`` means everything not adaptable.
        updater: the meta-objective: any :class:`warp_rl.updaters.Updater` (an object with
            ``init_objective`` and ``backward(warp, step_fn)``), such as
            :class:`warp_rl.DualUpdater`.
        buffer: the replay buffer (:class:`ReplayBuffer`).
        step_size: inner SGD step size ``alpha`` used by Algorithm 2 (one per adaptable tensor,
            all starting here); use the same value as the adaptation learning rate
            (``adapt_optimizer()`` does).
        momentum: inner SGD momentum ``mu`` (0 disables momentum tracking unless learned).
        learn_step_size: meta-learn ``alpha`` per adaptable tensor (Meta-SGD style).
        learn_momentum: meta-learn ``mu`` per adaptable tensor.
        learn_init: meta-learn the initialisation; default: whether ``updater`` has an
            initialisation objective.
    """

    def __init__(
        self,
        model: nn.Module,
        adapt_layers: Selector,
        warp_layers: Selector | None,
        updater: Updater,
        buffer: ReplayBuffer,
        *,
        step_size: float = 0.1,
        momentum: float = 0.0,
        learn_step_size: bool = False,
        learn_momentum: bool = False,
        learn_init: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(updater, Updater):
            raise TypeError("updater must be a warp_rl.updaters.Updater, such as a DualUpdater: "
                            "an object with init_objective and backward(warp, step_fn); got "
                            f"{type(updater).__name__}")
        if not isinstance(buffer, ReplayBuffer):
            raise TypeError(f"buffer must be a ReplayBuffer, got {type(buffer).__name__}")
        if step_size < 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.model = model
        self.partition: Partition = partition(model, adapt_layers, warp_layers)
        self.updater = updater
        self.buffer = buffer
        self.learn_init = updater.init_objective is not None if learn_init is None else learn_init
        self.learn_step_size = learn_step_size
        self.learn_momentum = learn_momentum
        self.tracks_momentum = learn_momentum or momentum > 0
        n = len(self.partition.adapt_names)
        adapt = self.partition.adapt_parameters()
        self.init = nn.ParameterList(
            [nn.Parameter(p.detach().clone(), requires_grad=self.learn_init) for p in adapt]
        )
        self.init_buffers = nn.Module()
        for i, b in enumerate(self.partition.adapt_buffers()):
            self.init_buffers.register_buffer(str(i), b.detach().clone())
        like = {"device": adapt[0].device, "dtype": adapt[0].dtype}
        self.step_size = nn.Parameter(
            torch.full((n,), float(step_size), **like), requires_grad=learn_step_size
        )
        self.momentum = nn.Parameter(
            torch.full((n,), float(momentum), **like), requires_grad=learn_momentum
        )
        self._collecting = False
        self._in_meta_update = False
        self._task: int | None = None
        self._last_versions: tuple[int, ...] | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self.model.register_forward_pre_hook(self._pre_forward)

    # -- parameter groups -------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the adaptable parameters."""
        return self.partition.adapt_parameters()[0].device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` (storing the state first when collecting)."""
        return self.model(*args, **kwargs)

    def adapt_parameters(self) -> list[nn.Parameter]:
        """Task-adaptable (fast) parameters of the wrapped model."""
        return self.partition.adapt_parameters()

    def named_adapt_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the adaptable parameters (names as in ``model``)."""
        yield from self.partition.adapt_dict().items()

    def warp_parameters(self) -> list[nn.Parameter]:
        """Warp parameters of the wrapped model."""
        return self.partition.warp_parameters()

    def named_warp_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the warp parameters (names as in ``model``)."""
        yield from self.partition.warp_dict().items()

    def init_parameters(self) -> list[nn.Parameter]:
        """The initialisation the adaptable parameters are reset to (``adapt_names`` order)."""
        return list(self.init)

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """``[step_size (n,), momentum (n,)]``: inner-SGD hyper-parameters per adaptable tensor."""
        return [self.step_size, self.momentum]

    def named_meta_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The learned meta-parameters: ``warp.<name>``, then ``init.<name>``, ``step_size``,
        ``momentum`` for the groups that are learned."""
        for n, p in self.partition.warp_dict().items():
            yield f"warp.{n}", p
        if self.learn_init:
            for n, p in zip(self.partition.adapt_names, self.init, strict=True):
                yield f"init.{n}", p
        if self.learn_step_size:
            yield "step_size", self.step_size
        if self.learn_momentum:
            yield "momentum", self.momentum

    def meta_parameters(self) -> list[nn.Parameter]:
        """All learned meta-parameters (see :meth:`named_meta_parameters`)."""
        return [p for _, p in self.named_meta_parameters()]

    def adapt_optimizer(self) -> torch.optim.SGD:
        """A ``torch.optim.SGD`` over the adaptable parameters with the current (learned) step
        size and momentum per tensor; it is registered so that momentum buffers are stored."""
        groups = [
            {"params": [p], "lr": float(a), "momentum": float(m)}
            for p, a, m in zip(
                self.adapt_parameters(),
                self.step_size.detach().tolist(),
                self.momentum.detach().tolist(),
                strict=True,
            )
        ]
        opt = torch.optim.SGD(groups, lr=groups[0]["lr"])
        self.register_optimizer(opt)
        return opt

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Store ``optimizer``'s momentum buffers with each state (needed by learned momentum)."""
        self._optimizer = optimizer

    # -- the task loop ----------------------------------------------------------------------

    def init_adaptation(self) -> None:
        """Start a new task: finish the previous one, copy the initialisation into the adaptable
        parameters and the initial buffers into the adaptable buffers (batch-norm statistics
        restart per task), freeze the warp parameters (``requires_grad=False``), unfreeze and
        zero the adaptable ones, put the model in training mode. Calls ``model.init_adaptation()``
        if the model defines it."""
        self._finish_task()
        self._task = None
        self._optimizer = None
        with torch.no_grad():
            for p, p0 in zip(self.adapt_parameters(), self.init, strict=True):
                p.copy_(p0)
                p.requires_grad_(True)
                p.grad = None
            for b, b0 in zip(self.partition.adapt_buffers(), self.init_buffers.buffers(),
                             strict=True):
                b.copy_(b0)
        for p in self.warp_parameters():
            p.requires_grad_(False)
        hook = getattr(self.model, "init_adaptation", None)
        if callable(hook):
            hook()
        self.model.train()

    def register_task(self, task: Any) -> int:
        """Register ``task``'s data in the buffer and make it the task states are stored under.

        ``task`` is an iterable of ``(x, y)`` batches (a list, a ``DataLoader``, a
        :class:`warp_rl.TensorTask`) or any object with ``sample_batches(num, generator)``; see
        :mod:`warp_rl.data`. Returns the task's index in the buffer.
        """
        self._finish_task()
        self._task = self.buffer.new_task(task)
        self._last_versions = None
        return self._task

    def collect(self) -> None:
        """Store adaptation states from now on (see the module docstring)."""
        self._collecting = True

    def no_collect(self) -> None:
        """Store the final state of the current task, then stop storing states."""
        self._finish_task()
        self._collecting = False

    @property
    def collecting(self) -> bool:
        """Whether states are being stored."""
        return self._collecting

    def collect_state(self) -> bool:
        """Store the current adaptable state for the registered task if it changed since the
        last stored one. Returns whether a state was offered to the buffer."""
        if self._task is None:
            raise RuntimeError("no task registered: call register_task(task) before collecting")
        params = self.adapt_parameters()
        versions = tuple(p._version for p in params)
        if versions == self._last_versions:
            return False
        self._last_versions = versions
        dev = self.buffer.device
        named = self.partition.adapt_dict()
        momentum: dict[str, torch.Tensor] = {}
        if self.tracks_momentum:
            opt_state = self._optimizer.state if self._optimizer is not None else {}
            for n, p in named.items():
                buf = opt_state.get(p, {}).get("momentum_buffer")
                momentum[n] = (
                    torch.zeros_like(p, device=dev) if buf is None
                    else buf.detach().to(dev, copy=True)
                )
        state = State(
            params={n: p.detach().to(dev, copy=True) for n, p in named.items()},
            buffers={
                n: b.detach().to(dev, copy=True)
                for n, b in zip(
                    self.partition.adapt_buffer_names, self.partition.adapt_buffers(), strict=True
                )
            },
            momentum_buffers=momentum,
        )
        self.buffer.add(self._task, state)
        return True

    def _pre_forward(self, module: nn.Module, args: Any) -> None:
        if self._collecting and module.training and not self._in_meta_update and (
            self._task is not None
        ):
            self.collect_state()

    def _finish_task(self) -> None:
        if self._collecting and self._task is not None and not self._in_meta_update:
            self.collect_state()

    # -- the meta-update --------------------------------------------------------------------

    def backward(
        self, step_fn: Callable[[], Any] | None = None, *, retain_buffer: bool = False
    ) -> MetaUpdateInfo:
        """Meta-update from the replay buffer (adaptable parameters are not touched).

        With ``step_fn``: for every meta-batch of replayed states the ``.grad`` of each
        meta-parameter is *set* (warp and learned step sizes/momentum: the meta-batch's mean
        gradient; others: ``None``) and ``step_fn()`` is called (it should step the meta
        optimiser); then, with a Leap objective, the initialisation's ``.grad`` is set alone and
        ``step_fn()`` is called once more. Learned step sizes are clipped to ``>= 0`` and momenta
        to ``[0, 0.999]`` after each call. Without ``step_fn``: the mean gradient over the whole
        buffer (and the Leap gradient) is set and nothing is stepped.

        The buffer is cleared afterwards unless ``retain_buffer``. Raises ``RuntimeError`` when
        nothing was collected.
        """
        was_collecting = self._collecting
        self._finish_task()
        self._collecting = False
        self._in_meta_update = True
        mode = self.model.training
        self.model.train()
        try:
            info = self.updater.backward(self, step_fn)
        finally:
            self._in_meta_update = False
            self.model.train(mode)
            self._collecting = was_collecting
        if not retain_buffer:
            self.buffer.clear()
            self._task = None
        return info

    # -- what updaters use (warp_rl.updaters.MetaModel) ------------------------------------

    def meta_tree(self) -> dict[str, Any]:
        """Detached meta tensors for the functional objective: ``{"warp": {name: tensor},
        "step_size": (n,), "momentum": (n,)}`` (see ``DualUpdater.state_loss``)."""
        return {
            "warp": {n: p.detach() for n, p in self.partition.warp_dict().items()},
            "step_size": self.step_size.detach(),
            "momentum": self.momentum.detach(),
        }

    def assign_meta_grads(self, grads: dict[str, Any]) -> None:
        """Set ``.grad`` of every meta-parameter from ``grads`` (keys as in :meth:`meta_tree`,
        plus ``"init"``: ``{name: tensor}``; missing groups -> ``None``)."""
        warp_grads = grads.get("warp", {})
        for n, p in self.partition.warp_dict().items():
            g = warp_grads.get(n)
            p.grad = None if g is None else g.detach().to(p.device).clone()
        init_grads = grads.get("init")
        for n, p in zip(self.partition.adapt_names, self.init, strict=True):
            p.grad = None if init_grads is None else init_grads[n].to(p.device).clone()
        for key, p, learned in (
            ("step_size", self.step_size, self.learn_step_size),
            ("momentum", self.momentum, self.learn_momentum),
        ):
            g = grads.get(key)
            p.grad = None if (g is None or not learned) else g.detach().clone()

    def project_optimizer_parameters(self) -> None:
        """Clip learned step sizes to ``>= 0`` and momenta to ``[0, 0.999]`` (after a step)."""
        with torch.no_grad():
            self.step_size.clamp_(min=0.0)
            self.momentum.clamp_(0.0, 0.999)
