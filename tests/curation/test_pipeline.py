import json

import numpy as np
import pytest

from keras_gr.curation import HashedNgramEmbedder
from keras_gr.curation import KMeans
from keras_gr.curation import balanced_selection
from keras_gr.curation import curate
from keras_gr.curation import semantic_dedup


def _docs(n=400, distinct=120):
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    rng = np.random.default_rng(0)
    base = [
        " ".join(rng.choice(words, size=6)) + f" item {i}"
        for i in range(distinct)
    ]
    return [base[i % distinct] for i in range(n)]


ARGS = dict(num_clusters=5, budget=60, max_iter=10, batch_size=128, seed=1)


def test_curate_equals_the_in_memory_recipe(tmp_path):
    docs = _docs()
    embedder = HashedNgramEmbedder(32)
    manifest = curate(docs, embedder, tmp_path, verbose=0, **ARGS)
    x = embedder.embed(docs)
    np.testing.assert_array_equal(np.load(tmp_path / "embeddings.npy"), x)
    km = KMeans(5, metric="cosine", max_iter=10, seed=1).fit(x)
    labels = np.load(tmp_path / "labels.npy")
    np.testing.assert_array_equal(labels, km.labels)
    kept = semantic_dedup(x, labels, 0.95, seed=1)
    np.testing.assert_array_equal(np.load(tmp_path / "dedup.npy"), kept)
    assert len(kept) == 120  # exactly one of each repeated document
    picked = kept[balanced_selection(labels[kept], 60, seed=1)]
    np.testing.assert_array_equal(np.load(tmp_path / "selected.npy"), picked)
    assert manifest["stages"]["select"]["selected"] == 60
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))


def test_curate_resumes_and_refuses_other_arguments(tmp_path, monkeypatch):
    docs = _docs()
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(docs) + "\n")
    out = tmp_path / "run"
    embedder = HashedNgramEmbedder(32)
    first = curate(str(text_file), embedder, out, verbose=0, **ARGS)
    # Interrupted during the dedup: its record and file are gone.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["stages"]["dedup"], manifest["stages"]["select"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "dedup.npy").unlink()
    calls = []
    original = embedder.embed

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(embedder, "embed", counting)
    again = curate(str(text_file), embedder, out, verbose=0, **ARGS)
    assert calls == []  # the embeddings and the k-means were reused
    for stage in ("embed", "kmeans", "dedup", "select"):
        assert (
            again["stages"][stage]["files"] == first["stages"][stage]["files"]
        )
    # A corrupted stage file is detected and that stage recomputed.
    selected = np.load(out / "selected.npy")
    np.save(out / "labels.npy", np.zeros(len(docs), "int32"))
    curate(str(text_file), embedder, out, verbose=0, **ARGS)
    np.testing.assert_array_equal(np.load(out / "selected.npy"), selected)
    with pytest.raises(ValueError, match=r"budget=70 \(was 60\)"):
        curate(
            str(text_file), embedder, out, verbose=0, **{**ARGS, "budget": 70}
        )
    text_file.write_text("\n".join(docs[:-1]) + "\n")
    with pytest.raises(ValueError, match="input="):
        curate(str(text_file), embedder, out, verbose=0, **ARGS)


def test_curate_bad_input(tmp_path):
    embedder = HashedNgramEmbedder(16)
    with pytest.raises(ValueError, match="empty"):
        curate([], embedder, tmp_path / "a", verbose=0, **ARGS)
    with pytest.raises(ValueError, match="budget=60 for"):
        curate(
            ["same text"] * 30,
            embedder,
            tmp_path / "b",
            verbose=0,
            **{**ARGS, "num_clusters": 1},
        )
    with pytest.raises(ValueError, match="zero norm.*index 2"):
        curate(
            ["a b", "c d", "", "e"],
            embedder,
            tmp_path / "c",
            verbose=0,
            **{**ARGS, "num_clusters": 1, "budget": 1},
        )
    with pytest.raises(ValueError, match="keep"):
        curate(["a"], embedder, tmp_path / "d", keep="last", **ARGS)
