"""ClusterRouter: UniRoute's cluster-based routing among unseen LLMs."""

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr.curation import KMeans
from keras_gr.models.routing.base_router import Router


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
    largest cosine similarity; euclidean: smallest squared distance)."""
    x = ops.convert_to_tensor(embeddings, "float32")
    c = ops.convert_to_tensor(centroids, "float32")
    if metric == "cosine":
        x = x / ops.maximum(ops.norm(x, axis=1, keepdims=True), 1e-12)
        return ops.argmax(ops.matmul(x, ops.transpose(c)), axis=1)
    cross = ops.matmul(x, ops.transpose(c))
    dist = ops.sum(ops.square(c), axis=1)[None, :] - 2.0 * cross
    return ops.argmin(dist, axis=1)


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
    the LLMs). `call(embeddings)` returns `Psi_{k(x)}(h)` for every pool
    model, `(batch, num_models)`.

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
    >>> router = ClusterRouter(num_clusters=2).fit(
    ...     train, validation_embeddings=val,
    ...     validation_correctness=correct, costs=[1.0, 10.0],
    ...     model_names=["small", "large"])
    >>> router.route(centers, cost_weight=0.01).tolist()
    [0, 1]
    >>> router.route(centers, cost_weight=0.0).tolist()
    [0, 1]
    >>> router.route(centers, cost_weight=1.0).tolist()
    [0, 0]
    """

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
        self.metric = check_choice("metric", metric, ("euclidean", "cosine"))
        self.max_iter = check_integer("max_iter", max_iter)
        self.num_init = check_integer("num_init", num_init)
        self.seed = check_integer("seed", seed, minimum=0)
        self.centroids = None
        self.psi = None
        self.validation_clusters = None

    def fit(
        self,
        train_embeddings,
        train_correctness=None,
        validation_embeddings=None,
        validation_correctness=None,
        costs=None,
        model_names=None,
    ) -> "ClusterRouter":
        """Clusters the training prompts and builds every model's `Psi`.

        Args:
            train_embeddings: `(n_train, d)` training prompt embeddings
                (clustered; the training LLMs' correctness is not needed).
            train_correctness: unused (accepted for the common API).
            validation_embeddings: `(n_val, d)` embeddings of `S_val`.
            validation_correctness: `(n_val, m)` correctness in [0, 1] of
                the pool's `m` models on `S_val`.
            costs: `(m,)` cost per query of each model (>= 0).
            model_names: `m` unique names. Defaults to `model_0`, ...

        Returns:
            The router.
        """
        train, _, val, correct = self._fit_inputs(
            train_embeddings,
            train_correctness,
            validation_embeddings,
            validation_correctness,
            costs,
            model_names,
        )
        kmeans = KMeans(
            self.num_clusters,
            metric=self.metric,
            max_iter=self.max_iter,
            num_init=self.num_init,
            seed=self.seed,
        ).fit(train)
        self.centroids = np.asarray(kmeans.centroids, "float32")
        self.validation_clusters = self._assign(val)
        self.psi = cluster_errors(
            self.validation_clusters, 1.0 - correct, self.num_clusters
        )
        return self

    def _assign(self, embeddings):
        return np.asarray(
            ops.convert_to_numpy(
                nearest_centroid(embeddings, self.centroids, self.metric)
            ),
            dtype="int64",
        )

    def _num_validation(self):
        return len(self.validation_clusters)

    def _add_column(self, correctness):
        column = cluster_errors(
            self.validation_clusters,
            1.0 - correctness[:, None],
            self.num_clusters,
        )
        self.psi = np.concatenate([self.psi, column], axis=1)

    def _remove_column(self, index):
        self.psi = np.delete(self.psi, index, axis=1)

    def call(self, embeddings):
        clusters = nearest_centroid(embeddings, self.centroids, self.metric)
        return ops.take(ops.convert_to_tensor(self.psi, "float32"), clusters, 0)

    def _state(self):
        if self.psi is None:
            return {}
        return {
            "centroids": self.centroids,
            "psi": self.psi,
            "validation_clusters": self.validation_clusters,
        }

    def _set_state(self, state):
        self.centroids = state["centroids"].astype("float32")
        self.psi = state["psi"].astype("float64")
        self.validation_clusters = state["validation_clusters"].astype("int64")

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
