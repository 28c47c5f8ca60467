"""The rearrangement R and the Kronecker product SVD of a dense matrix."""

from __future__ import annotations

import math
from typing import NamedTuple

from .._errors import ShapeError
from ..backend import (
    array_namespace,
    dtype_eps,
    unvec,
)

# =====================================================================================
# The rearrangement R and the Kronecker product SVD of a dense matrix (R1, R2)
# =====================================================================================


def _check_grid(M, d_a: int, d_g: int, what: str = "M"):
    for name, d in (("d_a", d_a), ("d_g", d_g)):
        if not (isinstance(d, int) and d >= 1):
            raise ShapeError(f"{name} must be a positive integer, got {d!r}")
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ShapeError(f"{what} must be a square matrix, got shape {tuple(M.shape)}")
    if M.shape[0] != d_a * d_g:
        raise ShapeError(
            f"{what} has size {M.shape[0]}, which is not d_a·d_g = {d_a}·{d_g} = "
            f"{d_a * d_g}; pass the sizes of the two Kronecker factors"
        )


def rearrange(M, d_a: int, d_g: int):
    """The rearrangement ``R(M)`` of Van Loan & Pitsianis (PAPERS.md R1).

    ``M`` (``d_a·d_g × d_a·d_g``) is seen as a ``d_a × d_a`` grid of ``d_g × d_g``
    blocks ``M_kl``; ``R(M)`` (``d_a² × d_g²``) has one row ``vec(M_kl)ᵀ`` per block,
    blocks in column-major order (row ``k + l·d_a``). Then ``R(A ⊗ G) = vec(A) vec(G)ᵀ``
    and ``‖M − A⊗G‖_F = ‖R(M) − vec(A)vec(G)ᵀ‖_F`` (R1). Dense: for tests and teaching.

    Examples
    --------
    >>> import numpy as np
    >>> A, G = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 1.0], [1.0, 5.0]])
    >>> R = rearrange(np.kron(A, G), 2, 2)
    >>> bool(np.allclose(R, np.outer(A.ravel(order="F"), G.ravel(order="F"))))
    True
    """
    _check_grid(M, d_a, d_g)
    xp = array_namespace(M)
    M4 = xp.reshape(M, (d_a, d_g, d_a, d_g))  # [k, i, l, j] = (M_kl)_ij
    return xp.reshape(xp.permute_dims(M4, (2, 0, 3, 1)), (d_a * d_a, d_g * d_g))


def rearrange_inverse(Rm, d_a: int, d_g: int):
    """Inverse of :func:`rearrange`: the ``d_a·d_g × d_a·d_g`` matrix whose rearrangement
    is ``Rm`` (``d_a² × d_g²``)."""
    xp = array_namespace(Rm)
    if Rm.ndim != 2 or Rm.shape != (d_a * d_a, d_g * d_g):
        raise ShapeError(
            f"a rearranged matrix for d_a={d_a}, d_g={d_g} has shape "
            f"({d_a * d_a}, {d_g * d_g}), got {tuple(Rm.shape)}"
        )
    R4 = xp.reshape(Rm, (d_a, d_a, d_g, d_g))  # [l, k, j, i]
    return xp.reshape(xp.permute_dims(R4, (1, 3, 0, 2)), (d_a * d_g, d_a * d_g))


def psd_sign(A, G):
    """The sign rule of PAPERS.md (R4) for one Kronecker term ``A ⊗ G``.

    ``A ⊗ G = (−A) ⊗ (−G)``: return the pair with ``tr A ≥ 0`` (ties broken by the
    largest-magnitude entry of ``A`` being positive). For the leading term of a PSD
    matrix this is the choice that makes both factors PSD; later terms are symmetric
    but may be indefinite.
    """
    xp = array_namespace(A, G)
    diag = xp.linalg.diagonal(A)
    tr = float(xp.sum(diag))
    if abs(tr) <= 1e-12 * float(xp.sum(xp.abs(diag))) or tr == 0.0:
        flat = xp.reshape(A, (-1,))
        tr = float(flat[int(xp.argmax(xp.abs(flat)))]) if flat.shape[0] else 1.0
    return (A, G) if tr >= 0 else (-A, -G)


class KronSVD(NamedTuple):
    """A Kronecker product SVD ``M ≈ Σ_r sigma[r] · A[r] ⊗ G[r]`` (PAPERS.md R2), with
    ``‖A[r]‖_F = ‖G[r]‖_F = 1`` and ``sigma`` decreasing."""

    sigma: object
    A: object  # (r, d_a, d_a)
    G: object  # (r, d_g, d_g)

    @property
    def terms(self) -> list[tuple]:
        """The Kronecker terms ``(√σ_r A_r, √σ_r G_r)``, balanced between the factors."""
        out = []
        for r in range(self.sigma.shape[0]):
            s = math.sqrt(float(self.sigma[r]))
            out.append((s * self.A[r, ...], s * self.G[r, ...]))
        return out

    @property
    def rank(self) -> int:
        return int(self.sigma.shape[0])


def kpsvd(M, d_a: int, d_g: int, rank: int | None = None, rtol: float | None = None):
    """Truncated Kronecker product SVD of a dense matrix (PAPERS.md R2, Van Loan).

    Parameters
    ----------
    M : array, shape (d_a·d_g, d_a·d_g)
    d_a, d_g : int
        Sizes of the factors ``A`` (``d_a × d_a``) and ``G`` (``d_g × d_g``).
    rank : int, optional
        Number of terms kept; ``None`` keeps every non-zero one.
    rtol : float, optional
        Singular values of ``R(M)`` at or below ``rtol·σ₁`` count as zero (default
        ``max(d_a², d_g²)·eps``).

    Returns
    -------
    KronSVD
        ``(sigma, A, G)``; ``Σ_{r<k} σ_r A_r ⊗ G_r`` is the best approximation of ``M``
        by a sum of ``k`` Kronecker products in Frobenius norm (Eckart–Young on ``R(M)``),
        with error² ``Σ_{r≥k} σ_r²``. Signs follow :func:`psd_sign`.

    Raises
    ------
    ShapeError
        If ``rank < 1`` or ``rank`` exceeds the numerical rank of ``R(M)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A1, G1, A2, G2 = (rng.normal(size=(3, 3)) for _ in range(4))
    >>> M = np.kron(A1, G1) + np.kron(A2, G2)
    >>> res = kpsvd(M, 3, 3)
    >>> res.rank, bool(np.allclose(sum(np.kron(A, G) for A, G in res.terms), M))
    (2, True)
    """
    _check_grid(M, d_a, d_g)
    xp = array_namespace(M)
    Rm = rearrange(M, d_a, d_g)
    Uf, s, Vh = xp.linalg.svd(Rm, full_matrices=False)
    eps = dtype_eps(M.dtype)
    tol = (rtol if rtol is not None else max(d_a * d_a, d_g * d_g) * eps) * (
        float(s[0]) if s.shape[0] else 0.0
    )
    nrank = int(xp.sum(xp.astype(s > tol, xp.int64))) if float(s[0]) > 0 else 0
    if rank is None:
        rank = nrank
        if rank == 0:
            raise ShapeError("M is zero: its Kronecker product SVD has no terms")
    _check_rank(rank, nrank, "R(M)")
    As, Gs = [], []
    for r in range(rank):
        A = unvec(Uf[:, r], d_a, d_a)
        G = unvec(Vh[r, :], d_g, d_g)
        A, G = psd_sign(A, G)
        As.append(A)
        Gs.append(G)
    return KronSVD(s[:rank], xp.stack(As), xp.stack(Gs))


def nearest_kronecker(M, d_a: int, d_g: int):
    """``argmin_{A,G} ‖M − A ⊗ G‖_F`` (PAPERS.md R1): the leading KPSVD term, balanced
    (``‖A‖_F = ‖G‖_F``) and signed by :func:`psd_sign` (PSD factors for a PSD ``M``).

    Examples
    --------
    >>> import numpy as np
    >>> A, G = np.diag([1.0, 2.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> A2, G2 = nearest_kronecker(np.kron(A, G), 2, 2)
    >>> bool(np.allclose(np.kron(A2, G2), np.kron(A, G)))
    True
    """
    return kpsvd(M, d_a, d_g, rank=1).terms[0]


def _check_rank(rank, nrank: int, what: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ShapeError(f"rank must be a positive integer, got {rank!r}")
    if rank < 1:
        raise ShapeError(f"rank must be at least 1, got {rank}")
    if rank > nrank:
        raise ShapeError(
            f"rank={rank} exceeds the numerical rank {nrank} of {what}: a sum of more "
            f"than {nrank} Kronecker products cannot improve on {nrank} of them. Ask for "
            f"rank <= {nrank}"
        )


