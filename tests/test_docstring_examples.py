"""Runs every `>>> ` example in the docstrings of keras_gr, as doctests.

Every module of the package is searched (private ones too: their examples
document functions the public namespaces re-export); each docstring with
examples is one test, named after the object, run under the current
backend with `ELLIPSIS` and `NORMALIZE_WHITESPACE`, in the module's own
namespace, after `keras.utils.set_random_seed(0)`. An example that prints a
wrong value or raises fails its test with doctest's report.

An example should run in seconds. Those in `SLOW_EXAMPLES` do not yet
(wall time of the JAX pass on the shared, heavily loaded 2-core machine in
brackets); they are marked `slow`, so they run with `-m slow` but not in
the default suite. Shorten the example, then delete its line here.
"""

import doctest
import importlib
import pkgutil

import keras
import pytest

import keras_gr

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

SLOW_EXAMPLES = {
    "keras_gr.presets.llm_pool.build_llm_pool",  # (144 s)
    "keras_gr.data.corpora.multi_source_corpus",  # (91 s)
    "keras_gr.hub.prefix_lm.PrefixCausalLM",  # (38 s)
    "keras_gr.models.softsrv.softsrv.HardPromptGenerator",  # (33 s)
    "keras_gr.models.softsrv.softsrv.SoftSRV",  # (30 s)
}


def _modules():
    names = ["keras_gr"] + [
        info.name
        for info in pkgutil.walk_packages(keras_gr.__path__, "keras_gr.")
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for module in _modules():
        for test in finder.find(module, module.__name__):
            if test.examples:
                tests.append(test)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


def test_the_package_has_docstring_examples():
    names = {t.name for t in DOCTESTS}
    assert "keras_gr.presets.local_preset.build_local_preset" in names
    assert len(DOCTESTS) >= 10


# Examples that fail today, with why: xfail (not strict, so a fix shows up
# as XPASS) until the owner of the documented code fixes it.
KNOWN_FAILURES: dict[str, str] = {}


def _param(test):
    marks = [pytest.mark.slow] if test.name in SLOW_EXAMPLES else []
    if test.name in KNOWN_FAILURES:
        marks.append(
            pytest.mark.xfail(reason=KNOWN_FAILURES[test.name], strict=False)
        )
    return pytest.param(test, id=test.name, marks=marks)


def test_slow_and_failure_lists_name_existing_examples():
    names = {t.name for t in DOCTESTS}
    assert SLOW_EXAMPLES <= names
    assert set(KNOWN_FAILURES) <= names


@pytest.mark.parametrize("test", [_param(t) for t in DOCTESTS])
def test_docstring_example(test):
    keras.utils.set_random_seed(0)
    runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
    report = []
    test.globs = dict(test.globs)  # never leak names between examples
    result = runner.run(test, out=report.append)
    if result.failed:
        pytest.fail("".join(report), pytrace=False)
