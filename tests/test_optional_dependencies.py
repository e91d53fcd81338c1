"""A JAX-only install (`pip install "keras-gr[jax]"`) can use every part of
keras_gr that does not need keras-hub, and the parts that do need it say
which extra to install.

The JAX-only environment is simulated in a subprocess: a `sys.meta_path`
finder makes TensorFlow, keras-hub, tensorflow-text and sentencepiece
unimportable (CI's JAX-only step checks the same in a real second virtual
environment, see .ci/run).
"""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

import keras_gr

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_JAX_ONLY = """
import importlib
import sys

BLOCKED = ("tensorflow", "keras_hub", "tensorflow_text", "sentencepiece")


class _Blocker:
    # Any import of a blocked package fails as if it were not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocker())

import numpy as np

import keras_gr

for area in keras_gr._SUBPACKAGES:
    module = importlib.import_module("keras_gr." + area)
    for name in module.__all__:
        if area != "hub" and name not in ("SoftSRV", "SoftPrompt",
                                          "HardPromptGenerator"):
            getattr(module, name)  # every keras-hub-free name resolves
print("NAMESPACES_OK")

import keras
from keras_gr.models import KNNRouter
from keras_gr.models import LoopedICLRegressor
from keras_gr.data import icl_regression_problems

assert keras.backend.backend() == "jax"
val = np.array([[0.0], [0.1], [5.0], [5.1]])
correct = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], "float32")
router = KNNRouter(num_neighbors=2).fit_pool(
    validation_embeddings=val, validation_correctness=correct,
    costs=[1.0, 3.0])
routes = router.route(np.array([[0.05], [4.0]]), cost_weight=0.1)
assert np.asarray(routes).tolist() == [0, 1], routes
print("ROUTER_OK")

data = icl_regression_problems(32, dim=3, kappa=2)
model = LoopedICLRegressor(depth=2)
model.compile(optimizer="adam", loss="mse")
history = model.fit(data["prompts"], data["targets"], epochs=1, verbose=0)
assert np.isfinite(history.history["loss"][-1])
print("LOOPED_ICL_OK")

import keras_gr.hub
from keras_gr.presets import TINY_CONFIG
from keras_gr.presets import build_local_preset

def message(call):
    try:
        call()
    except ImportError as error:
        return str(error)
    raise AssertionError("no ImportError")

for text in (
    message(lambda: keras_gr.hub.laurel_retrofit),
    message(lambda: importlib.import_module("keras_gr.models").SoftSRV),
    message(lambda: build_local_preset(**TINY_CONFIG, verbose=0)),
):
    print("MESSAGE:", text)
    assert 'pip install "keras-gr[hub]"' in text, text
print("MESSAGES_OK")

loaded = sorted(m for m in BLOCKED if sys.modules.get(m) is not None)
assert not loaded, loaded
print("JAX_ONLY_OK")
"""


def _run_snippet(code, tmp_path, **env_vars):
    """Runs `code` in a fresh Python process importing this checkout's
    keras_gr, with a temporary cache and `env_vars` set."""
    env = dict(os.environ, **env_vars)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["KERAS_GR_CACHE"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the subprocess always runs JAX: once, in the JAX pass",
)
def test_every_namespace_works_without_keras_hub_and_tensorflow(tmp_path):
    proc = _run_snippet(
        _JAX_ONLY, tmp_path, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"
    )
    assert "JAX_ONLY_OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    # A library prints nothing on its ordinary path.
    assert "warning" not in proc.stderr.lower(), proc.stderr[-4000:]


def test_hub_names_are_the_same_objects_as_their_modules():
    """With keras-hub installed the lazy names are the modules' objects,
    and importing a submodule does not shadow an exported function of the
    same name (`keras_gr.hub.laurel_retrofit` stays the function)."""
    import keras_gr.hub.laurel_retrofit as imported
    from keras_gr.hub import laurel_retrofit
    from keras_gr.hub import prefix_lm as prefix_module
    from keras_gr.models import SoftSRV
    from keras_gr.models.softsrv import softsrv

    module = sys.modules["keras_gr.hub.laurel_retrofit"]
    assert laurel_retrofit is module.laurel_retrofit
    assert imported is module.laurel_retrofit
    assert callable(keras_gr.hub.laurel_retrofit)
    assert prefix_module is sys.modules["keras_gr.hub.prefix_lm"]
    assert SoftSRV is softsrv.SoftSRV
    assert set(keras_gr.hub.__all__) <= set(dir(keras_gr.hub))


_REGISTERED_AFTER_IMPORT = """
import inspect
import keras
import keras_gr.hub
import keras_gr.models

missing = []
for area in (keras_gr.hub, keras_gr.models):
    for name in area.__all__:
        value = area.__dict__.get(name)
        if value is None:
            missing.append(f"{area.__name__}.{name} not imported")
        elif inspect.isclass(value) and issubclass(value, keras.Layer):
            key = keras.saving.get_registered_name(value)
            if keras.saving.get_registered_object(key) is not value:
                missing.append(key)
print("MISSING", missing)
"""


def test_keras_classes_are_registered_by_importing_the_namespace(tmp_path):
    """With keras-hub installed, a bare `import keras_gr.hub` /
    `import keras_gr.models` in a fresh process registers every exported
    Keras class, so `keras.models.load_model` and keras-hub's `from_preset`
    find them (the lazy namespaces left them unregistered until a name was
    touched)."""
    proc = _run_snippet(_REGISTERED_AFTER_IMPORT, tmp_path)
    assert "MISSING []" in proc.stdout, proc.stdout + proc.stderr[-4000:]
