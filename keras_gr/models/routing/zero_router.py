"""ZeroRouter: the prompt-independent baseline (a fixed cost-quality mix)."""

import keras
import numpy as np
from keras import ops

from keras_gr.models.routing.base_router import Router


@keras.saving.register_keras_serializable(package="keras_gr")
class ZeroRouter(Router):
    """Routes every prompt to the same model: the best fixed trade-off.

    The zero router of "Universal Model Routing for Efficient LLM
    Inference" (Jitkrittum et al., arXiv 2502.08773) and RouterBench: it
    ignores the prompt, estimating each LLM's error by its mean validation
    error,

    ```
    gamma(x, h) = mean_{(x', y') in S_val} 1[h(x') != y']
    r(x) = argmin_h gamma(h) + lambda * cost(h)   (the same for every x)
    ```

    Over a sweep of `lambda` the chosen models are the vertices of the
    lower convex hull of the (cost, validation error) points, so its
    deferral curve, interpolated linearly (a random mix of two models),
    is the convex hull of the single models: the bar a router must beat.
    Its model features (`model_features_of`) are the column means of the
    validation errors, `(1, num_models)`; `mean_errors` is that row. The
    prompt embeddings are not needed: `validation_embeddings`, when given
    to `fit_pool`, only fix the width `route` then checks.

    Args:
        **kwargs: `Router` arguments.

    Example:

    >>> import numpy as np
    >>> correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1]], "float32")
    >>> router = ZeroRouter().fit_pool(
    ...     validation_correctness=correct, costs=[1.0, 2.0, 4.0])
    >>> router.mean_errors.round(3).tolist()
    [0.667, 0.333, 0.0]
    >>> router.route(np.zeros((2, 2)), cost_weight=0.0).tolist()
    [2, 2]
    >>> router.route(np.zeros((2, 2)), cost_weight=1.0).tolist()
    [0, 0]
    """

    def fit_pool(
        self,
        *,
        validation_correctness,
        costs,
        model_names=None,
        validation_embeddings=None,
    ) -> "ZeroRouter":
        """Stores each model's mean validation error.

        Args:
            validation_correctness: `(n_val, m)` correctness in [0, 1].
            costs: `(m,)` costs (>= 0).
            model_names: `m` unique names. Defaults to `model_0`, ...
            validation_embeddings: `(n_val, d)` validation prompt
                embeddings, only to fix the width `route` accepts. Defaults
                to `None` (any width).

        Returns:
            The router.
        """
        costs, names, errors, val = self._check_validation(
            costs,
            model_names,
            validation_correctness,
            validation_embeddings,
            embeddings_optional=True,
        )
        width = None if val is None else int(val.shape[1])
        self._set_pool(costs, names, errors, width)
        return self

    def model_features_of(self, errors):
        """The mean of each column of `errors`, `(1, k)`."""
        return np.mean(errors, axis=0, keepdims=True)

    @property
    def mean_errors(self):
        """Each pool model's mean validation error, `(num_models,)`."""
        return self.model_features[0]

    def call(self, embeddings):
        errors = ops.convert_to_tensor(self.model_features, "float32")
        ones = ops.ones_like(embeddings[:, :1], dtype="float32")
        return ones * errors
