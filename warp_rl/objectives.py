"""Functional WarpGrad meta-objectives, written on ``torch.func``.

Notation: ``theta`` are the task-adaptable parameters (a dict name -> tensor), ``phi`` the warp
parameters, ``alpha`` the per-tensor inner step sizes and ``mu`` the per-tensor momenta. A
*replayed state* ``theta_k`` is a point of some task's adaptation trajectory, stored while the
task adapted. Every objective holds ``theta_k`` constant: gradients flow only into ``phi``,
``alpha`` and ``mu``.

* :func:`algorithm2_loss` (Algorithm 2 of the paper): one differentiable inner SGD step on
  ``batch1``, ``theta' = theta_k - alpha * (mu * m_k + grad_theta L(theta_k, phi; batch1))``,
  then the loss ``L(theta', phi; batch2)``. Its gradient w.r.t. ``phi`` is second order (it
  goes through ``grad_theta L``); w.r.t. ``alpha``/``mu`` it is the meta-gradient of learned
  step sizes / momentum (Meta-SGD-style, one per parameter tensor, i.e. per layer).
  With ``detach_inner=True`` the inner gradient is a constant (no second-order term): the
  gradient w.r.t. ``phi`` is then first order, taken at the stepped point on ``batch2``; this
  is what the original WarpGrad code computes (its inner gradient reaches the step detached).
* :func:`first_order_loss`: ``L(theta_k, phi; batch)``, no inner step (the paper's cheap
  variant; gives no gradient to ``alpha``/``mu``).
* :func:`adam_step`: one differentiable ``torch.optim.Adam`` step from a stored optimiser
  state (the maze trainer's fast optimiser; see ``agents.warp_objectives``).
* :func:`leap_gradient`: the simplified Leap gradient of the initialisation ``theta_0``,
  ``(1 / T) * sum_tasks sum_k (theta_k - theta_{k+1}) / ||theta_k - theta_{k+1}||`` with the
  norm taken over all adaptable tensors together (``normalise=False`` drops the division, so a
  task contributes ``theta_0 - theta_K``). A step of SGD on the initialisation with this
  gradient moves it along the tasks' trajectories, by unit-length steps per segment.

:func:`meta_gradient` sums the gradient of a per-state loss over a meta-batch of replayed
states, with ``torch.func.vmap`` over the states or with a plain loop; both give the same
numbers (see :func:`affine_outside_norms` for the one PyTorch quirk this needs).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

Tensors = dict[str, torch.Tensor]
#: ``loss_fn(tensors, x, y) -> scalar``: the task loss of the module run with ``tensors``
#: (parameters and buffers by name, as ``functional_call`` takes them) on inputs ``x``.
LossFn = Callable[[Tensors, torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss_fn(module: nn.Module, criterion: Callable[..., torch.Tensor]) -> LossFn:
    """``loss_fn(tensors, x, y) = criterion(functional_call(module, tensors, (x,)), y)``."""

    def loss_fn(tensors: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return criterion(functional_call(module, tensors, (x,)), y)

    return loss_fn


def sgd_step(
    theta: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    step_sizes: Mapping[str, torch.Tensor | float],
    momenta: Mapping[str, torch.Tensor | float] | None = None,
    momentum_buffers: Mapping[str, torch.Tensor] | None = None,
) -> Tensors:
    """One (differentiable) step of ``torch.optim.SGD`` (no dampening, no Nesterov).

    ``m' = mu * m + g`` (``m = 0`` when no buffer is given) and ``theta' = theta - alpha * m'``,
    per tensor name.
    """
    out: Tensors = {}
    for name, t in theta.items():
        direction = grads[name]
        if momenta is not None and momentum_buffers is not None:
            direction = momenta[name] * momentum_buffers[name] + direction
        out[name] = t - step_sizes[name] * direction
    return out


def adam_step(
    theta: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    exp_avg: Mapping[str, torch.Tensor],
    exp_avg_sq: Mapping[str, torch.Tensor],
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Tensors:
    """One (differentiable) step of ``torch.optim.Adam`` (no weight decay, no AMSGrad) from the
    optimiser state ``(exp_avg, exp_avg_sq, step)`` held before the step, per tensor name::

        m' = b1 m + (1 - b1) g          v' = b2 v + (1 - b2) g^2          t' = step + 1
        theta' = theta - lr / (1 - b1^t') * m' / (sqrt(v') / sqrt(1 - b2^t') + eps)

    The same numbers as ``Adam.step`` (tested), but a function of ``grads``, so a gradient can
    flow through the step into whatever the gradients depend on. ``sqrt`` is taken as 0 with a
    zero derivative where ``v' = 0`` (a weight that has never had a gradient), where the plain
    square root's derivative would be infinite.
    """
    b1, b2 = betas
    t = step + 1
    bias1, bias2 = 1.0 - b1 ** t, math.sqrt(1.0 - b2 ** t)
    out: Tensors = {}
    for name, th in theta.items():
        g = grads[name]
        m = b1 * exp_avg[name] + (1.0 - b1) * g
        v = b2 * exp_avg_sq[name] + (1.0 - b2) * g * g
        positive = v > 0
        root = torch.where(positive, v, torch.ones_like(v)).sqrt() * positive
        out[name] = th - (lr / bias1) * m / (root / bias2 + eps)
    return out


def _cloned(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    # buffers are cloned for every call so that a module that updates buffers in place never
    # touches the replayed state (nor a tensor captured across torch.func levels)
    return {k: v.clone() for k, v in tensors.items()}


def algorithm2_loss(
    loss_fn: LossFn,
    theta: Mapping[str, torch.Tensor],
    phi: Mapping[str, torch.Tensor],
    batch1: tuple[torch.Tensor, torch.Tensor],
    batch2: tuple[torch.Tensor, torch.Tensor],
    step_sizes: Mapping[str, torch.Tensor | float],
    buffers: Mapping[str, torch.Tensor] | None = None,
    momenta: Mapping[str, torch.Tensor | float] | None = None,
    momentum_buffers: Mapping[str, torch.Tensor] | None = None,
    functional: bool = True,
    detach_inner: bool = False,
) -> torch.Tensor:
    """WarpGrad's Algorithm 2 loss at one replayed state ``theta`` (held constant).

    Args:
        loss_fn: see :data:`LossFn`.
        theta: adaptable parameters ``theta_k`` by name.
        phi: warp parameters by name.
        batch1: ``(x, y)`` for the inner step.
        batch2: ``(x, y)`` on which the stepped parameters are evaluated.
        step_sizes: inner step size per adaptable name (float or scalar tensor).
        buffers: module buffers (e.g. batch-norm statistics) by name.
        momenta, momentum_buffers: optional momentum per name and the optimiser's momentum
            buffer at ``theta_k``.
        functional: take the inner gradient with ``torch.func.grad`` (composes with ``vmap``
            and ``torch.func.grad`` outside) or with ``torch.autograd.grad(create_graph=True)``
            (for a plain-autograd outer gradient; about a quarter less memory).
        detach_inner: treat the inner gradient as a constant (the original code's objective).

    Returns:
        Scalar ``L(theta_k - alpha * (mu * m_k + grad L(theta_k; batch1)); batch2)``.
    """
    theta = {k: v.detach() for k, v in theta.items()}
    buffers = dict(buffers or {})

    def inner(th: Tensors, buf: Tensors) -> torch.Tensor:
        return loss_fn({**th, **phi, **buf}, *batch1)

    if functional:
        g = grad(inner)(theta, _cloned(buffers))
    else:
        th = {k: v.requires_grad_(True) for k, v in theta.items()}  # fresh detached leaves
        gs = torch.autograd.grad(
            inner(th, _cloned(buffers)), list(th.values()), create_graph=True, allow_unused=True
        )
        g = {k: torch.zeros_like(v) if gk is None else gk
             for (k, v), gk in zip(th.items(), gs, strict=True)}
        theta = {k: v.detach() for k, v in th.items()}
    if detach_inner:
        g = {k: v.detach() for k, v in g.items()}
    stepped = sgd_step(theta, g, step_sizes, momenta, momentum_buffers)
    return loss_fn({**stepped, **phi, **_cloned(buffers)}, *batch2)


def first_order_loss(
    loss_fn: LossFn,
    theta: Mapping[str, torch.Tensor],
    phi: Mapping[str, torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    buffers: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """First-order variant: ``L(theta_k, phi; batch)`` with ``theta_k`` held constant."""
    theta = {k: v.detach() for k, v in theta.items()}
    return loss_fn({**theta, **phi, **_cloned(buffers or {})}, *batch)


#: ``state_loss(meta, state, data, functional) -> scalar``: the objective at one replayed
#: state. ``meta`` holds the tensors differentiated (a pytree), ``state`` and ``data`` are
#: per-state pytrees (for vmap, every leaf gets a leading meta-batch dimension); ``functional``
#: says whether inner gradients must use ``torch.func`` (see :func:`algorithm2_loss`).
StateLoss = Callable[[Any, Any, Any], torch.Tensor]


def meta_gradient(
    state_loss: StateLoss,
    meta: Any,
    states: Any,
    data: Any,
    use_vmap: bool,
    chunk_size: int | None = None,
) -> tuple[Any, torch.Tensor]:
    """Sum over a meta-batch of replayed states of ``grad_meta state_loss(meta, state, data)``.

    Args:
        state_loss: see :data:`StateLoss`.
        meta: pytree of tensors to differentiate (warp parameters, step sizes, ...).
        states, data: pytrees whose leaves have a leading dimension ``S`` (the meta-batch).
        use_vmap: ``True`` evaluates the states in one ``vmap`` (at most ``chunk_size`` at a
            time) under ``torch.func.grad``; ``False`` loops over them with plain autograd,
            holding one state's graph at a time.

    Returns:
        ``(grads, losses)``: the summed gradient (same pytree as ``meta``) and the per-state
        losses, shape ``(S,)``, detached.
    """
    num = tree_leaves(states)[0].shape[0]
    total: Any = None
    losses: list[torch.Tensor] = []

    def index(tree: Any, sl: slice | int) -> Any:
        return tree_map(lambda t: t[sl], tree)

    def summed(m: Any, s: Any, d: Any) -> tuple[torch.Tensor, torch.Tensor]:
        per = vmap(
            lambda m_, s_, d_: state_loss(m_, s_, d_, True),
            in_dims=(None, 0, 0),
            randomness="different",
        )(m, s, d)
        return per.sum(), per.detach()

    leaves, spec = tree_flatten(meta)

    step = (chunk_size or num) if use_vmap else 1
    for start in range(0, num, step):
        if use_vmap:
            part = slice(start, start + step)
            g, per = grad(summed, has_aux=True)(meta, index(states, part), index(data, part))
            losses.append(per)
        else:
            req = [t.detach().requires_grad_(True) for t in leaves]
            value = state_loss(tree_unflatten(req, spec), index(states, start),
                               index(data, start), False)
            gs = torch.autograd.grad(value, req, allow_unused=True)
            g = tree_unflatten(
                [torch.zeros_like(t) if gt is None else gt for t, gt in zip(req, gs, strict=True)],
                spec,
            )
            losses.append(value.detach().reshape(1))
        total = g if total is None else tree_map(torch.add, total, g)
    return total, torch.cat(losses)


def path_step(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], eps: float = 1e-9
) -> tuple[Tensors, float]:
    """The step ``before - after`` and its global L2 norm (over all tensors together)."""
    diff = {k: before[k] - after[k] for k in before}
    norm = torch.sqrt(sum((d.double() ** 2).sum() for d in diff.values())).item()
    return diff, max(norm, eps)


def leap_gradient(
    normalised_sums: list[Mapping[str, torch.Tensor]],
    displacements: list[Mapping[str, torch.Tensor]],
    normalise: bool = True,
) -> Tensors:
    """Simplified Leap gradient of the initialisation, averaged over tasks.

    Args:
        normalised_sums: per task, ``sum_k (theta_k - theta_{k+1}) / ||theta_k - theta_{k+1}||``.
        displacements: per task, ``theta_0 - theta_K`` (the unnormalised sum, telescoped).
        normalise: use the normalised sums (the default, as the original) or displacements.

    Returns:
        ``{name: mean over tasks}``.
    """
    parts = normalised_sums if normalise else displacements
    if not parts:
        raise ValueError("leap_gradient needs at least one task trajectory")
    return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}


# ---------------------------------------------------------------------------------------------
# Normalisation layers under vmap
# ---------------------------------------------------------------------------------------------


def _batch_norm_forward(
    m: nn.modules.batchnorm._BatchNorm,
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        m._check_input_dim(x)
        use_batch = m.training or (m.running_mean is None and m.running_var is None)
        # running statistics are never updated here: the meta-objective only reads them
        y = F.batch_norm(
            x,
            None if use_batch else m.running_mean,
            None if use_batch else m.running_var,
            None,
            None,
            use_batch,
            0.0,
            m.eps,
        )
        if m.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * m.weight.reshape(shape) + m.bias.reshape(shape)
        return y

    return forward


def _layer_norm_forward(m: nn.LayerNorm) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        if m.weight is not None:
            y = y * m.weight
        if m.bias is not None:
            y = y + m.bias
        return y

    return forward


@contextlib.contextmanager
def affine_outside_norms(module: nn.Module) -> Iterator[None]:
    """Run batch-norm and layer-norm layers with their affine transform outside the kernel.

    Second-order gradients through ``F.batch_norm`` / ``F.layer_norm`` with a *batched* weight
    under ``torch.func.vmap`` are wrong in PyTorch 2.x (the loop gives the right numbers; the
    test suite checks this). Normalising without the affine parameters and applying
    ``y * weight + bias`` as separate ops gives the same function with correct gradients.
    Inside this context batch-norm layers also stop updating running statistics (in training
    mode they normalise with the batch statistics, as before). The module's own ``forward``
    methods are restored on exit.
    """
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                new = _batch_norm_forward(m)
            elif isinstance(m, nn.LayerNorm):
                new = _layer_norm_forward(m)
            else:
                continue
            patched.append((m, m.__dict__.get("forward")))
            m.forward = new  # type: ignore[method-assign]
        yield
    finally:
        for m, previous in patched:
            if previous is None:
                del m.forward
            else:
                m.forward = previous
