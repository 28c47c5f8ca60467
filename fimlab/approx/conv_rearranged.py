"""The rearranged Fisher block ``R(F_l)`` of a convolution layer, and its leading
singular triplets (the KPSVD family on convolution blocks).

With ``J_nk = Σ_t g_nkt ā_ntᵀ`` (``d_g × d_a``) and ``M_nk = J_nkᵀ``, the block is
``F_l = (1/N) Σ_{n,k} vec(J_nk) vec(J_nk)ᵀ`` and its rearrangement (the matrix whose
rank-one terms are the Kronecker products of ``F_l``) is::

    R(F_l) = (1/N) Σ_{n,k} Σ_{t,t'} vec(ā_nt ā_nt'ᵀ) vec(g_nkt g_nkt'ᵀ)ᵀ = (1/N) Σ_{n,k} M_nk ⊗ M_nk

    R(F_l) vec(V) = (1/N) Σ_{n,k} vec(J_nkᵀ V J_nk),    R(F_l)ᵀ vec(U) = (1/N) Σ_{n,k} vec(J_nk U J_nkᵀ)

Its rank is not bounded by ``N·K`` (each sample contributes up to ``rank(J_nk)²``), so
the dense layers' ``m × m`` Gram route does not apply.

**Symmetric part.** ``R(F_l)`` commutes with transposing both factors (``F_l`` is
symmetric), so it splits into a part on symmetric ``(U, V)`` and a part on antisymmetric
ones. For a dense layer the latter is zero; for a convolution (``T > 1``) it is not: the
unrestricted Frobenius optimum may contain pairs ``A ⊗ G`` with both factors
antisymmetric. The KPSVD family needs symmetric factors (their damped inverses rely on
it), so the operator used here is the symmetric part ``R_s = R(F_l) P_g`` (``P_g`` the
projection onto symmetric ``d_g × d_g`` matrices; equivalently ``P_a R(F_l)``): the
methods are the Frobenius optima among sums of Kronecker products with symmetric
factors. ``symmetric=False`` gives the whole ``R(F_l)``. The exact route here: a dense
SVD of ``R(F_l)`` when it is small (at most ``dense_max`` entries), otherwise
Golub–Kahan bidiagonalisation on the matrix-free products above, grown until the
leading triplets reach a relative residual of ``1e-10``.
"""

from __future__ import annotations

import numpy as np

from .._errors import ShapeError
from .._validation import check_dense_memory
from ..backend import array_namespace, is_numpy_namespace, to_numpy, vec

__all__ = ["RearrangedConvFisher", "conv_top_triplets", "DENSE_MAX_ENTRIES"]

#: exact route: form ``R(F_l)`` densely and take a LAPACK SVD up to this many entries
DENSE_MAX_ENTRIES = 2**22


class RearrangedConvFisher:
    """``R(F_l)`` of a convolution layer as a product pair (``shape = (d_a², d_g²)``).

    Parameters
    ----------
    a : array, shape (N, T, d_a)
    g : array, shape (N, K, T, d_g)
    max_bytes : int, optional
        Memory budget of the per-sample gradient matrices.
    symmetric : bool
        The symmetric part ``R_s`` (default; see the module notes) or all of ``R(F_l)``.

    Notes
    -----
    Products cost ``O(N·K·(d_a d_g² + d_a² d_g))`` in batched GEMMs on the per-sample
    gradient matrices ``M_nk = J_nkᵀ`` (held, ``N·K·d_a·d_g`` numbers, memory-guarded).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> from fimlab.kron import rearrange
    >>> rng = np.random.default_rng(0)
    >>> a, g = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 2, 4, 3))
    >>> R = RearrangedConvFisher(a, g, symmetric=False)
    >>> F = fl.FisherOperator(fl.FactorBatch([a], [g])).to_dense()
    >>> bool(np.allclose(R.to_dense(), rearrange(F, 2, 3)))
    True
    """

    def __init__(self, a, g, max_bytes: int | None = None, symmetric: bool = True):
        self.symmetric = bool(symmetric)
        if a.ndim != 3 or g.ndim != 4 or g.shape[2] != a.shape[1] or g.shape[0] != a.shape[0]:
            raise ShapeError(f"a conv block needs a (N, T, d_a) and g (N, K, T, d_g), got "
                             f"{tuple(a.shape)} and {tuple(g.shape)}")
        xp = array_namespace(a, g)
        self.xp, self.dtype = xp, a.dtype
        N, T, da = (int(s) for s in a.shape)
        K, dg = int(g.shape[1]), int(g.shape[3])
        self.m, self.K, self.T, self.d_a, self.d_g = N, K, T, da, dg
        check_dense_memory((N * K, da * dg), a.dtype, max_bytes,
                           "per-sample gradient matrices of a conv block",
                           "a smaller curvature batch (FactorBatch.subset)")
        # M_nk = J_nkᵀ = Σ_t ā_nt g_nktᵀ: (N, 1, d_a, T) @ (N, K, T, d_g)
        M = xp.matmul(xp.matrix_transpose(a)[:, None, ...], g)
        self.M = xp.reshape(M, (N * K, da, dg))
        self.shape = (da * da, dg * dg)

    def matvec(self, x):
        if x.shape != (self.shape[1],):
            raise ShapeError(f"matvec needs a vector of length {self.shape[1]}, got "
                             f"shape {tuple(x.shape)}")
        xp = self.xp
        V = xp.matrix_transpose(xp.reshape(x, (self.d_g, self.d_g)))
        if self.symmetric:
            V = 0.5 * (V + xp.matrix_transpose(V))
        out = xp.sum((self.M @ V) @ xp.matrix_transpose(self.M), axis=0) / self.m
        return vec(out, xp)

    def rmatvec(self, y):
        if y.shape != (self.shape[0],):
            raise ShapeError(f"rmatvec needs a vector of length {self.shape[0]}, got "
                             f"shape {tuple(y.shape)}")
        xp = self.xp
        U = xp.matrix_transpose(xp.reshape(y, (self.d_a, self.d_a)))
        if self.symmetric:
            U = 0.5 * (U + xp.matrix_transpose(U))
        Mt = xp.matrix_transpose(self.M)
        out = xp.sum((Mt @ U) @ self.M, axis=0) / self.m
        return vec(out, xp)

    def to_dense(self, max_bytes: int | None = None):
        """Dense ``R(F_l) = (1/N) Σ M_nk ⊗ M_nk`` (memory-guarded)."""
        check_dense_memory(self.shape, self.dtype, max_bytes, "rearranged conv block R(F_l)",
                           "RearrangedConvFisher.matvec/rmatvec")
        xp = self.xp
        da, dg = self.d_a, self.d_g
        if is_numpy_namespace(xp):
            R = np.einsum("iab,icd->cadb", self.M, self.M, optimize=True)
            if self.symmetric:  # R P_g: average each column with its transposed twin
                R = 0.5 * (R + R.transpose(0, 1, 3, 2))
            return R.reshape(da * da, dg * dg) / self.m
        # other namespaces: R e_j column by column (tests and small blocks only)
        cols = []
        for j in range(dg * dg):
            e = xp.zeros((dg * dg,), dtype=self.dtype, device=getattr(self.M, "device", None))
            e = xp.where(xp.arange(dg * dg) == j, xp.ones_like(e), e)
            cols.append(self.matvec(e))
        return xp.stack(cols, axis=1)


def conv_top_triplets(R, k: int, deflation=(), *, tol: float = 1e-10, rng=None,
                      name: str = "conv block"):
    """Leading ``k`` singular triplets of ``R − Σ s x yᵀ`` (``deflation`` terms), exactly:
    dense LAPACK SVD when ``R`` has at most :data:`DENSE_MAX_ENTRIES` entries and lives in
    NumPy, else Golub–Kahan grown to ``tol`` (:func:`fimlab.kron.lanczos_svd`,
    ``steps=None``).

    Returns ``(sigma, U, V, report)`` as :func:`fimlab.kron.lanczos_svd`.
    """
    from .. import kron as _kron

    xp = R.xp
    if R.shape[0] * R.shape[1] <= DENSE_MAX_ENTRIES and is_numpy_namespace(xp):
        D = R.to_dense()
        for s, x, y in deflation:
            D = D - s * np.outer(to_numpy(x), to_numpy(y))
        Uf, S, Vt = np.linalg.svd(D, full_matrices=False)
        kk = min(k, S.size)
        sig = np.zeros(k)
        U = np.zeros((R.shape[0], k), dtype=D.dtype)
        V = np.zeros((R.shape[1], k), dtype=D.dtype)
        tiny = S[0] * max(R.shape) * np.finfo(D.dtype).eps if S.size else 0.0
        for j in range(kk):
            if S[j] > tiny:
                sig[j], U[:, j], V[:, j] = S[j], Uf[:, j], Vt[j]
        rank = int(np.sum(sig > 0))
        rep = _kron.ConvergenceReport("dense-svd", rank=rank, breakdown=rank < k,
                                      sigma=tuple(float(s) for s in sig))
        return sig, U, V, rep
    op = _kron.deflate(R, deflation) if deflation else R
    return _kron.lanczos_svd(op, k=k, steps=None, tol=tol, rng=rng, name=name)
