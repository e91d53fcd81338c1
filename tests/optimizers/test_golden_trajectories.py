"""Golden trajectories: a few compiled steps of every keras_gr optimizer.

Recorded before the issue 30 reorganisation of `keras_gr/optimizers/`
(the Shampoo split into blocking, base and staggering modules, the renamed
arguments) so that a refactoring that must not change behaviour is checked
against the numbers the code gave before it. The values are stored per
backend in `golden_trajectories.npz` beside this file.

- `KERAS_GR_GOLDEN_RECORD=1` rewrites this backend's goldens (only when a
  change of the numbers is intended; say why in the commit message).
- `KERAS_GR_GOLDEN_EXACT=1` demands bit equality (used on the machine that
  recorded them; the default tolerance allows another CPU's or XLA
  version's rounding).
"""

import os
import pathlib

import keras
import numpy as np
import pytest

from keras_gr.optimizers import AdagradNorm
from keras_gr.optimizers import FullMatrixAdagrad
from keras_gr.optimizers import LoraRite
from keras_gr.optimizers import OneSidedShampoo
from keras_gr.optimizers import Shampoo
from tests.optimizers.test_shampoo import compiled_applier

GOLDEN_FILE = pathlib.Path(__file__).with_name("golden_trajectories.npz")
STEPS = 5

# Small blocks, short periods and staggering, so that five steps visit
# blocked factors, several root offsets, statistics and no-statistics
# steps, the fallback update and the graft.
OPTIMIZERS = {
    "one_sided_shampoo": lambda: OneSidedShampoo(
        learning_rate=0.05,
        precondition_frequency=2,
        max_preconditioner_dim=4,
    ),
    "shampoo_eigh_nesterov_stats2": lambda: Shampoo(
        learning_rate=0.05,
        nesterov=True,
        precondition_frequency=3,
        statistics_frequency=2,
        max_preconditioner_dim=4,
        root_method="eigh",
    ),
    "shampoo_adagrad_graft_late_start": lambda: Shampoo(
        learning_rate=0.05,
        grafting="adagrad",
        start_preconditioning_step=3,
        precondition_frequency=1,
        flatten_tensors=False,
    ),
    "one_sided_shampoo_sgd_graft": lambda: OneSidedShampoo(
        learning_rate=0.05, grafting="sgd", precondition_frequency=1
    ),
    "one_sided_shampoo_no_graft": lambda: OneSidedShampoo(
        learning_rate=0.05, grafting="none", precondition_frequency=2
    ),
    "full_matrix_adagrad": lambda: FullMatrixAdagrad(learning_rate=0.05),
    "adagrad_norm": lambda: AdagradNorm(learning_rate=0.05),
    "lora_rite": lambda: LoraRite(learning_rate=0.05),
}


def _variables(lora):
    """Fresh variables of a fixed problem: a kernel with a blocked side, a
    rank-3 kernel, a bias (fallback), and for `LoraRite` a LoRA pair."""
    rng = np.random.default_rng(7)
    if lora:
        dense = keras.layers.Dense(5, name="dense")
        dense.build((None, 6))
        dense.enable_lora(2)
        for v in dense.trainable_variables:
            v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))
        return list(dense.trainable_variables)
    shapes = [(6, 5), (2, 3, 4), (5,)]
    return [
        keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{k}")
        for k, s in enumerate(shapes)
    ]


def trajectory(name):
    """The variables after each of `STEPS` compiled steps, concatenated
    flat per step: a `(STEPS, size)` float32 array."""
    variables = _variables(lora=name == "lora_rite")
    apply = compiled_applier(OPTIMIZERS[name](), variables)
    rng = np.random.default_rng(11)
    rows = []
    for _ in range(STEPS):
        grads = [
            rng.normal(size=tuple(v.shape)).astype("float32") for v in variables
        ]
        apply(grads)
        rows.append(
            np.concatenate(
                [np.ravel(keras.ops.convert_to_numpy(v)) for v in variables]
            )
        )
    return np.stack(rows).astype("float32")


def _key(name):
    return f"{keras.backend.backend()}/{name}"


def _load():
    if not GOLDEN_FILE.exists():
        return {}
    with np.load(GOLDEN_FILE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def goldens():
    stored = _load()
    if os.environ.get("KERAS_GR_GOLDEN_RECORD") == "1":
        for name in OPTIMIZERS:
            stored[_key(name)] = trajectory(name)
        np.savez(GOLDEN_FILE, **stored)
    return stored


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_golden_trajectory(goldens, name):
    if keras.backend.backend() not in ("jax", "tensorflow"):
        pytest.skip("goldens are recorded for jax and tensorflow")
    expected = goldens[_key(name)]
    got = trajectory(name)
    # The trajectory moves: a golden of a no-op would prove nothing.
    assert np.max(np.abs(got[-1] - got[0])) > 1e-3
    if os.environ.get("KERAS_GR_GOLDEN_EXACT") == "1":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
