"""What the API reference shows of a class, beyond pdoc's defaults.

Registered into pdoc's Jinja environment by `install()` and used by
`docs/templates/module.html.jinja2`. The choices, and why:

- **Every public class shows its constructor.** pdoc renders `__init__`
  only when the class itself defines it with a docstring or an argument;
  a class that inherits its constructor (`OneSidedShampoo` from `Shampoo`,
  `OracleRouter` from `Router`, the keras-hub adapters) or whose
  constructor takes no argument (`ColumnOrthogonal()`) showed none. Here
  the constructor always comes first, with the signature Python resolves
  for the class; its docstring is shown only when keras_gr wrote it.
- **A private base is an implementation detail.** A base class with a
  `_` name part (`_StructuredPreconditioner`) is replaced in the class
  line by its own public bases, and the members the class inherits from
  it are documented as the class's own, with their anchors.
- **Third-party bases are named by their public path**
  (`keras.optimizers.Optimizer`, not `keras.src.optimizers.optimizer...`).
- **What is inherited from outside keras_gr is not documented here.**
  Keras's `fit`, `dtype` or `clipnorm` are Keras's to document; such a
  member gets neither an entry nor an in-page link (pdoc used to link a
  docstring's `fit` to an anchor it never wrote). Members inherited from a
  keras_gr class documented elsewhere in the reference are listed under
  "Inherited Members" and link to that class's entry.
- **An exported constant keeps the docstring written where it is
  defined.** pdoc reads a variable's docstring (the string literal after
  its assignment) from the source of the module that documents it, so
  `keras_gr.presets.DEFAULT_CONFIG`, defined in `local_preset.py` and
  re-exported by `keras_gr/presets/__init__.py`, showed none. Here a name
  of a namespace's `__all__` bound to a constant of another keras_gr
  module takes that module's docstring.
"""

import functools
import html
import inspect
import re
import sys
import types

import pdoc.doc
import pdoc.doc_ast
import pdoc.render

PACKAGE = "keras_gr"
# The anchor of ARCHITECTURE.md on the package page, where the package
# docstring includes it (markdown2's id of its first heading).
ARCHITECTURE_PAGE = "keras_gr"
ARCHITECTURE_ANCHOR = "keras_gr-architecture"
# Third-party packages whose public namespaces name a base class.
PUBLIC_NAMESPACES = ("keras", "keras_hub")


def is_private_path(modulename, qualname):
    """True when a dotted part of the module or the qualname starts with
    `_` (`keras_gr.optimizers.shampoo._StructuredPreconditioner`)."""
    parts = f"{modulename}.{qualname}".split(".")
    return any(part.startswith("_") for part in parts if part)


def is_own_package(modulename):
    return modulename == PACKAGE or modulename.startswith(PACKAGE + ".")


def is_foreign_member(doc):
    """True for a class member inherited from a class outside keras_gr
    (Keras, keras-hub, `object`): documented there, not here. A
    constructor is never foreign: it is the class's signature."""
    if doc.name == "__init__" or "." not in (doc.qualname or ""):
        return False
    return not is_own_package(doc.taken_from[0])


def _is_hidden_base(spec):
    """A keras_gr base whose members are shown as the subclass's own."""
    modulename, qualname = spec
    return is_own_package(modulename) and is_private_path(modulename, qualname)


def class_members(cls):
    """The members a class's entry documents, constructor first: its own
    members and those inherited from private keras_gr bases."""
    members = [cls.members["__init__"]] if "__init__" in cls.members else []
    members += [m for m in cls.own_members if m.name != "__init__"]
    for origin, inherited in cls.inherited_members.items():
        if _is_hidden_base(origin):
            members += [m for m in inherited if m.name != "__init__"]
    seen = set()
    unique = []
    for member in members:
        if member.name not in seen:
            seen.add(member.name)
            unique.append(member)
    return unique


def show_docstring(doc):
    """An inherited constructor's docstring is shown only when keras_gr
    wrote it (not `object.__init__`'s, not Keras's)."""
    return doc.name != "__init__" or is_own_package(doc.taken_from[0])


_public_names = {}


def _index_public_names():
    for top in PUBLIC_NAMESPACES:
        root = sys.modules.get(top)
        if root is None:
            continue
        spaces = [(top, root)]
        for name, value in vars(root).items():
            if isinstance(value, types.ModuleType) and not name.startswith("_"):
                if name != "src":
                    spaces.append((f"{top}.{name}", value))
        for prefix, space in spaces:
            for name, value in vars(space).items():
                if inspect.isclass(value) and not name.startswith("_"):
                    path = f"{prefix}.{name}"
                    known = _public_names.get(id(value))
                    if known is None or len(path) < len(known):
                        _public_names[id(value)] = path


def public_name(obj, fallback):
    """The shortest public path of a third-party class, else `fallback`."""
    if not _public_names:
        _index_public_names()
    return _public_names.get(id(obj), fallback)


def public_bases(cls):
    """`(modulename, qualname, text)` of the class line's bases, a private
    base replaced by its own bases (recursively)."""
    found = []

    def visit(base):
        spec = (base.__module__, base.__qualname__)
        if is_private_path(*spec):
            for parent in base.__bases__:
                visit(parent)
            return
        if spec in [f[:2] for f in found] or base is object:
            return
        text = f"{spec[0]}.{spec[1]}"
        if not is_own_package(spec[0]):
            text = public_name(base, text)
        found.append((*spec, text))

    for base in cls.obj.__bases__:
        visit(base)
    return found


_where_cache = {}


def documented_at(all_modules, spec):
    """`(modulename, qualname)` of the page entry of the class defined at
    `spec`, or None when the reference does not document it."""
    key = id(all_modules)
    if key not in _where_cache:
        index = {}
        for module in all_modules.values():
            for member in module.members.values():
                if isinstance(member, pdoc.doc.Class):
                    index.setdefault(
                        member.taken_from,
                        (module.modulename, member.qualname),
                    )
        _where_cache.clear()
        _where_cache[key] = index
    return _where_cache[key].get(tuple(spec))


def inherited_groups(context, cls):
    """Members inherited from keras_gr classes documented in the reference:
    `[(base_link_spec, base_text, [(member, member_link_spec)])]`."""
    is_public = context["is_public"]
    all_modules = context["all_modules"]
    groups = []
    for origin, members in cls.inherited_members.items():
        if not is_own_package(origin[0]) or _is_hidden_base(origin):
            continue
        where = documented_at(all_modules, origin)
        if where is None:
            continue
        base_doc = all_modules[where[0]].get(where[1])
        shown = {
            m.name for m in class_members(base_doc) if is_public(m).strip()
        }
        entries = [
            (m, (where[0], f"{where[1]}.{m.name}"))
            for m in members
            if m.name != "__init__" and m.name in shown and is_public(m).strip()
        ]
        if entries:
            text = f"{where[0]}.{where[1]}"
            groups.append((where, text, entries))
    return groups


_SKIPPED_TAGS = ("a", "code", "pre", "h1", "h2", "h3", "h4", "h5", "h6")


def link_architecture(context, text):
    """Turns the words `ARCHITECTURE.md` of rendered docstring HTML into a
    link to that document on the package page (outside code, headings and
    existing links)."""
    module = context["module"]
    href = pdoc.render_helpers.relative_link(
        module.modulename, ARCHITECTURE_PAGE
    )
    link = f'<a href="{href}#{ARCHITECTURE_ANCHOR}">ARCHITECTURE.md</a>'
    return _outside_tags(
        str(text), lambda chunk: chunk.replace("ARCHITECTURE.md", link)
    )


_TAG = re.compile(r"<(/?)([a-zA-Z0-9]+)[^>]*>")


def _outside_tags(markup, transform):
    """Applies `transform` to the text of `markup` that is not inside one
    of `_SKIPPED_TAGS`."""
    out = []
    depth = 0
    position = 0
    for match in _TAG.finditer(markup):
        chunk = markup[position : match.start()]
        out.append(transform(chunk) if depth == 0 else chunk)
        out.append(match.group(0))
        if match.group(2).lower() in _SKIPPED_TAGS:
            depth += -1 if match.group(1) else 1
            depth = max(depth, 0)
        position = match.end()
    tail = markup[position:]
    out.append(transform(tail) if depth == 0 else tail)
    return pdoc.render_helpers.Markup("".join(out))


# Inline `$...$` (no space inside either delimiter, the closing one not
# followed by a digit, as pandoc reads it), `$$...$$`, `\(...\)`, `\[...\]`.
_MATH = re.compile(
    r"\$\$(?P<d1>.+?)\$\$"
    r"|\\\[(?P<d2>.+?)\\\]"
    r"|\\\((?P<i1>.+?)\\\)"
    r"|(?<![\\$])\$(?P<i2>[^\s$](?:[^$]*?[^\s\\$])?)\$(?!\d)",
    re.S,
)


class MathError(ValueError):
    """A formula MathJax could not typeset."""


_renderer = None
_UNDEFINED_MACRO = re.compile(
    r'data-mml-node="mtext" fill="red" stroke="red" data-latex="\\'
)


def render_tex(tex, display):
    """SVG markup of one TeX formula, typeset by MathJax in-process
    (quickjax: MathJax running in QuickJS; nothing is fetched)."""
    global _renderer
    if _renderer is None:
        try:
            import quickjax
        except ImportError as error:
            raise ImportError(
                "the docs typeset maths with the `quickjax` package of the "
                'docs extra: pip install -e ".[docs]"'
            ) from error
        _renderer = quickjax.render
    svg = _renderer(tex, display=display)
    if "data-mjx-error" in svg:
        raise MathError(f"MathJax could not typeset {tex!r}")
    if _UNDEFINED_MACRO.search(svg):
        # MathJax shows an unknown `\macro` as red text, not as an error.
        raise MathError(f"undefined TeX macro in {tex!r}")
    return svg


def typeset(markup):
    """Replaces each formula of rendered HTML (outside code and pre) with
    its SVG; `$` signs that do not delimit a formula stay as they are."""

    def replace(chunk):
        def one(match):
            display = match.group("d1") or match.group("d2")
            tex = display or match.group("i1") or match.group("i2")
            svg = render_tex(html.unescape(tex.strip()), bool(display))
            kind = "display" if display else "inline"
            return f'<span class="math {kind}">{svg}</span>'

        return _MATH.sub(one, chunk)

    return _outside_tags(str(markup), replace)


def reexported_docstrings(module):
    """`{name: docstring}` for the names of `module.__all__` bound to a
    constant (not a module, class or function) that another loaded
    keras_gr module defines with a docstring."""
    found = {}
    for name in getattr(module, "__all__", None) or ():
        value = vars(module).get(name)
        if value is None or callable(value) or inspect.ismodule(value):
            continue
        for other in list(sys.modules.values()):
            other_name = getattr(other, "__name__", "")
            if other is module or not is_own_package(other_name):
                continue
            if vars(other).get(name) is value:
                docstring = pdoc.doc_ast.walk_tree(other).var_docstrings
                if docstring.get(name):
                    found[name] = docstring[name]
                    break
    return found


def _read_reexported_docstrings():
    """Makes pdoc's modules read `reexported_docstrings` (once)."""
    original = vars(pdoc.doc.Module)["_var_docstrings"]
    if getattr(original.func, "reads_reexported", False):
        return

    def _var_docstrings(self):
        docstrings = dict(original.func(self))
        for name, text in reexported_docstrings(self.obj).items():
            docstrings.setdefault(name, text)
        return docstrings

    _var_docstrings.reads_reexported = True
    replacement = functools.cached_property(_var_docstrings)
    replacement.__set_name__(pdoc.doc.Module, "_var_docstrings")
    pdoc.doc.Module._var_docstrings = replacement


def install(env):
    """Registers the helpers in pdoc's Jinja environment and makes pdoc
    read the docstrings of re-exported constants."""
    from jinja2 import pass_context

    _read_reexported_docstrings()
    env.globals["gr_class_members"] = class_members
    env.globals["gr_show_docstring"] = show_docstring
    env.globals["gr_is_foreign_member"] = is_foreign_member
    env.globals["gr_public_bases"] = public_bases
    env.globals["gr_inherited_groups"] = pass_context(inherited_groups)
    env.filters["gr_link_architecture"] = pass_context(link_architecture)
    env.filters["gr_typeset"] = typeset
