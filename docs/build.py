"""Builds the keras_gr API reference from the docstrings, with pdoc.

    KERAS_BACKEND=jax python docs/build.py [--output build/docs]

Every public module of `keras_gr` is rendered (Google-style docstrings,
LaTeX maths, the repository's ARCHITECTURE.md on the front page), with the
page template of docs/templates (what it changes and why:
docs/reference.py). Any warning pdoc raises while reading or rendering the
package (a module that fails to import, an unparsable annotation or
docstring, a broken include) fails the build: warnings are errors.
Warnings that third-party packages emit while being imported are not
pdoc's and do not count.

The built site is then checked, offline, and the build fails on any
problem: every internal link and in-page anchor resolves and no page loads
anything from the network (docs/links.py); every public class shows its
constructor signature; every exported constant has a docstring. Maths
(`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]` in a docstring) is
typeset into SVG while the pages are built (MathJax, from the `quickjax`
package of the `docs` extra), so it shows with no script and no network;
a formula MathJax cannot typeset fails the build.

`python docs/build.py --serve` serves the pages on localhost instead.
"""

import argparse
import importlib
import os
import pathlib
import pkgutil
import re
import shutil
import sys
import time
import warnings

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(DOCS_DIR)
TEMPLATES = os.path.join(DOCS_DIR, "templates")
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


def import_public_modules():
    """Imports every public module and resolves every name of its
    `__all__`, so that names a namespace imports lazily (PEP 562
    `__getattr__`) are in the module's namespace when pdoc reads it."""
    modules = public_modules()
    for name in modules:
        module = importlib.import_module(name)
        for exported in getattr(module, "__all__", ()):
            getattr(module, exported)
    return modules


def configure():
    """pdoc's settings and keras_gr's page template (docs/templates)."""
    import pdoc.render
    import reference

    pdoc.render.configure(
        docformat="google",
        math=True,
        footer_text="keras_gr: Keras 3 components from Google Research papers",
        template_directory=pathlib.Path(TEMPLATES),
    )
    reference.install(pdoc.render.env)


def completeness_problems(output):
    """One line per public class of the built pages with no constructor
    entry, and per exported constant with no docstring."""
    import pdoc.doc

    problems = []
    for name in public_modules():
        module = pdoc.doc.Module.from_name(name)
        exported = getattr(module.obj, "__all__", None)
        page = os.path.join(output, *name.split(".")) + ".html"
        if exported is None or not os.path.isfile(page):
            continue
        with open(page, encoding="utf-8") as f:
            text = f.read()
        for member in module.members.values():
            if member.name not in exported:
                continue
            if isinstance(member, pdoc.doc.Class):
                anchor = f'id="{member.qualname}.__init__"'
                if anchor not in text:
                    problems.append(
                        f"{name}.{member.qualname}: no constructor signature"
                    )
            elif isinstance(member, pdoc.doc.Variable) and not (
                member.docstring or member.name.startswith("__")
            ):
                problems.append(
                    f"{name}.{member.name}: exported constant with no "
                    "docstring (add a string literal after the assignment)"
                )
    return problems


def private_base_problems(output):
    """One line per class line of the built pages naming a private base."""
    problems = []
    for folder, _, files in os.walk(output):
        for page in files:
            if not page.endswith(".html"):
                continue
            with open(os.path.join(folder, page), encoding="utf-8") as f:
                bases = re.findall(r'<span class="base">(.*?)</span>', f.read())
            for base in bases:
                text = re.sub(r"<[^>]+>", "", base)
                if any(part.startswith("_") for part in text.split(".")):
                    problems.append(f"{page}: private base {text} shown")
    return problems


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
    sys.path.insert(0, DOCS_DIR)
    start = time.perf_counter()

    import links
    import pdoc

    # Third-party import-time warnings happen here, outside the check.
    modules = import_public_modules()
    configure()
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
        f"pdoc: {w.message}"
        for w in caught
        if os.path.abspath(w.filename).startswith(pdoc_dir)
    ]
    internal, external, link_problems = links.check_site(args.output)
    errors += link_problems
    errors += completeness_problems(args.output)
    errors += private_base_problems(args.output)
    for line in errors:
        print(f"docs error: {line}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    if errors:
        print(
            f"docs build FAILED: {len(errors)} problem(s) (pdoc warnings, "
            "broken links, missing signatures or docstrings)",
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
        f"{os.path.relpath(args.output, REPO_ROOT)} ({elapsed:.1f}s); "
        f"{internal} internal links checked, none broken; {external} "
        "external links not followed"
    )


if __name__ == "__main__":
    main()
