"""Build small keras-hub Gemma presets locally, offline, with a cache.

`build_local_preset` trains a SentencePiece tokenizer on an offline corpus,
builds a small `keras_hub.models.GemmaCausalLM`, pretrains it with `fit`
(progress bar), measures its validation loss next to a unigram baseline,
and writes a standard preset folder that
`keras_hub.models.CausalLM.from_preset(folder)` loads on any backend.

Folders are cached by configuration: the folder name is a hash of every
argument that changes the result (corpus content included), so a second call
with the same arguments returns at once. A preset is written into a hidden
temporary folder and renamed into place only when complete (the rename is
atomic on one file system), so an interrupted build never leaves a folder a
later call would load as valid.
"""

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

from keras_gr._validation import check_integer
from keras_gr.data.corpora import pydoc_corpus
from keras_gr.data.corpora import text_file_corpus

METADATA_FILE = "keras_gr_preset.json"

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
examples and benchmarks use (a couple of minutes on 2 CPU cores)."""

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


def default_cache_dir():
    """`$KERAS_GR_CACHE` or `~/.cache/keras_gr`, plus `/presets`."""
    root = os.environ.get("KERAS_GR_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_gr"
    )
    return os.path.join(root, "presets")


def _validate(args):
    for name in (
        "vocabulary_size",
        "num_layers",
        "hidden_dim",
        "num_heads",
        "head_dim",
        "intermediate_dim",
        "sequence_length",
        "batch_size",
    ):
        check_integer(name, args[name])
    steps = args["train_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(
            "`train_steps` must be a non-negative integer. Received: "
            f"train_steps={steps!r}"
        )
    if args["vocabulary_size"] < 8:
        raise ValueError(
            "`vocabulary_size` must be at least 8 (4 special tokens plus "
            f"text pieces). Received: vocabulary_size={args['vocabulary_size']}"
        )
    if args["intermediate_dim"] % 2:
        raise ValueError(
            "`intermediate_dim` must be even (Gemma splits it between its "
            "gate and up projections). Received: "
            f"intermediate_dim={args['intermediate_dim']}"
        )
    lr = args["learning_rate"]
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(
            "`learning_rate` must be a positive number. Received: "
            f"learning_rate={lr!r}"
        )


def _load_corpus(text_file):
    if text_file is None:
        return pydoc_corpus(), "pydoc_data.topics"
    return text_file_corpus(text_file), os.path.abspath(os.fspath(text_file))


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


def sample_windows(stream, sequence_length, count, seed):
    """`count` random windows of `sequence_length + 1` tokens from a stream,
    returned as `(inputs, labels)` shifted by one token."""
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


def tile_windows(stream, sequence_length):
    """Non-overlapping windows covering the stream (the tail is dropped)."""
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


def unigram_cross_entropy(train_stream, val_stream, vocabulary_size):
    """Mean cross-entropy (nats/token) of the validation labels under the
    add-one-smoothed unigram distribution of the training tokens."""
    counts = np.bincount(train_stream, minlength=vocabulary_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-np.mean(logp[val_stream]))


def build_local_preset(
    text_file=None,
    *,
    vocabulary_size=DEFAULT_CONFIG["vocabulary_size"],
    num_layers=DEFAULT_CONFIG["num_layers"],
    hidden_dim=DEFAULT_CONFIG["hidden_dim"],
    num_heads=DEFAULT_CONFIG["num_heads"],
    head_dim=DEFAULT_CONFIG["head_dim"],
    intermediate_dim=DEFAULT_CONFIG["intermediate_dim"],
    sequence_length=DEFAULT_CONFIG["sequence_length"],
    train_steps=DEFAULT_CONFIG["train_steps"],
    batch_size=DEFAULT_CONFIG["batch_size"],
    learning_rate=DEFAULT_CONFIG["learning_rate"],
    seed=0,
    cache_dir=None,
    overwrite=False,
    verbose=1,
):
    """Builds (or returns the cached) local Gemma preset folder.

    The tokenizer is a SentencePiece unigram model trained on the training
    split (ids: `<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, digits split),
    so `keras_hub.models.GemmaTokenizer` reads it as is. The model is a
    `keras_hub.models.GemmaBackbone` with `num_heads` query and key/value
    heads, tied embeddings, no dropout. Pretraining: random windows of
    `sequence_length + 1` tokens from the `<bos> doc <eos>` stream of the
    training documents, AdamW (weight decay 0.01) with a linear warm-up over
    the first 10% of the steps and cosine decay to 10% of `learning_rate`,
    global gradient clipping at 1.0. Validation: non-overlapping windows of
    the validation split; the unigram baseline is the add-one-smoothed
    training unigram distribution. Both are written to
    `keras_gr_preset.json` in the folder (see `read_preset_metadata`).

    Args:
        text_file: a UTF-8 text file to train on, split into paragraphs; the
            last 5% of them are validation. `None` (default) uses Python's
            own documentation topics (`keras_gr.data.pydoc_corpus`).
        vocabulary_size, num_layers, hidden_dim, num_heads, head_dim,
            intermediate_dim: the Gemma architecture. `intermediate_dim` is
            keras-hub's (split between gate and up projections).
        sequence_length: training window and preprocessor length.
        train_steps: pretraining steps (0 leaves random weights).
        batch_size: sequences per step.
        learning_rate: peak learning rate.
        seed: seeds tokenizer training, initialisation and data order.
        cache_dir: where preset folders live. Defaults to
            `$KERAS_GR_CACHE/presets` or `~/.cache/keras_gr/presets`.
        overwrite: rebuild even when a cached folder exists.
        verbose: 1 shows the Keras progress bar and a summary line.

    Returns:
        The path of the preset folder.

    Raises:
        FileNotFoundError: `text_file` is missing.
        ValueError: an empty corpus, a vocabulary the corpus can't support,
            a non-writable `cache_dir`, or an invalid size argument.
    """
    args = dict(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        hidden_dim=hidden_dim,
        num_heads=num_heads,
        head_dim=head_dim,
        intermediate_dim=intermediate_dim,
        sequence_length=sequence_length,
        train_steps=train_steps,
        batch_size=batch_size,
        learning_rate=float(learning_rate),
        seed=seed,
    )
    _validate(args)
    (train_docs, val_docs), source = _load_corpus(text_file)
    if not any(d.strip() for d in train_docs):
        raise ValueError(
            f"The corpus is empty. Received: text_file={text_file!r}"
        )

    digest = _corpus_digest(train_docs, val_docs)
    key = hashlib.sha256(
        json.dumps(
            {**args, "corpus": digest, "format": 1}, sort_keys=True
        ).encode("utf-8")
    ).hexdigest()[:16]
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    folder = os.path.join(cache_dir, f"gemma-{key}")
    if not overwrite and os.path.isfile(os.path.join(folder, METADATA_FILE)):
        return folder

    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".gemma-{key}-", dir=cache_dir)
    except OSError as err:
        raise ValueError(
            "`cache_dir` is not a writable folder "
            f"({err.strerror or err}). Received: cache_dir={cache_dir!r}"
        ) from err
    try:
        metadata = _build_into(tmp, args, train_docs, val_docs, source, verbose)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
        if overwrite and os.path.isdir(folder):
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:
            # Another process finished the same preset first: keep theirs.
            if not os.path.isfile(os.path.join(folder, METADATA_FILE)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_preset_metadata(folder):
    """The `keras_gr_preset.json` written by `build_local_preset`."""
    with open(os.path.join(folder, METADATA_FILE)) as f:
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
