"""Local keras-hub presets: build, load, cache, lock, and refuse bad input.

Cache, lock and validation tests replace the expensive builder
(`local_preset._build_into`) by a fake that writes a small folder and
counts its calls, so they check the caching logic itself in milliseconds;
the tests that load or train a real preset use the `tiny_preset` fixture or
a few training steps.
"""

import importlib.metadata
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.presets import DEFAULT_CONFIG
from keras_gr.presets import SMALL_CONFIG
from keras_gr.presets import TINY_CONFIG
from keras_gr.presets import _cache
from keras_gr.presets import build_local_preset
from keras_gr.presets import default_cache_dir
from keras_gr.presets import is_complete_preset
from keras_gr.presets import local_preset
from keras_gr.presets import read_preset_metadata
from keras_gr.presets import recipe_digest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

TEXT = "\n\n".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i % 7} "
    "times, while the cat sleeps by the warm fire and dreams of fish."
    for i in range(60)
)


def _write_fake_preset(folder, args):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"fake": True, **args}, f)
    os.makedirs(os.path.join(folder, "assets"))
    with open(os.path.join(folder, "assets", "weights.bin"), "wb") as f:
        f.write(b"\x01" * 100)
    return {"config": args}


@pytest.fixture
def fake_build(monkeypatch):
    """Replaces the builder; returns the list of argument dicts it got."""
    calls = []

    def fake(folder, args, train_docs, val_docs, source, verbose):
        calls.append(dict(args))
        return _write_fake_preset(folder, args)

    monkeypatch.setattr(local_preset, "_build_into", fake)
    return calls


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def _build(text_file, cache_dir, **overrides):
    return build_local_preset(
        text_file,
        **dict(TINY_CONFIG, **overrides),
        cache_dir=str(cache_dir),
        verbose=0,
    )


# --- Real presets -----------------------------------------------------------


def test_tiny_preset_loads_and_generates(tiny_preset):
    lm = keras_hub.models.CausalLM.from_preset(tiny_preset)
    assert isinstance(lm, keras_hub.models.GemmaCausalLM)
    out = lm.generate("The for statement", max_length=12)
    assert isinstance(out, str) and out.startswith("The for statement")
    meta = read_preset_metadata(tiny_preset)
    # Even 30 steps beat the uniform distribution over the vocabulary.
    assert meta["validation_loss"] < math.log(TINY_CONFIG["vocabulary_size"])
    assert meta["parameters"] == lm.backbone.count_params()
    # The manifest lists the keras-hub files, and they are all there.
    assert {"config.json", "tokenizer.json", "task.json"} <= set(meta["files"])
    assert is_complete_preset(tiny_preset)


def test_user_text_file_and_a_quiet_build(text_file, tmp_path, capfd):
    """A build from the user's text file, quiet by default (a library
    prints nothing on its ordinary path: no `fit` progress bar, summary
    line, log or warning on stdout / stderr while it trains, evaluates and
    saves a real preset)."""
    # What prints once per process outside keras_gr first: the backend's
    # start-up and TensorFlow's C++ runtime logs (keras-hub imports it).
    keras.ops.convert_to_numpy(keras.ops.ones(1))
    tf = pytest.importorskip("tensorflow")
    tf.constant(1.0) + 1.0
    capfd.readouterr()
    folder = build_local_preset(
        text_file,
        **dict(TINY_CONFIG, vocabulary_size=52, train_steps=2),
        cache_dir=str(tmp_path / "cache"),
    )
    assert capfd.readouterr() == ("", "")
    assert is_complete_preset(folder)
    lm = keras_hub.models.CausalLM.from_preset(folder)
    assert lm.backbone.vocabulary_size == 52
    assert read_preset_metadata(folder)["corpus"] == text_file


# --- The cache --------------------------------------------------------------


def test_cached_folder_is_returned_without_rebuilding(tiny_preset, fake_build):
    cache_dir = os.path.dirname(tiny_preset)
    mtime = os.path.getmtime(tiny_preset)
    again = build_local_preset(**TINY_CONFIG, cache_dir=cache_dir, verbose=0)
    assert again == tiny_preset
    assert fake_build == []  # the builder was not called
    assert os.path.getmtime(tiny_preset) == mtime
    # A different configuration is a different folder, built once.
    other = build_local_preset(
        **dict(TINY_CONFIG, seed=1), cache_dir=cache_dir, verbose=0
    )
    assert other != tiny_preset and len(fake_build) == 1


def test_numpy_integers_are_accepted_and_normalised(text_file, tmp_path):
    calls = []

    def fake(folder, args, *rest):
        calls.append(args)
        return _write_fake_preset(folder, args)

    local_preset_build = local_preset._build_into
    local_preset._build_into = fake
    try:
        a = _build(text_file, tmp_path, train_steps=np.int64(30), seed=0)
        b = _build(text_file, tmp_path, train_steps=30, seed=np.int32(0))
    finally:
        local_preset._build_into = local_preset_build
    assert a == b and len(calls) == 1
    assert type(calls[0]["train_steps"]) is int
    assert read_preset_metadata(a)["config"]["train_steps"] == 30


def test_incomplete_cached_folder_is_rebuilt(text_file, tmp_path, fake_build):
    folder = _build(text_file, tmp_path)
    assert is_complete_preset(folder) and len(fake_build) == 1
    os.remove(os.path.join(folder, "config.json"))
    assert not is_complete_preset(folder)
    assert _build(text_file, tmp_path) == folder
    assert len(fake_build) == 2 and is_complete_preset(folder)
    # A truncated file is caught by its recorded size.
    with open(os.path.join(folder, "assets", "weights.bin"), "wb") as f:
        f.write(b"\x01" * 10)
    assert not is_complete_preset(folder)
    _build(text_file, tmp_path)
    assert len(fake_build) == 3 and is_complete_preset(folder)
    # A folder without (or with an unreadable) manifest is not complete.
    with open(os.path.join(folder, local_preset.METADATA_FILE), "w") as f:
        f.write("{not json")
    assert not is_complete_preset(folder)


def test_overwrite_rebuilds(text_file, tmp_path, fake_build):
    folder = _build(text_file, tmp_path)
    again = build_local_preset(
        text_file,
        **TINY_CONFIG,
        cache_dir=str(tmp_path),
        overwrite=True,
        verbose=0,
    )
    assert again == folder and len(fake_build) == 2


def test_cache_key_covers_recipe_and_library_versions(
    text_file, tmp_path, fake_build, monkeypatch
):
    base = _build(text_file, tmp_path)
    key = read_preset_metadata(base)["cache_key"]
    assert key["keras"] == importlib.metadata.version("keras")
    assert key["keras_hub"] == importlib.metadata.version("keras-hub")
    assert key["recipe"] == recipe_digest()
    assert key["train_steps"] == TINY_CONFIG["train_steps"]

    folders = {base}
    real_version = local_preset._package_version
    for package in ("keras", "keras-hub", "sentencepiece"):
        with monkeypatch.context() as m:
            m.setattr(
                local_preset,
                "_package_version",
                lambda name, p=package: (
                    "99.0" if name == p else real_version(name)
                ),
            )
            folders.add(_build(text_file, tmp_path))
    with monkeypatch.context() as m:
        m.setattr(local_preset, "RECIPE_VERSION", 999)
        folders.add(_build(text_file, tmp_path))
    assert len(folders) == 5 and len(fake_build) == 5
    # Back to the real versions and recipe: the first folder, no rebuild.
    assert _build(text_file, tmp_path) == base and len(fake_build) == 5


def test_recipe_digest_follows_the_training_code(monkeypatch):
    digest = recipe_digest()
    assert digest == recipe_digest() and len(digest) == 64
    monkeypatch.setattr(local_preset, "RECIPE_VERSION", 999)
    assert recipe_digest() != digest
    monkeypatch.undo()

    def _build_into(folder, args, *rest):  # same name, other source
        return {"config": args}

    recipe = list(local_preset._RECIPE_FUNCTIONS)
    recipe[-1] = _build_into
    monkeypatch.setattr(local_preset, "_RECIPE_FUNCTIONS", tuple(recipe))
    assert recipe_digest() != digest


def test_stale_temporary_folders_are_removed(text_file, tmp_path, fake_build):
    folder = _build(text_file, tmp_path)
    key = os.path.basename(folder)[len("gemma-") :]
    mine = tmp_path / f".gemma-{key}-killed"
    other = tmp_path / ".gemma-0123456789abcdef-killed"
    busy = tmp_path / ".gemma-fedcba9876543210-running"
    for path in (mine, other, busy):
        path.mkdir()
        (path / "config.json").write_text("{}")
    # A build of `fedcba...` in progress: its lock is held.
    lock = _cache.FileLock(
        _cache.lock_path(str(tmp_path), "gemma", "fedcba9876543210")
    )
    assert lock.acquire(blocking=False)
    try:
        os.remove(os.path.join(folder, "config.json"))
        _build(text_file, tmp_path)
    finally:
        lock.release()
    assert not mine.exists() and not other.exists()
    assert busy.exists()
    assert is_complete_preset(folder)


def test_interrupted_build_leaves_no_loadable_folder(tmp_path, monkeypatch):
    def crash(folder, *args, **kwargs):
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("{}")  # half-written preset
        raise KeyboardInterrupt

    monkeypatch.setattr(local_preset, "_build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_local_preset(**TINY_CONFIG, cache_dir=str(tmp_path), verbose=0)
    # Only the (empty, reusable) lock file is left.
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].endswith(".lock"), left


_RACER = """
import importlib.util, os, sys, time
# Load _cache.py alone (it imports only the standard library): the lock is
# under test, not the (heavier) imports of keras_gr.presets.
spec = importlib.util.spec_from_file_location(
    "cache_under_test",
    os.path.join({root!r}, "keras_gr", "presets", "_cache.py"),
)
_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_cache)

me, other, cache, log = sys.argv[1:]

acquire = _cache.FileLock.acquire

def announced_acquire(self, blocking=True):
    open(os.path.join(cache, me + ".at_lock"), "w").close()
    return acquire(self, blocking)

def slow_build(folder):
    with open(log, "a") as f:
        f.write(me + "\\n")
    # Hold the lock until the other process is blocked on it.
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(cache, other + ".at_lock")):
        if time.time() > deadline:
            raise RuntimeError("the other process never reached the lock")
        time.sleep(0.05)
    time.sleep(1.0)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write("{{}}")
    return {{}}

_cache.FileLock.acquire = announced_acquire
folder = _cache.cached_build(
    cache, "gemma", {{"a": 1}}, slow_build, required="config.json",
    overwrite=False, verbose=1,
)
print("FOLDER=" + folder)
"""


def test_two_processes_build_once(tmp_path):
    """The cache's lock across processes (both builders use it)."""
    script = tmp_path / "racer.py"
    script.write_text(textwrap.dedent(_RACER.format(root=REPO_ROOT)))
    cache = tmp_path / "cache"
    cache.mkdir()
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), me, other, str(cache), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = {
        line for out in outs for line in out.splitlines() if "FOLDER=" in line
    }
    assert len(folders) == 1, outs
    assert len(log.read_text().split()) == 1  # one build, one reuse
    assert sum("waiting for another process" in out for out in outs) == 1
    assert _cache.is_complete(folders.pop()[len("FOLDER=") :], "config.json")


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_GR_CACHE", str(tmp_path))
    assert default_cache_dir() == os.path.join(str(tmp_path), "presets")
    monkeypatch.delenv("KERAS_GR_CACHE")
    assert default_cache_dir() == os.path.join(
        os.path.expanduser("~"), ".cache", "keras_gr", "presets"
    )


def test_tests_do_not_use_the_home_cache():
    home = os.path.join(os.path.expanduser("~"), ".cache", "keras_gr")
    assert not default_cache_dir().startswith(home)


# --- Bad input --------------------------------------------------------------


def test_missing_text_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_file"):
        build_local_preset(str(tmp_path / "nope.txt"), cache_dir=str(tmp_path))


def test_latin1_text_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Un caf\xe9 na\xeff.\n\nDeux.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"`text_file` must be a UTF-8"):
        build_local_preset(str(path), cache_dir=str(tmp_path))


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n \n\n")
    with pytest.raises(ValueError, match="empty"):
        build_local_preset(str(path), cache_dir=str(tmp_path))


def test_vocabulary_larger_than_corpus_supports(text_file, tmp_path):
    with pytest.raises(ValueError, match="vocabulary_size"):
        _build(text_file, tmp_path / "cache", vocabulary_size=5000)
    assert [n for n in os.listdir(tmp_path / "cache") if "lock" not in n] == []


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
        ("vocabulary_size", 7),
        ("vocabulary_size", True),
        ("num_layers", -1),
        ("num_heads", 2.0),
        ("intermediate_dim", 7),
        ("sequence_length", "32"),
        ("batch_size", None),
        ("learning_rate", 0.0),
        ("learning_rate", "abc"),
        ("learning_rate", None),
        ("learning_rate", float("inf")),
        ("learning_rate", float("nan")),
        ("train_steps", -1),
        ("train_steps", 2.5),
        ("seed", "x"),
        ("seed", -1),
        ("verbose", 3),
        ("overwrite", "yes"),
        ("cache_dir", 3),
        ("cache_dir", ""),
        ("text_file", 3),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, monkeypatch, name, value):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(local_preset, "_load_corpus", no_work)
    monkeypatch.setattr(local_preset, "_build_into", no_work)
    kwargs = dict(TINY_CONFIG, cache_dir=str(tmp_path), verbose=0)
    kwargs[name] = value
    with pytest.raises(ValueError, match=f"`{name}`") as info:
        build_local_preset(**kwargs)
    assert f"Received: {name}=" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_read_preset_metadata_of_a_non_preset(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder"):
        read_preset_metadata(tmp_path)


# --- Pure helpers -----------------------------------------------------------


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


def test_configs_are_valid_and_ordered_by_size():
    for config in (TINY_CONFIG, SMALL_CONFIG, DEFAULT_CONFIG):
        assert local_preset._validate(dict(config, seed=0))
    size = [
        c["num_layers"] * c["hidden_dim"] * c["intermediate_dim"]
        for c in (TINY_CONFIG, SMALL_CONFIG, DEFAULT_CONFIG)
    ]
    assert size == sorted(size) and len(set(size)) == 3


@pytest.mark.slow
def test_default_preset_learns_the_text():
    folder = build_local_preset(**DEFAULT_CONFIG, verbose=0)
    meta = read_preset_metadata(folder)
    assert meta["parameters"] > 1_000_000
    assert meta["validation_loss"] < meta["unigram_loss"] - 0.5


@pytest.mark.slow
def test_small_preset_learns_the_text():
    folder = build_local_preset(**SMALL_CONFIG, verbose=0)
    meta = read_preset_metadata(folder)
    assert meta["validation_loss"] < meta["unigram_loss"] - 0.3
