"""Retrofit LAuReL residual joins into keras-hub Gemma and GPT-2 models.

keras-hub transformer blocks compute `x + f(x)` inside the block, twice
(after attention and after the MLP). The blocks defined here are subclasses
of keras-hub's `GemmaDecoderBlock` and `TransformerDecoder` whose `call` is
keras-hub's own, with those two additions replaced by `Laurel` joins; the
cache arguments and return values are unchanged, so
`CausalLM.call_with_cache` (and therefore `generate()`) works as before.

Backend note: the keras-hub classes `GemmaDecoderBlock`, the Gemma and GPT-2
backbone modules are not all exported publicly, so this module (and only
this module) imports from `keras_hub.src`.
"""

import contextlib
import functools
from typing import Any

import keras
import keras_hub
from keras import ops
from keras_hub.src.layers.modeling.transformer_layer_utils import (
    compute_causal_mask,
)
from keras_hub.src.layers.modeling.transformer_layer_utils import (
    merge_padding_and_attention_mask,
)
from keras_hub.src.models.gemma import gemma_backbone as _gemma_backbone
from keras_hub.src.models.gemma.gemma_decoder_block import GemmaDecoderBlock
from keras_hub.src.models.gpt2 import gpt2_backbone as _gpt2_backbone

from keras_gr.layers.laurel import Laurel

SUPPORTED_FAMILIES = ("GemmaBackbone", "GPT2Backbone")
RETROFIT_VARIANTS = ("rw", "lr", "rw_lr")
DEFAULT_LAUREL_CONFIG = {"variant": "rw_lr", "rank": 4}


def _laurel_kwargs(laurel_config):
    config = dict(DEFAULT_LAUREL_CONFIG)
    config.update(laurel_config or {})
    variant = config.get("variant")
    if variant not in RETROFIT_VARIANTS:
        raise ValueError(
            f"`variant` must be one of {RETROFIT_VARIANTS} for a keras-hub "
            f"retrofit. Received: variant={variant!r}. (The PA variants need "
            "the inputs of earlier blocks, which keras-hub's "
            "`call_with_cache` does not pass between transformer layers.)"
        )
    if config.get("rw_parametrization", "additive") != "additive" and (
        variant.startswith("rw")
    ):
        raise ValueError(
            "`rw_parametrization` must be 'additive' for a retrofit (the only "
            "form that starts at exactly f(x) + x). Received: "
            f"rw_parametrization={config['rw_parametrization']!r}"
        )
    return config


def _laurel_joins(layer, laurel_config):
    kwargs = _laurel_kwargs(laurel_config)
    attention = Laurel(
        **kwargs, dtype=layer.dtype_policy, name="attention_laurel"
    )
    feedforward = Laurel(
        **kwargs, dtype=layer.dtype_policy, name="feedforward_laurel"
    )
    return attention, feedforward


@keras.saving.register_keras_serializable(package="keras_gr")
class LaurelGemmaDecoderBlock(GemmaDecoderBlock):
    """keras-hub's `GemmaDecoderBlock` with LAuReL residual joins.

    Both residual additions of the block (after attention, after the
    gated MLP) are `Laurel` layers (arXiv 2411.07501) built from
    `laurel_config` (`Laurel` keyword arguments; defaults
    `{"variant": "rw_lr", "rank": 4}`); RW uses the additive
    parametrisation, so at initialisation the block computes exactly what
    `GemmaDecoderBlock` computes. `call` keeps keras-hub's signature and
    returns `(x, cache)` when a cache is given.

    Example:

    >>> import numpy as np
    >>> block = LaurelGemmaDecoderBlock(
    ...     hidden_dim=16, intermediate_dim=32, head_dim=8,
    ...     num_query_heads=2, num_key_value_heads=1,
    ... )
    >>> x = np.random.default_rng(0).normal(size=(1, 4, 16))
    >>> tuple(block(x.astype("float32")).shape)
    (1, 4, 16)
    >>> block.attention_laurel.variant, block.feedforward_laurel.rank
    ('rw_lr', 4)
    """

    def __init__(
        self,
        *args,
        laurel_config: dict[str, Any] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.laurel_config = _laurel_kwargs(laurel_config)
        self.attention_laurel, self.feedforward_laurel = _laurel_joins(
            self, self.laurel_config
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.attention_laurel.build([input_shape, input_shape])
        self.feedforward_laurel.build([input_shape, input_shape])

    def call(self, x, padding_mask=None, cache=None, cache_update_index=0):
        normalized_x = self.pre_attention_norm(x)
        attention_mask = self._compute_attention_mask(
            normalized_x, padding_mask, cache, cache_update_index
        )
        if cache is not None:
            attention, new_cache = self.attention(
                normalized_x,
                attention_mask=attention_mask,
                cache=cache,
                cache_update_index=cache_update_index,
            )
        else:
            attention = self.attention(
                normalized_x, attention_mask=attention_mask
            )
        if self.use_post_attention_norm:
            attention = self.post_attention_norm(attention)
        if self.dropout:
            attention = self.attention_dropout(attention)

        attention_x = self.attention_laurel([x, attention])

        normalized_x = self.pre_ffw_norm(attention_x)
        x1 = self.gating_ffw(normalized_x)
        x2 = self.gating_ffw_2(normalized_x)
        x = keras.activations.gelu(x1, approximate=True) * x2
        x = self.ffw_linear(x)
        if self.use_post_ffw_norm:
            x = self.post_ffw_norm(x)

        x = self.feedforward_laurel([attention_x, x])
        if cache is not None:
            return x, new_cache
        return x

    def get_config(self):
        config = super().get_config()
        config["laurel_config"] = dict(self.laurel_config)
        return config


@keras.saving.register_keras_serializable(package="keras_gr")
class LaurelTransformerDecoder(keras_hub.layers.TransformerDecoder):
    """keras-hub's `TransformerDecoder` (decoder-only) with LAuReL joins.

    The self-attention and feed-forward residual additions are `Laurel`
    layers (arXiv 2411.07501) built from `laurel_config`; at initialisation
    the layer computes exactly what `TransformerDecoder` computes. Only the
    decoder-only form (GPT-2) is supported: passing `encoder_sequence`
    raises. Returns `(x, self_attention_cache)` when a cache is given.

    Example:

    >>> import numpy as np
    >>> layer = LaurelTransformerDecoder(
    ...     intermediate_dim=32, num_heads=2, laurel_config={"variant": "rw"}
    ... )
    >>> x = np.random.default_rng(0).normal(size=(1, 4, 16))
    >>> tuple(layer(x.astype("float32")).shape)
    (1, 4, 16)
    >>> layer.attention_laurel.variant
    'rw'
    """

    def __init__(
        self,
        *args,
        laurel_config: dict[str, Any] | None = None,
        **kwargs,
    ) -> None:
        decoder_shape = kwargs.pop("decoder_sequence_shape", None)
        encoder_shape = kwargs.pop("encoder_sequence_shape", None)
        if encoder_shape is not None:
            raise ValueError(
                "LaurelTransformerDecoder supports decoder-only stacks; "
                f"Received: encoder_sequence_shape={encoder_shape}"
            )
        super().__init__(*args, **kwargs)
        self.laurel_config = _laurel_kwargs(laurel_config)
        self.attention_laurel, self.feedforward_laurel = _laurel_joins(
            self, self.laurel_config
        )
        if decoder_shape is not None:
            self.build(decoder_shape)

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        if encoder_sequence_shape is not None:
            raise ValueError(
                "LaurelTransformerDecoder supports decoder-only stacks; "
                f"Received: encoder_sequence_shape={encoder_sequence_shape}"
            )
        super().build(decoder_sequence_shape)
        shape = decoder_sequence_shape
        self.attention_laurel.build([shape, shape])
        self.feedforward_laurel.build([shape, shape])

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        use_causal_mask=True,
        training=None,
    ):
        if encoder_sequence is not None:
            raise ValueError(
                "LaurelTransformerDecoder supports decoder-only stacks; "
                "`encoder_sequence` must be None."
            )
        mask = merge_padding_and_attention_mask(
            decoder_sequence, decoder_padding_mask, decoder_attention_mask
        )
        if use_causal_mask:
            batch_size = ops.shape(decoder_sequence)[0]
            input_length = output_length = ops.shape(decoder_sequence)[1]
            if self_attention_cache is not None:
                input_length = ops.shape(self_attention_cache)[2]
            index = self_attention_cache_update_index
            causal = compute_causal_mask(
                batch_size,
                input_length,
                output_length,
                0 if index is None else index,
            )
            mask = causal if mask is None else ops.minimum(mask, causal)

        x = decoder_sequence
        residual = x
        if self.normalize_first:
            x = self._self_attention_layer_norm(x)
        attention_output = self._self_attention_layer(
            query=x,
            value=x,
            attention_mask=mask,
            cache=self_attention_cache,
            cache_update_index=self_attention_cache_update_index,
            training=training,
        )
        if self_attention_cache is None:
            x = attention_output
        else:
            x, self_attention_cache = attention_output
        x = self._self_attention_dropout(x, training=training)
        x = self.attention_laurel([residual, x])
        if not self.normalize_first:
            x = self._self_attention_layer_norm(x)

        residual = x
        if self.normalize_first:
            x = self._feedforward_layer_norm(x)
        x = self._feedforward_intermediate_dense(x)
        x = self._feedforward_output_dense(x)
        x = self._feedforward_dropout(x, training=training)
        x = self.feedforward_laurel([residual, x])
        if not self.normalize_first:
            x = self._feedforward_layer_norm(x)

        if self_attention_cache is not None:
            return x, self_attention_cache
        return x

    def get_config(self):
        config = super().get_config()
        config["laurel_config"] = dict(self.laurel_config)
        return config


@contextlib.contextmanager
def _replace_block_class(module, name, factory):
    # keras-hub backbones build their blocks from a module-level class name;
    # swapping it while the parent __init__ runs reuses keras-hub's own
    # functional graph (embedding, scaling, final norm) unchanged.
    original = getattr(module, name)
    setattr(module, name, factory)
    try:
        yield
    finally:
        setattr(module, name, original)


@keras.saving.register_keras_serializable(package="keras_gr")
class LaurelGemmaBackbone(keras_hub.models.GemmaBackbone):
    """`GemmaBackbone` whose blocks are `LaurelGemmaDecoderBlock`s.

    Same arguments as `keras_hub.models.GemmaBackbone` plus `laurel_config`
    (`Laurel` keyword arguments for every join). Usually made by
    `laurel_retrofit`, not by hand.

    Example:

    >>> backbone = LaurelGemmaBackbone(
    ...     vocabulary_size=40, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8, laurel_config={"variant": "lr", "rank": 2},
    ... )
    >>> type(backbone.transformer_layers[0]).__name__
    'LaurelGemmaDecoderBlock'
    >>> backbone.get_config()["laurel_config"]["variant"]
    'lr'
    """

    def __init__(
        self,
        *args,
        laurel_config: dict[str, Any] | None = None,
        **kwargs,
    ) -> None:
        config = _laurel_kwargs(laurel_config)
        factory = functools.partial(
            LaurelGemmaDecoderBlock, laurel_config=config
        )
        with _replace_block_class(
            _gemma_backbone, "GemmaDecoderBlock", factory
        ):
            super().__init__(*args, **kwargs)
        self.laurel_config = config

    def get_config(self):
        config = super().get_config()
        config["laurel_config"] = dict(self.laurel_config)
        return config


@keras.saving.register_keras_serializable(package="keras_gr")
class LaurelGPT2Backbone(keras_hub.models.GPT2Backbone):
    """`GPT2Backbone` whose blocks are `LaurelTransformerDecoder`s.

    Same arguments as `keras_hub.models.GPT2Backbone` plus `laurel_config`.
    Usually made by `laurel_retrofit`.

    Example:

    >>> backbone = LaurelGPT2Backbone(
    ...     vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8,
    ... )
    >>> type(backbone.transformer_layers[1]).__name__
    'LaurelTransformerDecoder'
    """

    def __init__(
        self,
        *args,
        laurel_config: dict[str, Any] | None = None,
        **kwargs,
    ) -> None:
        config = _laurel_kwargs(laurel_config)
        factory = functools.partial(
            LaurelTransformerDecoder, laurel_config=config
        )
        with _replace_block_class(
            _gpt2_backbone, "TransformerDecoder", factory
        ):
            super().__init__(*args, **kwargs)
        self.laurel_config = config

    def get_config(self):
        config = super().get_config()
        config["laurel_config"] = dict(self.laurel_config)
        return config


@keras.saving.register_keras_serializable(package="keras_gr")
class LaurelGemmaCausalLM(keras_hub.models.GemmaCausalLM):
    """`GemmaCausalLM` over a `LaurelGemmaBackbone` (so that
    `keras_hub.models.CausalLM.from_preset` finds the task of a saved
    retrofitted preset). Behaviour is `GemmaCausalLM`'s.

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=40, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8,
    ... )
    >>> inputs = {
    ...     "token_ids": np.array([[1, 5, 7, 2]], "int32"),
    ...     "padding_mask": np.ones((1, 4), "int32"),
    ... }
    >>> lm = laurel_retrofit(keras_hub.models.GemmaCausalLM(backbone))
    >>> type(lm).__name__
    'LaurelGemmaCausalLM'
    >>> tuple(lm(inputs).shape)
    (1, 4, 40)
    """

    backbone_cls = LaurelGemmaBackbone


@keras.saving.register_keras_serializable(package="keras_gr")
class LaurelGPT2CausalLM(keras_hub.models.GPT2CausalLM):
    """`GPT2CausalLM` over a `LaurelGPT2Backbone` (found by
    `keras_hub.models.CausalLM.from_preset`). Behaviour is
    `GPT2CausalLM`'s.

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8,
    ... )
    >>> inputs = {
    ...     "token_ids": np.array([[1, 5, 7, 2]], "int32"),
    ...     "padding_mask": np.ones((1, 4), "int32"),
    ... }
    >>> lm = laurel_retrofit(keras_hub.models.GPT2CausalLM(backbone))
    >>> type(lm).__name__
    'LaurelGPT2CausalLM'
    >>> tuple(lm(inputs).shape)
    (1, 4, 40)
    """

    backbone_cls = LaurelGPT2Backbone


_RETROFIT_CLASSES = {
    keras_hub.models.GemmaBackbone: (LaurelGemmaBackbone, LaurelGemmaCausalLM),
    keras_hub.models.GPT2Backbone: (LaurelGPT2Backbone, LaurelGPT2CausalLM),
}
_LAUREL_BLOCKS = (LaurelGemmaDecoderBlock, LaurelTransformerDecoder)


def laurel_parameters(model: keras.Model) -> list[keras.Variable]:
    """The LAuReL variables of a retrofitted backbone or CausalLM.

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=40, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8,
    ... )
    >>> laurel = laurel_retrofit(backbone, variant="rw_lr", rank=2)
    >>> len(laurel_parameters(laurel))  # 2 blocks x 2 joins x 4 weights
    16
    >>> sum(int(np.prod(v.shape)) for v in laurel_parameters(laurel))
    264
    """
    backbone = getattr(model, "backbone", model)
    found = []
    for block in backbone.transformer_layers:
        if isinstance(block, _LAUREL_BLOCKS):
            found += block.attention_laurel.weights
            found += block.feedforward_laurel.weights
    return found


def train_only_laurel(model: keras.Model) -> keras.Model:
    """Freezes every layer of `model` except its `Laurel` joins (in place).

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=40, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8,
    ... )
    >>> laurel = train_only_laurel(laurel_retrofit(backbone, rank=2))
    >>> len(laurel.trainable_weights) == len(laurel_parameters(laurel))
    True
    """
    backbone = getattr(model, "backbone", model)
    for layer in backbone.layers:
        if isinstance(layer, _LAUREL_BLOCKS):
            layer.trainable = True
            for value in list(vars(layer).values()):
                if isinstance(value, keras.layers.Layer) and not isinstance(
                    value, Laurel
                ):
                    value.trainable = False
            layer.attention_laurel.trainable = True
            layer.feedforward_laurel.trainable = True
        else:
            layer.trainable = False
    return model


def laurel_retrofit(
    model: keras.Model,
    variant: str = "rw_lr",
    rank: int = 4,
    train_only_laurel_params: bool = False,
    **laurel_kwargs: Any,
) -> keras.Model:
    """Returns a copy of a keras-hub model whose residuals are LAuReL joins.

    Every transformer block's two residual additions (after attention, after
    the MLP) become `Laurel` layers ("LAuReL: Learned Augmented Residual
    Layer", arXiv 2411.07501). RW uses the additive parametrisation
    `alpha = 1 + a`, `beta = 1 + b` (a = b = 0) and LR has `B = 0`, so at
    initialisation the new model computes exactly the pretrained function
    (same float32 operations; logits equal up to float rounding of the
    commuted addition, which is exact in IEEE arithmetic). The pretrained
    weights are copied by variable path; the input model is not modified.

    Args:
        model: a keras-hub `CausalLM` (e.g. `GemmaCausalLM`, `GPT2CausalLM`,
            as loaded with `from_preset`) or its backbone. Supported
            families: Gemma (`GemmaBackbone`) and GPT-2 (`GPT2Backbone`).
        variant: `"rw"`, `"lr"` or `"rw_lr"`. The PA variants are not
            supported here: keras-hub's `call_with_cache` passes only the
            current hidden state between blocks. Defaults to `"rw_lr"`.
        rank: rank of the LR term. Defaults to 4.
        train_only_laurel_params: if True, freeze everything but the LAuReL
            parameters. Defaults to False.
        **laurel_kwargs: other `Laurel` arguments (`per_channel`,
            `low_rank_initializer`).

    Returns:
        A model of the same kind: a `LaurelGemmaCausalLM` /
        `LaurelGPT2CausalLM` (subclasses of the keras-hub tasks, sharing the
        input's preprocessor) or a `LaurelGemmaBackbone` /
        `LaurelGPT2Backbone`. Save with `.save("x.keras")` or
        `.save_to_preset(folder)`; reload with `keras.models.load_model` or
        `keras_hub.models.CausalLM.from_preset(folder)` once `keras_gr.hub`
        is imported.

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=40, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8,
    ... )
    >>> inputs = {
    ...     "token_ids": np.array([[1, 5, 7, 2]], "int32"),
    ...     "padding_mask": np.ones((1, 4), "int32"),
    ... }
    >>> laurel = laurel_retrofit(backbone, variant="rw_lr", rank=2)
    >>> type(laurel).__name__
    'LaurelGemmaBackbone'
    >>> bool(np.allclose(laurel(inputs), backbone(inputs), atol=1e-5))
    True
    """
    is_task = isinstance(model, keras_hub.models.CausalLM)
    backbone = model.backbone if is_task else model
    if isinstance(backbone, (LaurelGemmaBackbone, LaurelGPT2Backbone)):
        raise ValueError(
            "`model` already has LAuReL residuals. Received: "
            f"model={type(model).__name__}"
        )
    if is_task and type(model) not in (
        keras_hub.models.GemmaCausalLM,
        keras_hub.models.GPT2CausalLM,
    ):
        raise ValueError(
            "`model` must be a GemmaCausalLM or GPT2CausalLM (or a Gemma / "
            f"GPT-2 backbone). Received: model of type {type(model).__name__}"
        )
    new_cls, task_cls = _RETROFIT_CLASSES.get(type(backbone), (None, None))
    if new_cls is None:
        raise ValueError(
            "`model` must be a keras-hub CausalLM or backbone of a supported "
            f"family {SUPPORTED_FAMILIES}. Received: model of type "
            f"{type(model).__name__} with backbone {type(backbone).__name__}"
        )
    laurel_config = _laurel_kwargs(
        {"variant": variant, "rank": rank, **laurel_kwargs}
    )
    config = backbone.get_config()
    config["laurel_config"] = laurel_config
    new_backbone = new_cls.from_config(config)
    _copy_weights(backbone, new_backbone)
    if train_only_laurel_params:
        train_only_laurel(new_backbone)
    if not is_task:
        return new_backbone
    return task_cls(backbone=new_backbone, preprocessor=model.preprocessor)


def _copy_weights(source, target):
    by_path = {v.path: v for v in target.weights}
    for variable in source.weights:
        if variable.path not in by_path:
            raise ValueError(
                f"Retrofit could not place pretrained weight {variable.path}"
            )
        by_path[variable.path].assign(variable)
