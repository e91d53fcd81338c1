"""The benchmark harness's markdown writer (`benchmarks/harness.py`)."""

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
