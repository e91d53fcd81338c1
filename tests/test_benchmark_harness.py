"""The benchmark harness's markdown writer (`benchmarks/harness.py`)."""

import pytest

from benchmarks import harness


def test_table_has_every_column_any_row_has():
    rows = [
        {"model": "baseline", "accuracy": 0.5},
        {"model": "regularised", "accuracy": 0.75, "cosine": 0.9},
        {"model": "looped", "step ms": 3.0},
    ]
    lines = harness.markdown_table(rows).splitlines()
    assert lines[0] == "| model | accuracy | cosine | step ms |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| baseline | 0.5 |  |  |"
    assert lines[3] == "| regularised | 0.75 | 0.9 |  |"
    assert lines[4] == "| looped |  |  | 3 |"


def test_explicit_columns_and_empty_table():
    rows = [{"a": 1, "b": 2}, {"a": 3, "c": 4}]
    text = harness.markdown_table(rows, columns=["c", "a"])
    assert text.splitlines()[0] == "| c | a |"
    assert text.splitlines()[2:] == ["|  | 1 |", "| 4 | 3 |"]
    assert harness.markdown_table([]) == "(no rows)\n"


def test_write_results_keeps_every_column(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS_DIR", str(tmp_path))
    # The header's versions (importing keras_hub takes seconds) are not
    # what this test is about.
    monkeypatch.setattr(harness, "environment", lambda: {"backend": "b"})
    rows = [{"model": "a"}, {"model": "b", "cosine": 0.5}]
    text = harness.write_results("probe", {"table": rows}, notes="Verdict.")
    assert "| model | cosine |" in text
    assert "| b | 0.5 |" in text
    assert (tmp_path / "probe.md").read_text() == text
    assert (tmp_path / "probe.json").exists()


def test_seeds_mean_a_list_everywhere():
    import argparse

    import pytest

    parser = argparse.ArgumentParser()
    harness.add_seeds_argument(parser, default=(0, 1))
    assert harness.seeds_of(parser.parse_args([])) == [0, 1]
    args = parser.parse_args(["--seeds", "3", "4", "5"])
    assert harness.seeds_of(args) == [3, 4, 5]
    args = parser.parse_args(["--seeds", "0,1,2"])
    assert harness.seeds_of(args) == [0, 1, 2]
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "x"])


def test_warmup_cosine_lasts_exactly_steps():
    import numpy as np

    sched = harness.warmup_cosine(1.0, 100, warmup_fraction=0.05, floor=0.01)
    lr = [float(sched(t)) for t in (0, 5, 100, 200)]
    np.testing.assert_allclose(lr, [0.0, 1.0, 0.01, 0.01], atol=1e-6)
    # Half-way through the decay: floor + (1 - floor) / 2.
    np.testing.assert_allclose(float(sched(52.5)), 0.505, atol=1e-6)


def test_grid_edge():
    assert harness.at_grid_edge([1e-3, 1e-2, 1e-1], 1e-1)
    assert not harness.at_grid_edge([1e-3, 1e-2, 1e-1], 1e-2)
    assert harness.at_grid_edge([1e-2], 1e-2)


def test_step_summary_mean_is_wall_over_steps():
    import numpy as np

    # Nine cheap steps and one root step: the median hides the root step,
    # the mean (what a user pays) and the worst show it.
    steps = [0.01] * 9 + [0.11]
    out = harness.step_summary(steps)
    np.testing.assert_allclose(out["mean"], 0.02)
    np.testing.assert_allclose(out["median"], 0.01)
    np.testing.assert_allclose(out["worst"], 0.11)
    # With the `fit` calls' wall time, the mean is wall / steps (the
    # per-step callback misses the time between steps).
    out = harness.step_summary(steps, wall_seconds=0.5, steps=10)
    np.testing.assert_allclose(out["mean"], 0.05)


def test_time_fit_interleaved_reports_mean_median_worst():
    import keras
    import numpy as np

    entries = {}
    for name, width in (("small", 4), ("large", 64)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(width)])
        model.compile(optimizer="sgd", loss="mse")
        x = np.zeros((6, 8), "float32")
        entries[name] = (model, x, np.zeros((6, width), "float32"), 2)
    times = harness.time_fit_interleaved(entries, rounds=2, steps_per_round=3)
    assert set(times) == {"small", "large"}
    for t in times.values():
        assert set(t) == {"mean", "median", "worst", "rounds"}
        assert len(t["rounds"]) == 2
        # The mean is the rounds' total wall time over their steps.
        np.testing.assert_allclose(t["mean"], np.mean(t["rounds"]))
        assert 0 < t["median"] <= t["worst"]


def test_lr_grid_same_shape_around_each_default():
    assert harness.lr_grid(3e-3) == [1e-3, 3e-3, 1e-2]
    assert harness.lr_grid(1e-2) == [3e-3, 1e-2, 3e-2]
    assert harness.lr_grid(1e-2, points=4) == [3e-3, 1e-2, 3e-2, 1e-1]
    assert harness.lr_grid(1.0, points=5) == [0.1, 0.3, 1.0, 3.0, 10.0]
    with pytest.raises(ValueError, match="center=0.005"):
        harness.lr_grid(5e-3)


def test_extend_grid_adds_the_next_ladder_point_beyond_the_edge():
    assert harness.extend_grid([1e-3, 3e-3, 1e-2], 1e-2) == [
        1e-3,
        3e-3,
        1e-2,
        3e-2,
    ]
    assert harness.extend_grid([1e-3, 3e-3, 1e-2], 1e-3) == [
        3e-4,
        1e-3,
        3e-3,
        1e-2,
    ]
    with pytest.raises(ValueError, match="best=0.005"):
        harness.extend_grid([5e-3, 1e-2], 5e-3)


def test_steps_to_target_interpolates_between_checkpoints():
    from benchmarks.shampoo.quality import steps_to_target

    checkpoints = [10, 20, 30]
    # Crosses 3.0 between 20 (3.5) and 30 (2.5): halfway, step 25.
    assert steps_to_target(checkpoints, [4.0, 3.5, 2.5], 3.0) == 25.0
    assert steps_to_target(checkpoints, [2.0, 1.0, 0.5], 3.0) == 10.0
    assert steps_to_target(checkpoints, [4.0, 3.5, 3.2], 3.0) == float("inf")


def test_tune_then_seeds_tunes_on_one_seed_and_flags_the_edge():
    calls = []

    def run(lr, seed):
        calls.append((lr, seed))
        return {"loss": (lr - 2.0) ** 2 + seed}

    out = harness.tune_then_seeds(
        [1.0, 2.0, 3.0], run, [5, 6, 7], score=lambda r: r["loss"]
    )
    assert out["best"] == 2.0 and not out["at_edge"]
    # Tuned on the first seed; the tuning run of the best is reused.
    assert calls == [(1.0, 5), (2.0, 5), (3.0, 5), (2.0, 6), (2.0, 7)]
    assert [r["loss"] for r in out["results"]] == [5.0, 6.0, 7.0]
    assert [v for v, _ in out["tuning"]] == [1.0, 2.0, 3.0]
    # Ties go to the first value; a best at the edge is flagged; an
    # explicit tuning seed outside `seeds` is tuned on but not reported.
    calls.clear()
    out = harness.tune_then_seeds(
        [4.0, 5.0], run, [1], score=lambda r: 0.0, tune_seed=0
    )
    assert out["best"] == 4.0 and out["at_edge"]
    assert calls == [(4.0, 0), (5.0, 0), (4.0, 1)]
    assert len(out["results"]) == 1


def test_pyplot_is_file_only():
    plt = harness.pyplot()
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"
    fig, _ = plt.subplots()
    plt.close(fig)


def test_time_calls_interleaved_rotates_and_summarises():
    import numpy as np

    order = []

    def make(name):
        def call():
            order.append(name)
            return np.zeros(2)

        return call

    times = harness.time_calls_interleaved(
        {"a": make("a"), "b": make("b"), "c": make("c")}, rounds=3
    )
    # One warm-up call each, then rounds in an order rotated every round.
    assert order == list("abc" + "abc" + "bca" + "cab")
    for t in times.values():
        assert len(t["rounds"]) == 3
        np.testing.assert_allclose(t["mean"], np.mean(t["rounds"]))
        assert t["worst"] == max(t["rounds"])
    order.clear()
    harness.time_calls_interleaved({"a": make("a")}, rounds=2, warmup=0)
    assert order == ["a", "a"]
