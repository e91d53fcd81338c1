"""Edge cases of the routers, `RoutedGenerator` and the routing metrics
(issue 26, "Beyond the list"): every out-of-range, wrongly shaped, empty,
NaN/inf or inconsistent argument gets a `ValueError` naming the argument."""

import functools

import numpy as np
import pytest

from keras_gr import metrics
from keras_gr.curation import FunctionEmbedder
from keras_gr.models import ClusterRouter
from keras_gr.models import KNNRouter
from keras_gr.models import LearnedMapRouter
from keras_gr.models import OracleRouter
from keras_gr.models import RoutedGenerator
from keras_gr.models import ZeroRouter

VAL = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
CORRECT = np.array([[1, 1], [0, 1], [1, 0], [0, 0], [1, 1], [0, 1]], "float64")
COSTS = [1.0, 2.0]


@functools.cache
def _zero():
    return _fit_zero(names=["s", "l"])


def _fit_zero(val=VAL, correct=CORRECT, costs=COSTS, names=None):
    return ZeroRouter().fit_pool(
        validation_embeddings=val,
        validation_correctness=correct,
        costs=costs,
        model_names=names,
    )


def _fit(router, **changes):
    """`router.fit_pool` on `VAL` / `CORRECT` (as training and validation
    set, as the router takes them), with `changes` to those arguments."""
    args = {
        "validation_embeddings": VAL,
        "validation_correctness": CORRECT,
        "costs": COSTS,
    }
    if isinstance(router, (ClusterRouter, LearnedMapRouter)):
        args["train_embeddings"] = VAL
    if isinstance(router, LearnedMapRouter):
        args["train_correctness"] = CORRECT
    return router.fit_pool(**{**args, **changes})


def _map():
    return LearnedMapRouter(num_clusters=2)


class _Echo:
    def generate(self, prompts, max_length=None):
        return list(prompts)


def _served(**kwargs):
    embedder = FunctionEmbedder(lambda t: np.ones((len(t), 3)), 3)
    lms = {"s": _Echo(), "l": _Echo()}
    return RoutedGenerator(lms, _zero(), embedder, **kwargs)


NAN = float("nan")
INF = float("inf")

CASES = {
    # Constructors.
    "num_clusters=0": (lambda: ClusterRouter(num_clusters=0), "num_clusters"),
    "num_neighbors=-1": (lambda: KNNRouter(num_neighbors=-1), "num_neighbors"),
    "knn metric": (lambda: KNNRouter(metric="l1"), "metric"),
    "epochs=-1": (lambda: LearnedMapRouter(epochs=-1), "epochs"),
    "learning_rate=nan": (
        lambda: LearnedMapRouter(learning_rate=NAN),
        "learning_rate",
    ),
    # fit.
    "costs inf": (lambda: _fit_zero(costs=[1.0, INF]), "costs"),
    "costs negative": (lambda: _fit_zero(costs=[1.0, -2.0]), "costs"),
    "costs too short": (
        lambda: _fit_zero(costs=[1.0]),
        "validation_correctness",
    ),
    "names duplicate": (lambda: _fit_zero(names=["a", "a"]), "model_names"),
    "names too short": (lambda: _fit_zero(names=["a"]), "model_names"),
    "correctness nan": (
        lambda: _fit_zero(correct=np.where(CORRECT > 0, NAN, 0.0)),
        "validation_correctness",
    ),
    "correctness > 1": (
        lambda: _fit_zero(correct=CORRECT * 2),
        "validation_correctness",
    ),
    "correctness rank 1": (
        lambda: _fit_zero(correct=CORRECT[:, 0]),
        "validation_correctness",
    ),
    "validation empty": (
        lambda: _fit_zero(val=np.zeros((0, 3)), correct=np.zeros((0, 2))),
        "validation_embeddings",
    ),
    "validation inf": (
        lambda: _fit_zero(val=np.full((6, 3), INF)),
        "validation_embeddings",
    ),
    "cosine zero row": (
        lambda: _fit(
            KNNRouter(metric="cosine"), validation_embeddings=np.zeros((6, 3))
        ),
        "validation_embeddings",
    ),
    "num_clusters > points": (
        lambda: _fit(ClusterRouter(num_clusters=10)),
        "num_clusters",
    ),
    "validation_embeddings None": (
        lambda: _fit(KNNRouter(), validation_embeddings=None),
        "validation_embeddings",
    ),
    "train width": (
        lambda: _fit(
            ClusterRouter(num_clusters=2), train_embeddings=VAL[:, :2]
        ),
        "train_embeddings",
    ),
    "train_correctness columns": (
        lambda: _fit(_map(), train_correctness=CORRECT[:, :1]),
        "train_correctness",
    ),
    "train_correctness rows": (
        lambda: _fit(_map(), train_correctness=CORRECT[:3]),
        "train_correctness",
    ),
    # route / predict_errors.
    "embeddings rank 1": (lambda: _zero().route(VAL[0]), "embeddings"),
    "embeddings empty": (lambda: _zero().route(VAL[:0]), "embeddings"),
    "embeddings nan": (
        lambda: _zero().route(np.full((2, 3), NAN)),
        "embeddings",
    ),
    "embeddings strings": (
        lambda: _zero().route([["a", "b", "c"]]),
        "embeddings",
    ),
    "embeddings width": (lambda: _zero().route(VAL[:, :2]), "embeddings"),
    "cost_weight nan": (lambda: _zero().route(VAL, NAN), "cost_weight"),
    "cost_weight inf": (lambda: _zero().route(VAL, INF), "cost_weight"),
    "cost_weight < 0": (lambda: _zero().route(VAL, -1.0), "cost_weight"),
    "cost_weight str": (lambda: _zero().route(VAL, "1"), "cost_weight"),
    "oracle correctness > 1": (
        lambda: OracleRouter().fit_pool(costs=COSTS).route(CORRECT * 3),
        "correctness",
    ),
    # add_model / remove_model.
    "add cost nan": (
        lambda: _fit_zero().add_model("c", CORRECT[:, 0], NAN),
        "cost",
    ),
    "add correctness rank 2": (
        lambda: _fit_zero().add_model("c", CORRECT, 1.0),
        "validation_correctness",
    ),
    "add correctness rows": (
        lambda: _fit_zero().add_model("c", CORRECT[:3, 0], 1.0),
        "validation_correctness",
    ),
    "add name taken": (
        lambda: _fit_zero(names=["a", "b"]).add_model("a", CORRECT[:, 0], 1),
        "name",
    ),
    "remove unknown": (lambda: _fit_zero().remove_model("zz"), "name"),
    "remove the last": (
        lambda: _fit_zero(correct=CORRECT[:, :1], costs=[1.0]).remove_model(
            "model_0"
        ),
        "name",
    ),
    # deferral_curve (router).
    "cost_weights empty": (
        lambda: _zero().deferral_curve(VAL, CORRECT, []),
        "cost_weights",
    ),
    "cost_weights scalar": (
        lambda: _zero().deferral_curve(VAL, CORRECT, 0.5),
        "cost_weights",
    ),
    "cost_weights nan": (
        lambda: _zero().deferral_curve(VAL, CORRECT, [NAN]),
        "cost_weights",
    ),
    "curve rows": (
        lambda: _zero().deferral_curve(VAL, CORRECT[:3]),
        "correctness",
    ),
    "curve columns": (
        lambda: _zero().deferral_curve(VAL, CORRECT[:, :1]),
        "correctness",
    ),
    # RoutedGenerator.
    "prompts empty": (lambda: _served().generate([]), "prompts"),
    "bucket_sizes 0": (lambda: _served(bucket_sizes=[0]), "bucket_sizes"),
    "bucket_sizes order": (
        lambda: _served(bucket_sizes=[4, 2]),
        "bucket_sizes",
    ),
    "models empty": (
        lambda: RoutedGenerator({}, _zero(), lambda t: VAL),
        "models",
    ),
    "embedder": (
        lambda: RoutedGenerator({"s": _Echo(), "l": _Echo()}, _zero(), 3),
        "embedder",
    ),
    # Metrics.
    "choices -1": (
        lambda: metrics.deferral_curve([[-1] * 6], CORRECT, COSTS),
        "choices",
    ),
    "choices too large": (
        lambda: metrics.deferral_curve([[2] * 6], CORRECT, COSTS),
        "choices",
    ),
    "choices columns": (
        lambda: metrics.deferral_curve([[0] * 5], CORRECT, COSTS),
        "choices",
    ),
    "model_costs length": (
        lambda: metrics.deferral_curve([[0] * 6], CORRECT, [1.0]),
        "model_costs",
    ),
    "qualities nan": (
        lambda: metrics.deferral_area([1.0, 2.0], [0.5, NAN]),
        "qualities",
    ),
    "costs empty": (lambda: metrics.deferral_area([], []), "costs"),
    "cost_range nan": (
        lambda: metrics.deferral_area([1.0, 2.0], [0.5, 0.7], (NAN, 2.0)),
        "cost_range",
    ),
    "cost_range 3": (
        lambda: metrics.aiq([1.0, 2.0], [0.5, 0.7], (1.0, 2.0, 3.0)),
        "cost_range",
    ),
    "at_cost nan": (
        lambda: metrics.curve_value([1.0, 2.0], [0.5, 0.7], NAN),
        "at_cost",
    ),
    "reference_cost 0": (
        lambda: metrics.quality_neutral_cost([1.0, 2.0], [0.5, 0.7], 0.6, 0),
        "reference_cost",
    ),
    "target_quality nan": (
        lambda: metrics.quality_neutral_cost([1.0, 2.0], [0.5, 0.7], NAN, 1.0),
        "target_quality",
    ),
    "weak triple": (
        lambda: metrics.apgr([1.0, 2.0], [0.5, 0.7], (1, 0.5, 3), (2, 0.7)),
        "weak",
    ),
    "strong nan": (
        lambda: metrics.apgr([1.0, 2.0], [0.5, 0.7], (1, 0.5), (NAN, 0.7)),
        "strong",
    ),
    "fraction 0": (
        lambda: metrics.cpt([1.0, 2.0], [0.5, 0.7], (1, 0.5), (2, 0.7), 0.0),
        "fraction",
    ),
    "curves empty": (
        lambda: metrics.plot_deferral_curves({}, "unused.png"),
        "curves",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_argument_gets_a_clear_value_error(case):
    call, argument = CASES[case]
    with pytest.raises(ValueError, match=f"`{argument}`") as info:
        call()
    assert "Received" in str(info.value)
