"""RoutedGenerator: serve a pool of causal LMs through a router."""

from typing import Any

import numpy as np

from keras_gr._validation import check_integer
from keras_gr._validation import check_number
from keras_gr.models.routing.base_router import Router


class RoutedGenerator:
    """Routes each prompt of a batch to one LM of a pool and generates.

    The serving side of "Universal Model Routing for Efficient LLM
    Inference" (Jitkrittum et al., arXiv 2502.08773): the prompts are
    embedded (`embedder`), the router picks `argmin_h gamma(x, h) + lambda
    * cost(h)` per prompt among its pool, and every chosen model's
    `generate` is called once on its sub-batch (keeping the sub-batch in
    input order). The outputs come back in the input order with the cost
    spent, `sum_i cost(r(x_i))`.

    Sub-batches are bucketed so that a served stream compiles a bounded
    number of `generate` programs (keras-hub compiles one per batch shape:
    about 8 s per new size on JAX). A sub-batch of `n` prompts is padded,
    with copies of its last prompt whose outputs are dropped, to the
    smallest bucket size `>= n`; one larger than the largest bucket is cut
    into chunks of the largest bucket (the last chunk padded). With the
    default power-of-two buckets and batches of at most `B` prompts, each
    model's `generate` sees at most `floor(log2 B) + 1` distinct batch
    sizes (5 for `B = 16`), so at most that many programs per model and
    per set of `generate` arguments, at the price of at most 2x the rows
    actually generated. `bucket_sizes=None` turns padding off (one call
    per chosen model on exactly its prompts; one program per size).

    Models are `keras_hub.models.CausalLM`s (or anything with a
    `generate(list_of_prompts, **kwargs)` method returning one output per
    prompt); the pool may hold more models than the router knows, and a
    model added to the router with `add_model` is served as soon as it is
    in `models`. Not a Keras layer: it holds models and a router, each
    saved on its own.

    Args:
        models: dict name -> model; it must contain every name in
            `router.model_names`.
        router: a fitted `keras_gr.models.Router`.
        embedder: maps a list of prompts to `(n, embedding_dim)`
            embeddings: an object with `embed(texts)` (the
            `keras_gr.curation` embedders) or a callable.
        bucket_sizes: `"powers_of_two"` (1, 2, 4, ... without limit), an
            increasing list of batch sizes >= 1, or `None` (no padding).
            Defaults to `"powers_of_two"`.

    Example:

    >>> import numpy as np
    >>> from keras_gr.curation import FunctionEmbedder
    >>> from keras_gr.models import ZeroRouter
    >>> class Echo:
    ...     def __init__(self, tag):
    ...         self.tag = tag
    ...     def generate(self, prompts, max_length=None):
    ...         return [f"{self.tag}: {p}" for p in prompts]
    >>> router = ZeroRouter().fit_pool(
    ...     validation_embeddings=np.zeros((2, 1)),
    ...     validation_correctness=[[1, 1], [0, 1]], costs=[1.0, 5.0],
    ...     model_names=["small", "large"])
    >>> served = RoutedGenerator(
    ...     {"small": Echo("s"), "large": Echo("L")}, router,
    ...     FunctionEmbedder(lambda t: np.zeros((len(t), 1)), 1))
    >>> served.generate(["a", "b"], cost_weight=0.0)["outputs"]
    ['L: a', 'L: b']
    >>> served.generate(["a", "b"], cost_weight=1.0)["cost"]
    2.0
    """

    def __init__(
        self,
        models: dict,
        router: Router,
        embedder: Any,
        bucket_sizes: str | list[int] | None = "powers_of_two",
    ):
        if not isinstance(router, Router):
            raise ValueError(
                "`router` must be a keras_gr.models.Router. Received: "
                f"router={router!r}"
            )
        router._check_fitted()
        if not isinstance(models, dict) or not models:
            raise ValueError(
                "`models` must be a non-empty dict name -> model. Received: "
                f"models={models!r}"
            )
        self.models = models
        self.router = router
        self._check_models()
        if not (
            callable(getattr(embedder, "embed", None)) or callable(embedder)
        ):
            raise ValueError(
                "`embedder` must have an `embed(texts)` method or be "
                f"callable. Received: embedder={embedder!r}"
            )
        self.embedder = embedder
        self.bucket_sizes = self._check_buckets(bucket_sizes)

    def _check_models(self):
        """Every model of the router's pool (which may have grown with
        `add_model` since construction) must be in `models`."""
        names = list(self.router.model_names)
        missing = [n for n in names if n not in self.models]
        if missing:
            raise ValueError(
                "`models` must hold every model of the router's pool. "
                f"Received: models without {missing} (router pool: "
                f"{names}); add them to `models` after `router.add_model`"
            )
        for name in names:
            if not callable(getattr(self.models[name], "generate", None)):
                raise ValueError(
                    "`models` must map names to objects with a `generate` "
                    f"method. Received: models[{name!r}]={self.models[name]!r}"
                )

    @staticmethod
    def _check_buckets(bucket_sizes):
        if bucket_sizes is None or bucket_sizes == "powers_of_two":
            return bucket_sizes
        sizes = None
        if isinstance(bucket_sizes, (list, tuple)) and bucket_sizes:
            try:
                sizes = [check_integer("bucket_sizes", b) for b in bucket_sizes]
            except ValueError:
                sizes = None
        if sizes is None or any(b >= a for b, a in zip(sizes, sizes[1:])):
            raise ValueError(
                "`bucket_sizes` must be 'powers_of_two', None or an "
                "increasing list of integers >= 1. Received: "
                f"bucket_sizes={bucket_sizes!r}"
            )
        return sizes

    def _chunks(self, rows):
        """`rows` cut into `(rows, padded_size)` calls per the buckets."""
        n = len(rows)
        if self.bucket_sizes is None:
            return [(rows, n)]
        if self.bucket_sizes == "powers_of_two":
            return [(rows, 1 << (n - 1).bit_length())]
        largest = self.bucket_sizes[-1]
        chunks = [rows[i : i + largest] for i in range(0, n, largest)]
        return [
            (c, next(b for b in self.bucket_sizes if b >= len(c)))
            for c in chunks
        ]

    def embed(self, prompts) -> np.ndarray:
        """The router's view of the prompts, `(n, embedding_dim)`."""
        if callable(getattr(self.embedder, "embed", None)):
            return np.asarray(self.embedder.embed(prompts))
        return np.asarray(self.embedder(prompts))

    def route(self, prompts, cost_weight: float = 0.0) -> list[str]:
        """The name of the model each prompt is routed to."""
        prompts = self._check_prompts(prompts)
        choices = self.router.route(self.embed(prompts), cost_weight)
        return [self.router.model_names[int(c)] for c in choices]

    def generate(
        self, prompts, cost_weight: float = 0.0, **generate_kwargs
    ) -> dict:
        """Routes the prompts and generates with the chosen models.

        Args:
            prompts: a list of prompt strings.
            cost_weight: `lambda >= 0`. Defaults to `0.0`.
            **generate_kwargs: passed to every `generate` call (e.g.
                `max_length`).

        Returns:
            A dict with `outputs` (one per prompt, in input order),
            `models` (the chosen model's name per prompt), `cost` (total
            cost spent) and `average_cost`.
        """
        prompts = self._check_prompts(prompts)
        cost_weight = check_number("cost_weight", cost_weight, minimum=0.0)
        choices = self.router.route(self.embed(prompts), cost_weight)
        self._check_models()
        outputs = [None] * len(prompts)
        for index in np.unique(choices):
            name = self.router.model_names[int(index)]
            for rows, size in self._chunks(np.flatnonzero(choices == index)):
                batch = [prompts[i] for i in rows]
                batch += [batch[-1]] * (size - len(rows))
                result = self.models[name].generate(batch, **generate_kwargs)
                result = [result] if isinstance(result, str) else list(result)
                if len(result) != len(batch):
                    raise ValueError(
                        f"Model {name!r} returned {len(result)} outputs for "
                        f"{len(batch)} prompts."
                    )
                for i, out in zip(rows, result):
                    outputs[i] = out
        spent = self.router.costs[choices]
        return {
            "outputs": outputs,
            "models": [self.router.model_names[int(c)] for c in choices],
            "cost": float(np.sum(spent)),
            "average_cost": float(np.mean(spent)),
        }

    @staticmethod
    def _check_prompts(prompts):
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in list(prompts)]
        if not prompts:
            raise ValueError(
                "`prompts` must be a non-empty list of strings. Received: "
                "prompts=[]"
            )
        return prompts
