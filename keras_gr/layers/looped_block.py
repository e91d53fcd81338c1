"""LoopedBlock: a block of layers applied several times with shared weights."""

import inspect

import keras
import numpy as np
from keras import ops


def _validate_num_loops(num_loops, name="num_loops"):
    """Returns `num_loops` as a Python `int` (NumPy integers accepted: the
    count fixes the unrolled graph, so it must be concrete, never a
    tensor); raises `ValueError` unless it is an integer `>= 1`."""
    if (
        isinstance(num_loops, bool)
        or not isinstance(num_loops, (int, np.integer))
        or num_loops < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive integer (>= 1). "
            f"Received: {name}={num_loops!r}"
        )
    return int(num_loops)


def _accepted_kwargs(layer):
    """Names of `layer.call` keyword arguments, and whether it has **kwargs."""
    params = inspect.signature(layer.call).parameters
    names = set()
    var_keyword = False
    for i, (name, param) in enumerate(params.items()):
        if param.kind == param.VAR_KEYWORD:
            var_keyword = True
        elif i > 0 and param.kind != param.VAR_POSITIONAL:
            names.add(name)
    return names, var_keyword


def _output_shape(layer, shape):
    try:
        return tuple(layer.compute_output_shape(shape))
    except NotImplementedError:
        spec = layer.compute_output_spec(keras.KerasTensor(shape))
        return tuple(spec.shape)


@keras.saving.register_keras_serializable(package="keras_gr")
class LoopedBlock(keras.layers.Layer):
    """Applies a block of `k` layers `num_loops` times with shared weights.

    A looped model `(k (x) L)` of "Reasoning with Latent Thoughts: On the
    Power of Looped Transformers" (Saunshi, Dikkala, Li, Kumar, Reddi;
    ICLR 2025, arXiv 2502.17416): the same `k` layers `f_1 .. f_k` are
    applied `L` times, so the trainable parameters are those of the block
    while the compute grows with `L`:

    ```
    h_0 = 0
    h_t = f_k(... f_1(h_{t-1} + x) ...)   (input injection)
    h_t = f_k(... f_1(h_{t-1}) ...), h_0 = x   (default, the paper's vanilla
                                                looped model)
    ```

    With `input_injection=True` the block input `x` is added to the state at
    every loop (the variant of "Looped Transformers are Better at Learning
    Learning Algorithms", Yang et al., arXiv 2311.12424). The paper does not
    fix the form: here it is an addition *before* each application, with
    `h_0 = 0`, so the first loop sees exactly `x` and no extra parameters are
    introduced.

    Each layer must map a tensor to one of the same shape (e.g. keras-hub
    `TransformerEncoder` / `TransformerDecoder`, which compute `x + f(x)`
    themselves; wrap a plain sublayer in a residual if you need one). The
    block is unrolled in Python (`num_loops` is static), which keeps every
    intermediate available, works with any layer and is jit-compilable on
    every backend.

    Args:
        layers: a Keras layer or a list of Keras layers (the block `f_1 ..
            f_k`), applied in order. Serialised layer configs (dicts, as
            written by `keras.layers.serialize`) are accepted too and are
            deserialised. If `dtype` is given explicitly, sublayers that are
            not built yet are switched to that dtype policy (as sublayers a
            Keras layer creates itself get `dtype=self.dtype_policy`); built
            sublayers keep theirs.
        num_loops: number of applications `L` of the block. Defaults to `1`.
        input_injection: whether to add the block input to the state before
            every loop. Defaults to `False`.
        return_all_loops: whether to return a Python list with the output of
            every loop (`[h_1, ..., h_L]`, each of the input's shape) instead of
            the last one only. Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: the tensor to transform.
        num_loops: optional Python int overriding the constructor's
            `num_loops` for this call (e.g. more loops at inference than in
            training).
        mask: optional Keras mask, passed to every sublayer whose `call`
            accepts `mask`, and returned unchanged as the output mask.
        training: passed to sublayers that accept it.
        **block_kwargs: further keyword arguments (e.g. `padding_mask`,
            `attention_mask`, `decoder_padding_mask`) passed to every
            sublayer whose `call` accepts them (or has `**kwargs`); an
            argument that no sublayer accepts raises a `ValueError`.

    Returns:
        A tensor of the input's shape, or the list of every loop's output if
        `return_all_loops=True`.

    Example:

    ```python
    import keras_hub
    block = [
        keras_hub.layers.TransformerEncoder(intermediate_dim=64, num_heads=2)
        for _ in range(2)
    ]
    looped = keras_gr.layers.LoopedBlock(block, num_loops=6)   # 2 (x) 6
    y = looped(x)                     # x: (batch, seq, dim)
    y_more = looped(x, num_loops=12)  # deeper at inference, same weights
    ```

    References:
        - Saunshi et al., "Reasoning with Latent Thoughts: On the Power of
          Looped Transformers", ICLR 2025, arXiv 2502.17416.
    """

    def __init__(
        self,
        layers,
        num_loops: int = 1,
        input_injection: bool = False,
        return_all_loops: bool = False,
        **kwargs,
    ):
        explicit_dtype = kwargs.get("dtype") is not None
        super().__init__(**kwargs)
        if isinstance(layers, (keras.layers.Layer, dict)):
            layers = [layers]
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(
                "`layers` must be a Keras layer or a non-empty list of Keras "
                f"layers. Received: layers={layers!r}"
            )
        block = []
        for layer in layers:
            if isinstance(layer, dict):
                layer = keras.layers.deserialize(layer)
            if not isinstance(layer, keras.layers.Layer):
                raise ValueError(
                    "Every entry of `layers` must be a Keras layer. "
                    f"Received: layers entry {layer!r}"
                )
            if explicit_dtype and not layer.built:
                layer.dtype_policy = self.dtype_policy
            block.append(layer)
        self.block_layers = block
        self.num_loops = _validate_num_loops(num_loops)
        self.input_injection = bool(input_injection)
        self.return_all_loops = bool(return_all_loops)
        self.supports_masking = True
        self._call_kwargs = [_accepted_kwargs(layer) for layer in block]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.block_layers:
            if not layer.built:
                layer.build(shape)
            out_shape = _output_shape(layer, shape)
            if len(out_shape) != len(shape) or any(
                a is not None and b is not None and a != b
                for a, b in zip(out_shape, shape)
            ):
                raise ValueError(
                    "Every layer of `layers` must return a tensor of its "
                    f"input's shape. Received: layer {layer.name!r} maps "
                    f"shape {shape} to {out_shape}"
                )
        self.built = True

    def call(
        self,
        inputs,
        num_loops=None,
        mask=None,
        training=None,
        **block_kwargs,
    ):
        num_loops = self.num_loops if num_loops is None else num_loops
        _validate_num_loops(num_loops)
        self._check_block_kwargs(block_kwargs)
        outputs = []
        state = inputs
        for loop in range(num_loops):
            if self.input_injection and loop > 0:
                state = ops.add(state, inputs)
            state = self.apply_block(
                state, mask=mask, training=training, **block_kwargs
            )
            if tuple(state.shape) != tuple(inputs.shape):
                raise ValueError(
                    "The block of `layers` must return a tensor of its "
                    f"input's shape. Received: input shape {inputs.shape}, "
                    f"output shape {state.shape}"
                )
            outputs.append(state)
        return outputs if self.return_all_loops else outputs[-1]

    def apply_block(self, inputs, mask=None, training=None, **block_kwargs):
        """Applies the block's layers once, in order (one loop)."""
        x = inputs
        extra = dict(block_kwargs)
        if mask is not None:
            extra["mask"] = mask
        if training is not None:
            extra["training"] = training
        for layer, (names, var_keyword) in zip(
            self.block_layers, self._call_kwargs
        ):
            kwargs = {
                k: v for k, v in extra.items() if var_keyword or k in names
            }
            x = layer(x, **kwargs)
        return x

    def _check_block_kwargs(self, block_kwargs):
        for key in block_kwargs:
            if not any(
                var_keyword or key in names
                for names, var_keyword in self._call_kwargs
            ):
                raise ValueError(
                    f"No layer of the block accepts the call argument `{key}`. "
                    f"Received: {key}={block_kwargs[key]!r}"
                )

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.return_all_loops:
            return [shape] * self.num_loops
        return shape

    def compute_output_spec(self, inputs, num_loops=None, **kwargs):
        num_loops = self.num_loops if num_loops is None else num_loops
        _validate_num_loops(num_loops)
        specs = [
            keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
            for _ in range(num_loops if self.return_all_loops else 1)
        ]
        return specs if self.return_all_loops else specs[0]

    def compute_mask(self, inputs, mask=None):
        if self.return_all_loops and mask is not None:
            return [mask] * self.num_loops
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layers": [
                    keras.layers.serialize(layer) for layer in self.block_layers
                ],
                "num_loops": self.num_loops,
                "input_injection": self.input_injection,
                "return_all_loops": self.return_all_loops,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layers"] = [
            keras.layers.deserialize(layer) for layer in config["layers"]
        ]
        return cls(**config)
