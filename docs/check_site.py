"""Opens a page of the built API reference as a reader would, offline.

    python docs/check_site.py [--site build/docs]
        [--page keras_gr/optimizers.html] [--anchor OneSidedShampoo]
        [--screenshot build/docs-check.png] [--min-math 0]

Headless Chromium (Debian's `chromium`: `apt-get install -y chromium`)
loads the page from a `file://` URL with the network off (every request
is sent to a proxy at 127.0.0.1:9, where nothing listens, and host names
resolve to nothing), then this script reads the page as Chromium built it
and checks that:

- the class entry `--anchor` is there, with its constructor signature
  (`OneSidedShampoo(learning_rate: float = 0.001, ...)`);
- every formula is typeset (an SVG inside `<span class="math">`), at least
  `--min-math` of them, and no raw TeX (`$...$`, `$$...$$`, `\\(...\\)`)
  is left in the visible text outside code;
- nothing on the page asked for the network (Chromium's network log has no
  http(s) request).

A screenshot of the class entry is saved (`--screenshot`, the CI
artefact). Exits 0 when every check passes, 1 when one fails, 2 when
Chromium is missing.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(DOCS_DIR)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# No network: a proxy where nothing listens, and no name resolves.
OFFLINE_FLAGS = (
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
# Less of Chromium's own traffic (it is told apart in the log anyway).
QUIET_FLAGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,"
    "SpellcheckService,AutofillServerCommunication",
    "--no-default-browser-check",
    "--no-pings",
)


def find_browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_browser(browser, url, extra, profile, timeout=120):
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *OFFLINE_FLAGS,
        *QUIET_FLAGS,
        *extra,
        url,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False
    )


class _Reader(HTMLParser):
    """The visible text outside code/pre/svg/script/style, the math spans
    and whether each holds an SVG, and the text of the constructor."""

    HIDDEN = {"code", "pre", "svg", "script", "style"}

    def __init__(self, anchor):
        super().__init__(convert_charrefs=True)
        self.anchor = anchor
        self.stack = []
        self.visible = []
        self.ids = set()
        self.math = []  # per math span: True when it holds an SVG
        self.math_depth = None
        self.init_depth = None
        self.signature = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        classes = (values.get("class") or "").split()
        if tag not in ("br", "img", "input", "meta", "link", "wbr"):
            self.stack.append(tag)
        depth = len(self.stack)
        if tag == "span" and "math" in classes and self.math_depth is None:
            self.math.append(False)
            self.math_depth = depth
        if tag == "svg" and self.math_depth is not None:
            self.math[-1] = True
        if values.get("id") == f"{self.anchor}.__init__":
            self.init_depth = depth

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack:
                depth = len(self.stack)
                if self.math_depth == depth:
                    self.math_depth = None
                if self.init_depth == depth:
                    self.init_depth = None
                if self.stack.pop() == tag:
                    break

    def handle_data(self, data):
        if self.init_depth is not None:
            self.signature.append(data)
        if not self.HIDDEN.intersection(self.stack):
            self.visible.append(data)


# Raw TeX a reader would see: `$$...$$`, `\(...\)`, `\[...\]`, or `$x$`
# with no space inside the delimiters (not a price or `$VARIABLE`).
RAW_TEX = re.compile(
    r"\$\$.+?\$\$|\\\(.+?\\\)|\\\[.+?\\\]"
    r"|(?<![\\$])\$[^\s$](?:[^$\n]*?[^\s\\$])?\$(?!\d)",
    re.S,
)


def check_dom(dom, anchor, min_math):
    """`(problems, facts)` for the page's DOM as Chromium built it."""
    reader = _Reader(anchor)
    reader.feed(dom)
    problems = []
    if anchor not in reader.ids:
        problems.append(f"no entry #{anchor} on the page")
    signature = re.sub(r"\s+", " ", "".join(reader.signature)).strip()
    if not signature.startswith(f"{anchor}("):
        problems.append(
            f"no constructor signature for {anchor} (found {signature!r})"
        )
    typeset = sum(reader.math)
    if typeset != len(reader.math):
        problems.append(
            f"{len(reader.math) - typeset} formula(s) not typeset to SVG"
        )
    if typeset < min_math:
        problems.append(f"{typeset} typeset formula(s), expected {min_math}+")
    raw = RAW_TEX.findall(" ".join(reader.visible))
    if raw:
        problems.append(f"raw TeX shown to the reader: {raw[:3]}")
    facts = {"signature": signature[:120], "formulas": typeset}
    return problems, facts


# Chromium's traffic annotation of the requests a page's resources make
# (Blink's resource loader); its own traffic (updates, sign-in, spelling
# dictionaries) carries other annotations.
PAGE_REQUEST_ANNOTATION = 101845102
_REQUEST = re.compile(r'\{[^{}]*"traffic_annotation":(\d+),"url":"([^"]+)"')


def network_requests(log_path):
    """The http(s) URLs the page asked for, from Chromium's net-log."""
    if not os.path.isfile(log_path):
        return []
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return sorted(
        {
            url
            for annotation, url in _REQUEST.findall(text)
            if int(annotation) == PAGE_REQUEST_ANNOTATION
            and url.startswith(("http:", "https:"))
        }
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--site", default=os.path.join(REPO_ROOT, "build", "docs")
    )
    parser.add_argument("--page", default="keras_gr/optimizers.html")
    parser.add_argument("--anchor", default="OneSidedShampoo")
    parser.add_argument(
        "--screenshot",
        default=os.path.join(REPO_ROOT, "build", "docs-check.png"),
    )
    parser.add_argument("--min-math", type=int, default=0)
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        print(
            "check_site: no Chromium found (apt-get install -y chromium)",
            file=sys.stderr,
        )
        sys.exit(2)
    page = os.path.abspath(os.path.join(args.site, args.page))
    if not os.path.isfile(page):
        print(f"check_site: no page {page} (build the docs first)")
        sys.exit(1)
    url = f"file://{page}#{args.anchor}"
    with tempfile.TemporaryDirectory() as profile:
        net_log = os.path.join(profile, "net-log.json")
        dumped = run_browser(
            browser,
            url,
            [
                "--virtual-time-budget=5000",
                f"--log-net-log={net_log}",
                "--dump-dom",
            ],
            os.path.join(profile, "a"),
        )
        requests = network_requests(net_log)
        os.makedirs(
            os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True
        )
        # Headless Chromium's screenshot is taken before it scrolls to a
        # fragment on a long page: the shot is of a copy of the page whose
        # style hides the other entries, so that the class entry is on top.
        shown = os.path.join(profile, "entry.html")
        with open(page, encoding="utf-8") as f:
            text = f.read()
        hide = (
            "<style>main.pdoc > section:not([id='" + args.anchor + "'])"
            "{display:none}</style></head>"
        )
        with open(shown, "w", encoding="utf-8") as f:
            f.write(text.replace("</head>", hide, 1))
        shot = run_browser(
            browser,
            f"file://{shown}",
            [
                "--hide-scrollbars",
                "--window-size=1280,1400",
                f"--screenshot={os.path.abspath(args.screenshot)}",
            ],
            os.path.join(profile, "b"),
        )
    if dumped.returncode != 0 or "<html" not in dumped.stdout:
        print(
            f"check_site: Chromium failed ({dumped.returncode}): "
            f"{dumped.stderr[-2000:]}",
            file=sys.stderr,
        )
        sys.exit(1)
    problems, facts = check_dom(dumped.stdout, args.anchor, args.min_math)
    if requests:
        problems.append(f"the page asked for the network: {requests[:5]}")
    if shot.returncode != 0 or not os.path.isfile(args.screenshot):
        problems.append(f"no screenshot ({shot.stderr[-500:]})")
    facts["page"] = url
    facts["screenshot"] = os.path.relpath(args.screenshot, REPO_ROOT)
    print("check_site:", json.dumps(facts))
    for line in problems:
        print(f"check_site FAILED: {line}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
