"""Issue 30: one name per meaning across the optimizers; the old names keep
working for one release (`keras_gr.optimizers._deprecation`)."""

import warnings

import keras
import pytest

from keras_gr.optimizers import AdagradNorm
from keras_gr.optimizers import FullMatrixAdagrad
from keras_gr.optimizers import LoraRite
from keras_gr.optimizers import OneSidedShampoo
from keras_gr.optimizers import Shampoo
from keras_gr.optimizers import _deprecation

# (class, old name, new name, a non-default value)
RENAMES = [
    (Shampoo, "beta1", "beta_1", 0.5),
    (Shampoo, "beta2", "beta_2", 0.9),
    (Shampoo, "grafting_beta2", "grafting_beta_2", 0.9),
    (OneSidedShampoo, "beta1", "beta_1", 0.5),
    (OneSidedShampoo, "beta2", "beta_2", 0.9),
    (OneSidedShampoo, "grafting_beta2", "grafting_beta_2", 0.9),
    (FullMatrixAdagrad, "epsilon", "matrix_epsilon", 1e-3),
    (FullMatrixAdagrad, "relative_epsilon", "relative_matrix_epsilon", 1e-3),
    (AdagradNorm, "epsilon", "matrix_epsilon", 1e-3),
    (LoraRite, "relative_floor", "relative_matrix_epsilon", 1e-3),
]


def _ids(case):
    return f"{case[0].__name__}.{case[1]}"


@pytest.mark.parametrize(
    "cls, old, new, value", RENAMES, ids=map(_ids, RENAMES)
)
def test_old_name_warns_and_sets_the_new_one(cls, old, new, value):
    with pytest.warns(DeprecationWarning, match=f"`{old}`.*`{new}`"):
        opt = cls(**{old: value})
    assert getattr(opt, new) == pytest.approx(value)
    config = opt.get_config()
    assert config[new] == pytest.approx(value)
    assert old not in config
    # The new name alone: no warning of ours, same optimizer.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fresh = cls(**{new: value})
    assert not [w for w in record if "keras_gr" in str(w.message)]
    assert fresh.get_config() == config


@pytest.mark.parametrize(
    "cls, old, new, value", RENAMES, ids=map(_ids, RENAMES)
)
def test_both_names_are_refused(cls, old, new, value):
    with pytest.raises(ValueError, match=f"`{new}`.*`{old}`"):
        cls(**{old: value, new: value / 2})


@pytest.mark.parametrize(
    "cls, old, new, value", RENAMES, ids=map(_ids, RENAMES)
)
def test_configs_saved_under_the_old_names_load(cls, old, new, value):
    """A config written before the rename (old key, no new key) loads,
    through `from_config` and `keras.optimizers.deserialize`, into the
    optimizer the new name gives."""
    config = cls(**{new: value}).get_config()
    config[old] = config.pop(new)
    with pytest.warns(DeprecationWarning, match=f"`{old}`"):
        loaded = cls.from_config(dict(config))
    assert getattr(loaded, new) == pytest.approx(value)
    # What `keras.optimizers.serialize` writes (built by hand: its first
    # call imports TensorFlow's serialization helpers, tens of seconds).
    serialized = {
        "module": cls.__module__,
        "class_name": cls.__name__,
        "config": dict(config),
        "registered_name": f"keras_gr>{cls.__name__}",
    }
    with pytest.warns(DeprecationWarning, match=f"`{old}`"):
        restored = keras.optimizers.deserialize(serialized)
    assert type(restored) is cls
    assert getattr(restored, new) == pytest.approx(value)


def test_pop_renamed():
    """The helper: moves old names out of `kwargs`, leaves other keys, and
    warns once per old name, pointing at the caller."""

    def init(self, a_new=1.0, b_new=2.0, **kwargs):
        return _deprecation.pop_renamed(
            "Thing",
            init,
            kwargs,
            {"a_old": "a_new", "b_old": "b_new"},
            a_new=a_new,
            b_new=b_new,
        ), kwargs

    values, rest = init(None, other=3)
    assert values == {"a_new": 1.0, "b_new": 2.0} and rest == {"other": 3}
    with pytest.warns(DeprecationWarning) as record:
        values, rest = init(None, a_old=5.0, other=3)
    assert values == {"a_new": 5.0, "b_new": 2.0} and rest == {"other": 3}
    assert len(record) == 1
    assert "Thing: `a_old` is deprecated" in str(record[0].message)
    assert "use `a_new` instead" in str(record[0].message)
    # Passing the new name at its default beside the old one is not a
    # conflict: the old value is taken.
    with pytest.warns(DeprecationWarning):
        values, _ = init(None, a_new=1.0, a_old=5.0)
    assert values["a_new"] == 5.0
    with pytest.raises(ValueError, match="Received: a_new=4.0 and a_old=5.0"):
        init(None, a_new=4.0, a_old=5.0)
