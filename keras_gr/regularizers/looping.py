"""The looping-inspired regulariser of the looped-transformer paper.

"Reasoning with Latent Thoughts: On the Power of Looped Transformers"
(Saunshi, Dikkala, Li, Kumar, Reddi; ICLR 2025, arXiv 2502.17416),
Section "looping-inspired regularization": a *non-looped* stack of `L`
layers split into `L / k` blocks of `k` layers is pulled towards the looped
model `(k (x) L/k)` by rewarding cosine similarity between corresponding
weights of consecutive blocks:

```
R_G(k) = 1/(L - k) sum_{i=0}^{L/k-2} sum_{j=0}^{k-1}
             cos(theta_G[i k + j], theta_G[(i+1) k + j])
loss  += lambda * (1 - mean_G R_G(k))
```

(the paper prints "+ lambda R"; the sign that pulls blocks together is the
one implemented). lambda = 10 with k = 4 is the paper's setting.
"""

from collections.abc import Sequence

import keras
from keras import ops

from keras_gr._validation import check_integer
from keras_gr._validation import check_number


def cosine_similarity(a, b, epsilon=1e-12):
    """Cosine between two tensors of the same shape, flattened (a scalar).

    `epsilon` bounds the denominator away from 0 (two zero tensors give 0).
    """
    a = ops.reshape(ops.cast(a, "float32"), (-1,))
    b = ops.reshape(ops.cast(b, "float32"), (-1,))
    denominator = ops.sqrt(
        ops.maximum(ops.sum(a * a) * ops.sum(b * b), epsilon**2)
    )
    return ops.sum(a * b) / denominator


def block_cosine_similarity(group, block_size):
    """`R_G(k)`: mean cosine between corresponding members of consecutive
    blocks, for one parameter group `group = [theta[0], ..., theta[L-1]]`."""
    num_layers = len(group)
    _validate_block_size(num_layers, block_size)
    terms = []
    for i in range(num_layers // block_size - 1):
        for j in range(block_size):
            terms.append(
                cosine_similarity(
                    group[i * block_size + j],
                    group[(i + 1) * block_size + j],
                )
            )
    return ops.sum(ops.stack(terms)) / (num_layers - block_size)


def looping_regularization(groups, block_size, strength):
    """`strength * (1 - mean_G R_G(k))` over a list of parameter groups."""
    similarities = [block_cosine_similarity(g, block_size) for g in groups]
    return strength * (1.0 - ops.mean(ops.stack(similarities)))


def _validate_block_size(num_layers, block_size):
    check_integer("block_size", block_size, 1)
    if num_layers % block_size != 0 or num_layers // block_size < 2:
        raise ValueError(
            "`block_size` must divide the number of layers into at least two "
            f"blocks. Received: block_size={block_size}, "
            f"number of layers={num_layers}"
        )


def parameter_groups(layers, min_ndim=2):
    """Groups the weights of structurally identical layers by role.

    Group `g` holds the `g`-th weight (in `layer.weights` order, keeping
    weights with at least `min_ndim` dimensions) of every layer: the same
    role (Q, K, V, O, FFN W1, W2, ...) in each layer. Matrices by default:
    the paper's Q/K/V/O/W1/W2 groups; biases and norm scales, which may
    start at zero, are left out. A role is kept when its weight is trainable
    in at least one layer (or in none, when every layer is frozen), so
    freezing a layer does not change the groups: a frozen layer still
    belongs to the looped structure and still pulls its neighbours. Roles
    created non-trainable in every layer (e.g. moving statistics) are left
    out while any layer is trainable.
    """
    per_layer = [
        [v for v in layer.weights if len(v.shape) >= min_ndim]
        for layer in layers
    ]
    first = per_layer[0]
    reference = [tuple(v.shape) for v in first]
    for layer, variables in zip(layers, per_layer):
        shapes = [tuple(v.shape) for v in variables]
        if shapes != reference:
            raise ValueError(
                "Every layer of `layers` must have the same trainable "
                f"variable shapes. Received: layer {layer.name!r} has "
                f"{shapes}, layer {layers[0].name!r} has {reference}"
            )
    groups = [list(group) for group in zip(*per_layer)]
    any_trainable = any(v.trainable for g in groups for v in g)
    if any_trainable:
        groups = [g for g in groups if any(v.trainable for v in g)]
    if not groups:
        raise ValueError(
            f"`layers` have no trainable variable with >= {min_ndim} "
            f"dimensions. Received: min_ndim={min_ndim}"
        )
    return groups


def _sublayers(layer):
    """`layer` and every layer nested in it through the public `.layers`
    of Keras models (depth first)."""
    found = [layer]
    for child in getattr(layer, "layers", None) or []:
        found.extend(_sublayers(child))
    return found


class _Anchor:
    """The callable installed as `variable.regularizer` by `attach()`.

    Keras adds `variable.regularizer(value)` to `model.losses` for every
    *trainable* variable. `attach()` installs one anchor on a weight of each
    layer of the stack; only the first anchor whose variable is trainable
    at the time the losses are collected returns the looping term (the
    others return only the regulariser they replaced), so the term is
    counted once and does not vanish when some layers are frozen.
    """

    def __init__(self, owner, variable, previous):
        self.owner = owner
        self.variable = variable
        self.previous = previous

    def __call__(self, x):
        loss = None
        if self.previous is not None:
            loss = self.previous(x)
        if self.owner._active_anchor() is self:
            term = self.owner()
            loss = term if loss is None else loss + term
        if loss is None:
            loss = ops.zeros((), dtype="float32")
        return loss


@keras.saving.register_keras_serializable(package="keras_gr")
class LoopingRegularizer(keras.regularizers.Regularizer):
    """Pulls consecutive blocks of a layer stack towards a looped model.

    "Reasoning with Latent Thoughts: On the Power of Looped Transformers"
    (Saunshi et al., ICLR 2025, arXiv 2502.17416). Implements

    ```
    loss += lambda * (1 - mean_G R_G(k)),
    R_G(k) = 1/(L - k) sum_i sum_j cos(theta_G[i k + j], theta_G[(i+1) k + j])
    ```

    (module docstring). Mechanism (the paper leaves it to the framework):
    `attach()` installs a small callable as the `regularizer` of the first
    group's weight in *every* layer of the stack (any regulariser already
    there is kept and summed). Keras adds the regularisers of trainable
    variables to `model.losses`, i.e. to the training loss of compiled
    `fit` on every backend, recomputed at every step; the first layer whose
    anchor weight is trainable carries the term, so freezing layers (even
    the first) never drops it. It reads all the stack's weights through
    `variable.value`, which inside JAX's stateless training step returns
    the traced current values, so the gradient reaches every trainable
    layer.

    Serialization: `get_config()` records the hyper-parameters and the
    names of the layers; `from_config()` (and so
    `keras.regularizers.deserialize`) returns an *unbound* regulariser,
    which raises on use until `bind(...)` gives it the layers of the new
    model (by list, or by a model in which the recorded names are looked
    up). Attachments are not saved by `.keras` files (they live on the
    variables): call `bind(...).attach()` again after loading.

    Args:
        layers: the `L` layers of the non-looped stack, in depth order, all
            with the same weight shapes (e.g. a keras-hub backbone's
            `transformer_layers`), built. `None` makes an unbound
            regulariser (see `bind`). Defaults to `None`.
        block_size: `k`, the size of a block; must divide `L` into at least
            two blocks. Required.
        strength: `lambda >= 0`. Defaults to `10.0` (the paper's).
        min_ndim: only weights with at least this many dimensions form
            groups. Defaults to `2` (weight matrices).
        layer_names: names of the layers, used by `bind(model)`; taken
            from `layers` when they are given. Defaults to `None`.

    Example:

    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> stack = [keras.layers.Dense(4, name=f"d{i}") for i in range(4)]
    >>> x = inputs
    >>> for layer in stack:
    ...     x = layer(x)
    >>> model = keras.Model(inputs, x)
    >>> reg = LoopingRegularizer(stack, block_size=2).attach()
    >>> total = float(keras.ops.sum(keras.ops.stack(model.losses)))
    >>> abs(total - 10.0 * (1.0 - reg.similarity())) < 1e-4
    True
    >>> config = keras.regularizers.serialize(reg)
    >>> again = keras.regularizers.deserialize(config).bind(model)
    >>> abs(again.similarity() - reg.similarity()) < 1e-6
    True
    """

    def __init__(
        self,
        layers: Sequence[keras.layers.Layer] | keras.layers.Layer | None = None,
        block_size: int | None = None,
        strength: float = 10.0,
        min_ndim: int = 2,
        layer_names: list[str] | None = None,
    ) -> None:
        self.block_size = check_integer("block_size", block_size, 1)
        self.strength = check_number("strength", strength, minimum=0.0)
        self.min_ndim = check_integer("min_ndim", min_ndim, 0)
        self.layer_names = None if layer_names is None else list(layer_names)
        self.layers = None
        self.groups = None
        self._anchors = []
        if layers is not None:
            self.bind(layers)

    @property
    def bound(self) -> bool:
        """Whether the regulariser has its layers (see `bind`)."""
        return self.layers is not None

    def bind(self, layers):
        """Gives the regulariser its layers; returns `self`.

        Args:
            layers: a list of built layers (the stack), or a Keras model /
                layer in which the layers named `self.layer_names` (as
                recorded by `get_config`) are looked up, recursively through
                nested models' `.layers`.
        """
        if self._anchors:
            raise ValueError(
                "Call `detach()` before binding the regulariser to other "
                f"layers. Received: layers={layers!r}"
            )
        if isinstance(layers, keras.layers.Layer):
            layers = self._find_layers(layers)
        layers = list(layers)
        _validate_block_size(len(layers), self.block_size)
        for layer in layers:
            if not isinstance(layer, keras.layers.Layer):
                raise ValueError(
                    "Every entry of `layers` must be a Keras layer. "
                    f"Received: layers entry {layer!r}"
                )
            if not layer.built:
                raise ValueError(
                    "Every layer of `layers` must be built before the "
                    f"regulariser is bound. Received: layer {layer.name!r} "
                    "is not built"
                )
        self.groups = parameter_groups(layers, self.min_ndim)
        self.layers = layers
        self.layer_names = [layer.name for layer in layers]
        return self

    def _find_layers(self, model):
        if not self.layer_names:
            raise ValueError(
                "`bind(model)` needs the layer names recorded by "
                "`get_config()`; pass the list of layers instead. Received: "
                f"layer_names={self.layer_names!r}"
            )
        by_name = {}
        for layer in _sublayers(model):
            by_name.setdefault(layer.name, layer)
        missing = [n for n in self.layer_names if n not in by_name]
        if missing:
            raise ValueError(
                "`layers` must contain every layer named in `layer_names`. "
                f"Received: a model without {missing}"
            )
        return [by_name[n] for n in self.layer_names]

    def _check_bound(self):
        if self.layers is None:
            raise ValueError(
                "This `LoopingRegularizer` has no layers (it was created "
                "with `layers=None` or deserialised): call `bind(layers)` "
                "first. Received: layers=None"
            )

    def __call__(self, x=None):
        self._check_bound()
        return looping_regularization(
            [[v.value for v in g] for g in self.groups],
            self.block_size,
            self.strength,
        )

    def similarity(self) -> float:
        """`mean_G R_G(k)` at the current weights (a float)."""
        self._check_bound()
        values = [
            block_cosine_similarity([v.value for v in g], self.block_size)
            for g in self.groups
        ]
        return float(ops.convert_to_numpy(ops.mean(ops.stack(values))))

    def attach(self):
        """Installs the regulariser on the stack (returns `self`)."""
        self._check_bound()
        if self._anchors:
            return self
        for variable in self.groups[0]:
            anchor = _Anchor(self, variable, variable.regularizer)
            variable.regularizer = anchor
            self._anchors.append(anchor)
        return self

    def _active_anchor(self):
        for anchor in self._anchors:
            if anchor.variable.trainable:
                return anchor
        return None

    def detach(self):
        """Removes the regulariser (restoring any previous ones)."""
        for anchor in reversed(self._anchors):
            anchor.variable.regularizer = anchor.previous
        self._anchors = []
        return self

    def get_config(self):
        # The layers are live objects: the configuration records the
        # hyper-parameters and the layer names (`bind(model)` finds them).
        return {
            "block_size": self.block_size,
            "strength": self.strength,
            "min_ndim": self.min_ndim,
            "layer_names": self.layer_names,
        }

    @classmethod
    def from_config(cls, config):
        return cls(layers=None, **config)
