"""The public API is defined and light.

- `keras_gr.__all__` lists `__version__` and every subpackage; every
  subpackage defines `__all__`, listing exactly its public names, and
  every public function or class it lists has a docstring with an
  `Example:` section (run by `tests/test_docstring_examples.py`);
  constants (configs) document themselves in their module.
- Every public function and public class constructor has type hints.
- `import keras_gr` imports neither Keras nor a backend, and
  `import keras_gr.optimizers` works under JAX with TensorFlow and
  keras-hub absent (blocked in a subprocess: the cheapest equivalent of a
  second, JAX-only virtual environment).
"""

import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import types

import pytest

import keras_gr

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.dirname(keras_gr.__file__)

# Every area's public signatures are annotated (checked below).
TYPED_AREAS = tuple(
    name
    for name in sorted(os.listdir(PACKAGE_DIR))
    if not name.startswith("_")
    and os.path.isfile(os.path.join(PACKAGE_DIR, name, "__init__.py"))
)


def _subpackages_on_disk():
    return sorted(
        name
        for name in os.listdir(PACKAGE_DIR)
        if not name.startswith("_")
        and os.path.isfile(os.path.join(PACKAGE_DIR, name, "__init__.py"))
    )


def _public_names(module):
    """Names a user can import: no leading underscore, not a submodule."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_top_level_all_lists_every_subpackage():
    assert sorted(keras_gr._SUBPACKAGES) == _subpackages_on_disk()
    assert keras_gr.__all__ == ["__version__", *keras_gr._SUBPACKAGES]
    for name in keras_gr.__all__:
        assert hasattr(keras_gr, name), name
    with pytest.raises(AttributeError, match="no_such_area"):
        keras_gr.no_such_area  # noqa: B018


@pytest.mark.parametrize("area", _subpackages_on_disk())
def test_subpackage_all_is_exactly_its_public_names(area):
    module = importlib.import_module(f"keras_gr.{area}")
    assert hasattr(module, "__all__"), f"keras_gr.{area} has no __all__"
    listed = list(module.__all__)
    assert len(listed) == len(set(listed)), "duplicates in __all__"
    missing = [name for name in listed if not hasattr(module, name)]
    assert not missing, f"listed but not defined: {missing}"
    unlisted = sorted(_public_names(module) - set(listed))
    assert not unlisted, f"public but not in __all__: {unlisted}"


def _listed_callables():
    """`(area, name)` of each function or class listed in an `__all__`."""
    params = []
    for area in _subpackages_on_disk():
        module = importlib.import_module(f"keras_gr.{area}")
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name, None)
            if inspect.isclass(value) or inspect.isfunction(value):
                full = f"keras_gr.{area}.{name}"
                params.append(pytest.param(area, name, id=full))
    return params


@pytest.mark.parametrize("area,name", _listed_callables())
def test_listed_function_or_class_has_an_example(area, name):
    module = importlib.import_module(f"keras_gr.{area}")
    doc = inspect.getdoc(getattr(module, name)) or ""
    assert "Example" in doc and ">>> " in doc, (
        f"keras_gr.{area}.{name}: no `Example:` section with `>>> ` lines"
    )


def _unannotated(function, skip_first=False):
    """Names of `function`'s unannotated parameters (`*args` / `**kwargs`
    and, for methods, `self` excepted), plus `"return"` when the return
    type is missing (functions only)."""
    sig = inspect.signature(function)
    params = list(sig.parameters.values())[1 if skip_first else 0 :]
    missing = [
        p.name
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.annotation is inspect.Parameter.empty
    ]
    if not skip_first and sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


@pytest.mark.parametrize("area", TYPED_AREAS)
def test_public_signatures_are_annotated(area):
    """Every function listed in `__all__` has annotated parameters and a
    return type; every listed class that defines `__init__` has annotated
    constructor parameters."""
    module = importlib.import_module(f"keras_gr.{area}")
    untyped = {}
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isfunction(value):
            missing = _unannotated(value)
        elif inspect.isclass(value) and "__init__" in vars(value):
            missing = _unannotated(value.__init__, skip_first=True)
        else:
            continue
        if missing:
            untyped[name] = missing
    assert not untyped, f"missing type hints: {untyped}"


_LIGHT_IMPORT = """
import sys

# TensorFlow and keras-hub are not installed, as far as Python can tell.
for name in ("tensorflow", "keras_hub", "tensorflow_text"):
    sys.modules[name] = None

import keras_gr
heavy = [m for m in ("keras", "jax", "tensorflow") if sys.modules.get(m)]
assert not heavy, f"import keras_gr imported {heavy}"

import keras_gr.optimizers
import numpy as np
import keras

assert keras.backend.backend() == "jax"
w = keras.Variable(np.ones((4, 3), "float32"))
opt = keras_gr.optimizers.OneSidedShampoo(learning_rate=0.1)
opt.apply_gradients([(keras.ops.ones((4, 3)), w)])
assert float(keras.ops.max(w)) < 1.0
assert "keras_hub" not in sys.modules or sys.modules["keras_hub"] is None
print("LIGHT_IMPORT_OK")
"""


def test_optimizers_import_with_jax_and_no_tensorflow():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LIGHT_IMPORT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert "LIGHT_IMPORT_OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
