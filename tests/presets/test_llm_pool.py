"""The locally built LLM pool: prompts, FLOPs count, build / cache / load
(in temporary folders only)."""

import os

import numpy as np
import pytest

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


def test_build_cache_and_load(tmp_path):
    config = dict(llm_pool.TINY_POOL_CONFIG)
    config["models"] = config["models"][:1]
    config["unseen"] = []
    folder = llm_pool.build_llm_pool(config, cache_dir=str(tmp_path), verbose=0)
    assert folder.startswith(str(tmp_path))
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
    with pytest.raises(ValueError, match="name"):
        llm_pool.load_pool_model(folder, "nope")


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="text"):
        llm_pool.encode_pool_text("12-3=")
    config = dict(llm_pool.TINY_POOL_CONFIG, unseen=["missing"])
    with pytest.raises(ValueError, match="unseen"):
        llm_pool.build_llm_pool(config, cache_dir=str(tmp_path))
