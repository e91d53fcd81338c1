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

    Args:
        **kwargs: `Router` arguments.

    Example:

    >>> import numpy as np
    >>> correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1]], "float32")
    >>> router = ZeroRouter().fit(
    ...     None, validation_embeddings=np.zeros((3, 2)),
    ...     validation_correctness=correct, costs=[1.0, 2.0, 4.0])
    >>> router.route(np.zeros((2, 2)), cost_weight=0.0).tolist()
    [2, 2]
    >>> router.route(np.zeros((2, 2)), cost_weight=1.0).tolist()
    [0, 0]
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mean_errors = None
        self.num_validation = None

    def fit(
        self,
        train_embeddings=None,
        train_correctness=None,
        validation_embeddings=None,
        validation_correctness=None,
        costs=None,
        model_names=None,
    ) -> "ZeroRouter":
        """Stores each model's mean validation error (the embeddings only
        fix the expected width). Arguments as `ClusterRouter.fit`; the
        training arguments are unused. Returns the router."""
        _, _, val, correct = self._fit_inputs(
            train_embeddings,
            train_correctness,
            validation_embeddings,
            validation_correctness,
            costs,
            model_names,
            need_train=False,
        )
        self.mean_errors = 1.0 - correct.mean(axis=0)
        self.num_validation = int(len(val))
        return self

    def _num_validation(self):
        return self.num_validation

    def _add_column(self, correctness):
        self.mean_errors = np.append(self.mean_errors, 1.0 - correctness.mean())

    def _remove_column(self, index):
        self.mean_errors = np.delete(self.mean_errors, index)

    def call(self, embeddings):
        errors = ops.convert_to_tensor(self.mean_errors, "float32")
        ones = ops.ones_like(embeddings[:, :1], dtype="float32")
        return ones * errors[None, :]

    def _state(self):
        if self.mean_errors is None:
            return {}
        return {
            "mean_errors": self.mean_errors,
            "num_validation": np.asarray(self.num_validation),
        }

    def _set_state(self, state):
        self.mean_errors = state["mean_errors"].astype("float64")
        self.num_validation = int(state["num_validation"])
