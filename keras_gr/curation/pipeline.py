"""One resumable curation pipeline over a corpus on disk or in a stream."""

import hashlib
import json
import os
import time
import zlib
from typing import Any

import keras
import numpy as np

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number
from keras_gr.curation.disk_selection import balanced_selection_to_file
from keras_gr.curation.disk_selection import semantic_dedup_to_file
from keras_gr.curation.kmeans import METRICS
from keras_gr.curation.kmeans import KMeans
from keras_gr.curation.selection import KEEP_RULES
from keras_gr.curation.streaming import NpyWriter

STAGES = ("embed", "kmeans", "dedup", "select")


def _streamed_texts(texts):
    """The documents of a text file (one per line) or of a
    `tf.data.Dataset` of strings (elements or batches), one at a time."""
    if isinstance(texts, (str, os.PathLike)):
        with open(os.fspath(texts), encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")
        return
    for item in texts.as_numpy_iterator():
        for t in np.asarray(item).reshape(-1).tolist():
            yield t.decode("utf-8") if isinstance(t, bytes) else t


def _text_batches(texts, batch_size):
    """Lists of at most `batch_size` strings from a list / array of
    strings, a `tf.data.Dataset` of strings (elements or batches) or the
    path of a text file with one document per line."""
    if isinstance(texts, (str, os.PathLike)) or hasattr(
        texts, "as_numpy_iterator"
    ):
        batch = []
        for text in _streamed_texts(texts):
            batch.append(text)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    for start in range(0, len(texts), batch_size):
        yield [str(t) for t in texts[start : start + batch_size]]


def _source_fingerprint(texts):
    """What identifies the input in the manifest: a file's path and size,
    an in-memory list's length and CRC-32, or the dataset's type."""
    if isinstance(texts, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(texts))
        return {"file": path, "bytes": os.path.getsize(path)}
    if hasattr(texts, "as_numpy_iterator"):
        return {"dataset": type(texts).__name__}
    crc = 0
    for t in texts:
        crc = zlib.crc32(str(t).encode("utf-8"), crc)
    return {"texts": len(texts), "crc32": crc}


def _embedder_fingerprint(embedder):
    config = {"class": type(embedder).__name__}
    for name in ("output_dim", "ngram_range", "seed"):
        if hasattr(embedder, name):
            config[name] = repr(getattr(embedder, name))
    return config


def _file_record(path):
    array = np.load(path, mmap_mode="r")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {
        "file": os.path.basename(path),
        "shape": list(array.shape),
        "bytes": os.path.getsize(path),
        "sha256_first_mib": digest,
    }


def _verified(out_dir, record):
    """True when a stage's recorded files are on disk as recorded."""
    for entry in record.get("files", []):
        path = os.path.join(out_dir, entry["file"])
        if not os.path.exists(path) or _file_record(path) != entry:
            return False
    return bool(record.get("files"))


def curate(
    texts: Any,
    embedder: Any,
    out_dir: str,
    num_clusters: int,
    budget: int,
    similarity_threshold: float = 0.95,
    keep: str = "first",
    metric: str = "cosine",
    max_iter: int = 20,
    batch_size: int = 65536,
    embed_batch_size: int = 1024,
    seed: int = 0,
    verbose: int = 1,
) -> dict:
    """Embed -> k-means -> semantic dedup -> balanced selection, streamed
    end to end, resumable, with a manifest.

    The curation recipe of "Analyzing Similarity Metrics for Data Selection
    for Language Model Pretraining" (arXiv 2502.02494) with SemDeDup
    (arXiv 2303.09540) in between, over a corpus that need not fit in
    memory. Stages and their files in `out_dir`:

    1. `embed`: `embeddings.npy` (`(n, d)` float32), written batch by batch
       from `embedder` (an object with `embed(list_of_str)`, e.g.
       `HashedNgramEmbedder`, or a callable on a list of strings).
    2. `kmeans`: streamed full-Lloyd `KMeans` over the memmapped
       embeddings (`centroids.npy`, `labels.npy`).
    3. `dedup`: `semantic_dedup_to_file` inside clusters (`dedup.npy`, the
       kept indices).
    4. `select`: `balanced_selection_to_file` of `budget` rows among the
       kept ones (`selected.npy`, sorted indices into the input; feed it to
       `select_from_dataset`).

    `manifest.json` records the arguments, the input's fingerprint (a
    file's path and size, a list's length and CRC-32), and per stage its
    files (shape, size, SHA-256 of the first MiB), counts and seconds. A
    second call with the same `out_dir` reuses every stage whose files
    verify and recomputes from the first that does not (an interrupted
    run resumes at the stage it was in; stage files are complete only once
    recorded). A call with different arguments or a different input is
    refused: use another `out_dir` or delete it.

    Args:
        texts: a list / array of strings, a `tf.data.Dataset` of strings,
            or the path of a UTF-8 text file with one document per line.
        embedder: object with `embed(list_of_str) -> (b, d)` or a callable.
        out_dir: folder for the stage files and the manifest.
        num_clusters: k of the k-means.
        budget: rows to select after dedup, at most the rows kept.
        similarity_threshold: SemDeDup cosine threshold. Defaults to
            `0.95`.
        keep: dedup keep rule (see `semantic_dedup`). Defaults to
            `"first"`.
        metric: k-means metric. Defaults to `"cosine"`.
        max_iter: Lloyd passes at most. Defaults to `20`.
        batch_size: rows per compiled k-means step. Defaults to `65536`.
        embed_batch_size: texts per embedder call. Defaults to `1024`.
        seed: seed of the k-means and of the selection. Defaults to `0`.
        verbose: `1` shows a progress bar per stage. Defaults to `1`.

    Returns:
        The manifest (a dict); `manifest["stages"]["select"]["files"][0]`
        names the selection file.

    Example:

    >>> import tempfile
    >>> from keras_gr.curation import HashedNgramEmbedder
    >>> docs = [f"text number {i % 40}" for i in range(200)]  # 40 distinct
    >>> m = curate(docs, HashedNgramEmbedder(256), tempfile.mkdtemp(),
    ...            num_clusters=4, budget=20, verbose=0)
    >>> m["stages"]["dedup"]["kept"], m["stages"]["select"]["selected"]
    (40, 20)
    """
    arguments = {
        "num_clusters": check_integer("num_clusters", num_clusters),
        "budget": check_integer("budget", budget),
        "similarity_threshold": check_number(
            "similarity_threshold",
            similarity_threshold,
            minimum=-1.0,
            maximum=1.0,
            min_inclusive=False,
        ),
        "keep": check_choice("keep", keep, KEEP_RULES),
        "metric": check_choice("metric", metric, METRICS),
        "max_iter": check_integer("max_iter", max_iter),
        "batch_size": check_integer("batch_size", batch_size),
        "embed_batch_size": check_integer("embed_batch_size", embed_batch_size),
        "seed": check_integer("seed", seed, minimum=0),
        "embedder": _embedder_fingerprint(embedder),
        "input": _source_fingerprint(texts),
    }
    if not (hasattr(embedder, "embed") or callable(embedder)):
        raise ValueError(
            "`embedder` must have an `embed(list_of_str)` method or be "
            f"callable. Received: {type(embedder).__name__}"
        )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, "manifest.json")
    manifest = {"arguments": arguments, "stages": {}}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            previous = json.load(f)
        if previous.get("arguments") != arguments:
            old = previous.get("arguments", {})
            changed = sorted(
                key
                for key in set(old) | set(arguments)
                if old.get(key) != arguments.get(key)
            )
            raise ValueError(
                f"`out_dir` holds a curation run with other arguments "
                f"(manifest {manifest_path}); resume it with the same "
                "arguments, or use another `out_dir`. Received different: "
                + ", ".join(
                    f"{k}={arguments.get(k)!r} (was {old.get(k)!r})"
                    for k in changed
                )
            )
        manifest = previous

    def save():
        tmp = manifest_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        os.replace(tmp, manifest_path)

    def path(name):
        return os.path.join(out_dir, name)

    def bar(stage, total=None):
        if verbose:
            print(f"curate: {stage}")
            return keras.utils.Progbar(total)
        return None

    stale = False
    for stage in STAGES:
        record = manifest["stages"].get(stage)
        if not stale and record is not None and _verified(out_dir, record):
            continue
        stale = True
        start = time.perf_counter()
        if stage == "embed":
            progress = bar(stage)
            writer = NpyWriter(path("embeddings.npy.part"), "float32")
            width = None
            for batch in _text_batches(texts, embed_batch_size):
                if hasattr(embedder, "embed"):
                    vectors = embedder.embed(batch, batch_size=len(batch))
                else:
                    vectors = embedder(batch)
                vectors = np.asarray(vectors, "float32")
                if (
                    vectors.ndim != 2
                    or len(vectors) != len(batch)
                    or (width is not None and vectors.shape[1] != width)
                ):
                    writer.close()
                    raise ValueError(
                        "`embedder` must return one row per text, of one "
                        f"width. Received: shape {vectors.shape} for "
                        f"{len(batch)} texts (width so far {width})"
                    )
                width = vectors.shape[1]
                writer.trailing = (width,)
                writer.write(vectors)
                if progress is not None:
                    progress.add(len(batch))
            if writer.rows == 0:
                writer.close()
                raise ValueError("`texts` must not be empty.")
            writer.close()
            os.replace(path("embeddings.npy.part"), path("embeddings.npy"))
            record = {"rows": writer.rows, "width": width}
            files = ["embeddings.npy"]
        elif stage == "kmeans":
            progress = bar(stage, 2)
            x = np.load(path("embeddings.npy"), mmap_mode="r")
            km = KMeans(
                num_clusters,
                metric=metric,
                max_iter=max_iter,
                seed=seed,
                stream_batch_size=batch_size,
            ).fit(x)
            if progress is not None:
                progress.add(1)
            np.save(path("centroids.npy"), km.centroids)
            km.predict(x, labels_path=path("labels.npy"))
            if progress is not None:
                progress.add(1)
            record = {"inertia": km.inertia, "iterations": km.iterations}
            files = ["centroids.npy", "labels.npy"]
        elif stage == "dedup":
            progress = bar(stage, 1)
            kept = semantic_dedup_to_file(
                path("embeddings.npy"),
                path("labels.npy"),
                path("dedup.npy"),
                similarity_threshold=similarity_threshold,
                keep=keep,
                seed=seed,
            )
            if progress is not None:
                progress.add(1)
            record = {"kept": len(kept)}
            files = ["dedup.npy"]
        else:
            progress = bar(stage, 1)
            kept = np.load(path("dedup.npy"), mmap_mode="r")
            if budget > len(kept):
                raise ValueError(
                    "`budget` must be at most the number of rows kept by "
                    f"the dedup. Received: budget={budget} for {len(kept)} "
                    "rows kept"
                )
            labels = np.load(path("labels.npy"), mmap_mode="r")
            writer = NpyWriter(path("kept_labels.npy"), "int32")
            for s in range(0, len(kept), batch_size):
                writer.write(labels[np.asarray(kept[s : s + batch_size])])
            writer.close()
            positions = balanced_selection_to_file(
                path("kept_labels.npy"), budget, path("positions.npy"), seed
            )
            writer = NpyWriter(path("selected.npy"), "int64")
            for s in range(0, len(positions), batch_size):
                writer.write(kept[np.asarray(positions[s : s + batch_size])])
            writer.close()
            del positions
            os.remove(path("kept_labels.npy"))
            os.remove(path("positions.npy"))
            if progress is not None:
                progress.add(1)
            record = {"selected": budget}
            files = ["selected.npy"]
        record["files"] = [_file_record(path(f)) for f in files]
        record["seconds"] = round(time.perf_counter() - start, 3)
        manifest["stages"][stage] = record
        save()
    return manifest
