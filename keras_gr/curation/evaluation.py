"""The three measures of how well an embedder suits data curation.

"Analyzing Similarity Metrics for Data Selection for Language Model
Pretraining" (Sam, Chakrabarti, Rostamizadeh, Ramalingam, Citovsky, Kumar;
arXiv 2502.02494) judges an embedding by (1) how well distances in it
track differences in a reference LM's loss, (2) how much a diversity-based
selection made with it improves pretraining over a random selection, and
(3) how well it separates the data's sources. The paper's exact
operationalisation is not public; the choices made here are stated in each
function (reconstructed, see the spec):

- `loss_correlation`: mean `|loss_i - loss_j|` over uniformly sampled
  same-cluster pairs divided by the same mean over uniformly sampled pairs
  (lower is better: 0 when the clusters have constant loss, ~1 when the
  clusters ignore the loss), and the Spearman correlation between
  embedding distance and `|loss_i - loss_j|` over the random pairs.
- `curation_quality`: validation loss of a small LM pretrained from scratch
  on a selection vs on a random subset of the same size, same steps, same
  seeds (`pretraining_loss`).
- `source_separation`: cluster purity and normalised mutual information of
  k-means clusters (k = number of sources unless given) against the source
  labels, and leave-one-out k-NN accuracy.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_gr._imports import require
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number
from keras_gr._validation import check_same_length
from keras_gr.curation.kmeans import KMeans
from keras_gr.curation.selection import _labels
from keras_gr.curation.selection import as_array
from keras_gr.curation.sequence_embedder import _as_text_list
from keras_gr.curation.sequence_embedder import tokenized_dataset


def rank_data(values):
    """Ranks (1-based) with ties given their average rank, as
    `scipy.stats.rankdata`."""
    values = np.asarray(values, "float64")
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), "float64")
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(
        values, return_inverse=True, return_counts=True
    )
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two equally long vectors (NaN when one
    of them is constant).

    Ties get their average rank, so any strictly increasing relation gives
    `1.0` and any strictly decreasing one `-1.0`.

    Example:

    >>> spearman([1, 2, 3, 4], [10, 20, 40, 80])
    1.0
    >>> spearman([1, 2, 3], [3, 2, 1])
    -1.0
    """
    ra, rb = rank_data(a), rank_data(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _distances(x, i, j, metric):
    if metric == "cosine":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return 1.0 - np.sum(xn[i] * xn[j], axis=1)
    return np.linalg.norm(x[i] - x[j], axis=1)


def _random_pairs(n, count, rng):
    i = rng.integers(0, n, count)
    j = (i + rng.integers(1, n, count)) % n  # j != i, uniform over others
    return i, j


def _same_cluster_pairs(labels, count, rng):
    """Pairs drawn uniformly from all unordered same-cluster pairs."""
    clusters, inverse, sizes = np.unique(
        labels, return_inverse=True, return_counts=True
    )
    pairs = sizes * (sizes - 1) / 2.0
    if pairs.sum() == 0:
        raise ValueError(
            "`cluster_labels` must put at least two examples in one "
            "cluster: no same-cluster pair exists"
        )
    chosen = rng.choice(len(clusters), size=count, p=pairs / pairs.sum())
    members = [np.flatnonzero(inverse == c) for c in range(len(clusters))]
    i = np.empty(count, "int64")
    j = np.empty(count, "int64")
    for c in np.unique(chosen):
        where = np.flatnonzero(chosen == c)
        m = members[c]
        a = rng.integers(0, len(m), len(where))
        b = (a + rng.integers(1, len(m), len(where))) % len(m)
        i[where], j[where] = m[a], m[b]
    return i, j


def loss_correlation(
    embeddings: Any,
    losses: Any,
    cluster_labels: Any | None = None,
    num_clusters: int = 32,
    num_pairs: int = 20000,
    metric: str = "cosine",
    seed: int = 0,
) -> dict[str, float]:
    """Measure (1) of arXiv 2502.02494: do nearby examples have similar loss?

    Args:
        embeddings: `(n, d)` embeddings of the examples.
        losses: `(n,)` loss of a reference LM on each example (e.g.
            `sequence_losses`).
        cluster_labels: `(n,)` integer labels, or `None` to cluster the
            embeddings with `KMeans(num_clusters, metric)`. Defaults to
            `None`.
        num_clusters: k of that k-means. Defaults to `32`.
        num_pairs: pairs sampled for each of the two means and for the rank
            correlation. Defaults to `20000`.
        metric: `"cosine"` or `"euclidean"`, for the clustering and the
            distances. Defaults to `"cosine"`.
        seed: integer seed. Defaults to `0`.

    Returns:
        A dict: `same_cluster_gap` (mean |loss_i - loss_j| over same-cluster
        pairs), `random_pair_gap` (over random pairs), `ratio` (their
        quotient: lower is better, 1 = no better than chance),
        `rank_correlation` (Spearman between embedding distance and
        |loss_i - loss_j| over the random pairs: higher is better).

    Example:

    >>> x = np.repeat(np.eye(3), 10, axis=0) + 0.01
    >>> losses = np.repeat([1.0, 2.0, 3.0], 10)
    >>> r = loss_correlation(x, losses, cluster_labels=np.repeat([0, 1, 2], 10))
    >>> r["ratio"]
    0.0
    """
    x = as_array("embeddings", embeddings, ndim=2).astype("float64")
    y = as_array("losses", losses, ndim=1).astype("float64")
    check_same_length("embeddings", x, "losses", y)
    if len(x) < 2:
        raise ValueError(
            f"`embeddings` must hold at least 2 examples. Received: {len(x)}"
        )
    metric = check_choice("metric", metric, ("cosine", "euclidean"))
    num_pairs = check_integer("num_pairs", num_pairs)
    seed = check_integer("seed", seed, minimum=0)
    if cluster_labels is None:
        labels = KMeans(num_clusters, metric=metric, seed=seed).fit(x).labels
    else:
        labels = _labels("cluster_labels", cluster_labels, len(x))
    rng = np.random.default_rng(seed)
    si, sj = _same_cluster_pairs(labels, num_pairs, rng)
    ri, rj = _random_pairs(len(x), num_pairs, rng)
    same = float(np.mean(np.abs(y[si] - y[sj])))
    rand = float(np.mean(np.abs(y[ri] - y[rj])))
    return {
        "same_cluster_gap": same,
        "random_pair_gap": rand,
        "ratio": same / rand if rand > 0 else float("nan"),
        "rank_correlation": spearman(
            _distances(x, ri, rj, metric), np.abs(y[ri] - y[rj])
        ),
    }


def _purity_and_nmi(clusters, sources):
    _, c = np.unique(clusters, return_inverse=True)
    _, s = np.unique(sources, return_inverse=True)
    table = np.zeros((c.max() + 1, s.max() + 1))
    np.add.at(table, (c, s), 1)
    n = table.sum()
    purity = table.max(axis=1).sum() / n
    p = table / n
    pc, ps = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = np.sum(p[nz] * np.log(p[nz] / np.outer(pc, ps)[nz]))

    def entropy(q):
        return -np.sum(q[q > 0] * np.log(q[q > 0]))

    hc, hs = entropy(pc), entropy(ps)
    nmi = 2 * mi / (hc + hs) if hc + hs > 0 else 1.0
    return float(purity), float(nmi)


def _knn_accuracy(x, sources, k, metric, block=2048):
    """Leave-one-out k-NN majority vote (ties: the smallest label)."""
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = np.sum(x * x, axis=1)
    num_labels = sources.max() + 1
    correct = 0
    for start in range(0, len(x), block):
        stop = min(start + block, len(x))
        d = sq[start:stop, None] - 2 * x[start:stop] @ x.T + sq[None, :]
        d[np.arange(stop - start), np.arange(start, stop)] = np.inf
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        votes = np.zeros((stop - start, num_labels))
        np.add.at(
            votes, (np.arange(stop - start)[:, None], sources[nearest]), 1
        )
        correct += int(np.sum(votes.argmax(axis=1) == sources[start:stop]))
    return correct / len(x)


def source_separation(
    embeddings: Any,
    source_labels: Any,
    num_clusters: int | None = None,
    num_neighbors: int = 5,
    metric: str = "cosine",
    seed: int = 0,
) -> dict[str, float]:
    """Measure (3) of arXiv 2502.02494: do the embeddings separate the
    data's sources?

    Args:
        embeddings: `(n, d)` embeddings.
        source_labels: `(n,)` integer source label per example.
        num_clusters: k of the k-means whose clusters are scored; `None`
            uses the number of distinct sources. Defaults to `None`.
        num_neighbors: k of the leave-one-out k-NN vote. Defaults to `5`.
        metric: `"cosine"` or `"euclidean"`. Defaults to `"cosine"`.
        seed: integer seed of the k-means. Defaults to `0`.

    Returns:
        A dict: `purity` (share of examples whose cluster's majority source
        is their own; 1 = clusters never mix sources), `nmi` (normalised
        mutual information between clusters and sources, arithmetic-mean
        normalisation), `knn_accuracy`.

    Example:

    >>> x = np.repeat(np.eye(2), 5, axis=0)
    >>> r = source_separation(x, np.repeat([0, 1], 5), num_neighbors=3)
    >>> r["purity"], r["knn_accuracy"]
    (1.0, 1.0)
    """
    x = as_array("embeddings", embeddings, ndim=2).astype("float32")
    sources = _labels("source_labels", source_labels, len(x))
    metric = check_choice("metric", metric, ("cosine", "euclidean"))
    num_neighbors = check_integer(
        "num_neighbors", num_neighbors, maximum=len(x) - 1
    )
    _, sources = np.unique(sources, return_inverse=True)
    if num_clusters is None:
        num_clusters = int(sources.max()) + 1
    clusters = (
        KMeans(num_clusters, metric=metric, seed=seed, num_init=3).fit(x).labels
    )
    purity, nmi = _purity_and_nmi(clusters, sources)
    return {
        "purity": purity,
        "nmi": nmi,
        "knn_accuracy": _knn_accuracy(
            x.astype("float64"), sources, num_neighbors, metric
        ),
    }


def sequence_losses(
    causal_lm: Any,
    texts: Any,
    sequence_length: int = 128,
    batch_size: int = 32,
    verbose: int | str = 0,
) -> np.ndarray:
    """Mean next-token cross-entropy of a keras-hub `CausalLM` on each text
    (padding masked), one compiled `predict` pass over a `tf.data` pipeline.

    The text is packed as `tokenized_dataset` does (start token, truncated
    / padded to `sequence_length`); the loss averages the positions whose
    target is a real token. Follows `keras.distribution` like any
    `predict`.

    Returns:
        `(len(texts),)` float32 losses in nats per token.

    Example (a one-layer Gemma on bytes, untrained, so close to the
    uniform loss `log(256) = 5.55`):

    >>> import keras_hub
    >>> tokenizer = keras_hub.tokenizers.ByteTokenizer()
    >>> backbone = keras_hub.models.GemmaBackbone(
    ...     vocabulary_size=256, num_layers=1, num_query_heads=1,
    ...     num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
    ...     head_dim=8)
    >>> lm = keras_hub.models.GemmaCausalLM(
    ...     backbone, keras_hub.models.CausalLMPreprocessor(tokenizer))
    >>> losses = sequence_losses(lm, ["def f(x):", "The cat"],
    ...                          sequence_length=16)
    >>> losses.shape, bool(np.all(np.abs(losses - np.log(256)) < 0.5))
    ((2,), True)
    """
    import keras
    from keras import ops

    texts = _as_text_list(texts)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    logits = ops.cast(causal_lm(inputs), "float32")[:, :-1]
    targets = token_ids[:, 1:]
    mask = ops.cast(padding_mask[:, 1:], "float32")
    nll = keras.losses.sparse_categorical_crossentropy(
        targets, logits, from_logits=True
    )
    per_text = ops.sum(nll * mask, axis=1) / ops.maximum(
        ops.sum(mask, axis=1), 1.0
    )
    model = keras.Model(inputs, per_text)
    ds = tokenized_dataset(
        causal_lm.preprocessor.tokenizer, texts, sequence_length, batch_size
    )
    return np.asarray(model.predict(ds, verbose=verbose), "float32")[
        : len(texts)
    ]


def _token_stream(tokenizer, texts):
    """`<bos> text <eos>` token ids of every text, concatenated."""
    import keras

    start = getattr(tokenizer, "start_token_id", None)
    end = getattr(tokenizer, "end_token_id", None)
    stream = []
    for i in range(0, len(texts), 256):
        for ids in tokenizer(texts[i : i + 256]):
            ids = keras.ops.convert_to_numpy(ids).tolist()
            stream.extend(([start] if start is not None else []) + ids)
            if end is not None:
                stream.append(end)
    return np.asarray(stream, "int32")


def pretraining_loss(
    train_texts: Any,
    validation_texts: Any,
    tokenizer: Any,
    *,
    num_layers: int = 2,
    hidden_dim: int = 64,
    num_heads: int = 2,
    intermediate_dim: int = 256,
    sequence_length: int = 64,
    steps: int = 300,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    seed: int = 0,
    verbose: int | str = 0,
) -> float | dict[str, float]:
    """Pretrains a small keras-hub Gemma from scratch on `train_texts` and
    returns its validation loss (nats per token) on `validation_texts`.

    The recipe (same for every selection it compares): `<bos> text <eos>`
    token stream; `steps` batches of `batch_size` random windows of
    `sequence_length + 1` tokens (seeded); AdamW (weight decay 0.01), linear
    warm-up over 10% of the steps then cosine decay to 10% of
    `learning_rate`, global norm clipping 1.0; validation on all
    non-overlapping windows of the validation stream. Model weights are
    seeded by `seed` too, so two selections compared at the same seed start
    from the same initial model.

    Args:
        train_texts: texts to pretrain on.
        validation_texts: texts to evaluate on, or a dict of named lists of
            texts (then a dict of losses is returned).
        tokenizer: a keras-hub tokenizer (its vocabulary sizes the model).
        num_layers, hidden_dim, num_heads, intermediate_dim: the Gemma
            size. Default to `2`, `64`, `2`, `256`.
        sequence_length: window length. Defaults to `64`.
        steps: optimizer steps. Defaults to `300`.
        batch_size: windows per step. Defaults to `16`.
        learning_rate: peak learning rate. Defaults to `3e-3`.
        seed: integer seed of the windows and the initial weights.
            Defaults to `0`.
        verbose: `fit`'s verbosity. Defaults to `0`.

    Returns:
        The validation loss (a float), or a dict of them.

    Example (two steps of a one-layer model on bytes):

    >>> import keras_hub
    >>> tokenizer = keras_hub.tokenizers.ByteTokenizer()
    >>> texts = ["the cat sat on the mat. " * 3, "def f(x): return x; " * 3]
    >>> loss = pretraining_loss(
    ...     texts * 4, {"prose": texts[:1], "code": texts[1:]}, tokenizer,
    ...     num_layers=1, hidden_dim=8, num_heads=1, intermediate_dim=16,
    ...     sequence_length=16, steps=2, batch_size=2)
    >>> sorted(loss), all(0.0 < v < 7.0 for v in loss.values())
    (['code', 'prose'], True)
    """
    import keras

    keras_hub = require("keras_hub", "`pretraining_loss`")

    steps = check_integer("steps", steps)
    batch_size = check_integer("batch_size", batch_size)
    sequence_length = check_integer("sequence_length", sequence_length)
    learning_rate = check_number(
        "learning_rate", learning_rate, minimum=0.0, min_inclusive=False
    )
    named = isinstance(validation_texts, dict)
    if not named:
        validation_texts = {"validation_texts": validation_texts}
    streams = {"train_texts": train_texts, **validation_texts}
    for name, texts in streams.items():
        streams[name] = _token_stream(tokenizer, _as_text_list(texts, name))
        if len(streams[name]) < sequence_length + 1:
            raise ValueError(
                f"`{name}` must hold at least sequence_length + 1 = "
                f"{sequence_length + 1} tokens. Received: "
                f"{len(streams[name])}"
            )
    train = streams.pop("train_texts")
    rng = np.random.default_rng(seed)
    starts = rng.integers(
        0, len(train) - sequence_length, (steps * batch_size,)
    )
    windows = train[starts[:, None] + np.arange(sequence_length + 1)]

    def split(w):
        x = {
            "token_ids": w[:, :-1],
            "padding_mask": np.ones_like(w[:, :-1]),
        }
        return x, w[:, 1:]

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_query_heads=num_heads,
        num_key_value_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        head_dim=hidden_dim // num_heads,
        dropout=0.0,
    )
    model = keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)
    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=steps - warmup,
        alpha=0.1,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            schedule, weight_decay=0.01, global_clipnorm=1.0
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = split(windows)
    model.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=verbose
    )
    losses = {}
    for name, stream in streams.items():
        n_val = (len(stream) - 1) // sequence_length
        starts = np.arange(n_val)[:, None] * sequence_length
        vx, vy = split(stream[starts + np.arange(sequence_length + 1)])
        scores = model.evaluate(
            vx, vy, batch_size=batch_size, verbose=0, return_dict=True
        )
        losses[name] = float(scores["loss"])
    return losses if named else losses["validation_texts"]


def curation_quality(
    texts: Any,
    selected_indices: Any,
    validation_texts: Any,
    tokenizer: Any,
    seeds: Sequence[int] = (0, 1, 2),
    **pretraining_kwargs: Any,
) -> dict[str, Any]:
    """Measure (2) of arXiv 2502.02494: does pretraining on a selection beat
    pretraining on a random subset of the same size?

    For every seed, one small LM is pretrained on `texts[selected_indices]`
    and one on a uniformly random subset of `texts` of the same size (drawn
    with that seed), with the same initial weights, steps and windows
    recipe (`pretraining_loss`, whose keyword arguments are passed on).

    Returns:
        A dict: `selected` and `random` (per-seed validation losses),
        `selected_mean`, `random_mean`, `improvement` (random minus
        selected: positive means the selection helps).

    Example (one seed, two steps of a one-layer model on bytes; real runs
    use the defaults of `pretraining_loss` and several seeds):

    >>> import keras_hub
    >>> tokenizer = keras_hub.tokenizers.ByteTokenizer()
    >>> texts = ["the cat sat on the mat. " * 3, "def f(x): return x; " * 3]
    >>> r = curation_quality(
    ...     texts * 4, [0, 2, 4, 6], texts[:1], tokenizer, seeds=(0,),
    ...     num_layers=1, hidden_dim=8, num_heads=1, intermediate_dim=16,
    ...     sequence_length=16, steps=2, batch_size=2)
    >>> sorted(r)
    ['improvement', 'random', 'random_mean', 'selected', 'selected_mean']
    >>> len(r["selected"]), len(r["random"])
    (1, 1)
    """
    texts = _as_text_list(texts)
    picked = as_array("selected_indices", selected_indices, ndim=1).astype(
        "int64"
    )
    if picked.min() < 0 or picked.max() >= len(texts):
        raise ValueError(
            "`selected_indices` must index into `texts` (0 to "
            f"{len(texts) - 1}). Received: values from {picked.min()} to "
            f"{picked.max()}"
        )
    selected, random = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        subset = rng.choice(len(texts), size=len(picked), replace=False)
        for indices, out in ((picked, selected), (subset, random)):
            out.append(
                pretraining_loss(
                    [texts[i] for i in indices],
                    validation_texts,
                    tokenizer,
                    seed=seed,
                    **pretraining_kwargs,
                )
            )
    return {
        "selected": selected,
        "random": random,
        "selected_mean": float(np.mean(selected)),
        "random_mean": float(np.mean(random)),
        "improvement": float(np.mean(random) - np.mean(selected)),
    }
