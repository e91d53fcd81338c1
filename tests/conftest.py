"""Test configuration.

- The backend is fixed by `KERAS_BACKEND` before Keras is imported.
- `pytest-socket` (enabled in pyproject's addopts) blocks the network, so
  any hidden download fails loudly.
- `KERAS_GR_CACHE` points to a fresh temporary folder for the session (or
  to `$KERAS_GR_TEST_CACHE` when set, to keep built presets between runs),
  so tests never read or write the user's `~/.cache/keras_gr`.
- Tests marked `multidevice` start JAX subprocesses whatever the backend
  under test, so they run only in the JAX pass of a two-backend run.
"""

import os
import shutil
import tempfile

import pytest

if "KERAS_BACKEND" not in os.environ:
    raise RuntimeError(
        "Set KERAS_BACKEND (jax or tensorflow) to run the tests; "
        "`bash run_tests.sh` runs both."
    )
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

_SESSION_CACHE = None


def pytest_configure(config):
    global _SESSION_CACHE
    cache = os.environ.get("KERAS_GR_TEST_CACHE")
    if not cache:
        cache = _SESSION_CACHE = tempfile.mkdtemp(prefix="keras_gr_cache_")
    os.environ["KERAS_GR_CACHE"] = cache


def pytest_unconfigure(config):
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_report_header(config):
    return (
        f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"
        f"; KERAS_GR_CACHE={os.environ['KERAS_GR_CACHE']}"
    )


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "jax":
        return
    skip = pytest.mark.skip(
        reason="multidevice tests run JAX subprocesses: only in the JAX pass"
    )
    for item in items:
        if "multidevice" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    """A tiny local Gemma preset folder (built once per test session)."""
    from keras_gr.presets import TINY_CONFIG
    from keras_gr.presets import build_local_preset

    cache = tmp_path_factory.mktemp("preset_cache")
    return build_local_preset(**TINY_CONFIG, cache_dir=str(cache), verbose=0)
