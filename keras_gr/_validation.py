"""Argument checks shared across keras_gr.

Every error names the argument, the value received and what is allowed, in
the keras-rs form: ``"`rank` must be an integer >= 1. Received: rank=-1"``.
Use these instead of writing a new check: NumPy scalars (`np.int64(3)`,
`np.float32(0.9)`) are accepted wherever a Python number is, and booleans are
never taken for numbers.
"""

import math
import numbers

import numpy as np


def _fail(name, value, allowed):
    raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")


def check_integer(name, value, minimum=1, maximum=None):
    """Returns `int(value)`.

    Raises `ValueError` unless `value` is an integer (Python or NumPy, not a
    bool) with `minimum <= value` (and `value <= maximum` when given).
    """
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (numbers.Integral, np.integer)
    )
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        _fail(
            name,
            value,
            "an integer " + " and ".join(bounds) if bounds else "an integer",
        )
    return int(value)


def check_number(
    name,
    value,
    *,
    minimum=None,
    maximum=None,
    min_inclusive=True,
    max_inclusive=True,
):
    """Returns `float(value)`.

    Raises `ValueError` unless `value` is a finite real number (Python or
    NumPy, not a bool, not a string) inside the stated bounds.
    """
    ok = (
        not isinstance(value, (bool, np.bool_))
        and isinstance(value, (numbers.Real, np.integer, np.floating))
        and math.isfinite(float(value))
    )
    if ok:
        v = float(value)
        if minimum is not None:
            ok = v >= minimum if min_inclusive else v > minimum
        if ok and maximum is not None:
            ok = v <= maximum if max_inclusive else v < maximum
    if not ok:
        if minimum is not None and maximum is not None:
            lo = "[" if min_inclusive else "("
            hi = "]" if max_inclusive else ")"
            allowed = f"a finite number in {lo}{minimum}, {maximum}{hi}"
        elif minimum is not None:
            allowed = f"a finite number {'>=' if min_inclusive else '>'} " + (
                f"{minimum}"
            )
        elif maximum is not None:
            allowed = f"a finite number {'<=' if max_inclusive else '<'} " + (
                f"{maximum}"
            )
        else:
            allowed = "a finite number"
        _fail(name, value, allowed)
    return float(value)


def check_positive(name, value):
    """Returns `float(value)`; raises unless it is a finite number > 0."""
    return check_number(name, value, minimum=0.0, min_inclusive=False)


def check_fraction(name, value, *, allow_zero=False):
    """Returns `float(value)`; raises unless it is in (0, 1] (or [0, 1] with
    `allow_zero=True`)."""
    return check_number(
        name, value, minimum=0.0, maximum=1.0, min_inclusive=allow_zero
    )


def check_choice(name, value, choices):
    """Returns `value`; raises unless it is one of `choices`."""
    if isinstance(value, (list, dict, set)) or value not in choices:
        _fail(name, value, f"one of {tuple(choices)!r}")
    return value


def check_array(name, value, *, ndim=None, finite=True, allow_empty=False):
    """Returns `np.asarray(value)` after checking its rank, that it is not
    empty (unless `allow_empty`) and, for floating inputs, that every entry
    is finite. Raises `ValueError` naming `name` otherwise."""
    array = np.asarray(value)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"`{name}` must have rank {ndim}. Received: {name} with shape "
            f"{array.shape}"
        )
    if not allow_empty and array.size == 0:
        raise ValueError(
            f"`{name}` must not be empty. Received: {name} with shape "
            f"{array.shape}"
        )
    if (
        finite
        and np.issubdtype(array.dtype, np.floating)
        and not np.all(np.isfinite(array))
    ):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"`{name}` must hold only finite values. Received: {name} with "
            f"{bad} NaN or infinite entries (shape {array.shape})"
        )
    return array


def check_same_length(name_a, a, name_b, b):
    """Raises `ValueError` unless `len(a) == len(b)`."""
    if len(a) != len(b):
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same length. Received: "
            f"len({name_a})={len(a)}, len({name_b})={len(b)}"
        )


def check_bool(name, value):
    """Returns `bool(value)`; raises unless it is a Python or NumPy bool
    (a string such as `"no"` would otherwise be taken as `True`)."""
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, value, "a bool")
    return bool(value)


def check_integer_choices(name, value, minimum=1):
    """Returns `value` as a non-empty list of `int`s.

    `value` is one integer (Python or NumPy) or a non-empty sequence of
    them (list, tuple, 1-D array), each `>= minimum`: the "an int or a list
    to draw from" arguments of the task generators.
    """
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    ):
        return [check_integer(name, value, minimum)]
    allowed = f"an integer >= {minimum} or a non-empty list of such integers"
    if isinstance(value, (str, bytes, dict, set)):
        _fail(name, value, allowed)
    try:
        choices = list(value)
    except TypeError:
        _fail(name, value, allowed)
    if not choices:
        _fail(name, value, allowed)
    for choice in choices:
        check_integer(name, choice, minimum)
    return [int(c) for c in choices]
