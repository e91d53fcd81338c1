"""Provenance of results and the freshness listing (benchmarks/freshness)."""

import json
import os

from benchmarks import freshness
from benchmarks import harness


def test_every_component_file_exists():
    for name in freshness.COMPONENTS:
        files = freshness.component_sources(name + "_jax")
        assert files, name
        for rel in files:
            assert os.path.exists(os.path.join(freshness.ROOT, rel)), rel
    # Longest prefix wins; the compile study is written by looped_reasoning.
    files = freshness.component_sources("looped_compile_jax")
    assert "benchmarks/looped_reasoning.py" in files
    assert freshness.component_sources("unknown_result") == []


def test_results_record_provenance_and_go_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(freshness, "ROOT", str(tmp_path))
    (tmp_path / "component.py").write_text("x = 1\n")
    harness.write_results(
        "probe_jax", {"t": [{"a": 1}]}, sources=["component.py"]
    )
    path = tmp_path / "results" / "probe_jax.json"
    record = json.loads(path.read_text())["provenance"]
    assert record["sources"] == ["component.py"]
    assert record["source_hash"] == freshness.source_hash(["component.py"])
    assert freshness.check(str(path))[0] == "fresh"
    (tmp_path / "component.py").write_text("x = 2\n")
    status, detail = freshness.check(str(path))
    assert status == "stale" and "source hash differs" in detail
    # Older signatures keep working: no `sources` argument.
    harness.write_results("probe2", {"t": [{"a": 1}]}, meta={"seeds": [0]})
    assert (tmp_path / "results" / "probe2.json").exists()


def test_smoke_runs_never_land_in_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(harness, "QUICK_DIR", str(tmp_path / "quick"))
    harness.write_results("salt_jax_quick", {"t": [{"a": 1}]})
    assert (tmp_path / "quick" / "salt_jax_quick.json").exists()
    assert not (tmp_path / "results").exists()


def test_listing_exits_zero(capsys):
    assert freshness.main(["--stale"]) == 0
    assert "freshness:" in capsys.readouterr().out


def _two_file_repo(tmp_path, monkeypatch):
    """A git repository in `tmp_path` with part_a.py and part_b.py
    committed, the results and the freshness root pointed at it, and a
    component `probe` of both files; returns a `git(*args)` runner."""
    import subprocess

    def git(*args):
        subprocess.run(
            ["git", *args], cwd=tmp_path, check=True, capture_output=True
        )

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "part_a.py").write_text("a = 1\n")
    (tmp_path / "part_b.py").write_text("b = 1\n")
    git("add", ".")
    git("commit", "-q", "-m", "c1")
    monkeypatch.setattr(harness, "RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(freshness, "ROOT", str(tmp_path))
    monkeypatch.setattr(
        freshness, "COMPONENTS", {"probe": ["part_a.py", "part_b.py"]}
    )
    return git


def test_a_narrowed_component_judges_only_its_files(tmp_path, monkeypatch):
    _two_file_repo(tmp_path, monkeypatch)
    harness.write_results("probe_jax", {"t": [{"a": 1}]})
    path = str(tmp_path / "results" / "probe_jax.json")
    assert freshness.check(path)[0] == "fresh"
    (tmp_path / "part_b.py").write_text("b = 2\n")
    assert freshness.check(path)[0] == "stale"
    # The component now depends on part_a only: part_b's change is not
    # its concern...
    monkeypatch.setattr(freshness, "COMPONENTS", {"probe": ["part_a.py"]})
    status, detail = freshness.check(path)
    assert status == "fresh" and "narrower" in detail
    # ...but a change to part_a still is.
    (tmp_path / "part_a.py").write_text("a = 2\n")
    assert freshness.check(path)[0] == "stale"
    # A run over uncommitted sources: an uncommitted file outside the
    # narrowed list (part_b) that no commit ever stored: stale...
    (tmp_path / "part_a.py").write_text("a = 1\n")
    monkeypatch.setattr(
        freshness, "COMPONENTS", {"probe": ["part_a.py", "part_b.py"]}
    )
    harness.write_results("probe_jax", {"t": [{"a": 1}]})
    monkeypatch.setattr(freshness, "COMPONENTS", {"probe": ["part_a.py"]})
    (tmp_path / "part_b.py").write_text("b = 3\n")
    assert freshness.check(path)[0] == "stale"
    # ...while an uncommitted file inside it (part_a, unchanged since the
    # run) with part_b as committed is judged fresh after part_b changes.
    (tmp_path / "part_a.py").write_text("a = 5\n")
    (tmp_path / "part_b.py").write_text("b = 1\n")
    monkeypatch.setattr(
        freshness, "COMPONENTS", {"probe": ["part_a.py", "part_b.py"]}
    )
    harness.write_results("probe_jax", {"t": [{"a": 1}]})
    monkeypatch.setattr(freshness, "COMPONENTS", {"probe": ["part_a.py"]})
    (tmp_path / "part_b.py").write_text("b = 4\n")
    assert freshness.check(path)[0] == "fresh"
    (tmp_path / "part_a.py").write_text("a = 6\n")
    assert freshness.check(path)[0] == "stale"


def test_narrowing_finds_the_commit_that_stored_the_runs_other_files(
    tmp_path, monkeypatch
):
    git = _two_file_repo(tmp_path, monkeypatch)
    # The run sees part_b uncommitted; it is committed afterwards as it
    # ran, then changed again.
    (tmp_path / "part_b.py").write_text("b = 2\n")
    harness.write_results("probe_jax", {"t": [{"a": 1}]})
    path = str(tmp_path / "results" / "probe_jax.json")
    git("commit", "-q", "-am", "c2")
    (tmp_path / "part_b.py").write_text("b = 3\n")
    git("commit", "-q", "-am", "c3")
    assert freshness.check(path)[0] == "stale"
    monkeypatch.setattr(freshness, "COMPONENTS", {"probe": ["part_a.py"]})
    assert freshness.check(path)[0] == "fresh"
    (tmp_path / "part_a.py").write_text("a = 2\n")
    assert freshness.check(path)[0] == "stale"


def test_a_docstring_or_comment_change_keeps_a_result_fresh(
    tmp_path, monkeypatch
):
    git = _two_file_repo(tmp_path, monkeypatch)
    code = 'def f(x):\n    """Old words."""\n    return x + 1\n'
    (tmp_path / "part_a.py").write_text(code)
    git("commit", "-qam", "c2")
    harness.write_results("probe_jax", {"t": [{"a": 1}]})
    path = str(tmp_path / "results" / "probe_jax.json")
    # New docstring and a comment: the same code.
    (tmp_path / "part_a.py").write_text(
        'def f(x):\n    """New words."""\n    # why\n    return x + 1\n'
    )
    status, detail = freshness.check(path)
    assert status == "fresh" and "docstrings" in detail, detail
    # A string that is not a docstring is code.
    (tmp_path / "part_a.py").write_text(
        'def f(x):\n    y = "New words."\n    return x + 1\n'
    )
    assert freshness.check(path)[0] == "stale"
    # So is any change to what runs.
    (tmp_path / "part_a.py").write_text(
        'def f(x):\n    """Old words."""\n    return x + 2\n'
    )
    assert freshness.check(path)[0] == "stale"
    # A file that is not Python is compared byte for byte.
    monkeypatch.setattr(
        freshness, "COMPONENTS", {"probe": ["part_a.py", "data.txt"]}
    )
    (tmp_path / "part_a.py").write_text(code)
    (tmp_path / "data.txt").write_text("1\n")
    git("add", ".")
    git("commit", "-qm", "c3")
    harness.write_results("probe_jax", {"t": [{"a": 1}]})
    (tmp_path / "data.txt").write_text("1 \n")
    assert freshness.check(path)[0] == "stale"


def test_no_provenance_results_ignore_docstring_and_comment_changes(
    tmp_path, monkeypatch
):
    """A result without provenance (judged from the commit that last
    changed it) stays fresh when its component's docstrings or comments
    change, and goes stale when its code does."""
    import json

    git = _two_file_repo(tmp_path, monkeypatch)
    code = 'def f(x):\n    """Old words."""\n    return x + 1\n'
    (tmp_path / "part_a.py").write_text(code)
    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "probe_runs_jax.json"
    path.write_text(json.dumps({"run": [1.0]}))
    git("add", ".")
    git("commit", "-qm", "c2")
    status, detail = freshness.check(str(path))
    assert status == "fresh" and "unchanged" in detail, detail
    (tmp_path / "part_a.py").write_text(
        'def f(x):\n    """New words."""\n    # why\n    return x + 1\n'
    )
    status, detail = freshness.check(str(path))
    assert status == "fresh" and "docstrings" in detail, detail
    (tmp_path / "part_a.py").write_text(
        'def f(x):\n    """New words."""\n    return x + 2\n'
    )
    status, detail = freshness.check(str(path))
    assert status == "stale" and "part_a.py" in detail, detail
