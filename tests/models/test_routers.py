"""Routers of "Universal Model Routing for Efficient LLM Inference"
(arXiv 2502.08773) on a synthetic correctness matrix with known
cluster-wise accuracies: exact recovery, add_model == refit, lambda
extremes, oracle dominance, save / load, bad input."""

import functools
import warnings

import keras
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

# 4 clusters x 5 models: accuracies in tenths, chosen so that the optimal
# rule differs between clusters and has no ties at the lambdas tested.
ACCURACY = np.array(
    [
        [0.9, 0.9, 1.0, 1.0, 1.0],  # easy: the cheapest is nearly perfect
        [0.1, 0.6, 0.7, 0.9, 1.0],  # hard
        [0.5, 0.5, 0.8, 0.6, 0.9],
        [0.0, 0.3, 0.3, 0.4, 0.8],  # hardest
    ]
)
COSTS = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
NAMES = ["m1", "m2", "m4", "m8", "m16"]
DIM = 6
VAL_PER_CLUSTER = 10


def _centers():
    rng = np.random.default_rng(123)
    return 20.0 * rng.normal(size=(4, DIM))


def _matrix(seed=0):
    """Training / validation / test prompts around 4 far-apart centres.

    The validation correctness of model h in cluster k has exactly
    `10 * ACCURACY[k, h]` ones out of 10, so `Psi` is known exactly. Test
    correctness is drawn with the same accuracies.
    """
    rng = np.random.default_rng(seed)
    centers = _centers()
    c_train = rng.integers(0, 4, size=160)
    c_val = np.repeat(np.arange(4), VAL_PER_CLUSTER)
    c_test = rng.integers(0, 4, size=120)

    def embed(c):
        return (centers[c] + rng.normal(size=(len(c), DIM))).astype("float32")

    val_correct = np.zeros((len(c_val), 5), "float32")
    for k in range(4):
        rows = np.where(c_val == k)[0]
        for h in range(5):
            hits = int(round(VAL_PER_CLUSTER * ACCURACY[k, h]))
            val_correct[rng.permutation(rows)[:hits], h] = 1.0

    def draw(c):
        return (rng.random((len(c), 5)) < ACCURACY[c]).astype("float32")

    return {
        "train": embed(c_train),
        "train_correct": draw(c_train),
        "c_train": c_train,
        "val": embed(c_val),
        "val_correct": val_correct,
        "test": embed(c_test),
        "test_correct": draw(c_test),
        "c_test": c_test,
    }


def _fit(router, data, models=slice(None)):
    """`router.fit_pool` with what this kind of router takes."""
    args = {
        "validation_embeddings": data["val"],
        "validation_correctness": data["val_correct"][:, models],
        "costs": COSTS[models],
        "model_names": NAMES[models],
    }
    if isinstance(router, (ClusterRouter, LearnedMapRouter)):
        args["train_embeddings"] = data["train"]
    if isinstance(router, LearnedMapRouter):
        args["train_correctness"] = data["train_correct"][:, models]
    return router.fit_pool(**args)


def _optimal(clusters, cost_weight):
    """The Bayes-optimal rule with the true cluster accuracies (NumPy)."""
    score = (1.0 - ACCURACY[clusters]) + cost_weight * COSTS[None, :]
    return np.argmin(score, axis=1)


ROUTERS = {
    "cluster": lambda: ClusterRouter(num_clusters=4, seed=0),
    "knn": lambda: KNNRouter(num_neighbors=VAL_PER_CLUSTER),
    "learned_map": lambda: LearnedMapRouter(num_clusters=4, epochs=3),
    "zero": lambda: ZeroRouter(),
}


@pytest.fixture(scope="module")
def data():
    return _matrix()


@functools.cache
def _fitted(kind):
    """A router of every kind fitted on the full pool (never mutated)."""
    return _fit(ROUTERS[kind](), _matrix())


@functools.cache
def _grown(kind):
    """Fitted on 4 models, then `m16` added: `(router, routes before,
    weights before)` (the weights of the learned map's assignment)."""
    data = _matrix()
    router = _fit(ROUTERS[kind](), data, models=slice(0, 4))
    before = router.route(data["test"], 0.0)
    weights = [w.copy() for w in router.get_weights()]
    router.add_model("m16", data["val_correct"][:, 4], cost=16.0)
    return router, before, weights


@pytest.mark.parametrize("cost_weight", [0.0, 0.004, 0.03, 0.2])
def test_cluster_router_recovers_optimal_rule(data, cost_weight):
    router = _fitted("cluster")
    # Psi equals the known per-cluster errors, up to the cluster order.
    order = router._assign(_centers())
    np.testing.assert_allclose(router.psi[order], 1.0 - ACCURACY, atol=1e-12)
    np.testing.assert_array_equal(
        router.route(data["test"], cost_weight),
        _optimal(data["c_test"], cost_weight),
    )


def test_knn_router_recovers_optimal_rule(data):
    # k = one cluster's validation prompts: the neighbours are exactly the
    # prompt's cluster, whose mean error is known.
    router = _fitted("knn")
    for lam in [0.0, 0.004, 0.03]:
        np.testing.assert_array_equal(
            router.route(data["test"], lam), _optimal(data["c_test"], lam)
        )


@pytest.mark.parametrize("kind", ["cluster", "knn", "zero"])
def test_add_model_equals_refit(data, kind):
    refit = _fitted(kind)
    grown, before, _ = _grown(kind)
    assert grown.model_names == NAMES
    np.testing.assert_allclose(
        grown.predict_errors(data["test"]),
        refit.predict_errors(data["test"]),
        atol=1e-6,
    )
    after = grown.route(data["test"], 0.0)
    np.testing.assert_array_equal(after, refit.route(data["test"], 0.0))
    if kind != "zero":  # the zero router sends all to one model anyway
        assert np.any(after != before)
    # remove_model undoes add_model: equal to fitting without the model.
    shrunk = _fit(ROUTERS[kind](), data).remove_model("m16")
    assert shrunk.model_names == NAMES[:4]
    np.testing.assert_array_equal(shrunk.route(data["test"], 0.0), before)
    with pytest.raises(ValueError, match="name"):
        shrunk.remove_model("m16")


def test_learned_map_add_model_needs_no_training(data):
    router, before, weights = _grown("learned_map")
    for w, v in zip(weights, router.get_weights()):
        np.testing.assert_array_equal(w, v)
    # The new column is the soft per-cluster error, computed in NumPy.
    kernel, bias = weights
    logits = data["val"] @ kernel + bias
    phi = np.exp(logits - logits.max(1, keepdims=True))
    phi /= phi.sum(1, keepdims=True)
    err = 1.0 - data["val_correct"][:, 4]
    expected = phi.T @ err / (phi.sum(0) + 1e-6)
    np.testing.assert_allclose(router.psi[:, 4], expected, atol=1e-5)
    assert np.any(router.route(data["test"], 0.0) != before)


def test_learned_map_training_improves_log_loss():
    # One blob, wide along x1 and narrow along x0; model 0 is right exactly
    # when x0 > 0. k-means (K = 2) splits along x1, which says nothing
    # about model 0: training the map must turn it towards x0.
    rng = np.random.default_rng(0)

    def sample(n):
        x = rng.normal(size=(n, 2)) * np.array([1.0, 4.0])
        y = np.stack([x[:, 0] > 0, np.ones(n, bool)], 1).astype("float32")
        return x.astype("float32"), y

    train, y_train = sample(512)
    val, y_val = sample(256)
    test, y_test = sample(256)

    def log_loss(router):
        p = np.clip(1.0 - router.predict_errors(test)[:, 0], 1e-6, 1 - 1e-6)
        y = y_test[:, 0]
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    args = dict(
        train_embeddings=train,
        train_correctness=y_train,
        validation_embeddings=val,
        validation_correctness=y_val,
        costs=[1.0, 2.0],
    )
    untrained = LearnedMapRouter(num_clusters=2, epochs=0).fit_pool(**args)
    trained = LearnedMapRouter(
        num_clusters=2, epochs=20, learning_rate=0.05
    ).fit_pool(**args)
    assert log_loss(trained) < 0.8 * log_loss(untrained)


@pytest.mark.parametrize("kind", ["cluster", "knn", "learned_map", "zero"])
def test_lambda_extremes(data, kind):
    router = _fitted(kind)
    errors = router.predict_errors(data["test"])
    # lambda = 0: the lowest estimated error (ties to the cheaper model).
    chosen = router.route(data["test"], 0.0)
    np.testing.assert_allclose(
        errors[np.arange(len(chosen)), chosen], errors.min(1), atol=1e-9
    )
    # lambda large: the cheapest model everywhere.
    np.testing.assert_array_equal(router.route(data["test"], 1e6), 0)


def test_lambda_zero_is_most_accurate_per_cluster(data):
    router = _fitted("cluster")
    chosen = router.route(data["test"], 0.0)
    best = ACCURACY[data["c_test"]].max(1)
    np.testing.assert_array_equal(
        ACCURACY[data["c_test"], chosen], best
    )  # the most accurate (the cheapest of them on ties)
    cheapest_best = np.array(
        [np.where(ACCURACY[k] == ACCURACY[k].max())[0][0] for k in range(4)]
    )
    np.testing.assert_array_equal(chosen, cheapest_best[data["c_test"]])


def test_oracle_curve_dominates_every_router(data):
    oracle = OracleRouter().fit_pool(costs=COSTS, model_names=NAMES)
    curve = oracle.deferral_curve(None, data["test_correct"])
    # Oracle = the cheapest correct model (or the cheapest if none).
    chosen = oracle.route(data["test_correct"], 1e-3)
    correct = data["test_correct"]
    expected = np.where(
        correct.any(1), np.argmax(correct > 0, axis=1), 0
    )  # COSTS increase with the index
    np.testing.assert_array_equal(chosen, expected)
    lo, hi = COSTS.min(), COSTS.max()
    oracle_area = metrics.deferral_area(
        curve["costs"], curve["qualities"], (lo, hi)
    )
    for kind in ROUTERS:
        router = _fitted(kind)
        rc = router.deferral_curve(data["test"], data["test_correct"])
        for c, q in zip(rc["costs"], rc["qualities"]):
            assert (
                metrics.routing.curve_value(
                    curve["costs"], curve["qualities"], c
                )
                >= q - 1e-9
            )
        area = metrics.deferral_area(rc["costs"], rc["qualities"], (lo, hi))
        assert oracle_area > area
    # The cluster router beats the prompt-independent zero router here.
    areas = {}
    for kind in ["cluster", "zero"]:
        rc = _fitted(kind).deferral_curve(data["test"], data["test_correct"])
        areas[kind] = metrics.deferral_area(
            rc["costs"], rc["qualities"], (lo, hi)
        )
    assert areas["cluster"] > areas["zero"]


def test_zero_router_area_is_the_hull(data):
    # Evaluated on its own validation data, the zero router's curve is
    # the convex hull of the single models: its area equals their AIQ.
    router = _fitted("zero")
    rc = router.deferral_curve(data["val"], data["val_correct"])
    accuracy = data["val_correct"].mean(0)
    area = metrics.deferral_area(rc["costs"], rc["qualities"])
    np.testing.assert_allclose(area, metrics.aiq(COSTS, accuracy), atol=1e-9)


def test_single_model_curve_is_a_point(data):
    router = _fit(ClusterRouter(num_clusters=4), data, models=slice(2, 3))
    rc = router.deferral_curve(
        data["test"], data["test_correct"][:, 2:3], cost_weights=[0, 1, 1e3]
    )
    np.testing.assert_array_equal(rc["costs"], [4.0, 4.0, 4.0])
    acc = data["test_correct"][:, 2].mean()
    np.testing.assert_allclose(rc["qualities"], acc)
    assert metrics.deferral_area(rc["costs"], rc["qualities"]) == (
        pytest.approx(acc)
    )


@pytest.mark.parametrize("kind", ["cluster", "knn", "learned_map", "zero"])
def test_save_load_after_add_model(data, kind, tmp_path):
    router = _grown(kind)[0]
    path = str(tmp_path / f"{kind}.keras")
    router.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(router)
    assert loaded.model_names == NAMES
    np.testing.assert_allclose(loaded.costs, COSTS)
    # Bit for bit: the stored errors, features and routes.
    np.testing.assert_array_equal(
        loaded.predict_errors(data["test"]),
        router.predict_errors(data["test"]),
    )
    np.testing.assert_array_equal(
        loaded.validation_errors, router.validation_errors
    )
    np.testing.assert_array_equal(loaded.model_features, router.model_features)
    # The loaded router still grows.
    loaded.add_model("copy", data["val_correct"][:, 0], cost=0.5)
    assert loaded.route(data["test"], 1e6).tolist() == [5] * 120


def test_oracle_save_load_after_add_model(data, tmp_path):
    router = OracleRouter().fit_pool(costs=COSTS, model_names=NAMES)
    router.add_model("free", cost=0.0)
    path = str(tmp_path / "oracle.keras")
    router.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.model_names == NAMES + ["free"]
    assert loaded.validation_errors.shape == (0, 6)
    both = np.concatenate([data["test_correct"], np.zeros((120, 1))], 1)
    np.testing.assert_array_equal(
        loaded.route(both, 1e-3), router.route(both, 1e-3)
    )
    loaded.add_model("another", cost=1.0)
    assert len(loaded.model_names) == 7


@pytest.mark.parametrize("kind", ["cluster", "learned_map"])
def test_compiled_predict_and_mixed_precision(data, kind):
    router = _fitted(kind)
    expected = router.predict_errors(data["test"])
    compiled = router.predict(data["test"], batch_size=32, verbose=0)
    np.testing.assert_allclose(compiled, expected, atol=1e-5)
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = _fit(ROUTERS[kind](), data)
    np.testing.assert_allclose(
        mixed.predict_errors(data["test"]), expected, atol=1e-5
    )


def test_bad_input(data):
    router = _fitted("cluster")
    with pytest.raises(ValueError, match="validation_correctness"):
        router.add_model("x", np.ones(7), cost=1.0)
    with pytest.raises(ValueError, match=r"validation_correctness.*\[0, 1\]"):
        router.add_model("x", np.full(40, 2.0), cost=1.0)
    with pytest.raises(ValueError, match="cost"):
        router.add_model("x", np.ones(40), cost=-1.0)
    with pytest.raises(ValueError, match="name"):
        router.add_model("m1", np.ones(40), cost=1.0)
    with pytest.raises(ValueError, match="cost_weight"):
        router.route(data["test"], cost_weight=-0.1)
    with pytest.raises(ValueError, match=r"embeddings.*width 6"):
        router.route(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="costs"):
        ClusterRouter(num_clusters=4).fit_pool(
            train_embeddings=data["train"],
            validation_embeddings=data["val"],
            validation_correctness=data["val_correct"][:, :0],
            costs=[],
        )
    with pytest.raises(ValueError, match="costs"):
        _fit(KNNRouter(), data, models=slice(0, 5)).fit_pool(
            validation_embeddings=data["val"],
            validation_correctness=data["val_correct"],
            costs=-COSTS,
        )
    with pytest.raises(ValueError, match="validation_correctness"):
        ZeroRouter().fit_pool(
            validation_embeddings=data["val"],
            validation_correctness=data["val_correct"][:5],
            costs=COSTS,
        )
    with pytest.raises(ValueError, match="empty pool"):
        KNNRouter().route(data["test"])
    with pytest.raises(ValueError, match="num_clusters"):
        ClusterRouter(num_clusters=0)
    with pytest.raises(ValueError, match="metric"):
        KNNRouter(metric="manhattan")


# === fit_pool, the stored validation errors, golden values ===


def _nearest(x, reference, metric):
    """NumPy: the index of the nearest `reference` row (squared distance or
    cosine similarity), and the distances / negated similarities."""
    x, reference = np.asarray(x, "float64"), np.asarray(reference, "float64")
    if metric == "cosine":
        unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        far = -(x @ unit.T)
    else:
        far = ((x[:, None, :] - reference[None, :, :]) ** 2).sum(-1)
    return np.argmin(far, axis=1), far


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _numpy_errors(kind, router, data, x):
    """`gamma(x, h)` recomputed in NumPy, from the router's learned prompt
    side (centroids, the map's weights) and the validation correctness."""
    errors = 1.0 - data["val_correct"].astype("float64")
    metric = getattr(router, "metric", "euclidean")
    if kind.startswith("cluster"):
        kv = _nearest(data["val"], router.centroids, metric)[0]
        psi = np.stack(
            [
                errors[kv == k].mean(0) if np.any(kv == k) else errors.mean(0)
                for k in range(router.num_clusters)
            ]
        )
        return psi[_nearest(x, router.centroids, metric)[0]], psi
    if kind.startswith("knn"):
        far = _nearest(x, data["val"], metric)[1]
        index = np.argsort(far, axis=1, kind="stable")[:, :VAL_PER_CLUSTER]
        return errors[index].mean(1), errors
    if kind.startswith("learned_map"):
        kernel, bias = router.get_weights()

        def phi(z):
            z = np.asarray(z, "float64")
            if metric == "cosine":
                z = z / np.linalg.norm(z, axis=1, keepdims=True)
            return _softmax(z @ kernel + bias)

        phi_val = phi(data["val"])
        psi = phi_val.T @ errors / (phi_val.sum(0)[:, None] + 1e-6)
        return phi(x) @ psi, psi
    mean = errors.mean(0, keepdims=True)  # zero
    return np.repeat(mean, len(x), axis=0), mean


GOLDEN = {
    **ROUTERS,
    "cluster_cosine": lambda: ClusterRouter(num_clusters=4, metric="cosine"),
    "knn_cosine": lambda: KNNRouter(
        num_neighbors=VAL_PER_CLUSTER, metric="cosine"
    ),
    "learned_map_cosine": lambda: LearnedMapRouter(
        num_clusters=4, epochs=3, metric="cosine"
    ),
}


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_predict_errors_match_numpy(data, kind):
    router = _fitted(kind) if kind in ROUTERS else _fit(GOLDEN[kind](), data)
    expected, features = _numpy_errors(kind, router, data, data["test"])
    np.testing.assert_allclose(
        router.predict_errors(data["test"]), expected, atol=1e-5
    )
    # The base stores the validation errors once; the router's column-wise
    # function turns them into its model features.
    np.testing.assert_array_equal(
        router.validation_errors, 1.0 - data["val_correct"]
    )
    np.testing.assert_allclose(router.model_features, features, atol=1e-5)


def test_oracle_predict_errors_are_the_true_errors(data):
    router = OracleRouter().fit_pool(costs=COSTS, model_names=NAMES)
    np.testing.assert_array_equal(
        router.predict_errors(data["test_correct"]),
        1.0 - data["test_correct"],
    )
    assert router.validation_errors.shape == (0, 5)
    router.add_model("free", cost=0.0)
    both = np.concatenate([data["test_correct"], np.ones((120, 1))], 1)
    np.testing.assert_array_equal(router.route(both, 1.0), [5] * 120)
    assert router.remove_model("free").model_names == NAMES


@pytest.mark.parametrize("kind", ["cluster", "knn", "learned_map", "zero"])
def test_validation_errors_follow_add_and_remove(data, kind):
    grown = _grown(kind)[0]
    np.testing.assert_array_equal(
        grown.validation_errors, 1.0 - data["val_correct"]
    )
    shrunk = _fit(ROUTERS[kind](), data).remove_model("m4")
    kept = [0, 1, 3, 4]
    np.testing.assert_array_equal(
        shrunk.validation_errors, 1.0 - data["val_correct"][:, kept]
    )
    np.testing.assert_array_equal(
        shrunk.model_features, _fitted(kind).model_features[:, kept]
    )


@pytest.mark.parametrize("kind", ["cluster", "knn", "learned_map", "zero"])
def test_old_fit_call_form_warns_and_equals_fit_pool(data, kind):
    # Issue 30.9: `fit` is Keras's again; the old positional pool-fitting
    # form still works for one release and names its replacement.
    with pytest.warns(DeprecationWarning, match="fit_pool"):
        old = ROUTERS[kind]().fit(
            data["train"],
            data["train_correct"],
            data["val"],
            data["val_correct"],
            COSTS,
            NAMES,
        )
    assert old.model_names == NAMES
    np.testing.assert_allclose(
        old.predict_errors(data["test"]),
        _fitted(kind).predict_errors(data["test"]),
        atol=1e-6,
    )


def test_old_fit_keyword_form_warns():
    with pytest.warns(DeprecationWarning, match=r"OracleRouter\.fit_pool"):
        oracle = OracleRouter().fit(costs=COSTS, model_names=NAMES)
    assert oracle.model_names == NAMES
    with pytest.warns(DeprecationWarning, match="fit_pool"):
        zero = ZeroRouter().fit(
            None,
            validation_embeddings=np.zeros((2, 3)),
            validation_correctness=[[1, 0], [0, 0]],
            costs=[1.0, 2.0],
        )
    np.testing.assert_array_equal(zero.mean_errors, [0.5, 1.0])
    assert zero.embedding_dim == 3
    # Unused old arguments are dropped; unknown ones are still refused.
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError):
        ZeroRouter().fit(
            costs=[1.0],
            validation_correctness=[[1.0]],
            validation_embedings=[[0.0]],  # sic
        )


def test_keras_fit_keeps_its_meaning(data):
    router = _fit(LearnedMapRouter(num_clusters=4, epochs=0), data)
    # A small map (the k-means start saturates the softmax: zero gradient).
    kernel = np.random.default_rng(0).normal(size=(DIM, 4)) * 1e-2
    router.assignment.set_weights([kernel, np.zeros(4)])
    router.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    target = 1.0 - data["train_correct"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = router.fit(data["train"], target, epochs=2, verbose=0)
        router.fit(data["train"], target, 32, 1, 0)  # positional Keras
    assert not [w for w in caught if "fit_pool" in str(w.message)]
    assert isinstance(history, keras.callbacks.History)
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(router.assignment.kernel.numpy(), kernel)


def _legacy_store(kind, router):
    """What keras_gr saved for `router` before issue 30: each router's own
    arrays (its old `_state`), without the base's validation errors."""
    if kind == "cluster":
        keys = ["centroids", "psi", "validation_clusters"]
    elif kind == "learned_map":
        keys = ["psi", "validation_embeddings"]
    elif kind == "knn":
        keys = ["validation_embeddings", "validation_errors"]
    else:
        keys = ["mean_errors", "num_validation"]
    return {key: np.asarray(getattr(router, key)) for key in keys}


@pytest.mark.parametrize("kind", ["cluster", "knn", "learned_map", "zero"])
def test_router_files_saved_before_issue_30_still_load(data, kind):
    router = _fit(ROUTERS[kind](), data, models=slice(0, 4))
    loaded = type(router).from_config(router.get_config())
    loaded.set_weights(router.get_weights())  # the learned map's Phi
    loaded.load_own_variables(_legacy_store(kind, router))
    # Routes bit for bit, then grows and shrinks as the saved router does.
    np.testing.assert_array_equal(
        loaded.predict_errors(data["test"]), router.predict_errors(data["test"])
    )
    for each in (router, loaded):
        each.add_model("m16", data["val_correct"][:, 4], cost=16.0)
        each.remove_model("m1")
    np.testing.assert_array_equal(
        loaded.predict_errors(data["test"]), router.predict_errors(data["test"])
    )
    # The old files did not keep the per-prompt errors but K-NN's: NaN.
    known = np.isfinite(loaded.validation_errors)
    assert np.all(known) if kind == "knn" else not np.any(known[:, :-1])
    np.testing.assert_array_equal(
        loaded.validation_errors[:, -1], 1.0 - data["val_correct"][:, 4]
    )


def test_oracle_file_saved_before_issue_30_still_loads(data):
    # The old oracle saved no arrays: its pool is all in its config.
    old = {"name": "oracle", "model_names": NAMES, "costs": list(COSTS)}
    loaded = OracleRouter.from_config({**old, "embedding_dim": 5})
    loaded.load_own_variables({})
    loaded.add_model("free", cost=0.0)
    both = np.concatenate([data["test_correct"], np.ones((120, 1))], 1)
    np.testing.assert_array_equal(loaded.route(both, 1.0), [5] * 120)


def test_loading_a_file_without_the_router_state_is_refused():
    router = ClusterRouter(num_clusters=4)
    with pytest.raises(ValueError, match=r"validation errors.*fit_pool"):
        router.load_own_variables({"psi": np.zeros((4, 5))})
    with pytest.raises(ValueError, match=r"centroids.*Received.*model_feat"):
        router.load_own_variables(
            {"model_features": np.zeros((4, 5)), "validation_errors": []}
        )


# === Routed generator ===


class _Tagged:
    """A stand-in LM whose output names it and records its batches."""

    def __init__(self, tag):
        self.tag = tag
        self.batches = []

    def generate(self, prompts, max_length=None):
        self.batches.append(list(prompts))
        return [f"{self.tag}|{p}|{max_length}" for p in prompts]


def _clustered_prompts(data):
    """Prompts `p<i>` whose embeddings are the test embeddings."""
    prompts = [f"p{i}" for i in range(len(data["test"]))]
    table = dict(zip(prompts, data["test"]))

    def embed(texts):
        return np.stack([table[t] for t in texts])

    return prompts, embed


def test_routed_generator_order_and_cost(data):
    router = _fitted("cluster")
    prompts, embed = _clustered_prompts(data)
    lms = {name: _Tagged(name) for name in NAMES}
    served = RoutedGenerator(lms, router, FunctionEmbedder(embed, DIM))
    result = served.generate(prompts, cost_weight=0.004, max_length=9)
    chosen = router.route(data["test"], 0.004)
    assert len(set(chosen.tolist())) > 1  # several models really serve
    expected = [f"{NAMES[c]}|{p}|9" for c, p in zip(chosen, prompts)]
    assert result["outputs"] == expected
    assert result["models"] == [NAMES[c] for c in chosen]
    assert result["cost"] == pytest.approx(COSTS[chosen].sum())
    # One generate call per chosen model, on its prompts in input order,
    # padded to a power of two with copies of the last one.
    for index, name in enumerate(NAMES):
        mine = [p for p, c in zip(prompts, chosen) if c == index]
        if not mine:
            assert lms[name].batches == []
            continue
        size = 1 << (len(mine) - 1).bit_length()
        padded = mine + [mine[-1]] * (size - len(mine))
        assert lms[name].batches == [padded]
    with pytest.raises(ValueError, match="models"):
        RoutedGenerator({"m1": lms["m1"]}, router, embed)
    with pytest.raises(ValueError, match="cost_weight"):
        served.generate(prompts, cost_weight=-1.0)


def test_routed_generator_with_keras_hub_models(tiny_preset):
    import keras_hub

    small = keras_hub.models.CausalLM.from_preset(tiny_preset)
    large = keras_hub.models.CausalLM.from_preset(tiny_preset)
    # Make the two models differ: perturb the large one's embeddings.
    emb = large.backbone.token_embedding.embeddings
    noise = np.random.default_rng(0).normal(size=emb.shape) * 0.5
    emb.assign(keras.ops.convert_to_numpy(emb) + noise.astype("float32"))
    for lm in (small, large):
        lm.compile(sampler="greedy")
    prompts = ["the for", "a", "the while", "an"]
    # The embedding is the prompt's first-word length: "the" -> large.
    embedder = FunctionEmbedder(
        lambda t: np.array([[len(s.split()[0])] for s in t], "float32"), 1
    )
    router = KNNRouter(num_neighbors=1).fit_pool(
        validation_embeddings=[[1.0], [2.0], [3.0]],
        validation_correctness=[[1, 1], [1, 1], [0, 1]],
        costs=[1.0, 2.0],
        model_names=["small", "large"],
    )
    served = RoutedGenerator({"small": small, "large": large}, router, embedder)
    result = served.generate(prompts, max_length=12)
    assert result["models"] == ["large", "small", "large", "small"]
    direct_large = large.generate(["the for", "the while"], max_length=12)
    direct_small = small.generate(["a", "an"], max_length=12)
    assert result["outputs"] == [
        direct_large[0],
        direct_small[0],
        direct_large[1],
        direct_small[1],
    ]
    assert result["cost"] == 6.0


def test_routed_generator_names_a_model_added_later(data):
    # Issue 26 item 19: a model added to the router after construction and
    # missing from `models` gave a bare KeyError.
    router = _fitted("cluster")
    grown = _fit(ClusterRouter(num_clusters=4), data, models=slice(0, 4))
    prompts, embed = _clustered_prompts(data)
    lms = {name: _Tagged(name) for name in NAMES[:4]}
    served = RoutedGenerator(lms, grown, FunctionEmbedder(embed, DIM))
    grown.add_model("m16", data["val_correct"][:, 4], cost=COSTS[4])
    assert router.model_names == grown.model_names
    with pytest.raises(ValueError, match=r"models.*'m16'"):
        served.generate(prompts, cost_weight=0.0)
    lms["m16"] = _Tagged("m16")
    result = served.generate(prompts, cost_weight=0.0)
    assert "m16" in result["models"]


def test_oracle_router_rejects_correctness_outside_unit_interval():
    # Issue 26 item 20.
    router = OracleRouter().fit_pool(costs=[1.0, 5.0])
    for bad in ([[1.0, 2.0]], [[-0.5, 1.0]], [[np.nan, 1.0]]):
        with pytest.raises(ValueError, match=r"correctness.*\[0, 1\]|finite"):
            router.route(np.array(bad, "float32"))
    with pytest.raises(ValueError, match=r"correctness.*\[0, 1\]"):
        router.deferral_curve(None, [[1.0, 3.0]])
    np.testing.assert_array_equal(router.route([[0.0, 1.0]], 0.0), [1])


def test_routed_generator_buckets_sub_batch_sizes(data):
    # Issue 26 item 21: every new sub-batch size compiled a new generate
    # program; sizes are now padded to powers of two.
    router = _fitted("cluster")
    prompts, embed = _clustered_prompts(data)
    lms = {name: _Tagged(name) for name in NAMES}
    served = RoutedGenerator(lms, router, FunctionEmbedder(embed, DIM))
    rng = np.random.default_rng(0)
    routes = router.route(data["test"], 0.004)
    for _ in range(8):  # batches of 16 (one router shape), new splits
        rows = rng.choice(len(prompts), size=16, replace=False)
        batch = [prompts[i] for i in rows]
        result = served.generate(batch, cost_weight=0.004, max_length=3)
        chosen = routes[rows]
        assert result["outputs"] == [
            f"{NAMES[c]}|{p}|3" for c, p in zip(chosen, batch)
        ]
        assert result["cost"] == pytest.approx(COSTS[chosen].sum())
    assert len({len(b) for lm in lms.values() for b in lm.batches}) > 1
    for lm in lms.values():
        sizes = {len(b) for b in lm.batches}
        # Batches of at most 16 prompts: sizes 1, 2, 4, 8, 16 only.
        assert sizes <= {1, 2, 4, 8, 16}, sizes
    # Custom buckets; a sub-batch larger than the largest one is chunked.
    lms = {name: _Tagged(name) for name in NAMES}
    served = RoutedGenerator(
        lms, router, FunctionEmbedder(embed, DIM), bucket_sizes=[3]
    )
    result = served.generate(prompts[:16], cost_weight=1e9)
    assert result["models"] == ["m1"] * 16
    assert result["outputs"] == [f"m1|{p}|None" for p in prompts[:16]]
    assert lms["m1"].batches[-1] == [prompts[15]] * 3
    assert [len(b) for b in lms["m1"].batches] == [3] * 6
    # No bucketing: one call per model on exactly its prompts.
    lms = {name: _Tagged(name) for name in NAMES}
    served = RoutedGenerator(
        lms, router, FunctionEmbedder(embed, DIM), bucket_sizes=None
    )
    served.generate(prompts[:16], cost_weight=1e9)
    assert lms["m1"].batches == [prompts[:16]]
    for bad in ([0, 2], [4, 2], "powers", [2.5]):
        with pytest.raises(ValueError, match="bucket_sizes"):
            RoutedGenerator(
                lms, router, FunctionEmbedder(embed, DIM), bucket_sizes=bad
            )
