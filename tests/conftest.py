"""Test configuration: the backend is fixed by `KERAS_BACKEND` before Keras
is imported; `pytest-socket` (enabled in pyproject's addopts) blocks the
network so any hidden download fails loudly."""

import os

import pytest

if "KERAS_BACKEND" not in os.environ:
    raise RuntimeError(
        "Set KERAS_BACKEND (jax or tensorflow) to run the tests; "
        "`bash run_tests.sh` runs both."
    )
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402


def pytest_report_header(config):
    return (
        f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"
    )


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
