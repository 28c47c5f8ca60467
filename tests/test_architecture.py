"""The package's architecture, checked on its source (issue 14): no import cycle, no
module reaching into another module's private names, no module past 800 lines.

Every module under ``fimlab/`` is parsed with :mod:`ast` (nothing is imported). The
import graph holds every ``import``/``from ... import`` of a fimlab module, relative or
absolute, at module level or inside a function (a function-level import only delays a
cycle, it does not remove it); imports under ``if TYPE_CHECKING:`` are left out (they
never run).

Private names: a module may not import ``_name`` from another fimlab module, nor read
``alias._name`` through a module it imported, nor call/read a private attribute
``obj._name`` that only classes of *other* modules define (``FisherOperator._U`` from
a coarse space, say). Allowed: private helper *modules* (a module path with a component
starting with ``_``, such as ``fimlab._validation``, ``fimlab._kernels`` or
``fimlab.kron._checks``) and everything in them; a package's ``__init__`` re-exporting
its own submodules' names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fimlab"
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _is_private_module(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__")
               for part in name.split(".")[1:])


def _is_private_name(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _type_checking_nodes(tree) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            name = t.id if isinstance(t, ast.Name) else getattr(t, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def _resolve_from(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from X import ...`` reads from (None: not fimlab)."""
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = module if _is_package(module) else module.rsplit(".", 1)[0]
        parts = pkg.split(".")
        if node.level - 1 > len(parts) - 1:
            return None
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return base if base == "fimlab" or base.startswith("fimlab.") else None


def _existing(name: str) -> str | None:
    """``name`` or its longest prefix that is a fimlab module."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str):
    """``(target module, imported name or None, line)`` for every fimlab import, and the
    local aliases bound to fimlab modules (``{alias: module}``)."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_nodes(tree)
    out, aliases = [], {}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "fimlab" or a.name.startswith("fimlab."):
                    target = _existing(a.name)
                    if target:
                        out.append((target, None, node.lineno))
                        if a.asname:
                            aliases[a.asname] = target
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            if base is None or _existing(base) is None:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:  # ``from pkg import submodule``
                    out.append((sub, None, node.lineno))
                    aliases[a.asname or a.name] = sub
                else:
                    out.append((_existing(base), a.name, node.lineno))
    return out, aliases, tree


def _graph():
    g = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in _imports(m)[0]:
            if target != m:
                g[m].add(target)
    return g


def _cycles(g) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _private_attrs_defined(tree) -> set[str]:
    """Private names a module's classes define (methods, class attributes and
    ``self._x = ...``) and private module-level names."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if _is_private_name(n)}


def _private_violations() -> list[str]:
    parsed = {m: _imports(m) for m in MODULES}
    defined = {m: _private_attrs_defined(parsed[m][2]) for m in MODULES}
    elsewhere: dict[str, set[str]] = {}
    for m, names in defined.items():
        for n in names:
            elsewhere.setdefault(n, set()).add(m)
    bad = []
    for m, (imps, aliases, tree) in parsed.items():
        rel = MODULES[m].relative_to(PKG.parent)
        own_pkg = m if _is_package(m) else None
        # (1) ``from other import _name``
        for target, name, line in imps:
            if name is None or not _is_private_name(name) or target == m:
                continue
            if _is_private_module(target):
                continue
            if own_pkg and target.startswith(own_pkg + "."):
                continue  # a package re-exporting its submodules' names
            bad.append(f"{rel}:{line}: imports the private name {name!r} from {target}")
        # (2) ``alias._name`` through an imported fimlab module; (3) ``obj._name`` that
        # only other modules' classes define
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private_name(node.attr)):
                continue
            v = node.value
            if isinstance(v, ast.Name) and v.id in aliases:
                target = aliases[v.id]
                if target != m and not _is_private_module(target):
                    bad.append(f"{rel}:{node.lineno}: reads {v.id}.{node.attr}, a private "
                               f"name of {target}")
                continue
            if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                continue
            if isinstance(v, ast.Call) and getattr(v.func, "id", None) == "super":
                continue
            if node.attr in defined[m]:
                continue  # the module's own private attribute (or one it overrides)
            owners = {o for o in elsewhere.get(node.attr, ()) if not _is_private_module(o)}
            if owners:
                bad.append(f"{rel}:{node.lineno}: reads .{node.attr}, a private attribute "
                           f"of a class of {', '.join(sorted(owners))}")
    return bad


# -- the rules ----------------------------------------------------------------------------
def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among fimlab modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_no_private_reach_in():
    bad = _private_violations()
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_no_module_past_800_lines():
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by idea): " + ", ".join(
        f"{k} ({v})" for k, v in sorted(long.items()))


# -- the checker itself (so the rules above can fail) --------------------------------------
def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve():
    node = ast.parse("from ..backend import vec").body[0]
    assert _resolve_from("fimlab.kron.algebra", node) == "fimlab.backend"
    node = ast.parse("from . import krylov").body[0]
    assert _resolve_from("fimlab.kron", node) == "fimlab.kron"
    assert _resolve_from("fimlab.kron.gram", node) == "fimlab.kron"


@pytest.mark.parametrize("name,private", [
    ("fimlab._validation", True), ("fimlab.kron._checks", True),
    ("fimlab._kernels.numba_impl", True), ("fimlab.kron.krylov", False),
    ("fimlab.__main__", False),
])
def test_private_module_rule(name, private):
    assert _is_private_module(name) is private


def test_graph_has_the_known_edges():
    g = _graph()
    assert "fimlab.kron.krylov" in g["fimlab.kron.gram"]  # relative, module level
    assert "fimlab.kron.krylov" in g["fimlab.metrics"]  # function-level import
