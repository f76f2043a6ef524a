"""Maze agents: the Warp-RNN A2C agent and the baselines it is compared with.

``make_agent(name, ...)`` builds any of them by the name used by ``--agent``. Importing this
package does not import torch (the agents' modules do, when an agent is built), so that the
scripts' command lines answer ``--help`` without it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.base import RecurrentAgent, RecurrentState

# name -> "module:Class"; imported lazily so that one agent's module never costs another's.
AGENTS: dict[str, str] = {
    "warp": "agents.warp_rnn:WarpRNNAgent",
    "rnn": "agents.recurrent:RNNAgent",
    "lstm": "agents.recurrent:LSTMAgent",
    "backpropamine": "agents.backpropamine:BackpropamineAgent",
    # Warp-RNN variants (docs/agent.md): one change at a time from the published agent, their
    # combination, and a fast LSTM cell under the warp.
    "warp_identity": "agents.warp_rnn:WarpIdentityAgent",
    "warp_orthogonal": "agents.warp_rnn:WarpOrthogonalAgent",
    "warp_identity_orth": "agents.warp_rnn:WarpIdentityOrthAgent",
    "warp_lstm": "agents.warp_lstm:WarpLSTMAgent",
}


def make_agent(name: str, obs_dim: int, num_actions: int, hidden_size: int = 100,
               **kwargs) -> RecurrentAgent:
    """Build the agent called ``name`` (one of :data:`AGENTS`)."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; accepted: {', '.join(sorted(AGENTS))}")
    module_name, class_name = AGENTS[name].split(":")
    cls = getattr(import_module(module_name), class_name)
    return cls(obs_dim=obs_dim, num_actions=num_actions, hidden_size=hidden_size, **kwargs)


WARP_OBJECTIVE_NAMES: tuple[str, ...] = ("two_timescale", "algorithm2", "algorithm2_detached",
                                         "algorithm2_interval")
"""The names of :data:`agents.warp_objectives.WARP_OBJECTIVES`, in its order, for the command
line (``--warp-objective``) without importing torch; a test checks that the two agree."""


def __getattr__(name: str) -> Any:
    if name in ("RecurrentAgent", "RecurrentState"):  # agents.base imports torch: on first use
        from agents import base

        return getattr(base, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


__all__ = ["AGENTS", "WARP_OBJECTIVE_NAMES", "RecurrentAgent", "RecurrentState", "make_agent"]
