"""Tunable option declarations: what a pass says the tuner may search (layer: core).

A pass lists them in its ``tunable`` class attribute, keyed by config field::

    tunable = {"ratio": Range(0.0, 0.7), "round_to": Choice((1, 4, 8, 16))}

The tuner turns them into a nevergrad parametrization; nothing here imports nevergrad.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    """A tunable option that takes one of a few values."""

    values: tuple


@dataclass(frozen=True)
class Range:
    """A tunable numeric option in [low, high]; ``integer`` rounds, ``log`` searches on a log scale."""

    low: float
    high: float
    integer: bool = False
    log: bool = False


Tunable = Choice | Range
