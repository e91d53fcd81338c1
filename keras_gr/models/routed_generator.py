"""RoutedGenerator: serve a pool of causal LMs through a router."""

from typing import Any

import numpy as np

from keras_gr._validation import check_number
from keras_gr.models.base_router import Router


class RoutedGenerator:
    """Routes each prompt of a batch to one LM of a pool and generates.

    The serving side of "Universal Model Routing for Efficient LLM
    Inference" (Jitkrittum et al., arXiv 2502.08773): the prompts are
    embedded (`embedder`), the router picks `argmin_h gamma(x, h) + lambda
    * cost(h)` per prompt among its pool, and every chosen model's
    `generate` is called once on its sub-batch (keeping the sub-batch in
    input order). The outputs come back in the input order with the cost
    spent, `sum_i cost(r(x_i))`.

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

    Example:

    >>> import numpy as np
    >>> from keras_gr.curation import FunctionEmbedder
    >>> from keras_gr.models import ZeroRouter
    >>> class Echo:
    ...     def __init__(self, tag):
    ...         self.tag = tag
    ...     def generate(self, prompts, max_length=None):
    ...         return [f"{self.tag}: {p}" for p in prompts]
    >>> router = ZeroRouter().fit(
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

    def __init__(self, models: dict, router: Router, embedder: Any):
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
        missing = [n for n in router.model_names if n not in models]
        if missing:
            raise ValueError(
                "`models` must hold every model of the router's pool. "
                f"Received: models without {missing} (router pool: "
                f"{list(router.model_names)})"
            )
        for name in router.model_names:
            if not callable(getattr(models[name], "generate", None)):
                raise ValueError(
                    "`models` must map names to objects with a `generate` "
                    f"method. Received: models[{name!r}]={models[name]!r}"
                )
        if not (
            callable(getattr(embedder, "embed", None)) or callable(embedder)
        ):
            raise ValueError(
                "`embedder` must have an `embed(texts)` method or be "
                f"callable. Received: embedder={embedder!r}"
            )
        self.models = models
        self.router = router
        self.embedder = embedder

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
        outputs = [None] * len(prompts)
        for index in np.unique(choices):
            rows = np.flatnonzero(choices == index)
            name = self.router.model_names[int(index)]
            result = self.models[name].generate(
                [prompts[i] for i in rows], **generate_kwargs
            )
            result = [result] if isinstance(result, str) else list(result)
            if len(result) != len(rows):
                raise ValueError(
                    f"Model {name!r} returned {len(result)} outputs for "
                    f"{len(rows)} prompts."
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
