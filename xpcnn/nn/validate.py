"""The small checks of constructor arguments that layers and optimizers share, each raising a
one-line error that names the owner (``where``: "Conv2D", "Dropout", "SGD") and the argument."""

from __future__ import annotations

import math


def is_number(value: object) -> bool:
    """A finite real number (an int or a float, not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def integer(value: object, name: str, where: str, minimum: int) -> int:
    """An int >= ``minimum``: TypeError for anything else (a bool, a float), ValueError below it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


def pair(value: object, name: str, where: str, minimum: int) -> tuple[int, int]:
    """A kernel size: one int for both axes, or a pair (tuple or list) of them."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{where}: {name} must be an int or a pair of ints, got {value!r}")
        return integer(value[0], name, where, minimum), integer(value[1], name, where, minimum)
    single = integer(value, name, where, minimum)
    return single, single


def number(value: object, name: str, where: str) -> float:
    """A finite real number, as a float: TypeError for anything else."""
    if not is_number(value):
        raise TypeError(f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def within(value: float, name: str, where: str, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` in [low, high] (or [low, high) with ``high_open``): ValueError outside."""
    if not (low <= value < high if high_open else low <= value <= high):
        raise ValueError(f"{where}: {name} must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    return value
