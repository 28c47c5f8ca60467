"""Sphinx configuration of the fimlab documentation.

Build with ``make -C docs html`` from the repository root (warnings are errors, no
network access is needed: no intersphinx, MathJax served from a local copy).

Three parts of the site are generated at build time, so that they cannot drift from
the code:

- ``api/generated/*.rst`` — one page per name of ``fimlab.__all__``, grouped as the
  comments of ``__all__`` in ``fimlab/__init__.py`` group them (:func:`_write_api`);
- ``auto_examples/`` — the tutorials ``examples/plot_*.py``, executed by
  sphinx-gallery (``FIMLAB_FAST=1`` in the environment runs them in their fast mode);
- the table of contents of ``topics.rst`` — every page at the top of
  ``docs/`` (``kpsvd.md``, ``results.md``, ...) in a fixed reading order, whichever of
  them exist (:func:`_topics_toctree`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import os
import re
import sys
import tokenize
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not an installed copy

# The tutorials run on tiny matrices, where BLAS threads only add overhead; on a busy
# 2-core machine two OpenBLAS threads per process made a 0.1 s tutorial step take 17 s
# (measured). One thread per library unless the environment says otherwise; set before
# NumPy is first imported (below, and by the extensions).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import fimlab  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")

# -- project -----------------------------------------------------------------------
project = "fimlab"
author = "fimlab developers"
copyright = "fimlab developers"
version = release = fimlab.__version__

# -- extensions --------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]

# Math renders offline: sphinx-mathjax-offline ships MathJax 3 inside its wheel and
# copies it into _build/html/_static/mathjax (no CDN). Without it (not installed) the
# pages fall back on Sphinx's default CDN path and say so in the build log.
try:
    importlib.import_module("sphinx-mathjax-offline")
except ImportError:  # pragma: no cover - depends on the environment
    print(
        "fimlab docs: sphinx-mathjax-offline is not installed, math will load MathJax "
        "from a CDN; pip install 'fimlab[docs]' for offline math",
        file=sys.stderr,
    )
else:
    extensions.append("sphinx-mathjax-offline")

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md", "**/GALLERY_HEADER.rst",
                    "bench"]  # raw benchmark reports: included by performance.md
templates_path = ["_templates"]
default_role = "literal"  # `x` renders as code: docstrings use it for names and shapes
suppress_warnings: list[str] = []

# -- myst (markdown pages written by the other issues) -------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc / numpydoc --------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters section says it
# Every public method and attribute, including inherited ones (a class page lists
# ``solve``, ``to_dense``, ``blocks``, ... even when a base class defines them), but not
# the members of built-in bases (``Exception.add_note``, ``tuple.count``, ...).
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "inherited-members": ",".join([
        "object", "BaseException", "Exception", "ValueError", "TypeError", "KeyError",
        "IndexError", "MemoryError", "RuntimeError", "LookupError", "ArithmeticError",
        "Warning", "UserWarning", "RuntimeWarning", "tuple", "dict", "list",
    ]),
}
autosummary_generate = False  # pages are written by _write_api below
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- HTML --------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"fimlab {release}"
html_static_path = ["_static"]
html_css_files = ["fimlab.css"]
html_js_files = ["fimlab.js"]  # figures open at full size on click
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "icon_links": [],
}
html_sidebars = {"index": []}
html_show_sourcelink = False

# -- matplotlib plot directive (the pictures of the user guide) ----------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 150)]  # sharp when a figure is opened at full size
plot_rcparams = {"figure.autolayout": False}

# -- sphinx-gallery (the tutorials) --------------------------------------------------
FAST = os.environ.get("FIMLAB_FAST", "0") not in ("", "0", "false", "False")
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "reset_modules": ("matplotlib",),
    "min_reported_time": 1,
    "write_computation_times": False,  # its page loads jQuery and DataTables from CDNs
    "show_memory": False,
    "capture_repr": (),
    "default_thumb_file": None,
    "image_scrapers": ("matplotlib",),
}


# -- generated pages -------------------------------------------------------------------
def _all_groups() -> list[tuple[str, list[str]]]:
    """``fimlab.__all__`` split into the groups its ``# comments`` name.

    Reads ``fimlab/__init__.py`` with the tokenizer, so a name added to ``__all__``
    under a comment appears in that group of the API reference; names before any
    comment, or added to ``__all__`` some other way, go to "Other".
    """
    src = (ROOT / "fimlab" / "__init__.py").read_text(encoding="utf-8")
    tree = ast.parse(src)
    span = None
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            span = (node.lineno, node.end_lineno)
    groups: list[tuple[str, list[str]]] = []
    if span is not None:
        current = None
        toks = tokenize.generate_tokens(io.StringIO(src).readline)
        for tok in toks:
            if not span[0] <= tok.start[0] <= span[1]:
                continue
            if tok.type == tokenize.COMMENT:
                current = tok.string.lstrip("#").strip()
                current = current[:1].upper() + current[1:]
                groups.append((current, []))
            elif tok.type == tokenize.STRING:
                name = ast.literal_eval(tok.string)
                if not groups:
                    groups.append(("Other", []))
                groups[-1][1].append(name)
    seen = {n for _, names in groups for n in names}
    rest = [n for n in fimlab.__all__ if n not in seen]
    if rest:
        groups.append(("Other", rest))
    return [(g, [n for n in names if n in fimlab.__all__]) for g, names in groups if names]


def _object_page(name: str) -> str:
    obj = getattr(fimlab, name)
    full = f"fimlab.{name}"
    title = f"{full}\n{'=' * len(full)}\n\n"
    if inspect.ismodule(obj):
        return title + f".. automodule:: {obj.__name__}\n   :members:\n"
    if inspect.isclass(obj):
        return title + f".. currentmodule:: fimlab\n\n.. autoclass:: {name}\n   :members:\n"
    if callable(obj):
        return title + f".. currentmodule:: fimlab\n\n.. autofunction:: {name}\n"
    return (  # a constant: its value, and the comment of the module that defines it
        title + f".. currentmodule:: fimlab\n\n.. autodata:: {name}\n"
        f"   :annotation: = {_short_repr(obj)}\n"
    )


def _short_repr(obj, limit: int = 70) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _summary(obj) -> str:
    """First paragraph of the docstring (the value, for a constant)."""
    if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
        return f"constant ``{_short_repr(obj)}``"
    doc = inspect.getdoc(obj) or ""
    summary = doc.strip().split("\n\n")[0].replace("\n", " ")
    return ("module — " + summary) if inspect.ismodule(obj) else summary


def _write_api() -> None:
    """Write ``api/generated/<name>.rst`` and ``api/generated/groups.inc`` (the grouped
    table included by ``api/index.rst``)."""
    out = DOCS / "api" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    wanted = {}
    lines = []
    for group, names in _all_groups():
        lines += [group, "-" * len(group), "", ".. list-table::", "   :widths: 30 70", ""]
        for name in names:
            lines += [
                f"   * - :doc:`{name} <generated/{name}>`",
                f"     - {_summary(getattr(fimlab, name))}",
            ]
            wanted[f"{name}.rst"] = _object_page(name)
        lines.append("")
        lines += [".. toctree::", "   :hidden:", ""]
        lines += [f"   generated/{name}" for name in names]
        lines.append("")
    wanted["groups.inc"] = "\n".join(lines)
    for fname, text in wanted.items():
        path = out / fname
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    for path in [*out.glob("*.rst"), *out.glob("*.inc")]:  # names removed from __all__
        if path.name not in wanted:
            path.unlink()


#: the reading order of the topic pages that the other issues write (any that exist)
TOPIC_ORDER = [
    "papers",
    "kpsvd",
    "two_level",
    "results",
    "performance",
    "backend",
    "sweep",
    "bibliography",
]
_NOT_TOPICS = {"index", "topics", "sg_execution_times"}


def _topics() -> list[str]:
    pages = {
        p.stem
        for p in DOCS.iterdir()
        if p.is_file() and p.suffix in (".rst", ".md") and p.stem not in _NOT_TOPICS
        and p.name != "README.md"
    }
    ordered = [t for t in TOPIC_ORDER if t in pages]
    return ordered + sorted(pages - set(ordered))


def _topics_toctree() -> str:
    pages = _topics()
    if not pages:
        return "(No topic page in this checkout yet.)\n"
    body = "\n".join(f"   {p}" for p in pages)
    return f".. toctree::\n   :maxdepth: 1\n\n{body}\n"


def _drop_builtin_docstrings(app, what, name, obj, options, lines):
    """A module constant without a ``#:`` comment would show its *type's* docstring
    (``dict``'s, with its ``**kwargs``, is not even valid reST): show nothing instead."""
    if what in ("data", "attribute") and type(obj).__module__ == "builtins" and lines:
        doc = type(obj).__doc__
        doc = doc.strip().splitlines() if isinstance(doc, str) else []  # may be a descriptor
        if doc and lines[0].strip() == doc[0].strip():
            lines[:] = []


_CITATION = re.compile(r"docs/papers\.md(?P<sep>,? \(?)(?P<label>(?:EK|[FKRITEC])[1-5])\b")


def _link_formula_citations(app, what, name, obj, options, lines):
    """In docstrings, ``docs/papers.md (K2)`` becomes a link to the formula sheet and to
    the anchor of its first label. Text inside backticks, doctests and literal blocks is
    left alone."""
    literal_indent = None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if line.strip() and indent <= literal_indent:
                literal_indent = None
            else:
                continue
        if line.rstrip().endswith("::"):
            literal_indent = indent
        if line.lstrip().startswith((">>>", "...")) or "papers.md" not in line:
            continue

        def link(m, line=line):
            if line[: m.start()].count("`") % 2:  # inside a literal or a role
                return m.group(0)
            label = m.group("label")
            return (f":doc:`docs/papers.md </papers>`{m.group('sep')}"
                    f":ref:`{label} <eq-{label.lower()}>`")

        lines[i] = _CITATION.sub(link, line)


def _source_read(app, docname, source):
    if docname == "topics":
        source[0] = source[0].replace(".. fimlab-topics-toctree::\n", _topics_toctree())


_write_api()


def _public_bases(app, name, obj, options, bases):
    """Show a class's nearest *public* ancestors instead of private base classes
    (``_Base`` has no page to link to): each private base is replaced by the first class
    of its MRO whose name has no leading underscore."""
    public = []
    for base in bases:
        for cls in getattr(base, "__mro__", (base,)):
            if not getattr(cls, "__name__", "_").startswith("_"):
                if cls not in public:
                    public.append(cls)
                break
    bases[:] = public


def setup(app):
    app.connect("source-read", _source_read)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-docstring", _link_formula_citations)
    app.connect("autodoc-process-docstring", _drop_builtin_docstrings, priority=100)


# -- the `fimlab-cli-help` directive: a subcommand's --help, as this checkout prints it --
def _cli_help(command: str) -> str | None:
    """``fimlab COMMAND --help`` as text, or ``None`` if the subcommand is not available."""
    import contextlib

    from fimlab import cli

    module = cli.SUBCOMMANDS.get(command, (None,))[0]
    if module is None or not cli._available(module):
        return None
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            try:
                cli.main([command, "--help"])
            except SystemExit:
                pass
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return buf.getvalue().rstrip()


def _make_cli_directive():
    from docutils import nodes
    from docutils.parsers.rst import Directive

    class CliHelp(Directive):
        required_arguments = 1

        def run(self):
            command = self.arguments[0]
            text = _cli_help(command)
            if text is None:
                para = nodes.paragraph(
                    text=f"(`fimlab {command}` is not part of this checkout yet: its "
                    "options appear here once its module is.)"
                )
                return [para]
            block = nodes.literal_block(text, text)
            block["language"] = "text"
            return [block]

    return CliHelp


_setup_base = setup


def setup(app):  # noqa: F811 - extends the setup above
    _setup_base(app)
    app.add_directive("fimlab-cli-help", _make_cli_directive())
