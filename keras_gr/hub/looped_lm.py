"""A keras-hub Gemma decoder LM with a looped middle block.

"Reasoning with Latent Thoughts: On the Power of Looped Transformers"
(Saunshi, Dikkala, Li, Kumar, Reddi; ICLR 2025, arXiv 2502.17416),
"middle looping": unshared first layer(s), a block of `k` layers applied
`L` times with shared weights, unshared last layer(s).

`LoopedGemmaBackbone` is a `keras_hub.models.GemmaBackbone` whose functional
graph applies `transformer_layers` (the *distinct* layers) in the order
`layer_schedule`; the middle block is a `keras_gr.layers.LoopedBlock`.
`LoopedGemmaCausalLM` is a `GemmaCausalLM` whose key/value cache holds one
slot per *application* of a layer (a looped layer sees different inputs at
every loop, so each application keeps its own keys and values), so
`generate()` with the cache equals uncached greedy decoding.

Choices the paper leaves open (it trains and evaluates at one depth):

- **Loops at inference.** `num_loops` (the constructor argument, saved in the
  config) is the depth used by `fit`, `predict` and plain calls. A different
  depth is a *per-call* override, never a mutation of the model:
  `backbone(inputs, num_loops=L)`, `causal_lm(inputs, num_loops=L)` and
  `causal_lm.generate(prompt, num_loops=L)`. Weights do not depend on the
  loop count (trainable parameters are those of the distinct layers), so an
  override with `L` gives exactly the logits of a backbone built with
  `num_loops=L` and the same weights; the generation cache then holds
  `len(get_layer_schedule(L))` slots. The override must be a Python integer
  `>= 1` (it fixes the unrolled graph, so it cannot be a traced tensor);
  `generate()` compiles one function per value and keeps them until the
  next `compile()`. To *train* at another depth, build the model with that
  `num_loops` and copy the weights (the variable lists are identical):
  `LoopedGemmaBackbone.from_config({**config, "num_loops": L})` then
  `set_weights(old.get_weights())`.
- **Serialization.** Both classes are registered under `keras_gr`, so
  `model.save("x.keras")` / `keras.models.load_model` round-trip them, and
  `save_to_preset(folder)` writes a keras-hub preset that the usual keras-hub
  entry points load back (`keras_hub.models.CausalLM.from_preset(folder)`,
  `keras_hub.models.Backbone.from_preset(folder)`, or the classes'
  own `from_preset`) once `keras_gr.hub` has been imported (the import
  registers the classes; keras-hub resolves the task class from the saved
  backbone class). `LoopedGemmaCausalLM` also saves its compile config
  (optimizer, loss, metrics, sampler), so a loaded `.keras` file resumes
  training with the saved optimizer state.
- **Prefix path.** `LoopedGemmaPrefixAdapter` (registered on import) lets
  `keras_gr.hub.PrefixCausalLM` and `keras_gr.models.SoftSRV` run a looped
  backbone after a soft prefix, over its `layer_schedule` at the
  constructor's `num_loops` (no per-call override there). The cached
  forward pass is `keras_gr.hub.prefix_lm.run_decoder_layers`, shared with
  `LoopedGemmaCausalLM.call_with_cache`.
"""

import keras
import keras_hub
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr.hub.prefix_lm import GemmaPrefixAdapter
from keras_gr.hub.prefix_lm import gemma_embed
from keras_gr.hub.prefix_lm import register_prefix_adapter
from keras_gr.hub.prefix_lm import run_decoder_layers
from keras_gr.layers.looped_block import LoopedBlock
from keras_gr.layers.looped_block import _validate_num_loops


def layer_schedule(num_prelude_layers, num_looped_layers, num_loops, coda):
    """Indices of the distinct layers in the order they are applied.

    `layer_schedule(1, 2, 3, 1) == [0, 1, 2, 1, 2, 1, 2, 3]`.
    """
    prelude = list(range(num_prelude_layers))
    middle = [num_prelude_layers + j for j in range(num_looped_layers)]
    first_coda = num_prelude_layers + num_looped_layers
    return (
        prelude
        + middle * num_loops
        + list(range(first_coda, first_coda + coda))
    )


@keras.saving.register_keras_serializable(package="keras_gr")
class LoopedGemmaBackbone(keras_hub.models.GemmaBackbone):
    """Gemma backbone with unshared prelude / coda and a looped middle.

    Applies `num_prelude_layers` Gemma decoder blocks, then a block of
    `num_looped_layers` blocks `num_loops` times (shared weights, a
    `LoopedBlock`, no input injection: the paper's vanilla looping), then
    `num_coda_layers` blocks, then the final RMS norm. Trainable parameters
    equal those of a `GemmaBackbone` with `num_prelude_layers +
    num_looped_layers + num_coda_layers` layers.

    Args:
        vocabulary_size, num_query_heads, num_key_value_heads, hidden_dim,
            intermediate_dim, head_dim, ...: as `keras_hub.models.
            GemmaBackbone` (the remaining Gemma options are accepted too).
        num_prelude_layers: unshared layers before the loop. Defaults to 1.
        num_looped_layers: `k`, distinct layers of the looped block.
            Defaults to 1.
        num_loops: `L`, applications of the block. Defaults to 2.
        num_coda_layers: unshared layers after the loop. Defaults to 1.
        loop_mode: `"unroll"` or `"scan"`: how the `LoopedBlock` runs the
            loop (`"scan"` traces the block once, so the compiled program
            and its compile time do not grow with `num_loops`; same
            results). Defaults to `"unroll"`.
        rematerialize: recompute each loop's activations in the backward
            pass instead of storing them (`keras.remat`). Defaults to
            `False`.

    Attributes:
        transformer_layers: the distinct decoder blocks (prelude, middle,
            coda), so weight-by-layer tools (e.g. the looping regulariser)
            see each weight once.
        layer_schedule: indices into `transformer_layers` in application
            order; `num_applications = len(layer_schedule)` cache slots.
        looped_block: the `LoopedBlock` wrapping the middle layers.

    Call arguments:
        inputs: a dict with `"token_ids"` and `"padding_mask"`, `(batch,
            seq)` integer tensors.
        num_loops: optional Python integer `>= 1` overriding `num_loops`
            for this call only (e.g. more loops at inference than in
            training). Same weights, so the output equals that of a
            backbone built with this `num_loops` and the same weights.
            Defaults to `None` (the constructor's `num_loops`).

    Returns:
        The final hidden states, `(batch, seq, hidden_dim)`.

    Example:

    >>> import numpy as np
    >>> backbone = LoopedGemmaBackbone(
    ...     vocabulary_size=40, num_query_heads=2, num_key_value_heads=1,
    ...     hidden_dim=16, intermediate_dim=32, head_dim=8,
    ...     num_prelude_layers=1, num_looped_layers=1, num_loops=3,
    ...     num_coda_layers=1, loop_mode="scan",
    ... )
    >>> backbone.layer_schedule
    [0, 1, 1, 1, 2]
    >>> inputs = {
    ...     "token_ids": np.array([[1, 5, 7, 2]], "int32"),
    ...     "padding_mask": np.ones((1, 4), "int32"),
    ... }
    >>> tuple(backbone(inputs, num_loops=6).shape)  # deeper, same weights
    (1, 4, 16)
    """

    def __init__(
        self,
        vocabulary_size: int,
        num_query_heads: int,
        num_key_value_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        head_dim: int,
        num_prelude_layers: int = 1,
        num_looped_layers: int = 1,
        num_loops: int = 2,
        num_coda_layers: int = 1,
        loop_mode: str = "unroll",
        rematerialize: bool = False,
        query_head_dim_normalize: bool = True,
        use_post_ffw_norm: bool = False,
        use_post_attention_norm: bool = False,
        attention_logit_soft_cap: float | None = None,
        final_logit_soft_cap: float | None = None,
        use_sliding_window_attention: bool = False,
        sliding_window_size: int = 4096,
        layer_norm_epsilon: float = 1e-6,
        dropout: float = 0,
        dtype: str | keras.DTypePolicy | None = None,
        **kwargs,
    ) -> None:
        check_integer("num_prelude_layers", num_prelude_layers, 0)
        check_integer("num_looped_layers", num_looped_layers, 1)
        num_loops = _validate_num_loops(num_loops)
        check_integer("num_coda_layers", num_coda_layers, 0)
        num_distinct = num_prelude_layers + num_looped_layers + num_coda_layers
        gemma_options = dict(
            query_head_dim_normalize=query_head_dim_normalize,
            use_post_ffw_norm=use_post_ffw_norm,
            use_post_attention_norm=use_post_attention_norm,
            attention_logit_soft_cap=attention_logit_soft_cap,
            final_logit_soft_cap=final_logit_soft_cap,
            use_sliding_window_attention=use_sliding_window_attention,
            sliding_window_size=sliding_window_size,
            layer_norm_epsilon=layer_norm_epsilon,
            dropout=dropout,
        )
        # === Layers ===
        # The layers are those of a plain GemmaBackbone with the distinct
        # layer count (keras-hub's public way to make Gemma blocks); only its
        # layers are kept, wired below in the looped order.
        template = keras_hub.models.GemmaBackbone(
            vocabulary_size=vocabulary_size,
            num_layers=num_distinct,
            num_query_heads=num_query_heads,
            num_key_value_heads=num_key_value_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            head_dim=head_dim,
            dtype=dtype,
            **gemma_options,
        )
        self.token_embedding = template.token_embedding
        self.transformer_layers = list(template.transformer_layers)
        self.layer_norm = template.layer_norm
        start = num_prelude_layers
        # The block runs in the policy of the layers it loops (the
        # backbone's): no casts at the loop boundaries under bf16 / mixed.
        self.looped_block = LoopedBlock(
            self.transformer_layers[start : start + num_looped_layers],
            num_loops=num_loops,
            loop_mode=loop_mode,
            rematerialize=rematerialize,
            name="looped_block",
            dtype=self.transformer_layers[start].dtype_policy,
        )
        del template

        # === Functional Model ===
        token_id_input = keras.Input(
            shape=(None,), dtype="int32", name="token_ids"
        )
        padding_mask_input = keras.Input(
            shape=(None,), dtype="int32", name="padding_mask"
        )
        sequence_output = self._apply_layers(
            token_id_input, padding_mask_input, num_prelude_layers, None
        )
        keras_hub.models.Backbone.__init__(
            self,
            inputs={
                "token_ids": token_id_input,
                "padding_mask": padding_mask_input,
            },
            outputs=sequence_output,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_distinct
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim
        self.num_prelude_layers = num_prelude_layers
        self.num_looped_layers = num_looped_layers
        self.num_loops = num_loops
        self.num_coda_layers = num_coda_layers
        self.loop_mode = loop_mode
        self.rematerialize = bool(rematerialize)
        for key, value in gemma_options.items():
            setattr(self, key, value)
        self.layer_schedule = layer_schedule(
            num_prelude_layers, num_looped_layers, num_loops, num_coda_layers
        )
        self.num_applications = len(self.layer_schedule)

    def call(self, inputs, training=None, mask=None, num_loops=None):
        if num_loops is None:
            return super().call(inputs, training=training, mask=mask)
        num_loops = _validate_num_loops(num_loops)
        # The functional graph is unrolled at the constructor's depth; another
        # depth runs the same layers eagerly / under the caller's trace.
        return self._apply_layers(
            inputs["token_ids"],
            inputs["padding_mask"],
            self.num_prelude_layers,
            num_loops,
        )

    def compute_output_spec(
        self, inputs, training=None, mask=None, num_loops=None
    ):
        if num_loops is not None:
            _validate_num_loops(num_loops)
        return super().compute_output_spec(inputs, training=training, mask=mask)

    def get_layer_schedule(self, num_loops=None):
        """`layer_schedule` at `num_loops` (defaults to `self.num_loops`):
        indices into `transformer_layers`, one per cache slot."""
        num_loops = self.num_loops if num_loops is None else num_loops
        return layer_schedule(
            self.num_prelude_layers,
            self.num_looped_layers,
            _validate_num_loops(num_loops),
            self.num_coda_layers,
        )

    def _apply_layers(self, token_ids, padding_mask, num_prelude, num_loops):
        """Embedding, prelude, looped block (`num_loops`, `None` for the
        block's own), coda and final norm: the backbone's forward pass."""
        x = gemma_embed(self, token_ids)
        for layer in self.transformer_layers[:num_prelude]:
            x = layer(x, padding_mask=padding_mask)
        x = self.looped_block(x, num_loops=num_loops, padding_mask=padding_mask)
        num_middle = len(self.looped_block.block_layers)
        for layer in self.transformer_layers[num_prelude + num_middle :]:
            x = layer(x, padding_mask=padding_mask)
        return self.layer_norm(x)

    def get_config(self):
        config = keras_hub.models.Backbone.get_config(self)
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "head_dim": self.head_dim,
                "num_prelude_layers": self.num_prelude_layers,
                "num_looped_layers": self.num_looped_layers,
                "num_loops": self.num_loops,
                "num_coda_layers": self.num_coda_layers,
                "loop_mode": self.loop_mode,
                "rematerialize": self.rematerialize,
                "query_head_dim_normalize": self.query_head_dim_normalize,
                "use_post_ffw_norm": self.use_post_ffw_norm,
                "use_post_attention_norm": self.use_post_attention_norm,
                "attention_logit_soft_cap": self.attention_logit_soft_cap,
                "final_logit_soft_cap": self.final_logit_soft_cap,
                "use_sliding_window_attention": (
                    self.use_sliding_window_attention
                ),
                "sliding_window_size": self.sliding_window_size,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config


class LoopedGemmaPrefixAdapter(GemmaPrefixAdapter):
    """Prefix adapter of `LoopedGemmaBackbone` (`keras_gr.hub.prefix_lm`).

    Gemma's adapter (scaled embeddings, RoPE) over the backbone's
    `layer_schedule` at its constructor's `num_loops`, so with an empty
    prefix the prefix path gives the backbone's own output, and the
    key/value cache keeps one slot per layer application. Registered for
    `LoopedGemmaBackbone` when this module is imported.

    Example:

    >>> from keras_gr.hub.prefix_lm import get_prefix_adapter
    >>> backbone = LoopedGemmaBackbone(
    ...     vocabulary_size=40, num_query_heads=2, num_key_value_heads=1,
    ...     hidden_dim=16, intermediate_dim=32, head_dim=8, num_loops=3,
    ... )
    >>> adapter = get_prefix_adapter(backbone)
    >>> adapter.layer_schedule(backbone)
    [0, 1, 1, 1, 2]
    >>> adapter.cache_shape(backbone, batch_size=2, length=10)
    [2, 5, 2, 10, 1, 8]
    """

    def layer_schedule(self, backbone):
        return list(backbone.layer_schedule)


register_prefix_adapter(LoopedGemmaBackbone, LoopedGemmaPrefixAdapter())


@keras.saving.register_keras_serializable(package="keras_gr")
class LoopedGemmaCausalLM(keras_hub.models.GemmaCausalLM):
    """`GemmaCausalLM` over a `LoopedGemmaBackbone`.

    Training (`fit`) and the uncached forward pass are those of
    `GemmaCausalLM`, at the backbone's `num_loops`. The key/value cache of
    `generate()` has shape `(batch, num_applications, 2, max_length,
    num_key_value_heads, head_dim)`: one slot per application of a layer, in
    `layer_schedule` order, because a looped layer attends over different
    keys/values at each loop. `score()` intercepts every layer
    application (see `score`).

    A different depth at inference than in training is a per-call
    override (see the module docstring): `causal_lm(inputs, num_loops=L)`
    returns the logits at `L` loops and `generate(..., num_loops=L)` decodes
    at `L` loops with a cache of `len(backbone.get_layer_schedule(L))`
    slots; the model's config, weights and parameter count are unchanged.

    Saving: `save("x.keras")` / `keras.models.load_model` and keras-hub
    presets (`save_to_preset(folder)`, then
    `keras_hub.models.CausalLM.from_preset(folder)` or
    `LoopedGemmaCausalLM.from_preset(folder)`, with `keras_gr.hub`
    imported) both restore the architecture (including `num_loops` and the
    prelude / looped / coda split) and the weights. The compile config
    (optimizer, loss, metrics, sampler) is saved too, so `load_model`
    returns a compiled model whose optimizer state resumes training.

    Call arguments:
        inputs: a dict with `"token_ids"` and `"padding_mask"`.
        num_loops: optional Python integer `>= 1` overriding the
            backbone's `num_loops` for this call. Defaults to `None`.

    Returns:
        The logits, `(batch, seq, vocabulary_size)`.

    Example:

    >>> import numpy as np
    >>> backbone = LoopedGemmaBackbone(
    ...     vocabulary_size=40, num_query_heads=2, num_key_value_heads=1,
    ...     hidden_dim=16, intermediate_dim=32, head_dim=8, num_loops=2,
    ... )
    >>> lm = LoopedGemmaCausalLM(backbone)
    >>> tokens = np.array([[1, 5, 7, 2]], "int32")
    >>> inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    >>> tuple(lm(inputs).shape), tuple(lm(inputs, num_loops=4).shape)
    ((1, 4, 40), (1, 4, 40))
    >>> tuple(lm.score(tokens).shape)
    (1, 4, 40)
    """

    backbone_cls = LoopedGemmaBackbone

    def __init__(
        self,
        backbone: LoopedGemmaBackbone,
        preprocessor: keras_hub.models.GemmaCausalLMPreprocessor | None = None,
        **kwargs,
    ) -> None:
        # Loop count of the generate() call in progress (None: backbone's),
        # the one `generate_function` was traced with, and the compiled
        # generate function of every loop count used since `compile()`.
        self._generate_num_loops = None
        self._generate_function_num_loops = None
        self._generate_functions = {}
        super().__init__(backbone=backbone, preprocessor=preprocessor, **kwargs)

    def call(self, inputs, training=None, mask=None, num_loops=None):
        if num_loops is None:
            return super().call(inputs, training=training, mask=mask)
        hidden_states = self.backbone(
            inputs, training=training, num_loops=num_loops
        )
        return self.backbone.token_embedding(hidden_states, reverse=True)

    def compute_output_spec(
        self, inputs, training=None, mask=None, num_loops=None
    ):
        if num_loops is not None:
            _validate_num_loops(num_loops)
        return super().compute_output_spec(inputs, training=training, mask=mask)

    def generate(
        self,
        inputs,
        max_length=None,
        stop_token_ids="auto",
        strip_prompt=False,
        num_loops=None,
    ):
        """`GemmaCausalLM.generate`, optionally at another loop count.

        Args:
            inputs, max_length, stop_token_ids, strip_prompt: see
                `keras_hub.models.CausalLM.generate`.
            num_loops: optional Python integer `>= 1`: decode with the
                looped block applied this many times (cache slots follow).
                Defaults to `None` (the backbone's `num_loops`).
        """
        if num_loops is not None:
            num_loops = _validate_num_loops(num_loops)
        previous = self._generate_num_loops
        self._generate_num_loops = num_loops
        try:
            return super().generate(
                inputs,
                max_length=max_length,
                stop_token_ids=stop_token_ids,
                strip_prompt=strip_prompt,
            )
        finally:
            self._generate_num_loops = previous

    def make_generate_function(self):
        # One compiled function per loop count (the count is a Python int
        # read while tracing), kept while the model is not recompiled:
        # `compile()` / quantization reset `generate_function` to `None`.
        num_loops = self._active_num_loops(None)
        functions = self._generate_functions
        current = self.generate_function
        if (
            current is None
            or functions.get(self._generate_function_num_loops) is not current
        ):
            functions.clear()
        if num_loops not in functions:
            self.generate_function = None
            functions[num_loops] = super().make_generate_function()
        self.generate_function = functions[num_loops]
        self._generate_function_num_loops = num_loops
        return self.generate_function

    def call_with_cache(
        self, token_ids, cache, cache_update_index, num_loops=None
    ):
        """`GemmaCausalLM.call_with_cache` with one cache slot per layer
        application; `num_loops` defaults to the `generate()` call's
        override, else the backbone's `num_loops`."""
        backbone = self.backbone
        schedule = backbone.get_layer_schedule(
            self._active_num_loops(num_loops)
        )
        hidden_states, cache = run_decoder_layers(
            backbone,
            gemma_embed(backbone, token_ids),
            schedule,
            cache=cache,
            cache_update_index=cache_update_index,
        )
        logits = backbone.token_embedding(hidden_states, reverse=True)
        return logits, hidden_states, cache

    def _build_cache(self, token_ids, num_loops=None):
        backbone = self.backbone
        num_loops = self._active_num_loops(num_loops)
        batch_size = ops.shape(token_ids)[0]
        max_length = ops.shape(token_ids)[1]
        shape = [
            batch_size,
            len(backbone.get_layer_schedule(num_loops)),
            2,
            max_length,
            backbone.num_key_value_heads,
            backbone.head_dim,
        ]
        cache = ops.zeros(shape, dtype=self.compute_dtype)
        _, hidden_states, cache = self.call_with_cache(
            token_ids, cache, 0, num_loops=num_loops
        )
        return hidden_states, cache

    def _active_num_loops(self, num_loops):
        if num_loops is not None:
            return _validate_num_loops(num_loops)
        if self._generate_num_loops is not None:
            return self._generate_num_loops
        return self.backbone.num_loops

    def score(
        self,
        token_ids,
        padding_mask=None,
        scoring_mode="logits",
        layer_intercept_fn=None,
        target_ids=None,
        num_loops=None,
    ):
        """`GemmaCausalLM.score` over the looped schedule.

        As keras-hub's, except that the intercept index `i >= 0` counts
        layer *applications* in `layer_schedule` order (a looped layer is
        intercepted once per loop; `i` is also the cache slot), `-1` being
        the embeddings, and that the intercept's output at `-1` is what the
        first layer receives.

        Args:
            token_ids, padding_mask, scoring_mode, layer_intercept_fn,
                target_ids: see `keras_hub.models.GemmaCausalLM.score`.
            num_loops: optional Python integer `>= 1`: score at this loop
                count. Defaults to `None` (the backbone's `num_loops`).

        Returns:
            Logits `(batch, seq, vocabulary_size)` in `"logits"` mode, the
            per-token loss `(batch, seq)` in `"loss"` mode.
        """
        scoring_mode = check_choice(
            "scoring_mode", scoring_mode, ("logits", "loss")
        )
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError(
                "`target_ids` must be given when `scoring_mode='loss'`. "
                "Received: target_ids=None"
            )
        backbone = self.backbone
        schedule = backbone.get_layer_schedule(
            self._active_num_loops(num_loops)
        )
        if padding_mask is None:
            padding_mask = ops.ones(ops.shape(token_ids)[:2], dtype="int32")
        if layer_intercept_fn is None:

            def layer_intercept_fn(x, unused_index):
                return x

        x = layer_intercept_fn(backbone.token_embedding(token_ids), -1)
        x = x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)
        for slot, index in enumerate(schedule):
            x = backbone.transformer_layers[index](x, padding_mask=padding_mask)
            x = layer_intercept_fn(x, slot)
        x = backbone.layer_norm(x)
        logits = backbone.token_embedding(x, reverse=True)
        if scoring_mode == "logits":
            return logits
        loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"
        )
        return loss_fn(target_ids, logits)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and getattr(self, "sampler", None) is not None:
            config = dict(config)
            config["sampler"] = keras_hub.samplers.serialize(self.sampler)
        return config

    def compile_from_config(self, config):
        # keras-hub's `compile()` is custom, so Keras skips it on load; here
        # the saved arguments are replayed and the optimizer built, so that
        # `load_model` restores its state (resumable training).
        config = dict(config)
        sampler = config.pop("sampler", "greedy")
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config, sampler=sampler)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)


def source_layer_map(num_distinct, num_source, alternating=False):
    """Which preset layer initialises each distinct layer.

    Evenly spread, first to first and last to last:
    `round(d (S - 1) / (D - 1))`. With `alternating=True` (Gemma 2-style
    presets, `use_sliding_window_attention=True`, where even layers use
    sliding-window attention and odd layers global attention) each distinct
    layer takes the nearest source layer of its own parity, so a
    global-attention layer never lands in a sliding-window slot (or the
    reverse). Needs `num_source >= 2` when `num_distinct >= 2`.
    """
    num_distinct = check_integer("num_distinct", num_distinct, 1)
    num_source = check_integer("num_source", num_source, 1)
    if num_distinct == 1:
        return [0]
    mapping = []
    for d in range(num_distinct):
        s = int(round(d * (num_source - 1) / (num_distinct - 1)))
        if alternating and s % 2 != d % 2:
            if num_source < 2:
                raise ValueError(
                    "`num_source` must be >= 2 to map alternating "
                    f"sliding / global layers. Received: num_source="
                    f"{num_source}"
                )
            # The nearer neighbour of the right parity, inside [0, S - 1].
            target = d * (num_source - 1) / (num_distinct - 1)
            options = [c for c in (s - 1, s + 1) if 0 <= c < num_source]
            s = min(options, key=lambda c: (abs(c - target), c))
        mapping.append(s)
    return mapping


def looped_gemma_from_preset(
    preset: str,
    num_prelude_layers: int = 1,
    num_looped_layers: int = 1,
    num_loops: int = 2,
    num_coda_layers: int = 1,
    load_weights: bool = True,
    dtype: str | keras.DTypePolicy | None = None,
    loop_mode: str = "unroll",
    rematerialize: bool = False,
) -> "LoopedGemmaCausalLM":
    """Builds a `LoopedGemmaCausalLM` from a (local) Gemma preset.

    The architecture (sizes, heads, norms), the dtype policy and the
    preprocessor come from the preset. With `load_weights=True` the
    embedding and final norm are the preset's, and distinct layer `d`
    starts from preset layer `source_layer_map(D, S, alternating)[d]`
    (`alternating` when the preset uses sliding-window attention, so
    sliding-window and global layers keep their kind). The paper trains
    looped models from scratch: pass `load_weights=False` for random
    initialisation. Only the preset *backbone* is loaded (no second
    task model), in the target dtype, and released once its weights are
    copied.

    Args:
        preset: a preset folder (or name) loadable by
            `keras_hub.models.GemmaCausalLM.from_preset`.
        num_prelude_layers, num_looped_layers, num_loops, num_coda_layers,
            loop_mode, rematerialize: see `LoopedGemmaBackbone`.
        load_weights: copy the preset's weights. Defaults to `True`.
        dtype: dtype policy of the new model. Defaults to `None` (the
            preset's).

    Example:

    >>> import tempfile
    >>> from keras_gr.presets import TINY_CONFIG
    >>> from keras_gr.presets import build_local_preset
    >>> folder = build_local_preset(
    ...     **dict(TINY_CONFIG, train_steps=0),
    ...     cache_dir=tempfile.mkdtemp(),
    ...     verbose=0,
    ... )
    >>> lm = looped_gemma_from_preset(
    ...     folder, num_loops=3, dtype="bfloat16", loop_mode="scan"
    ... )
    >>> lm.backbone.layer_schedule, lm.backbone.dtype_policy.name
    ([0, 1, 1, 1, 2], 'bfloat16')
    """
    overrides = {} if dtype is None else {"dtype": dtype}
    source = keras_hub.models.GemmaBackbone.from_preset(
        preset, load_weights=load_weights, **overrides
    )
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor.from_preset(
        preset
    )
    config = dict(source.get_config())
    num_source = config.pop("num_layers")
    for key in ("name", "trainable"):
        config.pop(key, None)
    config["dtype"] = source.dtype_policy
    backbone = LoopedGemmaBackbone(
        **config,
        num_prelude_layers=num_prelude_layers,
        num_looped_layers=num_looped_layers,
        num_loops=num_loops,
        num_coda_layers=num_coda_layers,
        loop_mode=loop_mode,
        rematerialize=rematerialize,
    )
    if load_weights:
        backbone.token_embedding.set_weights(
            source.token_embedding.get_weights()
        )
        backbone.layer_norm.set_weights(source.layer_norm.get_weights())
        mapping = source_layer_map(
            len(backbone.transformer_layers),
            num_source,
            alternating=bool(config.get("use_sliding_window_attention")),
        )
        for layer, s in zip(backbone.transformer_layers, mapping):
            layer.set_weights(source.transformer_layers[s].get_weights())
    del source
    return LoopedGemmaCausalLM(backbone=backbone, preprocessor=preprocessor)
