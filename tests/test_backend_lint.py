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
for NumPy inputs); on a ``def`` line it exempts the whole function (e.g. host-side work
on a few scalars, such as the eigenvalues of a small tridiagonal matrix); the reason is
required.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fimlab"

#: NumPy-first modules (docs/backend.md says why): orchestration, I/O, host-side work.
#: Every other module of the package is checked, so a new core module is covered the
#: day it lands; a new NumPy-first module is added here with its reason.
NUMPY_FIRST = {
    "__init__.py", "__main__.py", "_errors.py",  # no arrays
    "cli.py", "study.py", "train.py", "train_config.py", "train_state.py", "sweep.py",
    "plotting.py", "compare.py", "_frontend.py",  # orchestration, I/O, host-side results
    "plotting_train.py", "plotting_study.py", "study_models.py", "study_spectra.py",
    "study_cli.py",
    "datasets.py", "image_datasets.py", "_datafiles.py",  # data is loaded on the host,
    # moved by the model
    "_kernels/numba_impl.py",  # Numba compiles for the CPU; its twin serves other backends
}
NUMPY_FIRST_DIRS = ("optim/", "experiments/", "sweep/", "torch/", "jax/")  # optimizers, the training loop, sweeps
#: modules written against ``xp`` that may also use NumPy on the host (model
#: initialisation, host random draws, the backend's own conversions): rule 1 only
HOST_OK = {
    "backend.py",
    "_kernels/__init__.py",  # the kernel dispatcher: np.* only on the Numba path, which
    # it takes for NumPy float arrays alone (the twins in numpy_impl.py are checked)
}
HOST_OK_DIRS = ("models/", "testing/")  # testing/: host NumPy oracles and comparisons;
# its strategies draw on the host and move arrays with from_host(..., device=...)

#: Functions of core modules whose NumPy code acts on host arrays by design: small
#: host-side data (a few singular values, the small bidiagonal/tridiagonal matrices of
#: Lanczos, host random draws before they are moved) or a fast path taken for NumPy
#: inputs only. The ``np.*``, array-method and ``order=`` rules are lifted for them (the
#: device and einsum rules stay); a NumPy call on a device array there still fails the
#: ``array_api_strict`` runs (``"device1"`` arrays refuse conversion to NumPy).
HOST_FUNCTIONS = {
    "batch.py": {
        "FactorBatch.jacobian_matrix": "NumPy-only branch: outer products written in place",
    },
    "curvature.py": {
        "_dense_syrk": "NumPy-only: BLAS syrk assembly of the dense Fisher",
    },
    "metrics.py": {
        "_lanczos_extreme": "the Lanczos tridiagonal and its Ritz values; host draw",
    },
    "kron/krylov.py": {
        "_random_vector": "host draw, then moved",
        "_GK.__init__": "alpha/beta of the bidiagonal live on the host",
        "_GK.bidiagonal": "the small bidiagonal B_k",
        "_GK.ritz": "SVD of the small B_k",
        "_GK.residual": "Ritz residuals of B_k",
        "_bidiag_top_svd": "tridiagonal eigenproblem of B_k",
        "lanczos_svd": "the k singular values and B_k's Ritz data",
        "_bidiag_top": "tridiagonal eigenproblem of the small B_j (host)",
        "gram_golub_kahan": "alpha/beta, the Ritz residual checks and the bidiagonal on "
                            "the host",
        "lanczos": "the tridiagonal T, its Ritz values and residuals",
    },
    "kron/gram.py": {
        "RearrangedGram.top": "the k singular values",
        "RearrangedGram._top_dense": "the k singular values",
        "RearrangedGram._top_gk": "the k singular values, a k-vector mask then moved",
        "RearrangedGram.golub_kahan": "host draw of the start (then moved); alpha/beta, "
                                      "the small bidiagonal and its SVD on the host",
        "RearrangedGram.numerical_rank": "the k singular values",
        "RearrangedGram.lanczos": "the k singular values, a k-vector mask then moved",
        "GramCoordinates.random": "host draw, then moved",
    },
    "kron/algebra.py": {
        "_inv_spd_lapack": "NumPy-only branch: LAPACK Cholesky inverse (potrf/pocon/potri)",
        "_simultaneous_diagonalisation": "NumPy-only branch: LAPACK sygvd; error numbers",
    },
    "approx/coarse.py": {
        "CoarseSpace._selection": "a one-hot selection built on the host, then moved",
    },
    "approx/kpsvd.py": {
        "KPSVD._exact": "the k singular values",
        "Lanczos._paper": "host draw, then moved",
    },
}


def _all_modules():
    out = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).as_posix()
        if rel in NUMPY_FIRST or rel.startswith(NUMPY_FIRST_DIRS):
            continue
        out.append(p)
    return out


def _is_core(path) -> bool:
    rel = path.relative_to(PKG).as_posix()
    return not (rel in HOST_OK or rel.startswith(HOST_OK_DIRS))


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
                       "diagonal"}
#: receivers whose methods of these names are fine (modules and fimlab objects)
RECEIVER_OK = {"xp", "np", "numpy", "math", "self", "super", "sl", "scipy", "kw",
               "kwargs", "warnings", "os", "B", "_kron", "op", "F", "Ft", "Fb", "Ftb"}
OPT_OUT = re.compile(r"#\s*xp:\s*\S")


def _receiver(node) -> str | None:
    """The name at the root of ``a.b.c`` (``a``), or None for calls/subscripts."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _chain(node) -> list[str]:
    """``np.linalg.eigh`` -> ``["linalg", "eigh"]`` (the attributes after the root)."""
    out = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    return out[::-1]


def _walk_checked(tree, lines):
    """``(call node, enclosing qualnames)`` to check: all calls but those on a line marked
    ``# xp: <reason>``, or inside a function whose ``def`` line is so marked."""
    stack = [(tree, ())]
    while stack:
        node, scope = stack.pop()
        line = getattr(node, "lineno", None)
        if line is not None and OPT_OUT.search(lines[line - 1]):
            continue
        if isinstance(node, ast.Call):
            yield node, scope
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{scope[-1]}.{node.name}" if scope else node.name
            scope = (*scope, name)
        stack.extend((ch, scope) for ch in ast.iter_child_nodes(node))


def check_source(src: str, core: bool, host_functions=()) -> list[tuple[int, str]]:
    """Findings ``(line, message)`` of the portability rules in ``src``; NumPy code
    (``np.*``, array methods, ``order=``) inside the functions named in
    ``host_functions`` (qualified names) is allowed."""
    tree = ast.parse(src)
    lines = src.splitlines()
    found = []
    for node, scope in _walk_checked(tree, lines):
        line = node.lineno
        host = any(q in host_functions for q in scope)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr, root = node.func.attr, _receiver(node.func.value)
            direct = node.func.value
            if attr in CREATION and root not in NUMPY_NAMES and not (
                isinstance(direct, ast.Name) and direct.id in {"self", "cls"}
            ):
                if not any(k.arg == "device" for k in node.keywords):
                    found.append((line, f"{ast.unparse(node.func)}(...) without device="))
            if core:
                chain = _chain(node.func)
                if root in NUMPY_NAMES and chain[0] not in NUMPY_OK and not host:
                    found.append((line, f"np.{'.'.join(chain)}(...) in the array-API core"))
                if attr == "einsum" and not (isinstance(direct, ast.Name)
                                             and direct.id in {"B", "backend"}):
                    found.append((line, "einsum: use fimlab.backend.einsum"))
                if attr in NONSTANDARD_METHODS and root not in RECEIVER_OK and not host:
                    found.append((line, f"array method .{attr}() is not in the array API "
                                        f"standard: use xp.{attr}"))
                if any(k.arg == "order" for k in node.keywords) and not host:
                    found.append((line, "order= (use backend.vec/unvec)"))
    return sorted(found)


def _findings(core_rules: bool):
    out = []
    for path in _all_modules():
        if core_rules and not _is_core(path):
            continue
        rel = path.relative_to(PKG.parent)
        rel_pkg = path.relative_to(PKG).as_posix()
        found = check_source(path.read_text(), core_rules, HOST_FUNCTIONS.get(rel_pkg, {}))
        out += [f"{rel}:{line}: {msg}" for line, msg in found]
    return out


def test_core_modules_are_checked():
    core = {p.relative_to(PKG).as_posix() for p in _all_modules() if _is_core(p)}
    assert {"batch.py", "curvature.py", "operators.py", "kron/algebra.py", "kron/krylov.py",
            "kron/gram.py", "kron/rearranged.py", "kron/rearrange.py", "metrics.py",
            "_validation.py", "approx/kfac.py"} <= core
    assert not core & NUMPY_FIRST


def test_array_creation_passes_the_device():
    bad = _findings(core_rules=False)
    assert not bad, "array creation without device=:\n" + "\n".join(bad)


def test_core_is_array_api_only():
    bad = _findings(core_rules=True)
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
    ("def f(T):  # xp:\n    return np.linalg.eigh(T)", True, "np.linalg"),  # no reason
    ("def f(x):\n    y = xp.ones(3)\n    return x", False, "without device="),
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
    "def f(T):  # xp: host-side tridiagonal\n    return np.linalg.eigh(T)",
    "z = xp.zeros_like(x)",
])
def test_checker_passes(src):
    assert check_source(src, core=True) == []


def test_host_functions_lift_only_the_host_rules():
    src = "class C:\n    def f(self, x):\n        s = np.sum(x)\n        return xp.eye(3)\n"
    assert [m for _, m in check_source(src, True)] == [
        "np.sum(...) in the array-API core", "xp.eye(...) without device="]
    assert [m for _, m in check_source(src, True, {"C.f"})] == ["xp.eye(...) without device="]
    assert len(check_source(src, True, {"f"})) == 2  # qualified names only


def test_host_numpy_is_fine_outside_the_core():
    assert check_source("W = np.zeros((3, 4))", core=False) == []  # e.g. model init
    assert check_source("W = np.zeros((3, 4))", core=True)
