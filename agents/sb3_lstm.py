"""sb3-contrib's ``MlpLstmPolicy`` with the LSTM of the PPO update run in one call.

``RecurrentActorCriticPolicy._process_sequence`` runs the LSTM one step at a time whenever an
episode starts inside a minibatch's sequences. ``RecurrentPPO`` cuts sequences at episode starts,
so a start can only be a sequence's first step; but with rollouts that begin with fresh episodes
(``n_steps`` a multiple of the maze's 200-step episode) every sequence starts with one, and
every update took the slow path: 200 single-step LSTM calls per minibatch and LSTM.
:func:`lstm_over_sequences` zeroes the initial state of those sequences instead and makes one
call: the same function, outputs, final states and gradients equal to sb3-contrib's loop to
1e-12 in float64 (``tests/test_baselines_sb3.py``). Where a start falls inside a sequence it
defers to sb3-contrib's loop.

Needs sb3-contrib (``pip install "warp-rl[contrib]"``); ``scripts/train_maze_sb3.py`` imports
this module only for ``--algo recurrent_ppo``.
"""

from __future__ import annotations

import torch
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy


def lstm_over_sequences(
    features: torch.Tensor,
    lstm_states: tuple[torch.Tensor, torch.Tensor],
    episode_starts: torch.Tensor,
    lstm: torch.nn.LSTM,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Drop-in for ``RecurrentActorCriticPolicy._process_sequence``.

    Args:
        features: ``(n_seq * max_len, input_size)``, sequence-major (padded sequences).
        lstm_states: hidden and cell state at the sequences' starts, each
            ``(num_layers, n_seq, hidden)``.
        episode_starts: ``(n_seq * max_len,)``, 1.0 where an episode starts.
        lstm: the ``torch.nn.LSTM``.

    Returns:
        The LSTM output ``(n_seq * max_len, hidden)`` and the final states.
    """
    n_seq = lstm_states[0].shape[1]
    starts = episode_starts.reshape((n_seq, -1))
    if torch.any(starts[:, 1:] != 0.0):
        return RecurrentActorCriticPolicy._process_sequence(features, lstm_states,
                                                            episode_starts, lstm)
    keep = (1.0 - starts[:, 0]).view(1, n_seq, 1)  # reset at a start = zero initial state
    sequences = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
    output, final_states = lstm(sequences, (keep * lstm_states[0], keep * lstm_states[1]))
    return torch.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), final_states


class OneCallLstmPolicy(RecurrentActorCriticPolicy):
    """``MlpLstmPolicy`` (sb3-contrib) whose LSTM runs through :func:`lstm_over_sequences`."""

    _process_sequence = staticmethod(lstm_over_sequences)
