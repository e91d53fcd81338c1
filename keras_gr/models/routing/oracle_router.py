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

    Args:
        **kwargs: `Router` arguments.

    Example:

    >>> import numpy as np
    >>> router = OracleRouter().fit(costs=[1.0, 5.0])
    >>> correct = np.array([[1, 1], [0, 1], [0, 0]], "float32")
    >>> router.route(correct, cost_weight=0.01).tolist()
    [0, 1, 0]
    """

    def fit(
        self,
        train_embeddings=None,
        train_correctness=None,
        validation_embeddings=None,
        validation_correctness=None,
        costs=None,
        model_names=None,
    ) -> "OracleRouter":
        """Sets the pool (`costs`, `model_names`); nothing is learned (the
        other arguments are accepted for the common API and unused).
        Returns the router."""
        del train_embeddings, train_correctness
        del validation_embeddings, validation_correctness
        self._set_pool(costs, model_names)
        self.embedding_dim = len(self.costs)
        return self

    def add_model(
        self, name: str, validation_correctness=None, cost: float = 0.0
    ):
        """Adds a model (its `cost`); `validation_correctness` is unused.
        Afterwards `route` takes correctness rows with one more column.
        Returns the router."""
        cost = self._check_new_model(name, cost)
        if validation_correctness is not None:
            check_array("validation_correctness", validation_correctness)
        self.model_names.append(str(name))
        self.costs = np.append(self.costs, cost)
        self.embedding_dim = len(self.costs)
        return self

    def _remove_column(self, index):
        self.embedding_dim = len(self.costs) - 1

    def _check_embeddings(self, embeddings, name="embeddings"):
        # The oracle's features are correctness rows: values in [0, 1].
        check_correctness("correctness", embeddings)
        return super()._check_embeddings(embeddings, name)

    def call(self, correctness):
        return 1.0 - ops.convert_to_tensor(correctness, "float32")

    def deferral_curve(self, embeddings, correctness, cost_weights=None):
        """As `Router.deferral_curve`; the oracle's features are the
        correctness itself, so `embeddings` may be `None`."""
        if embeddings is None:
            embeddings = correctness
        return super().deferral_curve(embeddings, correctness, cost_weights)
