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
factors. ``symmetric=False`` gives the whole ``R(F_l)``.

**Exact routes** (:func:`conv_top_triplets`, chosen by size and cost): a dense SVD of
``R(F_l)`` when it is small (at most :data:`DENSE_MAX_ENTRIES` entries); the *normal*
route, the eigenproblem of ``RᵀR = (1/N²) Σ_{i,j} (M_iᵀM_j) ⊗ (M_iᵀM_j)`` (or ``RRᵀ``)
on the smaller side formed exactly from the ``(N·K)²`` cross-Gram matrices, restricted
to symmetric matrices, followed by Rayleigh–Ritz with the true products and a residual
check; otherwise Golub–Kahan bidiagonalisation on the matrix-free products above, grown
until the leading triplets reach a relative residual of ``1e-10``. A block with one
position (``T = 1``) is a dense layer's block and takes the dense layers' ``N × N`` Gram
route (:class:`fimlab.approx.KPSVD` squeezes the position axis).

Why not an ``N·K × N·K`` Gram matrix of the per-sample terms: ``⟨M_i ⊗ M_i, M_j ⊗
M_j⟩_F = ⟨M_i, M_j⟩²_F`` is the Gram matrix of the *vectors* ``vec(M_i ⊗ M_i)``; it gives
``‖R(F_l)‖_F`` but not the singular values of ``R(F_l)`` as a map ``R^{d_g²} → R^{d_a²}``
(its rank is up to ``N·K·rank(M)²``, not ``N·K``). A low-rank factorisation exists through
the positions, ``R = (1/N) Σ_{n,t,t'} vec(ā_nt ā_nt'ᵀ) vec(Σ_k g_nkt g_nkt'ᵀ)ᵀ``, with
``N·T(T+1)/2`` terms on the symmetric part: small only for ``T = 1``.
"""

from __future__ import annotations

import math

import numpy as np

from .._errors import ShapeError
from .._validation import check_dense_memory
from ..backend import array_namespace, device_of, is_numpy_namespace, to_numpy, vec
from ..batch import c_order

__all__ = ["RearrangedConvFisher", "conv_top_triplets", "normal_matrix", "DENSE_MAX_ENTRIES"]

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
        #: flops of one product (matvec or rmatvec) on the chosen route
        self.product_flops = cost_s if route == "samples" else cost_p
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

    def sample_matrices(self):
        """The per-sample matrices ``M_nk = J_nkᵀ`` stacked as ``(N·K, d_a, d_g)``."""
        if self.M is not None:
            return self.M
        xp = self.xp
        M = xp.matmul(c_order(xp.matrix_transpose(self.a), xp)[:, None, ...], self.g)
        return xp.reshape(M, (self.m * self.K, self.d_a, self.d_g))

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


#: exact route on blocks above :data:`DENSE_MAX_ENTRIES`: ``"auto"`` (by cost),
#: ``"normal"`` or ``"golub-kahan"``
EXACT_ROUTES = ("auto", "dense", "normal", "golub-kahan")
#: the route :func:`conv_top_triplets` takes when none is given (the KPSVD family's)
EXACT_ROUTE = "auto"
#: memory budget (bytes) of one chunk of cross-Gram matrices on the normal route
NORMAL_CHUNK_BYTES = 64 * 1024**2
#: the normal route's small side is at most this many numbers (``d² × d²``)
NORMAL_MAX_SIDE = 2048


def conv_top_triplets(R, k: int, deflation=(), *, tol: float = 1e-10, rng=None,
                      name: str = "conv block", route: str | None = None):
    """Leading ``k`` singular triplets of ``R − Σ s x yᵀ`` (``deflation`` terms), exactly.

    Routes (``route``, default :data:`EXACT_ROUTE`; ``"auto"`` picks by size and cost):

    - ``"dense"``: LAPACK SVD of the dense ``R`` (``"auto"``: at most
      :data:`DENSE_MAX_ENTRIES` entries);
    - ``"normal"``: the eigenproblem of ``RᵀR`` (or ``RRᵀ``) on the smaller side,
      ``d² × d²`` with ``d = min(d_a, d_g)``, formed exactly from the per-sample
      cross-Gram matrices (:func:`normal_matrix`), then Rayleigh–Ritz with the true
      products and a residual check (NumPy; falls back to Golub–Kahan when the check
      fails or a wanted singular value is too small to resolve through ``RᵀR``);
    - ``"golub-kahan"``: Golub–Kahan grown to ``tol`` (:func:`fimlab.kron.lanczos_svd`,
      ``steps=None``).

    ``"auto"`` runs Golub–Kahan first, within the flops of the cheaper of the dense and
    normal routes that apply, and takes that route when Golub–Kahan has not converged.

    Off NumPy every route is Golub–Kahan. Returns ``(sigma, U, V, report)`` as
    :func:`fimlab.kron.lanczos_svd`.
    """
    from ..kron.krylov import lanczos_svd
    from ..kron.pairs import deflate

    route = EXACT_ROUTE if route is None else route
    if route not in EXACT_ROUTES:
        raise ShapeError(f"route must be one of {EXACT_ROUTES}, got {route!r}")
    numpy_ns = is_numpy_namespace(R.xp)
    if not numpy_ns:  # other namespaces: Golub–Kahan
        op = deflate(R, deflation) if deflation else R
        return lanczos_svd(op, k=k, steps=None, tol=tol, rng=rng, name=name)
    if route == "dense":
        return _dense_top(R, k, deflation)
    op = deflate(R, deflation) if deflation else R
    if route == "normal":
        out = _normal_top(R, op, k, deflation, tol)
        if out is not None:
            return out
    elif route == "auto":
        # Golub–Kahan within the flops of the cheaper direct route (dense SVD when R has
        # at most DENSE_MAX_ENTRIES entries, the normal route when min(d_a, d_g)² is at
        # most NORMAL_MAX_SIDE), then that route: never much more than twice the cheaper
        # (Golub–Kahan needs few steps on a well separated spectrum, up to
        # min(d_a², d_g²) on a flat one)
        small = R.shape[0] * R.shape[1] <= DENSE_MAX_ENTRIES
        direct = []
        if small:
            direct.append((dense_route_flops(R), "dense"))
        if min(R.d_a, R.d_g) ** 2 <= NORMAL_MAX_SIDE:
            direct.append((normal_route_flops(R, k), "normal"))
        direct.sort(key=lambda t: t[0])
        if direct:
            budget = gk_step_budget(R, direct[0][0])
            if budget >= k:
                out = lanczos_svd(op, k=k, steps=None, tol=tol, rng=rng, name=name,
                                  max_steps=budget, warn=False)
                if out[3].converged:
                    return out
        for _, kind in direct:
            if kind == "dense":
                return _dense_top(R, k, deflation)
            out = _normal_top(R, op, k, deflation, tol)
            if out is not None:
                return out
    return lanczos_svd(op, k=k, steps=None, tol=tol, rng=rng, name=name)


def dense_route_flops(R) -> float:
    """Flops of the dense route: forming ``R`` (``N·K·d_a²·d_g²``) and its SVD with
    vectors (``≈ 4 m n² + 8 n³``, ``m × n`` the shape with ``m ≥ n``)."""
    m, n = max(R.shape), min(R.shape)
    return float(R.m * R.K * R.shape[0] * R.shape[1] + 4.0 * m * n * n + 8.0 * n**3)


def normal_route_flops(R, k: int) -> float:
    """Flops of the normal route: the cross-Gram matrices, ``RᵀR`` (both halved by
    ``C_ji = C_ijᵀ``), the eigenproblem of its symmetric part and Rayleigh–Ritz."""
    d, D = sorted((R.d_a, R.d_g))
    nk = R.m * R.K
    ds = d * (d + 1) // 2 if R.symmetric else d * d
    return ((nk * d) ** 2 * D / 2 + nk * nk * d**4 / 2 + 4.0 * ds**3
            + 2 * (k + 4) * R.product_flops)


def gk_step_budget(R, flops: float) -> int:
    """The most Golub–Kahan steps within ``flops``: step ``j`` costs two products and the
    full reorthogonalisation of a left and a right vector, ``4 j (d_a² + d_g²)``."""
    p, n = 2.0 * R.product_flops, 2.0 * (R.shape[0] + R.shape[1])
    s = (-p + math.sqrt(p * p + 4.0 * n * flops)) / (2.0 * n)  # n s² + p s = flops
    return int(min(s, min(R.shape)))


def normal_matrix(R):  # xp: NumPy-only branch (GEMMs on host arrays)
    """``RᵀR`` (``d_g² × d_g²``) when ``d_g ≤ d_a``, else ``RRᵀ`` (``d_a² × d_a²``), of
    ``R = (1/N) Σ_i M_i ⊗ M_i``, exactly, and the side (``"g"`` or ``"a"``)::

        RᵀR = (1/N²) Σ_{i,j} (M_iᵀM_j) ⊗ (M_iᵀM_j),    RRᵀ = (1/N²) Σ_{i,j} (M_iM_jᵀ) ⊗ (M_iM_jᵀ)

    The cross-Gram matrices ``C_ij = M_iᵀM_j`` of all pairs come from one GEMM of the
    stacked ``M`` (a chunk of ``i`` at a time); with ``Z`` their rows ``vec(C_ij)``,
    ``Σ C_ij ⊗ C_ij`` is a permutation of ``ZᵀZ``, and ``C_ji = C_ijᵀ`` halves the work
    (``Σ_{i,j} = S + Sᵀ`` with ``S`` over ``i ≤ j``, diagonal pairs weighted ½). For the
    symmetric part (``R.symmetric``) the result is projected on that side
    (``P_g RᵀR P_g = R_sᵀR_s``, ``P_a RRᵀ P_a = R_sR_sᵀ``).
    """
    M = np.asarray(R.sample_matrices())
    side = "g" if R.d_g <= R.d_a else "a"
    if side == "a":
        M = np.swapaxes(M, 1, 2)  # Rᵀ = (1/N) Σ M_iᵀ ⊗ M_iᵀ
    nk, p, d = M.shape
    Mf = np.ascontiguousarray(np.swapaxes(M, 0, 1)).reshape(p, nk * d)
    S = np.zeros((d * d, d * d), dtype=M.dtype)
    step = max(1, int(NORMAL_CHUNK_BYTES // max(1, 8 * nk * d * d)))
    for i0 in range(0, nk, step):
        i1 = min(nk, i0 + step)
        C = Mf[:, i0 * d:i1 * d].T @ Mf[:, i0 * d:]  # rows (i, q), columns (j, s)
        Z = C.reshape(i1 - i0, d, nk - i0, d).transpose(0, 2, 1, 3)
        ii = np.arange(i0, i1)[:, None]
        jj = np.arange(i0, nk)[None, :]
        wt = np.where(jj > ii, 1.0, np.where(jj == ii, np.sqrt(0.5), 0.0))
        Z = (Z * wt[:, :, None, None]).reshape(-1, d * d)
        S += Z.T @ Z
    S = S.reshape(d, d, d, d).transpose(0, 2, 1, 3).reshape(d * d, d * d)
    H = (S + S.T) / R.m**2
    if R.symmetric:
        t = np.arange(d * d).reshape(d, d).T.reshape(-1)  # index of the transpose
        H = 0.25 * (H + H[t, :] + H[:, t] + H[t][:, t])
    return H, side


def _sym_coordinates(d: int):  # xp: host index arrays for the NumPy-only normal route
    """Rows/weights of an orthonormal basis of symmetric ``d × d`` matrices (column-major
    vec): basis vector ``m`` has weight ``c_m`` at ``i1_m`` and at ``i2_m``."""
    p, q = np.triu_indices(d)
    i1, i2 = p + d * q, q + d * p
    c = np.where(p == q, 0.5, np.sqrt(0.5))
    return i1, i2, c


def _normal_top(R, op, k: int, deflation, tol: float):  # xp: NumPy-only branch
    """The normal route of :func:`conv_top_triplets`; ``None`` when it cannot certify
    the triplets (the caller then runs Golub–Kahan)."""
    import scipy.linalg

    from ..kron.pairs import ConvergenceReport

    if R.symmetric:  # the symmetric coordinates hold the deflated operator only for
        # symmetric deflation vectors (KFAC's factors, earlier triplets of R_s)
        for _, x, y in deflation:
            for v, dd in ((np.asarray(x), R.d_a), (np.asarray(y), R.d_g)):
                vt = v.reshape(dd, dd).T.reshape(-1)
                if np.linalg.norm(v - vt) > 1e-12 * np.linalg.norm(v):
                    return None
    H, side = normal_matrix(R)
    nprod = 0
    for s, x, y in deflation:  # (R − Σ s x yᵀ)ᵀ(R − Σ s x yᵀ) on the small side
        x, y = np.asarray(x), np.asarray(y)
        if side == "g":
            wv = np.asarray(R.rmatvec(x))
            H = H - s * (np.outer(wv, y) + np.outer(y, wv))
        else:
            wv = np.asarray(R.matvec(y))
            H = H - s * (np.outer(wv, x) + np.outer(x, wv))
        nprod += 1
    for s1, x1, y1 in deflation:
        for s2, x2, y2 in deflation:
            if side == "g":
                H = H + s1 * s2 * float(np.dot(x1, x2)) * np.outer(y1, y2)
            else:
                H = H + s1 * s2 * float(np.dot(y1, y2)) * np.outer(x1, x2)
    d = R.d_g if side == "g" else R.d_a
    n = d * d
    if R.symmetric:
        i1, i2, c = _sym_coordinates(d)
        Hs = c[:, None] * (H[i1, :] + H[i2, :])
        Hs = (Hs[:, i1] + Hs[:, i2]) * c[None, :]
    else:
        Hs = H
    ns = Hs.shape[0]
    q = min(k + 4, ns)
    ev, Y = scipy.linalg.eigh(0.5 * (Hs + Hs.T), subset_by_index=[ns - q, ns - 1])
    ev, Y = ev[::-1], Y[:, ::-1]
    if R.symmetric:
        X = np.zeros((n, q), dtype=Y.dtype)
        np.add.at(X, i1, c[:, None] * Y)
        np.add.at(X, i2, c[:, None] * Y)
    else:
        X = Y
    # Rayleigh–Ritz with the true products: W = op X (side g) or opᵀ X (side a)
    fwd, back = (op.matvec, op.rmatvec) if side == "g" else (op.rmatvec, op.matvec)
    W = np.stack([np.asarray(fwd(X[:, j])) for j in range(q)], axis=1)
    nprod += q
    Uw, sig, Qt = np.linalg.svd(W, full_matrices=False)
    Xk = X @ Qt.T[:, :k]
    sig = sig[:k]
    if sig.size < k or sig[0] <= 0 or sig[-1] <= np.sqrt(np.finfo(W.dtype).eps) * 1e2 * sig[0]:
        return None  # rank below k or a value RᵀR cannot resolve: Golub–Kahan decides
    Wk = Uw[:, :k]
    res = max(float(np.linalg.norm(np.asarray(back(Wk[:, j])) - sig[j] * Xk[:, j]))
              for j in range(k)) / float(sig[0])
    nprod += k
    if res > tol:
        return None
    U, V = (Wk, Xk) if side == "g" else (Xk, Wk)
    rep = ConvergenceReport("normal", True, res, tol, 0, 0, nprod, False, k,
                            tuple(float(v) for v in sig))
    return sig.copy(), U, V, rep


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
