"""What the command-line scripts share: argument types, each rejecting a bad value with a
message that names the value and what is accepted, and the defaults of shared flags.

Imports nothing heavy (no torch), so that a script's ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import math

DIST_TIMEOUT_S = 120.0
"""Seconds a collective waits for the other ranks before failing (``--dist-timeout``; the
default of :func:`warp_rl.distributed.init_from_env`)."""


def _int_at_least(text: str, low: int, accepted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {accepted}; got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {accepted}; got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number; got {text!r}")
    return value
