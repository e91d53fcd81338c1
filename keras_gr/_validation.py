"""Argument checks shared across keras_gr (errors name the argument, the
value received and what is allowed)."""

import numpy as np


def check_integer(name, value, minimum=1):
    """Returns `int(value)`; raises `ValueError` unless `value` is an integer
    (not a bool) that is `>= minimum`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)
