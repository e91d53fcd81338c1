"""SoftSRV: contextual soft prompts that steer a frozen keras-hub LM.

"SoftSRV: Learn to Generate Targeted Synthetic Data" (DeSalvo, Kagy,
Karydas, Rostamizadeh, Kumar; arXiv 2410.16534). A frozen causal LM, a
sequence embedder `E` and a learned soft prompt `P_theta(z)` of `t` vectors
of the LM's width, trained like an autoencoder on target samples `x`:

    min_theta  sum_x  -log p_LM(x | P_theta(E(x)))

then used to generate: contexts `z = E(x)` from target samples (optionally
perturbed), `x' ~ p_LM(. | P_theta(z))`.

Choices the paper leaves open, made here (parametrisation names follow the
project spec, which reconstructs them):

- **Parametrisations** (`SoftPrompt`): `"nsp"` one learned prompt
  `P in R^{t x d}` (ignores `z`); `"mpk"` a mixture of `k` prompts,
  `P(z) = sum_j softmax(W z + b)_j P_j`; `"mc"` an MLP
  `P(z) = reshape(W_2 gelu(W_1 z + b_1) + b_2, (t, d))` (the paper's best).
  Prompts and the MC output bias start at `N(0, initializer_stddev^2)`.
- **Context** `z`: by default the frozen LM's own mean token embedding of
  `x` (computed in-graph, `keras_gr.curation.masked_mean` over
  `backbone.token_embedding`), width `hidden_dim`; any curation sequence
  embedder (`.output_dim`, `.embed(texts)`) may be given instead, its
  vectors then enter as the input `"context"`.
- **Loss**: the LM's next-token cross-entropy over the target tokens after
  the prompt (the keras-hub `CausalLMPreprocessor` layout: `x` = tokens
  `0..L-2`, `y` = tokens `1..L-1`, padding weighted out).
- **Context perturbation** for diversity: `z' = z + sigma * rms(z) * eps`,
  `eps ~ N(0, I)`, `rms(z)` the root-mean-square entry of that `z`.
- **Hard-prompt baseline** (`HardPromptGenerator`): a header followed by
  `num_shots` target samples drawn at random, each as `<bos> x <eos>`, then
  `<bos>`; the continuation up to the next `<eos>` is one synthetic sample.
"""

from typing import Any

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number
from keras_gr.curation.sequence_embedder import masked_mean
from keras_gr.hub.prefix_lm import PrefixCausalLM
from keras_gr.hub.prefix_lm import check_prefix_positions
from keras_gr.hub.prefix_lm import deserialize_causal_lm

PARAMETRIZATIONS = ("nsp", "mpk", "mc")


def _text_list(texts, name="texts"):
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            f"`{name}` must be a sequence of strings, not one string. "
            f"Received: {name}={texts[:60]!r}"
        )
    out = [
        t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
        for t in list(texts)
    ]
    if not out:
        raise ValueError(f"`{name}` must not be empty. Received: {name}=[]")
    return out


@keras.saving.register_keras_serializable(package="keras_gr")
class SoftPrompt(keras.layers.Layer):
    """Maps a context `z` (batch, e) to a soft prompt (batch, t, d).

    The three SoftSRV parametrisations ("SoftSRV: Learn to Generate
    Targeted Synthetic Data", arXiv 2410.16534):

    - `"nsp"`: `P(z) = P`, one learned `t x d` prompt; `t d` parameters.
    - `"mpk"`: `P(z) = sum_j softmax(W z + b)_j P_j`, `k` prompts;
      `k t d + e k + k` parameters.
    - `"mc"`: `P(z) = reshape(W_2 gelu(W_1 z + b_1) + b_2, (t, d))`;
      `e h + h + h t d + t d` parameters (`h = mlp_dim`).

    Args:
        prompt_length: `t`, number of prompt vectors (>= 1).
        hidden_dim: `d`, the LM's width (>= 1).
        parametrization: `"nsp"`, `"mpk"` or `"mc"`. Defaults to `"mc"`.
        num_prompts: `k` for `"mpk"` (>= 1). Defaults to `4`.
        mlp_dim: `h` for `"mc"` (>= 1). Defaults to `128`.
        initializer_stddev: standard deviation of the initial prompts (and
            of the MC output bias). Defaults to `0.02`.

    Example:

    >>> import numpy as np
    >>> layer = SoftPrompt(prompt_length=3, hidden_dim=8,
    ...                    parametrization="mpk", num_prompts=2)
    >>> tuple(layer(np.ones((5, 4), "float32")).shape)
    (5, 3, 8)
    >>> layer.count_params() == 2 * 3 * 8 + 4 * 2 + 2
    True
    """

    def __init__(
        self,
        prompt_length: int,
        hidden_dim: int,
        parametrization: str = "mc",
        num_prompts: int = 4,
        mlp_dim: int = 128,
        initializer_stddev: float = 0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.prompt_length = check_integer("prompt_length", prompt_length)
        self.hidden_dim = check_integer("hidden_dim", hidden_dim)
        self.parametrization = check_choice(
            "parametrization", parametrization, PARAMETRIZATIONS
        )
        self.num_prompts = check_integer("num_prompts", num_prompts)
        self.mlp_dim = check_integer("mlp_dim", mlp_dim)
        self.initializer_stddev = check_number(
            "initializer_stddev", initializer_stddev, minimum=0.0
        )

    def build(self, input_shape):
        context_dim = input_shape[-1]
        if context_dim is None or len(input_shape) != 2:
            raise ValueError(
                "The context must have shape (batch, context_dim) with a "
                f"known context_dim. Received: input_shape={input_shape}"
            )
        t, d = self.prompt_length, self.hidden_dim
        init = keras.initializers.RandomNormal(stddev=self.initializer_stddev)
        if self.parametrization == "nsp":
            self.prompts = self.add_weight(
                shape=(t, d), initializer=init, name="prompts"
            )
        elif self.parametrization == "mpk":
            self.prompts = self.add_weight(
                shape=(self.num_prompts, t, d), initializer=init, name="prompts"
            )
            self.mixture_kernel = self.add_weight(
                shape=(context_dim, self.num_prompts),
                initializer="glorot_uniform",
                name="mixture_kernel",
            )
            self.mixture_bias = self.add_weight(
                shape=(self.num_prompts,),
                initializer="zeros",
                name="mixture_bias",
            )
        else:
            self.hidden_kernel = self.add_weight(
                shape=(context_dim, self.mlp_dim),
                initializer="glorot_uniform",
                name="hidden_kernel",
            )
            self.hidden_bias = self.add_weight(
                shape=(self.mlp_dim,), initializer="zeros", name="hidden_bias"
            )
            self.output_kernel = self.add_weight(
                shape=(self.mlp_dim, t * d),
                initializer="glorot_uniform",
                name="output_kernel",
            )
            self.output_bias = self.add_weight(
                shape=(t * d,), initializer=init, name="output_bias"
            )

    def call(self, z):
        t, d = self.prompt_length, self.hidden_dim
        batch = ops.shape(z)[0]
        if self.parametrization == "nsp":
            prompts = ops.cast(self.prompts, z.dtype)
            return ops.broadcast_to(prompts[None], (batch, t, d))
        if self.parametrization == "mpk":
            weights = ops.softmax(
                ops.matmul(z, self.mixture_kernel) + self.mixture_bias, axis=-1
            )
            return ops.einsum("bk,ktd->btd", weights, self.prompts)
        hidden = keras.activations.gelu(
            ops.matmul(z, self.hidden_kernel) + self.hidden_bias
        )
        out = ops.matmul(hidden, self.output_kernel) + self.output_bias
        return ops.reshape(out, (batch, t, d))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.prompt_length, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            prompt_length=self.prompt_length,
            hidden_dim=self.hidden_dim,
            parametrization=self.parametrization,
            num_prompts=self.num_prompts,
            mlp_dim=self.mlp_dim,
            initializer_stddev=self.initializer_stddev,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_gr")
class SoftSRV(keras.Model):
    """Contextual soft prompts for a frozen keras-hub causal LM.

    "SoftSRV: Learn to Generate Targeted Synthetic Data" (DeSalvo, Kagy,
    Karydas, Rostamizadeh, Kumar; arXiv 2410.16534). With the frozen LM
    `p_LM`, the context `z = E(x)` and the soft prompt `P_theta(z)`
    (`SoftPrompt`, `t x d`), training minimises
    `-log p_LM(x | P_theta(E(x)))` over target samples `x`; only `theta`
    trains. The LM is frozen inside this model only: `trainable_variables`
    are the soft prompt's and the LM's variables are non-trainable here,
    while the caller's LM object keeps its own `trainable` flags (its
    weights are shared, not copied: training that LM elsewhere changes
    this model too). Generation draws
    `x' ~ p_LM(. | P_theta(z))` for contexts `z` of target samples, with the
    key/value cache extended by `t` (`keras_gr.hub.PrefixCausalLM`). The
    module docstring lists the choices the paper leaves open.

    `call(inputs)` takes `{"token_ids", "padding_mask"}` (b, L), plus
    `"context"` (b, e) when a `context_embedder` is used, and returns the
    next-token logits (b, L, vocabulary_size) after the prompt; position
    `i` predicts token `i + 1` (fit with `y` = the tokens shifted by one and
    the padding mask as `sample_weight`, as `preprocess` returns).

    Args:
        causal_lm: a `keras_hub.models.CausalLM` with a preprocessor, of a
            family with a prefix adapter (Gemma and GPT-2 built in;
            `keras_gr.hub.register_prefix_adapter` adds others). Frozen.
        prompt_length: `t` (>= 1). Defaults to `8`.
        parametrization: `"nsp"`, `"mpk"` or `"mc"`. Defaults to `"mc"`.
        num_prompts: `k` for MPk (>= 1). Defaults to `4`.
        mlp_dim: MC hidden width (>= 1). Defaults to `128`.
        context_embedder: `None` (the LM's own mean token embedding, in
            the graph) or an object with `output_dim` and
            `embed(texts) -> (n, output_dim)` (a `keras_gr.curation`
            embedder). Defaults to `None`. Not saved in the config: pass it
            again after loading.
        context_dim: the width `e` of the contexts; must equal the
            embedder's `output_dim` (or the LM's `hidden_dim` by default).
            Defaults to `None` (taken from the embedder).
        sequence_length: tokens per training / context sequence.
            Defaults to `64`.
        initializer_stddev: see `SoftPrompt`. Defaults to `0.02`.
        sampler: keras-hub sampler (name or instance) for `generate`.
            Defaults to `"top_k"`.

    Example:

    >>> import keras_hub, numpy as np
    >>> from keras_gr.presets import TINY_CONFIG, build_local_preset
    >>> lm = keras_hub.models.CausalLM.from_preset(
    ...     build_local_preset(**TINY_CONFIG, verbose=0))
    >>> model = SoftSRV(lm, prompt_length=2, parametrization="mc",
    ...                 mlp_dim=8, sequence_length=12)
    >>> x, y, w = model.preprocess(["def f(x):", "return x + 1"])
    >>> model.compile(optimizer="adam")
    >>> _ = model.fit(x, y, sample_weight=w, epochs=1, verbose=0)
    >>> len(model.generate(["def f(x):"], max_length=6, seed=0))
    1
    """

    def __init__(
        self,
        causal_lm: keras_hub.models.CausalLM,
        prompt_length: int = 8,
        parametrization: str = "mc",
        num_prompts: int = 4,
        mlp_dim: int = 128,
        context_embedder: Any = None,
        context_dim: int | None = None,
        sequence_length: int = 64,
        initializer_stddev: float = 0.02,
        sampler: str | keras_hub.samplers.Sampler = "top_k",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(causal_lm, keras_hub.models.CausalLM):
            raise ValueError(
                "`causal_lm` must be a `keras_hub.models.CausalLM`. "
                f"Received: causal_lm={type(causal_lm).__name__}"
            )
        self.generator = PrefixCausalLM(causal_lm, sampler=sampler)
        if causal_lm.preprocessor is None:
            raise ValueError(
                "`causal_lm` must have a preprocessor (tokenizer). Received: "
                "causal_lm.preprocessor=None"
            )
        self.causal_lm = causal_lm
        self.backbone = causal_lm.backbone
        self.tokenizer = causal_lm.preprocessor.tokenizer
        self.sequence_length = check_integer(
            "sequence_length", sequence_length, minimum=2
        )
        check_integer("prompt_length", prompt_length)
        check_prefix_positions(
            self.generator.adapter,
            self.backbone,
            int(prompt_length),
            self.sequence_length,
        )
        # Built on first use (`_tokenize`): when a model is loaded, keras-hub
        # loads the tokenizer's vocabulary after `__init__`, so the special
        # token ids are not known yet here.
        self._packer = None
        self._packer_ids = None
        self.context_embedder = context_embedder
        width = int(self.backbone.hidden_dim)
        if context_embedder is None:
            expected = width
            source = f"the LM's hidden_dim={width}"
        else:
            expected = getattr(context_embedder, "output_dim", None)
            if not callable(getattr(context_embedder, "embed", None)) or (
                expected is None
            ):
                raise ValueError(
                    "`context_embedder` must have `output_dim` and "
                    "`embed(texts)`. Received: "
                    f"context_embedder={context_embedder!r}"
                )
            expected = int(expected)
            source = f"context_embedder.output_dim={expected}"
        if context_dim is None:
            context_dim = expected
        context_dim = check_integer("context_dim", context_dim)
        if context_dim != expected:
            raise ValueError(
                "`context_dim` must match the context embedder's width "
                f"({source}). Received: context_dim={context_dim}"
            )
        self.context_dim = context_dim
        self.soft_prompt = SoftPrompt(
            prompt_length=prompt_length,
            hidden_dim=width,
            parametrization=parametrization,
            num_prompts=num_prompts,
            mlp_dim=mlp_dim,
            initializer_stddev=initializer_stddev,
            name="soft_prompt",
        )
        self.prompt_length = self.soft_prompt.prompt_length
        self.parametrization = self.soft_prompt.parametrization
        self.num_prompts = self.soft_prompt.num_prompts
        self.mlp_dim = self.soft_prompt.mlp_dim
        self.initializer_stddev = self.soft_prompt.initializer_stddev
        self.soft_prompt.build((None, context_dim))
        # Every weight exists now (the LM's and the prompt's).
        self.built = True

    # Only the soft prompt trains. The LM is frozen here by leaving its
    # variables out of the trainable lists, not by setting `trainable =
    # False` on the caller's LM.
    @property
    def trainable_variables(self):
        if not self.trainable:
            return []
        return [v for v in self.soft_prompt.variables if v.trainable]

    @property
    def non_trainable_variables(self):
        trained = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trained]

    @property
    def trainable_weights(self):
        return self.trainable_variables

    @property
    def non_trainable_weights(self):
        trained = {id(v) for v in self.trainable_variables}
        return [v for v in self.weights if id(v) not in trained]

    def contexts(self, inputs):
        """The contexts `z` (b, e) of a batch of `call` inputs."""
        if self.context_embedder is not None:
            if "context" not in inputs:
                raise ValueError(
                    "`inputs` must hold a 'context' entry when a "
                    "`context_embedder` is used (see `preprocess`). "
                    f"Received keys: {sorted(inputs)}"
                )
            z = inputs["context"]
        else:
            embedded = self.backbone.token_embedding(inputs["token_ids"])
            z = masked_mean(embedded, inputs["padding_mask"])
        width = z.shape[-1]
        if width is not None and width != self.context_dim:
            raise ValueError(
                f"The context width must be `context_dim`={self.context_dim}."
                f" Received: a context of shape {tuple(z.shape)}"
            )
        return ops.cast(z, self.compute_dtype)

    def call(self, inputs):
        prefix = self.soft_prompt(self.contexts(inputs))
        return self.generator(
            {
                "prefix": prefix,
                "token_ids": inputs["token_ids"],
                "padding_mask": inputs["padding_mask"],
            }
        )

    def compile(self, optimizer="adam", loss="auto", **kwargs):
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        kwargs.setdefault(
            "weighted_metrics", [keras.metrics.SparseCategoricalAccuracy()]
        )
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compile_from_config(self, config):
        # `compile` only fills defaults, so the saved config applies as is.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _tokenize(self, texts):
        tokenizer = self.tokenizer
        ids = (
            tokenizer.start_token_id,
            tokenizer.end_token_id,
            tokenizer.pad_token_id or 0,
        )
        if ids[0] is None or ids[1] is None:
            raise ValueError(
                "The LM's tokenizer must define start and end tokens (is its "
                "vocabulary loaded?). Received: start_token_id="
                f"{ids[0]}, end_token_id={ids[1]}"
            )
        if self._packer is None or self._packer_ids != ids:
            self._packer = keras_hub.layers.StartEndPacker(
                sequence_length=self.sequence_length + 1,
                start_value=ids[0],
                end_value=ids[1],
                pad_value=ids[2],
                return_padding_mask=True,
            )
            self._packer_ids = ids
        token_ids, padding_mask = self._packer(tokenizer(texts))
        return (
            np.asarray(ops.convert_to_numpy(token_ids), "int32"),
            np.asarray(ops.convert_to_numpy(padding_mask), bool),
        )

    def preprocess(self, texts):
        """`(x, y, sample_weight)` NumPy arrays for `fit` from target texts.

        Each text becomes `<bos> tokens <eos>` cut or padded to
        `sequence_length + 1` tokens; `x` holds the first `sequence_length`
        (and `"context"` from the `context_embedder`, if any), `y` the last
        `sequence_length`, `sample_weight` masks the padding of `y`.
        """
        texts = _text_list(texts)
        token_ids, mask = self._tokenize(texts)
        x = {"token_ids": token_ids[:, :-1], "padding_mask": mask[:, :-1]}
        if self.context_embedder is not None:
            context = np.asarray(self.context_embedder.embed(texts), "float32")
            if context.shape != (len(texts), self.context_dim):
                raise ValueError(
                    "`context_embedder.embed` must return shape "
                    f"({len(texts)}, {self.context_dim}). Received: shape "
                    f"{context.shape}"
                )
            x["context"] = context
        return x, token_ids[:, 1:], mask[:, 1:].astype("float32")

    def embed(self, texts) -> np.ndarray:
        """The contexts `z = E(x)` of `texts`, (n, context_dim) float32
        (also usable as MAUVE features)."""
        x, _, _ = self.preprocess(texts)
        return np.asarray(ops.convert_to_numpy(self.contexts(x)), "float32")

    def prompts_for(
        self, texts, context_noise: float = 0.0, seed: int = 0
    ) -> np.ndarray:
        """Soft prompts (n, t, d) from the contexts of `texts`, perturbed
        as `z + context_noise * rms(z) * eps` (module docstring)."""
        context_noise = check_number(
            "context_noise", context_noise, minimum=0.0
        )
        z = self.embed(texts)
        if context_noise > 0:
            rng = np.random.default_rng(seed)
            rms = np.sqrt(np.mean(np.square(z), axis=-1, keepdims=True))
            z = z + context_noise * rms * rng.standard_normal(z.shape)
        prompts = self.soft_prompt(z.astype(self.compute_dtype))
        return np.asarray(ops.convert_to_numpy(prompts), "float32")

    def generate(
        self,
        texts,
        num_samples: int | None = None,
        max_length: int = 64,
        context_noise: float = 0.0,
        batch_size: int = 32,
        seed: int = 0,
        sampler=None,
    ) -> list:
        """Synthetic texts steered by the prompts of target samples.

        Args:
            texts: target samples whose contexts condition the generation.
            num_samples: how many to generate, cycling through `texts` in a
                seeded random order. Defaults to `None` (`len(texts)`).
            max_length: tokens per generated row, start token included.
                Defaults to `64`.
            context_noise: perturbation scale `sigma` of the contexts.
                Defaults to `0.0`.
            batch_size: rows per compiled generate call. Defaults to `32`.
            seed: seeds the order, the perturbation and the sampler (the
                same seed gives the same texts). Defaults to `0`.
            sampler: a keras-hub sampler to use from now on (recompiles the
                generator). Defaults to `None` (keep the current one).

        Returns:
            A list of `num_samples` strings (stopped at the end token).
        """
        texts = _text_list(texts)
        n = len(texts) if num_samples is None else num_samples
        n = check_integer("num_samples", n)
        batch_size = check_integer("batch_size", batch_size)
        rng = np.random.default_rng(seed)
        order = np.concatenate(
            [rng.permutation(len(texts)) for _ in range(-(-n // len(texts)))]
        )[:n]
        chosen = [texts[i] for i in order]
        if sampler is not None:
            self.generator.compile(sampler=sampler)
        prompts = self.prompts_for(chosen, context_noise, seed)
        out = []
        for start in range(0, n, batch_size):
            result = self.generator.generate_with_prefix(
                prompts[start : start + batch_size],
                start_token_id=self.tokenizer.start_token_id,
                max_length=max_length,
                stop_token_ids=(self.tokenizer.end_token_id,),
                seed=seed + start,
            )
            out.extend(self._detokenize(result, prompt_length=1))
        return out

    def _detokenize(self, result, prompt_length):
        return detokenize_generated(
            self.tokenizer,
            result["token_ids"],
            result["padding_mask"],
            prompt_length,
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "causal_lm": keras.saving.serialize_keras_object(self.causal_lm),
            "prompt_length": self.prompt_length,
            "parametrization": self.parametrization,
            "num_prompts": self.num_prompts,
            "mlp_dim": self.mlp_dim,
            "context_dim": self.context_dim,
            "sequence_length": self.sequence_length,
            "initializer_stddev": self.initializer_stddev,
            "sampler": keras.saving.serialize_keras_object(
                self.generator.sampler
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["causal_lm"] = deserialize_causal_lm(config["causal_lm"])
        if isinstance(config.get("sampler"), dict):
            config["sampler"] = keras.saving.deserialize_keras_object(
                config["sampler"]
            )
        if config.get("context_dim") is not None:
            width = int(config["causal_lm"].backbone.hidden_dim)
            if config["context_dim"] != width:
                # Saved with an external embedder: the caller passes it
                # again; keep the prompt's input width meanwhile.
                config["context_embedder"] = _WidthOnly(config["context_dim"])
        return cls(**config)


class _WidthOnly:
    """Placeholder embedder of a loaded model saved with an external
    `context_embedder`: contexts must come in as inputs["context"]."""

    def __init__(self, output_dim):
        self.output_dim = output_dim

    def embed(self, texts):
        raise ValueError(
            "This SoftSRV was saved with a `context_embedder`, which is not "
            "serialised: set `model.context_embedder` to it again. "
            f"Received: {len(texts)} texts"
        )


def detokenize_generated(tokenizer, token_ids, padding_mask, prompt_length):
    """Strings of generated rows: tokens after the first `prompt_length`
    columns, up to (not including) the end token."""
    end = tokenizer.end_token_id
    texts = []
    for row, mask in zip(np.asarray(token_ids), np.asarray(padding_mask)):
        ids = [
            int(i)
            for i, m in zip(row[prompt_length:], mask[prompt_length:])
            if m and int(i) != end
        ]
        texts.append(str(_to_str(tokenizer.detokenize([ids])[0])))
    return texts


def _to_str(value):
    value = ops.convert_to_numpy(value) if not isinstance(value, str) else value
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


class HardPromptGenerator:
    """Few-shot hard prompting through the same frozen LM: the baseline.

    Each synthetic sample is the continuation of a template built from
    target samples ("SoftSRV", arXiv 2410.16534, compares against such
    human-written templates): the token ids of `header`, then `num_shots`
    samples drawn at random, each as `<bos> x <eos>`, then `<bos>`; decoding
    stops at the next `<eos>`. Same `generate` call as `SoftSRV`.

    Args:
        causal_lm: a `keras_hub.models.CausalLM` with a preprocessor.
        num_shots: examples per prompt (>= 1). Defaults to `3`.
        header: text before the examples. Defaults to
            `"Here are examples."`.
        shot_length: tokens kept of each example. Defaults to `48`.
        sampler: keras-hub sampler. Defaults to `"top_k"`.

    Example:

    >>> import keras_hub
    >>> from keras_gr.presets import TINY_CONFIG, build_local_preset
    >>> lm = keras_hub.models.CausalLM.from_preset(
    ...     build_local_preset(**TINY_CONFIG, verbose=0))
    >>> hard = HardPromptGenerator(lm, num_shots=2, shot_length=8)
    >>> len(hard.generate(["def f(x):", "x = 1"], max_length=6, seed=0))
    2
    """

    def __init__(
        self,
        causal_lm: keras_hub.models.CausalLM,
        num_shots: int = 3,
        header: str = "Here are examples.",
        shot_length: int = 48,
        sampler: str | keras_hub.samplers.Sampler = "top_k",
    ):
        if not isinstance(causal_lm, keras_hub.models.CausalLM) or (
            causal_lm.preprocessor is None
        ):
            raise ValueError(
                "`causal_lm` must be a `keras_hub.models.CausalLM` with a "
                f"preprocessor. Received: causal_lm={causal_lm!r}"
            )
        self.num_shots = check_integer("num_shots", num_shots)
        self.shot_length = check_integer("shot_length", shot_length)
        self.header = str(header)
        self.generator = PrefixCausalLM(causal_lm, sampler=sampler)
        self.tokenizer = causal_lm.preprocessor.tokenizer

    def _ids(self, text):
        ids = ops.convert_to_numpy(self.tokenizer([text]))
        return [int(i) for i in np.asarray(ids[0]).reshape(-1)]

    def prompt_ids(self, examples) -> list:
        """Token ids of the few-shot template for `examples`."""
        bos, eos = self.tokenizer.start_token_id, self.tokenizer.end_token_id
        ids = [bos] + self._ids(self.header) + [eos]
        for text in examples:
            ids += [bos] + self._ids(text)[: self.shot_length] + [eos]
        return ids + [bos]

    def generate(
        self,
        texts,
        num_samples: int | None = None,
        max_length: int = 64,
        batch_size: int = 32,
        seed: int = 0,
        sampler=None,
    ) -> list:
        """`num_samples` continuations of few-shot prompts drawn from
        `texts` (the targets); `max_length` new tokens at most per row, the
        final `<bos>` of its template included, also when templates of
        uneven length share a padded batch (rows are decoded to the longest
        template's budget, then each is cut to its own). Defaults as in
        `SoftSRV.generate`."""
        texts = _text_list(texts)
        n = len(texts) if num_samples is None else num_samples
        n = check_integer("num_samples", n)
        max_length = check_integer("max_length", max_length, minimum=2)
        batch_size = check_integer("batch_size", batch_size)
        if sampler is not None:
            self.generator.compile(sampler=sampler)
        rng = np.random.default_rng(seed)
        shots = min(self.num_shots, len(texts))
        prompts = [
            self.prompt_ids(
                [texts[j] for j in rng.choice(len(texts), shots, False)]
            )
            for _ in range(n)
        ]
        width = int(self.generator.backbone.hidden_dim)
        # One padded width for every batch: one compiled generate function.
        longest = max(len(p) for p in prompts)
        out = []
        for start in range(0, n, batch_size):
            batch = prompts[start : start + batch_size]
            ids = np.zeros((len(batch), longest), "int32")
            mask = np.zeros((len(batch), longest), bool)
            for row, p in enumerate(batch):
                ids[row, : len(p)] = p
                mask[row, : len(p)] = True
            result = self.generator.generate_with_prefix(
                np.zeros((len(batch), 0, width), "float32"),
                token_ids=ids,
                padding_mask=mask,
                max_length=longest + max_length - 1,
                stop_token_ids=(self.tokenizer.end_token_id,),
                seed=seed + start,
            )
            for row, p in enumerate(batch):
                # The row's own budget: at most `max_length` tokens after its
                # template (its final <bos> counted), whatever the padding.
                keep = np.array(result["padding_mask"][row])
                keep[: len(p)] = False
                keep[len(p) + max_length - 1 :] = False
                out.extend(
                    detokenize_generated(
                        self.tokenizer,
                        result["token_ids"][row : row + 1],
                        keep[None],
                        0,
                    )
                )
        return out
