"""Offline text corpora: text that ships with Python, or a user's own file.

Nothing here touches the network. Each corpus is returned as two lists of
documents (strings), a training split and a validation split, chosen by a
deterministic rule stated in each function's docstring.
"""

import collections
import functools
import hashlib
import os
from collections.abc import Sequence


def pydoc_corpus() -> tuple[list[str], list[str]]:
    """Python's own documentation topics (`pydoc_data.topics`, ~465k chars).

    Documents are the 79 help topics, sorted by name; every 6th topic (the
    ones at sorted positions 5, 11, ...) is the validation split, so the
    split is by document, not by character offset.

    Returns:
        `(train_docs, validation_docs)`, lists of strings.

    Example:

    >>> train, validation = pydoc_corpus()
    >>> len(train) > 4 * len(validation) > 0
    True
    >>> isinstance(train[0], str), isinstance(validation[0], str)
    (True, True)
    """
    from pydoc_data import topics

    names = sorted(topics.topics)
    docs = [topics.topics[n].strip() for n in names]
    train = [d for i, d in enumerate(docs) if i % 6 != 5 and d]
    val = [d for i, d in enumerate(docs) if i % 6 == 5 and d]
    return train, val


def text_file_corpus(
    path: str | os.PathLike[str], validation_fraction: float = 0.05
) -> tuple[list[str], list[str]]:
    """A user's UTF-8 text file, split into paragraphs (blank-line separated).

    The last `validation_fraction` of the paragraphs (at least one) form the
    validation split.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file holds no text, or too little to split.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with open(path, "w", encoding="utf-8") as f:
    ...     _ = f.write("First paragraph.\\n\\nSecond one.\\n\\nThird.")
    >>> text_file_corpus(path, validation_fraction=0.3)
    (['First paragraph.', 'Second one.'], ['Third.'])
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
    modules: Sequence[str] = (
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
) -> tuple[list[str], list[str]]:
    """Docstrings of public objects of standard-library modules.

    A different text domain from `pydoc_corpus` (API reference prose rather
    than language-reference prose), used to fine-tune and evaluate on text a
    preset did not see. Documents are docstrings, deduplicated and ordered by
    (module, object name); a document goes to validation when the first byte
    of the SHA-1 of its text is < 26 (~10%, stable across Python runs).

    Returns:
        `(train_docs, validation_docs)`, lists of strings.

    Example:

    >>> train, validation = stdlib_docstrings_corpus(modules=("json",))
    >>> len(train) > 0, all(len(d) >= 80 for d in train + validation)
    (True, True)
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


CORPUS_SOURCES = ("prose", "code", "docstrings")
"""Source labels of `multi_source_corpus`, in label-index order."""

_SKIPPED_STDLIB_DIRS = frozenset(
    (
        "test",
        "tests",
        "idlelib",
        "site-packages",
        "dist-packages",
        "lib2to3",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "__pycache__",
        "pydoc_data",
    )
)


class LabelledCorpus(
    collections.namedtuple(
        "LabelledCorpus",
        [
            "train_texts",
            "train_sources",
            "validation_texts",
            "validation_sources",
            "source_names",
        ],
    )
):
    """Documents with a source label each, split into train / validation.

    Fields: `train_texts`, `validation_texts` (lists of strings);
    `train_sources`, `validation_sources` (int32 NumPy arrays of indices
    into `source_names`); `source_names` (tuple of strings).

    Example:

    >>> import numpy as np
    >>> corpus = LabelledCorpus(
    ...     train_texts=["x = 1", "A sentence."],
    ...     train_sources=np.array([1, 0], "int32"),
    ...     validation_texts=["y = 2"],
    ...     validation_sources=np.array([1], "int32"),
    ...     source_names=("prose", "code"),
    ... )
    >>> [corpus.source_names[i] for i in corpus.train_sources]
    ['code', 'prose']
    """


def _stdlib_python_files():
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in _SKIPPED_STDLIB_DIRS and not d.startswith("config-")
        )
        for name in sorted(files):
            if name.endswith(".py"):
                paths.append(os.path.join(folder, name))
    return paths


def _chunks(blocks, min_chars, max_chars):
    """Greedily packs text blocks into documents of `min_chars` to
    `max_chars` characters (a longer block is cut at line boundaries)."""
    docs, current = [], ""
    for block in blocks:
        while len(block) > max_chars:
            cut = block.rfind("\n", 0, max_chars)
            cut = max_chars if cut < min_chars else cut
            head, block = block[:cut], block[cut:].lstrip("\n")
            if current:
                docs.append(current)
                current = ""
            docs.append(head)
        if current and len(current) + len(block) + 2 > max_chars:
            docs.append(current)
            current = ""
        current = f"{current}\n\n{block}" if current else block
        if len(current) >= min_chars:
            docs.append(current)
            current = ""
    if len(current) >= min_chars:
        docs.append(current)
    return [d.strip() for d in docs if d.strip()]


@functools.lru_cache(maxsize=4)
def _prose_documents(min_chars, max_chars):
    """Documents from the pydoc topics, as a tuple (cached: the texts are
    immutable and callers only read them)."""
    from pydoc_data import topics

    docs = []
    for name in sorted(topics.topics):
        paragraphs = [
            p.strip() for p in topics.topics[name].split("\n\n") if p.strip()
        ]
        docs.extend(_chunks(paragraphs, min_chars, max_chars))
    return tuple(docs)


@functools.lru_cache(maxsize=4)
def _code_and_docstring_documents(min_chars, max_chars):
    """Code and docstring documents of the standard library, as tuples.

    Parsing ~1k files takes seconds, so the result is cached per process
    (the files do not change while it runs)."""
    import ast

    code, docstrings = [], []
    for path in _stdlib_python_files():
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        blocks = []
        for node in tree.body:
            if isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ):
                start = min(
                    [node.lineno] + [d.lineno for d in node.decorator_list]
                )
                blocks.append("\n".join(lines[start - 1 : node.end_lineno]))
        code.extend(_chunks(blocks, min_chars, max_chars))
        texts = []
        for node in ast.walk(tree):
            if isinstance(
                node,
                (
                    ast.Module,
                    ast.FunctionDef,
                    ast.AsyncFunctionDef,
                    ast.ClassDef,
                ),
            ):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    texts.append(doc.strip())
        docstrings.extend(_chunks(texts, min_chars, max_chars))
    return tuple(code), tuple(docstrings)


def multi_source_corpus(
    max_documents_per_source: int | None = None,
    min_chars: int = 200,
    max_chars: int = 2000,
    validation_fraction: float = 0.1,
) -> LabelledCorpus:
    """A labelled, multi-source text corpus that ships with Python (offline).

    Three sources, label indices in `CORPUS_SOURCES` order:

    - `"prose"`: the language-reference topics of `pydoc_data.topics`,
      paragraphs packed into documents;
    - `"code"`: top-level functions and classes of the standard library's
      own `.py` files (tests, IDLE, tkinter, lib2to3 left out), packed into
      documents;
    - `"docstrings"`: the module, class and function docstrings of the same
      files (read with `ast`, nothing is imported), packed into documents.

    Documents hold `min_chars` to `max_chars` characters (a longer block is
    cut at a line boundary). With `max_documents_per_source=None` the corpus
    is ~12 MB (Python 3.11: ~1.4k prose, ~6k code and ~3k docstring
    documents); otherwise each source keeps an evenly spaced subset of that
    many documents, so sources can be balanced. Duplicated texts are kept
    once (the first source that has them keeps them). The split is by
    document and stable across runs and machines: a document is in
    validation when the first byte of the SHA-1 of its text is below
    `256 * validation_fraction`.

    Args:
        max_documents_per_source: `None` or a positive integer. Defaults to
            `None`.
        min_chars: shortest document. Defaults to `200`.
        max_chars: longest document. Defaults to `2000`.
        validation_fraction: share of documents in validation, in (0, 1).
            Defaults to `0.1`.

    Returns:
        A `LabelledCorpus`.

    Example:

    >>> corpus = multi_source_corpus(max_documents_per_source=50)
    >>> corpus.source_names
    ('prose', 'code', 'docstrings')
    >>> len(corpus.train_texts) + len(corpus.validation_texts)
    150
    """
    import numpy as np

    from keras_gr._validation import check_integer
    from keras_gr._validation import check_number

    if max_documents_per_source is not None:
        max_documents_per_source = check_integer(
            "max_documents_per_source", max_documents_per_source
        )
    min_chars = check_integer("min_chars", min_chars)
    max_chars = check_integer("max_chars", max_chars, minimum=min_chars)
    validation_fraction = check_number(
        "validation_fraction",
        validation_fraction,
        minimum=0.0,
        maximum=1.0,
        min_inclusive=False,
        max_inclusive=False,
    )
    code, docstrings = _code_and_docstring_documents(min_chars, max_chars)
    by_source = (_prose_documents(min_chars, max_chars), code, docstrings)
    threshold = 256 * validation_fraction
    seen = set()
    split = {True: ([], []), False: ([], [])}
    for label, docs in enumerate(by_source):
        docs = [d for d in docs if not (d in seen or seen.add(d))]
        if max_documents_per_source and len(docs) > max_documents_per_source:
            picks = np.linspace(0, len(docs) - 1, max_documents_per_source)
            docs = [docs[int(round(i))] for i in picks]
        for doc in docs:
            is_val = hashlib.sha1(doc.encode("utf-8")).digest()[0] < threshold
            split[is_val][0].append(doc)
            split[is_val][1].append(label)
    return LabelledCorpus(
        split[False][0],
        np.asarray(split[False][1], "int32"),
        split[True][0],
        np.asarray(split[True][1], "int32"),
        CORPUS_SOURCES,
    )
