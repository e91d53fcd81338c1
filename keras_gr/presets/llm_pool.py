"""A locally built pool of small looped LMs and their correctness matrix.

The routing paper ("Universal Model Routing for Efficient LLM Inference",
Jitkrittum et al., arXiv 2502.08773) evaluates routers on a matrix of
per-prompt correctness of many LLMs (EmbedLLM, RouterBench). No such data
ships offline, so this module builds one here: a pool of small decoder-only
transformers with a looped block (`keras_gr.layers.LoopedBlock`, "Reasoning
with Latent Thoughts", arXiv 2502.17416) that differ in width, loop count and
training budget, trained on a mixture of exact-answer tasks of graded
difficulty, then scored prompt by prompt.

Tasks (one shared vocabulary, every prompt padded to 16 tokens):

- n-ary addition (`keras_gr.data.addition_examples`) with (operands,
  digits) in (2, 1), (2, 2), (3, 2), (2, 3), (3, 3);
- multiplication by a digit (`keras_gr.data.multiplication_examples`) with
  1 to 4 digits;
- p-hop induction (`keras_gr.data.p_hop_examples`), `p` in 1, 2, 3 on
  sequences of 8 letters of a 4-letter alphabet.

Correctness is exact match of every answer token (greedy argmax under
teacher forcing, the same event as greedy decoding being exactly right).

Cost is FLOPs per answer: one forward pass over the 16-token padded
sequence (prompt + answer; the work of a KV-cached greedy decode of the
answer plus the prompt's prefill), counting 2 FLOPs per multiply-add of
every matrix product: per token and per loop and layer `4 d^2` (Q, K, V, O
projections) plus `2 d f` (feed-forward, `f` its width) plus the causal
attention scores and values (`2 d t` at position `t`), plus the output
head `d V`. Embedding lookups, norms and softmaxes are not counted.

Built folders live in the cache of the local presets (`keras_gr.presets.
_cache`: keyed by the configuration, the build recipe and the keras /
keras-hub versions; locked while built; written to a temporary folder and
renamed; returned only when its manifest checks out) under
`$KERAS_GR_CACHE/llm_pool` (or `~/.cache/keras_gr/llm_pool`).
"""

import json
import os
import time

import keras
import numpy as np

from keras_gr._imports import require
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr.data._lm_tasks import decode_symbols
from keras_gr.data._lm_tasks import encode_symbols
from keras_gr.data._lm_tasks import lm_arrays
from keras_gr.data.addition import ADDITION_SYMBOLS
from keras_gr.data.addition import addition_examples
from keras_gr.data.multiplication import multiplication_examples
from keras_gr.data.p_hop import p_hop_examples
from keras_gr.layers.looped_block import LoopedBlock
from keras_gr.presets import _cache

POOL_SEQUENCE_LENGTH = 16
"""Every prompt + answer is right-padded to this many tokens."""
POOL_VOCAB_SIZE = 18
"""0 padding, 1..10 digits, 11 `+`, 12 `=`, 13 `*`, 14..17 letters a..d."""

POOL_SYMBOLS = {
    **ADDITION_SYMBOLS,
    13: "*",
    **{14 + i: letter for i, letter in enumerate("abcd")},
}
"""`{token: character}` of the pool vocabulary: addition's digits, `+`
and `=`, then `*` and the p-hop letters."""

POOL_FORMAT = 2
"""Bumped by hand when the pool folder's layout or recipe changes in a way
the recipe's source hash misses (part of the cache key)."""

ADDITION_LEVELS = ((2, 1), (2, 2), (3, 2), (2, 3), (3, 3))
MULTIPLICATION_LEVELS = (1, 2, 3, 4)
P_HOP_LEVELS = (1, 2, 3)
P_HOP_SEQ_LEN = 8

_MODELS = (
    # name, width, loops, training steps
    ("w16-l1-s600", 16, 1, 600),
    ("w16-l2-s1200", 16, 2, 1200),
    ("w16-l4-s1200", 16, 4, 1200),
    ("w32-l1-s300", 32, 1, 300),
    ("w32-l1-s1500", 32, 1, 1500),
    ("w32-l2-s800", 32, 2, 800),
    ("w32-l4-s400", 32, 4, 400),
    ("w32-l4-s1500", 32, 4, 1500),
    ("w48-l1-s1000", 48, 1, 1000),
    ("w48-l2-s1500", 48, 2, 1500),
    ("w48-l4-s800", 48, 4, 800),
    ("w64-l1-s1500", 64, 1, 1500),
    ("w64-l2-s800", 64, 2, 800),
    ("w64-l4-s1500", 64, 4, 1500),
)

POOL_CONFIG = {
    "models": [list(m) for m in _MODELS],
    "unseen": [
        "w16-l2-s1200",
        "w32-l1-s1500",
        "w32-l4-s400",
        "w48-l4-s800",
        "w64-l2-s800",
    ],
    "num_prompts": 3000,
    "num_train_examples": 24000,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "seed": 0,
}
"""The benchmark's pool: 14 models (9 training, 5 unseen), 3000 prompts.
It built in 1227 s on 2 heavily shared CPU cores (JAX backend); accuracy
on all prompts ranges from 0.18 to 0.39 (the 1-digit sums and products are
solved by the larger models, 3-operand and 3-digit sums by none)."""

TINY_POOL_CONFIG = {
    "models": [
        ["tiny-a", 8, 1, 10],
        ["tiny-b", 8, 2, 10],
    ],
    "unseen": ["tiny-b"],
    "num_prompts": 64,
    "num_train_examples": 256,
    "batch_size": 32,
    "learning_rate": 2e-3,
    "seed": 0,
}
"""A seconds-long pool for tests."""


def default_pool_cache_dir() -> str:
    """`$KERAS_GR_CACHE` or `~/.cache/keras_gr`, plus `/llm_pool`."""
    return os.path.join(_cache.cache_root(), "llm_pool")


def decode_pool_tokens(tokens) -> str:
    """The text of a pool token sequence (padding dropped); `ValueError`
    on an id outside `POOL_SYMBOLS`."""
    return decode_symbols(tokens, POOL_SYMBOLS)


def encode_pool_text(text: str) -> list[int]:
    """Token ids of a pool prompt's text (inverse of
    `decode_pool_tokens`); raises `ValueError` on a foreign character."""
    return encode_symbols(text, POOL_SYMBOLS)


def pool_prompts(num_examples: int, seed: int = 0) -> dict:
    """The task mixture of the pool, in one vocabulary.

    Each example draws its family (addition, multiplication, p-hop) and
    then its difficulty level uniformly.

    Args:
        num_examples: number of problems.
        seed: NumPy seed. Defaults to `0`.

    Returns:
        A dict with `tokens` (int32, `(num_examples, 16)`), `answer_mask`
        (bool), `texts` (the prompt up to and including `=`, e.g.
        `"12+07="`), `family` (`"addition"`, `"multiplication"` or
        `"p_hop"`) and `level` (a string naming the difficulty, e.g.
        `"add-3x2"`, `"mul-4"`, `"hop-2"`).
    """
    num_examples = check_integer("num_examples", num_examples)
    rng = np.random.default_rng(seed)
    levels = (
        [("addition", lv) for lv in ADDITION_LEVELS]
        + [("multiplication", lv) for lv in MULTIPLICATION_LEVELS]
        + [("p_hop", lv) for lv in P_HOP_LEVELS]
    )
    family_of = rng.integers(0, 3, size=num_examples)
    per_family = [
        [lv for lv in levels if lv[0] == f]
        for f in ("addition", "multiplication", "p_hop")
    ]
    choice = np.array(
        [per_family[f][rng.integers(len(per_family[f]))] for f in family_of],
        dtype=object,
    )
    tokens = np.zeros((num_examples, POOL_SEQUENCE_LENGTH), dtype="int32")
    mask = np.zeros_like(tokens, dtype=bool)
    names = np.empty(num_examples, dtype=object)
    for i, (family, level) in enumerate(levels):
        rows = np.array(
            [j for j in range(num_examples) if tuple(choice[j]) == levels[i]],
            dtype=int,
        )
        if rows.size == 0:
            continue
        sub_seed = int(rng.integers(2**31))
        if family == "addition":
            n, d = level
            data = addition_examples(rows.size, n, d, seed=sub_seed)
            t, m = data["tokens"], data["answer_mask"]
            names[rows] = f"add-{n}x{d}"
        elif family == "multiplication":
            data = multiplication_examples(rows.size, level, seed=sub_seed)
            t, m = data["tokens"].copy(), data["answer_mask"]
            t[t == 11] = 13  # `*` is 13 in the pool vocabulary.
            names[rows] = f"mul-{level}"
        else:
            data = p_hop_examples(
                rows.size, level, P_HOP_SEQ_LEN, 4, seed=sub_seed
            )
            t, m = data["tokens"].copy(), data["answer_mask"]
            letters = (t >= 1) & (t <= 4)
            t[letters] += 13  # letters a..d -> 14..17
            t[t == 5] = 12  # the separator is `=`
            names[rows] = f"hop-{level}"
        tokens[rows, : t.shape[1]], mask[rows, : m.shape[1]] = t, m
    texts = []
    for row in range(num_examples):
        start = int(np.argmax(mask[row]))
        texts.append(decode_pool_tokens(tokens[row, :start]))
    families = np.array(
        [("addition", "multiplication", "p_hop")[f] for f in family_of]
    )
    return {
        "tokens": tokens,
        "answer_mask": mask,
        "texts": np.array(texts),
        "family": families,
        "level": names.astype(str),
    }


def looped_lm_flops(
    dim: int,
    num_loops: int,
    num_layers: int = 1,
    intermediate_dim: int | None = None,
    sequence_length: int = POOL_SEQUENCE_LENGTH,
    vocab_size: int = POOL_VOCAB_SIZE,
) -> int:
    """FLOPs of one forward pass of a pool model over one sequence.

    `2 * sum over tokens t = 1..T of [L * n * (4 d^2 + 2 d f + 2 d t)
    + d V]` with `L` loops of `n` layers, width `d`, feed-forward width `f`
    (`4 d` by default), vocabulary `V` (see the module docstring).
    """
    f = 4 * dim if intermediate_dim is None else intermediate_dim
    t = np.arange(1, sequence_length + 1)
    per_layer = 4 * dim * dim + 2 * dim * f + 2 * dim * t
    macs = num_loops * num_layers * per_layer + dim * vocab_size
    return int(2 * np.sum(macs))


def pool_model(
    dim: int, num_loops: int, num_layers: int = 1, seed: int = 0
) -> keras.Model:
    """One pool model: embedding, a looped block of `num_layers`
    pre-norm `keras_hub` decoder layers (4 heads if `dim >= 32`, else 2;
    feed-forward width `4 dim`) applied `num_loops` times, a final norm and
    the output head. Inputs are `(batch, 15)` token ids, outputs logits."""
    keras_hub = require("keras_hub", "`keras_gr.presets.build_llm_pool`")

    keras.utils.set_random_seed(seed)
    length = POOL_SEQUENCE_LENGTH - 1
    inputs = keras.Input((length,), dtype="int32")
    h = keras_hub.layers.TokenAndPositionEmbedding(
        POOL_VOCAB_SIZE, length, dim
    )(inputs)
    heads = 4 if dim >= 32 else 2
    block = [
        keras_hub.layers.TransformerDecoder(
            4 * dim, heads, normalize_first=True, dropout=0.0
        )
        for _ in range(num_layers)
    ]
    h = LoopedBlock(block, num_loops=num_loops)(h)
    h = keras.layers.LayerNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(POOL_VOCAB_SIZE)(h))


def correctness_of(model: keras.Model, tokens, answer_mask) -> np.ndarray:
    """Per-row exact match (1.0 / 0.0) of `model`'s greedy answers."""
    x, y, w = lm_arrays(np.asarray(tokens), np.asarray(answer_mask))
    pred = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1)
    wrong = (pred != y) & (w > 0)
    return (~np.any(wrong, axis=1)).astype("float32")


def _validate_config(config):
    names = [m[0] for m in config["models"]]
    if len(set(names)) != len(names) or not names:
        raise ValueError(
            "`config['models']` must be a non-empty list of uniquely named "
            f"[name, width, loops, steps] entries. Received: names={names}"
        )
    for name, dim, loops, steps in config["models"]:
        check_integer(f"width of {name}", dim)
        check_integer(f"loops of {name}", loops)
        check_integer(f"steps of {name}", steps)
    for name in config["unseen"]:
        if name not in names:
            raise ValueError(
                "`config['unseen']` must name models of the pool. Received: "
                f"unseen={config['unseen']!r}, models={names}"
            )
    check_integer("num_prompts", config["num_prompts"], 2)
    check_integer("num_train_examples", config["num_train_examples"])


def build_llm_pool(
    config: dict | None = None,
    cache_dir: str | None = None,
    overwrite: bool = False,
    verbose: int = 0,
) -> str:
    """Trains the pool, scores it on the prompts and returns the cached
    folder.

    The folder holds `pool.npz` (prompt tokens, texts, families, levels,
    the `(num_prompts, num_models)` correctness matrix, costs) and
    `pool.json` (model names, widths, loops, steps, parameter counts,
    FLOPs, which models are unseen, training seconds), plus every model as
    `models/<name>.keras`, and the cache manifest `keras_gr_preset.json`
    (`cache_key`: the configuration, `POOL_FORMAT`, the recipe digest and
    the keras / keras-hub versions the folder name hashes; `files`: every
    file with its size). Read it with `load_llm_pool`.

    The cache is the local presets' (see `keras_gr.presets.local_preset`):
    a folder is returned only when its manifest checks out (a damaged one
    is rebuilt), a second process asking for the same pool waits for the
    first one's build and reuses it, and a build is renamed into place only
    when complete.

    Args:
        config: a dict like `POOL_CONFIG` (the default): `models` (a list of
            `[name, width, loops, steps]`), `unseen` (names held out of
            router training), `num_prompts` (scored prompts),
            `num_train_examples` (the models' training set, a different
            seed), `batch_size`, `learning_rate` (AdamW peak, 10% linear
            warm-up then cosine decay), `seed`.
        cache_dir: parent folder of pool folders. Defaults to
            `default_pool_cache_dir()`.
        overwrite: rebuild even when a complete folder exists. Defaults to
            `False`.
        verbose: `1` prints one line per trained model (and one when
            waiting for another process's build); `0` prints nothing.
            Defaults to `0`.

    Returns:
        The pool folder.

    Raises:
        ValueError: an invalid `config`, `cache_dir`, `overwrite` or
            `verbose`, or a non-writable `cache_dir`.
        ImportError: keras-hub is not installed (the message names the
            extra: `pip install "keras-gr[hub]"`).

    Example:

    >>> import tempfile
    >>> folder = build_llm_pool(TINY_POOL_CONFIG,
    ...                         cache_dir=tempfile.mkdtemp())
    >>> pool = load_llm_pool(folder)
    >>> pool["correctness"].shape, pool["names"]
    ((64, 2), ['tiny-a', 'tiny-b'])
    >>> lm = load_pool_model(folder, "tiny-a")
    >>> lm.predict(pool["tokens"][:2, :-1], verbose=0).shape
    (2, 15, 18)
    """
    config = dict(POOL_CONFIG if config is None else config)
    _validate_config(config)
    cache_dir = _cache.check_path("cache_dir", cache_dir)
    overwrite = bool(check_choice("overwrite", overwrite, (False, True)))
    verbose = int(check_choice("verbose", verbose, (0, 1)))
    require("keras_hub", "`keras_gr.presets.build_llm_pool`")
    inputs = {
        "config": config,
        "format": POOL_FORMAT,
        "recipe": _cache.source_digest(
            f"pool-{POOL_FORMAT}", _RECIPE_FUNCTIONS
        ),
        "keras": _cache.package_version("keras"),
        "keras_hub": _cache.package_version("keras-hub"),
    }
    return _cache.cached_build(
        cache_dir or default_pool_cache_dir(),
        "pool",
        inputs,
        lambda folder: _build_into(folder, config, verbose),
        required="pool.json",
        overwrite=overwrite,
        verbose=verbose,
    )


def _build_into(folder, config, verbose):
    seed = int(config["seed"])
    train = pool_prompts(config["num_train_examples"], seed=seed + 1)
    prompts = pool_prompts(config["num_prompts"], seed=seed + 2)
    x, y, w = lm_arrays(train["tokens"], train["answer_mask"])
    os.makedirs(os.path.join(folder, "models"))
    correctness = []
    records = []
    batch = int(config["batch_size"])
    for index, (name, dim, loops, steps) in enumerate(config["models"]):
        start = time.perf_counter()
        model = pool_model(dim, loops, seed=seed + index)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=steps,
            warmup_target=float(config["learning_rate"]),
            warmup_steps=max(1, steps // 10),
        )
        model.compile(
            keras.optimizers.AdamW(schedule, weight_decay=0.01),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        order = np.random.default_rng(seed + index).permutation(len(x))
        reps = int(np.ceil(steps * batch / len(x)))
        idx = np.concatenate([np.roll(order, r * 7919) for r in range(reps)])
        idx = idx[: steps * batch]
        model.fit(
            x[idx],
            y[idx],
            sample_weight=w[idx],
            batch_size=batch,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        right = correctness_of(model, prompts["tokens"], prompts["answer_mask"])
        correctness.append(right)
        model.save(os.path.join(folder, "models", f"{name}.keras"))
        records.append(
            {
                "name": name,
                "width": int(dim),
                "loops": int(loops),
                "steps": int(steps),
                "params": int(model.count_params()),
                "flops_per_answer": looped_lm_flops(dim, loops),
                "train_seconds": round(seconds, 2),
                "accuracy": float(right.mean()),
            }
        )
        if verbose:
            print(
                f"pool model {name}: accuracy {right.mean():.3f}, "
                f"{seconds:.0f}s",
                flush=True,
            )
    np.savez(
        os.path.join(folder, "pool.npz"),
        tokens=prompts["tokens"],
        answer_mask=prompts["answer_mask"],
        texts=prompts["texts"],
        family=prompts["family"],
        level=prompts["level"],
        correctness=np.stack(correctness, axis=1),
        costs=np.array([r["flops_per_answer"] for r in records], "float64"),
    )
    with open(os.path.join(folder, "pool.json"), "w") as f:
        json.dump(
            {
                "config": config,
                "models": records,
                "unseen": list(config["unseen"]),
                "cost_unit": "FLOPs per answer",
            },
            f,
            indent=2,
        )
    return {"config": config, "backend": keras.backend.backend()}


def load_llm_pool(folder: str) -> dict:
    """Reads a folder written by `build_llm_pool`.

    Returns:
        A dict with `texts`, `tokens`, `answer_mask`, `family`, `level`
        (one entry per prompt), `correctness` (float32 `(num_prompts,
        num_models)`, 1 = exact match), `costs` (FLOPs per answer, one per
        model), `names`, `unseen` (bool per model), `models` (the
        per-model records of `pool.json`) and `folder`.
    """
    if not _cache.is_complete(folder, "pool.json"):
        raise ValueError(
            "`folder` must be a complete pool folder written by "
            "`build_llm_pool` (its manifest lists every file with its size; "
            "a damaged folder is rebuilt by calling `build_llm_pool` "
            f"again). Received: folder={folder!r}"
        )
    with open(os.path.join(folder, "pool.json")) as f:
        meta = json.load(f)
    data = np.load(os.path.join(folder, "pool.npz"), allow_pickle=False)
    names = [r["name"] for r in meta["models"]]
    return {
        "texts": [str(t) for t in data["texts"]],
        "tokens": data["tokens"],
        "answer_mask": data["answer_mask"],
        "family": data["family"].astype(str),
        "level": data["level"].astype(str),
        "correctness": data["correctness"].astype("float32"),
        "costs": data["costs"],
        "names": names,
        "unseen": np.array([n in meta["unseen"] for n in names]),
        "models": meta["models"],
        "folder": folder,
    }


def load_pool_model(folder: str, name: str) -> keras.Model:
    """The trained pool model `name` (a `keras.Model` mapping `(batch, 15)`
    token ids to next-token logits)."""
    path = os.path.join(folder, "models", f"{name}.keras")
    if not os.path.isfile(path):
        raise ValueError(
            f"`name` must be a model of the pool in {folder!r}. "
            f"Received: name={name!r}"
        )
    return keras.saving.load_model(path)


_RECIPE_FUNCTIONS = (
    pool_prompts,
    pool_model,
    correctness_of,
    _build_into,
    addition_examples,
    multiplication_examples,
    p_hop_examples,
)
"""The functions whose source the pool's cache key hashes."""
