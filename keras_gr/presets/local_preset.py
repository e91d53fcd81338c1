"""Build small keras-hub Gemma presets locally, offline, with a cache.

`build_local_preset` trains a SentencePiece tokenizer on an offline corpus,
builds a small `keras_hub.models.GemmaCausalLM`, pretrains it with `fit`
(silently unless `verbose` asks for Keras's progress bar), measures its
validation loss next to a unigram baseline, and writes a standard preset
folder that
`keras_hub.models.CausalLM.from_preset(folder)` loads on any backend.

The cache, and why it can be trusted (the same cache, written once in
`keras_gr.presets._cache`, holds the LLM pool of `build_llm_pool`):

- **Key.** A folder is named after a hash of every argument that changes
  the result, the corpus content, the build recipe (a hash of the source of
  the functions that tokenize, sample and train, see `recipe_digest`) and
  the installed keras, keras-hub and sentencepiece versions. A change of any
  of them builds a new folder instead of silently reusing an old one.
- **Atomic, complete folders.** A preset is written into a hidden temporary
  folder (`.gemma-<key>-*`) and renamed into place only when complete. Its
  `keras_gr_preset.json` lists every file with its size; a cached folder is
  returned only when all of them are present with those sizes (a folder
  with `config.json` deleted is rebuilt).
- **One builder at a time.** Building holds an exclusive lock on
  `.gemma-<key>.lock` in the cache folder (`fcntl.flock`, or `msvcrt` on
  Windows); a second process asking for the same preset waits, then reuses
  the folder the first one wrote. Locks die with their process.
- **No litter.** Temporary folders left by killed builds are removed by the
  next build in the same cache folder (a temporary folder is stale exactly
  when no process holds its key's lock).
- **Checked first.** Every argument is validated before any work starts.
"""

import hashlib
import io
import json
import math
import os
import time
from typing import Any

import numpy as np

from keras_gr._imports import require
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_positive
from keras_gr.presets import _cache
from keras_gr.presets._cache import METADATA_FILE
from keras_gr.presets._cache import package_version as _package_version

RECIPE_VERSION = 2
"""Bumped by hand when the recipe changes in a way its source hash misses
(e.g. a change inside keras_gr.data's corpus functions is already covered
by the corpus digest, a change of a constant here is not)."""

TINY_CONFIG = dict(
    vocabulary_size=256,
    num_layers=2,
    hidden_dim=32,
    num_heads=2,
    head_dim=16,
    intermediate_dim=64,
    sequence_length=32,
    train_steps=30,
    batch_size=8,
    learning_rate=3e-3,
)
"""Seconds to build; what tests use."""

SMALL_CONFIG = dict(
    vocabulary_size=1024,
    num_layers=2,
    hidden_dim=96,
    num_heads=2,
    head_dim=48,
    intermediate_dim=384,
    sequence_length=64,
    train_steps=250,
    batch_size=16,
    learning_rate=3e-3,
)
"""A 283k-parameter Gemma that learns the pydoc text (validation loss 3.99
against 5.77 for the unigram baseline) in under a minute of CPU time; what
`examples/quickstart.py` uses by default."""

DEFAULT_CONFIG = dict(
    vocabulary_size=2048,
    num_layers=4,
    hidden_dim=128,
    num_heads=4,
    head_dim=32,
    intermediate_dim=1024,
    sequence_length=128,
    train_steps=600,
    batch_size=16,
    learning_rate=2e-3,
)
"""A ~1.3M-parameter Gemma that clearly learns the pydoc text; what the
other examples and the benchmarks use (about 8 minutes to build on 2 idle
CPU cores; `python examples/quickstart.py --preset default`)."""

_SPECIAL = dict(
    pad_id=0,
    eos_id=1,
    bos_id=2,
    unk_id=3,
    pad_piece="<pad>",
    eos_piece="<eos>",
    bos_piece="<bos>",
    unk_piece="<unk>",
)

_INTEGER_ARGS = (
    "vocabulary_size",
    "num_layers",
    "hidden_dim",
    "num_heads",
    "head_dim",
    "intermediate_dim",
    "sequence_length",
    "batch_size",
)


def default_cache_dir() -> str:
    """The folder preset folders are cached in.

    Returns:
        `$KERAS_GR_CACHE/presets` when `KERAS_GR_CACHE` is set, else
        `~/.cache/keras_gr/presets`.

    Example:

    >>> import os
    >>> os.path.basename(default_cache_dir())
    'presets'
    """
    return os.path.join(_cache.cache_root(), "presets")


def _validate(args):
    """Checks every argument; returns them as plain Python values."""
    out = {name: check_integer(name, args[name]) for name in _INTEGER_ARGS}
    out["train_steps"] = check_integer(
        "train_steps", args["train_steps"], minimum=0
    )
    out["learning_rate"] = check_positive(
        "learning_rate", args["learning_rate"]
    )
    out["seed"] = check_integer("seed", args["seed"], minimum=0)
    if out["vocabulary_size"] < 8:
        raise ValueError(
            "`vocabulary_size` must be an integer >= 8 (4 special tokens plus "
            f"text pieces). Received: vocabulary_size={args['vocabulary_size']}"
        )
    if out["intermediate_dim"] % 2:
        raise ValueError(
            "`intermediate_dim` must be even (Gemma splits it between its "
            "gate and up projections). Received: "
            f"intermediate_dim={args['intermediate_dim']}"
        )
    return out


def _load_corpus(text_file):
    from keras_gr.data.corpora import pydoc_corpus
    from keras_gr.data.corpora import text_file_corpus

    if text_file is None:
        return pydoc_corpus(), "pydoc_data.topics"
    try:
        corpus = text_file_corpus(text_file)
    except UnicodeDecodeError as err:
        raise ValueError(
            "`text_file` must be a UTF-8 text file; byte "
            f"{err.object[err.start : err.start + 1]!r} at offset "
            f"{err.start} is not valid UTF-8 (re-encode it, e.g. `iconv -f "
            f"latin1 -t utf-8`). Received: text_file={text_file!r}"
        ) from None
    return corpus, os.path.abspath(text_file)


def _corpus_digest(train_docs, val_docs):
    h = hashlib.sha256()
    for doc in train_docs:
        h.update(doc.encode("utf-8"))
        h.update(b"\x00")
    h.update(b"\x01")
    for doc in val_docs:
        h.update(doc.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def recipe_digest() -> str:
    """A hash of the preset build recipe, part of every cache key.

    It covers the source of the functions that train the tokenizer, make
    the token stream and the windows, build, train and evaluate the model
    (`_build_into`), the special-token ids and `RECIPE_VERSION`, so editing
    the recipe invalidates old cached presets. Without source code (a
    frozen install) it falls back to `RECIPE_VERSION` alone.

    Returns:
        A 64-character hexadecimal SHA-256 digest.

    Example:

    >>> len(recipe_digest())
    64
    """
    return _cache.source_digest(
        f"recipe-{RECIPE_VERSION}", _RECIPE_FUNCTIONS, _SPECIAL
    )


def _cache_inputs(args, digest):
    """What the folder key hashes (stored as `cache_key`)."""
    return {
        **args,
        "corpus": digest,
        "recipe": recipe_digest(),
        "keras": _package_version("keras"),
        "keras_hub": _package_version("keras-hub"),
        "sentencepiece": _package_version("sentencepiece"),
    }


def is_complete_preset(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a complete preset written by `build_local_preset`.

    True when its `keras_gr_preset.json` is readable and every file it
    lists (the keras-hub `config.json`, weights, tokenizer assets, ...) is
    present with the recorded size.

    Args:
        folder: a preset folder.

    Returns:
        `True` or `False`; never raises for a missing or damaged folder.

    Example:

    >>> is_complete_preset("/no/such/folder")
    False
    """
    return _cache.is_complete(folder, "config.json")


def _train_tokenizer(train_docs, vocabulary_size):
    import sentencepiece as spm

    lines = [
        line.strip()
        for doc in train_docs
        for line in doc.splitlines()
        if line.strip()
    ]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocabulary_size,
            model_type="unigram",
            character_coverage=1.0,
            num_threads=1,
            max_sentence_length=1 << 16,
            split_digits=True,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            minloglevel=2,
            **_SPECIAL,
        )
    except RuntimeError as err:
        if "smaller than required_chars" in str(err):
            raise ValueError(
                "`vocabulary_size` is smaller than the number of distinct "
                f"characters of the corpus plus 4 special tokens "
                f"(SentencePiece: {str(err).strip()}). Received: "
                f"vocabulary_size={vocabulary_size}"
            ) from err
        if "Vocabulary size" in str(err) or "vocab_size" in str(err):
            raise ValueError(
                "`vocabulary_size` is larger than this corpus supports "
                f"(SentencePiece: {str(err).strip()}). Received: "
                f"vocabulary_size={vocabulary_size}"
            ) from err
        raise
    return model.getvalue()


def _token_stream(processor, docs):
    """`<bos> doc <eos>` for every document, concatenated."""
    pieces = []
    for ids in processor.encode(docs):
        pieces.append([_SPECIAL["bos_id"]] + ids + [_SPECIAL["eos_id"]])
    return np.array([i for p in pieces for i in p], dtype="int32")


def sample_windows(
    stream: np.ndarray, sequence_length: int, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random training windows from a token stream, shifted by one token.

    Window `i` is `stream[s_i : s_i + sequence_length + 1]` with `s_i`
    drawn uniformly (with replacement) by `np.random.default_rng(seed)`;
    inputs are its first `sequence_length` tokens, labels its last.

    Args:
        stream: a 1-D array of token ids.
        sequence_length: tokens per window.
        count: number of windows.
        seed: seeds the window starts.

    Returns:
        `(inputs, labels)`, two `(count, sequence_length)` arrays with
        `labels[:, :-1] == inputs[:, 1:]`.

    Example:

    >>> x, y = sample_windows(np.arange(10), 3, count=2, seed=0)
    >>> x.shape, bool((y - x == 1).all())
    ((2, 3), True)
    """
    span = sequence_length + 1
    if len(stream) < span:
        raise ValueError(
            f"The corpus has {len(stream)} tokens, fewer than "
            f"`sequence_length` + 1 = {span}. Use a longer text or a shorter "
            f"`sequence_length`. Received: sequence_length={sequence_length}"
        )
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - span + 1, size=count)
    windows = np.stack([stream[s : s + span] for s in starts])
    return windows[:, :-1], windows[:, 1:]


def tile_windows(
    stream: np.ndarray, sequence_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows covering a token stream (the tail dropped).

    Window `i` starts at token `i * sequence_length` and holds
    `sequence_length + 1` tokens (consecutive windows share one token, so
    every token after the first is a label exactly once).

    Args:
        stream: a 1-D array of token ids.
        sequence_length: tokens per window.

    Returns:
        `(inputs, labels)`, two `(n, sequence_length)` arrays,
        `n = (len(stream) - 1) // sequence_length`.

    Example:

    >>> x, y = tile_windows(np.arange(10), 3)
    >>> x.tolist(), y.tolist()
    ([[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    """
    span = sequence_length + 1
    n = (len(stream) - 1) // sequence_length
    if n < 1:
        raise ValueError(
            f"The validation text has {len(stream)} tokens, fewer than "
            f"`sequence_length` + 1 = {span}. Received: "
            f"sequence_length={sequence_length}"
        )
    idx = np.arange(n)[:, None] * sequence_length + np.arange(span)[None, :]
    windows = stream[idx]
    return windows[:, :-1], windows[:, 1:]


def unigram_cross_entropy(
    train_stream: np.ndarray, val_stream: np.ndarray, vocabulary_size: int
) -> float:
    """Cross-entropy of validation tokens under a smoothed unigram model.

    `H = -mean_t log p(v_t)` with `p(w) = (c(w) + 1) / (N + V)`: `c(w)` the
    count of `w` in the training stream, `N` its length, `V` the vocabulary
    size (add-one smoothing). This is the baseline a language model must
    beat to have learned more than token frequencies.

    Args:
        train_stream: training token ids.
        val_stream: validation token ids.
        vocabulary_size: `V`, larger than every id.

    Returns:
        The mean cross-entropy in nats per token.

    Example:

    >>> round(unigram_cross_entropy(np.array([0, 0, 1]), np.array([0]), 2), 4)
    0.5108
    """
    counts = np.bincount(train_stream, minlength=vocabulary_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-np.mean(logp[val_stream]))


def build_local_preset(
    text_file: str | os.PathLike | None = None,
    *,
    vocabulary_size: int = DEFAULT_CONFIG["vocabulary_size"],
    num_layers: int = DEFAULT_CONFIG["num_layers"],
    hidden_dim: int = DEFAULT_CONFIG["hidden_dim"],
    num_heads: int = DEFAULT_CONFIG["num_heads"],
    head_dim: int = DEFAULT_CONFIG["head_dim"],
    intermediate_dim: int = DEFAULT_CONFIG["intermediate_dim"],
    sequence_length: int = DEFAULT_CONFIG["sequence_length"],
    train_steps: int = DEFAULT_CONFIG["train_steps"],
    batch_size: int = DEFAULT_CONFIG["batch_size"],
    learning_rate: float = DEFAULT_CONFIG["learning_rate"],
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    verbose: int = 0,
) -> str:
    """Builds (or returns the cached) local Gemma preset folder.

    The tokenizer is a SentencePiece unigram model trained on the training
    split (ids: `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, digits split),
    so `keras_hub.models.GemmaTokenizer` reads it as is. The model is a
    `keras_hub.models.GemmaBackbone` with `num_heads` query and key/value
    heads, tied embeddings, no dropout. Pretraining minimises the next-token
    cross-entropy `-(1/T) sum_t log p(x_{t+1} | x_{<=t})` over random
    windows of `sequence_length + 1` tokens from the `<bos> doc <eos>`
    stream of the training documents, with AdamW (weight decay 0.01), a
    linear warm-up over the first 10% of the steps and cosine decay to 10%
    of `learning_rate`, global gradient clipping at 1.0. Validation: the
    same loss over non-overlapping windows of the validation split, next to
    the add-one-smoothed unigram baseline (`unigram_cross_entropy`). Both
    are written to `keras_gr_preset.json` (see `read_preset_metadata`).

    Folders are cached (see the module docstring): same arguments, corpus,
    recipe and library versions give the same folder, returned at once when
    complete; concurrent builds of one preset are serialised by a file lock.

    Args:
        text_file: a UTF-8 text file to train on, split into paragraphs; the
            last 5% of them are validation. Defaults to `None`: Python's own
            documentation topics (`keras_gr.data.pydoc_corpus`).
        vocabulary_size: SentencePiece vocabulary size, >= 8. Defaults to
            2048.
        num_layers: Gemma decoder blocks. Defaults to 4.
        hidden_dim: model width. Defaults to 128.
        num_heads: query (and key/value) heads. Defaults to 4.
        head_dim: width of each head. Defaults to 32.
        intermediate_dim: keras-hub's feed-forward width (split between the
            gate and up projections, so even). Defaults to 1024.
        sequence_length: training window and preprocessor length. Defaults
            to 128.
        train_steps: pretraining steps, >= 0 (0 leaves random weights).
            Defaults to 600.
        batch_size: sequences per step. Defaults to 16.
        learning_rate: peak learning rate, a finite number > 0. Defaults to
            0.002.
        seed: seeds initialisation and data order, >= 0. Defaults to 0.
        cache_dir: where preset folders live. Defaults to `None`:
            `default_cache_dir()`.
        overwrite: rebuild even when a complete cached folder exists.
            Defaults to `False`.
        verbose: 0 (silent: nothing is printed), 1 or 2 (Keras's `fit`
            progress bar in its verbose mode 1 or 2, a summary line, and a
            line when waiting for another process's build of the same
            preset). Defaults to 0: a library prints nothing unless asked.

    Returns:
        The absolute path of the preset folder.

    Raises:
        FileNotFoundError: `text_file` is missing.
        ValueError: an invalid argument, a text file that is not UTF-8 or
            is empty, a vocabulary the corpus can't support, or a
            non-writable `cache_dir`.
        ImportError: keras-hub or sentencepiece is not installed (the
            message names the extra: `pip install "keras-gr[hub]"`).

    Example:

    >>> import tempfile
    >>> import keras_hub
    >>> folder = build_local_preset(
    ...     **dict(TINY_CONFIG, train_steps=0),
    ...     cache_dir=tempfile.mkdtemp(),
    ...     verbose=0,
    ... )
    >>> lm = keras_hub.models.CausalLM.from_preset(folder)
    >>> lm.backbone.vocabulary_size
    256
    """
    args = _validate(
        dict(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            head_dim=head_dim,
            intermediate_dim=intermediate_dim,
            sequence_length=sequence_length,
            train_steps=train_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
        )
    )
    text_file = _cache.check_path("text_file", text_file)
    cache_dir = _cache.check_path("cache_dir", cache_dir)
    overwrite = bool(check_choice("overwrite", overwrite, (False, True)))
    verbose = int(check_choice("verbose", verbose, (0, 1, 2)))
    # Checked first, so that a JAX-only install gets the extra's name
    # rather than a bare ModuleNotFoundError from deep inside the build.
    for module in ("keras_hub", "sentencepiece"):
        require(module, "`keras_gr.presets.build_local_preset`")

    (train_docs, val_docs), source = _load_corpus(text_file)
    if not any(d.strip() for d in train_docs):
        raise ValueError(
            f"The corpus is empty. Received: text_file={text_file!r}"
        )
    return _cache.cached_build(
        cache_dir or default_cache_dir(),
        "gemma",
        _cache_inputs(args, _corpus_digest(train_docs, val_docs)),
        lambda folder: _build_into(
            folder, args, train_docs, val_docs, source, verbose
        ),
        required="config.json",
        overwrite=overwrite,
        verbose=verbose,
    )


def read_preset_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The `keras_gr_preset.json` that `build_local_preset` writes.

    Args:
        folder: a folder returned by `build_local_preset`.

    Returns:
        A dict: `config` (the build arguments), `corpus`, `parameters`,
        `train_tokens`, `validation_tokens`, `validation_loss` /
        `validation_perplexity` / `validation_accuracy`, `unigram_loss` /
        `unigram_perplexity`, `build_seconds`, `backend`, `cache_key` (what
        the folder name hashes) and `files` (the completeness manifest).

    Raises:
        FileNotFoundError: `folder` has no `keras_gr_preset.json`.

    Example:

    >>> read_preset_metadata("/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: ...
    """
    path = os.path.join(os.fspath(folder), METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`folder` is not a keras_gr preset folder (no {METADATA_FILE}). "
            f"Received: folder={os.fspath(folder)!r}"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _build_into(folder, args, train_docs, val_docs, source, verbose):
    import keras
    import keras_hub
    import sentencepiece as spm

    start = time.time()
    proto = _train_tokenizer(train_docs, args["vocabulary_size"])
    processor = spm.SentencePieceProcessor(model_proto=proto)
    vocab = processor.get_piece_size()
    train_stream = _token_stream(processor, train_docs)
    val_stream = _token_stream(processor, val_docs)

    keras.utils.set_random_seed(args["seed"])
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=vocab,
        num_layers=args["num_layers"],
        num_query_heads=args["num_heads"],
        num_key_value_heads=args["num_heads"],
        hidden_dim=args["hidden_dim"],
        intermediate_dim=args["intermediate_dim"],
        head_dim=args["head_dim"],
        dropout=0.0,
    )
    trainer = keras_hub.models.GemmaCausalLM(
        backbone=backbone, preprocessor=None
    )
    steps = args["train_steps"]
    seq = args["sequence_length"]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if steps > 0:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, steps - max(1, steps // 10)),
            alpha=0.1,
            warmup_target=args["learning_rate"],
            warmup_steps=max(1, steps // 10),
        )
        trainer.compile(
            optimizer=keras.optimizers.AdamW(
                schedule, weight_decay=0.01, global_clipnorm=1.0
            ),
            loss=loss,
            weighted_metrics=["sparse_categorical_accuracy"],
        )
        x, y = sample_windows(
            train_stream, seq, steps * args["batch_size"], args["seed"]
        )
        trainer.fit(
            {"token_ids": x, "padding_mask": np.ones_like(x, dtype=bool)},
            y,
            batch_size=args["batch_size"],
            epochs=1,
            shuffle=False,
            verbose=verbose,
        )
    else:
        trainer.compile(loss=loss)

    vx, vy = tile_windows(val_stream, seq)
    logits = trainer.predict(
        {"token_ids": vx, "padding_mask": np.ones_like(vx, dtype=bool)},
        batch_size=32,
        verbose=0,
    )
    logits = np.asarray(logits, dtype="float64")
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    val_loss = float(-np.mean(np.take_along_axis(logp, vy[..., None], -1)))
    val_acc = float(np.mean(logp.argmax(-1) == vy))
    unigram = unigram_cross_entropy(train_stream, vy.reshape(-1), vocab)

    tokenizer = keras_hub.models.GemmaTokenizer(proto=proto)
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=seq
    )
    causal_lm = keras_hub.models.GemmaCausalLM(
        backbone=backbone, preprocessor=preprocessor
    )
    causal_lm.save_to_preset(folder)
    metadata = {
        "config": args,
        "corpus": source,
        "train_tokens": int(len(train_stream)),
        "validation_tokens": int(vy.size),
        "parameters": int(backbone.count_params()),
        "validation_loss": val_loss,
        "validation_perplexity": math.exp(val_loss),
        "validation_accuracy": val_acc,
        "unigram_loss": unigram,
        "unigram_perplexity": math.exp(unigram),
        "build_seconds": round(time.time() - start, 1),
        "backend": keras.backend.backend(),
    }
    if verbose:
        print(
            f"keras_gr preset: {metadata['parameters']:,} params, validation "
            f"loss {val_loss:.3f} (perplexity {math.exp(val_loss):.1f}) vs "
            f"unigram {unigram:.3f} (perplexity {math.exp(unigram):.1f})"
        )
    return metadata


_RECIPE_FUNCTIONS = (
    _train_tokenizer,
    _token_stream,
    sample_windows,
    tile_windows,
    unigram_cross_entropy,
    _build_into,
)
"""The functions whose source `recipe_digest` hashes (bound at import)."""
