"""Optional dependencies: import one, or say which extra installs it.

The core install is keras + numpy (see pyproject.toml). keras-hub,
sentencepiece, TensorFlow, scikit-learn and matplotlib are extras, imported
where a feature needs them. `require` imports such a module and, when it is
missing, raises an ImportError that names the feature and the pip command
that installs it (`pip install "keras-gr[hub]"`), instead of a bare
`No module named 'keras_hub'`.

`lazy_exports` gives a namespace `__init__.py` a module `__getattr__`
(PEP 562): where keras-hub is installed every name is imported with the
namespace (so its Keras classes are registered for `load_model`), and
where it is not, the names that need it stay unimported, so
`import keras_gr.hub` works without keras-hub while
`from keras_gr.hub import laurel_retrofit` raises `require`'s ImportError.
"""

import importlib
import sys
import types
from collections.abc import Callable

# Top-level module -> the extra of pyproject.toml that installs it.
EXTRAS = {
    "keras_hub": "hub",
    "sentencepiece": "hub",
    "tensorflow": "tensorflow",
    "sklearn": "sklearn",
    "matplotlib": "plot",
}


def missing_dependency_error(
    error: ModuleNotFoundError, feature: str
) -> ImportError | None:
    """The ImportError naming the extra, when `error` says that one of the
    optional modules of `EXTRAS` is missing; None for any other error
    (a missing core module or a bug inside an installed package must
    surface unchanged)."""
    top = (error.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return ImportError(
        f"{feature} needs `{top}`, which is not installed. Install it "
        f'with: pip install "keras-gr[{EXTRAS[top]}]"'
    )


def require(module: str, feature: str) -> types.ModuleType:
    """Imports `module` (e.g. "keras_hub") for `feature` (the words that
    name what needs it, e.g. "`build_local_preset`").

    Raises:
        ImportError: naming `feature` and the pip command of the extra
            that installs `module`, when `module` is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        replacement = missing_dependency_error(error, feature)
        if replacement is None:
            raise
        raise replacement from error


class _LazyNamespace(types.ModuleType):
    """A package module whose exported names win over its submodules.

    Python binds a submodule as an attribute of its package once it is
    imported (`import keras_gr.hub.laurel_retrofit` sets
    `keras_gr.hub.laurel_retrofit` to the module). When a lazily exported
    name equals a submodule's name (the function `laurel_retrofit` of the
    module `laurel_retrofit`), that binding is skipped, so the name keeps
    meaning the exported object, as it did with eager imports.
    """

    def __setattr__(self, name: str, value: object) -> None:
        exports = self.__dict__.get("_LAZY_EXPORTS", {})
        if name in exports and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for the package named `package`, whose
    names in `exports` (public name -> submodule name) are imported on
    first access and then cached in the package.

    Usage, at the end of a namespace `__init__.py`:
    `__getattr__, __dir__ = lazy_exports(__name__, _LAZY)`.
    """
    module = sys.modules[package]
    module._LAZY_EXPORTS = dict(exports)
    module.__class__ = _LazyNamespace

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}"
            )
        submodule = require(f"{package}.{exports[name]}", f"`{package}.{name}`")
        value = getattr(submodule, name)
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(exports))

    # Where the optional dependencies are installed, import every export
    # now: importing a module registers its Keras-serializable classes, and
    # `keras.models.load_model` / keras-hub's `from_preset` find a class
    # only once it is registered (a `.keras` file of a `keras_gr.hub` model
    # must load after a bare `import keras_gr.hub`). Where one is missing,
    # its names stay lazy and raise `require`'s ImportError on first use.
    for name in exports:
        try:
            __getattr__(name)
        except ImportError as error:
            if not _missing_extra(error):
                raise

    return __getattr__, __dir__


def _missing_extra(error: ImportError) -> bool:
    """Whether `error` is `require`'s ImportError for a missing extra."""
    cause = error.__cause__
    return (
        isinstance(cause, ModuleNotFoundError)
        and missing_dependency_error(cause, "") is not None
    )
