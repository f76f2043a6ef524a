"""The updater interface of ``warp_rl.Warp`` (``warp_rl.updaters.Updater``, a protocol), and the
``warp_rl`` package's imports: no cycle, every module importable on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call

import warp_rl
from warp_rl.updaters import MetaModel, MetaUpdateInfo, Updater

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


class LastStateUpdater:
    """A user-written updater (no base class): the first-order loss at each task's last
    replayed state on one batch of the task, averaged over tasks, one meta-step."""

    init_objective = None

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(0)
        self.assigned: dict[str, torch.Tensor] = {}
        self.calls = 0

    def backward(self, warp: MetaModel,
                 step_fn: Callable[[], Any] | None = None) -> MetaUpdateInfo:
        self.calls += 1
        records = [r for r in warp.buffer.tasks if r.states]
        warp_params = {n: p.detach().requires_grad_(True)
                       for n, p in warp.partition.warp_dict().items()}
        total = torch.zeros(())
        for rec in records:
            state = rec.states[-1]
            x, y = rec.sampler.sample_batches(1, self.generator)
            params = {**state.params, **state.buffers, **warp_params}
            out = functional_call(warp.model, params, (x[0],))
            total = total + nn.functional.cross_entropy(out, y[0])
        loss = total / len(records)
        grads = torch.autograd.grad(loss, list(warp_params.values()))
        self.assigned = {n: g.clone() for n, g in zip(warp_params, grads, strict=True)}
        warp.assign_meta_grads({"warp": self.assigned})
        if step_fn is not None:
            step_fn()
        return MetaUpdateInfo(float(loss.detach()), len(records), int(step_fn is not None), "loop")


def _task(seed: int) -> warp_rl.TensorTask:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(1)
    return warp_rl.TensorTask(x, y, batch_size=8, steps=3, seed=seed)


def test_a_user_written_updater_plugs_into_warp() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.Linear(16, 3))
    updater = LastStateUpdater()
    assert isinstance(updater, Updater) and not isinstance(updater, warp_rl.DualUpdater)
    model = warp_rl.Warp(net, [net[0], net[3]], [net[2]], updater, warp_rl.ReplayBuffer())
    assert model.learn_init is False  # from the updater's init_objective = None
    meta_opt = torch.optim.SGD(model.meta_parameters(), lr=0.5)
    for seed in range(3):
        task = _task(seed)
        model.init_adaptation(); model.register_task(task); model.collect()  # noqa: E702
        opt = torch.optim.SGD(model.adapt_parameters(), lr=0.1)
        for x, y in task:
            nn.functional.cross_entropy(model(x), y).backward(); opt.step(); opt.zero_grad()  # noqa: E702
        model.no_collect()
    warp_before = {n: p.detach().clone() for n, p in model.named_warp_parameters()}
    adapt_before = [p.detach().clone() for p in model.adapt_parameters()]

    info = model.backward(meta_opt.step)

    assert updater.calls == 1 and info.num_states == 3 and info.num_steps == 1
    assert len(model.buffer) == 0  # Warp clears the buffer, whatever the updater
    for n, p in model.named_warp_parameters():
        assert updater.assigned[n].abs().sum() > 0
        torch.testing.assert_close(p.detach(), warp_before[n] - 0.5 * updater.assigned[n])
    for p, before in zip(model.adapt_parameters(), adapt_before, strict=True):
        torch.testing.assert_close(p.detach(), before)


def test_warp_refuses_an_object_that_is_not_an_updater() -> None:
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    with pytest.raises(TypeError, match="backward"):
        warp_rl.Warp(net, [net[1]], [net[0]], object(), warp_rl.ReplayBuffer())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Imports
# ------------------------------------------------------------------------------------------------
def _modules(package: str) -> list[str]:
    """Dotted names of every module of ``package`` (a folder of the repository)."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _module_level_imports(module: str) -> set[str]:
    """The ``warp_rl`` modules ``module`` depends on: its ``import`` and ``from ... import``
    statements outside functions and classes, those under ``if TYPE_CHECKING:`` included (a
    cycle hidden from the interpreter is still one for readers and type checkers)."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    pending: list[ast.stmt] = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.If | ast.Try):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            pending += [s for h in getattr(node, "handlers", []) for s in h.body]
    known = set(_modules("warp_rl"))
    return {name for name in found if name in known and name != module}


def test_warp_rl_has_no_import_cycle() -> None:
    graph = {m: _module_level_imports(m) for m in _modules("warp_rl")}
    assert "warp_rl.warp" not in graph["warp_rl.updaters"]
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node):], node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for child in sorted(graph[node]):
            if child != node.rpartition(".")[0]:  # a submodule importing its package is fine
                visit(child, [*path, node])
        done.add(node)

    for module in graph:
        visit(module, [])


def test_every_warp_rl_module_imports_on_its_own() -> None:
    """Each module of ``warp_rl`` imported first (every ``warp_rl`` module dropped from
    ``sys.modules`` before the next one), in one fresh interpreter: an import that only works
    after another module was imported fails here."""
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'warp_rl']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *_modules("warp_rl")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_package_imports_its_names_on_first_use() -> None:
    """``import warp_rl`` loads no torch; every name of ``warp_rl.__all__`` resolves, and
    ``warp_rl.partition`` stays the function after its submodule is imported."""
    code = (
        "import sys, types\n"
        "import warp_rl\n"
        "assert 'torch' not in sys.modules, 'import warp_rl loaded torch'\n"
        "import warp_rl.partition, warp_rl.warp\n"
        "from warp_rl.partition import partition\n"
        "assert warp_rl.partition is partition, warp_rl.partition\n"
        "for name in warp_rl.__all__:\n"
        "    getattr(warp_rl, name)\n"
        "assert isinstance(warp_rl.objectives, types.ModuleType)\n"
        "assert sorted(warp_rl.__all__) == sorted(set(dir(warp_rl)) & set(warp_rl.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
