"""The locally built LLM pool: prompts, FLOPs count, build / cache / load
(in temporary folders only).

The cache tests replace the expensive builder (`llm_pool._build_into`) by a
fake that writes a small folder and counts its calls, so they check that
the pool goes through the presets' cache (manifest, verification, lock,
temporary folder) in milliseconds; `test_build_cache_and_load` builds a
real one-model pool.
"""

import importlib.metadata
import json
import os
import threading
import time

import keras
import numpy as np
import pytest

from keras_gr.presets import _cache
from keras_gr.presets import llm_pool


def test_pool_prompts_are_exact():
    data = llm_pool.pool_prompts(300, seed=0)
    assert data["tokens"].shape == (300, llm_pool.POOL_SEQUENCE_LENGTH)
    assert set(data["family"]) == {"addition", "multiplication", "p_hop"}
    for row in range(300):
        text = llm_pool.decode_pool_tokens(data["tokens"][row])
        prompt, answer = text.split("=")
        assert data["texts"][row] == prompt + "="
        assert llm_pool.encode_pool_text(text) == (
            data["tokens"][row][data["tokens"][row] > 0].tolist()
        )
        masked = data["tokens"][row][data["answer_mask"][row]]
        assert llm_pool.decode_pool_tokens(masked) == answer
        if "+" in prompt:
            assert int(answer) == sum(int(v) for v in prompt.split("+"))
        elif "*" in prompt:
            a, b = prompt.split("*")
            assert int(answer) == int(a) * int(b)
        else:
            p = int(data["level"][row].split("-")[1])
            i = len(prompt)  # 1-indexed current position
            for _ in range(p):  # last earlier occurrence, step right
                j = prompt[: i - 1].rfind(prompt[i - 1])
                assert j >= 0
                i = j + 2
            assert answer == prompt[i - 1]
    again = llm_pool.pool_prompts(300, seed=0)
    np.testing.assert_array_equal(again["tokens"], data["tokens"])


def test_flops_count_matches_a_loop():
    d, f, loops, layers, t_len, vocab = 32, 128, 3, 2, 16, 18
    total = 0
    for t in range(1, t_len + 1):
        for _ in range(loops * layers):
            total += 4 * d * d + 2 * d * f + 2 * d * t
        total += d * vocab
    assert (
        llm_pool.looped_lm_flops(d, loops, layers, f, t_len, vocab) == 2 * total
    )
    # More loops cost more.
    assert llm_pool.looped_lm_flops(16, 4) > llm_pool.looped_lm_flops(16, 2)


def _start_up_logs_first():
    """Runs what prints once per process outside keras_gr: the backend's
    start-up, and TensorFlow's C++ runtime logs (oneDNN, CUDA probe),
    which `import keras_hub` triggers on every backend (keras-hub imports
    TensorFlow; the pool's layers come from keras-hub)."""
    keras.ops.convert_to_numpy(keras.ops.ones(1))
    pytest.importorskip("keras_hub")
    tf = pytest.importorskip("tensorflow")
    tf.constant(1.0) + 1.0


def test_build_cache_and_load(tmp_path, capfd):
    config = dict(llm_pool.TINY_POOL_CONFIG)
    config["models"] = config["models"][:1]
    config["unseen"] = []
    _start_up_logs_first()
    capfd.readouterr()
    folder = llm_pool.build_llm_pool(config, cache_dir=str(tmp_path))
    # Quiet by default: no progress bar, log or warning on the way.
    assert capfd.readouterr() == ("", "")
    assert folder.startswith(str(tmp_path))
    assert _cache.is_complete(folder, "pool.json")
    stamp = os.path.getmtime(os.path.join(folder, "pool.json"))
    assert llm_pool.build_llm_pool(config, cache_dir=str(tmp_path)) == folder
    assert os.path.getmtime(os.path.join(folder, "pool.json")) == stamp
    pool = llm_pool.load_llm_pool(folder)
    assert pool["names"] == ["tiny-a"]
    assert pool["correctness"].shape == (config["num_prompts"], 1)
    assert pool["costs"][0] == llm_pool.looped_lm_flops(8, 1)
    # The stored correctness is the saved model's exact match.
    model = llm_pool.load_pool_model(folder, "tiny-a")
    right = llm_pool.correctness_of(model, pool["tokens"], pool["answer_mask"])
    np.testing.assert_array_equal(right, pool["correctness"][:, 0])
    assert capfd.readouterr() == ("", "")  # loading is quiet too
    with pytest.raises(ValueError, match="name"):
        llm_pool.load_pool_model(folder, "nope")


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="text"):
        llm_pool.encode_pool_text("12-3=")
    config = dict(llm_pool.TINY_POOL_CONFIG, unseen=["missing"])
    with pytest.raises(ValueError, match="unseen"):
        llm_pool.build_llm_pool(config, cache_dir=str(tmp_path))


# --- The cache (shared with the local presets) -----------------------------

SMALL = dict(llm_pool.TINY_POOL_CONFIG, unseen=[])


@pytest.fixture
def fake_build(monkeypatch):
    """Replaces the builder; returns the list of configs it got."""
    calls = []

    def fake(folder, config, verbose):
        calls.append(config)
        time.sleep(0.5)  # long enough for a second builder to collide
        os.makedirs(os.path.join(folder, "models"))
        with open(os.path.join(folder, "models", "tiny-a.keras"), "wb") as f:
            f.write(b"\x01" * 100)
        with open(os.path.join(folder, "pool.json"), "w") as f:
            json.dump({"config": config}, f)
        return {"config": config}

    monkeypatch.setattr(llm_pool, "_build_into", fake)
    return calls


def test_pool_entry_is_verified_and_reused(tmp_path, fake_build):
    folder = llm_pool.build_llm_pool(SMALL, cache_dir=str(tmp_path))
    assert len(fake_build) == 1
    assert os.path.basename(folder).startswith("pool-")
    with open(os.path.join(folder, _cache.METADATA_FILE)) as f:
        manifest = json.load(f)
    assert manifest["cache_key"]["config"] == SMALL
    assert manifest["cache_key"]["format"] == llm_pool.POOL_FORMAT
    assert manifest["cache_key"]["keras"] == importlib.metadata.version("keras")
    assert set(manifest["files"]) == {"pool.json", "models/tiny-a.keras"}
    # Reused as is.
    assert llm_pool.build_llm_pool(SMALL, cache_dir=str(tmp_path)) == folder
    assert len(fake_build) == 1
    # A truncated model file is caught by its recorded size: rebuilt.
    model = os.path.join(folder, "models", "tiny-a.keras")
    with open(model, "wb") as f:
        f.write(b"\x01" * 10)
    with pytest.raises(ValueError, match="complete pool folder"):
        llm_pool.load_llm_pool(folder)
    assert llm_pool.build_llm_pool(SMALL, cache_dir=str(tmp_path)) == folder
    assert len(fake_build) == 2 and os.path.getsize(model) == 100
    # A missing `pool.json` (an old, manifest-less folder too): rebuilt.
    os.remove(os.path.join(folder, "pool.json"))
    llm_pool.build_llm_pool(SMALL, cache_dir=str(tmp_path))
    assert len(fake_build) == 3
    # A killed build's temporary folder is removed by the next build.
    key = os.path.basename(folder)[len("pool-") :]
    (tmp_path / f".pool-{key}-killed").mkdir()
    llm_pool.build_llm_pool(
        SMALL, cache_dir=str(tmp_path), overwrite=True, verbose=0
    )
    assert len(fake_build) == 4
    assert sorted(os.listdir(tmp_path)) == [
        f".pool-{key}.lock",
        os.path.basename(folder),
    ]
    # Another configuration is another folder.
    other = llm_pool.build_llm_pool(
        dict(SMALL, seed=1), cache_dir=str(tmp_path)
    )
    assert other != folder and len(fake_build) == 5


def test_two_pool_builders_do_not_race(tmp_path, fake_build):
    """Two builders of one pool at once: one builds, the other waits on the
    lock and reuses the folder (`flock` locks of two open files conflict
    within one process too, so threads stand for processes here)."""
    folders = []

    def build():
        folders.append(llm_pool.build_llm_pool(SMALL, cache_dir=str(tmp_path)))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(folders) == 2 and folders[0] == folders[1]
    assert len(fake_build) == 1
    assert _cache.is_complete(folders[0], "pool.json")


@pytest.mark.parametrize(
    "name,value",
    [
        ("cache_dir", 3),
        ("cache_dir", ""),
        ("overwrite", "yes"),
        ("verbose", 2),
    ],
)
def test_bad_build_arguments_fail_before_any_work(
    tmp_path, fake_build, name, value
):
    kwargs = dict(cache_dir=str(tmp_path))
    kwargs[name] = value
    with pytest.raises(ValueError, match=f"`{name}`") as info:
        llm_pool.build_llm_pool(SMALL, **kwargs)
    assert f"Received: {name}=" in str(info.value)
    assert fake_build == [] and os.listdir(tmp_path) == []
