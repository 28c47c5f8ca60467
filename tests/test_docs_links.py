"""The documentation's links: sources (always) and the built site (when it exists).

Without a build:

- no page under ``docs/``, no docstring of ``fimlab/``, no tutorial and not the README
  cites a file that is not part of the documentation (the engineers' ``DESIGN.md`` and
  ``PAPERS.md``), and every relative path a page links to, includes or plots exists;
- every formula label that a docstring cites on the formula sheet (``docs/papers.md
  (K2)``, ``docs/papers.md R1-R4``, ``docs/papers.md methods table``) is an anchor of
  ``docs/papers.md``;
- every DOI and arXiv link of the documentation is well-formed.

With a build (``docs/_build/html``, from ``make -C docs html``; skipped otherwise): every
internal link of every page of the built site points to a file that exists and, when it
has a ``#fragment``, to an ``id`` on that page. Offline: external links are only checked
for form, never fetched.

The taught pages (``TAUGHT``) write their formulas as maths: no code span and no
plain-text block of Unicode maths. Opt-in (``FIMLAB_DOCS_BROWSER=1``, a headless Chromium
and a built site): no display equation of the theory and topic pages is wider than the
article column at 1280 and 800 pixels.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD = DOCS / "_build" / "html"
PAPERS = DOCS / "papers.md"

#: files that exist for the project's engineers but are not part of the documentation
NOT_DOCUMENTATION = ("DESIGN.md", "PAPERS.md", "STYLE.md")


def _doc_sources() -> list[Path]:
    skip = {"_build", "auto_examples", "generated", "_templates"}
    return sorted(
        p for p in DOCS.rglob("*")
        if p.suffix in (".rst", ".md") and not skip & set(p.relative_to(DOCS).parts)
        and p.name != "README.md"
    )


def _code_sources() -> list[Path]:
    return sorted([*(ROOT / "fimlab").rglob("*.py"), *(ROOT / "examples").glob("*.py"),
                   *DOCS.rglob("*.py")]) + [ROOT / "README.md"]


# -- sources ------------------------------------------------------------------------------
def test_there_are_doc_pages():
    names = {p.name for p in _doc_sources()}
    assert {"papers.md", "notation.rst", "bibliography.rst"} <= names, names


@pytest.mark.parametrize("name", NOT_DOCUMENTATION)
def test_no_page_or_docstring_cites_an_engineers_file(name):
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in [*_doc_sources(), *_code_sources()]
        if "_build" not in p.parts and "auto_examples" not in p.parts
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if name in line
    ]
    assert not offenders, f"{name} is not part of the documentation; cited at {offenders}"


_RST_PATHS = re.compile(r"^\s*\.\. (?:plot|include|literalinclude|image|figure)::\s+(\S+)",
                        re.M)
_MD_LINKS = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
_MD_IMAGES = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_DOC_ROLE = re.compile(r"[:{]doc[:}]`(?:[^`<]*<)?([^`>]+)>?`")


def _resolve(page: Path, target: str) -> list[Path]:
    """Candidate files for a link ``target`` written on ``page``."""
    base = DOCS if target.startswith("/") else page.parent
    t = (base / target.lstrip("/")).resolve()
    return [t, t.with_suffix(".rst"), t.with_suffix(".md"), Path(str(t) + ".rst"),
            Path(str(t) + ".md"), Path(str(t) + ".py")]


def _generated(target: str) -> bool:
    """Pages written at build time (API stubs, the executed tutorials)."""
    return "auto_examples" in target or "generated" in target or target.startswith("http")


@pytest.mark.parametrize("page", _doc_sources(), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_path_a_page_links_to_exists(page):
    text = page.read_text(encoding="utf-8")
    targets = _RST_PATHS.findall(text) + _DOC_ROLE.findall(text)
    if page.suffix == ".md":
        targets += _MD_LINKS.findall(text) + _MD_IMAGES.findall(text)
    missing = []
    for target in targets:
        if _generated(target) or target.startswith(("mailto:", "#")):
            continue
        if target.startswith("guide/") and "plot::" in text and page.suffix == ".rst":
            # plot directives resolve from the docs root
            if any(c.exists() for c in _resolve(DOCS / "x", target)):
                continue
        if not any(c.exists() for c in _resolve(page, target)):
            missing.append(target)
    assert not missing, f"{page.relative_to(DOCS)} links to missing files: {missing}"


def _anchors_of_papers() -> set[str]:
    text = PAPERS.read_text(encoding="utf-8")
    return {m.lower() for m in re.findall(r"^\(([A-Za-z0-9-]+)\)=\s*$", text, re.M)}


_LABEL = r"(?:EK|[FKRITEC])\d"
_RANGE = re.compile(rf"\b({_LABEL})\s*[-–]\s*({_LABEL})\b")
_SINGLE = re.compile(rf"\b({_LABEL})\b")
_NAMED = {"methods table": "methods-table", "coarse-space table": "coarse-space-table",
          "the experiments": "the-experiments", "error metrics": "error-metrics"}


def _expand(text: str) -> set[str]:
    labels = set()
    for a, b in _RANGE.findall(text):
        pa, na = re.match(r"([A-Z]+)(\d+)", a).groups()
        pb, nb = re.match(r"([A-Z]+)(\d+)", b).groups()
        assert pa == pb, f"range across prefixes: {a}-{b}"
        labels |= {f"{pa}{i}" for i in range(int(na), int(nb) + 1)}
    labels |= set(_SINGLE.findall(text))
    return labels


def _cited_on_formula_sheet() -> dict[str, set[str]]:
    """{anchor: {files citing it}} for the citations ``papers.md <labels>`` of the code."""
    cited: dict[str, set[str]] = {}
    for path in _code_sources():
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"papers\.md", text):
            # the citation runs to the closing bracket or the end of the sentence
            tail = re.split(r"[)\]]|\.\s|\n\s*\n", text[m.end(): m.end() + 120])[0]
            anchors = {f"eq-{lab.lower()}" for lab in _expand(tail)}
            anchors |= {a for k, a in _NAMED.items() if k in " ".join(tail.lower().split())}
            for a in anchors:
                cited.setdefault(a, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_the_code_cites_formula_labels():
    cited = _cited_on_formula_sheet()
    assert {"eq-k2", "eq-r3", "eq-f1", "eq-t4", "methods-table"} <= set(cited), sorted(cited)


def test_every_label_the_code_cites_is_an_anchor_of_the_formula_sheet():
    anchors = _anchors_of_papers()
    missing = {a: sorted(f) for a, f in _cited_on_formula_sheet().items() if a not in anchors}
    assert not missing, f"labels cited but not anchored on docs/papers.md: {missing}"


def test_label_extraction_on_known_citations():
    # the parser itself, on the forms the docstrings use
    assert _expand("K2-K4, I1") == {"K2", "K3", "K4", "I1"}
    assert _expand("E1–E5") == {f"E{i}" for i in range(1, 6)}
    assert _expand("EK1 and R4") == {"EK1", "R4"}
    assert _expand("K12x") == set()


_DOI = re.compile(r"^https://doi\.org/10\.\d{4,9}/[-._;()/:A-Za-z0-9]+$")
_ARXIV = re.compile(r"^https://arxiv\.org/abs/\d{4}\.\d{4,5}(v\d+)?$")


def _external_links(text: str) -> list[str]:
    return re.findall(r"https?://(?:dx\.)?(?:doi\.org|arxiv\.org)[^\s>`)\]\"']*", text)


def test_doi_and_arxiv_links_are_well_formed():
    links = [(p, u) for p in _doc_sources() for u in _external_links(p.read_text("utf-8"))]
    assert len(links) >= 10, "the bibliography gives DOI / arXiv links"
    bad = [f"{p.name}: {u}" for p, u in links if not (_DOI.match(u) or _ARXIV.match(u))]
    assert not bad, bad


def test_well_formed_link_patterns_reject_malformed_ones():
    assert _DOI.match("https://doi.org/10.1137/0724027")
    assert not _DOI.match("https://doi.org/1137/0724027")
    assert _ARXIV.match("https://arxiv.org/abs/1503.05671")
    assert not _ARXIV.match("https://arxiv.org/abs/1503.567")
    assert not _ARXIV.match("http://arxiv.org/abs/1503.05671")


# -- the built site -----------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and key == "href"
                                       and attrs.get("rel") in ("preload",)):
                self.hrefs.append(attrs[key])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def _site_pages() -> list[Path]:
    if not BUILD.is_dir():
        return []
    skip = {"_static", "_sources", "_images", "_downloads"}
    return sorted(p for p in BUILD.rglob("*.html") if not skip & set(p.relative_to(BUILD).parts))


needs_build = pytest.mark.skipif(
    not (BUILD / "index.html").exists(),
    reason="no built site: run `make -C docs html` (FIMLAB_FAST=1 for a fast build)",
)


def check_site(build: Path) -> list[str]:
    """Every broken internal link or anchor of the site under ``build``."""
    cache: dict[Path, _Links] = {}

    def links(path: Path) -> _Links:
        if path not in cache:
            cache[path] = _parse(path)
        return cache[path]

    broken = []
    skip = {"_static", "_sources", "_images", "_downloads"}
    for page in sorted(build.rglob("*.html")):
        if skip & set(page.relative_to(build).parts):
            continue
        for href in links(page).hrefs:
            parts = urlsplit(href)
            if parts.scheme or href.startswith(("//", "mailto:", "javascript:", "data:")):
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            where = f"{page.relative_to(build)} -> {href}"
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{where}: no such file")
                continue
            if parts.fragment and target.suffix == ".html":
                frag = unquote(parts.fragment)
                ids = links(target).ids
                if frag in ids:
                    continue
                # Sphinx's viewcode source listings (_modules/) write every back-link of
                # one source module with one module prefix (that of the first page that
                # documented it), so a function re-exported elsewhere, e.g.
                # fimlab.backend.vec documented as fimlab.kron.vec, gets "#fimlab.vec".
                # Accept those when the page documents the same name under another module.
                name = frag.rsplit(".", 1)[-1]
                if "_modules" in page.relative_to(build).parts and any(
                        i.endswith("." + name) for i in ids):
                    continue
                broken.append(f"{where}: no anchor #{parts.fragment}")
    return broken


def test_site_checker_finds_broken_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="sub/page.html#here">ok</a><a href="sub/page.html#gone">bad anchor</a>'
        '<a href="missing.html">bad file</a><a href="https://doi.org/10.1/x">external</a>'
        '<a href="#top">self</a><span id="top"></span>', encoding="utf-8")
    (tmp_path / "sub" / "page.html").write_text('<h1 id="here">x</h1><a href="../index.html">'
                                                'up</a>', encoding="utf-8")
    broken = check_site(tmp_path)
    assert len(broken) == 2, broken
    assert any("#gone" in b for b in broken) and any("missing.html" in b for b in broken)


@needs_build
def test_built_site_internal_links_and_anchors_resolve():
    broken = check_site(BUILD)
    assert not broken, f"{len(broken)} broken links in docs/_build/html:\n" + "\n".join(
        broken[:40])


@needs_build
def test_built_site_has_the_teaching_pages():
    for page in ("guide/notation.html", "bibliography.html", "papers.html",
                 "guide/theory/kpsvd_algorithms.html"):
        assert (BUILD / page).exists(), page
    ids = _parse(BUILD / "papers.html").ids
    assert {"eq-k2", "eq-i1", "eq-t4", "methods-table"} <= ids


# -- formulas are typeset on the taught pages ----------------------------------------------
#: The pages (or sections, from one heading to the next one named) that teach the methods,
#: re-read as a student: their formulas are typeset maths, never code spans or plain-text
#: blocks of Unicode maths. The measurement pages (conv.md, performance.md, sweep.md) are
#: held to it too; of results.md only the sections its teachers rewrote.
TAUGHT = [
    ("guide/*.rst", None, None), ("guide/theory/*.rst", None, None),
    ("kpsvd.md", None, None), ("papers.md", None, None), ("two_level.md", None, None),
    ("backend.md", None, None), ("conv.md", None, None), ("performance.md", None, None),
    ("sweep.md", None, None), ("index.rst", None, None), ("topics.rst", None, None),
    ("results.md", None, None),
]
#: characters that only a formula uses (transpose, powers, norms, sums, Greek symbols, ...)
_FORMULA_CHARS = re.compile(r"[ᵀ²³⁻¹₀₁₂‖Σ⊗√∘×λσζθāĀ𝔈≤≥∈⟨⟩]")
_CODE_SPAN = re.compile(r"(?<!`)(`{1,2})(?!`)([^`\n]+?)(?<!`)\1(?!`)")
#: a code span that is a command line may name a symbol as an option value
_COMMAND = re.compile(r"^(fimlab|python|OMP_|PYTHONPATH|--)")


def _prose(text: str, suffix: str) -> list[tuple[int, str]]:
    """The lines of a page outside code: fenced / indented literal blocks and doctests."""
    out, fence, literal = [], False, None
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if stripped.startswith("```"):
            fence = not fence
            continue
        if fence or stripped.startswith((">>>", "...")):
            continue
        if literal is not None:  # inside an rst literal block: until the indentation drops
            if not stripped or indent > literal:
                continue
            literal = None
        if suffix == ".rst" and (line.rstrip().endswith("::") or
                                 re.match(r"\s*\.\. (code-block|code|math|plot)::", line)):
            literal = indent
            if ".. math::" in line or ".. plot::" in line:
                continue
        out.append((i, line))
    return out


def formula_offences(text: str, suffix: str) -> list[str]:
    """Formulas written as code spans, and (Markdown) plain-text indented formula blocks."""
    bad, previous = [], ""
    for i, line in _prose(text, suffix):
        for m in _CODE_SPAN.finditer(line):
            span = m.group(2)
            if _FORMULA_CHARS.search(span) and not _COMMAND.match(span):
                bad.append(f"{i}: code-formatted formula {m.group(0)}")
        if (suffix == ".md" and line.startswith("    ") and not previous.strip()
                and _FORMULA_CHARS.search(line) and "`" not in line):
            bad.append(f"{i}: plain-text formula block {line.strip()[:60]}")
        previous = line
    return bad


def _section(text: str, start: str | None, end: str | None) -> str:
    """The part of ``text`` from the heading ``start`` to the heading ``end`` (blank lines
    keep the line numbers of the page)."""
    lines = text.splitlines()
    a = next(i for i, s in enumerate(lines) if s.startswith(start)) if start else 0
    b = next(i for i, s in enumerate(lines) if s.startswith(end)) if end else len(lines)
    return "\n".join([""] * a + lines[a:b])


def _taught_pages() -> list[tuple[Path, str | None, str | None]]:
    return [(p, a, b) for pattern, a, b in TAUGHT for p in sorted(DOCS.glob(pattern))]


def test_taught_pages_are_found():
    names = {str(p.relative_to(DOCS)) for p, _, _ in _taught_pages()}
    assert {"kpsvd.md", "conv.md", "performance.md", "sweep.md", "guide/theory/kfc.rst",
            "guide/notation.rst"} <= names


@pytest.mark.parametrize("page, start, end", _taught_pages(),
                         ids=lambda v: str(v.relative_to(DOCS)) if isinstance(v, Path) else "")
def test_taught_pages_typeset_their_formulas(page, start, end):
    text = _section(page.read_text(encoding="utf-8"), start, end)
    bad = formula_offences(text, page.suffix)
    assert not bad, (f"{page.relative_to(ROOT)}: write formulas as maths ($...$ / "
                     f":math:`...`), not code:\n" + "\n".join(bad[:20]))


def test_formula_check_finds_code_formatted_formulas():
    md = ("The block `F_l = (1/N) Σ_n vec(J_n) vec(J_n)ᵀ` and ``‖F‖_F`` are bad;\n"
          "`fl.KPSVD(batch)` and $\\|F\\|_F$ are fine, so is `fimlab study --damping λ`.\n"
          "\n"
          "    A = (1/N) Σ_n ā_n ā_nᵀ\n"
          "\n"
          "```python\n"
          "x = 1  # σ₁ in a code block is fine\n"
          "```\n")
    bad = formula_offences(md, ".md")
    assert len(bad) == 3, bad
    assert "1: code-formatted" in bad[0] and "4: plain-text" in bad[2]
    rst = ("Prose with ``A ⊗ G`` is bad.\n"
           "\n"
           ".. code-block:: python\n"
           "\n"
           "   y = A ⊗ G  # fine in code\n"
           "\n"
           ">>> σ = 1  # fine in a doctest\n"
           "\n"
           ".. math::\n"
           "\n"
           "   \\sigma_1\n")
    assert formula_offences(rst, ".rst") == ["1: code-formatted formula ``A ⊗ G``"]
    assert _section("a\n## one\nb\n## two\nc", "## one", "## two") == "\n## one\nb"


# -- the rendered pages (opt-in: a headless browser) ----------------------------------------
_BROWSER = next((b for b in ("chromium", "chromium-browser", "chrome-headless-shell",
                             "google-chrome") if shutil.which(b)), None)
#: the pages whose display equations must fit the article column at 1280 and 800 pixels
RENDERED = ["conv.html", "kpsvd.html", "papers.html", "two_level.html",
            "guide/notation.html", "guide/theory/fisher.html", "guide/theory/kfac.html",
            "guide/theory/kpsvd.html", "guide/theory/kpsvd_algorithms.html",
            "guide/theory/two_level.html", "guide/theory/kfc.html",
            "guide/theory/eigencorrected.html", "guide/theory/natural_gradient.html"]
_HARNESS = """<html><body><pre id="out">pending</pre>
<iframe id="f" style="width:%dpx;height:2000px"></iframe><script>
const f = document.getElementById('f'); f.src = %r;
f.onload = () => setTimeout(() => {
  const d = f.contentDocument, res = [];
  d.querySelectorAll('.bd-article mjx-container[display="true"]').forEach(e => {
    if (e.scrollWidth > e.clientWidth + 2)
      res.push(e.scrollWidth + '>' + e.clientWidth + ' ' + e.textContent.slice(0, 80));
  });
  const n = d.querySelectorAll('mjx-container').length;
  document.getElementById('out').textContent = 'DONE ' + n + '\\n' + res.join('\\n');
}, 4000);
</script></body></html>"""


def rendered_overflows(page: Path, width: int, tmp: Path) -> tuple[int, list[str]]:
    """(number of rendered formulas, display equations wider than their box) of ``page``
    in a ``width``-pixel window, after MathJax has run."""
    harness = tmp / f"harness_{width}.html"
    harness.write_text(_HARNESS % (width, page.resolve().as_uri()), encoding="utf-8")
    out = subprocess.run(
        [_BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu",
         "--allow-file-access-from-files", "--virtual-time-budget=15000", "--dump-dom",
         harness.as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<pre id="out">DONE (\d+)\n?(.*?)</pre>', out, re.S)
    assert m, f"the harness did not finish on {page}: {out[-300:]}"
    lines = [s for s in m.group(2).replace("&gt;", ">").splitlines() if s.strip()]
    return int(m.group(1)), lines


@pytest.mark.skipif(not (_BROWSER and os.environ.get("FIMLAB_DOCS_BROWSER")
                         and (BUILD / "index.html").exists()),
                    reason="opt-in: FIMLAB_DOCS_BROWSER=1, a headless chromium and a built site")
@pytest.mark.parametrize("width", [1280, 800])
def test_rendered_display_equations_fit_the_column(width, tmp_path):
    problems = []
    for name in RENDERED:
        n, wide = rendered_overflows(BUILD / name, width, tmp_path)
        if n == 0:
            problems.append(f"{name}: no formula rendered (MathJax did not run?)")
        problems += [f"{name} at {width} px: {w}" for w in wide]
    assert not problems, "\n".join(problems)
