"""Meta-learners for Omniglot: warp_leap, warp, leap, reptile, fomaml, maml, ft and no.

Every learner answers two calls on a :class:`~warp_rl.omniglot.tasks.TaskBatch`:

- ``meta_step(tasks)``: adapt to each meta-training task, then update what it meta-learns;
- ``evaluate(tasks)``: adapt to each task from what it has learned and measure, changing no
  meta-learned state.

Adaptation is the same everywhere: reset the adaptable parameters to the learner's
initialisation and every batch-norm layer's statistics, then ``steps`` steps of the inner
optimiser (``torch.optim``) in training mode, each on that step's batch; the training curve
records the loss and accuracy of each batch *before* its step. Held-out drawings are then
classified in evaluation mode (batch norm with the task's own running statistics).

What is meta-learned:

- ``warp_leap``: warp layers (WarpGrad Algorithm 2) and the initialisation (Leap), via the core's
  :class:`warp_rl.Warp`; ``warp``: warp layers only, adaptable layers reset to a fixed random
  initialisation;
- ``leap``: the initialisation, with the core's Leap gradient
  (:func:`warp_rl.objectives.leap_gradient`: the mean over tasks of the sum of normalised
  steps ``theta_k - theta_{k+1}``);
- ``reptile``: the initialisation, gradient ``theta_0 - mean_tasks theta_K``;
- ``fomaml``: the initialisation, gradient ``mean_tasks grad L(theta_K; held-out drawings)``;
- ``maml``: the initialisation, exact gradient of ``L(theta_K(theta_0); held-out drawings)``
  through the unrolled inner SGD steps (``torch.func.functional_call``); memory grows with the
  unrolled steps (``unroll``);
- ``ft``: multi-headed finetuning: a shared network with one head per meta-training alphabet is
  trained on the meta-batch's batches, mixed in random order, with the inner optimiser
  (kept across meta-steps); a test task gets a freshly initialised head and finetunes it all;
- ``no``: nothing; every task adapts from the same random initialisation.

The held-out drawings of *meta-training* alphabets serve as the query set of fomaml and maml,
classified with training-mode batch norm (the query batch's own statistics): running statistics
are not differentiable, so an evaluation-mode query loss would make maml's gradient inexact.
The meta-test alphabets are never seen before the final test.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from warp_rl import DualUpdater, MetaUpdateInfo, ReplayBuffer, State, Warp, objectives

from . import grouped
from .grouped import GroupedModel, stack_states
from .models import OmniConv, WarpConfig
from .tasks import TaskBatch

#: Where a task's classifier head starts (``--task-head``): ``learned``, the meta-learned
#: initialisation's head (default), or ``fresh``, a newly initialised head for every task, as
#: the original code does for these baselines (its ``warp_leap`` starts from its learned head).
TASK_HEADS = ("learned", "fresh")
#: ``ft``'s pretraining heads (``--ft-heads``): one per pretraining alphabet (default) or one
#: head shared by all alphabets, which is what the original code's ``[linear] * N`` builds.
FT_HEADS = ("per_alphabet", "shared")


# --------------------------------------------------------------------------- optimisers


@dataclass(frozen=True)
class OptimConfig:
    """An optimiser by name: ``sgd`` (with optional momentum) or ``adam``; ``lr`` per step."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adam"):
            raise ValueError(f"optimiser {self.name!r} unknown; choose 'sgd' or 'adam'")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate {self.lr} must be a positive number")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum {self.momentum} must be in [0, 1)")
        if self.name == "adam" and self.momentum:
            raise ValueError("momentum applies to sgd only (adam has its own betas)")

    def make(self, params) -> torch.optim.Optimizer:
        """A fresh ``torch.optim`` optimiser over ``params`` (tensors or param groups)."""
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        return torch.optim.Adam(params, lr=self.lr)


@dataclass(frozen=True)
class LearnerOptions:
    """The method-specific settings of :func:`make_learner`; each learner reads the ones it
    names in :attr:`MetaLearner.options` (in its :meth:`MetaLearner.build`).

    Attributes:
        num_pretrain: meta-training alphabets (``ft`` has one head per alphabet).
        maml_unroll: ``maml``'s unrolled inner steps (None: all of them).
        task_head: one of :data:`TASK_HEADS` (the initialisation learners but ``maml``).
        ft_heads: one of :data:`FT_HEADS` (``ft``).
        warp_kwargs: keyword arguments of :class:`WarpLearner` (``warp_leap``, ``warp``).
    """

    num_pretrain: int = 1
    maml_unroll: int | None = None
    task_head: str = "learned"
    ft_heads: str = "per_alphabet"
    warp_kwargs: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- results


@dataclass
class TaskResults:
    """Per-task results of adapting to ``T`` tasks.

    Attributes:
        train_loss, train_acc: float ``(T, steps)``: each adaptation batch's loss / accuracy
            (fraction in [0, 1]) before its step, the adaptation training curve.
        test_loss, test_acc: float ``(T,)``: held-out loss / accuracy after adaptation.
        task_ids: long ``(T,)``: pool indices of the tasks.
    """

    train_loss: torch.Tensor
    train_acc: torch.Tensor
    test_loss: torch.Tensor
    test_acc: torch.Tensor
    task_ids: torch.Tensor

    @staticmethod
    def cat(parts: list[TaskResults]) -> TaskResults:
        """Concatenate along tasks."""
        return TaskResults(
            *(torch.cat([getattr(p, f) for p in parts]) for f in TaskResults.__dataclass_fields__)
        )

    def summary(self) -> dict[str, float]:
        """Means over tasks: held-out accuracy and loss, and the area under the training curve
        (the mean over steps of the training accuracy / loss; ``auc_acc`` in [0, 1])."""
        std = self.test_acc.std().item() if len(self.test_acc) > 1 else 0.0
        return {
            "test_acc": self.test_acc.mean().item(),
            "test_acc_std": std,
            "test_loss": self.test_loss.mean().item(),
            "auc_acc": self.train_acc.mean().item(),
            "auc_loss": self.train_loss.mean().item(),
            "final_train_acc": self.train_acc[:, -1].mean().item()
            if self.train_acc.shape[1]
            else float("nan"),
        }


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """Re-initialise ``layer`` in place as ``nn.Linear`` does, drawing from ``generator`` (CPU):
    weight Kaiming-uniform with ``a = sqrt(5)``, bias uniform in ``+-1 / sqrt(fan_in)``."""
    w = torch.empty(layer.weight.shape, dtype=layer.weight.dtype)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(w.shape[1])
    b = torch.empty(layer.bias.shape, dtype=layer.bias.dtype)
    b.uniform_(-bound, bound, generator=generator)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == y).float().mean()


def adapt_task(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: TaskBatch,
    after_step: Callable[[], None] | None = None,
) -> TaskResults:
    """Adapt ``model`` to one task (``task.num_tasks == 1``) and evaluate it on held-out data.

    Args:
        model: the network, already reset to where adaptation starts.
        optimizer: inner optimiser over the parameters to adapt.
        task: a single task.
        after_step: called after every optimiser step (e.g. to record the trajectory).
    """
    if task.num_tasks != 1:
        raise ValueError(f"adapt_task takes one task, got {task.num_tasks}")
    model.train()
    losses, accs = [], []
    for k in range(task.steps):
        x, y = task.train_batch(k)
        logits = model(x[0])
        loss = F.cross_entropy(logits, y[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        accs.append(_accuracy(logits.detach(), y[0]))
        if after_step is not None:
            after_step()
    model.eval()
    with torch.no_grad():
        xt, yt = task.test_set()
        logits = model(xt[0])
        test_loss = F.cross_entropy(logits, yt[0])
        test_acc = _accuracy(logits, yt[0])
    model.train()
    empty = torch.zeros(0)
    return TaskResults(
        train_loss=(torch.stack(losses) if losses else empty).cpu()[None],
        train_acc=(torch.stack(accs) if accs else empty).cpu()[None],
        test_loss=test_loss.cpu()[None],
        test_acc=test_acc.cpu()[None],
        task_ids=task.task_ids.clone(),
    )


# --------------------------------------------------------------------------- base classes


class MetaLearner:
    """Base class: adaptation from :meth:`init_task`, with the inner optimiser on
    :meth:`adapt_parameters`; subclasses define :meth:`meta_step`.

    Args:
        model: the task network (its parameters are overwritten at every task).
        inner: the adaptation optimiser.
        outer: the meta optimiser.
        seed: seed of the learner's own generator (head initialisation, ft's batch order).
    """

    #: the ``--meta-model`` name (the key in :data:`LEARNERS`).
    name = "base"
    #: False for learners without meta-training (``no``): the script skips the loop.
    trains = True
    #: the classifier has warp layers (:func:`make_learner` builds it with a WarpConfig).
    warped = False
    #: the :class:`LearnerOptions` fields this learner reads; :func:`make_learner` refuses a
    #: non-default ``task_head`` or ``ft_heads`` the learner does not name (warp-layer options
    #: are refused unless :attr:`warped`; ``num_pretrain`` and ``maml_unroll`` are left unused).
    options: tuple[str, ...] = ()
    #: why the learner cannot be split over processes, or None if it can
    #: (:class:`~warp_rl.omniglot.distributed.DataParallelLearner` refuses it with this).
    data_parallel_refusal: str | None = None
    #: Called on the meta-parameters that have a ``.grad`` right before every outer optimiser
    #: step; data-parallel training sets it to average the gradients over ranks
    #: (:mod:`warp_rl.omniglot.distributed`). ``None``: a single process, nothing to do.
    grad_sync: Callable[[list[torch.Tensor]], None] | None = None

    def __init__(
        self, model: OmniConv, inner: OptimConfig, outer: OptimConfig, seed: int = 0
    ) -> None:
        self.model = model
        self.inner = inner
        self.outer = outer
        self.generator = torch.Generator().manual_seed(seed)
        #: what the last meta-step's warp meta-update did (warp learners; None for the others)
        self.last_info: MetaUpdateInfo | None = None
        #: seconds of the last meta-step's parts (``adapt_s``, ``meta_update_s``) where timed
        self.last_times: dict[str, float] = {}
        #: how a batch of tasks adapts: one of :data:`~warp_rl.omniglot.grouped.TASK_BATCHING`
        #: (``loop``: one task after another; ``grouped``: all together; ``auto``)
        self.task_batching = "loop"

    @classmethod
    def build(
        cls, model: OmniConv, inner: OptimConfig, outer: OptimConfig, seed: int,
        options: LearnerOptions,
    ) -> MetaLearner:
        """The learner for :func:`make_learner`, taking from ``options`` what it declares in
        :attr:`options`."""
        return cls(model, inner, outer, seed)

    def random_streams(self) -> dict[str, torch.Generator]:
        """The learner's random generators by name, in the order :func:`make_learner` seeds
        them (``seed``, ``seed + 1``, ...); data-parallel ranks reseed and checkpoint them."""
        return {"learner": self.generator}

    def synced_modules(self) -> list[nn.Module]:
        """The modules every data-parallel rank must start from identical (broadcast from
        rank 0)."""
        return [self.model]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def init_task(self) -> None:
        """Put ``self.model`` where adaptation starts and reset batch-norm statistics."""
        raise NotImplementedError

    def adapt_parameters(self) -> list[nn.Parameter]:
        """What the inner optimiser adapts (default: every parameter of the model)."""
        return list(self.model.parameters())

    def adapt(self, task: TaskBatch, after_step: Callable[[], None] | None = None) -> TaskResults:
        """Reset, adapt to one task, evaluate on its held-out drawings."""
        self.init_task()
        return self.adapt_from_here(task, after_step)

    def adapt_from_here(
        self, task: TaskBatch, after_step: Callable[[], None] | None = None
    ) -> TaskResults:
        """Adapt to one task from the model as it is (after :meth:`init_task`), evaluate."""
        opt = self.inner.make(self.adapt_parameters())
        return adapt_task(self.model, opt, task, after_step=after_step)

    def evaluate(self, tasks: TaskBatch) -> TaskResults:
        """Adapt to each task independently and evaluate; meta-learned state is unchanged."""
        if self.groups(tasks):
            return self.adapt_grouped(tasks)[0]
        return TaskResults.cat([self.adapt(tasks.task(i)) for i in range(tasks.num_tasks)])

    # -- adapting a batch of tasks together (--task-batching grouped) --------------------------

    def groups(self, tasks: TaskBatch) -> bool:
        """Whether ``tasks`` adapt together (:meth:`adapt_grouped`) under
        :attr:`task_batching` (``auto`` resolved by :func:`grouped.use_grouped`)."""
        chunk = grouped.tasks_per_chunk(self.model, tasks.batch_size, self.device)
        return grouped.use_grouped(self.task_batching, tasks.num_tasks, chunk)

    def grouped_model(self) -> GroupedModel:
        """The model run on every task's own tensors at once (in chunks on the CPU)."""
        cpu = self.device.type != "cuda"
        return GroupedModel(self.model, grouped.CPU_CHUNK_BYTES if cpu else None)

    def adapt_names(self) -> list[str]:
        """Names (in the model) of :meth:`adapt_parameters`."""
        ids = {id(p) for p in self.adapt_parameters()}
        return [n for n, p in self.model.named_parameters() if id(p) in ids]

    def grouped_optimizer(self, params: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
        """The inner optimiser over the stacked adaptable tensors ``{name: (T, ...)}``."""
        return self.inner.make(list(params.values()))

    def adapt_grouped(
        self,
        tasks: TaskBatch,
        observe: Callable[[dict, dict, torch.optim.Optimizer], None] | None = None,
    ) -> tuple[TaskResults, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Adapt to every task of ``tasks`` at once and evaluate: the loop's :meth:`adapt` of
        each task, with one grouped forward and backward pass per step
        (:class:`~warp_rl.omniglot.grouped.GroupedModel`).

        Each task starts where :meth:`init_task` puts the model (called once per task, in task
        order, so random draws such as fresh heads are the loop's). ``observe(params, buffers,
        optimizer)`` is called before the first step and after every step. Afterwards the model
        holds the last task's adapted state, as the loop leaves it.

        Returns:
            the results, and the adapted parameters ``{name: (T, ...)}`` (of
            :meth:`adapt_names`) and buffers ``{name: (T, ...)}`` (all of the model's).
        """
        names = self.adapt_names()
        starts, bufs = [], []
        for _ in range(tasks.num_tasks):
            self.init_task()
            named = dict(self.model.named_parameters())
            starts.append({n: named[n].detach().clone() for n in names})
            bufs.append({n: b.detach().clone() for n, b in self.model.named_buffers()})
        params = {n: t.requires_grad_() for n, t in stack_states(starts).items()}
        buffers = stack_states(bufs)
        opt = self.grouped_optimizer(params)
        watch = None if observe is None else (lambda: observe(params, buffers, opt))
        curves = self.grouped_model().adapt(params, buffers, opt, tasks, watch)
        self._leave_model_at(params, buffers)
        return TaskResults(*curves, tasks.task_ids.clone()), params, buffers

    def _leave_model_at(self, params: dict, buffers: dict) -> None:
        """Put the last task's tensors of ``params`` / ``buffers`` ``(T, ...)`` into the model
        (where the loop leaves it)."""
        named = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        with torch.no_grad():
            for n, t in {**params, **buffers}.items():
                named[n].copy_(t[-1])

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        """One meta-update from a meta-batch of tasks; returns their adaptation results."""
        raise NotImplementedError

    def _sync_grads(self, params) -> None:
        """Apply :attr:`grad_sync` to those of ``params`` that have a gradient."""
        if self.grad_sync is not None:
            self.grad_sync([p for p in params if p.grad is not None])

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"])


class InitLearner(MetaLearner):
    """A learner whose meta-learned object is the initialisation, kept in ``self.init_model``
    (a copy of the model) with the outer optimiser over its parameters.

    Args:
        task_head: one of :data:`TASK_HEADS`. With ``fresh``, every meta-training task starts
            with a newly drawn classifier head (from the learner's generator) and every
            evaluation task with one fixed fresh head (drawn once, like ``ft``'s); the
            initialisation's own head is then never used and not meta-learned.
    """

    options = ("task_head",)

    def __init__(
        self,
        model: OmniConv,
        inner: OptimConfig,
        outer: OptimConfig,
        seed: int = 0,
        task_head: str = "learned",
    ):
        if task_head not in TASK_HEADS:
            raise ValueError(f"task_head {task_head!r} unknown; choose from {list(TASK_HEADS)}")
        super().__init__(model, inner, outer, seed)
        self.init_model = copy.deepcopy(model)
        self.init_model.reset_batch_norm()
        self.outer_opt = outer.make(self.init_model.parameters())
        self.task_head = task_head
        self._evaluating = False
        self.eval_head_seed: int | None = None
        if task_head == "fresh":
            self.eval_head_seed = int(torch.randint(2**62, (1,), generator=self.generator))

    @classmethod
    def build(cls, model, inner, outer, seed, options):
        return cls(model, inner, outer, seed, task_head=options.task_head)

    def synced_modules(self) -> list[nn.Module]:
        return [self.model, self.init_model]

    def init_task(self) -> None:
        self.model.load_state_dict(self.init_model.state_dict())
        self.model.reset_batch_norm()
        if self.task_head == "fresh":
            g = self.generator
            if self._evaluating:
                g = torch.Generator().manual_seed(self.eval_head_seed)
            reset_linear(self.model.head, g)

    def evaluate(self, tasks: TaskBatch) -> TaskResults:
        self._evaluating = True
        try:
            return super().evaluate(tasks)
        finally:
            self._evaluating = False

    def _outer_step(self, grads: dict[str, torch.Tensor]) -> None:
        """Set the initialisation's gradient to ``grads`` (by name) and take an outer step
        (the head is left alone when every task starts with a fresh one)."""
        for name, p in self.init_model.named_parameters():
            if self.task_head == "fresh" and name.startswith("head."):
                p.grad = None
                continue
            p.grad = grads[name].to(p.dtype).clone()
        self._sync_grads(self.init_model.parameters())
        self.outer_opt.step()
        self.outer_opt.zero_grad(set_to_none=True)

    def _params(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def state_dict(self) -> dict:
        state = {
            **super().state_dict(),
            "init_model": self.init_model.state_dict(),
            "outer_opt": self.outer_opt.state_dict(),
        }
        if self.eval_head_seed is not None:
            state["eval_head_seed"] = self.eval_head_seed
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.init_model.load_state_dict(state["init_model"])
        self.outer_opt.load_state_dict(state["outer_opt"])
        if "eval_head_seed" in state:
            self.eval_head_seed = int(state["eval_head_seed"])


# --------------------------------------------------------------------------- baselines


class NoMetaLearning(InitLearner):
    """``no``: every task adapts from the same fixed random initialisation."""

    name = "no"
    trains = False

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        raise RuntimeError("the 'no' baseline has no meta-training; call evaluate()")


class Reptile(InitLearner):
    """``reptile``: meta-gradient ``theta_0 - mean_tasks theta_K``."""

    name = "reptile"

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        start = {n: p.detach().clone() for n, p in self.init_model.named_parameters()}
        total = {n: torch.zeros_like(p) for n, p in start.items()}
        T = tasks.num_tasks
        if self.groups(tasks):
            res, params, _ = self.adapt_grouped(tasks)
            for i in range(T):
                for n in total:
                    total[n] += params[n][i].detach()
            self._outer_step({n: start[n] - total[n] / T for n in start})
            return res
        results = []
        for i in range(tasks.num_tasks):
            results.append(self.adapt(tasks.task(i)))
            for n, p in self.model.named_parameters():
                total[n] += p.detach()
        self._outer_step({n: start[n] - total[n] / T for n in start})
        return TaskResults.cat(results)


class FOMAML(InitLearner):
    """``fomaml``: meta-gradient ``mean_tasks grad_theta L(theta_K; held-out drawings)``."""

    name = "fomaml"

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        total = {n: torch.zeros_like(p) for n, p in self.init_model.named_parameters()}
        if self.groups(tasks):
            res, params, buffers = self.adapt_grouped(tasks)
            xt, yt = tasks.test_set()  # training mode (module docstring)
            _, _, grads = self.grouped_model().losses(params, buffers, xt, yt, grads=True)
            self._leave_model_at(params, buffers)
            for i in range(tasks.num_tasks):
                for n in total:
                    total[n] += grads[n][i]
            self._outer_step({n: g / tasks.num_tasks for n, g in total.items()})
            return res
        results = []
        for i in range(tasks.num_tasks):
            task = tasks.task(i)
            results.append(self.adapt(task))
            xt, yt = task.test_set()
            names, params = zip(*self.model.named_parameters(), strict=True)
            loss = F.cross_entropy(self.model(xt[0]), yt[0])  # training mode (module docstring)
            grads = torch.autograd.grad(loss, params)
            for n, g in zip(names, grads, strict=True):
                total[n] += g
        self._outer_step({n: g / tasks.num_tasks for n, g in total.items()})
        return TaskResults.cat(results)


class Leap(InitLearner):
    """``leap``: the core's simplified Leap gradient of the initialisation."""

    name = "leap"

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        if self.groups(tasks):
            return self._grouped_meta_step(tasks)
        sums, displacements, results = [], [], []
        for i in range(tasks.num_tasks):
            self.init_task()
            first = self._params()
            prev = [first]
            path = {n: torch.zeros_like(p) for n, p in first.items()}

            def record(prev: list = prev, path: dict = path) -> None:
                cur = self._params()
                diff, norm = objectives.path_step(prev[0], cur)
                for n, d in diff.items():
                    path[n].add_(d, alpha=1.0 / norm)
                prev[0] = cur

            results.append(self.adapt_from_here(tasks.task(i), after_step=record))
            sums.append(path)
            displacements.append({n: first[n] - prev[0][n] for n in first})
        self._outer_step(objectives.leap_gradient(sums, displacements, normalise=True))
        return TaskResults.cat(results)

    def _grouped_meta_step(self, tasks: TaskBatch) -> TaskResults:
        """The loop's meta-step with the tasks adapted together: every task's path is summed
        step by step with the norm of its own step (:func:`warp_rl.objectives.path_step`)."""
        trail: dict[str, dict] = {}

        def record(params: dict, buffers: dict, opt) -> None:
            cur = {n: p.detach().clone() for n, p in params.items()}
            if not trail:
                trail.update(first=cur, path={n: torch.zeros_like(c) for n, c in cur.items()})
            else:
                diff = {n: trail["prev"][n] - cur[n] for n in cur}
                norm = torch.sqrt(sum((d.double() ** 2).flatten(1).sum(1) for d in diff.values()))
                inv = 1.0 / norm.clamp_min(1e-9)  # (T,): 1 / max(norm, eps) per task
                for n, d in diff.items():
                    trail["path"][n].add_(d * inv.to(d.dtype).view(-1, *[1] * (d.dim() - 1)))
            trail["prev"] = cur

        res, _, _ = self.adapt_grouped(tasks, record)
        first, path, last = trail["first"], trail["path"], trail["prev"]
        rows = range(tasks.num_tasks)
        sums = [{n: path[n][i] for n in path} for i in rows]
        displacements = [{n: first[n][i] - last[n][i] for n in first} for i in rows]
        self._outer_step(objectives.leap_gradient(sums, displacements, normalise=True))
        return res


class MAML(InitLearner):
    """``maml``: backpropagation through ``unroll`` inner SGD steps (``torch.func``).

    The training log's held-out numbers of a meta-step are the query's (training-mode batch
    norm); ``evaluate`` reports evaluation-mode numbers like every other learner.

    The inner loop runs the network functionally on ``{name: tensor}`` parameters; each step is
    ``theta <- theta - lr * grad`` with ``create_graph=True``, so the held-out loss after the
    last step is differentiated back to the initialisation. During meta-training the first
    ``unroll`` of the task's steps are unrolled (all of them when ``unroll`` is None);
    evaluation always adapts for the task's full number of steps.
    """

    name = "maml"
    options = ("maml_unroll",)

    def __init__(
        self,
        model: OmniConv,
        inner: OptimConfig,
        outer: OptimConfig,
        seed: int = 0,
        unroll: int | None = None,
    ) -> None:
        if inner.name != "sgd" or inner.momentum:
            raise ValueError(
                f"maml unrolls plain SGD only; got inner optimiser {inner.name!r} with momentum "
                f"{inner.momentum}"
            )
        if unroll is not None and unroll < 1:
            raise ValueError(f"unroll={unroll} must be >= 1 or None")
        super().__init__(model, inner, outer, seed)
        self.unroll = unroll

    @classmethod
    def build(cls, model, inner, outer, seed, options):
        return cls(model, inner, outer, seed, unroll=options.maml_unroll)

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        init = dict(self.init_model.named_parameters())
        steps = tasks.steps if self.unroll is None else min(self.unroll, tasks.steps)
        if self.groups(tasks):
            return self._grouped_meta_step(tasks, init, steps)
        results = []
        for i in range(tasks.num_tasks):
            task = tasks.task(i)
            self.model.reset_batch_norm()
            buffers = {n: b.clone() for n, b in self.model.named_buffers()}
            theta = dict(init)
            losses, accs = [], []
            self.model.train()
            for k in range(steps):
                x, y = task.train_batch(k)
                logits = functional_call(self.model, {**theta, **buffers}, (x[0],))
                loss = F.cross_entropy(logits, y[0])
                grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
                theta = {
                    n: t - self.inner.lr * g for (n, t), g in zip(theta.items(), grads, strict=True)
                }
                losses.append(loss.detach())
                accs.append(_accuracy(logits.detach(), y[0]))
            xt, yt = task.test_set()  # query in training mode (module docstring)
            logits = functional_call(self.model, {**theta, **buffers}, (xt[0],))
            query = F.cross_entropy(logits, yt[0])
            (query / tasks.num_tasks).backward()
            results.append(
                TaskResults(
                    torch.stack(losses).cpu()[None],
                    torch.stack(accs).cpu()[None],
                    query.detach().cpu()[None],
                    _accuracy(logits.detach(), yt[0]).cpu()[None],
                    task.task_ids.clone(),
                )
            )
        self._sync_grads(self.init_model.parameters())
        self.outer_opt.step()
        self.outer_opt.zero_grad(set_to_none=True)
        return TaskResults.cat(results)

    def _grouped_meta_step(self, tasks: TaskBatch, init: dict, steps: int) -> TaskResults:
        """The unrolled inner loop of every task at once: ``theta`` ``(T, ...)`` starts as the
        initialisation repeated, the query losses' mean is differentiated back to it."""
        T = tasks.num_tasks
        self.model.reset_batch_norm()
        buffers = stack_states([{n: b.detach().clone() for n, b in self.model.named_buffers()}
                                for _ in range(T)])
        theta = {n: p.unsqueeze(0).expand(T, *p.shape) for n, p in init.items()}
        net = self.grouped_model()
        self.model.train()
        losses, accs = [], []
        for k in range(steps):
            x, y = tasks.train_batch(k)
            loss, acc, grads = net.losses(theta, buffers, x, y, grads=True, create_graph=True)
            theta = {n: t - self.inner.lr * grads[n] for n, t in theta.items()}
            losses.append(loss)
            accs.append(acc)
        xt, yt = tasks.test_set()  # query in training mode (module docstring)
        query, query_acc, _ = net.losses(theta, buffers, xt, yt)
        (query.sum() / T).backward()
        self._sync_grads(self.init_model.parameters())
        self.outer_opt.step()
        self.outer_opt.zero_grad(set_to_none=True)
        return TaskResults(torch.stack(losses, 1).cpu(), torch.stack(accs, 1).cpu(),
                           query.detach().cpu(), query_acc.cpu(), tasks.task_ids.clone())


class MultiHeadFinetuning(MetaLearner):
    """``ft``: pretrain a shared network with one head per meta-training alphabet.

    Args:
        num_heads: meta-training alphabets (heads are indexed by pool task id).
        heads: one of :data:`FT_HEADS`; ``shared`` pretrains a single head on every alphabet
            (the original code's ``[linear] * N``).
    """

    name = "ft"
    options = ("ft_heads",)
    data_parallel_refusal = (
        "--meta-model ft cannot run on several processes (its pretraining steps once per task "
        "batch); run it as a single process")

    def __init__(
        self,
        model: OmniConv,
        inner: OptimConfig,
        outer: OptimConfig,
        seed: int = 0,
        num_heads: int = 1,
        heads: str = "per_alphabet",
    ) -> None:
        if model.warp_config is not None:
            raise ValueError("ft finetunes the plain classifier; build it without warp layers")
        if heads not in FT_HEADS:
            raise ValueError(f"ft heads {heads!r} unknown; choose from {list(FT_HEADS)}")
        super().__init__(model, inner, outer, seed)
        self.shared_head = heads == "shared"
        self.backbone = copy.deepcopy(model)
        self.heads = nn.ModuleList(
            nn.Linear(model.num_filters, model.num_classes)
            for _ in range(1 if self.shared_head else num_heads)
        ).to(self.device)
        self.pretrain_opt = inner.make([*self.backbone.parameters(), *self.heads.parameters()])
        self.head_seed = int(torch.randint(2**62, (1,), generator=self.generator))

    @classmethod
    def build(cls, model, inner, outer, seed, options):
        return cls(model, inner, outer, seed, num_heads=options.num_pretrain,
                   heads=options.ft_heads)

    def init_task(self) -> None:
        self.model.load_state_dict(self.backbone.state_dict())
        self.model.reset_batch_norm()
        # a fresh head, the same for every evaluation task (nn.Linear's own initialisation)
        reset_linear(self.model.head, torch.Generator().manual_seed(self.head_seed))

    def head_of(self, task_id: int) -> nn.Linear:
        """The pretraining head of pool task ``task_id`` (the one head when shared)."""
        return self.heads[0 if self.shared_head else task_id]

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        T, K = tasks.num_tasks, tasks.steps
        order = torch.randperm(T * K, generator=self.generator)
        # each task's batches keep their own order; tasks interleave at random
        slot = torch.empty(T * K, dtype=torch.long)
        slot[order] = torch.arange(T * K)
        task_of = torch.arange(T).repeat_interleave(K)[torch.argsort(slot)]
        next_step = [0] * T
        losses = torch.zeros(T, K)
        accs = torch.zeros(T, K)
        self.backbone.train()
        for i in task_of.tolist():
            k = next_step[i]
            next_step[i] += 1
            x, y = tasks.train_batch_of(i, k)
            head = self.head_of(int(tasks.task_ids[i]))
            logits = head(self.backbone.features(x))
            loss = F.cross_entropy(logits, y)
            self.pretrain_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.pretrain_opt.step()
            losses[i, k] = loss.detach().cpu()
            accs[i, k] = _accuracy(logits.detach(), y).cpu()
        test_loss, test_acc = torch.zeros(T), torch.zeros(T)
        self.backbone.eval()
        with torch.no_grad():
            xt, yt = tasks.test_set()
            for i in range(T):
                logits = self.head_of(int(tasks.task_ids[i]))(self.backbone.features(xt[i]))
                test_loss[i] = F.cross_entropy(logits, yt[i]).cpu()
                test_acc[i] = _accuracy(logits, yt[i]).cpu()
        self.backbone.train()
        return TaskResults(losses, accs, test_loss, test_acc, tasks.task_ids.clone())

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "backbone": self.backbone.state_dict(),
            "heads": self.heads.state_dict(),
            "pretrain_opt": self.pretrain_opt.state_dict(),
            "head_seed": self.head_seed,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.backbone.load_state_dict(state["backbone"])
        self.heads.load_state_dict(state["heads"])
        self.pretrain_opt.load_state_dict(state["pretrain_opt"])
        self.head_seed = int(state["head_seed"])


# --------------------------------------------------------------------------- WarpGrad


class WarpLearner(MetaLearner):
    """``warp_leap`` / ``warp``: the core's :class:`warp_rl.Warp` around the warped classifier.

    Tasks adapt the conv blocks and the head (warp layers frozen) while the wrapper stores
    their adaptation states in a :class:`warp_rl.ReplayBuffer`; after the meta-batch,
    ``Warp.backward`` runs the core's :class:`warp_rl.DualUpdater`: WarpGrad's Algorithm 2
    (or its first-order variant) over the stored states for the warp layers, one outer step per
    ``meta_batch_size`` states, and, with ``learn_init``, one more step of the initialisation
    with the Leap gradient.

    Args:
        learn_init: meta-learn the initialisation with Leap (``warp_leap``) or keep the
            initial random one (``warp``); default: the class's :attr:`learns_init`.
        objective: one of :data:`warp_rl.updaters.WARP_OBJECTIVES`: ``"algorithm2"``,
            ``"algorithm2_detached"`` (the original code's) or ``"first_order"``.
        meta_batch_size: replayed states per outer step (1 as in the original code).
        max_states: states kept per task (reservoir sampling beyond; None keeps all).
        batching: ``"loop"``, ``"vmap"`` or ``"auto"`` evaluation of a meta-batch of states.
        learn_step_size: also meta-learn one inner step size per adaptable tensor.
    """

    name = "warp_leap"
    warped = True
    options = ("warp_kwargs",)
    #: meta-learn the initialisation (Leap) by default
    learns_init = True

    def __init__(
        self,
        model: OmniConv,
        inner: OptimConfig,
        outer: OptimConfig,
        seed: int = 0,
        learn_init: bool | None = None,
        objective: str = "algorithm2",
        meta_batch_size: int | None = 1,
        max_states: int | None = None,
        batching: str = "loop",
        learn_step_size: bool = False,
    ) -> None:
        if model.warp_config is None:
            raise ValueError("warp learners need a classifier with warp layers")
        if learn_step_size and inner.name != "sgd":
            raise ValueError("learned step sizes drive an SGD inner loop; use --inner-opt sgd")
        super().__init__(model, inner, outer, seed)
        learn_init = self.learns_init if learn_init is None else learn_init
        self.name = "warp_leap" if learn_init else "warp"
        updater = DualUpdater(
            nn.CrossEntropyLoss(),
            warp_objective=objective,
            init_objective="leap" if learn_init else None,
            meta_batch_size=meta_batch_size,
            batching=batching,
            seed=seed + 1,
        )
        buffer = ReplayBuffer(max_states_per_task=max_states, device=self.device, seed=seed + 2)
        self.warp = Warp(
            model,
            model.adapt_modules(),
            model.warp_modules(),
            updater,
            buffer,
            step_size=inner.lr,
            momentum=inner.momentum,
            learn_step_size=learn_step_size,
            learn_init=learn_init,
        )
        self.outer_opt = outer.make(self.warp.meta_parameters())

    @classmethod
    def build(cls, model, inner, outer, seed, options):
        return cls(model, inner, outer, seed, **options.warp_kwargs)

    def random_streams(self) -> dict[str, torch.Generator]:
        return {"learner": self.generator, "updater": self.warp.updater.generator,
                "buffer": self.warp.buffer.generator}

    def synced_modules(self) -> list[nn.Module]:
        return [self.model, self.warp]

    def init_task(self) -> None:
        self.warp.init_adaptation()

    def adapt_parameters(self) -> list[nn.Parameter]:
        return self.warp.adapt_parameters()

    def grouped_optimizer(self, params: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
        """As :meth:`warp_rl.Warp.adapt_optimizer` (the learned step sizes) for SGD."""
        if self.inner.name != "sgd":
            return super().grouped_optimizer(params)
        groups = [
            {"params": [params[n]], "lr": float(a), "momentum": float(m)}
            for n, a, m in zip(self.warp.partition.adapt_names,
                               self.warp.step_size.detach().tolist(),
                               self.warp.momentum.detach().tolist(), strict=True)
        ]
        return torch.optim.SGD(groups, lr=groups[0]["lr"])

    def adapt(self, task: TaskBatch, after_step: Callable[[], None] | None = None) -> TaskResults:
        self.warp.init_adaptation()
        if self.warp.collecting:
            self.warp.register_task(task)
        if self.inner.name == "sgd":
            opt = self.warp.adapt_optimizer()  # the (learned) step sizes Algorithm 2 assumes
        else:
            opt = self.inner.make(self.warp.adapt_parameters())
        return adapt_task(self.model, opt, task, after_step=after_step)

    def evaluate(self, tasks: TaskBatch) -> TaskResults:
        self.warp.no_collect()
        return super().evaluate(tasks)

    def meta_step(self, tasks: TaskBatch) -> TaskResults:
        t0 = time.perf_counter()
        if self.groups(tasks):
            results = [self._adapt_grouped_storing(tasks)]
        else:
            self.warp.collect()
            results = [self.adapt(tasks.task(i)) for i in range(tasks.num_tasks)]
        _synchronize(self.device)
        t1 = time.perf_counter()

        def step_fn() -> None:
            self._sync_grads(self.warp.meta_parameters())
            self.outer_opt.step()
            self.outer_opt.zero_grad(set_to_none=True)

        self.last_info = self.warp.backward(step_fn)
        self.warp.no_collect()
        _synchronize(self.device)
        self.last_times = {"adapt_s": t1 - t0, "meta_update_s": time.perf_counter() - t1}
        return TaskResults.cat(results)

    def _adapt_grouped_storing(self, tasks: TaskBatch) -> TaskResults:
        """Adapt to ``tasks`` together and store their states in the replay buffer as the
        loop's collection does: ``theta_0 ... theta_K`` of each task with the adaptable
        buffers and momentum at that point, offered to the buffer task after task once all
        have adapted (so that its reservoir draws come in the loop's order)."""
        warp, buffer = self.warp, self.warp.buffer
        warp.no_collect()  # the wrapper's hook stays off: the states are offered below
        dev, track = buffer.device, warp.tracks_momentum
        buffer_names = warp.partition.adapt_buffer_names
        snapshots = []

        def observe(params: dict, buffers: dict, opt: torch.optim.Optimizer) -> None:
            momentum = {}
            if track:
                for n, p in params.items():
                    m = opt.state.get(p, {}).get("momentum_buffer")
                    momentum[n] = (torch.zeros_like(p, device=dev) if m is None
                                   else m.detach().to(dev, copy=True))
            snapshots.append((
                {n: p.detach().to(dev, copy=True) for n, p in params.items()},
                {n: buffers[n].detach().to(dev, copy=True) for n in buffer_names},
                momentum,
            ))

        results, _, _ = self.adapt_grouped(tasks, observe)
        # a capped buffer keeps a few states: copies, so as not to hold every task's storage
        own = buffer.max_states_per_task is not None
        for i in range(tasks.num_tasks):
            index = buffer.new_task(tasks.task(i))
            for snapshot in snapshots:
                params, buffers, momentum = (
                    {n: v[i].clone() if own else v[i] for n, v in part.items()}
                    for part in snapshot)
                buffer.add(index, State(params, buffers, momentum))
        return results

    def state_dict(self) -> dict:
        return {
            "warp": self.warp.state_dict(),
            "outer_opt": self.outer_opt.state_dict(),
            "generator": self.generator.get_state(),
            "updater_generator": self.warp.updater.generator.get_state(),
            "buffer_generator": self.warp.buffer.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.warp.load_state_dict(state["warp"])
        self.outer_opt.load_state_dict(state["outer_opt"])
        self.generator.set_state(state["generator"])
        self.warp.updater.generator.set_state(state["updater_generator"])
        self.warp.buffer.generator.set_state(state["buffer_generator"])


class WarpOnlyLearner(WarpLearner):
    """``warp``: warp layers only; the adaptable layers restart every task from the model's
    fixed random initialisation."""

    name = "warp"
    learns_init = False


# --------------------------------------------------------------------------- registry

#: ``--meta-model`` name -> learner class, in the order the script lists them.
LEARNERS: dict[str, type[MetaLearner]] = {
    cls.name: cls
    for cls in (WarpLearner, WarpOnlyLearner, Leap, Reptile, FOMAML, MAML, MultiHeadFinetuning,
                NoMetaLearning)
}
METHODS = tuple(LEARNERS)
#: the learners that take ``task_head`` (``--task-head``)
FRESH_HEAD_METHODS = tuple(n for n, c in LEARNERS.items() if "task_head" in c.options)


def make_learner(
    method: str,
    inner: OptimConfig,
    outer: OptimConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_pretrain: int = 1,
    num_filters: int = 64,
    warp: WarpConfig | None = None,
    maml_unroll: int | None = None,
    task_head: str = "learned",
    ft_heads: str = "per_alphabet",
    task_batching: str = "loop",
    **warp_kwargs,
) -> MetaLearner:
    """Build the model (seeded with ``seed``) and the learner ``method`` (a key of
    :data:`LEARNERS`).

    ``task_batching`` (:data:`~warp_rl.omniglot.grouped.TASK_BATCHING`) says how a batch of
    tasks adapts: one after another (``loop``), together (``grouped``: every learner's
    evaluation and every meta-step but ``ft``'s pretraining) or ``auto``.

    ``warp`` configures the warp layers of the warped learners (default :class:`WarpConfig`)
    and ``warp_kwargs`` go to :class:`WarpLearner`; other methods use the plain classifier and
    refuse both. ``task_head`` (:data:`TASK_HEADS`) applies to :data:`FRESH_HEAD_METHODS`,
    ``ft_heads`` (:data:`FT_HEADS`) to ``ft``, ``maml_unroll`` to ``maml``.
    """
    cls = LEARNERS.get(method)
    if cls is None:
        raise ValueError(f"meta-model {method!r} unknown; choose from {list(METHODS)}")
    if task_batching not in grouped.TASK_BATCHING:
        raise ValueError(f"task_batching {task_batching!r} unknown; choose from "
                         f"{list(grouped.TASK_BATCHING)}")
    options = LearnerOptions(num_pretrain, maml_unroll, task_head, ft_heads, warp_kwargs)
    defaults = LearnerOptions()
    for name in ("task_head", "ft_heads"):
        value = getattr(options, name)
        if value != getattr(defaults, name) and name not in cls.options:
            users = [n for n, c in LEARNERS.items() if name in c.options]
            where = repr(users[0]) if len(users) == 1 else str(users)
            raise ValueError(f"{name}={value!r} applies to {where}, not {method!r}")
    if (warp is not None or warp_kwargs) and not cls.warped:
        raise ValueError(f"warp-layer options apply to warp_leap and warp, not {method!r}")
    torch.manual_seed(seed)
    model = OmniConv(num_filters=num_filters,
                     warp=(warp or WarpConfig()) if cls.warped else None)
    learner = cls.build(model.to(device), inner, outer, seed, options)
    learner.task_batching = task_batching
    return learner
