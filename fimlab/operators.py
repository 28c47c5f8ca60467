"""Curvature operators: symmetric linear operators on parameter space.

Every matrix in fimlab — the exact Fisher and each approximation — is a
:class:`CurvatureOperator`: it has ``shape`` and ``dtype``, multiplies vectors and
matrices (``matvec``, ``matmat``, ``@``) without being formed, can be formed on request
(``to_dense``, memory-guarded), composes lazily (``+``, scalar ``*``) and exports
``to_scipy()`` for ``scipy.sparse.linalg``. The contract follows
``scipy.sparse.linalg.LinearOperator``: subclasses implement ``_matmat``.

Block-diagonal operators (KFAC and the KPSVD family) are :class:`BlockDiagonalOperator`
of :class:`KroneckerOperator` blocks, each a sum of Kronecker products ``Σ_r A_r ⊗ G_r``
stored as its ``terms`` and applied with the vec trick ``(A ⊗ G) vec(V) = vec(G V Aᵀ)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._errors import BackendError, DampingError, ShapeError
from ._validation import check_damping, check_dense_memory, check_finite
from .backend import (
    array_namespace,
    device_of,
    is_numpy_namespace,
    kron,
    library_name,
    same_namespace,
)
from .kron.algebra import kron_matmat, kron_sum_inner, kron_sum_inverse, pcg

__all__ = [
    "CurvatureOperator",
    "SumOperator",
    "ScaledOperator",
    "DenseOperator",
    "BlockDiagonalOperator",
    "KroneckerOperator",
]


class CurvatureOperator:
    """Base class: a symmetric linear operator on parameter space.

    Subclasses set ``shape`` (``(P, P)``), ``dtype`` and ``xp`` and implement
    ``_matmat(X)`` for ``X`` of shape ``(P, k)``. Everything else follows: ``matvec``,
    ``matmat``, ``@``, lazy ``+``/``-``/scalar ``*``, a memory-guarded ``to_dense``,
    ``solve(v, damping)`` (``(F + λI)⁻¹ v`` by conjugate gradients unless a subclass
    has a direct formula) and ``to_scipy()``.

    Raises
    ------
    ShapeError
        From the products, for an operand whose length is not ``P``.

    Examples
    --------
    A diagonal matrix as an operator:

    >>> import numpy as np
    >>> from fimlab.operators import CurvatureOperator
    >>> class Diagonal(CurvatureOperator):
    ...     def __init__(self, d):
    ...         self.d, self.shape, self.dtype, self.xp = d, (d.size, d.size), d.dtype, np
    ...     def _matmat(self, X):
    ...         return self.d[:, None] * X
    >>> D = Diagonal(np.array([1.0, 2.0, 4.0]))
    >>> D @ np.ones(3)
    array([1., 2., 4.])
    >>> (D + 2.0 * D) @ np.ones(3)              # lazy algebra
    array([ 3.,  6., 12.])
    >>> np.round(D.solve(np.ones(3), damping=1.0), 6)    # (D + I)⁻¹ 1 by CG
    array([0.5     , 0.333333, 0.2     ])
    """

    shape: tuple[int, int]
    dtype = None
    xp = None

    # -- products ---------------------------------------------------------------
    def _matmat(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_operand(self, X, ndim: tuple[int, ...]):
        if X.ndim not in ndim or X.shape[0] != self.shape[1]:
            want = "(P,)" if ndim == (1,) else "(P,) or (P, k)"
            raise ShapeError(
                f"{type(self).__name__} of shape {self.shape} cannot multiply an array of "
                f"shape {tuple(X.shape)}; expected {want} with P = {self.shape[1]}"
            )
        self._check_backend(X)

    def _check_backend(self, X):
        """A clear error for an operand of another array library or device."""
        if self.xp is None:
            return
        xq = array_namespace(X)
        if not same_namespace(xq, self.xp):
            raise BackendError(
                f"{type(self).__name__} holds {library_name(self.xp)} arrays but the "
                f"operand is a {library_name(xq)} array; move it first, e.g. "
                "fimlab.backend.asarray_on(v, like=<an array of the operator>)"
            )
        dev = self._device()
        if dev is not None and device_of(X) != dev:
            raise BackendError(
                f"{type(self).__name__} lives on device {dev} but the operand is on "
                f"{device_of(X)}; move it first, e.g. fimlab.backend.asarray_on(v, like=...)"
            )

    def matvec(self, v):
        """``F @ v`` for a vector ``v`` of length ``P``."""
        self._check_operand(v, (1,))
        xp = array_namespace(v)
        return self._matmat(xp.reshape(v, (-1, 1)))[:, 0]

    def matmat(self, X):
        """``F @ X`` for ``X`` of shape ``(P, k)``."""
        self._check_operand(X, (2,))
        return self._matmat(X)

    rmatvec = matvec  # symmetric
    rmatmat = matmat

    def __matmul__(self, X):
        if isinstance(X, CurvatureOperator):
            raise TypeError("operator @ operator is not supported; use + and * to compose")
        return self.matvec(X) if X.ndim == 1 else self.matmat(X)

    def dot(self, X):
        """Alias of ``@`` (SciPy's name)."""
        return self @ X

    # -- lazy algebra -------------------------------------------------------------
    def __add__(self, other):
        if not isinstance(other, CurvatureOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __mul__(self, alpha):
        if isinstance(alpha, (int, float)):
            return ScaledOperator(self, float(alpha))
        return NotImplemented

    __rmul__ = __mul__

    def __sub__(self, other):
        if not isinstance(other, CurvatureOperator):
            return NotImplemented
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __neg__(self):
        return ScaledOperator(self, -1.0)

    # -- dense --------------------------------------------------------------------
    def to_dense(self, max_bytes: int | None = None):
        """Form the dense ``(P, P)`` matrix (refused beyond ``max_bytes``, default 2 GiB)."""
        P = self.shape[0]
        check_dense_memory(
            self.shape, self.dtype, max_bytes, f"{type(self).__name__}", "matvec/matmat"
        )
        xp = self.xp
        return self._matmat(xp.eye(P, dtype=self.dtype, device=self._device()))

    def _device(self):
        return None

    @property
    def device(self):
        """The device the operator's arrays live on (``None``: the library's default,
        e.g. NumPy's CPU); operands must live there too."""
        return self._device()

    # -- solves -------------------------------------------------------------------
    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(F + λI)⁻¹ v`` by conjugate gradients (generic fallback; subclasses with
        structure override it with direct formulas)."""
        lam = check_damping(damping)
        if rule != "exact":
            raise DampingError(
                f"{type(self).__name__} has no factored structure: only rule='exact' "
                f"((F + λI)⁻¹ by conjugate gradients) applies, got rule={rule!r}"
            )
        self._check_operand(v, (1, 2))
        x, info = pcg(lambda X: self._matmat(X) + lam * X, v, None, xp=self.xp, **kwargs)
        self.last_solve_info = info
        return x

    # -- interop ------------------------------------------------------------------
    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` view (NumPy backend only)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        if not is_numpy_namespace(self.xp):
            raise TypeError("to_scipy() needs NumPy arrays; use to_numpy() on the inputs first")

        def mv(v):
            return np.asarray(self.matvec(np.ravel(np.asarray(v, dtype=self.dtype))))  # xp: NumPy only

        def mm(X):
            return np.asarray(self.matmat(np.asarray(X, dtype=self.dtype)))  # xp: NumPy only

        return LinearOperator(
            self.shape,
            matvec=mv,
            rmatvec=mv,
            matmat=mm,
            rmatmat=mm,
            dtype=np.dtype(self.dtype),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={self.dtype}>"


class SumOperator(CurvatureOperator):
    """Lazy ``A + B``."""

    def __init__(self, A: CurvatureOperator, B: CurvatureOperator):
        if A.shape != B.shape:
            raise ShapeError(f"cannot add operators of shapes {A.shape} and {B.shape}")
        self.A, self.B = A, B
        self.shape, self.dtype, self.xp = A.shape, A.dtype, A.xp

    def _matmat(self, X):
        return self.A._matmat(X) + self.B._matmat(X)

    def _device(self):
        return self.A._device()


class ScaledOperator(CurvatureOperator):
    """Lazy ``alpha * A``."""

    def __init__(self, A: CurvatureOperator, alpha: float):
        self.A, self.alpha = A, float(alpha)
        self.shape, self.dtype, self.xp = A.shape, A.dtype, A.xp

    def _matmat(self, X):
        return self.alpha * self.A._matmat(X)

    def _device(self):
        return self.A._device()


class DenseOperator(CurvatureOperator):
    """A dense symmetric matrix seen as an operator (tests, teaching, small problems).

    Parameters
    ----------
    M : array, shape (P, P)
        A square, finite matrix (symmetry is assumed, not checked).

    Raises
    ------
    ShapeError
        For a matrix that is not square.
    NonFiniteError
        For NaN or infinite entries.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> M = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> op = fl.DenseOperator(M)
    >>> op @ np.array([1.0, 0.0])
    array([2., 1.])
    >>> bool(np.allclose(op.solve(np.ones(2), damping=1.0),
    ...                  np.linalg.solve(M + np.eye(2), np.ones(2))))
    True
    """

    def __init__(self, M):
        xp = array_namespace(M)
        if M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise ShapeError(f"DenseOperator needs a square matrix, got shape {tuple(M.shape)}")
        check_finite(M, "the matrix")
        self.M, self.xp = M, xp
        self.shape, self.dtype = (int(M.shape[0]), int(M.shape[1])), M.dtype

    def _matmat(self, X):
        return self.M @ X

    def to_dense(self, max_bytes: int | None = None):
        return self.M

    def _device(self):
        return device_of(self.M)

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        lam = check_damping(damping)
        xp = self.xp
        n = self.shape[0]
        self._check_operand(v, (1, 2))
        x = xp.linalg.solve(
            self.M + lam * xp.eye(n, dtype=self.dtype, device=self._device()),
            v if v.ndim == 2 else xp.reshape(v, (-1, 1)),
        )
        return xp.reshape(x, v.shape)


class KroneckerOperator(CurvatureOperator):
    """A sum of Kronecker products ``Σ_r A_r ⊗ G_r`` acting on ``vec(V)``, ``V`` of shape
    ``(d_g, d_a)`` (the shape of a weight matrix ``W``; column-major ``vec``).

    Parameters
    ----------
    terms : sequence of (A, G)
        ``A`` is ``(d_a, d_a)`` (input side), ``G`` is ``(d_g, d_g)`` (output side).
        The first term is the leading one (used by the damping rules).

    Notes
    -----
    ``(A ⊗ G) vec(V) = vec(G V Aᵀ)``: two GEMMs, the Kronecker product is never formed
    (except by ``to_dense``). ``solve`` applies the damped inverses of PAPERS.md (K2-K4)
    for one term and (I1) / preconditioned CG for two or more, see :meth:`solve`.

    Raises
    ------
    ShapeError
        For no terms, a non-square factor, or factors of different sizes across terms.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> A = np.array([[2.0, 0.5], [0.5, 1.0]]); G = np.diag([1.0, 3.0, 2.0])
    >>> K = fl.KroneckerOperator([(A, G)])
    >>> K.shape, K.rank
    ((6, 6), 1)
    >>> v = np.random.default_rng(0).normal(size=6)
    >>> bool(np.allclose(K @ v, np.kron(A, G) @ v))          # never forms kron(A, G)
    True
    >>> lam = 0.1; s = np.sqrt(lam)                         # rule="factor": (K2)
    >>> K2 = np.kron(np.linalg.inv(A + s * np.eye(2)), np.linalg.inv(G + s * np.eye(3)))
    >>> bool(np.allclose(K.solve(v, damping=lam), K2 @ v))
    True
    >>> bool(np.allclose(K.solve(v, damping=lam, rule="exact"),  # (K4)
    ...                  np.linalg.solve(np.kron(A, G) + lam * np.eye(6), v)))
    True
    """

    def __init__(self, terms: Sequence[tuple]):
        terms = [(A, G) for A, G in terms]
        if not terms:
            raise ShapeError("a KroneckerOperator needs at least one (A, G) term")
        A0, G0 = terms[0]
        xp = array_namespace(A0, G0)
        for r, (A, G) in enumerate(terms):
            for name, M, d in (("A", A, A0.shape[0]), ("G", G, G0.shape[0])):
                if M.ndim != 2 or M.shape[0] != M.shape[1]:
                    raise ShapeError(
                        f"Kronecker term {r}: factor {name} must be square, got shape "
                        f"{tuple(M.shape)}"
                    )
                if M.shape[0] != d:
                    raise ShapeError(
                        f"Kronecker term {r}: factor {name} has size {M.shape[0]}, but term 0 "
                        f"has {d}; all terms of a block act on the same space"
                    )
        self.terms = terms
        self.xp = xp
        self.d_a, self.d_g = int(A0.shape[0]), int(G0.shape[0])
        n = self.d_a * self.d_g
        self.shape = (n, n)
        self.dtype = A0.dtype
        self._inverse_cache: dict = {}

    @property
    def rank(self) -> int:
        """Number of Kronecker terms."""
        return len(self.terms)

    def _device(self):
        return device_of(self.terms[0][0])

    def _matmat(self, X):
        out = None
        for A, G in self.terms:
            Y = kron_matmat(A, G, X)
            out = Y if out is None else out + Y
        return out

    def to_dense(self, max_bytes: int | None = None):
        check_dense_memory(self.shape, self.dtype, max_bytes, "Kronecker block", "matvec/matmat")
        out = None
        for A, G in self.terms:
            K = kron(A, G)
            out = K if out is None else out + K
        return out

    def frobenius_norm_sq(self) -> float:
        """``‖Σ_r A_r ⊗ G_r‖²_F = Σ_{r,s} ⟨A_r, A_s⟩⟨G_r, G_s⟩`` (no dense product)."""
        return kron_sum_inner(self.terms, self.terms)

    def trace(self) -> float:
        """``tr(Σ A_r ⊗ G_r) = Σ tr(A_r) tr(G_r)``."""
        xp = self.xp
        return float(sum(xp.sum(xp.linalg.diagonal(A)) * xp.sum(xp.linalg.diagonal(G))
                         for A, G in self.terms))

    def solve(self, v, damping, rule: str = "factor", **kwargs):
        """Apply a damped inverse (PAPERS.md K2-K4, I1; DESIGN.md "Damping").

        ``rule="factor"`` (default, the papers' code): one term ``(A+√λI)⁻¹ ⊗ (G+√λI)⁻¹``
        (K2); two terms: λ added to each factor of the first term, the second kept (I1).
        ``rule="pi"``: factored Tikhonov (K3), one term only. ``rule="exact"``:
        ``(Σ A_r⊗G_r + λI)⁻¹`` exactly, by eigendecompositions for one term (K4) and
        preconditioned CG otherwise.
        """
        lam = check_damping(damping)
        self._check_backend(v)
        xp = array_namespace(v)
        vec_in = v.ndim == 1
        X = xp.reshape(v, (-1, 1)) if vec_in else v
        if X.shape[0] != self.shape[0]:
            raise ShapeError(
                f"solve: operand has {X.shape[0]} rows, the block has size {self.shape[0]}"
            )
        key = (lam, rule, tuple(sorted(kwargs.items())))
        inv = self._inverse_cache.get(key)
        if inv is None:
            inv = kron_sum_inverse(self.terms, lam, rule, **kwargs)
            if len(self._inverse_cache) >= 4:
                self._inverse_cache.pop(next(iter(self._inverse_cache)))
            self._inverse_cache[key] = inv
        Y = inv(X)
        self.last_solve_info = getattr(inv, "last_info", None)
        return Y[:, 0] if vec_in else Y


class BlockDiagonalOperator(CurvatureOperator):
    """``blockdiag(B_0, …, B_{L−1})``: one block per layer, in parameter order.

    ``blocks`` are curvature operators (usually :class:`KroneckerOperator`); products,
    dense forms and solves act block by block.

    Parameters
    ----------
    blocks : sequence of CurvatureOperator
        The diagonal blocks, in the order of ``θ``.

    Raises
    ------
    ShapeError
        For an empty list of blocks.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> A = np.array([[2.0, 0.5], [0.5, 1.0]]); G = np.diag([1.0, 3.0, 2.0])
    >>> B = fl.BlockDiagonalOperator([fl.DenseOperator(np.eye(2)),
    ...                               fl.KroneckerOperator([(A, G)])])
    >>> B.shape, B.block_slice(1)
    ((8, 8), slice(2, 8, None))
    >>> D = B.to_dense()
    >>> bool(np.allclose(D[2:, 2:], np.kron(A, G))), bool(np.any(D[:2, 2:]))
    (True, False)
    """

    def __init__(self, blocks: Sequence[CurvatureOperator]):
        blocks = list(blocks)
        if not blocks:
            raise ShapeError("a BlockDiagonalOperator needs at least one block")
        self.blocks = blocks
        sizes = [b.shape[0] for b in blocks]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        P = self.offsets[-1]
        self.shape = (P, P)
        self.dtype = blocks[0].dtype
        self.xp = blocks[0].xp

    def _device(self):
        return self.blocks[0]._device()

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def block_slice(self, i: int) -> slice:
        """Rows of parameter vector ``θ`` belonging to block ``i``."""
        return slice(self.offsets[i], self.offsets[i + 1])

    def _split(self, X):
        return [X[self.offsets[i] : self.offsets[i + 1], ...] for i in range(self.n_blocks)]

    def _matmat(self, X):
        xp = self.xp
        return xp.concat([b._matmat(Xi) for b, Xi in zip(self.blocks, self._split(X))], axis=0)

    def to_dense(self, max_bytes: int | None = None):
        check_dense_memory(
            self.shape, self.dtype, max_bytes, "block-diagonal operator", "matvec/matmat or .blocks[i]"
        )
        xp = self.xp
        P = self.shape[0]
        out = xp.zeros((P, P), dtype=self.dtype, device=self._device())
        for i, b in enumerate(self.blocks):
            s = self.block_slice(i)
            out[s, s] = b.to_dense(max_bytes=max_bytes)
        return out

    def block(self, i: int, j: int | None = None):
        """Dense block ``(i, j)``: the diagonal block's dense form, zeros off it."""
        j = i if j is None else j
        if i == j:
            return self.blocks[i].to_dense()
        xp = self.xp
        return xp.zeros((self.blocks[i].shape[0], self.blocks[j].shape[0]),
                        dtype=self.dtype, device=self._device())

    def solve(self, v, damping, rule: str = "factor", **kwargs):
        """Block by block damped inverse (see :meth:`KroneckerOperator.solve`)."""
        check_damping(damping)
        self._check_backend(v)
        xp = array_namespace(v)
        if v.shape[0] != self.shape[0]:
            raise ShapeError(
                f"solve: operand has {v.shape[0]} rows, the operator has size {self.shape[0]}"
            )
        parts = [b.solve(vi, damping, rule=rule, **kwargs) for b, vi in zip(self.blocks, self._split(v))]
        return xp.concat(parts, axis=0)
