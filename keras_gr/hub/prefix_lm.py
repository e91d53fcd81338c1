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

- `LoopedGemmaPrefixAdapter` (`keras_gr.hub.LoopedGemmaBackbone`, in
  `looped_lm.py`): Gemma's, over the backbone's `layer_schedule`.

The decoder stack with or without a cache is one function,
`run_decoder_layers(backbone, x, schedule, ...)`, shared by every adapter
and by `LoopedGemmaCausalLM.call_with_cache`. Register another family with
`register_prefix_adapter(BackboneClass, adapter)`. Adapters are matched by
the backbone's exact class: `get_prefix_adapter(backbone)` raises a
`ValueError` naming the backbone class and the registered ones when its
class has none, also for a subclass of a registered class (the parent's
adapter would silently skip what the subclass changes).
"""

import itertools
from collections.abc import Sequence
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

    A family differs from another in four places, each a method:
    `embed_tokens` (the token embedding in the space where the prefix is
    inserted), `embed_positions` (what is added to the whole sequence
    before the first layer; nothing by default), `layer_arguments` (the
    keyword names its decoder layers take for the padding mask and the
    cache) and `key_value_shape` (heads and head width of one cache
    slot). `layer_schedule` (every layer once, in order, by default) says
    which decoder layers run, in which order: a looped backbone repeats
    indices, and the cache keeps one slot per application. The forward
    pass itself (`embed_sequence`, then `forward` through
    `run_decoder_layers`) is shared.
    `max_sequence_length` bounds `t + L` for families with learned
    positions (`None`: no bound). Register one for a new family with
    `register_prefix_adapter`.

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

    def embed_positions(self, backbone, embeddings, start_index):
        """What the first layer receives for `embeddings` (b, n, d) that
        start at position `start_index`. Defaults to `embeddings`."""
        return embeddings

    def layer_arguments(self):
        """Keyword names of the decoder layers' padding mask, cache and
        cache index, in that order."""
        raise NotImplementedError

    def key_value_shape(self, backbone):
        """`(heads, head_dim)` of one layer's keys and values."""
        raise NotImplementedError

    def layer_schedule(self, backbone):
        """Indices into `backbone.transformer_layers` in the order they
        run. Defaults to each layer once, in order."""
        return list(range(len(backbone.transformer_layers)))

    def max_sequence_length(self, backbone):
        """Most positions (prefix included) the backbone can take, or
        `None` without a bound. Defaults to `None`."""
        return None

    def embed_sequence(self, backbone, prefix, token_ids):
        """`[prefix, embed_tokens(token_ids)]` (b, t + L, d): the prefix
        (b, t, d), cast to the token embeddings' dtype, in front."""
        tokens = self.embed_tokens(backbone, token_ids)
        prefix = ops.cast(prefix, tokens.dtype)
        return ops.concatenate([prefix, tokens], axis=1)

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
        x = self.embed_positions(backbone, embeddings, cache_update_index)
        return run_decoder_layers(
            backbone,
            x,
            self.layer_schedule(backbone),
            padding_mask=padding_mask,
            cache=cache,
            cache_update_index=cache_update_index,
            argument_names=self.layer_arguments(),
        )

    def cache_shape(self, backbone, batch_size, length):
        """Shape of the stacked key/value cache for `length` positions:
        one slot per entry of `layer_schedule`."""
        return [
            batch_size,
            len(self.layer_schedule(backbone)),
            2,
            length,
            *self.key_value_shape(backbone),
        ]

    def logits(self, backbone, hidden_states):
        return backbone.token_embedding(hidden_states, reverse=True)


def run_decoder_layers(
    backbone: keras.Model,
    x: Any,
    schedule: Sequence[int],
    padding_mask: Any | None = None,
    cache: Any | None = None,
    cache_update_index: Any = 0,
    argument_names: tuple[str, str, str] = (
        "padding_mask",
        "cache",
        "cache_update_index",
    ),
) -> tuple[Any, Any]:
    """The decoder stack of a keras-hub backbone, with or without a cache.

    Runs `backbone.transformer_layers[i]` for each `i` of `schedule` in
    turn on `x` (b, n, d), then `backbone.layer_norm`. Without a cache
    each layer sees `padding_mask`; with a stacked `cache` (b, len(schedule),
    2, length, heads, head_dim) the application at position `s` of the
    schedule reads and writes cache slot `s` at `cache_update_index` (the
    attention is causal over the cache, as in keras-hub's
    `call_with_cache`). A schedule that repeats an index (a looped
    backbone) gives that layer one slot per application, since it sees
    other inputs at each loop. `argument_names` are the layers' keyword
    names for the padding mask, the cache and the cache index (Gemma's by
    default; GPT-2's are `decoder_padding_mask`, `self_attention_cache`,
    `self_attention_cache_update_index`).

    Returns:
        `(hidden_states, cache)`: the normalised output (b, n, d) and the
        updated stacked cache (`None` without a cache).

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=32, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8)
    >>> x = gemma_embed(backbone, np.ones((1, 4), "int32"))
    >>> cache = np.zeros((1, 3, 2, 4, 1, 8), "float32")  # 3 applications
    >>> hidden, cache = run_decoder_layers(backbone, x, [0, 1, 1], cache=cache)
    >>> tuple(hidden.shape), tuple(cache.shape)
    ((1, 4, 16), (1, 3, 2, 4, 1, 8))
    """
    mask_name, cache_name, index_name = argument_names
    caches = []
    for slot, index in enumerate(schedule):
        layer = backbone.transformer_layers[index]
        if cache is None:
            x = layer(x, **{mask_name: padding_mask})
        else:
            x, layer_cache = layer(
                x,
                **{
                    cache_name: cache[:, slot, ...],
                    index_name: cache_update_index,
                },
            )
            caches.append(layer_cache)
    x = backbone.layer_norm(x)
    return x, (ops.stack(caches, axis=1) if caches else None)


def gemma_embed(backbone, token_ids):
    """Gemma's token embeddings, scaled by `sqrt(hidden_dim)` (read from
    the embedding layer, so it also works while a backbone is built)."""
    x = backbone.token_embedding(token_ids)
    hidden_dim = backbone.token_embedding.output_dim
    return x * ops.cast(ops.sqrt(hidden_dim), x.dtype)


class GemmaPrefixAdapter(PrefixLMAdapter):
    """`keras_hub.models.GemmaBackbone`: scaled embeddings, RoPE.

    The prefix is inserted after the `sqrt(hidden_dim)` scaling; RoPE
    positions come from the cache index inside attention, so there is no
    bound on `t + L`.

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
        return gemma_embed(backbone, token_ids)

    def layer_arguments(self):
        return ("padding_mask", "cache", "cache_update_index")

    def key_value_shape(self, backbone):
        return (backbone.num_key_value_heads, backbone.head_dim)


class GPT2PrefixAdapter(PrefixLMAdapter):
    """`keras_hub.models.GPT2Backbone`: learned positions over the prefix.

    The prefix is inserted in token-embedding space and the learned
    position embeddings are added to the whole sequence, so `t + L` must
    not exceed `max_sequence_length`.

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

    def embed_positions(self, backbone, embeddings, start_index):
        positions = backbone.position_embedding(
            embeddings, start_index=start_index
        )
        x = backbone.embeddings_add((embeddings, positions))
        return backbone.embeddings_dropout(x)

    def layer_arguments(self):
        return (
            "decoder_padding_mask",
            "self_attention_cache",
            "self_attention_cache_update_index",
        )

    def key_value_shape(self, backbone):
        return (backbone.num_heads, backbone.hidden_dim // backbone.num_heads)

    def max_sequence_length(self, backbone):
        return int(backbone.max_sequence_length)


# Exact backbone class -> adapter. A subclass is not matched by its parent:
# it may change the forward pass (a looped schedule, extra branches) that the
# parent's adapter would silently skip.
_ADAPTERS = {
    keras_hub.models.GemmaBackbone: GemmaPrefixAdapter(),
    keras_hub.models.GPT2Backbone: GPT2PrefixAdapter(),
}


def register_prefix_adapter(
    backbone_cls: type, adapter: PrefixLMAdapter
) -> None:
    """Registers `adapter` for backbones of exactly the class `backbone_cls`.

    Subclasses are not covered: `get_prefix_adapter` refuses a backbone
    whose exact class has no adapter, even when a parent class has one, so
    register each subclass (with its parent's adapter if its forward pass
    is the parent's). A second registration of a class replaces the first.

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
    _ADAPTERS[backbone_cls] = adapter


def get_prefix_adapter(backbone: keras.Model) -> PrefixLMAdapter:
    """The `PrefixLMAdapter` registered for `backbone`'s exact class.

    Raises a `ValueError` naming the class and the registered ones when
    there is none, including for a subclass of a registered class (see
    `register_prefix_adapter`).

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=32, num_layers=1, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8)
    >>> type(get_prefix_adapter(backbone)).__name__
    'GemmaPrefixAdapter'
    """
    adapter = _ADAPTERS.get(type(backbone))
    if adapter is not None:
        return adapter
    known = sorted(cls.__name__ for cls in _ADAPTERS)
    parents = [cls.__name__ for cls in _ADAPTERS if isinstance(backbone, cls)]
    hint = ""
    if parents:
        hint = (
            f" It subclasses {', '.join(sorted(parents))}, whose adapter "
            "may skip what the subclass changes: register one for the "
            "subclass itself."
        )
    raise ValueError(
        f"`backbone` of class {type(backbone).__name__} has no registered "
        f"prefix adapter: the classes with one are {known} (see "
        f"`keras_gr.hub.register_prefix_adapter`).{hint} Received: "
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
    check_prefix_positions(
        adapter, backbone, ops.shape(prefix)[1], ops.shape(token_ids)[1]
    )
    x = adapter.embed_sequence(backbone, prefix, token_ids)
    mask = None
    if padding_mask is not None:
        batch = ops.shape(prefix)[0]
        prefix_mask = ops.ones((batch, ops.shape(prefix)[1]), dtype="bool")
        mask = ops.concatenate(
            [prefix_mask, ops.cast(padding_mask, "bool")], axis=1
        )
    hidden, _ = adapter.forward(backbone, x, padding_mask=mask)
    return adapter.logits(backbone, hidden)


def check_prefix_positions(adapter, backbone, prefix_length, length):
    """Raises a `ValueError` when `prefix_length + length` positions do not
    fit the backbone (`adapter.max_sequence_length`, set by families with
    learned position embeddings); a no-op for symbolic lengths and for
    families without a bound."""
    limit = adapter.max_sequence_length(backbone)
    if limit is None:
        return
    if not isinstance(prefix_length, int) or not isinstance(length, int):
        return
    if prefix_length + length > limit:
        raise ValueError(
            "The prefix length plus the sequence length must not exceed "
            f"the backbone's max_sequence_length={limit}. Received: prefix "
            f"length {prefix_length} + length {length} = "
            f"{prefix_length + length}"
        )


def _check_prompt(token_ids, padding_mask, batch, max_length, vocabulary):
    """`(token_ids, padding_mask)` as int32 / bool NumPy arrays after checking
    that they are what keras-hub's `generate` takes: integer ids inside
    the vocabulary, `batch` rows of at most `max_length` columns, a mask of
    the same shape whose rows are right-padded (`True...True False...`) and
    hold at least one token."""
    token_ids = check_array("token_ids", token_ids, ndim=2)
    if not (
        np.issubdtype(token_ids.dtype, np.integer)
        or np.array_equal(token_ids, np.round(token_ids))
    ):
        raise ValueError(
            "`token_ids` must hold integer token ids. Received: token_ids "
            f"of dtype {token_ids.dtype} with non-integer entries"
        )
    if token_ids.shape[0] != batch or token_ids.shape[1] > max_length:
        raise ValueError(
            "`token_ids` must have `prefix`'s batch size and at most "
            f"`max_length`={max_length} columns. Received: token_ids "
            f"with shape {token_ids.shape}, a prefix batch of {batch}"
        )
    if padding_mask is None:
        padding_mask = np.ones(token_ids.shape, bool)
    padding_mask = np.asarray(padding_mask)
    if padding_mask.shape != token_ids.shape:
        raise ValueError(
            "`padding_mask` must have the shape of `token_ids` "
            f"{token_ids.shape}. Received: padding_mask with shape "
            f"{padding_mask.shape}"
        )
    padding_mask = padding_mask.astype(bool)
    empty = np.flatnonzero(~padding_mask[:, 0])
    if empty.size:
        raise ValueError(
            "`padding_mask` must mark at least the first token of each row "
            f"as real. Received: no real first token in row {int(empty[0])}"
        )
    gaps = np.flatnonzero((padding_mask[:, 1:] > padding_mask[:, :-1]).any(1))
    if gaps.size:
        raise ValueError(
            "`padding_mask` must pad each row on the right only (keras-hub "
            "generates after the last real token). Received: a real token "
            f"after padding in row {int(gaps[0])}"
        )
    real = token_ids[padding_mask]
    if real.size and (real.min() < 0 or real.max() >= vocabulary):
        raise ValueError(
            f"`token_ids` must lie in [0, {vocabulary}) (the vocabulary "
            f"size is {vocabulary}). Received: ids from {int(real.min())} to "
            f"{int(real.max())}"
        )
    return token_ids.astype("int32"), padding_mask


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
        # keras-hub's `get` returns an unknown name unchanged: check it.
        try:
            resolved = keras_hub.samplers.get(sampler)
        except (ValueError, TypeError):
            resolved = None
        if not isinstance(resolved, keras_hub.samplers.Sampler):
            raise ValueError(
                "`sampler` must be a keras-hub sampler name (e.g. 'greedy', "
                "'top_k', 'top_p') or a `keras_hub.samplers.Sampler`. "
                f"Received: sampler={sampler!r}"
            )
        self.sampler = resolved
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
        x = self.adapter.embed_sequence(self.backbone, prefix, token_ids)
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

        Everything is checked before anything runs, with a `ValueError`
        naming the argument: a finite `prefix` of the backbone's width;
        integer `token_ids` inside the vocabulary (and start / stop ids);
        a `padding_mask` of the ids' shape whose rows are right-padded and
        hold at least one real token (what keras-hub's `generate` assumes);
        and, for families with learned positions (GPT-2), `t + max_length
        <= max_sequence_length`.
        """
        max_length = check_integer("max_length", max_length, minimum=2)
        if seed is not None:
            seed = check_integer("seed", seed, minimum=0)
        vocabulary_size = int(self.backbone.vocabulary_size)
        prefix = np.asarray(ops.convert_to_numpy(prefix), dtype="float32")
        check_array("prefix", prefix, ndim=3, allow_empty=True)
        if prefix.shape[-1] != self.backbone.hidden_dim:
            raise ValueError(
                "`prefix` must have the backbone's width "
                f"{self.backbone.hidden_dim} as its last dimension. "
                f"Received: prefix with shape {prefix.shape}"
            )
        check_prefix_positions(
            self.adapter, self.backbone, prefix.shape[1], max_length
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
            start_token_id = check_integer(
                "start_token_id", start_token_id, 0, vocabulary_size - 1
            )
            token_ids = np.full((batch, 1), start_token_id, "int32")
        token_ids, padding_mask = _check_prompt(
            token_ids, padding_mask, batch, max_length, vocabulary_size
        )
        pad = max_length - token_ids.shape[1]
        token_ids = np.pad(token_ids, [(0, 0), (0, pad)])
        padding_mask = np.pad(padding_mask, [(0, 0), (0, pad)])
        if stop_token_ids is not None:
            stop_token_ids = tuple(
                check_integer("stop_token_ids", s, 0, vocabulary_size - 1)
                for s in stop_token_ids
            )
        if seed is not None:
            for variable in self.sampler.variables:
                state = np.zeros(variable.shape, variable.dtype)
                state.reshape(-1)[0] = seed
                variable.assign(state)
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
        config["causal_lm"] = deserialize_causal_lm(config["causal_lm"])
        sampler = config.get("sampler")
        if isinstance(sampler, dict):
            config["sampler"] = keras.saving.deserialize_keras_object(sampler)
        return cls(**config)


def deserialize_causal_lm(config):
    """A keras-hub causal LM from its serialized form inside another
    model's config, with its compile config replayed.

    keras-hub's `compile()` is custom, so Keras would not call it on load
    (and would warn "compile() was not called as part of model loading");
    here the saved compile arguments are passed to the LM's own
    `compile()` instead, so the loaded LM is compiled as the saved one was.
    """
    if not isinstance(config, dict) or not config.get("compile_config"):
        return keras.saving.deserialize_keras_object(config)
    config = dict(config)
    compile_config = config.pop("compile_config")
    causal_lm = keras.saving.deserialize_keras_object(config)
    causal_lm.compile(**keras.saving.deserialize_keras_object(compile_config))
    return causal_lm
