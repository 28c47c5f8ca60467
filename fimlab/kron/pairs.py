"""What the SVD solvers of :mod:`fimlab.kron.krylov` act on and report.

- product pairs: anything with ``shape``, ``matvec`` and ``rmatvec`` (a
  :class:`~fimlab.kron.RearrangedFisher`, a SciPy ``LinearOperator``, a dense matrix via
  :func:`as_product_pair`), and the deflated pair ``R − Σ s_i x_i y_iᵀ``
  (:func:`deflate`);
- :class:`ConvergenceReport`, one per solved block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .._errors import ShapeError
from ..backend import array_namespace

__all__ = ["ConvergenceReport", "as_product_pair", "DeflatedProductPair", "deflate"]


# =====================================================================================
# Iterative SVD on any product pair: power SVD, Golub–Kahan (Lanczos), deflation
# =====================================================================================


@dataclass
class ConvergenceReport:
    """What an SVD solver did, for one block (or one part of it).

    Attributes
    ----------
    method : str
        ``"power"``, ``"lanczos"``, ``"gram"`` (exact Gram eigenproblem) ...
    converged : bool
        The tolerance was met (exact methods: always ``True``).
    residual : float
        Relative residual reached: ``‖R v − σ u‖/σ`` (power SVD) or
        ``max_r ‖(R v_r − σ_r u_r, Rᵀu_r − σ_r v_r)‖/σ₁`` (Lanczos); 0 for exact methods
        up to round-off.
    tol : float
    iterations : int
        Power iterations, or Golub–Kahan steps summed over restarts.
    restarts : int
    n_products : int
        Products with ``R`` or ``Rᵀ``.
    breakdown : bool
        A Golub–Kahan breakdown (an exact invariant subspace) or a zero operator
        ended the iteration; requested terms beyond the rank were set to zero.
    rank : int or None
        Number of non-zero singular triplets found (``< requested`` when clipped).
    sigma : tuple of float
        The singular values found.
    seconds : float
        Wall time.
    parts : list of ConvergenceReport
        Sub-reports (e.g. the two power SVDs of Deflation).
    """

    method: str
    converged: bool = True
    residual: float = 0.0
    tol: float = 0.0
    iterations: int = 0
    restarts: int = 0
    n_products: int = 0
    breakdown: bool = False
    rank: int | None = None
    sigma: tuple = ()
    seconds: float = 0.0
    parts: list = field(default_factory=list)

    @classmethod
    def combine(cls, method: str, parts: list, sigma=(), rank=None) -> ConvergenceReport:
        """One report for several solver runs (worst residual, summed counts)."""
        return cls(
            method=method,
            converged=all(p.converged for p in parts),
            residual=max((p.residual for p in parts), default=0.0),
            tol=max((p.tol for p in parts), default=0.0),
            iterations=sum(p.iterations for p in parts),
            restarts=sum(p.restarts for p in parts),
            n_products=sum(p.n_products for p in parts),
            breakdown=any(p.breakdown for p in parts),
            rank=rank,
            sigma=tuple(sigma),
            seconds=sum(p.seconds for p in parts),
            parts=list(parts),
        )


class _DenseProductPair:
    def __init__(self, M):
        if M.ndim != 2:
            raise ShapeError(f"a product pair from an array needs a matrix, got shape "
                             f"{tuple(M.shape)}")
        self.M, self.xp = M, array_namespace(M)
        self.shape, self.dtype = (int(M.shape[0]), int(M.shape[1])), M.dtype

    def matvec(self, x):
        return self.M @ x

    def rmatvec(self, y):
        return y @ self.M


def as_product_pair(op):
    """``op`` as a product pair: anything with ``shape``, ``matvec`` and ``rmatvec``
    (a :class:`RearrangedFisher`, a SciPy ``LinearOperator``, ...) or a dense matrix."""
    if hasattr(op, "matvec") and hasattr(op, "rmatvec") and hasattr(op, "shape"):
        return op
    if hasattr(op, "ndim") and hasattr(op, "shape"):
        return _DenseProductPair(op)
    raise TypeError(
        f"expected a product pair (shape, matvec, rmatvec) or a matrix, got "
        f"{type(op).__name__}"
    )


class DeflatedProductPair:
    """``R − Σ_i s_i x_i y_iᵀ`` as a product pair, for known rank-one terms
    (PAPERS.md methods table: Deflation deflates ``σ₁u₁v₁ᵀ``; KFAC-corrected deflates
    the KFAC term ``vec(A_K) vec(G_K)ᵀ``). The vectors need not be unit."""

    def __init__(self, op, terms: Sequence[tuple]):
        self.op = as_product_pair(op)
        self.terms = [(float(s), x, y) for s, x, y in terms]
        for _, x, y in self.terms:
            if x.shape != (self.op.shape[0],) or y.shape != (self.op.shape[1],):
                raise ShapeError(
                    f"a deflation term needs vectors of lengths {self.op.shape}, got "
                    f"{tuple(x.shape)} and {tuple(y.shape)}"
                )
        self.shape = self.op.shape
        self.dtype = getattr(self.op, "dtype", None)
        self.xp = getattr(self.op, "xp", None)

    def matvec(self, v):
        out = self.op.matvec(v)
        xp = array_namespace(out)
        for s, x, y in self.terms:
            out = out - (s * float(xp.sum(y * v))) * x
        return out

    def rmatvec(self, u):
        out = self.op.rmatvec(u)
        xp = array_namespace(out)
        for s, x, y in self.terms:
            out = out - (s * float(xp.sum(x * u))) * y
        return out


def deflate(op, terms: Sequence[tuple]) -> DeflatedProductPair:
    """``op − Σ s_i x_i y_iᵀ`` matrix-free; ``terms`` is a list of ``(s, x, y)``."""
    return DeflatedProductPair(op, terms)
