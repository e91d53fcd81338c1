"""Renamed arguments: the old name keeps working for one release.

Issue 30 gave every argument one meaning and Keras's spelling across the
optimizers (`beta1` -> `beta_1`, one name for the relative eigenvalue
floor, ...). A constructor lists the new names in its signature and takes
the old ones from `**kwargs` through `pop_renamed`, which warns with a
`DeprecationWarning` naming the new one; configs saved under the old
names (`from_config`) load the same way.
"""

import inspect
import warnings

REMOVAL = "0.2.0"
"""The release in which the old names stop working."""


def pop_renamed(owner, function, kwargs, renames, **values):
    """Moves deprecated arguments of `kwargs` to their new names.

    Args:
        owner: the class name, for the messages.
        function: the constructor, whose signature gives the new names'
            defaults.
        kwargs: the constructor's `**kwargs`; the old names are removed
            from it.
        renames: `{old name: new name}`.
        **values: `new name=value received`, for every new name of
            `renames`.

    Returns:
        `values` (a dict) with every old name given in `kwargs` moved to
        its new name.

    Raises:
        ValueError: an argument given under both names (the new one with
            a value other than its default).
    """
    parameters = inspect.signature(function).parameters
    for old, new in renames.items():
        if old not in kwargs:
            continue
        value = kwargs.pop(old)
        if values[new] != parameters[new].default:
            raise ValueError(
                f"{owner}: pass `{new}` only (`{old}` is its deprecated "
                f"name). Received: {new}={values[new]!r} and "
                f"{old}={value!r}"
            )
        warnings.warn(
            f"{owner}: `{old}` is deprecated and will be removed in "
            f"keras_gr {REMOVAL}; use `{new}` instead.",
            DeprecationWarning,
            stacklevel=3,
        )
        values[new] = value
    return values
