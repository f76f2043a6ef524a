"""Adapting the tasks of a meta-batch together (``--task-batching grouped``).

Every task of a meta-batch adapts its own copy of the classifier's adaptable weights. The loop
(``--task-batching loop``) adapts one task after another, each step a forward and a backward
pass of one task's batch. Grouped, one forward and one backward pass per adaptation step serve
every task:

- the tasks' images are stacked along channels, ``(B, T * C, H, W)`` (``C = 1`` at the input);
- a convolution with per-task weights ``(T, out, in, k, k)`` is one convolution with weights
  ``(T * out, in, k, k)`` and ``groups=T``: output channels ``t * out ... (t + 1) * out - 1``
  see task ``t``'s channels only. Shared (warp) weights are repeated ``T`` times;
- batch norm normalises each of the ``T * C`` channels over its own task's batch and keeps
  running statistics per task (``(T, C)`` buffers, updated in place);
- max-pooling and activations act per channel, the global max-pool per channel;
- the head is a batched matrix product ``(T, B, F) @ (T, F, classes)``;
- each task's loss is the mean over its own batch, so the gradient of their sum with respect to
  task ``t``'s weights is task ``t``'s own gradient. A ``torch.optim`` optimiser over the
  stacked weights ``(T, ...)`` then steps every task as the loop steps it (SGD, momentum and
  Adam act elementwise and count steps per tensor, the same for every task).

The numbers are those of the loop up to float round-off (tested in float64 against the loop
after several steps and for every learner's meta-gradient, and in float32 for being as close
to float64 as the loop).

Activations are kept in the channels-last memory format, whose CPU max-pooling kernel is
vectorised (the loop's NCHW max-pool takes longer than its forward convolutions); training-mode
batch norm is :func:`batch_norm_train` (the CPU's channels-last batch-norm kernel is imprecise
in float32). On the CPU the tasks go through in chunks (:func:`tasks_per_chunk`), one grouped
call per chunk and step: glibc's ``malloc`` serves blocks above about 32 MiB with ``mmap`` and
returns them when freed, so every step page-faults such activations afresh. Measured on one
core of a 2-core x86-64 CPU (64 filters, batch 20, 20 tasks, one forward and backward with
PyTorch's own batch norm, process CPU seconds): 0.62 s in one call (66,000 page faults), 0.46 s
in chunks of 4 tasks (none), the loop 0.81 s. On CUDA all tasks go in one call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .models import OmniConv, WarpLayer

#: ``--task-batching`` values: ``loop``, ``grouped``, ``auto`` (:func:`use_grouped`).
TASK_BATCHING = ("loop", "grouped", "auto")
#: CPU: the largest activation of a grouped call stays below this many bytes (module docstring).
CPU_CHUNK_BYTES = 16 * 2**20

#: modules without weights that act on every channel alone (applied to the stacked tensor as is)
CHANNELWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
               nn.Softplus, nn.ELU, nn.Identity)

Tensors = dict[str, torch.Tensor]


def tasks_per_chunk(
    model: OmniConv, batch_size: int, device: torch.device | str, image_size: int = 28
) -> int | None:
    """How many tasks one grouped call takes for batches of ``batch_size`` images: ``None``
    (all) on CUDA; on the CPU as many as keep the first block's output (the largest
    activation, ``batch_size x filters x image_size^2`` per task) below
    :data:`CPU_CHUNK_BYTES`, at least 1."""
    if torch.device(device).type == "cuda":
        return None
    p = next(model.parameters())
    per_task = batch_size * model.num_filters * image_size**2 * p.element_size()
    return max(1, CPU_CHUNK_BYTES // per_task)


def use_grouped(mode: str, num_tasks: int, chunk: int | None) -> bool:
    """Whether ``num_tasks`` tasks adapt grouped under ``mode`` (:data:`TASK_BATCHING`).

    ``auto`` groups two or more tasks where that was measured faster (docs/omniglot.md): on
    the CPU when a chunk holds at least 2 tasks (:func:`tasks_per_chunk`), and on CUDA.
    """
    if mode not in TASK_BATCHING:
        raise ValueError(f"task batching {mode!r} unknown; choose from {list(TASK_BATCHING)}")
    if mode == "auto":
        return num_tasks > 1 and (chunk is None or chunk > 1)
    return mode == "grouped"


def stack_states(states: list[Tensors]) -> Tensors:
    """``[{name: tensor}] * T -> {name: (T, ...)}``."""
    return {n: torch.stack([s[n] for s in states]) for n in states[0]}


class GroupedModel:
    """``model`` (an :class:`OmniConv`) run on ``T`` tasks' own tensors at once.

    Args:
        model: the network; its structure, and the weights not given per task, are used.
        max_chunk_bytes: cap on the largest activation of one grouped call (None: all tasks
            in one call).
        channels_last: keep activations in the channels-last memory format.

    The per-task tensors are passed to every call: ``params`` ``{name: (T, *shape)}`` for the
    parameters that differ between tasks (any parameter not given is the model's own, shared
    by every task) and ``buffers`` ``{name: (T, *shape)}`` for *every* buffer of the model
    (batch-norm statistics are per task; training-mode calls update them in place).
    """

    def __init__(
        self, model: OmniConv, max_chunk_bytes: int | None = None, channels_last: bool = True
    ) -> None:
        self.model = model
        self.max_chunk_bytes = max_chunk_bytes
        self.channels_last = channels_last

    def chunks(self, num_tasks: int, x: torch.Tensor) -> list[slice]:
        """Slices of the tasks that go through one grouped call each, for inputs ``x``
        ``(T, B, C, H, W)``."""
        if self.max_chunk_bytes is None:
            return [slice(0, num_tasks)]
        _, b, _, h, w = x.shape
        per_task = b * self.model.num_filters * h * w * x.element_size()
        most = max(1, self.max_chunk_bytes // per_task)
        k = -(-num_tasks // most)  # as few chunks as allowed, sizes differing by 1 at most
        return [slice(i * num_tasks // k, (i + 1) * num_tasks // k) for i in range(k)]

    # -- the forward pass ------------------------------------------------------------------

    def forward(
        self, params: Tensors, buffers: Tensors, x: torch.Tensor, training: bool,
        twice: bool = False,
    ) -> torch.Tensor:
        """Logits ``(T, B, classes)`` of images ``x`` ``(T, B, C, H, W)``, task ``t``'s with
        its own tensors (one grouped call, no chunks); ``twice``: a graph that can be
        differentiated twice (maml)."""
        if x.dim() != 5:
            raise ValueError(f"expected images (T, B, C, H, W), got {tuple(x.shape)}")
        t, b, c, h, w = x.shape
        run = _Run(self.model, params, buffers, t, training, twice)
        z = x.transpose(0, 1).reshape(b, t * c, h, w)
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        m = self.model
        for i, block in enumerate(m.blocks):
            z = run.sequential(f"blocks.{i}", block, z)
            if m.warps is not None:
                z = run.sequential(f"warps.{i}", m.warps[i], z)
        feats = z.amax(dim=(2, 3)).view(b, t, -1).transpose(0, 1)  # (T, B, F)
        out = run.linear("head", m.head, feats)
        if m.warp_head is not None:
            out = run.linear("warp_head", m.warp_head, out)
        return out

    # -- losses, gradients, adaptation -----------------------------------------------------

    def losses(
        self,
        params: Tensors,
        buffers: Tensors,
        x: torch.Tensor,
        y: torch.Tensor,
        training: bool = True,
        grads: bool = False,
        create_graph: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors | None]:
        """Every task's mean cross-entropy and accuracy on its batch, chunk by chunk.

        Args:
            params, buffers: see the class docstring.
            x: float ``(T, B, C, H, W)``; y: long ``(T, B)``.
            training: batch norm with batch statistics (updating the running ones) or with
                the running ones.
            grads: also return ``{name: (T, ...)}``, each task's gradient of its own loss
                with respect to ``params`` (one backward pass per chunk).
            create_graph: keep the graph of those gradients (maml).

        Returns:
            loss ``(T,)`` (with its graph unless ``grads``), accuracy ``(T,)`` (fraction in
            [0, 1]), and the gradients or None.
        """
        num = x.shape[0]
        losses, accs, parts = [], [], []
        for sl in self.chunks(num, x):
            views = {n: p[sl] for n, p in params.items()}
            logits = self.forward(views, {n: b[sl] for n, b in buffers.items()}, x[sl], training,
                                  twice=create_graph)
            n_tasks, n_batch, classes = logits.shape
            loss = F.cross_entropy(logits.reshape(-1, classes), y[sl].reshape(-1),
                                   reduction="none").view(n_tasks, n_batch).mean(1)
            accs.append((logits.detach().argmax(-1) == y[sl]).float().mean(1))
            if grads:
                g = torch.autograd.grad(loss.sum(), list(views.values()),
                                        create_graph=create_graph)
                parts.append(dict(zip(views, g, strict=True)))
                loss = loss.detach()
            losses.append(loss)
        cat = (lambda ts: ts[0]) if len(losses) == 1 else torch.cat
        out_grads = None
        if grads:
            out_grads = {n: cat([p[n] for p in parts]) for n in params}
        return cat(losses), cat(accs), out_grads

    def adapt(
        self,
        params: Tensors,
        buffers: Tensors,
        optimizer: torch.optim.Optimizer,
        tasks,
        observe: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``tasks.steps`` steps of ``optimizer`` on the stacked ``params`` (leaf tensors
        ``(T, ...)``, updated in place), each on that step's batch of every task; then the
        held-out drawings in evaluation mode.

        ``observe()`` is called before the first step and after every step (e.g. to record
        the trajectory). Returns the training curve's loss and accuracy ``(T, steps)``
        (each batch's before its step) and the held-out loss and accuracy ``(T,)``.
        """
        losses, accs = [], []
        if observe is not None:
            observe()
        for k in range(tasks.steps):
            x, y = tasks.train_batch(k)
            loss, acc, grads = self.losses(params, buffers, x, y, training=True, grads=True)
            for n, p in params.items():
                p.grad = grads[n]
            optimizer.step()
            losses.append(loss)
            accs.append(acc)
            if observe is not None:
                observe()
        with torch.no_grad():
            xt, yt = tasks.test_set()
            test_loss, test_acc, _ = self.losses(params, buffers, xt, yt, training=False)
        num = tasks.num_tasks
        empty = torch.zeros(num, 0)
        return (torch.stack(losses, 1).cpu() if losses else empty,
                torch.stack(accs, 1).cpu() if accs else empty, test_loss.cpu(), test_acc.cpu())


_DIMS = (0, 2, 3)


def batch_norm_train(
    z: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    eps: float,
    twice: bool = False,
) -> torch.Tensor:
    """Training-mode batch norm of ``z`` ``(N, C, H, W)`` over ``(N, H, W)`` per channel, as
    ``F.batch_norm`` (running statistics updated in place the same way, the variance unbiased),
    with the variance in two passes (mean, then mean square of ``z - mean``) and the backward
    sums as reductions of their own.

    Why not ``F.batch_norm``: on a channels-last tensor the CPU kernel takes mean and mean
    square in one float32 pass (they cancel when the mean is large against the spread, as for
    max-pooled conv outputs) and sums its backward the same way; its float32 results were
    about 20x, its gradients 5-45x further from float64 than the standard-layout kernel's that
    the loop uses, so near-ties in the next max-pool flipped earlier. Converting to the standard
    layout and back around it costs more than this.

    ``twice``: build the graph from differentiable operations (maml differentiates the
    gradient); otherwise one autograd node with the closed-form backward.
    """
    n = z.numel() // z.shape[1]
    if n < 2:
        raise ValueError(f"batch norm needs more than 1 value per channel in training, got {n}")
    c = z.shape[1]
    weight = z.new_ones(c) if weight is None else weight
    bias = z.new_zeros(c) if bias is None else bias
    if twice:
        mean = z.mean(_DIMS, keepdim=True)
        centred = z - mean
        var = centred.square().mean(_DIMS, keepdim=True)
        out = torch.addcmul(bias.view(1, -1, 1, 1), centred,
                            (var + eps).rsqrt() * weight.view(1, -1, 1, 1))
    else:
        out, mean, var = _BatchNorm.apply(z, weight, bias, eps)
    with torch.no_grad():
        running_mean.mul_(1.0 - momentum).add_(mean.flatten(), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(var.flatten(), alpha=momentum * n / (n - 1))
    return out


class _BatchNorm(torch.autograd.Function):
    """Batch norm's forward (two-pass variance) and closed-form backward, once differentiable."""

    @staticmethod
    def forward(ctx, z, weight, bias, eps):
        mean = z.mean(_DIMS, keepdim=True)
        xhat = z - mean
        var = xhat.square().mean(_DIMS, keepdim=True)
        rstd = (var + eps).rsqrt()
        xhat.mul_(rstd)
        out = torch.addcmul(bias.view(1, -1, 1, 1), xhat, weight.view(1, -1, 1, 1))
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _mean, _var):
        xhat, rstd, weight = ctx.saved_tensors
        n = grad.numel() // grad.shape[1]
        grad_bias = grad.sum(_DIMS)
        grad_weight = (grad * xhat).sum(_DIMS)
        scale = rstd.flatten() * weight  # d out / d xhat, per channel, times 1 / std
        per = lambda v: v.view(1, -1, 1, 1)  # noqa: E731
        grad_z = torch.addcmul(per(-scale * grad_bias / n), grad, per(scale))
        grad_z.addcmul_(xhat, per(-scale * grad_weight / n))
        return grad_z, grad_weight, grad_bias, None


class _Run:
    """One grouped forward pass: the modules of ``model`` on ``T`` tasks' stacked channels."""

    def __init__(
        self, model: nn.Module, params: Tensors, buffers: Tensors, num_tasks: int,
        training: bool, twice: bool = False,
    ) -> None:
        self.params = params
        self.buffers = buffers
        self.shared = dict(model.named_parameters())
        self.t = num_tasks
        self.training = training
        self.twice = twice

    def weight(self, name: str) -> tuple[torch.Tensor, bool]:
        """The tensor ``name`` and whether it is per task (leading ``T``)."""
        if name in self.params:
            return self.params[name], True
        return self.shared[name], False

    def _stacked(self, name: str) -> torch.Tensor:
        """Parameter ``name`` as ``(T * d0, ...)``: per-task tensors flattened, shared ones
        repeated."""
        w, per_task = self.weight(name)
        return w.flatten(0, 1) if per_task else w.repeat(self.t, *([1] * (w.dim() - 1)))

    def sequential(self, prefix: str, seq: nn.Module, z: torch.Tensor) -> torch.Tensor:
        for name, m in seq.named_children():
            full = f"{prefix}.{name}"
            if isinstance(m, nn.Conv2d):
                z = self.conv(full, m, z)
            elif isinstance(m, nn.BatchNorm2d):
                z = self.batch_norm(full, m, z)
            elif isinstance(m, WarpLayer):
                z = self.warp_layer(full, m, z)
            elif isinstance(m, nn.Sequential):
                z = self.sequential(full, m, z)
            elif isinstance(m, CHANNELWISE):
                z = m(z)
            else:
                raise NotImplementedError(f"grouped task batching does not know {full} "
                                          f"({type(m).__name__}); use --task-batching loop")
        return z

    def conv(self, name: str, m: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
        if m.padding_mode != "zeros":
            raise NotImplementedError(f"{name}: padding_mode {m.padding_mode!r}")
        bias = None if m.bias is None else self._stacked(f"{name}.bias")
        return F.conv2d(z, self._stacked(f"{name}.weight"), bias, m.stride, m.padding,
                        m.dilation, m.groups * self.t)

    def batch_norm(self, name: str, m: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
        if m.momentum is None or not m.track_running_stats:
            raise NotImplementedError(f"{name}: batch norm without running statistics or "
                                      "with a cumulative average")
        weight = self._stacked(f"{name}.weight") if m.affine else None
        bias = self._stacked(f"{name}.bias") if m.affine else None
        # views of the (T, C) statistics: the training-mode update lands in them
        mean = self.buffers[f"{name}.running_mean"].view(-1)
        var = self.buffers[f"{name}.running_var"].view(-1)
        if not self.training:
            return F.batch_norm(z, mean, var, weight, bias, False, m.momentum, m.eps)
        self.buffers[f"{name}.num_batches_tracked"].add_(1)
        return batch_norm_train(z, weight, bias, mean, var, m.momentum, m.eps, self.twice)

    def warp_layer(self, name: str, m: WarpLayer, x: torch.Tensor) -> torch.Tensor:
        h = x if m.bn_in is None else self.batch_norm(f"{name}.bn_in", m.bn_in, x)
        h = self.conv(f"{name}.conv", m.conv, h)
        if m.act is not None:
            h = m.act(h)
        if m.residual:
            h = h + (x if m.scale is None else self.conv(f"{name}.scale", m.scale, x))
        if m.bn_out is not None:
            h = self.batch_norm(f"{name}.bn_out", m.bn_out, h)
        return h

    def linear(self, name: str, m: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """``h`` ``(T, B, in) -> (T, B, out)``."""
        w, per_task = self.weight(f"{name}.weight")
        out = torch.bmm(h, w.transpose(1, 2)) if per_task else F.linear(h, w)
        if m.bias is None:
            return out
        b, bias_per_task = self.weight(f"{name}.bias")
        return out + (b.unsqueeze(1) if bias_per_task else b)
