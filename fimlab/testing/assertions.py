"""Assertions for curvature operators: compare a matrix-free operator with a dense
reference, and tolerances by dtype.

:func:`assert_operator_close` checks everything a user of an operator relies on —
products from the right and from the left, with a vector and with a matrix, the
adjoint (dot) test, symmetry, and that repeated calls give identical results (no
hidden state) — and says which check failed and by how much.

Examples
--------
>>> import numpy as np, fimlab as fl
>>> from fimlab.testing import assert_operator_close
>>> A, G = np.array([[2.0, 0.5], [0.5, 1.0]]), np.diag([1.0, 3.0])
>>> assert_operator_close(fl.KroneckerOperator([(A, G)]), np.kron(A, G))     # passes
>>> try:
...     assert_operator_close(fl.KroneckerOperator([(A, G)]), np.kron(G, A))
... except AssertionError as err:
...     print(str(err).splitlines()[0])
operator products differ from the reference: right product with a vector (matvec)...
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import array_namespace, asarray_on, from_host, to_numpy

__all__ = ["Tolerances", "default_tolerances", "rtol_for", "assert_operator_close"]


class Tolerances(NamedTuple):
    """Relative and absolute tolerances of a comparison."""

    rtol: float
    atol: float


def _float_name(dtype) -> str:
    """``"float16"``, ``"float32"`` or ``"float64"`` for a dtype of any namespace (or a
    name); anything else counts as float64."""
    try:
        name = np.dtype(dtype).name
    except TypeError:  # a dtype of another library, e.g. torch.float32
        name = str(dtype)
    for cand in ("float16", "float32"):
        if cand in name:
            return cand
    return "float64"


def _eps(dtype) -> float:
    return float(np.finfo(np.dtype(_float_name(dtype))).eps)


def rtol_for(dtype, scale: float = 1.0) -> float:
    """Default relative tolerance ``4·√eps(dtype)``, times ``scale`` (SciPy's habit).

    ``dtype`` may be a name (``"float32"``) or a dtype of any array namespace.

    Examples
    --------
    >>> rtol_for("float64") < 1e-7 < rtol_for("float32") < 1e-2
    True
    """
    return 4.0 * float(np.sqrt(_eps(dtype))) * scale


def default_tolerances(dtype) -> Tolerances:
    """The tolerances :func:`assert_operator_close` uses for ``dtype``.

    ``rtol = 4·√eps`` (``≈ 6e-8`` for float64, ``≈ 1.4e-3`` for float32) is relative to
    the natural scale of a product, ``|M|·|x|`` entry by entry (the bound of its
    rounding error); ``atol = 10·eps`` is an absolute floor for exactly-zero references.

    Examples
    --------
    >>> tol = default_tolerances("float32")
    >>> round(tol.rtol, 5), tol.atol > 0
    (0.00138, True)
    """
    eps = _eps(dtype)
    return Tolerances(rtol=rtol_for(dtype), atol=10.0 * eps)


# -- how to talk to an operator ------------------------------------------------------------
class _Probe:
    """Uniform access to an operator: a fimlab ``CurvatureOperator``, a SciPy
    ``LinearOperator``, a dense array of any namespace, or a callable ``f(X)``."""

    def __init__(self, op, like=None):
        self.op = op
        self.is_array = (hasattr(op, "shape") and hasattr(op, "ndim")
                         and not hasattr(op, "matvec"))
        self.is_callable = callable(op) and not hasattr(op, "matvec") and not self.is_array
        if like is not None:
            self.like = like
        elif self.is_array:
            self.like = op
        elif getattr(op, "xp", None) is not None:
            # a fimlab operator says where its arrays live (namespace and device)
            self.like = (op.xp, getattr(op, "device", None))
        else:
            self.like = None
        dtype = getattr(op, "dtype", None)
        if dtype is None and like is not None:
            dtype = getattr(like, "dtype", None)
        self.dtype = dtype if dtype is not None else np.float64

    def move(self, X: np.ndarray):
        """Host array ``X`` (float64) as an operand of the operator's dtype and place."""
        dtype = _float_name(self.dtype)
        X = X.astype(dtype)
        like = self.like
        if like is None:
            return X
        if isinstance(like, tuple):
            xp, dev = like
            return from_host(X, xp, dtype=dtype, device=dev)
        return asarray_on(X, like=like, dtype=dtype)

    def right(self, X):
        op = self.op
        if self.is_array:
            return op @ X
        if self.is_callable:
            return op(X)
        if X.ndim == 1:
            return op.matvec(X)
        return op.matmat(X)

    def has_left(self) -> bool:
        return self.is_array or hasattr(self.op, "rmatvec")

    def left(self, U):
        op = self.op
        if self.is_array:
            xp = array_namespace(op)
            return xp.linalg.matmul(xp.matrix_transpose(op), U)
        if U.ndim == 1:
            return op.rmatvec(U)
        rmm = getattr(op, "rmatmat", None)
        if rmm is not None:
            return rmm(U)
        xp = array_namespace(U)
        return xp.stack([op.rmatvec(U[:, j]) for j in range(U.shape[1])], axis=1)


def _dense_reference(ref) -> np.ndarray:
    if hasattr(ref, "to_dense"):
        ref = ref.to_dense()
    elif hasattr(ref, "matmat") and hasattr(ref, "shape"):  # e.g. a SciPy LinearOperator
        ref = ref.matmat(np.eye(ref.shape[1]))
    out = np.asarray(to_numpy(ref), dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"the reference must be a matrix, got shape {out.shape}")
    return out


def _host(Y) -> np.ndarray:
    return np.asarray(to_numpy(Y), dtype=np.float64)


# -- the assertion -------------------------------------------------------------------------
def assert_operator_close(op, ref, *, rtol: float | None = None, atol: float | None = None,
                          rng=None, n_vectors: int = 2, n_columns: int = 3,
                          symmetric: bool = True, like=None) -> None:
    """Assert that a (matrix-free) operator acts exactly as a dense reference matrix.

    Random operands (drawn from ``rng`` in float64, rounded to the operator's dtype and
    moved to its array namespace and device) are used for these checks, in order:

    1. shape (when ``op`` has one);
    2. right products ``op @ v`` with ``n_vectors`` vectors and ``op @ X`` with a
       ``(P, n_columns)`` matrix, against ``ref @ v``, ``ref @ X``;
    3. left products ``vᵀ op`` (``op.rmatvec``/``rmatmat``, or ``opᵀ`` for an array)
       with a vector and a matrix, against ``refᵀ v``;
    4. the adjoint (dot) test ``⟨u, op v⟩ = ⟨opᵀ u, v⟩``;
    5. symmetry ``⟨u, op v⟩ = ⟨op u, v⟩`` (skip with ``symmetric=False`` for a
       non-symmetric map);
    6. repeated calls: the same operand, before and after other products, gives a
       bit-for-bit identical result (no hidden state);
    7. ``op.to_dense()`` against ``ref``, when ``op`` has it.

    A product ``y`` passes when ``|y − y_ref| ≤ atol + rtol · (|ref| |x|)`` entry by
    entry: ``|ref| |x|`` is the scale of the rounding error of the product.

    Parameters
    ----------
    op : CurvatureOperator, scipy LinearOperator, array or callable
        The operator under test. A callable ``op(X)`` maps a vector ``(P,)`` or matrix
        ``(P, k)`` to its product (e.g. ``lambda X: K.solve(X, 0.1)``); it has no left
        product, so for it only symmetry stands for checks 3-4.
    ref : array or operator
        The dense reference ``(P, P)`` (any namespace; an operator is formed with
        ``to_dense``). Compared in float64 on the host.
    rtol, atol : float, optional
        Defaults: :func:`default_tolerances` of the operator's dtype.
    rng : numpy.random.Generator or int, optional
        Source of the random operands (default seed 0: deterministic).
    n_vectors, n_columns : int
        How many vectors, and how many columns of the matrix operand.
    symmetric : bool
        Whether ``op`` must be symmetric (curvature operators are).
    like : array, optional
        An array of the namespace, device and dtype of ``op``'s operands, for a
        callable ``op`` that does not work on NumPy arrays (fimlab operators and arrays
        say where they live themselves).

    Raises
    ------
    AssertionError
        Naming the first failed check, the largest violation and the tolerance.

    Examples
    --------
    >>> import numpy as np
    >>> M = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> assert_operator_close(lambda X: M @ X, M)
    >>> try:
    ...     assert_operator_close(lambda X: M @ X + 1e-3 * X, M)
    ... except AssertionError as err:
    ...     print("caught:", str(err).split(":")[0])
    caught: operator products differ from the reference
    """
    R = _dense_reference(ref)
    P = R.shape[0]
    if R.shape != (P, P):
        raise ValueError(f"the reference must be square, got shape {R.shape}")
    probe = _Probe(op, like)
    tol = default_tolerances(probe.dtype)
    rtol = tol.rtol if rtol is None else float(rtol)
    atol = tol.atol if atol is None else float(atol)
    rng = np.random.default_rng(0 if rng is None else rng)
    absR = np.abs(R)

    shape = getattr(op, "shape", None)
    if shape is not None and tuple(shape) != (P, P):
        raise AssertionError(f"operator shape {tuple(shape)} differs from the reference's "
                             f"{(P, P)}")

    def draw(*shape):
        X = rng.standard_normal(shape)
        dtype = _float_name(probe.dtype)
        if dtype in ("float32", "float16"):
            X = X.astype(dtype).astype(np.float64)  # the values the operator really sees
        return X

    def check(name, got, X, M, absM):
        got = _host(got)
        want = M @ X
        if got.shape != want.shape:
            raise AssertionError(
                f"operator products differ from the reference: {name}: result has shape "
                f"{got.shape}, expected {want.shape}"
            )
        bound = atol + rtol * (absM @ np.abs(X))
        excess = np.abs(got - want) - bound
        if not np.all(np.isfinite(got)) or np.any(excess > 0):
            i = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(excess), excess,
                                                           np.inf))), got.shape)
            raise AssertionError(
                f"operator products differ from the reference: {name}\n"
                f"  largest violation at index {tuple(int(j) for j in i)}: got {got[i]!r}, "
                f"expected {want[i]!r} (|difference| {abs(got[i] - want[i]):.3e} > tolerance "
                f"{bound[i]:.3e}; rtol={rtol:.1e}, atol={atol:.1e})"
            )

    def check_scalar(name, x, y, scale):
        bound = atol + rtol * scale
        if not (np.isfinite(x) and np.isfinite(y)) or abs(x - y) > bound:
            raise AssertionError(
                f"operator fails the {name}: {x!r} vs {y!r} (|difference| {abs(x - y):.3e} > "
                f"tolerance {bound:.3e}; rtol={rtol:.1e}, atol={atol:.1e})"
            )

    # 2. right products
    vs = [draw(P) for _ in range(n_vectors)]
    for j, v in enumerate(vs):
        check(f"right product with a vector (matvec), vector {j}", probe.right(probe.move(v)),
              v, R, absR)
    X = draw(P, n_columns)
    check("right product with a matrix (matmat)", probe.right(probe.move(X)), X, R, absR)

    # 3. left products, 4. adjoint test
    u = draw(P)
    Rt, absRt = R.T, absR.T
    if probe.has_left():
        check("left product with a vector (rmatvec)", probe.left(probe.move(u)), u, Rt, absRt)
        check("left product with a matrix (rmatmat)", probe.left(probe.move(X)), X, Rt, absRt)
        v = vs[0]
        Av = _host(probe.right(probe.move(v)))
        Atu = _host(probe.left(probe.move(u)))
        check_scalar("adjoint (dot) test <u, A v> = <A^T u, v>", float(u @ Av),
                     float(Atu @ v), float(np.abs(u) @ absR @ np.abs(v)))

    # 5. symmetry
    if symmetric:
        v = vs[0]
        Av = _host(probe.right(probe.move(v)))
        Au = _host(probe.right(probe.move(u)))
        check_scalar("symmetry test <u, A v> = <A u, v>", float(u @ Av), float(Au @ v),
                     float(np.abs(u) @ absR @ np.abs(v) + np.abs(v) @ absR @ np.abs(u)))

    # 6. repeated calls are identical (no hidden state)
    for name, operand in (("vector", vs[0]), ("matrix", X)):
        Xd = probe.move(operand)
        first = _host(probe.right(Xd))
        probe.right(probe.move(draw(*operand.shape)))  # something else in between
        again = _host(probe.right(Xd))
        if not np.array_equal(first, again, equal_nan=True):
            diff = float(np.max(np.abs(first - again)))
            raise AssertionError(
                f"operator is not a pure function: two products with the same {name} differ "
                f"(by up to {diff:.3e}) — it keeps hidden state between calls"
            )

    # 7. the operator's own dense form
    to_dense = getattr(op, "to_dense", None)
    if to_dense is not None and not probe.is_array:
        D = _host(to_dense())
        if D.shape != R.shape:
            raise AssertionError(f"to_dense() has shape {D.shape}, the reference {R.shape}")
        scale = np.abs(R).max(initial=0.0)
        excess = np.abs(D - R) - (atol + rtol * scale)
        if np.any(excess > 0) or not np.all(np.isfinite(D)):
            raise AssertionError(
                f"to_dense() differs from the reference by up to {np.max(np.abs(D - R)):.3e} "
                f"(tolerance {atol + rtol * scale:.3e})"
            )
