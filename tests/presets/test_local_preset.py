"""Local keras-hub presets: build, load, cache, and refuse bad input."""

import math
import os
import time

import keras_hub
import numpy as np
import pytest

from keras_gr.presets import DEFAULT_CONFIG
from keras_gr.presets import TINY_CONFIG
from keras_gr.presets import build_local_preset
from keras_gr.presets import local_preset
from keras_gr.presets import read_preset_metadata

TEXT = "\n\n".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i % 7} "
    "times, while the cat sleeps by the warm fire and dreams of fish."
    for i in range(60)
)


def test_tiny_preset_loads_and_generates(tiny_preset):
    lm = keras_hub.models.CausalLM.from_preset(tiny_preset)
    assert isinstance(lm, keras_hub.models.GemmaCausalLM)
    out = lm.generate("The for statement", max_length=12)
    assert isinstance(out, str) and out.startswith("The for statement")
    meta = read_preset_metadata(tiny_preset)
    # Even 30 steps beat the uniform distribution over the vocabulary.
    assert meta["validation_loss"] < math.log(TINY_CONFIG["vocabulary_size"])
    assert meta["parameters"] == lm.backbone.count_params()


def test_cache_returns_same_folder_instantly(tiny_preset):
    cache_dir = os.path.dirname(tiny_preset)
    mtime = os.path.getmtime(tiny_preset)
    start = time.perf_counter()
    again = build_local_preset(**TINY_CONFIG, cache_dir=cache_dir, verbose=0)
    assert again == tiny_preset
    assert time.perf_counter() - start < 2.0
    assert os.path.getmtime(tiny_preset) == mtime
    # A different configuration is a different folder.
    other = dict(TINY_CONFIG, seed=1, train_steps=0)
    assert (
        build_local_preset(**other, cache_dir=cache_dir, verbose=0)
        != tiny_preset
    )


def test_user_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    folder = build_local_preset(
        str(path),
        **dict(TINY_CONFIG, vocabulary_size=52, train_steps=2),
        cache_dir=str(tmp_path / "cache"),
        verbose=0,
    )
    lm = keras_hub.models.CausalLM.from_preset(folder)
    assert lm.backbone.vocabulary_size == 52
    assert read_preset_metadata(folder)["corpus"] == str(path)


def test_missing_text_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_file"):
        build_local_preset(str(tmp_path / "nope.txt"), cache_dir=str(tmp_path))


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n \n\n")
    with pytest.raises(ValueError, match="empty"):
        build_local_preset(str(path), cache_dir=str(tmp_path))


def test_vocabulary_larger_than_corpus_supports(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(TEXT)
    with pytest.raises(ValueError, match="vocabulary_size"):
        build_local_preset(
            str(path),
            **dict(TINY_CONFIG, vocabulary_size=5000),
            cache_dir=str(tmp_path / "cache"),
            verbose=0,
        )
    assert os.listdir(tmp_path / "cache") == []


def test_non_writable_cache_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="cache_dir"):
        build_local_preset(
            **TINY_CONFIG, cache_dir=str(blocker / "sub"), verbose=0
        )


@pytest.mark.parametrize(
    "name,value",
    [
        ("vocabulary_size", 0),
        ("num_layers", -1),
        ("intermediate_dim", 7),
        ("learning_rate", 0.0),
        ("train_steps", -1),
    ],
)
def test_bad_sizes(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        build_local_preset(
            **dict(TINY_CONFIG, **{name: value}), cache_dir=str(tmp_path)
        )


def test_interrupted_build_leaves_no_loadable_folder(tmp_path, monkeypatch):
    def crash(folder, *args, **kwargs):
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("{}")  # half-written preset
        raise KeyboardInterrupt

    monkeypatch.setattr(local_preset, "_build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_local_preset(**TINY_CONFIG, cache_dir=str(tmp_path), verbose=0)
    assert os.listdir(tmp_path) == []


def test_unigram_cross_entropy_matches_hand_computation():
    train = np.array([0, 1, 1, 2, 2, 2])
    val = np.array([2, 1, 3])
    counts = np.array([1, 2, 3, 0]) + 1.0
    p = counts / counts.sum()
    want = -np.mean(np.log(p[[2, 1, 3]]))
    got = local_preset.unigram_cross_entropy(train, val, 4)
    assert got == pytest.approx(want, rel=1e-12)


def test_windows_are_shifted_by_one_token():
    stream = np.arange(100, dtype="int32")
    x, y = local_preset.sample_windows(stream, 10, count=5, seed=0)
    assert x.shape == y.shape == (5, 10)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(y - x, 1)
    x, y = local_preset.tile_windows(stream, 10)
    assert x.shape == (9, 10) and x[1, 0] == 10
    with pytest.raises(ValueError, match="sequence_length"):
        local_preset.sample_windows(stream, 200, count=1, seed=0)


@pytest.mark.slow
def test_default_preset_learns_the_text(tmp_path):
    folder = build_local_preset(**DEFAULT_CONFIG, verbose=0)
    meta = read_preset_metadata(folder)
    assert meta["parameters"] > 1_000_000
    assert meta["validation_loss"] < meta["unigram_loss"] - 0.5
