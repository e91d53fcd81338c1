"""KNNRouter: K-nearest-neighbour routing on the validation prompts."""

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr.models.routing.base_router import Router


def knn_errors(embeddings, reference, reference_errors, k, metric):
    """Mean of `reference_errors` over the `k` nearest `reference` rows of
    every embedding, in `keras.ops`: `(b, d), (n, d), (n, m) -> (b, m)`."""
    x = ops.convert_to_tensor(embeddings, "float32")
    ref = ops.convert_to_tensor(reference, "float32")
    if metric == "cosine":
        x = x / ops.maximum(ops.norm(x, axis=1, keepdims=True), 1e-12)
        ref = ref / ops.maximum(ops.norm(ref, axis=1, keepdims=True), 1e-12)
        score = ops.matmul(x, ops.transpose(ref))
    else:
        cross = ops.matmul(x, ops.transpose(ref))
        score = 2.0 * cross - ops.sum(ops.square(ref), axis=1)[None, :]
    _, index = ops.top_k(score, k)
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
    distance or cosine similarity of the embeddings). A new LLM needs only
    its answers on the validation prompts (`add_model`). Training prompts
    are not used.

    Args:
        num_neighbors: `k`. Defaults to `10` (capped at the number of
            validation prompts).
        metric: `"euclidean"` or `"cosine"`. Defaults to `"euclidean"`.
        **kwargs: `Router` arguments.

    Example:

    >>> import numpy as np
    >>> val = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> correct = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], "float32")
    >>> router = KNNRouter(num_neighbors=2).fit(
    ...     None, validation_embeddings=val,
    ...     validation_correctness=correct, costs=[1.0, 3.0])
    >>> router.route(np.array([[0.05], [4.0]]), cost_weight=0.1).tolist()
    [0, 1]
    """

    def __init__(
        self, num_neighbors: int = 10, metric: str = "euclidean", **kwargs
    ):
        super().__init__(**kwargs)
        self.num_neighbors = check_integer("num_neighbors", num_neighbors)
        self.metric = check_choice("metric", metric, ("euclidean", "cosine"))
        self.validation_embeddings = None
        self.validation_errors = None

    def fit(
        self,
        train_embeddings=None,
        train_correctness=None,
        validation_embeddings=None,
        validation_correctness=None,
        costs=None,
        model_names=None,
    ) -> "KNNRouter":
        """Stores the validation prompts and every model's errors on them.

        Args:
            train_embeddings: unused (accepted for the common API).
            train_correctness: unused.
            validation_embeddings: `(n_val, d)` embeddings of `S_val`.
            validation_correctness: `(n_val, m)` correctness in [0, 1].
            costs: `(m,)` costs (>= 0).
            model_names: `m` unique names. Defaults to `model_0`, ...

        Returns:
            The router.
        """
        _, _, val, correct = self._fit_inputs(
            train_embeddings,
            train_correctness,
            validation_embeddings,
            validation_correctness,
            costs,
            model_names,
            need_train=False,
        )
        self.validation_embeddings = val
        self.validation_errors = 1.0 - correct
        return self

    def _num_validation(self):
        return len(self.validation_embeddings)

    def _add_column(self, correctness):
        self.validation_errors = np.concatenate(
            [self.validation_errors, 1.0 - correctness[:, None]], axis=1
        )

    def _remove_column(self, index):
        self.validation_errors = np.delete(
            self.validation_errors, index, axis=1
        )

    def call(self, embeddings):
        k = min(self.num_neighbors, len(self.validation_embeddings))
        return knn_errors(
            embeddings,
            self.validation_embeddings,
            self.validation_errors,
            k,
            self.metric,
        )

    def _state(self):
        if self.validation_errors is None:
            return {}
        return {
            "validation_embeddings": self.validation_embeddings,
            "validation_errors": self.validation_errors,
        }

    def _set_state(self, state):
        self.validation_embeddings = state["validation_embeddings"].astype(
            "float32"
        )
        self.validation_errors = state["validation_errors"].astype("float64")

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"num_neighbors": self.num_neighbors, "metric": self.metric}
        )
        return config
