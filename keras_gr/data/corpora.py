"""Offline text corpora: text that ships with Python, or a user's own file.

Nothing here touches the network. Each corpus is returned as two lists of
documents (strings), a training split and a validation split, chosen by a
deterministic rule stated in each function's docstring.
"""

import hashlib
import os


def pydoc_corpus():
    """Python's own documentation topics (`pydoc_data.topics`, ~465k chars).

    Documents are the 79 help topics, sorted by name; every 6th topic (the
    ones at sorted positions 5, 11, ...) is the validation split, so the
    split is by document, not by character offset.

    Returns:
        `(train_docs, validation_docs)`, lists of strings.
    """
    from pydoc_data import topics

    names = sorted(topics.topics)
    docs = [topics.topics[n].strip() for n in names]
    train = [d for i, d in enumerate(docs) if i % 6 != 5 and d]
    val = [d for i, d in enumerate(docs) if i % 6 == 5 and d]
    return train, val


def text_file_corpus(path, validation_fraction=0.05):
    """A user's UTF-8 text file, split into paragraphs (blank-line separated).

    The last `validation_fraction` of the paragraphs (at least one) form the
    validation split.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file holds no text, or too little to split.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`text_file` does not exist or is not a file. Received: "
            f"text_file={path!r}"
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise ValueError(
            f"`text_file` holds no text: the corpus is empty. Received: "
            f"text_file={path!r}"
        )
    if len(paragraphs) < 2:
        # Split a single block of text by lines instead.
        paragraphs = [p.strip() for p in text.splitlines() if p.strip()]
    if len(paragraphs) < 2:
        raise ValueError(
            "`text_file` must hold at least two paragraphs or lines (one for "
            f"training, one for validation). Received: text_file={path!r}"
        )
    n_val = max(1, int(round(len(paragraphs) * validation_fraction)))
    return paragraphs[:-n_val], paragraphs[-n_val:]


def stdlib_docstrings_corpus(
    modules=(
        "json",
        "csv",
        "email",
        "argparse",
        "collections",
        "functools",
        "itertools",
        "pathlib",
        "logging",
        "unittest",
        "datetime",
        "decimal",
        "fractions",
        "statistics",
        "string",
        "textwrap",
        "shutil",
        "tarfile",
        "zipfile",
        "sqlite3",
        "http.client",
        "urllib.parse",
        "xml.etree.ElementTree",
        "heapq",
        "bisect",
        "random",
        "difflib",
        "pprint",
        "subprocess",
        "threading",
    ),
):
    """Docstrings of public objects of standard-library modules.

    A different text domain from `pydoc_corpus` (API reference prose rather
    than language-reference prose), used to fine-tune and evaluate on text a
    preset did not see. Documents are docstrings, deduplicated and ordered by
    (module, object name); a document goes to validation when the first byte
    of the SHA-1 of its text is < 26 (~10%, stable across Python runs).

    Returns:
        `(train_docs, validation_docs)`, lists of strings.
    """
    import importlib
    import inspect

    seen = set()
    docs = []
    for mod_name in modules:
        module = importlib.import_module(mod_name)
        objects = [(mod_name, module)]
        for name in sorted(dir(module)):
            if not name.startswith("_"):
                objects.append((name, getattr(module, name)))
        for _, obj in objects:
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 80 or doc in seen:
                continue
            seen.add(doc)
            docs.append(doc)
    train, val = [], []
    for d in docs:
        h = hashlib.sha1(d.encode("utf-8")).digest()[0]
        (val if h < 26 else train).append(d)
    return train, val
