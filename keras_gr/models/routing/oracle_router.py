"""OracleRouter: the clairvoyant router (knows every answer's correctness)."""

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_array
from keras_gr.models.routing.base_router import Router
from keras_gr.models.routing.base_router import check_correctness


@keras.saving.register_keras_serializable(package="keras_gr")
class OracleRouter(Router):
    """The clairvoyant router: routes with the true per-prompt errors.

    The oracle of "Universal Model Routing for Efficient LLM Inference"
    (Jitkrittum et al., arXiv 2502.08773) and RouterBench. Its "prompt
    features" are the prompts' true correctness rows `(num_prompts,
    num_models)` (columns in `model_names` order), so `route(correctness,
    lambda)` picks (rows must hold values in [0, 1]: anything else is
    refused with a `ValueError`)

    ```
    r(x) = argmin_h 1[h(x) != y] + lambda * cost(h)
    ```

    i.e. the cheapest correct model (if `lambda` is small enough that a
    correct answer is worth its cost). Since it minimises the Lagrangian
    of every prompt, its deferral curve (with every breakpoint of
    `lambda`) is the upper boundary of what any router of the pool can
    reach: an upper bound, not a usable router.

    Nothing is learned and no validation set is used: `fit_pool` takes
    only the pool (`costs`, `model_names`), its validation errors are an
    empty `(0, num_models)` array and its model features the identity on
    them; `add_model(name, cost=...)` needs no correctness.

    Args:
        **kwargs: `Router` arguments.

    Example:

    >>> import numpy as np
    >>> router = OracleRouter().fit_pool(costs=[1.0, 5.0])
    >>> correct = np.array([[1, 1], [0, 1], [0, 0]], "float32")
    >>> router.route(correct, cost_weight=0.01).tolist()
    [0, 1, 0]
    >>> router.predict_errors(correct).tolist()
    [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.model_names:  # restored from a config: the pool is all
            empty = np.zeros((0, len(self.model_names)))
            self.validation_errors = self.model_features = empty

    def fit_pool(self, *, costs, model_names=None) -> "OracleRouter":
        """Sets the pool; nothing is learned.

        Args:
            costs: `(m,)` costs (>= 0).
            model_names: `m` unique names. Defaults to `model_0`, ...

        Returns:
            The router.
        """
        costs, names = self._check_pool(costs, model_names)
        self._set_pool(costs, names, np.zeros((0, len(costs))), None)
        return self

    def add_model(
        self, name: str, validation_correctness=None, cost: float = 0.0
    ):
        """Adds a model (its `cost`); `validation_correctness` is unused
        (checked to be an array when given). Afterwards `route` takes
        correctness rows with one more column. Returns the router."""
        cost = self._check_new_model(name, cost)
        if validation_correctness is not None:
            check_array("validation_correctness", validation_correctness)
        return self._append_model(name, cost, np.zeros((0, 1)))

    def _check_embeddings(self, embeddings, name="embeddings"):
        # The oracle's features are correctness rows, one column per model.
        array = check_correctness("correctness", embeddings)
        if array.shape[1] != len(self.model_names):
            raise ValueError(
                "`correctness` must have one column per pool model "
                f"({len(self.model_names)}). Received: correctness with "
                f"shape {array.shape}"
            )
        return array.astype("float32")

    def call(self, correctness):
        return 1.0 - ops.convert_to_tensor(correctness, "float32")

    def route(self, correctness, cost_weight: float = 0.0) -> np.ndarray:
        """Indices (into `model_names`) of the cheapest correct model per
        prompt (see `Router.route`).

        Args:
            correctness: `(num_prompts, num_models)` true correctness in
                [0, 1], columns in `model_names` order.
            cost_weight: `lambda >= 0`. Defaults to `0.0`.
        """
        return super().route(correctness, cost_weight)

    def deferral_curve(self, embeddings, correctness, cost_weights=None):
        """As `Router.deferral_curve`; the oracle's features are the
        correctness itself, so `embeddings` may be `None`."""
        if embeddings is None:
            embeddings = correctness
        return super().deferral_curve(embeddings, correctness, cost_weights)
