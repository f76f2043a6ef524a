"""warp_rl: WarpGrad (Meta-Learning with Warped Gradient Descent) as a domain-agnostic library.

* :func:`partition` splits a module into task-adaptable and warp parameters and buffers.
* :class:`Warp` wraps a model: adaptation with state collection, meta-updates from a
  :class:`ReplayBuffer` by an :class:`Updater` (any object with its interface;
  :class:`DualUpdater` is WarpGrad's warp objective and the Leap initialisation).
* :mod:`warp_rl.objectives`: the functional (``torch.func``) meta-objectives.
* :class:`TensorTask`: a task held as tensors (see :mod:`warp_rl.data` for the task protocol).

The names below are imported from their modules on first use (PEP 562), so that
``import warp_rl.cli`` or ``warp_rl.runs`` (what the scripts' command lines need) does not load
torch.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warp_rl import objectives
    from warp_rl.buffer import ReplayBuffer, State, TaskRecord
    from warp_rl.data import BatchSampler, CachedBatches, TensorTask
    from warp_rl.partition import Partition, partition
    from warp_rl.updaters import DualUpdater, MetaModel, MetaUpdateInfo, Updater
    from warp_rl.warp import Warp

_HOMES: dict[str, str] = {
    "BatchSampler": "warp_rl.data",
    "CachedBatches": "warp_rl.data",
    "DualUpdater": "warp_rl.updaters",
    "MetaModel": "warp_rl.updaters",
    "MetaUpdateInfo": "warp_rl.updaters",
    "Partition": "warp_rl.partition",
    "ReplayBuffer": "warp_rl.buffer",
    "State": "warp_rl.buffer",
    "TaskRecord": "warp_rl.buffer",
    "TensorTask": "warp_rl.data",
    "Updater": "warp_rl.updaters",
    "Warp": "warp_rl.warp",
    "objectives": "warp_rl.objectives",
}
"""Each public name and the module that defines it (``objectives`` is the module itself)."""

__all__ = [
    "BatchSampler",
    "CachedBatches",
    "DualUpdater",
    "MetaModel",
    "MetaUpdateInfo",
    "Partition",
    "ReplayBuffer",
    "State",
    "TaskRecord",
    "TensorTask",
    "Updater",
    "Warp",
    "objectives",
    "partition",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'warp_rl' has no attribute {name!r}")
    module = import_module(home)
    value = module if home == f"warp_rl.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``warp_rl``'s module type: ``warp_rl.partition`` is the function of the submodule of the
    same name. (Importing the submodule binds the module to the package's attribute; a property
    keeps the function there, as the package's ``from warp_rl.partition import partition`` did
    when it imported everything at once.)"""

    @property
    def partition(self) -> Any:
        from warp_rl.partition import partition

        return partition

    @partition.setter
    def partition(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):  # the import system binding the submodule
            raise AttributeError("warp_rl.partition is the function warp_rl.partition.partition")


sys.modules[__name__].__class__ = _Package
