"""The small checks of constructor arguments that layers and optimizers share, each raising a
one-line error that names the owner (``where``: "Conv2D", "Dropout", "SGD") and the argument."""

from __future__ import annotations

import math
import os


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


# -- the caps on what a network may ask for, checked before anything is allocated -----------------

MAX_ARRAY_VALUES = 2 ** 31 - 1  # one parameter array, or one image's output of one layer (8 GiB of float32)
MAX_PARAMETERS = 2 ** 31 - 1  # a whole network's parameters


def count_text(count: int) -> str:
    """A count for a message: ``1,234,567``, or ``~10^400`` when it is too long to read."""
    digits = len(str(count))
    return f"{count:,}" if digits <= 15 else f"~10^{digits - 1}"


def shape_values(shape: tuple, where: str, what: str, limit: int = MAX_ARRAY_VALUES) -> int:
    """The number of values in ``shape`` (exact, in Python integers), or a ValueError naming
    ``where`` and ``what`` when it exceeds ``limit``: the check that comes before an allocation."""
    values = math.prod(int(d) for d in shape)
    if values > limit:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{what} would hold {count_text(values)} values, more than the cap of "
                         f"{count_text(limit)}")
    return values


def available_memory() -> int | None:
    """Bytes of memory this process could still get (Linux: MemAvailable, else the physical
    memory; None where neither is known)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def bytes_text(size: float) -> str:
    """``12.3 GiB``."""
    if size >= 2 ** 50:
        return "more than 1 PiB"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"
