"""Split a module's parameters and buffers into task-adaptable ones and warp ones.

WarpGrad interleaves *adaptable* layers (trained by plain gradient descent within a task, reset
for every new task) with *warp* layers (held fixed within a task, meta-learned across tasks).
:func:`partition` records which named parameters and buffers of a module belong to which side,
so that optimisers, the replay buffer and the functional meta-objectives agree on one split.

Example::

    part = partition(net, adapt=[net.fc1, net.fc2], warp=[net.warp])
    fast_opt = torch.optim.SGD(part.adapt_parameters(), lr=0.1)
    meta_opt = torch.optim.Adam(part.warp_parameters(), lr=1e-3)
    out = torch.func.functional_call(net, {**part.adapt_dict(), **part.warp_dict()}, (x,))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

Selector = Sequence[nn.Module] | Callable[[str], bool]
"""Which parameters and buffers a role gets: submodules of the model, or a predicate on the
parameter and buffer names (``True``: selected)."""


def _selected_names(
    module: nn.Module, selector: Selector, role: str
) -> tuple[set[str], set[str]]:
    """Names of the parameters and buffers of ``module`` chosen by ``selector``.

    A list of modules selects every parameter and buffer held by those modules (recursively);
    a predicate is called on each parameter and buffer name as given by ``named_parameters`` /
    ``named_buffers``.
    """
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    if callable(selector) and not isinstance(selector, nn.Module):
        return (
            {n for n in params if selector(n)},
            {n for n in buffers if selector(n)},
        )
    if isinstance(selector, nn.Module):
        raise TypeError(
            f"{role} must be a sequence of submodules or a predicate on names, got a single "
            f"{type(selector).__name__}; wrap it in a list: [{type(selector).__name__}(...)]"
        )
    try:
        modules = list(selector)
    except TypeError:
        raise TypeError(
            f"{role} must be a sequence of submodules or a callable name -> bool, "
            f"got {type(selector).__name__}"
        ) from None
    submodules = {id(m) for m in module.modules()}
    param_ids: set[int] = set()
    buffer_ids: set[int] = set()
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{role}[{i}] must be an nn.Module, got {type(m).__name__}")
        if id(m) not in submodules:
            raise ValueError(
                f"{role}[{i}] ({type(m).__name__}) is not a submodule of the partitioned "
                f"{type(module).__name__}"
            )
        param_ids.update(id(p) for p in m.parameters())
        buffer_ids.update(id(b) for b in m.buffers())
    return (
        {n for n, p in params.items() if id(p) in param_ids},
        {n for n, b in buffers.items() if id(b) in buffer_ids},
    )


@dataclass(frozen=True)
class Partition:
    """Which parameters and buffers of ``module`` are adaptable and which are warp.

    Names are those of ``module.named_parameters()`` / ``module.named_buffers()`` and are kept
    in the module's registration order. The parameter and buffer accessors always read the
    module's *current* tensors, so they stay valid after ``load_state_dict`` or ``.to(device)``.
    """

    module: nn.Module = field(repr=False, compare=False)
    adapt_names: tuple[str, ...]
    warp_names: tuple[str, ...]
    adapt_buffer_names: tuple[str, ...]
    warp_buffer_names: tuple[str, ...]

    def _params(self, names: tuple[str, ...]) -> dict[str, nn.Parameter]:
        params = dict(self.module.named_parameters())
        return {n: params[n] for n in names}

    def _buffers(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        buffers = dict(self.module.named_buffers())
        return {n: buffers[n] for n in names}

    def adapt_parameters(self) -> list[nn.Parameter]:
        """The task-adaptable parameters (fast weights), in registration order."""
        return list(self._params(self.adapt_names).values())

    def warp_parameters(self) -> list[nn.Parameter]:
        """The warp parameters (meta-learned, fixed while a task adapts)."""
        return list(self._params(self.warp_names).values())

    def adapt_buffers(self) -> list[torch.Tensor]:
        """Buffers of the adaptable side (e.g. batch-norm statistics reset for every task)."""
        return list(self._buffers(self.adapt_buffer_names).values())

    def warp_buffers(self) -> list[torch.Tensor]:
        """Buffers of the warp side (kept across tasks)."""
        return list(self._buffers(self.warp_buffer_names).values())

    def adapt_dict(self, include_buffers: bool = False) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` of adaptable parameters (and buffers), for ``functional_call``."""
        out: dict[str, torch.Tensor] = dict(self._params(self.adapt_names))
        if include_buffers:
            out.update(self._buffers(self.adapt_buffer_names))
        return out

    def warp_dict(self, include_buffers: bool = False) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` of warp parameters (and buffers), for ``functional_call``."""
        out: dict[str, torch.Tensor] = dict(self._params(self.warp_names))
        if include_buffers:
            out.update(self._buffers(self.warp_buffer_names))
        return out

    def buffer_dict(self) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` of all buffers of both sides."""
        return {**self._buffers(self.adapt_buffer_names), **self._buffers(self.warp_buffer_names)}


def partition(
    module: nn.Module,
    adapt: Selector,
    warp: Selector | None = None,
) -> Partition:
    """Split ``module`` into adaptable and warp parameters and buffers.

    Args:
        module: the whole model.
        adapt: the task-adaptable part: a sequence of submodules of ``module`` (all their
            parameters and buffers, recursively) or a predicate ``name -> bool`` applied to the
            names of ``module.named_parameters()`` and ``module.named_buffers()``.
        warp: the warp part, same forms; ``None`` means every parameter and buffer that is not
            adaptable.

    Returns:
        A frozen :class:`Partition`.

    Raises:
        ValueError: if a parameter or buffer is selected by both sides, if ``adapt`` selects no
            parameter, or (with an explicit ``warp``) a parameter or buffer is selected by
            neither side.
        TypeError: if a selector is neither a sequence of modules nor a callable.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    adapt_p, adapt_b = _selected_names(module, adapt, "adapt")
    all_p = [n for n, _ in module.named_parameters()]
    all_b = [n for n, _ in module.named_buffers()]
    if not adapt_p:
        raise ValueError(
            f"adapt selects no parameter of {type(module).__name__}; parameters are: {all_p}"
        )
    if warp is None:
        warp_p = set(all_p) - adapt_p
        warp_b = set(all_b) - adapt_b
    else:
        warp_p, warp_b = _selected_names(module, warp, "warp")
        both = sorted((adapt_p & warp_p) | (adapt_b & warp_b))
        if both:
            raise ValueError(f"selected as both adaptable and warp: {both}")
        neither = [n for n in all_p if n not in adapt_p | warp_p]
        neither += [n for n in all_b if n not in adapt_b | warp_b]
        if neither:
            raise ValueError(
                f"selected as neither adaptable nor warp: {neither}; add their modules to "
                "adapt or warp, or pass warp=None to make everything not adaptable warp"
            )
    return Partition(
        module=module,
        adapt_names=tuple(n for n in all_p if n in adapt_p),
        warp_names=tuple(n for n in all_p if n in warp_p),
        adapt_buffer_names=tuple(n for n in all_b if n in adapt_b),
        warp_buffer_names=tuple(n for n in all_b if n in warp_b),
    )
