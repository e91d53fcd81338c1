"""LoopedBlock: a block of layers applied several times with shared weights."""

import inspect
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_gr._validation import check_bool
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer

LOOP_MODES = ("unroll", "scan")


def _validate_num_loops(num_loops, name="num_loops"):
    """Returns `num_loops` as a Python `int` (NumPy integers accepted: the
    count fixes the graph, so it must be concrete, never a tensor); raises
    `ValueError` unless it is an integer `>= 1`."""
    return check_integer(name, num_loops, 1)


def _run_loop(one_loop, init, num_loops, collect):
    """Applies `one_loop` `num_loops` times to `init` as ONE traced loop
    body (the compiled program does not grow with `num_loops`).

    Returns the last state, or (with `collect`) the states of every loop
    stacked on a new leading axis. On JAX the loop is `ops.fori_loop` /
    `ops.scan` (`lax.scan` with a static length: reverse-differentiable);
    on other backends an `ops.while_loop` with `maximum_iterations` (needed
    by TensorFlow's XLA for the gradient's accumulators).
    """
    if keras.backend.backend() == "jax":
        if collect:

            def step(state, _):
                state = one_loop(state)
                return state, state

            return ops.scan(step, init, length=num_loops)[1]
        return ops.fori_loop(0, num_loops, lambda i, s: one_loop(s), init)
    if collect:
        # `scatter_update` (not `slice_update`: TensorFlow has no gradient
        # for XLA's dynamic-update-slice) writes loop `i`'s state.
        buffer = ops.zeros((num_loops,) + tuple(init.shape), init.dtype)

        def body(i, state, buffer):
            state = one_loop(state)
            buffer = ops.scatter_update(
                buffer, ops.reshape(i, (1, 1)), ops.expand_dims(state, 0)
            )
            return i + 1, state, buffer

        loop_vars = (ops.convert_to_tensor(0, "int32"), init, buffer)
        return ops.while_loop(
            lambda i, state, buffer: i < num_loops,
            body,
            loop_vars,
            maximum_iterations=num_loops,
        )[2]

    def body(i, state):
        return i + 1, one_loop(state)

    loop_vars = (ops.convert_to_tensor(0, "int32"), init)
    return ops.while_loop(
        lambda i, state: i < num_loops,
        body,
        loop_vars,
        maximum_iterations=num_loops,
    )[1]


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


def _has_seed_state(layer):
    """Whether `layer` (or a sublayer) owns random state (a dropout with a
    rate > 0, ...): the state variables of `keras.random.SeedGenerator`s
    are named `seed_generator_state`."""
    return any(
        "seed_generator" in v.path for v in layer.non_trainable_variables
    )


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
    themselves; wrap a plain sublayer in a residual if you need one).

    Loop modes (the paper does not concern itself with compilation):

    - `"unroll"` (default): the loop is unrolled in Python, which keeps every
      intermediate available and works with any layer; the compiled program
      and its compile time grow linearly with `L`.
    - `"scan"`: the block is traced once as the body of a compiled loop
      (`keras.ops.scan` / `fori_loop` on JAX, `keras.ops.while_loop` with
      `maximum_iterations` elsewhere), so the program size and compile time
      do not grow with `L`. Same results as `"unroll"` (the same operations
      in the same order). On JAX, sublayers with random state (dropout with
      a rate > 0) cannot be called with `training=True` in this mode (the
      random state would be updated inside the traced loop body): a
      `ValueError` says so; use `"unroll"` there.

    `rematerialize=True` wraps each loop in `keras.remat` (`jax.checkpoint`
    / `tf.recompute_grad`): only the loop boundaries are kept for the
    backward pass and each loop's inner activations are recomputed, so with
    `"scan"` the saved activations are `O(L)` states instead of `O(L)` full
    blocks of intermediates, at about one extra forward pass of compute.
    (TensorFlow cannot recompute gradients per iteration inside a while
    loop: there, in `"scan"` mode, the whole loop is rematerialised, keeping
    only its input.) The recomputation does not replay the forward pass's
    random draws, so `rematerialize=True` with a sublayer that has random
    state (dropout with a rate > 0) is refused with a `ValueError` when
    called with `training=True`, in both loop modes and on every backend
    (it would silently compute wrong gradients on TensorFlow and leak a
    tracer on JAX); inference (`training=False`) is unaffected. Train such
    a block with `rematerialize=False`.

    Dtypes: the loop state is kept in this layer's compute dtype (each
    loop's output is cast to it, a no-op when the sublayers share this
    layer's policy). Without an explicit `dtype`, a block whose layers all
    share one dtype policy adopts it, so a bf16 / mixed block computes and
    returns in its own compute dtype with no cast at the loop boundaries.

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
        loop_mode: `"unroll"` or `"scan"` (see above). Defaults to
            `"unroll"`.
        rematerialize: whether to recompute each loop's activations in the
            backward pass instead of storing them. Defaults to `False`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: the tensor to transform.
        num_loops: optional Python int overriding the constructor's
            `num_loops` for this call (e.g. more loops at inference than in
            training).
        mask: optional Keras mask, passed to every sublayer whose `call`
            accepts `mask`, and returned unchanged as the output mask (of
            every loop's output with `return_all_loops=True`, at the
            call's loop count).
        training: passed to sublayers that accept it.
        **block_kwargs: further keyword arguments (e.g. `padding_mask`,
            `attention_mask`, `decoder_padding_mask`) passed to every
            sublayer whose `call` accepts them (or has `**kwargs`); an
            argument that no sublayer accepts raises a `ValueError`.

    Returns:
        A tensor of the input's shape, or the list of every loop's output if
        `return_all_loops=True`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> block = [keras.layers.Dense(8, activation="tanh") for _ in range(2)]
    >>> looped = LoopedBlock(block, num_loops=6)          # 2 (x) 6
    >>> x = np.ones((3, 8), "float32")
    >>> tuple(looped(x).shape)
    (3, 8)
    >>> scanned = LoopedBlock(block, num_loops=6, loop_mode="scan")
    >>> bool(np.allclose(scanned(x), looped(x), atol=1e-6))
    True
    >>> tuple(looped(x, num_loops=12).shape)  # deeper, same weights
    (3, 8)

    References:
        - Saunshi et al., "Reasoning with Latent Thoughts: On the Power of
          Looped Transformers", ICLR 2025, arXiv 2502.17416.
    """

    def __init__(
        self,
        layers: (
            keras.layers.Layer
            | dict[str, Any]
            | Sequence[keras.layers.Layer | dict[str, Any]]
        ),
        num_loops: int = 1,
        input_injection: bool = False,
        return_all_loops: bool = False,
        loop_mode: str = "unroll",
        rematerialize: bool = False,
        **kwargs,
    ) -> None:
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
        if not explicit_dtype:
            policies = {layer.dtype_policy.name for layer in block}
            if len(policies) == 1:
                self.dtype_policy = block[0].dtype_policy
        self.block_layers = block
        self.num_loops = _validate_num_loops(num_loops)
        self.input_injection = check_bool("input_injection", input_injection)
        self.return_all_loops = check_bool("return_all_loops", return_all_loops)
        self.loop_mode = check_choice("loop_mode", loop_mode, LOOP_MODES)
        self.rematerialize = check_bool("rematerialize", rematerialize)
        self.supports_masking = True
        self._call_kwargs = [_accepted_kwargs(layer) for layer in block]
        # Loop count of the call in progress, keyed by the input's id, for
        # `compute_mask` (Keras passes it no call arguments).
        self._mask_loops = {}

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
        num_loops = _validate_num_loops(num_loops)
        self._check_block_kwargs(block_kwargs)
        if self.rematerialize and training and self._has_random_state():
            raise ValueError(
                "`rematerialize=True` cannot run sublayers with random state "
                "(e.g. dropout with a rate > 0) with `training=True`: the "
                "backward pass would recompute them with new random draws. "
                "Use `rematerialize=False` for training. Received: "
                f"rematerialize=True, training={training!r}"
            )
        if self.return_all_loops and mask is not None:
            self._remember_loops(inputs, num_loops)
        dtype = inputs.dtype

        def one_loop(state):
            out = self.apply_block(
                state, mask=mask, training=training, **block_kwargs
            )
            if tuple(out.shape) != tuple(inputs.shape):
                raise ValueError(
                    "The block of `layers` must return a tensor of its "
                    f"input's shape. Received: input shape {inputs.shape}, "
                    f"output shape {out.shape}"
                )
            return ops.cast(out, dtype)

        if self.input_injection:
            loop = one_loop

            def one_loop(state):
                return loop(ops.add(state, inputs))

            init = ops.zeros_like(inputs)
        else:
            init = inputs
        scan_on_jax = (
            self.loop_mode == "scan" and keras.backend.backend() == "jax"
        )
        if self.rematerialize and (self.loop_mode == "unroll" or scan_on_jax):
            # A fresh function per call: `jax.checkpoint` caches its trace
            # by function, and the trace reads the current variables.
            one_loop = keras.remat(one_loop)

        if self.loop_mode == "unroll":
            outputs = []
            state = init
            for _ in range(num_loops):
                state = one_loop(state)
                outputs.append(state)
            return outputs if self.return_all_loops else outputs[-1]

        if (
            training
            and keras.backend.backend() == "jax"
            and self._has_random_state()
        ):
            raise ValueError(
                "`loop_mode='scan'` cannot run sublayers with random state "
                "(e.g. dropout with a rate > 0) with `training=True` on JAX; "
                "use `loop_mode='unroll'`. Received: loop_mode='scan', "
                f"training={training!r}"
            )

        def run(init):
            return _run_loop(one_loop, init, num_loops, self.return_all_loops)

        if self.rematerialize and not scan_on_jax:
            # TensorFlow cannot recompute a gradient inside a while loop:
            # the whole loop is rematerialised (only its input is kept).
            run = keras.remat(run)
        result = run(init)
        if self.return_all_loops:
            return [result[i] for i in range(num_loops)]
        return result

    def _has_random_state(self):
        return any(_has_seed_state(layer) for layer in self.block_layers)

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

    def compute_output_spec(self, inputs, num_loops=None, mask=None, **kwargs):
        num_loops = self.num_loops if num_loops is None else num_loops
        num_loops = _validate_num_loops(num_loops)
        if self.return_all_loops and mask is not None:
            self._remember_loops(inputs, num_loops)
        specs = [
            keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
            for _ in range(num_loops if self.return_all_loops else 1)
        ]
        return specs if self.return_all_loops else specs[0]

    def _remember_loops(self, inputs, num_loops):
        if len(self._mask_loops) > 64:  # entries Keras never asked for
            self._mask_loops.clear()
        self._mask_loops[id(inputs)] = num_loops

    def compute_mask(self, inputs, mask=None):
        if self.return_all_loops and mask is not None:
            num_loops = self._mask_loops.pop(id(inputs), self.num_loops)
            return [mask] * num_loops
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
                "loop_mode": self.loop_mode,
                "rematerialize": self.rematerialize,
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
