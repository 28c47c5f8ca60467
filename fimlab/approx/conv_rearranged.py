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
from ..backend import array_namespace, device_of, is_numpy_namespace, to_numpy, vec
from ..batch import c_order

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

    route : {"auto", "samples", "positions"}
        How products are computed (same result): ``"samples"``, batched GEMMs on the
        per-sample matrices ``M_nk = J_nkᵀ`` (held, ``N·K·d_a·d_g`` numbers,
        memory-guarded), ``O(N·K·(d_a d_g² + d_a² d_g))`` per product; ``"positions"``,
        through the ``T × T`` matrices ``Σ_k G_nk V G_nkᵀ`` and ``A_n U A_nᵀ`` (rows
        ``ā_nt``, ``g_nkt``), ``O(N·(K T d_g² + K T² d_g + T² d_a + T d_a²))``; ``"auto"``
        takes the cheaper when ``N·K·T²`` numbers fit in 256 MiB.

    Notes
    -----
    ``R(F_l)`` is never formed (:meth:`to_dense` is for tests and small blocks).

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

    def __init__(self, a, g, max_bytes: int | None = None, symmetric: bool = True,
                 route: str = "auto"):
        self.symmetric = bool(symmetric)
        if a.ndim != 3 or g.ndim != 4 or g.shape[2] != a.shape[1] or g.shape[0] != a.shape[0]:
            raise ShapeError(f"a conv block needs a (N, T, d_a) and g (N, K, T, d_g), got "
                             f"{tuple(a.shape)} and {tuple(g.shape)}")
        if route not in ("auto", "samples", "positions"):
            raise ShapeError(f"route must be 'auto', 'samples' or 'positions', got {route!r}")
        xp = array_namespace(a, g)
        self.xp, self.dtype = xp, a.dtype
        N, T, da = (int(s) for s in a.shape)
        K, dg = int(g.shape[1]), int(g.shape[3])
        self.m, self.K, self.T, self.d_a, self.d_g = N, K, T, da, dg
        self.a, self.g = a, g
        self.shape = (da * da, dg * dg)
        # flops per product: on the per-sample matrices M_nk, or position by position
        # through the T × T matrices G_nk V G_nkᵀ and A_n U A_nᵀ (cheaper when T is small
        # against d_a, d_g; needs N·K·T² numbers)
        cost_s = N * K * (da * dg * dg + da * da * dg)
        cost_p = N * (K * T * dg * dg + K * T * T * dg + T * T * da + T * da * da)
        fits = N * K * T * T * 8 <= 256 * 1024**2
        if route == "auto":
            route = "positions" if cost_p < cost_s and fits else "samples"
        self.route = route
        self.M = None
        if route == "samples":
            check_dense_memory((N * K, da * dg), a.dtype, max_bytes,
                               "per-sample gradient matrices of a conv block",
                               "a smaller curvature batch (FactorBatch.subset)")
            # M_nk = J_nkᵀ = Σ_t ā_nt g_nktᵀ: (N, 1, d_a, T) @ (N, K, T, d_g)
            M = xp.matmul(c_order(xp.matrix_transpose(a), xp)[:, None, ...], g)
            self.M = xp.reshape(M, (N * K, da, dg))
            # (d_a, N·K, d_g) in C order: both products become 2-D GEMMs
            self._Mp = c_order(xp.permute_dims(self.M, (1, 0, 2)), xp)
        else:
            # G_nkᵀ stacked along k: (N, K·d_g, T); ā_ntᵀ: (N, d_a, T)
            self._gT = c_order(xp.reshape(c_order(xp.permute_dims(g, (0, 1, 3, 2)), xp),
                                          (N, K * dg, T)), xp)
            self._aT = c_order(xp.matrix_transpose(a), xp)

    def _sym(self, V):
        xp = self.xp
        return 0.5 * (V + xp.matrix_transpose(V)) if self.symmetric else V

    def matvec(self, x):
        if x.shape != (self.shape[1],):
            raise ShapeError(f"matvec needs a vector of length {self.shape[1]}, got "
                             f"shape {tuple(x.shape)}")
        xp = self.xp
        N, K, T, da, dg = self.m, self.K, self.T, self.d_a, self.d_g
        V = self._sym(xp.matrix_transpose(xp.reshape(x, (dg, dg))))
        if self.route == "samples":  # Σ_i M_i V M_iᵀ = [M_i V]_i [M_i]_iᵀ
            MV = xp.reshape(xp.reshape(self._Mp, (da * N * K, dg)) @ V, (da, N * K * dg))
            out = MV @ xp.matrix_transpose(xp.reshape(self._Mp, (da, N * K * dg)))
        else:  # Σ_n A_nᵀ (Σ_k G_nk V G_nkᵀ) A_n
            GV = xp.reshape(xp.reshape(self.g, (N * K * T, dg)) @ V, (N, K, T, dg))
            GV = c_order(xp.reshape(c_order(xp.permute_dims(GV, (0, 2, 1, 3)), xp),
                                    (N, T, K * dg)), xp)
            S = GV @ self._gT  # (N, T, T)
            B = S @ self.a  # (N, T, d_a)
            af = xp.reshape(self.a, (N * T, da))
            out = xp.matrix_transpose(af) @ xp.reshape(B, (N * T, da))
        return vec(out / N, xp)

    def rmatvec(self, y):
        if y.shape != (self.shape[0],):
            raise ShapeError(f"rmatvec needs a vector of length {self.shape[0]}, got "
                             f"shape {tuple(y.shape)}")
        xp = self.xp
        N, K, T, da, dg = self.m, self.K, self.T, self.d_a, self.d_g
        U = self._sym(xp.matrix_transpose(xp.reshape(y, (da, da))))
        if self.route == "samples":  # Σ_i M_iᵀ U M_i
            UM = U @ xp.reshape(self._Mp, (da, N * K * dg))
            Mf = xp.reshape(self._Mp, (da * N * K, dg))
            out = xp.matrix_transpose(Mf) @ xp.reshape(UM, (da * N * K, dg))
        else:  # Σ_{n,k} G_nkᵀ (A_n U A_nᵀ) G_nk
            aU = xp.reshape(xp.reshape(self.a, (N * T, da)) @ U, (N, T, da))
            Q = aU @ self._aT  # (N, T, T): A_n U A_nᵀ
            QG = Q[:, None, ...] @ self.g  # (N, K, T, d_g): Q_n G_nk
            n = N * K * T
            gf = xp.reshape(self.g, (n, dg))
            out = xp.matrix_transpose(gf) @ xp.reshape(QG, (n, dg))
        return vec(out / N, xp)

    def to_dense(self, max_bytes: int | None = None):
        """Dense ``R(F_l) = (1/N) Σ M_nk ⊗ M_nk`` (memory-guarded)."""
        check_dense_memory(self.shape, self.dtype, max_bytes, "rearranged conv block R(F_l)",
                           "RearrangedConvFisher.matvec/rmatvec")
        xp = self.xp
        dg = self.d_g
        if is_numpy_namespace(xp):
            return self._dense_numpy()
        # other namespaces: R e_j column by column (tests and small blocks only)
        E = xp.eye(dg * dg, dtype=self.dtype, device=device_of(self.a))
        return xp.stack([self.matvec(E[:, j]) for j in range(dg * dg)], axis=1)

    def _dense_numpy(self):  # xp: NumPy-only branch (one einsum over the samples)
        da, dg = self.d_a, self.d_g
        M = self.M
        if M is None:
            M = np.matmul(np.swapaxes(self.a, 1, 2)[:, None], self.g).reshape(-1, da, dg)
        R = np.einsum("iab,icd->cadb", M, M, optimize=True)
        if self.symmetric:  # R P_g: average each column with its transposed twin
            R = 0.5 * (R + R.transpose(0, 1, 3, 2))
        return R.reshape(da * da, dg * dg) / self.m


def conv_top_triplets(R, k: int, deflation=(), *, tol: float = 1e-10, rng=None,
                      name: str = "conv block"):
    """Leading ``k`` singular triplets of ``R − Σ s x yᵀ`` (``deflation`` terms), exactly:
    dense LAPACK SVD when ``R`` has at most :data:`DENSE_MAX_ENTRIES` entries and lives in
    NumPy, else Golub–Kahan grown to ``tol`` (:func:`fimlab.kron.lanczos_svd`,
    ``steps=None``).

    Returns ``(sigma, U, V, report)`` as :func:`fimlab.kron.lanczos_svd`.
    """
    from ..kron.krylov import lanczos_svd
    from ..kron.pairs import deflate

    if R.shape[0] * R.shape[1] <= DENSE_MAX_ENTRIES and is_numpy_namespace(R.xp):
        return _dense_top(R, k, deflation)
    op = deflate(R, deflation) if deflation else R
    return lanczos_svd(op, k=k, steps=None, tol=tol, rng=rng, name=name)


def _dense_top(R, k, deflation):  # xp: NumPy-only branch (dense LAPACK SVD)
    from ..kron.pairs import ConvergenceReport

    D = R.to_dense()
    for s, x, y in deflation:
        D = D - s * np.outer(to_numpy(x), to_numpy(y))
    Uf, S, Vt = np.linalg.svd(D, full_matrices=False)
    sig = np.zeros(k)
    U = np.zeros((R.shape[0], k), dtype=D.dtype)
    V = np.zeros((R.shape[1], k), dtype=D.dtype)
    tiny = S[0] * max(R.shape) * np.finfo(D.dtype).eps if S.size else 0.0
    for j in range(min(k, S.size)):
        if S[j] > tiny:
            sig[j], U[:, j], V[:, j] = S[j], Uf[:, j], Vt[j]
    rank = int(np.sum(sig > 0))
    rep = ConvergenceReport("dense-svd", rank=rank, breakdown=rank < k,
                            sigma=tuple(float(v) for v in sig))
    return sig, U, V, rep
