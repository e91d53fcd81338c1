"""Every example script has the shared command line and leaves the
repository clean.

- Default run (fast): every example's `--help` (one subprocess runs them
  all, so Keras and keras-hub are imported once) names `--quick` and
  `--out`, exits 0 and writes nothing; every docstring states its measured
  run time.
- `-m slow` (CI runs these on JAX in their own step, see .ci/run): every
  example's `--quick` run, in a subprocess with `--out` in a temporary
  folder, exits 0, writes only there (`git status --porcelain` is the same
  before and after) and emits no warning of keras_gr's own. The status
  check assumes nothing else writes to the working tree during the run
  (true in CI's clean clone, not in a tree shared with other work in
  progress).

Which warnings count as keras_gr's (`_RUN_QUICK` records them while the
example runs; every Python warning is shown, once per place, not only
the categories Python shows by default):

- a Python warning whose reported location (the file and line it names)
  is in `keras_gr/` or `examples/`: ours, whatever its category;
- any other Python warning, except a `DeprecationWarning` /
  `PendingDeprecationWarning` (a deprecation is addressed to the code at
  its reported location, here a third-party one), and any `logging`
  record of level WARNING or above (Keras, absl, grain): ours when it is
  raised while a frame of `keras_gr/` or `examples/` is on the stack and
  no module is being imported between that frame and the warning. Such a
  warning is a library's reaction to the arguments keras_gr passed it
  (Keras's "`shuffle=True` was passed, but will be ignored", "Skipping
  variable loading for optimizer", "`compile()` was not called as part
  of model loading");
- not counted: a warning raised while a third-party module is imported
  (its own), one raised in a thread where no keras_gr frame is on the
  stack (grain's reader threads), and native (C++) logs of TensorFlow and
  XLA, which are not Python warnings (TensorFlow is imported by keras-hub
  itself whenever it is installed; `TF_CPP_MIN_LOG_LEVEL=3` keeps those
  logs out of the captured output);
- `_UPSTREAM`: warnings of keras_gr's stack that come from a dependency's
  own code path, whatever arguments keras_gr passes, each with its
  reason. They are printed, not failed.
"""

import json
import os
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


# Runs one example in this process with the warning recorder of the module
# docstring installed, then writes what it recorded as JSON to `report`.
_RUN_QUICK = """
import json, logging, os, runpy, sys, threading, traceback, warnings

own, script, report = {own!r}, {script!r}, {report!r}
deprecations = (DeprecationWarning, PendingDeprecationWarning)
recorded = []


def own_caller():
    # Innermost first: an own frame ("file:line") before any import
    # machinery, or None.
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(own):
            return f"{{frame.filename}}:{{frame.lineno}}"
        if "importlib._bootstrap" in frame.filename:
            return None
    return None


def record(kind, category, message, location, caller):
    recorded.append(
        dict(kind=kind, category=category, message=str(message)[:500],
             location=location, caller=caller,
             thread=threading.current_thread().name)
    )


show = warnings.showwarning


def showwarning(message, category, filename, lineno, *args, **kwargs):
    where = f"{{filename}}:{{lineno}}"
    caller = where if str(filename).startswith(own) else None
    if caller is None and not issubclass(category, deprecations):
        caller = own_caller()
    if caller is not None:
        record("warning", category.__name__, message, where, caller)
    return show(message, category, filename, lineno, *args, **kwargs)


class Recorder(logging.Handler):
    def emit(self, rec):
        # Alone on the root logger, it stands in for Python's last-resort
        # handler, which prints what no handler takes.
        if logging.getLogger().handlers == [self]:
            logging.lastResort.handle(rec)
        caller = own_caller()
        if caller is not None:
            where = f"{{rec.pathname}}:{{rec.lineno}}"
            record("logging", rec.levelname, rec.getMessage(), where, caller)


warnings.simplefilter("default")
warnings.showwarning = showwarning
logging.getLogger().addHandler(Recorder(logging.WARNING))
sys.path.insert(0, os.path.dirname(script))
sys.argv = [script] + sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(report, "w") as f:
        json.dump(recorded, f)
"""

# Folders whose code is keras_gr's own, for the recorder.
_OWN = tuple(
    os.path.join(REPO_ROOT, folder) + os.sep
    for folder in ("keras_gr", "examples")
)

# Warnings of keras_gr's stack that a dependency raises on its own path
# whatever keras_gr passes: (where it is raised, what it says, why it is not
# counted). Checked with keras-hub 0.32, grain 0.2.18, Keras 3.15.
_UPSTREAM = (
    (
        "grain/_src/python/options.py",
        "prefetch_buffer_size=8 is smaller than num_threads=16",
        "keras-hub's `PipelineModel` (fit / evaluate / predict on raw data) "
        "builds `grain.ReadOptions(prefetch_buffer_size=8)` and leaves "
        "grain's default of 16 threads",
    ),
    (
        "keras_hub/src/tokenizers/sentence_piece_tokenizer.py",
        "unclosed file",
        "keras-hub's SentencePieceTokenizer reads its proto file with "
        "`open(proto, 'rb').read()` and never closes it",
    ),
)


def _own_warnings(recorded):
    """The recorded warnings not explained by `_UPSTREAM`."""
    return [
        entry
        for entry in recorded
        if not any(
            where in entry["location"] and what in entry["message"]
            for where, what, _ in _UPSTREAM
        )
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_quick_run_writes_only_to_out(name, tmp_path):
    before = _git_status()
    out = tmp_path / "out"
    report = tmp_path / "warnings.json"
    script = os.path.join(EXAMPLES_DIR, name)
    code = _RUN_QUICK.format(own=_OWN, script=script, report=str(report))
    proc = subprocess.run(
        [sys.executable, "-c", code, "--quick", "--out", str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=str(tmp_path),
    )
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert f"outputs: {out}" in proc.stdout, log
    with open(report, encoding="utf-8") as f:
        recorded = json.load(f)
    assert not _own_warnings(recorded), json.dumps(recorded, indent=1)
    after = _git_status()
    new = sorted(set(after.splitlines()) - set(before.splitlines()))
    assert after == before, f"the repository changed: {new}"


_THIRD_PARTY = """
import logging
import warnings

warnings.warn("at import", UserWarning)


def react(value):
    warnings.warn(f"reacts to {value}", UserWarning)
    warnings.warn("deprecated inside", DeprecationWarning)
    logging.getLogger("thirdparty").warning("logged %s", value)


def deprecated_for_caller():
    warnings.warn("caller uses a deprecated call", DeprecationWarning, 2)
"""

_SCRIPT = """
import threading
import warnings

import thirdparty

thirdparty.react("ours")
thirdparty.deprecated_for_caller()
warnings.warn("in the script", RuntimeWarning)
worker = threading.Thread(target=thirdparty.react, args=("thread",))
worker.start()
worker.join()
"""


def test_warning_recorder_counts_what_keras_gr_causes(tmp_path):
    """The recorder of `_RUN_QUICK` on a toy: a script (own code) calling a
    third-party module (its own folder)."""
    own = tmp_path / "own"
    lib = tmp_path / "lib"
    own.mkdir()
    lib.mkdir()
    (lib / "thirdparty.py").write_text(_THIRD_PARTY)
    script = own / "script.py"
    script.write_text(_SCRIPT)
    report = tmp_path / "report.json"
    code = _RUN_QUICK.format(
        own=(str(own) + os.sep,), script=str(script), report=str(report)
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(lib)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    with open(report, encoding="utf-8") as f:
        got = sorted((e["kind"], e["message"]) for e in json.load(f))
    assert got == [
        ("logging", "logged ours"),
        ("warning", "caller uses a deprecated call"),
        ("warning", "in the script"),
        ("warning", "reacts to ours"),
    ]
    # Everything is still printed as Python would.
    for printed in ("at import", "deprecated inside", "logged thread"):
        assert printed in proc.stderr, proc.stderr
