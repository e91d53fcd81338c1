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

import keras
from keras import ops


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
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < 1
    ):
        raise ValueError(
            "`block_size` must be a positive integer. "
            f"Received: block_size={block_size!r}"
        )
    if num_layers % block_size != 0 or num_layers // block_size < 2:
        raise ValueError(
            "`block_size` must divide the number of layers into at least two "
            f"blocks. Received: block_size={block_size}, "
            f"number of layers={num_layers}"
        )


def parameter_groups(layers, min_ndim=2):
    """Groups the trainable variables of structurally identical layers.

    Group `g` holds the `g`-th trainable variable (in `layer.trainable_weights`
    order) of every layer: the same role (Q, K, V, O, FFN W1, W2, ...) in
    each layer. Only variables with at least `min_ndim` dimensions are used
    (matrices by default: the paper's Q/K/V/O/W1/W2 groups; biases and norm
    scales, which may start at zero, are left out).
    """
    per_layer = [
        [v for v in layer.trainable_weights if len(v.shape) >= min_ndim]
        for layer in layers
    ]
    first = per_layer[0]
    for layer, variables in zip(layers, per_layer):
        shapes = [tuple(v.shape) for v in variables]
        if shapes != [tuple(v.shape) for v in first]:
            raise ValueError(
                "Every layer of `layers` must have the same trainable "
                f"variable shapes. Received: layer {layer.name!r} has "
                f"{shapes}, layer {layers[0].name!r} has "
                f"{[tuple(v.shape) for v in first]}"
            )
    if not first:
        raise ValueError(
            f"`layers` have no trainable variable with >= {min_ndim} "
            f"dimensions. Received: min_ndim={min_ndim}"
        )
    return [list(group) for group in zip(*per_layer)]


@keras.saving.register_keras_serializable(package="keras_gr")
class LoopingRegularizer(keras.regularizers.Regularizer):
    """Pulls consecutive blocks of a layer stack towards a looped model.

    Implements `lambda * (1 - mean_G R_G(k))` (module docstring). Mechanism
    (the paper leaves it to the framework): the regulariser is a
    `keras.regularizers.Regularizer` that `attach()` installs as the
    `regularizer` of one variable of the stack (the first layer's first
    group; any regulariser already there is kept and summed). Keras then adds
    it to `model.losses`, i.e. to the training loss of compiled `fit` on
    every backend, recomputed at every step. It reads all the stack's
    variables through `variable.value`, which inside JAX's stateless training
    step returns the traced current values, so the gradient reaches every
    layer. Attachments are not saved by `.keras` serialization: call
    `attach()` again after loading to keep regularising.

    Args:
        layers: the `L` layers of the non-looped stack, in depth order, all
            with the same trainable variable shapes (e.g. a keras-hub
            backbone's `transformer_layers`). They must be built.
        block_size: `k`, the size of a block; must divide `L` into at least
            two blocks.
        strength: `lambda`. Defaults to `10.0` (the paper's).
        min_ndim: only variables with at least this many dimensions form
            groups. Defaults to `2` (weight matrices).

    Example:

    ```python
    reg = LoopingRegularizer(backbone.transformer_layers, block_size=2)
    reg.attach()
    model.compile(...); model.fit(...)   # loss includes the regulariser
    reg.similarity()                     # mean_G R_G(k), rises during fit
    ```
    """

    def __init__(self, layers, block_size, strength=10.0, min_ndim=2):
        layers = list(layers)
        _validate_block_size(len(layers), block_size)
        for layer in layers:
            if not layer.built:
                raise ValueError(
                    "Every layer of `layers` must be built before the "
                    f"regulariser is created. Received: layer {layer.name!r} "
                    "is not built"
                )
        self.layers = layers
        self.block_size = block_size
        self.strength = float(strength)
        self.min_ndim = min_ndim
        self.groups = parameter_groups(layers, min_ndim)
        self._previous = None
        self._anchor = None

    def __call__(self, x=None):
        loss = looping_regularization(
            [[v.value for v in g] for g in self.groups],
            self.block_size,
            self.strength,
        )
        if self._previous is not None and x is not None:
            loss = loss + self._previous(x)
        return loss

    def similarity(self):
        """`mean_G R_G(k)` at the current weights (a float)."""
        values = [
            block_cosine_similarity([v.value for v in g], self.block_size)
            for g in self.groups
        ]
        return float(ops.convert_to_numpy(ops.mean(ops.stack(values))))

    def attach(self):
        """Installs the regulariser on the stack (returns `self`)."""
        anchor = self.groups[0][0]
        if anchor.regularizer is self:
            return self
        self._previous = anchor.regularizer
        anchor.regularizer = self
        self._anchor = anchor
        return self

    def detach(self):
        """Removes the regulariser (restoring any previous one)."""
        if self._anchor is not None:
            self._anchor.regularizer = self._previous
            self._anchor = None
            self._previous = None
        return self

    def get_config(self):
        # The layers are live objects: the configuration records the
        # hyper-parameters only; rebuild with the layers of the new model.
        return {
            "block_size": self.block_size,
            "strength": self.strength,
            "min_ndim": self.min_ndim,
        }
