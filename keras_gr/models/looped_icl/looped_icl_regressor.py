"""Looped (and non-looped deep) linear-attention models for in-context
linear regression."""

from typing import Any

import keras
from keras import ops

from keras_gr._validation import check_integer
from keras_gr.layers.linear_attention import LinearAttention
from keras_gr.layers.looped_block import LoopedBlock


def query_prediction(z: Any) -> Any:
    """The prediction read at the query's `y` slot of token-major prompts:
    `-Z[query, y]`, shape `(batch, 1)`.

    The minus sign is the sign convention of `LinearAttention` (the slot
    holds `-<w_L, x_q>` under the gradient-descent construction).

    Example:

    >>> import numpy as np
    >>> z = np.arange(12, dtype="float32").reshape(1, 3, 4)
    >>> np.asarray(query_prediction(z)).tolist()
    [[-11.0]]
    """
    return -z[:, -1, -1:]


@keras.saving.register_keras_serializable(package="keras_gr")
class LoopedICLRegressor(keras.Model):
    """Linear-attention transformer for in-context linear regression.

    The models of "On the Role of Depth and Looping for In-Context Learning
    with Task Diversity" (Gatmiry, Saunshi, Reddi, Jegelka, Kumar; arXiv
    2410.21698):

    - `looped=True` (default): one `keras_gr.layers.LinearAttention` layer
      `(P, Q)` applied `depth` times with shared weights, a
      `keras_gr.layers.LoopedBlock` (`1 (x) depth`); the parameter count does
      not depend on `depth`, and `call(..., depth=l)` runs any number of
      loops `l`, also beyond the training depth.
    - `looped=False`: the non-looped deep baseline, `depth` distinct layers
      applied once each (a `LoopedBlock` of `depth` layers with
      `num_loops=1`, i.e. `depth (x) 1`); `call(..., depth=l)` with
      `l <= depth` reads the prediction after the first `l` layers.

    The prediction is `-Z_L[query, y]` (`query_prediction`); train with a
    squared loss on it, i.e. on the final loop's prediction only, e.g.
    `model.compile(loss="mse")` and `fit(prompts, targets)` with the arrays
    of `keras_gr.data.icl_regression_problems`.

    Training recipe (measured, not from the paper, which gives none):
    Adam with a 5% linear warm-up and cosine decay to 1% of the peak,
    `global_clipnorm=1`, keeping the best-validation weights. The peak
    learning rate matters most for the unrestricted looped form, whose loop
    composes products of its own weights: at kappa = 64, d = 5, depth 4,
    1200 steps of 128, seeds 10-14, a peak of `1e-2` trained every one of
    the 5 seeds in `compile` / `fit` on JAX and on TensorFlow, and in a
    raw-JAX reference trainer, to the same loss; at `3e-2`, `compile` /
    `fit` lost 2 (JAX) and 3 (TensorFlow) of the 5 seeds to divergence or
    a stall (a test loss not finite or above 3x the median of both
    trainers' seeds), and the raw-JAX trainer lost 1 or 2 of the same
    seeds (one seed ends at 985, one at 0.50, near the threshold that the
    median sets); see `benchmarks/looped_icl.py --part stability` and
    `benchmarks/results/looped_icl_stability_<backend>.md`. Use `1e-2` for
    `looped=True, restricted=False`; the restricted forms tolerate `3e-2`
    to `1e-1`. The deep unrestricted form (`looped=False,
    restricted=False`) trained all 5 seeds at `1e-2` on both backends and
    at `3e-2` on TensorFlow and in raw JAX, but `compile` / `fit` on JAX
    lost 2 of the 5 at `3e-2`: keep the best-validation
    weights and train more than one seed.

    Args:
        depth: number of loops (looped) or of distinct layers (non-looped)
            `L`. Defaults to `5`.
        looped: whether the layers share weights. Defaults to `True`.
        restricted: the `LinearAttention` form. Defaults to `True`.
        init_stddev: the layers' initial noise. Defaults to `0.01`.
        seed: optional seed of the initial noise (layer `i` gets `seed + 2i`).
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Call arguments:
        prompts: `(batch, n + 1, d + 1)` token-major prompts.
        depth: optional Python int, the number of loops (looped) or of
            leading layers (non-looped, at most `depth`) for this call.
        return_all_depths: if `True`, return the predictions after every
            loop / layer `1 .. depth`, stacked as `(batch, depth)`.

    Returns:
        `(batch, 1)` predictions (or `(batch, depth)` with
        `return_all_depths=True`).

    Example:

    >>> from keras_gr.data import icl_regression_problems
    >>> data = icl_regression_problems(64, dim=5, kappa=10)
    >>> model = LoopedICLRegressor(depth=5)
    >>> model.compile(optimizer="adam", loss="mse")
    >>> _ = model.fit(data["prompts"], data["targets"], epochs=1, verbose=0)
    >>> deeper = model(data["prompts"], depth=20)  # more loops at test time
    >>> tuple(deeper.shape)
    (64, 1)

    References:
        - Gatmiry et al., "On the Role of Depth and Looping for In-Context
          Learning with Task Diversity", arXiv 2410.21698.
    """

    def __init__(
        self,
        depth: int = 5,
        looped: bool = True,
        restricted: bool = True,
        init_stddev: float = 0.01,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.depth = check_integer("depth", depth)
        if not isinstance(looped, bool):
            raise ValueError(
                f"`looped` must be a bool. Received: looped={looped!r}"
            )
        self.looped = looped
        self.restricted = restricted
        self.init_stddev = init_stddev
        self.seed = seed
        num_layers = 1 if looped else depth
        self.attention_layers = [
            LinearAttention(
                restricted=restricted,
                init_stddev=init_stddev,
                seed=None if seed is None else seed + 2 * i,
                dtype=self.dtype_policy,
                name=f"linear_attention_{i}",
            )
            for i in range(num_layers)
        ]
        self.block = LoopedBlock(
            self.attention_layers,
            num_loops=depth if looped else 1,
            dtype=self.dtype_policy,
            name="looped_block",
        )

    def build(self, input_shape):
        self.block.build(tuple(input_shape))
        self.built = True

    def call(self, prompts, depth=None, return_all_depths=False):
        if depth is not None:
            check_integer("depth", depth)
            if not self.looped and depth > self.depth:
                raise ValueError(
                    "A non-looped model has only `depth` distinct layers. "
                    f"Received: depth={depth} > {self.depth}"
                )
        if not return_all_depths:
            if self.looped:
                z = self.block(prompts, num_loops=depth)
            elif depth is None or depth == self.depth:
                z = self.block(prompts)
            else:
                z = prompts
                for layer in self.attention_layers[:depth]:
                    z = layer(z)
            return query_prediction(z)
        steps = self.depth if depth is None else depth
        z = prompts
        predictions = []
        for i in range(steps):
            if self.looped:
                z = self.block.apply_block(z)
            else:
                z = self.attention_layers[i](z)
            predictions.append(query_prediction(z))
        return ops.concatenate(predictions, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "depth": self.depth,
                "looped": self.looped,
                "restricted": self.restricted,
                "init_stddev": self.init_stddev,
                "seed": self.seed,
            }
        )
        return config
