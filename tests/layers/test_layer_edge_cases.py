"""Edge cases of `LoopedBlock`, `Laurel` and `LaurelStack` (issue 26,
"Beyond the list"): out-of-range, wrongly typed or inconsistent arguments
and inputs get a `ValueError` naming the argument; empty batches work."""

import keras
import numpy as np
import pytest

from keras_gr.layers import Laurel
from keras_gr.layers import LaurelStack
from keras_gr.layers import LoopedBlock

X = np.ones((2, 8), "float32")
X4 = np.ones((2, 4), "float32")
NAN = float("nan")


def _dense(units=8):
    return keras.layers.Dense(units)


CASES = {
    # LoopedBlock construction.
    "layers empty": (lambda: LoopedBlock([]), "layers"),
    "layers string": (lambda: LoopedBlock(["dense"]), "layers"),
    "num_loops 0": (lambda: LoopedBlock(_dense(), num_loops=0), "num_loops"),
    "num_loops 2.5": (
        lambda: LoopedBlock(_dense(), num_loops=2.5),
        "num_loops",
    ),
    "num_loops bool": (
        lambda: LoopedBlock(_dense(), num_loops=True),
        "num_loops",
    ),
    "loop_mode": (lambda: LoopedBlock(_dense(), loop_mode="x"), "loop_mode"),
    "rematerialize string": (
        lambda: LoopedBlock(_dense(), rematerialize="no"),
        "rematerialize",
    ),
    "input_injection string": (
        lambda: LoopedBlock(_dense(), input_injection="no"),
        "input_injection",
    ),
    "return_all_loops int": (
        lambda: LoopedBlock(_dense(), return_all_loops=2),
        "return_all_loops",
    ),
    # LoopedBlock build / call.
    "block changes shape": (lambda: LoopedBlock(_dense(4))(X), "layers"),
    "call num_loops 0": (
        lambda: LoopedBlock(_dense())(X, num_loops=0),
        "num_loops",
    ),
    "call unknown kwarg": (lambda: LoopedBlock(_dense())(X, foo=1), "foo"),
    "remat dropout training": (
        lambda: LoopedBlock(
            [keras.layers.Dropout(0.5), _dense()], rematerialize=True
        )(X, training=True),
        "rematerialize",
    ),
    # Laurel construction.
    "variant": (lambda: Laurel(variant="x"), "variant"),
    "rank 0": (lambda: Laurel(rank=0), "rank"),
    "rank float": (lambda: Laurel(rank=2.0), "rank"),
    "num_activations 0": (
        lambda: Laurel(variant="pa", num_activations=0),
        "num_activations",
    ),
    "rw_parametrization": (
        lambda: Laurel(rw_parametrization="x"),
        "rw_parametrization",
    ),
    "pa_projection": (
        lambda: Laurel(variant="pa", pa_projection="x"),
        "pa_projection",
    ),
    "lr_norm_epsilon nan": (
        lambda: Laurel(variant="lr", lr_norm=True, lr_norm_epsilon=NAN),
        "lr_norm_epsilon",
    ),
    "lr_norm_epsilon < 0": (
        lambda: Laurel(variant="lr", lr_norm=True, lr_norm_epsilon=-1.0),
        "lr_norm_epsilon",
    ),
    "lr_norm without lr": (lambda: Laurel(variant="rw", lr_norm=True), "lr"),
    "per_channel string": (
        lambda: Laurel(per_channel="yes"),
        "per_channel",
    ),
    "lr_norm string": (
        lambda: Laurel(variant="lr", lr_norm="no"),
        "lr_norm",
    ),
    # Laurel build / call.
    "rank > D": (lambda: Laurel(rank=9)([X, X]), "rank"),
    "inputs not a list": (lambda: Laurel(rank=2)(X), "inputs|list"),
    "inputs too many": (lambda: Laurel(rank=2)([X, X, X]), "inputs"),
    "fx shape": (lambda: Laurel(rank=2)([X, X4]), "fx"),
    "pa history missing": (
        lambda: Laurel(variant="pa", num_activations=3)([X, X]),
        "inputs",
    ),
    # LaurelStack.
    "stack variant": (lambda: LaurelStack(variant="x"), "variant"),
    "stack rank": (lambda: LaurelStack(rank=-1), "rank"),
    "stack fx shape": (lambda: LaurelStack(rank=2).join(X, X4), "fx"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_argument_gets_a_clear_value_error(case):
    call, argument = CASES[case]
    with pytest.raises(ValueError, match=argument):
        call()


@pytest.mark.parametrize(
    "layer",
    [
        lambda: LoopedBlock(_dense(), num_loops=2),
        lambda: LoopedBlock(_dense(), num_loops=2, loop_mode="scan"),
        lambda: Laurel(rank=2),
    ],
    ids=["looped_unroll", "looped_scan", "laurel"],
)
def test_empty_batch_gives_an_empty_output(layer):
    empty = np.ones((0, 8), "float32")
    layer = layer()
    out = layer([empty, empty]) if isinstance(layer, Laurel) else layer(empty)
    assert tuple(out.shape) == (0, 8)


def test_non_finite_inputs_propagate_and_do_not_touch_weights():
    # Layers cannot check tensor values inside a compiled graph: a NaN input
    # gives NaN outputs on its own row only, and no weight changes.
    for layer in (LoopedBlock(_dense(), num_loops=2), Laurel(rank=2)):

        def run(x, layer=layer):
            out = layer([x, x]) if isinstance(layer, Laurel) else layer(x)
            return keras.ops.convert_to_numpy(out)

        x = np.ones((2, 8), "float32")
        clean = run(x)  # builds the layer
        before = [np.array(w) for w in layer.weights]
        assert before
        x[0, 0] = np.nan
        out = run(x)
        assert np.any(np.isnan(out[0]))
        np.testing.assert_allclose(out[1], clean[1], rtol=1e-6)
        for w0, w1 in zip(before, layer.weights):
            np.testing.assert_array_equal(w0, np.array(w1))
