"""Sequence embedders: one vector per text, for clustering and selection.

"Analyzing Similarity Metrics for Data Selection for Language Model
Pretraining" (Sam, Chakrabarti, Rostamizadeh, Ramalingam, Citovsky, Kumar;
arXiv 2502.02494) finds that the plain average of a language model's
per-token embeddings is a cheap embedder as good for curation as dedicated
embedding models. `BackboneEmbedder` gives that (and the average of any
hidden layer's states) for any keras-hub backbone; `HashedNgramEmbedder`,
`RandomEmbedder` and `FunctionEmbedder` are the baselines and the escape
hatch. All share `embed(texts, batch_size, verbose) -> (n, dim)` float32.
"""

import re
import zlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gr._imports import require
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer

POOLINGS = ("token_embedding", "hidden_state")


def masked_mean(sequence: Any, padding_mask: Any) -> Any:
    """Mean over the time axis of the positions where `padding_mask` is
    true: `(batch, time, dim), (batch, time) -> (batch, dim)`, in float32.

    A row with no unmasked position gives zeros (not NaN).

    Example:

    >>> import numpy as np
    >>> x = np.array([[[1.0], [3.0], [100.0]]])
    >>> mask = np.array([[1, 1, 0]])
    >>> float(np.asarray(masked_mean(x, mask))[0, 0])
    2.0
    """
    sequence = ops.cast(sequence, "float32")
    mask = ops.cast(padding_mask, "float32")[..., None]
    total = ops.sum(sequence * mask, axis=1)
    count = ops.sum(mask, axis=1)
    return total / ops.maximum(count, 1.0)


def _as_text_list(texts, name="texts"):
    """A list of Python strings from a list / NumPy array / `tf.data`
    dataset of strings (bytes are decoded as UTF-8)."""
    if hasattr(texts, "as_numpy_iterator"):
        items = []
        for item in texts.as_numpy_iterator():
            batch = np.asarray(item).reshape(-1)
            items.extend(batch.tolist())
        texts = items
    elif isinstance(texts, (str, bytes)):
        raise ValueError(
            f"`{name}` must be a sequence of strings, not one string. "
            f"Received: {name}={texts[:60]!r}"
        )
    out = [
        t.decode("utf-8", "replace") if isinstance(t, bytes) else t
        for t in list(texts)
    ]
    if not out:
        raise ValueError(f"`{name}` must not be empty. Received: {name}=[]")
    bad = [type(t).__name__ for t in out if not isinstance(t, str)]
    if bad:
        raise ValueError(
            f"`{name}` must hold strings. Received: an element of type {bad[0]}"
        )
    return out


class SequenceEmbedder:
    """Base class: maps texts to fixed-width float32 vectors.

    Subclasses set `output_dim` and implement `_embed_batch(list_of_str)`
    (or override `embed`).

    Example:

    >>> class LengthEmbedder(SequenceEmbedder):
    ...     output_dim = 1
    ...     def _embed_batch(self, texts):
    ...         return [[len(t)] for t in texts]
    >>> LengthEmbedder().embed(["a", "abc", "ab"], batch_size=2).tolist()
    [[1.0], [3.0], [2.0]]
    """

    output_dim = None

    def embed(self, texts, batch_size=64, verbose=0):
        """Embeds `texts` (a list / array of strings or a `tf.data`
        dataset of strings) in batches; returns `(n, output_dim)` float32.
        `verbose=1` shows a progress bar."""
        texts = _as_text_list(texts)
        batch_size = check_integer("batch_size", batch_size)
        bar = keras.utils.Progbar(len(texts)) if verbose else None
        out = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            out.append(np.asarray(self._embed_batch(batch), "float32"))
            if bar is not None:
                bar.add(len(batch))
        return np.concatenate(out, axis=0)

    def _embed_batch(self, texts):
        raise NotImplementedError


class BackboneEmbedder(SequenceEmbedder):
    """Padding-masked mean of a keras-hub backbone's token embeddings or of
    one layer's hidden states (arXiv 2502.02494).

    `pooling="token_embedding"` averages the rows of the input embedding
    table for the tokens of the text (the paper's cheap embedder: no
    transformer layer runs). `pooling="hidden_state"` averages the output
    of transformer layer `layer_index` (`-1`: the backbone's final,
    normalised output). Padding positions never contribute. Texts are
    tokenised by the backbone's tokenizer, a start token is prepended when
    the tokenizer has one (as the LM saw in pretraining), and they are
    truncated / padded to `sequence_length`.

    `embed` runs a `tf.data` pipeline (tokenise, pack) into the compiled
    `keras.Model.predict` of a functional pooling model, so it shows Keras'
    progress bar and follows `keras.distribution`: under
    `keras.distribution.DataParallel` each batch is split across devices
    (every batch is padded to `batch_size` so that it divides evenly; the
    padding is dropped from the result).

    Works with any backbone that has `token_embedding` and
    `transformer_layers` (Gemma, Gemma 3, Llama, Mistral, Qwen, GPT-2, ...).

    Args:
        backbone: a `keras_hub.models.Backbone`.
        tokenizer: its `keras_hub` tokenizer.
        pooling: `"token_embedding"` or `"hidden_state"`. Defaults to
            `"token_embedding"`.
        layer_index: transformer layer whose output is averaged with
            `pooling="hidden_state"`; `-1` is the final normalised output.
            Defaults to `-1`.
        sequence_length: tokens per text after truncation. Defaults to
            `128`.

    Example (an untrained one-layer Gemma on bytes; with a preset folder,
    `BackboneEmbedder.from_preset(folder, sequence_length=64)`):

    >>> import keras_hub
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=256, num_layers=1, num_query_heads=1,
    ...     num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
    ...     head_dim=8)
    >>> tokenizer = keras_hub.tokenizers.ByteTokenizer()
    >>> embedder = BackboneEmbedder(backbone, tokenizer, sequence_length=16)
    >>> v = embedder.embed(["abc", "cab", "xyz"])
    >>> v.shape, bool(np.allclose(v[0], v[1], atol=1e-6))
    ((3, 8), True)

    The token-embedding mean ignores order: "abc" and "cab" embed alike.
    """

    def __init__(
        self,
        backbone: keras.Model,
        tokenizer: Any,
        pooling: str = "token_embedding",
        layer_index: int = -1,
        sequence_length: int = 128,
    ) -> None:
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.sequence_length = check_integer("sequence_length", sequence_length)
        for attr in ("token_embedding", "transformer_layers"):
            if not hasattr(backbone, attr):
                raise ValueError(
                    "`backbone` must be a keras-hub backbone with "
                    "`token_embedding` and `transformer_layers`. Received: "
                    f"backbone of type {type(backbone).__name__}"
                )
        num_layers = len(backbone.transformer_layers)
        self.layer_index = check_integer(
            "layer_index", layer_index, minimum=-1, maximum=num_layers - 1
        )
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.output_dim = int(backbone.token_embedding.output_dim)
        self._model = self._pooling_model()

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads the backbone and tokenizer of a keras-hub preset (a local
        folder) and builds the embedder with `kwargs`."""
        keras_hub = require("keras_hub", "`BackboneEmbedder.from_preset`")

        backbone = keras_hub.models.Backbone.from_preset(preset)
        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
        return cls(backbone, tokenizer, **kwargs)

    def _pooling_model(self):
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
        if self.pooling == "token_embedding":
            states = self.backbone.token_embedding(token_ids)
        else:
            inputs = self.backbone.input
            if self.layer_index == -1:
                output = self.backbone.output
            else:
                output = self.backbone.transformer_layers[
                    self.layer_index
                ].output
            sub = keras.Model(inputs, output)
            states = sub({"token_ids": token_ids, "padding_mask": padding_mask})
        pooled = masked_mean(states, padding_mask)
        return keras.Model(
            {"token_ids": token_ids, "padding_mask": padding_mask}, pooled
        )

    def embed_token_ids(self, token_ids, padding_mask):
        """The pooled embedding of already tokenised inputs, in
        `keras.ops` (`(batch, time)` each -> `(batch, output_dim)`)."""
        return self._model(
            {"token_ids": token_ids, "padding_mask": padding_mask}
        )

    def dataset(self, texts, batch_size=64):
        """The `tf.data` pipeline `embed` runs (see `tokenized_dataset`)."""
        return tokenized_dataset(
            self.tokenizer, texts, self.sequence_length, batch_size
        )

    def embed(self, texts, batch_size=64, verbose=0):
        texts = _as_text_list(texts)
        out = self._model.predict(
            self.dataset(texts, batch_size), verbose=verbose
        )
        return np.asarray(out, "float32")[: len(texts)]


def tokenized_dataset(
    tokenizer: Any, texts: Any, sequence_length: int, batch_size: int = 64
) -> Any:
    """Texts -> a `tf.data` dataset of `{"token_ids", "padding_mask"}`
    batches for a keras-hub model.

    Each text is tokenised by `tokenizer`, gets the tokenizer's start token
    (when it has one) and is truncated / padded to `sequence_length` with
    its pad token. Every batch is exactly `batch_size` long: the last one is
    filled up by repeating the final text, so a compiled `predict` never
    retraces and a `keras.distribution.DataParallel` batch always divides
    across devices; drop the extra rows from the result
    (`[:len(texts)]`).

    Example:

    >>> import keras_hub
    >>> tokenizer = keras_hub.tokenizers.ByteTokenizer()
    >>> ds = tokenized_dataset(tokenizer, ["ab", "c"], 4, batch_size=3)
    >>> batch = next(iter(ds))
    >>> batch["token_ids"].numpy().tolist()
    [[97, 98, 0, 0], [99, 0, 0, 0], [99, 0, 0, 0]]
    >>> batch["padding_mask"].numpy().tolist()
    [[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    """
    keras_hub = require("keras_hub", "`tokenized_dataset`")
    tf = require("tensorflow", "`tokenized_dataset`")

    texts = _as_text_list(texts)
    sequence_length = check_integer("sequence_length", sequence_length)
    batch_size = check_integer("batch_size", batch_size)
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=getattr(tokenizer, "start_token_id", None),
        pad_value=getattr(tokenizer, "pad_token_id", None) or 0,
        return_padding_mask=True,
    )

    def pack(strings):
        token_ids, padding_mask = packer(tokenizer(strings))
        return {
            "token_ids": tf.cast(token_ids, "int32"),
            "padding_mask": tf.cast(padding_mask, "int32"),
        }

    texts = texts + [texts[-1]] * ((-len(texts)) % batch_size)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(texts))
    ds = ds.batch(batch_size).map(pack, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def _hash(text):
    return zlib.crc32(text.encode("utf-8"))


class HashedNgramEmbedder(SequenceEmbedder):
    """Hashed bag of word n-grams (the feature hashing of DSIR and of
    scikit-learn's `HashingVectorizer`), a cheap lexical baseline.

    Each text is lower-cased and split into words and punctuation marks
    (`\\w+|[^\\w\\s]`); every n-gram for n in `ngram_range` is hashed
    (CRC-32 of the space-joined n-gram, stable across runs and machines) to
    one of `output_dim` buckets with a sign from the hash's top bit (so
    collisions cancel in expectation); counts are damped with
    `log(1 + count)` and each vector is scaled to unit L2 norm.

    Args:
        output_dim: number of hash buckets. Defaults to `1024`.
        ngram_range: `(min_n, max_n)`. Defaults to `(1, 2)`.

    Example:

    >>> e = HashedNgramEmbedder(output_dim=64)
    >>> v = e.embed(["the cat sat", "the cat sat", "import numpy as np"])
    >>> round(float(v[0] @ v[1]), 4), float(v[0] @ v[2]) < 0.5
    (1.0, True)
    """

    def __init__(
        self, output_dim: int = 1024, ngram_range: tuple[int, int] = (1, 2)
    ) -> None:
        self.output_dim = check_integer("output_dim", output_dim)
        try:
            low, high = (int(n) for n in ngram_range)
        except (TypeError, ValueError):
            low, high = 0, -1
        if not 1 <= low <= high:
            raise ValueError(
                "`ngram_range` must be a pair (min_n, max_n) with "
                f"1 <= min_n <= max_n. Received: ngram_range={ngram_range!r}"
            )
        self.ngram_range = (low, high)

    def _embed_batch(self, texts):
        out = np.zeros((len(texts), self.output_dim), "float32")
        low, high = self.ngram_range
        for row, text in enumerate(texts):
            words = _TOKEN.findall(text.lower())
            counts = {}
            for n in range(low, high + 1):
                for i in range(len(words) - n + 1):
                    h = _hash(" ".join(words[i : i + n]))
                    counts[h] = counts.get(h, 0) + 1
            for h, c in counts.items():
                sign = 1.0 if h & 0x80000000 else -1.0
                out[row, h % self.output_dim] += sign * np.log1p(c)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class RandomEmbedder(SequenceEmbedder):
    """A random unit vector per distinct text (seeded by the text's CRC-32
    and `seed`): an embedder that carries no information, the floor of the
    curation measures.

    Args:
        output_dim: width. Defaults to `64`.
        seed: integer seed. Defaults to `0`.

    Example:

    >>> e = RandomEmbedder(output_dim=8)
    >>> v = e.embed(["a", "a", "b"])
    >>> bool(np.allclose(v[0], v[1])), bool(np.allclose(v[0], v[2]))
    (True, False)
    """

    def __init__(self, output_dim: int = 64, seed: int = 0):
        self.output_dim = check_integer("output_dim", output_dim)
        self.seed = check_integer("seed", seed, minimum=0)

    def _embed_batch(self, texts):
        rows = []
        for text in texts:
            rng = np.random.default_rng([self.seed, _hash(text)])
            v = rng.standard_normal(self.output_dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, "float32")


class FunctionEmbedder(SequenceEmbedder):
    """Wraps any callable `fn(list_of_str) -> (len, output_dim)` array as an
    embedder (a sentence-transformer, an API client, a cached lookup).

    Args:
        fn: the callable.
        output_dim: the width it returns; checked on every batch.

    Example:

    >>> e = FunctionEmbedder(lambda t: [[len(s), 1.0] for s in t], 2)
    >>> e.embed(["ab", "abcd"]).tolist()
    [[2.0, 1.0], [4.0, 1.0]]
    """

    def __init__(self, fn: Callable[[list[str]], Any], output_dim: int) -> None:
        if not callable(fn):
            raise ValueError(
                f"`fn` must be callable. Received: fn of type "
                f"{type(fn).__name__}"
            )
        self.fn = fn
        self.output_dim = check_integer("output_dim", output_dim)

    def _embed_batch(self, texts):
        out = np.asarray(self.fn(texts), "float32")
        if out.shape != (len(texts), self.output_dim):
            raise ValueError(
                f"`fn` must return an array of shape ({len(texts)}, "
                f"{self.output_dim}) for {len(texts)} texts. Received: "
                f"shape {out.shape}"
            )
        return out
