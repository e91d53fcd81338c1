"""Checks every link of a built HTML site, offline.

A link inside the site (`page.html`, `page.html#anchor`, `#anchor`) must
name a file of the site and, with a fragment, an element with that `id`
(or an `<a name=...>`) on that page. A link to another site (`https:`,
`mailto:`, ...) is counted, not followed: the check runs offline. A page
that *loads* something from another site (`<script src="https://...">`,
an image, a style sheet) is an error: the site must work with no network.

    python docs/links.py build/docs
"""

import argparse
import os
import sys
from html.parser import HTMLParser
from urllib.parse import unquote
from urllib.parse import urlsplit

# Attributes whose URL the browser loads with the page (not on a click).
LOADED = {("script", "src"), ("img", "src"), ("link", "href")}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []  # (tag, attribute, url)

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"])
        for attribute in ("href", "src"):
            url = values.get(attribute)
            if url is not None:
                self.links.append((tag, attribute, url))

    handle_startendtag = handle_starttag


def check_site(root):
    """`(internal, external, problems)`: the numbers of internal and
    external links of the HTML pages under `root`, and one line per
    broken internal link or network load."""
    pages = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".html"):
                path = os.path.normpath(os.path.join(folder, name))
                parser = _Page()
                with open(path, encoding="utf-8") as f:
                    parser.feed(f.read())
                pages[path] = parser
    internal = external = 0
    problems = []
    for path, page in sorted(pages.items()):
        where = os.path.relpath(path, root)
        for tag, attribute, url in page.links:
            parts = urlsplit(url)
            if parts.scheme == "data":
                continue
            if parts.scheme or url.startswith("//"):
                external += 1
                if (tag, attribute) in LOADED:
                    problems.append(f"{where}: loads {url} from the network")
                continue
            internal += 1
            target = path
            if parts.path:
                target = os.path.normpath(
                    os.path.join(os.path.dirname(path), unquote(parts.path))
                )
            if target not in pages:
                if not os.path.isfile(target):
                    problems.append(f"{where}: {url}: no such file")
                continue
            fragment = unquote(parts.fragment)
            if fragment and fragment not in pages[target].ids:
                problems.append(f"{where}: {url}: no such anchor")
    return internal, external, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    args = parser.parse_args()
    internal, external, problems = check_site(args.root)
    for line in problems:
        print(line, file=sys.stderr)
    print(
        f"{internal} internal links checked, {external} external not "
        f"followed, {len(problems)} problem(s)"
    )
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
