"""Router: the shared base of the UniRoute routers and their baselines."""

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_array
from keras_gr._validation import check_number
from keras_gr._validation import check_same_length


def check_correctness(name, value, num_rows=None, ndim=2):
    """`value` as a float64 array of rank `ndim` with entries in [0, 1]
    (and `num_rows` rows when given); raises `ValueError` naming `name`."""
    array = check_array(name, value, ndim=ndim).astype("float64")
    if np.any((array < 0.0) | (array > 1.0)):
        bad = array[(array < 0.0) | (array > 1.0)]
        raise ValueError(
            f"`{name}` must hold correctness values in [0, 1]. Received: "
            f"{name} with values outside it, e.g. {float(bad[0])!r}"
        )
    if num_rows is not None and array.shape[0] != num_rows:
        raise ValueError(
            f"`{name}` must have one entry per validation prompt "
            f"({num_rows}). Received: {name} with shape {array.shape}"
        )
    return array


def check_embedding_rows(name, value, cosine=False):
    """`value` as a float32 `(n, d)` array of finite numbers; with
    `cosine=True` every row must also have a non-zero norm (a zero row has
    no direction: the routers refuse it rather than route it arbitrarily,
    as `keras_gr.curation.KMeans(metric="cosine")` does)."""
    array = check_array(name, value, ndim=2)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(
            f"`{name}` must hold numbers. Received: {name} of dtype "
            f"{array.dtype}"
        )
    array = array.astype("float32")
    if cosine and np.any(~np.any(array != 0, axis=1)):
        row = int(np.argmin(np.any(array != 0, axis=1)))
        raise ValueError(
            f"`{name}` must have no all-zero row with metric='cosine'. "
            f"Received: {name} with row {row} all zero"
        )
    return array


def check_costs(name, value):
    """`value` as a non-empty float64 vector of finite costs >= 0."""
    array = check_array(name, value, ndim=1).astype("float64")
    if np.any(array < 0.0):
        raise ValueError(
            f"`{name}` must hold costs >= 0. Received: {name}={value!r}"
        )
    return array


def select_models(errors, costs, cost_weight):
    """`argmin_h errors[:, h] + cost_weight * costs[h]` per row, ties going
    to the cheaper model (then to the lower index), in float64 NumPy."""
    errors = np.asarray(errors, dtype="float64")
    costs = np.asarray(costs, dtype="float64")
    score = errors + cost_weight * costs[None, :]
    best = np.min(score, axis=1, keepdims=True)
    tie = score <= best + 1e-9 * (1.0 + np.abs(best))
    return np.argmin(np.where(tie, costs[None, :], np.inf), axis=1)


def cost_weight_grid(errors, costs, max_points=256):
    """The `cost_weight` values at which routing by `errors` changes.

    For rows `e` of `errors`, model `i` beats a cheaper model `j` exactly
    while `lambda < (e_j - e_i) / (c_i - c_j)`, so the routes are constant
    between consecutive such breakpoints. Returns `0`, the midpoints between
    consecutive breakpoints and twice the largest (where every prompt goes
    to the cheapest model), sorted. When there are more than `max_points`
    breakpoints, their quantiles are used instead (the curve then has at
    most `max_points + 1` points).
    """
    errors = np.unique(np.round(np.asarray(errors, "float64"), 12), axis=0)
    costs = np.asarray(costs, dtype="float64")
    di = costs[:, None] - costs[None, :]  # c_i - c_j
    upper = di > 0
    values = []
    for row in errors:
        de = row[None, :] - row[:, None]  # e_j - e_i
        lam = de[upper] / di[upper]
        values.append(lam[lam > 0])
    points = np.unique(np.concatenate(values)) if values else np.zeros(0)
    if points.size == 0:
        return np.zeros(1)
    if points.size > max_points:
        points = np.unique(np.quantile(points, np.linspace(0, 1, max_points)))
    mids = 0.5 * (points[1:] + points[:-1])
    return np.concatenate([[0.0], mids, [2.0 * points[-1]]])


@keras.saving.register_keras_serializable(package="keras_gr")
class Router(keras.Model):
    """Base of the routers: routes prompts among a pool of LLMs.

    The rule of "Universal Model Routing for Efficient LLM Inference"
    (Jitkrittum et al., arXiv 2502.08773): with an estimate `gamma(x, h)`
    of the error of LLM `h` on prompt `x` and a price `cost(h)`,

    ```
    r(x) = argmin_{h in H} gamma(x, h) + lambda * cost(h)
    ```

    over the pool `H` available at test time. Subclasses differ in the
    error estimate, which `call(embeddings)` returns in `keras.ops` as a
    `(batch, num_models)` tensor (so it runs in a compiled graph); `route`
    applies the rule. Ties go to the cheaper model.

    The pool's state (model names, costs, the model features built from a
    validation set) is kept as NumPy arrays and written into `.keras` files
    by `save_own_variables` (so it can grow with `add_model` and still save
    and load).

    Every router has the same API: `fit(train_embeddings,
    train_correctness, validation_embeddings, validation_correctness,
    costs, model_names)`, `add_model(name, validation_correctness, cost)`,
    `remove_model(name)`, `route(embeddings, cost_weight)`,
    `predict_errors(embeddings)` and `deferral_curve(embeddings,
    correctness)`. Costs are in any unit (FLOPs, dollars); `cost_weight`
    is then the error one unit of cost is worth.

    Args:
        model_names: the pool's model names (set by `fit`; given only when
            restoring from a config). Defaults to `None` (empty pool).
        costs: the pool's costs (idem). Defaults to `None`.
        embedding_dim: the prompt embedding width (idem). Defaults to
            `None`.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:

    >>> import numpy as np
    >>> from keras_gr.models import ZeroRouter
    >>> router = ZeroRouter().fit(
    ...     validation_embeddings=np.zeros((4, 2)),
    ...     validation_correctness=[[0, 1], [1, 1], [1, 1], [0, 1]],
    ...     costs=[1.0, 4.0], model_names=["small", "large"])
    >>> curve = router.deferral_curve(
    ...     np.zeros((2, 2)), [[1, 1], [0, 1]], cost_weights=[0.0, 1.0])
    >>> curve["costs"].tolist(), curve["qualities"].tolist()
    ([4.0, 1.0], [1.0, 0.5])
    """

    def __init__(
        self,
        model_names: list[str] | None = None,
        costs: list[float] | None = None,
        embedding_dim: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model_names = list(model_names) if model_names else []
        self.costs = (
            np.zeros(0) if costs is None else np.asarray(costs, "float64")
        )
        self.embedding_dim = embedding_dim
        self.built = True

    # === Pool state ===

    def _state(self):
        """Name -> NumPy array of the router's fitted state."""
        return {}

    def _set_state(self, state):
        raise NotImplementedError

    def save_own_variables(self, store):
        for key, value in self._state().items():
            store[key] = np.asarray(value)

    def load_own_variables(self, store):
        state = {key: np.asarray(store[key]) for key in store.keys()}
        if state:
            self._set_state(state)

    def _check_fitted(self):
        if not self.model_names:
            raise ValueError(
                f"This {type(self).__name__} has an empty pool: call `fit` "
                "first (with at least one model)."
            )

    def _set_pool(self, costs, model_names):
        self.costs, self.model_names = self._check_pool(costs, model_names)

    @staticmethod
    def _check_pool(costs, model_names):
        costs = check_costs("costs", costs)
        if model_names is None:
            model_names = [f"model_{i}" for i in range(len(costs))]
        model_names = [str(n) for n in model_names]
        check_same_length("model_names", model_names, "costs", costs)
        if len(set(model_names)) != len(model_names):
            raise ValueError(
                "`model_names` must be unique. Received: "
                f"model_names={model_names!r}"
            )
        return costs, model_names

    def _check_new_model(self, name, cost):
        self._check_fitted()
        if str(name) in self.model_names:
            raise ValueError(
                "`name` must not be in the pool already. Received: "
                f"name={name!r}, pool={self.model_names!r}"
            )
        return check_number("cost", cost, minimum=0.0)

    def _fit_inputs(
        self,
        train_embeddings,
        train_correctness,
        validation_embeddings,
        validation_correctness,
        costs,
        model_names,
        need_train=True,
        need_train_correctness=False,
    ):
        """Checks `fit`'s arguments, sets the pool and `embedding_dim`.

        Returns `(train, train_correctness, val, val_correctness)` as
        float arrays (`train*` are `None` when not needed)."""
        costs, model_names = self._check_pool(costs, model_names)
        cosine = getattr(self, "metric", None) == "cosine"
        val = check_embedding_rows(
            "validation_embeddings", validation_embeddings, cosine=cosine
        )
        correct = check_correctness(
            "validation_correctness", validation_correctness
        )
        check_same_length(
            "validation_correctness",
            correct,
            "validation_embeddings",
            val,
        )
        if correct.shape[1] != len(costs):
            raise ValueError(
                "`validation_correctness` must have one column per model "
                f"({len(costs)} costs). Received: validation_correctness"
                f" with shape {correct.shape}"
            )
        train = train_correct = None
        if need_train:
            train = check_embedding_rows(
                "train_embeddings", train_embeddings, cosine=cosine
            )
            if train.shape[1] != val.shape[1]:
                raise ValueError(
                    "`validation_embeddings` must have the width of "
                    f"`train_embeddings` ({train.shape[1]}). Received: "
                    f"validation_embeddings with shape {val.shape}"
                )
        if need_train_correctness:
            train_correct = check_correctness(
                "train_correctness", train_correctness
            )
            check_same_length(
                "train_correctness",
                train_correct,
                "train_embeddings",
                train,
            )
            if train_correct.shape[1] != len(costs):
                raise ValueError(
                    "`train_correctness` must have one column per model "
                    f"({len(costs)} costs). Received: train_correctness"
                    f" with shape {train_correct.shape}"
                )
        self.costs, self.model_names = costs, model_names
        self.embedding_dim = int(val.shape[1])
        return train, train_correct, val, correct

    def add_model(
        self, name: str, validation_correctness, cost: float
    ) -> "Router":
        """Adds an LLM to the pool with no training step.

        Args:
            name: a new model name.
            validation_correctness: `(n_val,)` correctness in [0, 1] of the
                new model on the validation prompts given to `fit`, in the
                same order.
            cost: its cost per query (>= 0).

        Returns:
            The router.
        """
        cost = self._check_new_model(name, cost)
        correct = check_correctness(
            "validation_correctness",
            validation_correctness,
            num_rows=self._num_validation(),
            ndim=1,
        )
        self._add_column(correct)
        self.model_names.append(str(name))
        self.costs = np.append(self.costs, cost)
        return self

    def _num_validation(self):
        """The number of validation prompts `fit` saw."""
        raise NotImplementedError

    def _add_column(self, correctness):
        """Adds the features of a model with `(n_val,)` validation
        `correctness` to the subclass's model features."""
        raise NotImplementedError

    def remove_model(self, name: str) -> "Router":
        """Drops a model from the pool (e.g. to route among unseen LLMs
        only, after adding them). Returns the router."""
        self._check_fitted()
        if str(name) not in self.model_names or len(self.model_names) == 1:
            raise ValueError(
                "`name` must be a model of the pool, and the pool must keep "
                f"one model. Received: name={name!r}, pool="
                f"{list(self.model_names)!r}"
            )
        index = list(self.model_names).index(str(name))
        self._remove_column(index)
        self.model_names = [n for n in self.model_names if n != str(name)]
        self.costs = np.delete(self.costs, index)
        return self

    def _remove_column(self, index):
        """Drops model `index` from the subclass's model features."""
        raise NotImplementedError

    def _check_embeddings(self, embeddings, name="embeddings"):
        array = check_embedding_rows(
            name, embeddings, cosine=getattr(self, "metric", None) == "cosine"
        )
        if self.embedding_dim is not None and (
            array.shape[1] != self.embedding_dim
        ):
            raise ValueError(
                f"`{name}` must have width {self.embedding_dim} (the prompt "
                "embedder the router was fit with). Received: "
                f"{name} with shape {array.shape}"
            )
        return array

    # === Routing ===

    def predict_errors(self, embeddings) -> np.ndarray:
        """The estimated error of every pool model on every prompt,
        `(num_prompts, num_models)` float NumPy (the output of `call`)."""
        self._check_fitted()
        x = self._check_embeddings(embeddings)
        return np.asarray(ops.convert_to_numpy(self(x)), dtype="float64")

    def route(self, embeddings, cost_weight: float = 0.0) -> np.ndarray:
        """Indices (into `model_names`) of the model chosen per prompt.

        Args:
            embeddings: `(num_prompts, embedding_dim)` prompt embeddings.
            cost_weight: `lambda >= 0`, the error a unit of cost is worth.
                Defaults to `0.0` (the most accurate model per prompt).
        """
        cost_weight = check_number("cost_weight", cost_weight, minimum=0.0)
        return select_models(
            self.predict_errors(embeddings), self.costs, cost_weight
        )

    def deferral_curve(
        self, embeddings, correctness, cost_weights=None
    ) -> dict:
        """Quality vs average cost of the routes over a sweep of `lambda`.

        Args:
            embeddings: test prompt embeddings.
            correctness: `(num_prompts, num_models)` true correctness of the
                pool's models on them, columns in `model_names` order.
            cost_weights: the `lambda` values. Defaults to
                `cost_weight_grid` of the estimated errors (every change of
                route, up to 256 points).

        Returns:
            A dict with `cost_weights`, `costs` (average cost per prompt)
            and `qualities` (mean correctness), one entry per `lambda`,
            and `choices` (`(num_lambdas, num_prompts)` model indices).
        """
        errors = self.predict_errors(embeddings)
        correctness = check_correctness("correctness", correctness)
        check_same_length("correctness", correctness, "embeddings", errors)
        if correctness.shape[1] != len(self.model_names):
            raise ValueError(
                "`correctness` must have one column per pool model "
                f"({len(self.model_names)}). Received: correctness with "
                f"shape {correctness.shape}"
            )
        if cost_weights is None:
            cost_weights = cost_weight_grid(errors, self.costs)
        check_array("cost_weights", cost_weights, ndim=1, finite=False)
        cost_weights = [
            check_number("cost_weights", c, minimum=0.0) for c in cost_weights
        ]
        choices = np.stack(
            [select_models(errors, self.costs, lam) for lam in cost_weights]
        )
        rows = np.arange(correctness.shape[0])
        return {
            "cost_weights": np.asarray(cost_weights),
            "costs": self.costs[choices].mean(axis=1),
            "qualities": correctness[rows[None, :], choices].mean(axis=1),
            "choices": choices,
        }

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "model_names": list(self.model_names),
            "costs": [float(c) for c in self.costs],
            "embedding_dim": self.embedding_dim,
        }
