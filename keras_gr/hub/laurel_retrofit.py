"""Retrofit LAuReL residual joins into keras-hub decoder backbones, in place.

Every pre-norm keras-hub decoder block computes `x + f(x)` twice (after
attention, after the MLP), and in each of them the input of the branch's
pre-norm layer *is* the residual stream `x`. One mechanism covers every
supported family, from a table of two sublayer names per join:

- the *tap* (the branch's pre-norm layer): its instance `call` is wrapped to
  record its input, the residual `x`, in the join's slot;
- the *branch end* (the last sublayer before the block's own `x + g`): its
  instance `call` (and `quantized_call`) is wrapped to return
  `Laurel.residual_increment(g, x)` in place of `g`, so the block's own
  addition computes the LAuReL join. For the additive RW and LR this is
  `g + a g + b x + (1 + b) (x A) B`: exactly `g` at initialisation, so the
  model's outputs are bit-identical until it is trained.

The blocks' own `call` is untouched (cache arguments, `call_with_cache` and
`generate()` work as before), the wrapped sublayers keep their weights
(saved and loaded under the same paths), no module global is swapped and no
second backbone is built. The `Laurel` layers are tracked on the backbone
(`backbone.laurel_joins`).

The slot of a join is a `threading.local()`: the tap and the branch end of a
join run in the same thread (inside one block call), so concurrent calls of
one model from several Python threads do not mix their residuals.

The table names private attributes of keras-hub's block classes
(`_self_attention_layernorm`, ...); `tests/hub/test_laurel_retrofit.py`
pins it to the keras-hub version range of `pyproject.toml` with a parity
test per family. No `keras_hub.src` module is imported.
"""

import functools
import threading
from typing import Any

import keras
import keras_hub

from keras_gr.layers.laurel import Laurel

RETROFIT_VARIANTS = ("rw", "lr", "rw_lr")
DEFAULT_LAUREL_CONFIG = {"variant": "rw_lr", "rank": 4}


def _gemma_sites(block):
    # GemmaDecoderBlock (Gemma, Gemma 2 options) and Gemma3DecoderBlock:
    # the attention branch ends in its dropout, else its post norm, else
    # the attention layer itself (which returns `(out, cache)` with a
    # cache); the MLP branch in its post norm, else `ffw_linear`.
    if block.dropout:
        attention_end = "attention_dropout"
    elif block.use_post_attention_norm:
        attention_end = "post_attention_norm"
    else:
        attention_end = "attention"
    ffw_end = "post_ffw_norm" if block.use_post_ffw_norm else "ffw_linear"
    return (("pre_attention_norm", attention_end), ("pre_ffw_norm", ffw_end))


def _llama_sites(block):
    # Llama / Llama 3, Mistral, Qwen, Qwen 3 decoders.
    return (
        ("_self_attention_layernorm", "_self_attention_dropout"),
        ("_feedforward_layernorm", "_feedforward_output_dense"),
    )


def _transformer_decoder_sites(block):
    # keras_hub.layers.TransformerDecoder (GPT-2), pre-norm only: after a
    # post-norm join the norm sees the sum, not the residual.
    if not block.normalize_first:
        raise ValueError(
            "A LAuReL retrofit needs pre-norm blocks; this "
            "TransformerDecoder is post-norm. Received: block "
            f"{block.name!r} with normalize_first=False"
        )
    return (
        ("_self_attention_layer_norm", "_self_attention_dropout"),
        ("_feedforward_layer_norm", "_feedforward_dropout"),
    )


# Block class name -> (attention join, MLP join), each (tap, branch end).
JOIN_SITES = {
    "GemmaDecoderBlock": _gemma_sites,
    "Gemma3DecoderBlock": _gemma_sites,
    "LlamaTransformerDecoder": _llama_sites,
    "MistralTransformerDecoder": _llama_sites,
    "QwenTransformerDecoder": _llama_sites,
    "Qwen3TransformerDecoder": _llama_sites,
    "TransformerDecoder": _transformer_decoder_sites,
}
SUPPORTED_BACKBONES = (
    "GemmaBackbone",
    "Gemma3Backbone",
    "LlamaBackbone",
    "Llama3Backbone",
    "MistralBackbone",
    "QwenBackbone",
    "Qwen3Backbone",
    "GPT2Backbone",
)


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


def _join_sites(backbone):
    """`[(block, ((tap, end), (tap, end)))]`; raises on any unsupported
    block before anything is modified."""
    blocks = getattr(backbone, "transformer_layers", None)
    if not isinstance(backbone, keras_hub.models.Backbone) or not blocks:
        raise ValueError(
            "`model` must be a keras-hub decoder backbone (with "
            "`transformer_layers`) of a supported family "
            f"{SUPPORTED_BACKBONES}, or a CausalLM over one. Received: "
            f"{type(backbone).__name__}"
        )
    sites = []
    for block in blocks:
        name = type(block).__name__
        if name not in JOIN_SITES or not (
            type(block).__module__.startswith("keras_hub.")
        ):
            raise ValueError(
                f"A LAuReL retrofit does not support the decoder block class "
                f"{name} (in {type(backbone).__name__}). Supported block "
                f"classes: {tuple(JOIN_SITES)}, i.e. the backbones "
                f"{SUPPORTED_BACKBONES}."
            )
        sites.append((block, JOIN_SITES[name](block)))
    return sites


def _connect(tap_layer, end_layer, join):
    """Wraps the instance `call` of a join's tap and branch end."""
    slot = threading.local()
    tap_call = tap_layer.call

    @functools.wraps(tap_call)
    def record_residual(x, *args, **kwargs):
        slot.residual = x
        return tap_call(x, *args, **kwargs)

    def join_branch(end_call):
        @functools.wraps(end_call)
        def call(*args, **kwargs):
            out = end_call(*args, **kwargs)
            residual = getattr(slot, "residual", None)
            if residual is None:
                raise RuntimeError(
                    f"LAuReL join {join.name!r}: the branch end "
                    f"{end_layer.name!r} ran before its tap "
                    f"{tap_layer.name!r} in this thread."
                )
            slot.residual = None
            if isinstance(out, tuple):  # (attention, cache)
                return (join.residual_increment(out[0], residual), *out[1:])
            return join.residual_increment(out, residual)

        return call

    tap_layer.call = record_residual
    end_layer.call = join_branch(end_layer.call)
    # A quantized layer runs `quantized_call` instead of `call`.
    end_layer.quantized_call = join_branch(end_layer.quantized_call)


def _install(backbone, laurel_config):
    """Installs the joins on a built backbone (in place)."""
    sites = _join_sites(backbone)
    dim = backbone.hidden_dim
    joins = []
    for block, _ in sites:
        for kind in ("attention", "feedforward"):
            join = Laurel(
                **laurel_config,
                dtype=block.dtype_policy,
                name=f"{block.name}_{kind}_laurel",
            )
            join.build([(None, None, dim), (None, None, dim)])
            joins.append(join)
    # Every join is built (argument errors raised) before any is connected.
    joins_iter = iter(joins)
    for block, pairs in sites:
        for tap, end in pairs:
            join = next(joins_iter)
            _connect(getattr(block, tap), getattr(block, end), join)
    backbone.laurel_joins = joins
    backbone.laurel_config = dict(laurel_config)
    backbone.laurel_train_only = False


def _freeze_all_but_joins(backbone):
    """`train_only_laurel` on a backbone; recorded in its config."""
    for layer in backbone.layers:
        layer.trainable = False
    for join in backbone.laurel_joins:
        join.trainable = True
    backbone.laurel_train_only = True


def _compile_from_config(self, config):
    # keras-hub's CausalLM overrides `compile`, so Keras skips compiling a
    # reloaded model (with a warning) and then cannot restore the optimizer
    # state. A LAuReL CausalLM compiles itself from the saved compile
    # config (the sampler is not part of it: the default is used) and builds
    # the optimizer on its trainable variables (the same ones as when it
    # was saved: `laurel_train_only` is in the backbone's config), so the
    # saved optimizer state loads.
    self.compile(**keras.saving.deserialize_keras_object(config))
    if self.built:
        self.optimizer.build(self.trainable_variables)


_BACKBONE_DOC = """`keras_hub.models.{base}` with LAuReL residual joins.

    Same arguments as `keras_hub.models.{base}` plus `laurel_config`
    (`Laurel` keyword arguments for every join; defaults
    `{{"variant": "rw_lr", "rank": 4}}`; RW additive, no PA) and
    `laurel_train_only` (default False: True freezes every layer but the
    joins, as `train_only_laurel` does, and is recorded in `get_config` so
    a reloaded model trains the same variables). `__init__` builds the
    keras-hub backbone, then installs two `Laurel` joins per block (tracked
    as `laurel_joins`) as `laurel_retrofit` does; outputs at initialisation
    are those of `{base}`. Made by `laurel_backbone_class`.
    """

_CAUSAL_LM_DOC = """`keras_hub.models.{base}` over a `{backbone}`.

    Behaviour is `{base}`'s; `backbone_cls` is the LAuReL backbone, so
    `keras_hub.models.CausalLM.from_preset` finds this task for a preset
    saved from a retrofitted model (once `keras_gr.hub` is imported). A
    compiled model saved to `.keras` reloads compiled (from its compile
    config; the sampler returns to the default) with its optimizer state.
    """

_BACKBONE_CLASSES = {}
_CAUSAL_LM_CLASSES = {}


def laurel_backbone_class(base_cls: type) -> type:
    """The registered LAuReL subclass of a keras-hub decoder backbone class.

    Returns `Laurel<Name>` (made once, registered serializable as
    `keras_gr>Laurel<Name>`): its `__init__` takes the arguments of
    `base_cls` plus `laurel_config`, runs `base_cls.__init__` and installs
    the joins as `laurel_retrofit` does; `get_config` adds `laurel_config`.
    The classes of the supported families (`SUPPORTED_BACKBONES`: Gemma,
    Gemma 3, Llama, Llama 3, Mistral, Qwen, Qwen 3, GPT-2) exist once
    `keras_gr.hub` is imported, so saved models and presets of them load.
    Another backbone class whose blocks are all supported (e.g. another
    pre-norm `TransformerDecoder` stack) works too, after calling this
    function in the loading process.

    Args:
        base_cls: a `keras_hub.models.Backbone` subclass, e.g.
            `keras_hub.models.Llama3Backbone`.

    Returns:
        The subclass.

    Example:

    >>> import keras_hub
    >>> cls = laurel_backbone_class(keras_hub.models.Llama3Backbone)
    >>> cls.__name__
    'LaurelLlama3Backbone'
    >>> backbone = cls(
    ...     vocabulary_size=40, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     laurel_config={"variant": "lr", "rank": 2},
    ... )
    >>> len(backbone.laurel_joins), backbone.laurel_joins[0].variant
    (4, 'lr')
    """
    if base_cls in _BACKBONE_CLASSES.values():
        return base_cls
    if base_cls in _BACKBONE_CLASSES:
        return _BACKBONE_CLASSES[base_cls]
    if not (
        isinstance(base_cls, type)
        and issubclass(base_cls, keras_hub.models.Backbone)
    ):
        raise ValueError(
            "`base_cls` must be a keras-hub Backbone class. Received: "
            f"base_cls={base_cls!r}"
        )

    def __init__(
        self,
        *args,
        laurel_config: dict[str, Any] | None = None,
        laurel_train_only: bool = False,
        **kwargs,
    ) -> None:
        config = _laurel_kwargs(laurel_config)
        base_cls.__init__(self, *args, **kwargs)
        _install(self, config)
        if laurel_train_only:
            _freeze_all_but_joins(self)

    def get_config(self):
        config = base_cls.get_config(self)
        config["laurel_config"] = dict(self.laurel_config)
        config["laurel_train_only"] = bool(self.laurel_train_only)
        return config

    name = f"Laurel{base_cls.__name__}"
    cls = type(
        name,
        (base_cls,),
        {
            "__init__": __init__,
            "get_config": get_config,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": _BACKBONE_DOC.format(base=base_cls.__name__),
        },
    )
    cls = keras.saving.register_keras_serializable(package="keras_gr")(cls)
    _BACKBONE_CLASSES[base_cls] = cls
    return cls


def _laurel_causal_lm_class(task_cls):
    if task_cls in _CAUSAL_LM_CLASSES.values():
        return task_cls
    if task_cls not in _CAUSAL_LM_CLASSES:
        backbone_cls = laurel_backbone_class(task_cls.backbone_cls)
        name = f"Laurel{task_cls.__name__}"
        cls = type(
            name,
            (task_cls,),
            {
                "backbone_cls": backbone_cls,
                "compile_from_config": _compile_from_config,
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": _CAUSAL_LM_DOC.format(
                    base=task_cls.__name__, backbone=backbone_cls.__name__
                ),
            },
        )
        cls = keras.saving.register_keras_serializable(package="keras_gr")(cls)
        _CAUSAL_LM_CLASSES[task_cls] = cls
    return _CAUSAL_LM_CLASSES[task_cls]


# The supported families' classes exist at import (saved models and
# presets name them).
for _task in (
    keras_hub.models.GemmaCausalLM,
    keras_hub.models.Gemma3CausalLM,
    keras_hub.models.LlamaCausalLM,
    keras_hub.models.Llama3CausalLM,
    keras_hub.models.MistralCausalLM,
    keras_hub.models.QwenCausalLM,
    keras_hub.models.Qwen3CausalLM,
    keras_hub.models.GPT2CausalLM,
):
    _laurel_causal_lm_class(_task)
del _task

LaurelGemmaBackbone = laurel_backbone_class(keras_hub.models.GemmaBackbone)
LaurelGemmaBackbone.__doc__ += """
    Example:

    >>> backbone = LaurelGemmaBackbone(
    ...     vocabulary_size=40, num_layers=2, num_query_heads=2,
    ...     num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    ...     head_dim=8, laurel_config={"variant": "lr", "rank": 2},
    ... )
    >>> [join.name for join in backbone.laurel_joins[:2]]
    ['decoder_block_0_attention_laurel', 'decoder_block_0_feedforward_laurel']
    >>> backbone.get_config()["laurel_config"]["variant"]
    'lr'
    """

LaurelGPT2Backbone = laurel_backbone_class(keras_hub.models.GPT2Backbone)
LaurelGPT2Backbone.__doc__ += """
    Example:

    >>> backbone = LaurelGPT2Backbone(
    ...     vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8,
    ... )
    >>> len(backbone.laurel_joins)
    4
    """

LaurelGemmaCausalLM = _laurel_causal_lm_class(keras_hub.models.GemmaCausalLM)
LaurelGemmaCausalLM.__doc__ += """
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
    >>> type(lm).__name__, type(lm.backbone).__name__
    ('LaurelGemmaCausalLM', 'LaurelGemmaBackbone')
    >>> tuple(lm(inputs).shape)
    (1, 4, 40)
    """

LaurelGPT2CausalLM = _laurel_causal_lm_class(keras_hub.models.GPT2CausalLM)
LaurelGPT2CausalLM.__doc__ += """
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
    joins = getattr(backbone, "laurel_joins", ())
    return [v for join in joins for v in join.weights]


def train_only_laurel(model: keras.Model) -> keras.Model:
    """Freezes every layer of a retrofitted model except its `Laurel` joins.

    In place; returns `model`. Compile the model after this call. The
    backbone records it (`laurel_train_only` in its config), so a model
    reloaded from `.keras` or a preset trains the same variables.

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
    joins = getattr(backbone, "laurel_joins", None)
    if not joins:
        raise ValueError(
            "`model` has no LAuReL joins; retrofit it first with "
            f"`laurel_retrofit`. Received: model of type {type(model).__name__}"
        )
    if model is not backbone:
        for layer in model.layers:
            if layer is not backbone:
                layer.trainable = False
    _freeze_all_but_joins(backbone)
    return model


def laurel_retrofit(
    model: keras.Model,
    variant: str = "rw_lr",
    rank: int = 4,
    train_only_laurel_params: bool = False,
    **laurel_kwargs: Any,
) -> keras.Model:
    """Turns the residual additions of a keras-hub model into LAuReL joins.

    **Modifies `model` in place** and returns it. Both residual additions of
    every decoder block (after attention, after the MLP) become `Laurel`
    joins ("LAuReL: Learned Augmented Residual Layer", arXiv 2411.07501),
    installed by wrapping the `call` of two existing sublayers per join
    (see the module docstring): no weight is copied and no second backbone
    is built. RW uses the additive parametrisation `alpha = 1 + a`,
    `beta = 1 + b` (a = b = 0) and LR has `B = 0`, so at initialisation the
    model's outputs are bit-identical to the pretrained model's. The
    backbone's class becomes `laurel_backbone_class(type(backbone))` (e.g.
    `LaurelGemmaBackbone`) and a CausalLM's class the matching
    `Laurel<Task>` (e.g. `LaurelGemmaCausalLM`), so `get_config`, `.keras`
    files and presets record the joins. Compile the model (again) after the
    retrofit, before training; cached train / predict / generate functions
    are dropped.

    Concurrency: each join keeps the residual it records in a
    `threading.local()`, so calls of one model from several Python threads
    do not interfere.

    Args:
        model: a keras-hub `CausalLM` or its backbone, of a supported family:
            Gemma (v1, Gemma 2 options), Gemma 3 (text), Llama, Llama 3,
            Mistral, Qwen, Qwen 3, GPT-2 (pre-norm `TransformerDecoder`;
            post-norm blocks are refused).
        variant: `"rw"`, `"lr"` or `"rw_lr"`. The PA variants are not
            supported here: keras-hub's `call_with_cache` passes only the
            current hidden state between blocks. Defaults to `"rw_lr"`.
        rank: rank of the LR term. Defaults to 4.
        train_only_laurel_params: if True, freeze everything but the LAuReL
            parameters (`train_only_laurel`). Defaults to False.
        **laurel_kwargs: other `Laurel` arguments (`per_channel`,
            `low_rank_initializer`, `lr_norm`, `lr_norm_epsilon`).

    Returns:
        `model`, retrofitted. Save with `.save("x.keras")` or
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
    >>> before = np.asarray(backbone(inputs))
    >>> laurel = laurel_retrofit(backbone, variant="rw_lr", rank=2)
    >>> laurel is backbone, type(backbone).__name__
    (True, 'LaurelGemmaBackbone')
    >>> bool(np.array_equal(np.asarray(backbone(inputs)), before))
    True
    """
    is_task = isinstance(model, keras_hub.models.CausalLM)
    backbone = model.backbone if is_task else model
    if getattr(backbone, "laurel_joins", None) is not None:
        raise ValueError(
            "`model` already has LAuReL residuals. Received: "
            f"model={type(model).__name__}"
        )
    if is_task and type(backbone) is not type(model).backbone_cls:
        raise ValueError(
            f"The backbone of a {type(model).__name__} must be a "
            f"{type(model).backbone_cls.__name__}. Received: "
            f"{type(backbone).__name__}"
        )
    config = _laurel_kwargs({"variant": variant, "rank": rank, **laurel_kwargs})
    _install(backbone, config)  # raises before modifying anything
    backbone.__class__ = laurel_backbone_class(type(backbone))
    if is_task:
        model.__class__ = _laurel_causal_lm_class(type(model))
    for m in (model, backbone):
        # Functions traced before the retrofit do not contain the joins.
        for attribute in (
            "train_function",
            "test_function",
            "predict_function",
            "generate_function",
        ):
            if getattr(m, attribute, None) is not None:
                setattr(m, attribute, None)
    if train_only_laurel_params:
        train_only_laurel(model)
    return model
