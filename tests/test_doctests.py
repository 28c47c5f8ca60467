"""The Examples sections of fimlab's docstrings run, as doctests.

Every module of the package is imported and ``doctest.testmod`` runs its examples with
``NORMALIZE_WHITESPACE | ELLIPSIS``. A module that cannot be imported fails the test
(an optional dependency that is missing is reported as such, not hidden) — except the
front-ends ``fimlab.torch`` and ``fimlab.jax``, skipped when their framework is not
installed (they exist to need it). The ``>>>``
examples of the user-guide pages (``docs/**/*.rst``) run the same way, so the guide's
code cannot go stale.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import fimlab

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(fimlab.__path__, prefix="fimlab.")
    if not m.name.rsplit(".", 1)[-1].startswith("__")
)
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
#: the front-ends and the framework each one needs
FRAMEWORKS = {"fimlab.torch": "torch", "fimlab.jax": "jax"}


def _framework(name):
    return next((fw for mod, fw in FRAMEWORKS.items()
                 if name == mod or name.startswith(mod + ".")), None)


def _importable(name) -> bool:
    fw = _framework(name)
    if fw is None:
        return True
    try:
        importlib.import_module(fw)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", ["fimlab", *MODULES])
def test_docstring_examples(name):
    if _framework(name):
        pytest.importorskip(_framework(name))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}, see above"


def _public_callables():
    import inspect

    out = []
    for name in fimlab.__all__:
        obj = getattr(fimlab, name)
        if inspect.ismodule(obj) or not callable(obj):
            continue  # modules are covered by their functions; constants have no example
        if inspect.isclass(obj) and issubclass(obj, (BaseException, Warning)):
            continue  # the errors are shown by the example of fimlab._errors
        out.append(name)
    return out


def _has_example(name) -> bool:
    tests = doctest.DocTestFinder(recurse=False).find(getattr(fimlab, name), name)
    return bool(tests and tests[0].examples)


@pytest.mark.parametrize("name", _public_callables())
def test_public_name_has_a_doctest_example(name):
    """Issue 8: every public function and class carries an example the suite runs."""
    assert _has_example(name), (
        f"fimlab.{name} has no '>>>' example in its docstring; add an Examples section"
    )


def test_public_api_has_examples_to_run():
    """The public classes and functions carry doctest examples (and they are collected)."""
    finder = doctest.DocTestFinder()
    n_examples = sum(
        len(t.examples) for name in MODULES if _importable(name)
        for t in finder.find(importlib.import_module(name))
    )
    assert n_examples >= 10, f"only {n_examples} docstring examples found in fimlab"


DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts
               and "generated" not in p.parts and "auto_examples" not in p.parts)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_user_guide_examples(page):
    result = doctest.testfile(str(page), module_relative=False, optionflags=FLAGS,
                              verbose=False, report=True, encoding="utf-8")
    assert result.failed == 0, f"{result.failed} example(s) failed in {page.name}, see above"
