"""Router: the shared base of the UniRoute routers and their baselines."""

import inspect
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_array
from keras_gr._validation import check_number
from keras_gr._validation import check_same_length

# The prompt geometries of the routers that compare embeddings.
METRICS = ("euclidean", "cosine")

# The old `fit` call form, in its positional order (deprecated).
_POOL_FIT_ARGS = (
    "train_embeddings",
    "train_correctness",
    "validation_embeddings",
    "validation_correctness",
    "costs",
    "model_names",
    "verbose",
)


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


def unit_rows(x):
    """`x` with every row scaled to unit norm, in `keras.ops` (rows of norm
    below `1e-12` are divided by `1e-12`; the routers refuse all-zero rows
    with `metric="cosine"` before they get here)."""
    return x / ops.maximum(ops.norm(x, axis=1, keepdims=True), 1e-12)


def similarity(embeddings, reference, metric, unit_reference=False):
    """`(b, n)` closeness of every embedding to every `reference` row, in
    `keras.ops`; larger is nearer. `"cosine"`: the cosine similarity (with
    `unit_reference=True` the reference rows are taken as unit vectors
    already, e.g. spherical k-means centroids, and not rescaled);
    `"euclidean"`: `2 x . r - |r|^2`, which is `|x|^2 - |x - r|^2`, so it
    orders the rows of `reference` as the squared distance does (the
    `|x|^2` term, the same for every row, is left out)."""
    x = ops.convert_to_tensor(embeddings, "float32")
    ref = ops.convert_to_tensor(reference, "float32")
    if metric == "cosine":
        ref = ref if unit_reference else unit_rows(ref)
        return ops.matmul(unit_rows(x), ops.transpose(ref))
    cross = ops.matmul(x, ops.transpose(ref))
    return 2.0 * cross - ops.sum(ops.square(ref), axis=1)[None, :]


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


def _is_pool_fit_call(args, kwargs):
    """Whether `fit(*args, **kwargs)` is the deprecated pool-fitting form.

    It is when it names one of the old arguments (`train_embeddings`, ...,
    `model_names`), or when its third to fifth positional arguments are not
    all Keras scalars: Keras's `fit(x, y, batch_size, epochs, verbose)`
    takes `None`, integers or strings there, the old form
    `(validation_embeddings, validation_correctness, costs)` arrays.
    """
    if any(name in kwargs for name in _POOL_FIT_ARGS[:-1]):
        return True
    return any(
        not (a is None or isinstance(a, (str, numbers.Integral)))
        for a in args[2:5]
    )


def _from_legacy_state(state):
    """The state of a router file saved before the base stored the
    validation errors (keras_gr before issue 30), or `None` if `state` is
    not one.

    Those files kept each router's own arrays: `KNNRouter` its
    `validation_errors` (which are also its model features), the cluster
    routers `psi` (their model features) beside `validation_clusters` or
    `validation_embeddings`, `ZeroRouter` `mean_errors` and
    `num_validation`. The per-prompt validation errors of the last three
    were not saved: they are restored as NaN (unknown), which routing,
    `add_model` and `remove_model` never read (each model's features
    depend on its own column only), so a loaded router routes and grows
    exactly as the saved one did.
    """
    state = dict(state)
    if "validation_errors" in state:
        state["model_features"] = state["validation_errors"]
        return state
    if "psi" in state:
        features = state["psi"]
        rows = state.get("validation_clusters")
        if rows is None:
            rows = state.get("validation_embeddings")
        num_validation = None if rows is None else len(rows)
    elif "mean_errors" in state and "num_validation" in state:
        features = state["mean_errors"][None, :]
        num_validation = int(state["num_validation"])
    else:
        return None
    if num_validation is None:
        return None
    state["model_features"] = features
    state["validation_errors"] = np.full(
        (num_validation, features.shape[1]), np.nan
    )
    return state


@keras.saving.register_keras_serializable(package="keras_gr")
class Router(keras.Model):
    """Base of the routers: routes prompts among a pool of LLMs.

    The rule of "Universal Model Routing for Efficient LLM Inference"
    (Jitkrittum et al., arXiv 2502.08773): with an estimate `gamma(x, h)`
    of the error of LLM `h` on prompt `x` and a price `cost(h)`,

    ```
    r(x) = argmin_{h in H} gamma(x, h) + lambda * cost(h)
    ```

    over the pool `H` available at test time. Every LLM `h` is represented
    by its errors on a small labelled validation set `S_val`: the base
    stores them once, `validation_errors` (`(n_val, num_models)`, `1 -
    correctness`, one column per pool model), and each router turns them
    into its model features, `model_features = model_features_of(
    validation_errors)` (`(F, num_models)`), by one column-wise function:
    the per-cluster errors `Psi` (`ClusterRouter`, `LearnedMapRouter`),
    the mean (`ZeroRouter`), the raw errors (`KNNRouter`, the default).
    Column `h` of the features depends only on column `h` of the errors,
    so `add_model` computes the new model's column alone, with no
    training, and `remove_model` drops one. `call(embeddings)` returns
    `gamma` in `keras.ops` as a `(batch, num_models)` tensor (so it runs
    in a compiled graph); `route` applies the rule. Ties go to the cheaper
    model.

    The fitted state (the validation errors, the model features and what
    the router learned from prompts: centroids, validation clusters or
    embeddings) is kept as NumPy arrays and written into `.keras` files by
    `save_own_variables`, so the pool can grow and still save and load.
    Files saved before the base stored the validation errors (each router
    kept its own arrays then) still load and route, grow and shrink as
    they did; only their per-prompt `validation_errors`, which those files
    did not keep (but `KNNRouter`'s), read as NaN.

    Every router is fitted with `fit_pool(...)`, keyword arguments only,
    taking what it uses among `train_embeddings`, `train_correctness`,
    `validation_embeddings`, `validation_correctness`, `costs` and
    `model_names`; then `add_model(name, validation_correctness, cost)`,
    `remove_model(name)`, `route(embeddings, cost_weight)`,
    `predict_errors(embeddings)` and `deferral_curve(embeddings,
    correctness)`. Keras's own `fit(x, y, ...)` keeps its meaning
    (training the router's weights, if any, on `(x, y)`); the old
    pool-fitting call `fit(train_embeddings, train_correctness,
    validation_embeddings, validation_correctness, costs, model_names)`
    still works for one release, with a `DeprecationWarning`. Costs are in
    any unit (FLOPs, dollars); `cost_weight` is then the error one unit of
    cost is worth.

    Args:
        model_names: the pool's model names (set by `fit_pool`; given only
            when restoring from a config). Defaults to `None` (empty pool).
        costs: the pool's costs (idem). Defaults to `None`.
        embedding_dim: the prompt embedding width (idem). Defaults to
            `None`.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:

    >>> import numpy as np
    >>> from keras_gr.models import ZeroRouter
    >>> router = ZeroRouter().fit_pool(
    ...     validation_correctness=[[0, 1], [1, 1], [1, 1], [0, 1]],
    ...     costs=[1.0, 4.0], model_names=["small", "large"])
    >>> router.validation_errors.tolist()
    [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    >>> curve = router.deferral_curve(
    ...     np.zeros((2, 2)), [[1, 1], [0, 1]], cost_weights=[0.0, 1.0])
    >>> curve["costs"].tolist(), curve["qualities"].tolist()
    ([4.0, 1.0], [1.0, 0.5])
    """

    # Names and dtypes of the arrays a router learns from prompts (not
    # from the LLMs), saved beside the validation errors and features.
    _PROMPT_STATE = {}

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
        self.validation_errors = None
        self.model_features = None
        for key in self._PROMPT_STATE:
            setattr(self, key, None)
        self.built = True

    # === Fitting ===

    def fit_pool(self, **kwargs) -> "Router":
        """Fits the router to a pool of LLMs (each router's own keyword
        arguments; see its docstring). Returns the router."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define `fit_pool`."
        )

    def fit(self, *args, **kwargs):
        """Keras's `keras.Model.fit`, unchanged (see `keras.Model.fit`).

        Deprecated: the old pool-fitting form `fit(train_embeddings,
        train_correctness, validation_embeddings, validation_correctness,
        costs, model_names)` (recognised by those argument names, or by
        arrays among the third to fifth positional arguments) still fits
        the pool for one release: it warns (`DeprecationWarning`) and calls
        `fit_pool` with the old arguments this router uses (the others
        are dropped, as the old form ignored them; an argument the old
        form did not have is passed on, so `fit_pool` refuses it).
        """
        if not _is_pool_fit_call(args, kwargs):
            return super().fit(*args, **kwargs)
        warnings.warn(
            f"`{type(self).__name__}.fit(train_embeddings, ...)` is "
            "deprecated and will be removed in the next release: call "
            f"`{type(self).__name__}.fit_pool(...)` with keyword arguments "
            "(`fit` is Keras's `keras.Model.fit` again after that).",
            DeprecationWarning,
            stacklevel=2,
        )
        named = dict(zip(_POOL_FIT_ARGS, args))
        named.update(kwargs)
        used = inspect.signature(self.fit_pool).parameters
        return self.fit_pool(
            **{
                k: v
                for k, v in named.items()
                if k in used or k not in _POOL_FIT_ARGS
            }
        )

    def model_features_of(self, errors) -> np.ndarray:
        """The model features of validation errors, column by column.

        Args:
            errors: `(n_val, k)` errors in [0, 1] of `k` models on the
                validation prompts.

        Returns:
            `(F, k)` float64 features; column `j` depends only on
            `errors[:, j]`. The base returns `errors` itself (K-NN's
            representation of an LLM: its raw validation errors).
        """
        return np.asarray(errors, "float64")

    def _check_pool(self, costs, model_names):
        """`(costs, model_names)` checked: costs >= 0, unique names (by
        default `model_0`, ...), one per cost."""
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

    def _check_rows(self, name, value):
        """Prompt embeddings `value` as float32 `(n, d)`, refusing all-zero
        rows when the router's metric is cosine."""
        cosine = getattr(self, "metric", None) == "cosine"
        return check_embedding_rows(name, value, cosine=cosine)

    def _check_correctness_columns(self, name, correctness, num_models):
        if correctness.shape[1] != num_models:
            raise ValueError(
                f"`{name}` must have one column per model ({num_models} "
                f"costs). Received: {name} with shape {correctness.shape}"
            )

    def _check_validation(
        self,
        costs,
        model_names,
        validation_correctness,
        validation_embeddings=None,
        embeddings_optional=False,
    ):
        """Checks the pool and the validation set `fit_pool` receives.

        Returns `(costs, model_names, errors, embeddings)`: `errors = 1 -
        validation_correctness` as float64 `(n_val, m)`, `embeddings` as
        float32 `(n_val, d)` (`None` when optional and not given).
        """
        costs, model_names = self._check_pool(costs, model_names)
        val = None
        if validation_embeddings is not None or not embeddings_optional:
            if validation_embeddings is None:
                raise ValueError(
                    "`validation_embeddings` must be the `(n_val, d)` "
                    "embeddings of the validation prompts. Received: "
                    "validation_embeddings=None"
                )
            val = self._check_rows(
                "validation_embeddings", validation_embeddings
            )
        correct = check_correctness(
            "validation_correctness", validation_correctness
        )
        if val is not None:
            check_same_length(
                "validation_correctness",
                correct,
                "validation_embeddings",
                val,
            )
        self._check_correctness_columns(
            "validation_correctness", correct, len(costs)
        )
        return costs, model_names, 1.0 - correct, val

    def _check_train(
        self, train_embeddings, width, train_correctness=None, num_models=0
    ):
        """Training prompts `(n_train, width)` float32, and, when
        `num_models`, their correctness `(n_train, num_models)` float64."""
        train = self._check_rows("train_embeddings", train_embeddings)
        if train.shape[1] != width:
            raise ValueError(
                "`train_embeddings` must have the width of "
                f"`validation_embeddings` ({width}). Received: "
                f"train_embeddings with shape {train.shape}"
            )
        if not num_models:
            return train, None
        correct = check_correctness("train_correctness", train_correctness)
        check_same_length(
            "train_correctness", correct, "train_embeddings", train
        )
        self._check_correctness_columns(
            "train_correctness", correct, num_models
        )
        return train, correct

    def _set_pool(self, costs, model_names, errors, embedding_dim):
        """Sets the pool and its validation errors, and computes the model
        features (after the subclass has learned its prompt state)."""
        self.costs, self.model_names = costs, model_names
        self.embedding_dim = embedding_dim
        self.validation_errors = np.asarray(errors, "float64")
        self.model_features = self.model_features_of(self.validation_errors)

    # === Pool state ===

    @property
    def num_validation(self) -> int:
        """The number of validation prompts `fit_pool` saw (0 before)."""
        errors = self.validation_errors
        return 0 if errors is None else int(errors.shape[0])

    def _state(self):
        """Name -> NumPy array of the fitted state (empty before fitting)."""
        if self.validation_errors is None:
            return {}
        state = {
            "validation_errors": self.validation_errors,
            "model_features": self.model_features,
        }
        state.update({key: getattr(self, key) for key in self._PROMPT_STATE})
        return state

    def save_own_variables(self, store):
        for key, value in self._state().items():
            store[key] = np.asarray(value)

    def load_own_variables(self, store):
        state = {key: np.asarray(store[key]) for key in store.keys()}
        if not state:
            return
        missing = [key for key in self._PROMPT_STATE if key not in state]
        if "model_features" not in state:
            state = _from_legacy_state(state)
        if missing or state is None:
            raise ValueError(
                f"This {type(self).__name__} file does not hold a fitted "
                f"{type(self).__name__}'s state (the validation errors, "
                f"the model features and {sorted(self._PROMPT_STATE)}). "
                f"Received: a file with {sorted(store.keys())}; fit it "
                "again with `fit_pool` and save it."
            )
        self.validation_errors = state["validation_errors"].astype("float64")
        self.model_features = state["model_features"].astype("float64")
        for key, dtype in self._PROMPT_STATE.items():
            setattr(self, key, state[key].astype(dtype))

    def _check_fitted(self):
        if not self.model_names:
            raise ValueError(
                f"This {type(self).__name__} has an empty pool: call "
                "`fit_pool` first (with at least one model)."
            )

    def _check_new_model(self, name, cost):
        self._check_fitted()
        if str(name) in self.model_names:
            raise ValueError(
                "`name` must not be in the pool already. Received: "
                f"name={name!r}, pool={self.model_names!r}"
            )
        return check_number("cost", cost, minimum=0.0)

    def add_model(
        self, name: str, validation_correctness, cost: float
    ) -> "Router":
        """Adds an LLM to the pool with no training step.

        Its validation errors become a new column of `validation_errors`,
        and `model_features_of` that column a new column of
        `model_features`: the same as fitting with the model in the pool
        (the prompt side does not depend on the LLMs).

        Args:
            name: a new model name.
            validation_correctness: `(n_val,)` correctness in [0, 1] of the
                new model on the validation prompts given to `fit_pool`, in
                the same order.
            cost: its cost per query (>= 0).

        Returns:
            The router.
        """
        cost = self._check_new_model(name, cost)
        correct = check_correctness(
            "validation_correctness",
            validation_correctness,
            num_rows=self.num_validation,
            ndim=1,
        )
        return self._append_model(name, cost, 1.0 - correct[:, None])

    def _append_model(self, name, cost, errors):
        """Appends a checked model: `(n_val, 1)` validation `errors`."""
        self.validation_errors = np.concatenate(
            [self.validation_errors, errors], axis=1
        )
        self.model_features = np.concatenate(
            [self.model_features, self.model_features_of(errors)], axis=1
        )
        self.model_names.append(str(name))
        self.costs = np.append(self.costs, cost)
        return self

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
        self.validation_errors = np.delete(self.validation_errors, index, 1)
        self.model_features = np.delete(self.model_features, index, 1)
        self.model_names = [n for n in self.model_names if n != str(name)]
        self.costs = np.delete(self.costs, index)
        return self

    def _check_embeddings(self, embeddings, name="embeddings"):
        array = self._check_rows(name, embeddings)
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
