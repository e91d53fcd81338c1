"""Builds the keras_gr API reference from the docstrings, with pdoc.

    KERAS_BACKEND=jax python docs/build.py [--output build/docs]

Every public module of `keras_gr` is rendered (Google-style docstrings,
LaTeX maths, the repository's ARCHITECTURE.md on the front page). Any
warning pdoc raises while reading or rendering the package (a module that
fails to import, an unparsable annotation or docstring, a broken include)
fails the build: warnings are errors. Warnings that third-party packages
emit while being imported are not pdoc's and do not count.

`python docs/build.py --serve` serves the pages on localhost instead.
"""

import argparse
import os
import pathlib
import pkgutil
import shutil
import sys
import time
import warnings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The package and its submodules, less any module with a `_` name part.
SPECS = ("keras_gr", r"!keras_gr\.(.*\.)?_")


def public_modules():
    """`keras_gr` and every submodule whose dotted name has no `_` part."""
    import keras_gr

    names = ["keras_gr"]
    for info in pkgutil.walk_packages(keras_gr.__path__, "keras_gr."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output", default=os.path.join(REPO_ROOT, "build", "docs")
    )
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, REPO_ROOT)
    start = time.perf_counter()

    import importlib

    import pdoc
    import pdoc.render

    modules = public_modules()
    # Third-party import-time warnings happen here, outside the check.
    for name in modules:
        importlib.import_module(name)
    pdoc.render.configure(
        docformat="google",
        math=True,
        footer_text="keras_gr: Keras 3 components from Google Research papers",
    )
    if args.serve:
        import pdoc.web

        pdoc.web.open_browser = lambda url: print(url)
        httpd = pdoc.web.DocServer(("localhost", 8080), list(SPECS))
        print("serving on http://localhost:8080 (Ctrl-C to stop)")
        httpd.serve_forever()
        return
    # Pages of a previous build (e.g. of a module since removed) must not
    # survive; only a folder that holds a pdoc build is emptied.
    if os.path.isfile(os.path.join(args.output, "search.js")):
        shutil.rmtree(args.output)
    pdoc_dir = os.path.dirname(pdoc.__file__)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*SPECS, output_directory=pathlib.Path(args.output))
    errors = [
        w for w in caught if os.path.abspath(w.filename).startswith(pdoc_dir)
    ]
    for w in errors:
        print(f"docs error: {w.message}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    if errors:
        print(
            f"docs build FAILED: {len(errors)} warning(s) from pdoc "
            "(warnings are errors)",
            file=sys.stderr,
        )
        sys.exit(1)
    pages = sum(
        name.endswith(".html")
        for _, _, files in os.walk(args.output)
        for name in files
    )
    print(
        f"docs built: {len(modules)} modules, {pages} pages in "
        f"{os.path.relpath(args.output, REPO_ROOT)} ({elapsed:.1f}s)"
    )


if __name__ == "__main__":
    main()
