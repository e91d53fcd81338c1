"""KNNRouter: K-nearest-neighbour routing on the validation prompts."""

import keras
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr.models.routing.base_router import METRICS
from keras_gr.models.routing.base_router import Router
from keras_gr.models.routing.base_router import similarity


def knn_errors(embeddings, reference, reference_errors, k, metric):
    """Mean of `reference_errors` over the `k` nearest `reference` rows of
    every embedding, in `keras.ops`: `(b, d), (n, d), (n, m) -> (b, m)`."""
    _, index = ops.top_k(similarity(embeddings, reference, metric), k)
    errors = ops.convert_to_tensor(reference_errors, "float32")
    return ops.mean(ops.take(errors, index, axis=0), axis=1)


@keras.saving.register_keras_serializable(package="keras_gr")
class KNNRouter(Router):
    """K-NN routing: an LLM's error on a prompt is its mean error on the
    prompt's `k` nearest validation prompts.

    The K-NN baseline of "Universal Model Routing for Efficient LLM
    Inference" (Jitkrittum et al., arXiv 2502.08773), the special case of
    its learned cluster map where each LLM's feature vector is its raw
    vector of validation errors:

    ```
    gamma(x, h) = (1 / k) sum_{x' in N_k(x)} 1[h(x') != y']
    r(x) = argmin_h gamma(x, h) + lambda * cost(h)
    ```

    with `N_k(x)` the `k` validation prompts nearest to `x` (Euclidean
    distance or cosine similarity of the embeddings). An LLM's model
    features are its raw validation errors (the base's
    `model_features_of`, the identity). A new LLM needs only its answers
    on the validation prompts (`add_model`). Training prompts are not
    used.

    Args:
        num_neighbors: `k`. Defaults to `10` (capped at the number of
            validation prompts).
        metric: `"euclidean"` or `"cosine"`. Defaults to `"euclidean"`.
        **kwargs: `Router` arguments.

    Example:

    >>> import numpy as np
    >>> val = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> correct = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], "float32")
    >>> router = KNNRouter(num_neighbors=2).fit_pool(
    ...     validation_embeddings=val, validation_correctness=correct,
    ...     costs=[1.0, 3.0])
    >>> router.predict_errors(np.array([[0.05], [4.0]])).tolist()
    [[0.0, 0.0], [1.0, 0.0]]
    >>> router.route(np.array([[0.05], [4.0]]), cost_weight=0.1).tolist()
    [0, 1]
    """

    _PROMPT_STATE = {"validation_embeddings": "float32"}

    def __init__(
        self, num_neighbors: int = 10, metric: str = "euclidean", **kwargs
    ):
        super().__init__(**kwargs)
        self.num_neighbors = check_integer("num_neighbors", num_neighbors)
        self.metric = check_choice("metric", metric, METRICS)

    def fit_pool(
        self,
        *,
        validation_embeddings,
        validation_correctness,
        costs,
        model_names=None,
    ) -> "KNNRouter":
        """Stores the validation prompts and every model's errors on them.

        Args:
            validation_embeddings: `(n_val, d)` embeddings of `S_val`.
            validation_correctness: `(n_val, m)` correctness in [0, 1].
            costs: `(m,)` costs (>= 0).
            model_names: `m` unique names. Defaults to `model_0`, ...

        Returns:
            The router.
        """
        costs, names, errors, val = self._check_validation(
            costs, model_names, validation_correctness, validation_embeddings
        )
        self.validation_embeddings = val
        self._set_pool(costs, names, errors, int(val.shape[1]))
        return self

    def call(self, embeddings):
        k = min(self.num_neighbors, len(self.validation_embeddings))
        return knn_errors(
            embeddings,
            self.validation_embeddings,
            self.model_features,
            k,
            self.metric,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"num_neighbors": self.num_neighbors, "metric": self.metric}
        )
        return config
