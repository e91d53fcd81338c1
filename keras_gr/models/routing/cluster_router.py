"""ClusterRouter: UniRoute's cluster-based routing among unseen LLMs."""

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr.curation import KMeans
from keras_gr.models.routing.base_router import METRICS
from keras_gr.models.routing.base_router import Router
from keras_gr.models.routing.base_router import similarity


def cluster_errors(clusters, errors, num_clusters):
    """`Psi[k, h]`: mean of `errors[:, h]` over the rows in cluster `k`.

    A cluster with no row gets the mean over all rows (the model's overall
    validation error). `clusters` is `(n,)` int, `errors` `(n, m)`.
    """
    errors = np.asarray(errors, dtype="float64")
    one_hot = np.eye(num_clusters)[np.asarray(clusters)]
    counts = one_hot.sum(axis=0)
    sums = one_hot.T @ errors
    overall = errors.mean(axis=0, keepdims=True)
    safe = np.maximum(counts, 1.0)[:, None]
    return np.where(counts[:, None] > 0, sums / safe, overall)


def nearest_centroid(embeddings, centroids, metric):
    """`(n,)` index of the nearest centroid, in `keras.ops` (cosine:
    largest cosine similarity to the unit-norm centroids of spherical
    k-means; euclidean: smallest squared distance)."""
    closeness = similarity(embeddings, centroids, metric, unit_reference=True)
    return ops.argmax(closeness, axis=1)


@keras.saving.register_keras_serializable(package="keras_gr")
class ClusterRouter(Router):
    """Cluster-based routing that admits LLMs unseen at training time.

    UniRoute's cluster router ("Universal Model Routing for Efficient LLM
    Inference", Jitkrittum, Narasimhan, Rawat, Juneja, Wang, Lukasik,
    Menon, Kumar; arXiv 2502.08773). k-means (`keras_gr.curation.KMeans`)
    on the *training* prompt embeddings gives `K` centroids; every LLM `h`
    is represented by its per-cluster error on a small labelled validation
    set `S_val`,

    ```
    Psi_k(h) = mean_{(x, y) in S_val, k(x) = k} 1[h(x) != y]
    ```

    (a cluster with no validation prompt gets `h`'s overall validation
    error), and a prompt `x` goes to its nearest centroid `k(x)` and then
    to

    ```
    r(x) = argmin_h Psi_{k(x)}(h) + lambda * cost(h).
    ```

    A new LLM only needs its answers on `S_val`: `add_model` computes its
    `Psi` column, with no training step (and gives exactly what refitting
    with the model in the pool gives, since the clusters do not depend on
    the LLMs): `model_features_of` is the column-wise `Psi`, and `psi` the
    pool's `(K, num_models)` matrix. `call(embeddings)` returns
    `Psi_{k(x)}(h)` for every pool model, `(batch, num_models)`. The
    training LLMs' correctness is not used (the clusters come from the
    training prompts alone).

    Args:
        num_clusters: `K`. Defaults to `8`.
        metric: k-means geometry, `"euclidean"` or `"cosine"` (spherical
            k-means on unit-norm embeddings). Defaults to `"euclidean"`.
        max_iter: Lloyd iterations. Defaults to `100`.
        num_init: k-means restarts (lowest inertia wins). Defaults to `3`.
        seed: k-means seed. Defaults to `0`.
        **kwargs: `Router` arguments (`name`; `model_names`, `costs`,
            `embedding_dim` are restored from a saved config).

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centers = np.array([[0.0, 0.0], [10.0, 10.0]])
    >>> train = centers[rng.integers(0, 2, 100)] + rng.normal(size=(100, 2))
    >>> val_cluster = np.repeat([0, 1], 10)
    >>> val = centers[val_cluster] + rng.normal(size=(20, 2))
    >>> # "small" is right on cluster 0 only, "large" on both.
    >>> correct = np.stack([val_cluster == 0, np.ones(20)], 1).astype(float)
    >>> router = ClusterRouter(num_clusters=2).fit_pool(
    ...     train_embeddings=train, validation_embeddings=val,
    ...     validation_correctness=correct, costs=[1.0, 10.0],
    ...     model_names=["small", "large"])
    >>> router.psi.shape  # Psi[k, h]: the error of model h on cluster k
    (2, 2)
    >>> router.predict_errors(centers).round(2).tolist()  # Psi_{k(x)}(h)
    [[0.0, 0.0], [1.0, 0.0]]
    >>> router.route(centers, cost_weight=0.01).tolist()
    [0, 1]
    >>> router.route(centers, cost_weight=0.0).tolist()
    [0, 1]
    >>> router.route(centers, cost_weight=1.0).tolist()
    [0, 0]
    """

    _PROMPT_STATE = {"centroids": "float32", "validation_clusters": "int64"}

    def __init__(
        self,
        num_clusters: int = 8,
        metric: str = "euclidean",
        max_iter: int = 100,
        num_init: int = 3,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_clusters = check_integer("num_clusters", num_clusters)
        self.metric = check_choice("metric", metric, METRICS)
        self.max_iter = check_integer("max_iter", max_iter)
        self.num_init = check_integer("num_init", num_init)
        self.seed = check_integer("seed", seed, minimum=0)

    def fit_pool(
        self,
        *,
        train_embeddings,
        validation_embeddings,
        validation_correctness,
        costs,
        model_names=None,
    ) -> "ClusterRouter":
        """Clusters the training prompts and builds every model's `Psi`.

        Args:
            train_embeddings: `(n_train, d)` training prompt embeddings
                (clustered by k-means).
            validation_embeddings: `(n_val, d)` embeddings of `S_val`.
            validation_correctness: `(n_val, m)` correctness in [0, 1] of
                the pool's `m` models on `S_val`.
            costs: `(m,)` cost per query of each model (>= 0).
            model_names: `m` unique names. Defaults to `model_0`, ...

        Returns:
            The router.
        """
        costs, names, errors, val = self._check_validation(
            costs, model_names, validation_correctness, validation_embeddings
        )
        train, _ = self._check_train(train_embeddings, val.shape[1])
        kmeans = KMeans(
            self.num_clusters,
            metric=self.metric,
            max_iter=self.max_iter,
            num_init=self.num_init,
            seed=self.seed,
        ).fit(train)
        self.centroids = np.asarray(kmeans.centroids, "float32")
        self.validation_clusters = self._assign(val)
        self._set_pool(costs, names, errors, int(val.shape[1]))
        return self

    def model_features_of(self, errors):
        """`Psi`: the per-cluster mean of each column of `errors`."""
        return cluster_errors(
            self.validation_clusters, errors, self.num_clusters
        )

    @property
    def psi(self):
        """`Psi[k, h]`, `(num_clusters, num_models)`: `model_features`."""
        return self.model_features

    def _assign(self, embeddings):
        return np.asarray(
            ops.convert_to_numpy(
                nearest_centroid(embeddings, self.centroids, self.metric)
            ),
            dtype="int64",
        )

    def call(self, embeddings):
        clusters = nearest_centroid(embeddings, self.centroids, self.metric)
        psi = ops.convert_to_tensor(self.model_features, "float32")
        return ops.take(psi, clusters, 0)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_clusters": self.num_clusters,
                "metric": self.metric,
                "max_iter": self.max_iter,
                "num_init": self.num_init,
                "seed": self.seed,
            }
        )
        return config
