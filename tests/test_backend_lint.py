"""Lint: the numerical core creates arrays on its inputs' device, and makes no hidden
NumPy-only call (issue 7; DESIGN.md principle 5).

An AST scan of fimlab's source, complementing the ``array_api_strict`` runs of
``test_xp_core.py`` (which catch what is executed; this catches what is written):

1. array creation ``xp.zeros/ones/empty/full/eye/arange/linspace/asarray(...)`` through a
   namespace other than ``np`` must pass ``device=`` (else the array lands on the
   library's default device, e.g. GPU 0 or the CPU, not beside the inputs);
2. in the linear-algebra core (factor batches onwards), no call of ``np.*`` on arrays,
   no array *methods* outside the standard (``x.reshape``, ``x.sum``, ``x.T`` is
   allowed), no ``einsum`` other than :func:`fimlab.backend.einsum`, no ``order=``.

A line may opt out with a trailing ``# xp: <reason>`` comment (e.g. code reached only
for NumPy inputs); the reason is required.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fimlab"

#: modules that create arrays through ``xp``: rule 1 applies
DEVICE_RULE = ["backend.py", "batch.py", "curvature.py", "operators.py", "kron.py",
               "metrics.py", "_validation.py", "approx/*.py", "models/*.py",
               "_kernels/numpy_impl.py"]
#: the linear-algebra core (factor batches onwards): rules 1 and 2 apply
CORE = ["batch.py", "curvature.py", "operators.py", "kron.py", "metrics.py",
        "_validation.py", "approx/*.py"]

CREATION = {"zeros", "ones", "empty", "full", "eye", "arange", "linspace", "asarray"}
NUMPY_NAMES = {"np", "numpy"}
#: ``np.<attr>`` uses that never touch an array of another backend
NUMPY_OK = {"random", "finfo", "iinfo", "dtype", "ndarray", "integer", "floating",
            "generic", "float32", "float64", "int64", "newaxis", "pi", "inf", "nan"}
#: array methods that the array API standard does not have (use ``xp.<function>``)
NONSTANDARD_METHODS = {"reshape", "ravel", "flatten", "astype", "transpose", "swapaxes",
                       "sum", "mean", "max", "min", "prod", "dot", "copy", "tolist",
                       "item", "squeeze", "conj", "any", "all", "nonzero", "fill",
                       "cumsum", "argmax", "argmin", "clip", "round", "trace",
                       "diagonal", "get"}
#: receivers whose methods of these names are fine (modules and fimlab objects)
RECEIVER_OK = {"xp", "np", "numpy", "math", "self", "super", "sl", "scipy", "kw",
               "kwargs", "warnings", "os", "B", "_kron", "op", "F", "Ft", "Fb", "Ftb"}
OPT_OUT = re.compile(r"#\s*xp:\s*\S")


def _modules(patterns):
    out = []
    for pat in patterns:
        out.extend(sorted(PKG.glob(pat)))
    return [p for p in out if p.name != "__init__.py" or p.stat().st_size > 0]


def _receiver(node) -> str | None:
    """The name at the root of ``a.b.c`` (``a``), or None for calls/subscripts."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def check_source(src: str, core: bool) -> list[tuple[int, str]]:
    """Findings ``(line, message)`` of the portability rules in ``src``."""
    tree = ast.parse(src)
    lines = src.splitlines()
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is not None and OPT_OUT.search(lines[line - 1]):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr, root = node.func.attr, _receiver(node.func.value)
            direct = node.func.value
            if attr in CREATION and root not in NUMPY_NAMES and not (
                isinstance(direct, ast.Name) and direct.id in {"self", "cls"}
            ):
                if not any(k.arg == "device" for k in node.keywords):
                    found.append((line, f"{ast.unparse(node.func)}(...) without device="))
            if core:
                if root in NUMPY_NAMES and isinstance(direct, ast.Name) \
                        and attr not in NUMPY_OK:
                    found.append((line, f"np.{attr}(...) in the array-API core"))
                if attr == "einsum" and not (isinstance(direct, ast.Name)
                                             and direct.id in {"B", "backend"}):
                    found.append((line, "einsum: use fimlab.backend.einsum"))
                if attr in NONSTANDARD_METHODS and root not in RECEIVER_OK:
                    found.append((line, f"array method .{attr}() is not in the array API "
                                        f"standard: use xp.{attr}"))
                if any(k.arg == "order" for k in node.keywords):
                    found.append((line, "order= (use backend.vec/unvec)"))
    return sorted(found)


def _findings(patterns, core):
    out = []
    for path in _modules(patterns):
        rel = path.relative_to(PKG.parent)
        out += [f"{rel}:{line}: {msg}" for line, msg in check_source(path.read_text(), core)]
    return out


def test_core_modules_exist():
    names = {p.relative_to(PKG).as_posix() for p in _modules(CORE)}
    assert {"batch.py", "curvature.py", "operators.py", "kron.py", "metrics.py",
            "approx/kfac.py"} <= names


def test_array_creation_passes_the_device():
    bad = _findings(DEVICE_RULE, core=False)
    assert not bad, "array creation without device=:\n" + "\n".join(bad)


def test_core_is_array_api_only():
    bad = _findings(CORE, core=True)
    assert not bad, "non-portable calls in the core:\n" + "\n".join(bad)


# -- the checker itself catches what it should (so the tests above can fail) -------------
@pytest.mark.parametrize("src,core,expect", [
    ("out = xp.zeros((3, 3), dtype=A.dtype)", False, "without device="),
    ("I = xp.eye(n)", False, "without device="),
    ("v = self.xp.asarray(x)", False, "without device="),
    ("v = np.sqrt(x)", True, "np.sqrt"),
    ("y = x.reshape(3, 4)", True, ".reshape()"),
    ("y = (A @ B).sum()", True, ".sum()"),
    ("y = xp.einsum('ij->j', x)", True, "einsum"),
    ("y = xp.reshape(x, (3, 4), order='F')", True, "order="),
])
def test_checker_flags(src, core, expect):
    found = check_source(src, core)
    assert found and expect in found[0][1]


@pytest.mark.parametrize("src", [
    "out = xp.zeros((3, 3), dtype=A.dtype, device=device_of(A))",
    "rng = np.random.default_rng(0)",
    "y = xp.reshape(x, (3, 4))",
    "y = B.einsum('ij->j', x)",
    "v = np.asarray(x)  # xp: reached for NumPy inputs only",
    "z = xp.zeros_like(x)",
])
def test_checker_passes(src):
    assert check_source(src, core=True) == []


def test_host_numpy_is_fine_outside_the_core():
    assert check_source("W = np.zeros((3, 4))", core=False) == []  # e.g. model init
    assert check_source("W = np.zeros((3, 4))", core=True)
