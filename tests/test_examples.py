"""Every example script has the shared command line and leaves the
repository clean.

- Default run (fast): every example's `--help` (one subprocess runs them
  all, so Keras and keras-hub are imported once) names `--quick` and
  `--out`, exits 0 and writes nothing; every docstring states its measured
  run time.
- `-m slow` (CI runs these on JAX in their own step, see .ci/run): every
  example's `--quick` run, in a subprocess with `--out` in a temporary
  folder, exits 0, writes only there (`git status --porcelain` is the same
  before and after) and prints no warning located in keras_gr or the
  examples. The status check assumes nothing else writes to the working
  tree during the run (true in CI's clean clone, not in a tree shared with
  other work in progress).
"""

import os
import re
import subprocess
import sys

import keras
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = os.path.join(REPO_ROOT, "examples")


def _examples():
    return sorted(
        name
        for name in os.listdir(EXAMPLES_DIR)
        if name.endswith(".py") and not name.startswith("_")
    )


def _source(name):
    with open(os.path.join(EXAMPLES_DIR, name), encoding="utf-8") as f:
        return f.read()


def _adopted(name):
    """Whether `name` has the shared command line yet (examples/_example.py
    or its own `--quick`); one that has not is skipped, by name."""
    return "--quick" in _source(name) or "example_arguments" in _source(name)


def _params():
    params = []
    for name in _examples():
        marks = ()
        if not _adopted(name):
            marks = pytest.mark.skip(
                reason=f"{name} has no --quick / --out command line yet"
            )
        params.append(pytest.param(name, marks=marks, id=name[:-3]))
    return params


_RUN_HELP = """
import contextlib, io, os, runpy, sys
sys.path.insert(0, {examples!r})
for name in {names!r}:
    sys.argv = [os.path.join({examples!r}, name), "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
        code = "no exit"
    except SystemExit as exit:
        code = exit.code
    print("=== " + name + " exit " + str(code))
    print(out.getvalue())
"""


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="backend-independent (argument parsing): once, in the JAX pass",
)
def test_every_example_answers_help_without_running(tmp_path):
    names = [name for name in _examples() if _adopted(name)]
    assert len(names) >= 12, names
    home = tmp_path / "home"  # the default --out would land here
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_HELP.format(examples=EXAMPLES_DIR, names=names),
        ],
        env=_env(HOME=str(home), KERAS_GR_CACHE=""),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sections = proc.stdout.split("=== ")[1:]
    assert len(sections) == len(names), proc.stdout[-4000:]
    for name, section in zip(names, sections):
        header, _, text = section.partition("\n")
        assert header == f"{name} exit 0", (header, text[-2000:])
        assert "--quick" in text and "--out" in text, (name, text)
        expected = os.path.join(".cache", "keras_gr", "examples", name[:-3])
        assert expected in text.replace("\n", "").replace(" ", ""), (
            name,
            text,
        )
    default_out = home / ".cache" / "keras_gr" / "examples"
    assert not default_out.exists(), "--help created a default --out folder"


@pytest.mark.parametrize("name", _params())
def test_example_docstring_states_its_measured_run_time(name):
    source = _source(name)
    assert "Measured wall time" in source, name
    assert "QUICK_TIME" not in source and "FULL_TIME" not in source, name


def _git_status():
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


# A warning printed by Python's `warnings` module from a file of keras_gr
# or of the examples ("path/file.py:12: SomeWarning: ...").
_OWN_WARNING = re.compile(r"(keras_gr|examples)/\S+\.py:\d+: \w*Warning")


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_quick_run_writes_only_to_out(name, tmp_path):
    before = _git_status()
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES_DIR, name), "--quick"]
        + ["--out", str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=str(tmp_path),
    )
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert f"outputs: {out}" in proc.stdout, log
    after = _git_status()
    new = sorted(set(after.splitlines()) - set(before.splitlines()))
    assert after == before, f"the repository changed: {new}"
    assert not _OWN_WARNING.search(proc.stderr), proc.stderr[-3000:]
