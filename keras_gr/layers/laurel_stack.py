"""A helper that builds a stack of LAuReL residual joins (feeds PA)."""

from keras_gr.layers.laurel import Laurel


class LaurelStack:
    """Owns the `Laurel` joins of a stack of blocks and their history.

    LAuReL-PA ("LAuReL: Learned Augmented Residual Layer", arXiv 2411.07501)
    mixes the inputs of earlier blocks into the residual: a property of the
    *stack*, not of one block. `LaurelStack` keeps the list of block inputs
    `x_0, x_1, ...` and passes the ones each join needs, so a ResNet or a
    transformer stack is written without threading lists by hand. It works
    on symbolic tensors (functional API) and on eager tensors.

    Block `i` gets a `Laurel` layer with `num_activations = min(k, i + 1)`
    (reconstructed: the first blocks have fewer predecessors, so they mix
    fewer activations rather than zero padding). Non-PA variants ignore the
    history. The joins are created on first use and reused after `reset()`,
    so the same stack can be replayed (e.g. inside a subclassed model's
    `call`, with `stack.layers` assigned to an attribute for tracking).

    Args:
        variant: the `Laurel` variant of every join. Defaults to `"rw_lr"`.
        name: prefix of the joins' layer names. Defaults to `"laurel"`.
        **laurel_kwargs: other `Laurel` arguments (`rank`,
            `num_activations`, `rw_parametrization`, `per_channel`, ...).

    Example:

    >>> import keras
    >>> stack = LaurelStack(variant="rw_lr_pa", rank=4, num_activations=3)
    >>> x = inputs = keras.Input((16,))
    >>> for _ in range(4):
    ...     x = stack.join(x, keras.layers.Dense(16, activation="relu")(x))
    >>> model = keras.Model(inputs, x)
    >>> len(stack.layers), tuple(model.output.shape)
    (4, (None, 16))
    """

    def __init__(
        self, variant: str = "rw_lr", name: str = "laurel", **laurel_kwargs
    ) -> None:
        # Validate the arguments once, eagerly, by building a throwaway join.
        Laurel(variant=variant, **laurel_kwargs)
        self.variant = variant
        self.name = name
        self.laurel_kwargs = dict(laurel_kwargs)
        self.num_activations = laurel_kwargs.get("num_activations", 3)
        self.layers = []
        self.reset()

    def reset(self):
        """Forgets the history; the next `join` is block 0 again."""
        self._history = []

    @property
    def depth(self):
        """Number of joins applied since the last `reset()`."""
        return len(self._history)

    def _layer(self, index):
        if index < len(self.layers):
            return self.layers[index]
        kwargs = dict(self.laurel_kwargs)
        if self.variant.endswith("pa"):
            kwargs["num_activations"] = min(self.num_activations, index + 1)
        layer = Laurel(
            variant=self.variant, name=f"{self.name}_{index}", **kwargs
        )
        self.layers.append(layer)
        return layer

    def join(self, x, fx):
        """Returns the LAuReL join of block input `x` and block output `fx`.

        `x` is recorded as this block's input `x_i`; the PA variants also
        receive the earlier inputs `x_{i-1}, ..., x_{i-k+1}`.
        """
        index = len(self._history)
        layer = self._layer(index)
        previous = self._history[::-1][: layer.num_inputs - 2]
        self._history.append(x)
        return layer([x, fx] + previous)

    def apply(self, block, x, **kwargs):
        """Shorthand for `join(x, block(x, **kwargs))`."""
        return self.join(x, block(x, **kwargs))
