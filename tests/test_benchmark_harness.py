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
