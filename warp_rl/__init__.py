"""warp_rl: WarpGrad (Meta-Learning with Warped Gradient Descent) as a domain-agnostic library.

* :func:`partition` splits a module into task-adaptable and warp parameters and buffers.
* :class:`Warp` wraps a model: adaptation with state collection, meta-updates from a
  :class:`ReplayBuffer` by an :class:`Updater` (any object with its interface;
  :class:`DualUpdater` is WarpGrad's warp objective and the Leap initialisation).
* :mod:`warp_rl.objectives`: the functional (``torch.func``) meta-objectives.
* :class:`TensorTask`: a task held as tensors (see :mod:`warp_rl.data` for the task protocol).
"""

from warp_rl import objectives
from warp_rl.buffer import ReplayBuffer, State, TaskRecord
from warp_rl.data import BatchSampler, CachedBatches, TensorTask
from warp_rl.partition import Partition, partition
from warp_rl.updaters import DualUpdater, MetaModel, MetaUpdateInfo, Updater
from warp_rl.warp import Warp

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
