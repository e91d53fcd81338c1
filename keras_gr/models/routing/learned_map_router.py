"""LearnedMapRouter: UniRoute's learned (soft) cluster map."""

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_positive
from keras_gr.curation import KMeans
from keras_gr.models.routing.base_router import METRICS
from keras_gr.models.routing.base_router import Router
from keras_gr.models.routing.base_router import unit_rows


def soft_cluster_errors(assignment, errors, epsilon=1e-6):
    """`Psi[k, h] = sum_i Phi_ik e_ih / (sum_i Phi_ik + epsilon)`, in
    `keras.ops`: `(n, K), (n, m) -> (K, m)`."""
    weighted = ops.matmul(ops.transpose(assignment), errors)
    mass = ops.sum(assignment, axis=0)[:, None]
    return weighted / (mass + epsilon)


class _MapTrainer(keras.Model):
    """Predicts every training LLM's correctness on a training prompt as
    `1 - Phi(x)^T Psi(h)`, with `Psi` computed from the validation set
    through the same `Phi` (so the log-loss trains `theta` through both)."""

    def __init__(self, router, validation_embeddings, validation_errors):
        super().__init__(name="map_trainer")
        self.router = router
        self.validation_embeddings = validation_embeddings
        self.validation_errors = validation_errors

    def call(self, x):
        val = ops.convert_to_tensor(self.validation_embeddings, "float32")
        err = ops.convert_to_tensor(self.validation_errors, "float32")
        psi = soft_cluster_errors(self.router.soft_assignment(val), err)
        error = ops.matmul(self.router.soft_assignment(x), psi)
        return ops.clip(1.0 - error, 1e-6, 1.0 - 1e-6)


@keras.saving.register_keras_serializable(package="keras_gr")
class LearnedMapRouter(Router):
    """UniRoute's learned cluster map: a trained soft assignment of prompts
    to clusters, with LLMs represented by their per-cluster errors.

    From "Universal Model Routing for Efficient LLM Inference" (Jitkrittum
    et al., arXiv 2502.08773). A prompt's soft cluster membership is

    ```
    Phi_k(x) = softmax_k(theta_k . phi(x) + b_k)
    ```

    and an LLM `h` is its vector of soft per-cluster validation errors

    ```
    Psi_k(h) = sum_{x' in S_val} Phi_k(x') 1[h(x') != y']
               / sum_{x' in S_val} Phi_k(x').
    ```

    The estimated error is `gamma(x, h) = Phi(x)^T Psi(h)` and the route
    `argmin_h gamma(x, h) + lambda * cost(h)`. `theta, b` are trained with
    the log-loss of the training LLMs' correctness on the training prompts,
    `-[y log(1 - gamma) + (1 - y) log gamma]`, with `Psi` of the training
    LLMs computed on `S_val` through the same `Phi` (so the gradient flows
    through both). A new LLM is added from its validation answers only
    (`add_model`: one `Psi` column with the trained `Phi`, no training):
    `model_features_of` is the column-wise `Psi` through the trained `Phi`,
    and `psi` the pool's `(K, num_models)` matrix.

    Choices the paper leaves open (made here): `theta` starts from k-means
    (`keras_gr.curation.KMeans`) on the training embeddings as a soft
    k-means, `theta_k = 2 c_k / tau`, `b_k = -|c_k|^2 / tau` with `tau`
    the mean squared distance of a training prompt to its centroid
    (Euclidean), or `theta_k = c_k / tau` on unit-norm inputs with
    `tau = 0.1` (cosine); training uses Adam with full-batch validation
    `Psi` and float32 throughout.

    Args:
        num_clusters: `K`. Defaults to `8`.
        metric: `"euclidean"` or `"cosine"` (the k-means initialisation
            and whether inputs are normalised). Defaults to `"euclidean"`.
        epochs: training epochs over the training prompts. Defaults to
            `30`.
        batch_size: training batch size. Defaults to `128`.
        learning_rate: Adam learning rate. Defaults to `1e-2`.
        seed: seed of k-means and of training. Defaults to `0`.
        **kwargs: `Router` arguments.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centers = np.array([[0.0, 0.0], [6.0, 6.0]])
    >>> c_train, c_val = rng.integers(0, 2, 200), np.repeat([0, 1], 20)
    >>> train = centers[c_train] + rng.normal(size=(200, 2))
    >>> val = centers[c_val] + rng.normal(size=(40, 2))
    >>> def labels(c):  # "small" is right on cluster 0 only
    ...     return np.stack([c == 0, np.ones_like(c)], 1).astype("float32")
    >>> router = LearnedMapRouter(num_clusters=2, epochs=5).fit_pool(
    ...     train_embeddings=train, train_correctness=labels(c_train),
    ...     validation_embeddings=val, validation_correctness=labels(c_val),
    ...     costs=[1.0, 10.0])
    >>> router.psi.shape
    (2, 2)
    >>> router.route(centers, cost_weight=0.01).tolist()
    [0, 1]
    """

    _PROMPT_STATE = {"validation_embeddings": "float32"}

    def __init__(
        self,
        num_clusters: int = 8,
        metric: str = "euclidean",
        epochs: int = 30,
        batch_size: int = 128,
        learning_rate: float = 1e-2,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_clusters = check_integer("num_clusters", num_clusters)
        self.metric = check_choice("metric", metric, METRICS)
        self.epochs = check_integer("epochs", epochs, minimum=0)
        self.batch_size = check_integer("batch_size", batch_size)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.seed = check_integer("seed", seed, minimum=0)
        self.assignment = keras.layers.Dense(
            self.num_clusters, dtype="float32", name="assignment"
        )
        if self.embedding_dim is not None:
            self.assignment.build((None, self.embedding_dim))

    def soft_assignment(self, embeddings):
        """`Phi(x)`: `(batch, K)` soft cluster memberships (rows sum to 1)."""
        x = ops.convert_to_tensor(embeddings, "float32")
        if self.metric == "cosine":
            x = unit_rows(x)
        return ops.softmax(self.assignment(x), axis=-1)

    def fit_pool(
        self,
        *,
        train_embeddings,
        train_correctness,
        validation_embeddings,
        validation_correctness,
        costs,
        model_names=None,
        verbose: int = 0,
    ) -> "LearnedMapRouter":
        """Initialises `Phi` by k-means, trains it, builds every `Psi`.

        Args:
            train_embeddings: `(n_train, d)` training prompt embeddings.
            train_correctness: `(n_train, m)` correctness in [0, 1] of the
                training LLMs (the pool given here) on them.
            validation_embeddings: `(n_val, d)` embeddings of `S_val`.
            validation_correctness: `(n_val, m)` correctness on `S_val`.
            costs: `(m,)` costs (>= 0).
            model_names: `m` unique names. Defaults to `model_0`, ...
            verbose: verbosity of the map's training. Defaults to `0`.

        Returns:
            The router.
        """
        costs, names, errors, val = self._check_validation(
            costs, model_names, validation_correctness, validation_embeddings
        )
        train, train_correct = self._check_train(
            train_embeddings, val.shape[1], train_correctness, len(costs)
        )
        kmeans = KMeans(
            self.num_clusters, metric=self.metric, seed=self.seed
        ).fit(train)
        c = np.asarray(kmeans.centroids, "float64")
        if self.metric == "cosine":
            kernel, bias = c.T / 0.1, np.zeros(self.num_clusters)
        else:
            tau = max(float(kmeans.inertia) / len(train), 1e-6)
            kernel = 2.0 * c.T / tau
            bias = -np.sum(c**2, axis=1) / tau
        if self.assignment.built and (
            self.assignment.kernel.shape[0] != train.shape[1]
        ):
            self.assignment = keras.layers.Dense(
                self.num_clusters, dtype="float32", name="assignment"
            )
        if not self.assignment.built:
            self.assignment.build((None, train.shape[1]))
        self.assignment.set_weights(
            [kernel.astype("float32"), bias.astype("float32")]
        )
        self.validation_embeddings = val
        if self.epochs > 0:
            keras.utils.set_random_seed(self.seed)
            trainer = _MapTrainer(self, val, errors)
            trainer.compile(
                keras.optimizers.Adam(self.learning_rate),
                keras.losses.BinaryCrossentropy(),
                jit_compile=True,
            )
            trainer.fit(
                train,
                train_correct.astype("float32"),
                batch_size=self.batch_size,
                epochs=self.epochs,
                verbose=verbose,
            )
        self._set_pool(costs, names, errors, int(val.shape[1]))
        return self

    def model_features_of(self, errors):
        """`Psi`: each column of `errors` through the trained `Phi` of the
        validation prompts (`soft_cluster_errors`, float32 `keras.ops`)."""
        phi = self.soft_assignment(self.validation_embeddings)
        psi = soft_cluster_errors(phi, ops.convert_to_tensor(errors, "float32"))
        return np.asarray(ops.convert_to_numpy(psi), "float64")

    @property
    def psi(self):
        """`Psi[k, h]`, `(num_clusters, num_models)`: `model_features`."""
        return self.model_features

    def call(self, embeddings):
        psi = ops.convert_to_tensor(self.model_features, "float32")
        return ops.matmul(self.soft_assignment(embeddings), psi)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "num_clusters": self.num_clusters,
                "metric": self.metric,
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "learning_rate": self.learning_rate,
                "seed": self.seed,
            }
        )
        return config
