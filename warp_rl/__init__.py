"""warp_rl: WarpGrad (Meta-Learning with Warped Gradient Descent) as a domain-agnostic library.

Core pieces: :func:`partition` splits a module into task-adaptable and warp parameters.
"""

from warp_rl.partition import Partition, partition

__all__ = ["Partition", "partition"]
