"""The API reference's own checks (docs/): links, maths, completeness.

Fast tests run the link checker, the maths typesetter and the page reader
of docs/check_site.py on small pages written here, and render one real
module (`keras_gr.optimizers`) with keras_gr's template. The full build and
the Chromium check are `slow` (CI runs both in its API-reference step).
Everything skips cleanly where pdoc, quickjax or Chromium is absent.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs")
if DOCS_DIR not in sys.path:
    sys.path.insert(0, DOCS_DIR)

import check_site  # noqa: E402
import links  # noqa: E402


def _load_build():
    spec = importlib.util.spec_from_file_location(
        "keras_gr_docs_build", os.path.join(DOCS_DIR, "build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_link_checker_finds_broken_anchors_files_and_network_loads(
    tmp_path,
):
    _write(
        tmp_path,
        "a.html",
        '<h1 id="top">A</h1><a name="old"></a>'
        '<a href="#top">ok</a><a href="#old">ok</a>'
        '<a href="#nowhere">broken</a>'
        '<a href="sub/b.html#x">ok</a><a href="sub/b.html#y">broken</a>'
        '<a href="missing.html">broken</a>'
        '<a href="https://example.org/">external, not followed</a>'
        '<img src="data:image/png;base64,AAAA">'
        '<script src="https://cdn.example.org/m.js"></script>',
    )
    _write(tmp_path, "sub/b.html", '<p id="x"></p><a href="../a.html">ok</a>')
    internal, external, problems = links.check_site(str(tmp_path))
    assert internal == 7
    assert external == 2
    assert sorted(problems) == [
        "a.html: #nowhere: no such anchor",
        "a.html: loads https://cdn.example.org/m.js from the network",
        "a.html: missing.html: no such file",
        "a.html: sub/b.html#y: no such anchor",
    ]


def test_typeset_replaces_formulas_only():
    pytest.importorskip("quickjax")
    import reference

    html = (
        "<p>Root $L^{-1/4}$, step $$W - \\eta G$$ and \\(a_1\\); costs $5 "
        "and $KERAS_GR_CACHE stays; <code>$x$</code> stays.</p>"
    )
    out = str(reference.typeset(html))
    assert out.count('<span class="math inline"><svg') == 2
    assert out.count('<span class="math display"><svg') == 1
    assert "costs $5 and $KERAS_GR_CACHE stays" in out
    assert "<code>$x$</code>" in out


@pytest.mark.parametrize("tex", ["\\frac{1}{", "\\notamacro x"])
def test_typeset_refuses_tex_mathjax_cannot_render(tex):
    pytest.importorskip("quickjax")
    import reference

    with pytest.raises(reference.MathError):
        reference.typeset(f"<p>${tex}$</p>")


def test_page_reader_checks_signature_and_maths():
    dom = (
        '<section id="Opt"><div id="Opt.__init__"><span>Opt</span>'
        "(<span>lr: float = 0.1</span>)</div>"
        '<p>rule <span class="math inline"><svg></svg></span></p>'
        "<code>$not maths$</code></section>"
    )
    problems, facts = check_site.check_dom(dom, "Opt", min_math=1)
    assert problems == []
    assert facts == {"signature": "Opt(lr: float = 0.1)", "formulas": 1}
    bad = dom.replace("<svg></svg>", "") + "<p>raw $x^2$ here</p>"
    problems, _ = check_site.check_dom(bad, "Opt", min_math=1)
    assert problems == [
        "1 formula(s) not typeset to SVG",
        "0 typeset formula(s), expected 1+",
        "raw TeX shown to the reader: ['$x^2$']",
    ]
    problems, _ = check_site.check_dom("<p></p>", "Opt", min_math=0)
    assert problems == [
        "no entry #Opt on the page",
        "no constructor signature for Opt (found '')",
    ]


def test_optimizers_page_is_complete(tmp_path):
    """Renders keras_gr.optimizers with keras_gr's template: before issue
    30 OneSidedShampoo had no constructor, every optimizer's class line
    named `_StructuredPreconditioner` and 49 anchors pointed nowhere."""
    pdoc = pytest.importorskip("pdoc")
    build = _load_build()
    build.configure()
    pdoc.pdoc("keras_gr.optimizers", output_directory=pathlib.Path(tmp_path))
    page = (tmp_path / "keras_gr" / "optimizers.html").read_text("utf-8")
    for name in (
        "OneSidedShampoo",
        "Shampoo",
        "AdagradNorm",
        "FullMatrixAdagrad",
        "LoraRite",
    ):
        assert f'id="{name}.__init__"' in page, name
    assert "_StructuredPreconditioner" not in page.split("<main")[0]
    assert build.private_base_problems(str(tmp_path)) == []
    _, _, problems = links.check_site(str(tmp_path))
    # Links to other pages miss in a one-module render; anchors must not.
    assert [p for p in problems if "no such file" not in p] == []


MATH_MODULE = r'''"""Maths as a keras_gr docstring would write it."""


class Rule:
    """The one-sided step.

    For an $m \times n$ gradient $G_t$,

    $$L_t = \beta_2 L_{t-1} + (1 - \beta_2)\, G_t G_t^\top, \qquad
    W_{t+1} = W_t - \eta \, L_t^{-1/2} G_t .$$

    The `lr` costs $5 and `$HOME` stays as written.
    """

    def __init__(self, learning_rate: float = 0.1):
        self.learning_rate = learning_rate
'''


def test_docstring_maths_is_typeset_through_pdoc(tmp_path, monkeypatch):
    """A docstring's maths goes through pdoc's Markdown and comes out as
    SVG, with no raw TeX left for the reader (no browser needed)."""
    pdoc = pytest.importorskip("pdoc")
    pytest.importorskip("quickjax")
    _write(tmp_path, "gr_maths_demo.py", MATH_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    _load_build().configure()
    site = tmp_path / "site"
    pdoc.pdoc("gr_maths_demo", output_directory=site)
    dom = (site / "gr_maths_demo.html").read_text("utf-8")
    problems, facts = check_site.check_dom(dom, "Rule", min_math=3)
    assert problems == []
    assert facts == {
        "signature": "Rule(learning_rate: float = 0.1)",
        "formulas": 3,
    }
    assert "costs $5 and" in dom


@pytest.mark.slow
def test_full_build_and_headless_chromium_check(tmp_path):
    pytest.importorskip("pdoc")
    if check_site.find_browser() is None:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    site = tmp_path / "site"
    env = dict(os.environ, KERAS_BACKEND="jax")
    subprocess.run(
        [sys.executable, os.path.join(DOCS_DIR, "build.py"), "--output", site],
        check=True,
        env=env,
    )
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            sys.executable,
            os.path.join(DOCS_DIR, "check_site.py"),
            "--site",
            site,
            "--screenshot",
            shot,
        ],
        check=True,
    )
    assert shot.stat().st_size > 10_000
