"""Prefix-aware forward pass and KV-cached generation for keras-hub LMs.

A *soft prefix* is a tensor of `t` vectors of the LM's width that is placed
in front of the token embeddings of a frozen keras-hub causal LM, as in
"SoftSRV: Learn to Generate Targeted Synthetic Data" (DeSalvo, Kagy,
Karydas, Rostamizadeh, Kumar; arXiv 2410.16534) and in prompt tuning. keras-hub
backbones take token ids, not embeddings, so the forward pass is rebuilt
from `backbone.token_embedding` and `backbone.transformer_layers`, as
`CausalLM.call_with_cache` does. With prefix `P` (b, t, d) and tokens
`y_1..y_L`, the LM sees the sequence

    h = [P_1, ..., P_t, e(y_1), ..., e(y_L)]

at positions `0 .. t + L - 1`, and the logits at position `t - 1 + i`
predict `y_{i+1}`. Generation keeps a key/value cache of length `t + L`:
the prefix is written once, and the token at index `i` is written at cache
index `t + i`, so positions (RoPE for Gemma, learned position embeddings for
GPT-2) are offset by the prefix length, and cached decoding equals uncached
decoding token for token (the bugs PEFT had: prefix ignored with the cache
on, positions and logits off by the prefix length).

**Extension point.** Each backbone family has a `PrefixLMAdapter` that knows
how that family embeds tokens and runs its layers:

- `GemmaPrefixAdapter` (`keras_hub.models.GemmaBackbone`): token embeddings
  are scaled by `sqrt(hidden_dim)` and the prefix is inserted *after* the
  scaling (as `PaliGemmaCausalLM` does for image embeddings); RoPE positions
  come from the cache index inside attention.
- `GPT2PrefixAdapter` (`keras_hub.models.GPT2Backbone`): the prefix is
  inserted in token-embedding space and learned position embeddings are
  added to the whole sequence, prefix included (the prefix occupies positions
  `0 .. t - 1`, so `t + L` must not exceed `max_sequence_length`).

Register another family with `register_prefix_adapter(BackboneClass,
adapter)`; `get_prefix_adapter(backbone)` raises a `ValueError` naming the
backbone class when none is registered.
"""

import itertools
from typing import Any

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_gr import _backend
from keras_gr._validation import check_array
from keras_gr._validation import check_integer


class PrefixLMAdapter:
    """How one keras-hub backbone family runs with a prefix of embeddings.

    Subclasses implement `embed_tokens`, `forward` and `cache_shape`;
    `logits` (the tied or reversible output embedding) is shared. Register
    one for a new family with `register_prefix_adapter`.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=32, num_layers=1, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8)
    >>> adapter = get_prefix_adapter(backbone)
    >>> isinstance(adapter, PrefixLMAdapter)
    True
    >>> adapter.cache_shape(backbone, batch_size=2, length=10)
    [2, 1, 2, 10, 1, 8]
    """

    def embed_tokens(self, backbone, token_ids):
        """Token embeddings in the space where the prefix is inserted."""
        raise NotImplementedError

    def forward(
        self,
        backbone,
        embeddings,
        padding_mask=None,
        cache=None,
        cache_update_index=0,
    ):
        """Runs the layers on `embeddings` (b, n, d) that start at position
        `cache_update_index`; returns `(hidden_states, cache)` with the final
        normalisation applied (`cache` is `None` without a cache)."""
        raise NotImplementedError

    def cache_shape(self, backbone, batch_size, length):
        """Shape of the stacked key/value cache for `length` positions."""
        raise NotImplementedError

    def logits(self, backbone, hidden_states):
        return backbone.token_embedding(hidden_states, reverse=True)


class GemmaPrefixAdapter(PrefixLMAdapter):
    """`keras_hub.models.GemmaBackbone`: scaled embeddings, RoPE.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=32, num_layers=1, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8)
    >>> adapter = GemmaPrefixAdapter()
    >>> x = adapter.embed_tokens(backbone, np.ones((2, 5), "int32"))
    >>> hidden, cache = adapter.forward(backbone, x)
    >>> tuple(hidden.shape), cache is None
    ((2, 5, 16), True)
    """

    def embed_tokens(self, backbone, token_ids):
        x = backbone.token_embedding(token_ids)
        return x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)

    def forward(
        self,
        backbone,
        embeddings,
        padding_mask=None,
        cache=None,
        cache_update_index=0,
    ):
        x = embeddings
        caches = []
        for i, layer in enumerate(backbone.transformer_layers):
            if cache is None:
                x = layer(x, padding_mask=padding_mask)
            else:
                x, layer_cache = layer(
                    x,
                    cache=cache[:, i, ...],
                    cache_update_index=cache_update_index,
                )
                caches.append(layer_cache)
        x = backbone.layer_norm(x)
        return x, (ops.stack(caches, axis=1) if caches else None)

    def cache_shape(self, backbone, batch_size, length):
        return [
            batch_size,
            backbone.num_layers,
            2,
            length,
            backbone.num_key_value_heads,
            backbone.head_dim,
        ]


class GPT2PrefixAdapter(PrefixLMAdapter):
    """`keras_hub.models.GPT2Backbone`: learned positions over the prefix.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=16)
    >>> adapter = GPT2PrefixAdapter()
    >>> x = adapter.embed_tokens(backbone, np.ones((2, 5), "int32"))
    >>> tuple(adapter.logits(backbone, adapter.forward(backbone, x)[0]).shape)
    (2, 5, 32)
    """

    def embed_tokens(self, backbone, token_ids):
        return backbone.token_embedding(token_ids)

    def forward(
        self,
        backbone,
        embeddings,
        padding_mask=None,
        cache=None,
        cache_update_index=0,
    ):
        positions = backbone.position_embedding(
            embeddings, start_index=cache_update_index
        )
        x = backbone.embeddings_add((embeddings, positions))
        x = backbone.embeddings_dropout(x)
        caches = []
        for i, layer in enumerate(backbone.transformer_layers):
            if cache is None:
                x = layer(x, decoder_padding_mask=padding_mask)
            else:
                x, layer_cache = layer(
                    x,
                    self_attention_cache=cache[:, i, ...],
                    self_attention_cache_update_index=cache_update_index,
                )
                caches.append(layer_cache)
        x = backbone.layer_norm(x)
        return x, (ops.stack(caches, axis=1) if caches else None)

    def cache_shape(self, backbone, batch_size, length):
        return [
            batch_size,
            backbone.num_layers,
            2,
            length,
            backbone.num_heads,
            backbone.hidden_dim // backbone.num_heads,
        ]


_ADAPTERS = [
    (keras_hub.models.GemmaBackbone, GemmaPrefixAdapter()),
    (keras_hub.models.GPT2Backbone, GPT2PrefixAdapter()),
]


def register_prefix_adapter(
    backbone_cls: type, adapter: PrefixLMAdapter
) -> None:
    """Registers `adapter` for `backbone_cls` and its subclasses.

    Later registrations take precedence over earlier ones.

    Example:

    >>> import keras_hub
    >>> class MyGemma(keras_hub.models.GemmaBackbone):
    ...     pass
    >>> register_prefix_adapter(MyGemma, GemmaPrefixAdapter())
    >>> backbone = MyGemma(
    ...     vocabulary_size=32, num_layers=1, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8)
    >>> type(get_prefix_adapter(backbone)).__name__
    'GemmaPrefixAdapter'
    """
    if not isinstance(backbone_cls, type):
        raise ValueError(
            "`backbone_cls` must be a class. Received: "
            f"backbone_cls={backbone_cls!r}"
        )
    if not isinstance(adapter, PrefixLMAdapter):
        raise ValueError(
            "`adapter` must be a `PrefixLMAdapter` instance. Received: "
            f"adapter={adapter!r}"
        )
    _ADAPTERS.insert(0, (backbone_cls, adapter))


def get_prefix_adapter(backbone: keras.Model) -> PrefixLMAdapter:
    """The registered `PrefixLMAdapter` for `backbone`'s family.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=32, num_layers=1, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8)
    >>> type(get_prefix_adapter(backbone)).__name__
    'GemmaPrefixAdapter'
    """
    for cls, adapter in _ADAPTERS:
        if isinstance(backbone, cls):
            return adapter
    known = tuple(cls.__name__ for cls, _ in _ADAPTERS)
    raise ValueError(
        "`backbone` must be a keras-hub backbone of a family with a "
        f"registered prefix adapter, one of {known} (see "
        "`keras_gr.hub.register_prefix_adapter`). Received: "
        f"backbone={type(backbone).__name__}"
    )


def prefix_lm_logits(
    backbone: keras.Model,
    prefix: Any,
    token_ids: Any,
    padding_mask: Any | None = None,
) -> Any:
    """Logits of a keras-hub backbone run on `[prefix, embed(token_ids)]`.

    Args:
        backbone: a keras-hub backbone with a registered adapter.
        prefix: float tensor (b, t, d), `d` the backbone's `hidden_dim`.
        token_ids: int tensor (b, L).
        padding_mask: optional bool/int tensor (b, L) for the tokens (the
            prefix is never padding). Defaults to `None` (no padding).

    Returns:
        Logits (b, t + L, vocabulary_size); position `t - 1 + i` predicts
        `token_ids[:, i]`.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=32, num_layers=1, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8)
    >>> prefix = np.zeros((2, 3, 16), "float32")
    >>> logits = prefix_lm_logits(backbone, prefix, np.ones((2, 5), "int32"))
    >>> tuple(logits.shape)
    (2, 8, 32)
    """
    adapter = get_prefix_adapter(backbone)
    tokens = adapter.embed_tokens(backbone, token_ids)
    prefix = ops.cast(prefix, tokens.dtype)
    x = ops.concatenate([prefix, tokens], axis=1)
    mask = None
    if padding_mask is not None:
        batch = ops.shape(prefix)[0]
        prefix_mask = ops.ones((batch, ops.shape(prefix)[1]), dtype="bool")
        mask = ops.concatenate(
            [prefix_mask, ops.cast(padding_mask, "bool")], axis=1
        )
    hidden, _ = adapter.forward(backbone, x, padding_mask=mask)
    return adapter.logits(backbone, hidden)


def _stop_mask(token_ids, stop_token_ids, prompt_mask):
    """Padding mask that ends each row after its first generated stop id."""
    is_stop = ops.zeros_like(token_ids, dtype="bool")
    for stop_id in stop_token_ids:
        is_stop = ops.logical_or(is_stop, ops.equal(token_ids, stop_id))
    is_stop = ops.logical_and(is_stop, ops.logical_not(prompt_mask))
    ends = ops.cast(is_stop, "int32")
    overflow = ops.cumsum(ends, axis=-1) - ends
    return ops.logical_not(ops.cast(overflow, "bool"))


@keras.saving.register_keras_serializable(package="keras_gr")
class PrefixCausalLM(keras.Model):
    """A causal LM that generates after a soft prefix, with a KV cache.

    Wraps the backbone (and preprocessor) of a keras-hub causal LM of any
    family with a registered `PrefixLMAdapter` (Gemma, GPT-2 built in) and
    adds a `prefix` input: `generate_with_prefix(prefix, ...)` decodes with a
    key/value cache of length `t + max_length` whose first `t` slots hold
    the prefix, through keras-hub's samplers (`compile(sampler=...)`:
    `"greedy"`, `"top_k"`, `"top_p"`, a `keras_hub.samplers.Sampler` with a
    `temperature`, ...), compiled with XLA on JAX and TensorFlow
    (`keras_gr._backend.jit`; on JAX the model's variables and the
    sampler's seed enter as explicit state, as in keras-hub's own generate
    function). The wrapped weights are shared, not copied.

    It is a plain `keras.Model`, not a keras-hub `CausalLM` subclass: a
    non-functional subclass of keras-hub's `PipelineModel` resets the class
    hierarchy that keras-hub's functional tasks rely on (keras-hub's
    workaround for keras issue 17270) and would break the wrapped LM.

    The forward pass `call({"prefix", "token_ids", "padding_mask"})` returns
    the logits of `prefix_lm_logits` for the token positions only: (b, L,
    vocabulary_size), position `i` predicting token `i + 1` as a causal LM
    does, with the prefix as context.

    Paper: "SoftSRV: Learn to Generate Targeted Synthetic Data" (arXiv
    2410.16534); cache layout after keras-hub's PaliGemma / BLIP-2 causal
    LMs.

    Args:
        causal_lm: a `keras_hub.models.CausalLM` whose backbone family has a
            registered adapter.
        sampler: a sampler name or `keras_hub.samplers.Sampler`. Defaults to
            `"greedy"`.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=16)
    >>> lm = PrefixCausalLM(keras_hub.models.GPT2CausalLM(backbone))
    >>> out = lm.generate_with_prefix(
    ...     np.zeros((2, 3, 8), "float32"), start_token_id=1, max_length=6)
    >>> out["token_ids"].shape
    (2, 6)
    """

    def __init__(
        self,
        causal_lm: keras_hub.models.CausalLM,
        sampler: str | keras_hub.samplers.Sampler = "greedy",
        **kwargs,
    ) -> None:
        if not isinstance(causal_lm, keras_hub.models.CausalLM):
            raise ValueError(
                "`causal_lm` must be a `keras_hub.models.CausalLM`. "
                f"Received: causal_lm={type(causal_lm).__name__}"
            )
        adapter = get_prefix_adapter(causal_lm.backbone)
        kwargs.setdefault("dtype", causal_lm.backbone.dtype_policy)
        super().__init__(**kwargs)
        self.adapter = adapter
        self.causal_lm = causal_lm
        self.backbone = causal_lm.backbone
        self.preprocessor = causal_lm.preprocessor
        self.compile(sampler=sampler)

    def compile(self, sampler="greedy", **kwargs):
        """Sets the sampler used by `generate_with_prefix` (and passes
        `kwargs` to `keras.Model.compile`)."""
        if kwargs:
            super().compile(**kwargs)
        self.sampler = keras_hub.samplers.get(sampler)
        self._generate_functions = {}

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs):
        prefix = inputs["prefix"]
        t = ops.shape(prefix)[1]
        logits = prefix_lm_logits(
            self.backbone,
            prefix,
            inputs["token_ids"],
            inputs.get("padding_mask"),
        )
        return logits[:, t:]

    def call_with_cache(self, embeddings, cache, cache_update_index):
        """Runs `embeddings` (b, n, d) at cache index `cache_update_index`;
        returns `(logits, hidden_states, cache)`."""
        hidden, cache = self.adapter.forward(
            self.backbone,
            embeddings,
            cache=cache,
            cache_update_index=cache_update_index,
        )
        return self.adapter.logits(self.backbone, hidden), hidden, cache

    def generate_step(self, inputs, stop_token_ids=None):
        prefix = inputs["prefix"]
        token_ids = inputs["token_ids"]
        padding_mask = inputs["padding_mask"]
        batch_size = ops.shape(token_ids)[0]
        t = ops.shape(prefix)[1]
        tokens = self.adapter.embed_tokens(self.backbone, token_ids)
        x = ops.concatenate([ops.cast(prefix, tokens.dtype), tokens], axis=1)
        cache = ops.zeros(
            self.adapter.cache_shape(
                self.backbone, batch_size, ops.shape(x)[1]
            ),
            dtype=self.compute_dtype,
        )
        # Seed the cache with the prefix and the prompt tokens (slots of
        # positions still to generate are overwritten before they are read).
        _, hidden_states, cache = self.call_with_cache(x, cache, 0)
        hidden_states = hidden_states[:, t:]
        row_lengths = ops.sum(ops.cast(padding_mask, "int32"), axis=-1)
        index = ops.min(row_lengths)

        def next(prompt, cache, index):
            token = ops.slice(prompt, [0, index - 1], [batch_size, 1])
            embedded = self.adapter.embed_tokens(self.backbone, token)
            logits, hidden, cache = self.call_with_cache(
                embedded, cache, t + index - 1
            )
            return (
                ops.squeeze(logits, axis=1),
                ops.squeeze(hidden, axis=1),
                cache,
            )

        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            hidden_states=hidden_states,
            model=self,
        )
        if stop_token_ids is not None:
            padding_mask = _stop_mask(
                token_ids, stop_token_ids, ops.cast(padding_mask, "bool")
            )
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def generate_with_prefix(
        self,
        prefix,
        token_ids=None,
        padding_mask=None,
        *,
        start_token_id: int | None = None,
        max_length: int = 32,
        stop_token_ids=None,
        seed: int | None = None,
    ) -> dict:
        """Decodes after `prefix` (b, t, d); returns NumPy `token_ids` and
        `padding_mask` of shape (b, max_length).

        The prompt is `token_ids` (b, L <= max_length) with `padding_mask`
        (ones if omitted), or one `start_token_id` per row (the tokenizer's
        start token when a preprocessor is attached). `stop_token_ids`: a
        tuple of ids that end a row; `None` decodes to `max_length`.
        `seed`: an int resets the sampler's seed state first, so the same
        seed draws the same tokens; `None` (default) continues its stream.
        """
        max_length = check_integer("max_length", max_length, minimum=2)
        if seed is not None:
            seed = check_integer("seed", seed, minimum=0)
            for variable in self.sampler.variables:
                state = np.zeros(variable.shape, variable.dtype)
                state.reshape(-1)[0] = seed
                variable.assign(state)
        prefix = np.asarray(ops.convert_to_numpy(prefix), dtype="float32")
        check_array("prefix", prefix, ndim=3, allow_empty=True)
        if prefix.shape[-1] != self.backbone.hidden_dim:
            raise ValueError(
                "`prefix` must have the backbone's width "
                f"{self.backbone.hidden_dim} as its last dimension. "
                f"Received: prefix with shape {prefix.shape}"
            )
        batch = prefix.shape[0]
        if token_ids is None:
            if start_token_id is None:
                tokenizer = getattr(self.preprocessor, "tokenizer", None)
                start_token_id = getattr(tokenizer, "start_token_id", None)
            if start_token_id is None:
                raise ValueError(
                    "`start_token_id` is required when `token_ids` is None "
                    "and no preprocessor is attached. Received: "
                    "start_token_id=None"
                )
            token_ids = np.full((batch, 1), int(start_token_id), "int32")
        token_ids = np.asarray(token_ids, dtype="int32")
        check_array("token_ids", token_ids, ndim=2)
        if padding_mask is None:
            padding_mask = np.ones_like(token_ids, dtype=bool)
        padding_mask = np.asarray(padding_mask, dtype=bool)
        if token_ids.shape[0] != batch or token_ids.shape[1] > max_length:
            raise ValueError(
                "`token_ids` must have `prefix`'s batch size and at most "
                f"`max_length`={max_length} columns. Received: token_ids "
                f"with shape {token_ids.shape}, prefix with shape "
                f"{prefix.shape}"
            )
        pad = max_length - token_ids.shape[1]
        token_ids = np.pad(token_ids, [(0, 0), (0, pad)])
        padding_mask = np.pad(padding_mask, [(0, 0), (0, pad)])
        if stop_token_ids is not None:
            stop_token_ids = tuple(int(s) for s in stop_token_ids)
        inputs = {
            "prefix": ops.convert_to_tensor(prefix, self.compute_dtype),
            "token_ids": ops.convert_to_tensor(token_ids),
            "padding_mask": ops.convert_to_tensor(padding_mask),
        }
        generate = self._generate_function(stop_token_ids)
        outputs = generate(inputs)
        return {k: ops.convert_to_numpy(v) for k, v in outputs.items()}

    def _generate_function(self, stop_token_ids):
        """`generate_step` compiled for `stop_token_ids`, as keras-hub's
        `CausalLM.make_generate_function` does: on JAX a pure function of
        the sampler's and the model's state (the sampler's new seed state is
        assigned back after the call); on TensorFlow `tf.function` with XLA
        over the stateful step (the seed variable is updated in place; a
        stateless scope would leak tensors out of the while loop)."""
        if stop_token_ids in self._generate_functions:
            return self._generate_functions[stop_token_ids]

        def stateful(inputs):
            return self.generate_step(inputs, stop_token_ids)

        if self.run_eagerly:
            function = stateful
        elif keras.backend.backend() != "jax":
            function = _backend.jit(stateful)
        else:

            def pure(sampler_values, trainable, non_trainable, inputs):
                mapping = itertools.chain(
                    zip(self.sampler.variables, sampler_values),
                    zip(self.trainable_variables, trainable),
                    zip(self.non_trainable_variables, non_trainable),
                )
                with keras.StatelessScope(state_mapping=mapping) as scope:
                    outputs = self.generate_step(inputs, stop_token_ids)
                new_values = []
                for variable, old in zip(
                    self.sampler.variables, sampler_values
                ):
                    value = scope.get_current_value(variable)
                    new_values.append(old if value is None else value)
                return outputs, new_values

            compiled = _backend.jit(pure)

            def function(inputs):
                outputs, sampler_values = compiled(
                    [v.value for v in self.sampler.variables],
                    [v.value for v in self.trainable_variables],
                    [v.value for v in self.non_trainable_variables],
                    inputs,
                )
                for variable, value in zip(
                    self.sampler.variables, sampler_values
                ):
                    variable.assign(value)
                return outputs

        self._generate_functions[stop_token_ids] = function
        return function

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "causal_lm": keras.saving.serialize_keras_object(self.causal_lm),
            "sampler": keras.saving.serialize_keras_object(self.sampler),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["causal_lm"] = keras.saving.deserialize_keras_object(
            config["causal_lm"]
        )
        sampler = config.get("sampler")
        if isinstance(sampler, dict):
            config["sampler"] = keras.saving.deserialize_keras_object(sampler)
        return cls(**config)
