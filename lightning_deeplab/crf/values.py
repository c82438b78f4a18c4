"""What counts as a number in an argument: the package's one test, so every option refuses
``True`` as a count the same way (Python's bool is an int; no user means 1 by it)."""

from __future__ import annotations

import numbers


def is_integer(value: object) -> bool:
    """An integer, Python's or numpy's, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number (integers included), Python's or numpy's, and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
