"""Run a snippet on N virtual JAX CPU devices, in a fresh process.

`XLA_FLAGS=--xla_force_host_platform_device_count=N` only takes effect
before JAX initialises, so multi-device checks run in a subprocess. The
snippet stores a JSON-serialisable value in `RESULT`; `run_on_devices`
returns it. Sockets are blocked in the child as in the parent test run.

Mark every test that calls it `@pytest.mark.multidevice`: the child always
runs JAX, so `tests/conftest.py` runs these tests in the JAX pass of a
two-backend run only (the TensorFlow pass skips them instead of starting
the same subprocesses again).

Example:

    result = run_on_devices('''
    import keras
    RESULT = len(keras.distribution.list_devices())
    ''')
    assert result == 8
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from typing import Any

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SENTINEL = "__KERAS_GR_RESULT__"

_PRELUDE = """
import socket as _socket

def _no_network(*args, **kwargs):
    raise RuntimeError("network access is blocked in keras_gr tests")

_socket.socket.connect = _no_network
_socket.create_connection = _no_network
"""

_EPILOGUE = f"""
import json as _json
print({_SENTINEL!r} + _json.dumps(RESULT))
"""


def run_on_devices(
    code: str, num_devices: int = 8, timeout: float = 600
) -> Any:
    """Executes `code` under JAX with `num_devices` CPU devices.

    Returns the JSON-decoded value of the snippet's `RESULT` variable.
    Raises `RuntimeError` with the child's output if it fails.
    """
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "jax"
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={num_devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = _REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    source = _PRELUDE + textwrap.dedent(code) + _EPILOGUE
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
        path = f.name
    try:
        proc = subprocess.run(
            [sys.executable, path],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=_REPO_ROOT,
        )
    finally:
        os.unlink(path)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_SENTINEL) and proc.returncode == 0:
            return json.loads(line[len(_SENTINEL) :])
    raise RuntimeError(
        f"multi-device snippet failed (exit {proc.returncode}):\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )


TRAJECTORY_SNIPPET = """
import keras
import numpy as np
from tests.conformance import make_regression_model, regression_data

def trajectory(make_optimizer, distribution=None, epochs=2):
    if distribution is not None:
        keras.distribution.set_distribution(distribution)
    model = make_regression_model(seed=0)
    model.compile(optimizer=make_optimizer(), loss="mse", jit_compile=True)
    x, y = regression_data(n=64)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False)
    keras.distribution.set_distribution(None)
    return model
"""
"""Prepend to a snippet to get `trajectory(make_optimizer, distribution)`,
which trains the conformance regression model and returns it."""


def assert_same_weights(
    a: Sequence[Any], b: Sequence[Any], atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    """Asserts two lists of arrays (e.g. weights from two runs) agree."""
    import numpy as np

    assert len(a) == len(b), f"{len(a)} arrays vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"array {i}: {x.shape} vs {y.shape}"
        if not np.allclose(x, y, atol=atol, rtol=rtol):
            raise AssertionError(
                f"array {i} differs: max abs diff {np.max(np.abs(x - y)):.3g}"
            )
