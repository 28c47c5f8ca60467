"""The Gram route to the leading singular triplets of R(F_l)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from .._validation import check_choice
from ..backend import (
    array_namespace,
    asarray_on,
    device_of,
    dtype_eps,
    is_numpy_namespace,
    vec,
)
from ._checks import check_layer
from .krylov import gram_golub_kahan
from .pairs import ConvergenceReport
from .rearrange import psd_sign

# =====================================================================================
# The exact route: R(F_l) = (1/N) Uᵀ V and an m × m problem from Gram matrices
# =====================================================================================


def weighted_gram(X, w):
    """``Xᵀ diag(w) X`` for rows ``X`` of shape ``(m, d)``, or ``Σ_n w_n X_nᵀ X_n`` for
    ``X`` of shape ``(m, K, d)`` (``K`` rows per sample), with signed weights.

    Computed as symmetric rank-k products (``YᵀY``, which NumPy's BLAS runs as SYRK) on
    the rows of positive and of negative weight, so a one-signed combination costs no more
    than one unweighted Gram matrix, and the result is exactly symmetric.
    """
    xp = array_namespace(X, w)
    d = X.shape[-1]
    shape = (-1,) + (1,) * (X.ndim - 1)
    for sign in (1.0, -1.0):  # one-signed weights: one SYRK, no row selection
        if bool(xp.all(sign * w >= 0)):
            Y = xp.reshape(X * xp.reshape(xp.sqrt(sign * w), shape), (-1, d))
            return gram_of_rows(Y, sign)
    # mixed signs: rows of positive weight first (one copy), then two SYRKs on views
    neg = w < 0
    order = xp.argsort(xp.astype(neg, xp.int8), stable=True)
    k = int(X.shape[0]) - int(xp.sum(xp.astype(neg, xp.int64)))
    Y = xp.take(X, order, axis=0)
    Y *= xp.reshape(xp.sqrt(xp.abs(xp.take(w, order))), shape)
    Y = xp.reshape(Y, (X.shape[0], -1, d))
    Yp, Yn = xp.reshape(Y[:k, ...], (-1, d)), xp.reshape(Y[k:, ...], (-1, d))
    # NumPy's ``YᵀY`` is its BLAS SYRK (one thread pool with the GEMMs around it: SciPy's
    # syrk, a second OpenBLAS, measured 2x slower right after a NumPy GEMM; issue 20)
    M = xp.matrix_transpose(Yp) @ Yp
    if isinstance(M, np.ndarray):
        M -= Yn.T @ Yn
        return M
    return M - xp.matrix_transpose(Yn) @ Yn


def gram_of_rows(Y, alpha: float = 1.0):
    """``α YᵀY`` for ``Y`` of shape ``(n, d)``, exactly symmetric.

    ``Y.T @ Y``, which NumPy runs as its BLAS ``syrk`` (one triangle, mirrored by NumPy),
    with ``α`` applied in place: the same thread pool as the GEMMs that produced ``Y`` —
    SciPy's ``syrk`` (a second OpenBLAS with its own threads) measured 34 vs 16 ms for a
    512 × 1001 ``Y`` right after a NumPy GEMM on this project's machine
    (see the performance page).

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.arange(6.0).reshape(3, 2)
    >>> gram_of_rows(Y, 0.5).tolist()
    [[10.0, 13.0], [13.0, 17.5]]
    """
    xp = array_namespace(Y)
    P = xp.matrix_transpose(Y) @ Y
    if alpha == 1.0:
        return P
    if isinstance(P, np.ndarray):
        P *= alpha
        return P
    return alpha * P


def _squared_row_gram(X):
    """``(X Xᵀ)∘(X Xᵀ)`` for rows ``X`` of shape ``(m, d)``: one symmetric rank-k update
    (``X @ X.T``, NumPy's BLAS ``syrk``), the square taken in place for NumPy (a fresh
    ``m × m`` temporary costs page faults comparable to the product)."""
    xp = array_namespace(X)
    G = X @ xp.matrix_transpose(X)
    if isinstance(G, np.ndarray):
        G *= G
        return G
    return G * G


class _GramSide:
    """One side of ``R(F_l) = (1/N) Uᵀ V``: the Gram matrix ``M = U Uᵀ`` (``m × m``),
    applied either as ``M`` or, when the rows are short (``d² ≤ m``), as ``E (Eᵀ X)``
    with the explicit rows ``E``; :meth:`factor` gives ``L`` with ``M = L Lᵀ``."""

    def __init__(self, xp, M=None, E=None):
        self.xp, self.M, self.E = xp, M, E
        self._L = None
        self.kind = "explicit" if E is not None else None  # or "cholesky" / "eigh"
        self.m = int((M if M is not None else E).shape[0])

    @property
    def dim(self) -> int:
        return int(self.E.shape[1]) if self.E is not None else self.m

    def apply(self, X):
        if self.E is not None:
            return self.E @ (self.xp.matrix_transpose(self.E) @ X)
        return self.M @ X

    def factor(self):
        if self._L is None:
            if self.E is not None:
                self._L = self.E
            else:
                self._L, self.kind = _psd_factor(self.M, self.xp)
        return self._L

    def coords(self, y):
        """Coordinates ``L⁺ y`` of the vector whose products with the rows are ``y``
        (``y = U x``): for ``L`` from Cholesky a triangular solve; from eigh, whose
        columns are orthogonal, a scaling. (Explicit rows: the vector is its own
        coordinates; the caller passes it.)"""
        xp, L = self.xp, self.factor()
        if self.kind == "cholesky":
            from ..backend import scipy_linalg

            sl = scipy_linalg(xp)
            if sl is not None:
                return sl.solve_triangular(L, y, lower=True)
            return xp.linalg.solve(L, y)
        return (xp.matrix_transpose(L) @ y) / xp.sum(L * L, axis=0)


def _psd_factor(M, xp):
    """``(L, kind)`` with ``L Lᵀ = M`` for a PSD (often singular) Gram matrix: Cholesky,
    which is backward stable whenever it completes; eigh with thresholding when it does
    not."""
    try:
        L = xp.linalg.cholesky(M)
        if bool(xp.all(xp.isfinite(L))):
            return L, "cholesky"
    except Exception:  # noqa: BLE001 - numpy/cupy/strict raise different types
        pass
    w, Q = xp.linalg.eigh(M)
    wmax = float(xp.max(w)) if w.shape[0] else 0.0
    idx = xp.nonzero(w > max(wmax, 0.0) * M.shape[0] * dtype_eps(M.dtype))[0]
    return xp.take(Q, idx, axis=1) * xp.sqrt(xp.take(w, idx)), "eigh"


def _top_eigh(B, k: int, xp):
    """The ``k`` largest eigenpairs of a symmetric ``B``, descending."""
    n = B.shape[0]
    k = min(k, n)
    if is_numpy_namespace(xp) and n > 4 * k + 8:
        import scipy.linalg

        w, Q = scipy.linalg.eigh(B, subset_by_index=[n - k, n - 1])
    else:
        w, Q = xp.linalg.eigh(B)
        w, Q = w[n - k:], Q[:, n - k:]
    return xp.flip(w, axis=0), xp.flip(Q, axis=1)


class _Core:
    """The ``m × m`` core ``C = c0·I + X Yᵀ`` in ``R = Uᵀ C V``: ``I/m`` for ``R(F_l)``,
    ``I/m − 11ᵀ/m²`` for ``R(F_l) − vec(A_K)vec(G_K)ᵀ``, ``I/m − w dᵀ/σ`` after deflating
    a known triplet."""

    def __init__(self, c0: float, X=None, Y=None):
        self.c0, self.X, self.Y = float(c0), X, Y

    def apply(self, Z, xp, transpose: bool = False):
        out = self.c0 * Z
        if self.X is not None:
            A, B = (self.Y, self.X) if transpose else (self.X, self.Y)
            out = out + A @ (xp.matrix_transpose(B) @ Z)
        return out


class RearrangedGram:
    """The exact leading singular triplets of ``R(F_l)`` without iterating over
    ``d_a²``- or ``d_g²``-long vectors (docs/papers.md R3; the route of issue 3).

    ``R(F_l) = (1/N) Uᵀ V`` with rows ``U_n = vec(ā_n ā_nᵀ)`` and ``V_n = vec(G_n)``.
    Its non-zero singular triplets are those of an ``m × m`` problem built from the Gram
    matrices ``M_U = U Uᵀ = (ĀĀᵀ)∘(ĀĀᵀ)`` and ``M_V = V Vᵀ = [⟨G_n, G_n'⟩] =
    [Σ_{k,k'} (g_nkᵀ g_n'k')²]``: with ``M_V = L Lᵀ`` (Cholesky, or thresholded eigh
    when ``M_V`` is numerically singular) and ``Z = C L`` (``C = I/m``),
    ``B = Zᵀ M_U Z`` has the eigenvalues ``σ_r²`` and eigenvectors ``q_r``; then

        σ_r unvec(u_r) = Āᵀ diag(w_r) Ā,     w_r = Z q_r
        σ_r unvec(v_r) = Σ_n d_rn G_n = gᵀ diag(d_r) g,   d_r = Cᵀ M_U w_r / σ_r

    (GEMMs; no division by small Gram eigenvalues) — the dense route, ``≈ 3m³`` flops
    whatever ``σ₂/σ₁`` is. The default route for ``m > 96`` is cheaper:
    :meth:`golub_kahan` runs on Gram coefficients (``v = Vᵀy`` kept as ``y``, so
    ``R v = Uᵀ(C M_V y)`` and ``⟨v, v'⟩ = yᵀM_V y'``), two ``m × m`` matrix-vector
    products per step, until the wanted triplets have relative residual ``≤ 1e-10``
    (4–7 steps for the leading triplet of the auto-encoder's blocks, 17–28 for two); it
    falls back to the dense route after ``max_steps`` steps, so a small spectral gap
    costs time, never accuracy. A short side (``d² ≤ m``) uses its explicit rows instead
    of a Gram matrix. The same machinery handles ``R = Uᵀ C V`` for the other cores the
    methods need (the KFAC-corrected residual, a deflated ``R``).

    Parameters
    ----------
    a : array (m, d_a)
    g : array (m, K, d_g)
    rank_rtol : float, optional
        Singular values ``≤ rank_rtol·σ₁`` count as zero (the numerical rank of
        ``R(F_l)``); default ``10·√(n·eps)``, ``n`` the size of the small problem (the
        Gram route resolves singular values down to about ``√eps·σ₁``).

    Notes
    -----
    Gram matrices and the small problem are computed in float64 whatever the input
    dtype; the factors come back in the input dtype.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, g = rng.normal(size=(20, 4)), rng.normal(size=(20, 1, 3))
    >>> s, w, d = RearrangedGram(a, g).top(2)
    >>> from fimlab.kron import RearrangedFisher
    >>> s_dense = np.linalg.svd(RearrangedFisher(a, g).to_dense(), compute_uv=False)
    >>> bool(np.allclose(s, s_dense[:2]))
    True
    """

    #: byte budget of one chunk of the g-Gram matrix (m·K)² when K > 1
    chunk_bytes = 64 * 1024**2

    def __init__(self, a, g, *, rank_rtol: float | None = None):
        xp, m, K, d_a, d_g = check_layer(a, g)
        self.xp, self.m, self.K, self.d_a, self.d_g = xp, m, K, d_a, d_g
        self.a, self.g, self.dtype = a, g, a.dtype
        f64 = xp.float64
        a64 = a if a.dtype == f64 else xp.astype(a, f64)
        g64 = g if g.dtype == f64 else xp.astype(g, f64)
        # U side: rows vec(ā ā^T)
        if d_a * d_a <= m:
            self.U = _GramSide(xp, E=vec(a64[:, :, None] * a64[:, None, :], xp))
        else:
            self.U = _GramSide(xp, M=_squared_row_gram(a64))
        # V side: rows vec(G_n)
        if d_g * d_g <= m:
            self.V = _GramSide(xp, E=vec(xp.matrix_transpose(g64) @ g64, xp))
        else:
            self.V = _GramSide(xp, M=self._g_gram(g64))
        n = min(self.U.dim, self.V.dim)
        self.rank_rtol = (10.0 * math.sqrt(max(n, 1) * dtype_eps(f64))
                          if rank_rtol is None else float(rank_rtol))

    def _g_gram(self, g64):
        """``[⟨G_n, G_n'⟩]`` = ``Σ_{k,k'} (g_nkᵀ g_n'k')²``, by the cheaper of a chunked
        Gram of the ``m·K`` vectors and the Gram of the explicit ``G_n``."""
        xp, m, K, d_g = self.xp, self.m, self.K, self.d_g
        if K == 1:
            return _squared_row_gram(g64[:, 0, :])
        cost_vec = (m * K) ** 2 * d_g
        cost_exp = m * K * d_g * d_g + m * m * d_g * d_g
        if cost_exp < cost_vec and m * d_g * d_g * 8 <= self.chunk_bytes * 4:
            Gn = vec(xp.matrix_transpose(g64) @ g64, xp)  # (m, d_g²)
            return Gn @ xp.matrix_transpose(Gn)
        gf = xp.reshape(g64, (m * K, d_g))
        rows = max(1, min(m, self.chunk_bytes // (8 * K * K * m)))
        parts = []
        for s in range(0, m, rows):
            e = min(m, s + rows)
            P = xp.reshape(gf[s * K:e * K, :] @ xp.matrix_transpose(gf), (e - s, K, m, K))
            parts.append(xp.sum(xp.sum(P * P, axis=3), axis=1))
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)

    # -- cores ---------------------------------------------------------------------------
    def core(self, deflate: Sequence[tuple] = ()):
        """``C = I/m − Σ w dᵀ/σ`` for known triplets ``(σ, w, d)`` (weights as returned by
        :meth:`top`)."""
        if not deflate:
            return _Core(1.0 / self.m)
        xp = self.xp
        X = xp.stack([-w / s for s, w, _ in deflate], axis=1)
        Y = xp.stack([d for _, _, d in deflate], axis=1)
        return _Core(1.0 / self.m, X, Y)

    def kfac_residual_core(self):
        """``C = I/m − 11ᵀ/m²``: ``Uᵀ C V = R(F_l) − vec(A_K) vec(G_K)ᵀ`` with the KFAC
        factors ``A_K = Āᵀ Ā/m``, ``G_K = Σ_n G_n/m``."""
        xp = self.xp
        one = xp.ones((self.m, 1), dtype=xp.float64, device=device_of(self.a))
        return _Core(1.0 / self.m, -one / self.m**2, one)

    # -- the small problem -------------------------------------------------------------
    def _base(self):
        """Cached pieces of the default problem (``C = I/m``), factoring the side with
        the smaller rank: ``Z₀ = L/m``, ``T₀ = M Z₀``, ``B₀ = Z₀ᵀ T₀``."""
        if getattr(self, "_base_cache", None) is None:
            xp = self.xp
            tr = self.V.dim > self.U.dim  # factor U (and transpose the core) if smaller
            A_side, B_side = (self.V, self.U) if tr else (self.U, self.V)
            L = B_side.factor()
            Z0 = L / self.m
            # two GEMMs in NumPy's BLAS: SciPy's TRMM (half the flops, but a second
            # OpenBLAS thread pool) measured 48 vs 24 ms at m = 512 after a NumPy GEMM
            T0 = A_side.apply(Z0)
            B0 = xp.matrix_transpose(Z0) @ T0
            # B0 is symmetric up to round-off; the eigensolvers read one triangle
            self._base_cache = (tr, A_side, Z0, T0, B0)
        return self._base_cache

    #: Gram problems with ``m`` at or below this use the dense eigenproblem directly
    dense_below = 96
    #: Golub–Kahan steps before :meth:`top` falls back to the dense eigenproblem
    max_steps = 160
    #: relative residual ``‖Rᵀu − σv‖/σ₁`` at which a Golub–Kahan triplet is accepted
    tol = 1e-10

    #: default ``method`` of :meth:`top` (``"auto"``, ``"dense"`` or ``"lanczos"``)
    method = "auto"

    def top(self, k: int, core: _Core | None = None, *, method: str | None = None):
        """The ``k`` leading singular triplets of ``Uᵀ C V`` (default ``R(F_l)``).

        Returns ``(sigma, w, d)``: ``sigma`` a float64 NumPy array ``(k,)``
        (descending), and weights ``w, d`` of shape ``(m, k)`` with
        ``σ_r unvec(u_r) = Āᵀ diag(w_r) Ā`` and ``σ_r unvec(v_r) = Σ_n d_rn G_n``. Singular
        values at or below ``rank_rtol·σ₁(R(F_l))`` (and their weights) are returned as
        zeros.

        ``method="dense"`` solves the ``m × m`` eigenproblem (Cholesky of one Gram
        matrix, a congruence, a partial ``eigh``: ``≈ 3m³`` flops whatever the
        spectrum). ``method="lanczos"`` runs Golub–Kahan bidiagonalisation in Gram
        coefficients (:meth:`golub_kahan`: two ``m × m`` matrix-vector products per
        step, full reorthogonalisation) until every wanted triplet has relative
        residual ``≤ tol`` (``1e-10``), and falls back to the dense route if that takes
        more than ``max_steps`` steps — so a small spectral gap costs at most the dense
        route plus ``max_steps`` cheap steps, and never accuracy. ``"auto"`` (default)
        (the class attribute ``method``, default) takes Golub–Kahan for
        ``m > dense_below`` (``96``). A core ``I/m + X Yᵀ`` is
        applied at ``O(N·rank)`` per step (Golub–Kahan) or updates the cached dense
        problem at ``O(N²)`` (dense).
        """
        method = self.method if method is None else method
        check_choice(method, ("auto", "dense", "lanczos"), "method of RearrangedGram.top")
        n = min(self.U.dim, self.V.dim)
        if method == "lanczos" or (method == "auto" and self.m > self.dense_below
                                   and n > 4 * k + 8):
            res = self._top_gk(k, core)
            if res is not None:
                return res
        return self._top_dense(k, core)

    def _top_gk(self, k: int, core: _Core | None):
        """:meth:`top` by :meth:`golub_kahan`; ``None`` when it did not converge."""
        xp = self.xp
        C = core if core is not None else self.core()
        sig, w, d, rep = self.golub_kahan(k, C, tol=self.tol, max_steps=self.max_steps)
        if not rep.converged:
            return None
        if core is None:
            self._sigma1 = float(sig[0]) if sig.size else 0.0
        s1 = self.sigma1
        keep = int(np.sum(sig > self.rank_rtol * s1)) if s1 > 0 else 0
        mask = asarray_on(np.where(np.arange(k) < keep, 1.0, 0.0), w, dtype=xp.float64)
        sigma = np.where(np.arange(k) < keep, sig, 0.0)
        return sigma, w * mask, d * mask

    def golub_kahan(self, k: int, core: _Core | None = None, *, tol: float = 1e-10,
                    max_steps: int | None = None, rng=None):
        """The ``k`` leading singular triplets of ``R = Uᵀ C V`` by Golub–Kahan
        bidiagonalisation carried out on Gram coefficients.

        A right vector ``v = Vᵀy`` is stored as its coefficients ``y ∈ ℝᵐ`` (and
        ``M_V y``), a left vector ``u = Uᵀx`` as ``x`` (and ``M_U x``); then
        ``R v = Uᵀ (C M_V y)``, ``Rᵀu = Vᵀ (Cᵀ M_U x)`` and ``⟨v, v'⟩ = yᵀ M_V y'``, so a
        step costs one product with each Gram matrix (``2m²`` flops each) plus the
        reorthogonalisation (classical Gram–Schmidt, twice, in the ``M``-inner
        products). The iteration starts from ``y = 1 + ε`` (the KFAC direction
        ``vec(G_K) = Vᵀ1/m`` plus a fixed random perturbation of the same norm, so that
        no triplet is missed by symmetry), checks the Ritz residuals
        ``β_j |p_j(r)| ≤ tol·σ₁`` and stops at convergence, at a breakdown (an
        invariant subspace: the Ritz triplets are exact), or after ``max_steps``
        (default ``min(m, 160)``). ``rng`` (a seed or ``numpy.random.Generator``; default
        seed 0) draws the perturbation.

        Returns ``(sigma, w, d, report)`` as :meth:`top` (weights of the unthresholded
        Ritz triplets; ``report.converged`` says whether ``tol`` was met).
        """
        xp, m = self.xp, self.m
        C = core if core is not None else self.core()
        dev = device_of(self.a)
        t0 = time.perf_counter()
        rank_bound = min(self.U.dim, self.V.dim)
        steps = min(rank_bound, m, self.max_steps if max_steps is None else int(max_steps))
        MU, MV = self.U.apply, self.V.apply
        rng = np.random.default_rng(0 if rng is None else rng)
        y0 = np.ones(m) / math.sqrt(m) + rng.standard_normal(m) / math.sqrt(m)
        y = asarray_on(y0, self.a, dtype=xp.float64)
        My = MV(y)
        nrm = math.sqrt(max(float(xp.sum(y * My)), 0.0))
        report = ConvergenceReport("gram-golub-kahan", tol=tol)
        z = xp.zeros((m, k), dtype=xp.float64, device=dev)
        if nrm == 0.0:  # V = 0: R = 0
            report.breakdown, report.rank, report.sigma = True, 0, (0.0,) * k
            return np.zeros(k), z, xp.zeros((m, k), dtype=xp.float64, device=dev), report
        y, My = y / nrm, My / nrm
        CX = C.X if C.X is not None else xp.zeros((m, 0), dtype=xp.float64, device=dev)
        CY = C.Y if C.Y is not None else xp.zeros((m, 0), dtype=xp.float64, device=dev)
        Xt, Yt, alphas, betas, flags, res = gram_golub_kahan(
            MU, MV, C.c0, CX, CY, y, My, int(k), float(tol), float(self.rank_rtol),
            int(steps), int(rank_bound), bool(self.U.dim <= self.V.dim))
        left_bd, conv, breakdown = (bool(f) for f in flags)
        report.breakdown = breakdown or left_bd
        alphas, betas = [float(x) for x in alphas], [float(x) for x in betas]
        n_have = len(alphas)
        if n_have == 0:
            report.rank, report.sigma = 0, (0.0,) * k
            report.converged = True
            return (np.zeros(k), z, xp.zeros((m, k), dtype=xp.float64, device=dev),
                    report)
        if left_bd:  # α_j+1 = 0: R [V_j v_j+1] = U_j [B_j β_j e_j], the triplets are exact
            B = np.zeros((n_have, n_have + 1))
            B[:, :n_have] = np.diag(alphas) + np.diag(betas[: n_have - 1], 1)
            B[-1, -1] = betas[-1]
            conv, res = True, 0.0
        else:
            B = np.diag(alphas) + np.diag(betas[: n_have - 1], 1)
        P, svals, Qt = np.linalg.svd(B, full_matrices=False)
        Q = Qt.T
        kk = min(k, n_have)
        sig = np.zeros(k)
        sig[:kk] = svals[:kk]
        Pk = asarray_on(P[:, :kk] * svals[:kk], Xt, dtype=xp.float64)
        Qk = asarray_on(Q[:, :kk] * svals[:kk], Xt, dtype=xp.float64)
        # σ u = Uᵀ w, σ v = Vᵀ d
        wk = xp.matrix_transpose(Xt[:n_have, :]) @ Pk
        dk = xp.matrix_transpose(Yt[: Q.shape[0], :]) @ Qk
        # orient: weights of each triplet sum to ≥ 0 (the leading ones are then one-signed)
        sgn = xp.sum(wk, axis=0) + xp.sum(dk, axis=0)
        flip = xp.where(sgn < 0, -xp.ones_like(sgn), xp.ones_like(sgn))
        w = xp.zeros((m, k), dtype=xp.float64, device=dev)
        d = xp.zeros((m, k), dtype=xp.float64, device=dev)
        w[:, :kk], d[:, :kk] = wk * flip, dk * flip
        report.converged = bool(conv)
        report.residual = res
        report.iterations = n_have
        report.n_products = 2 * n_have
        report.rank = int(np.sum(sig > 0))
        report.sigma = tuple(float(s) for s in sig)
        report.seconds = time.perf_counter() - t0
        return sig, w, d, report

    def _top_dense(self, k: int, core: _Core | None = None):
        """:meth:`top` by the dense ``m × m`` eigenproblem."""
        xp = self.xp
        C = core if core is not None else self.core()
        if abs(C.c0 * self.m - 1.0) > 1e-12:
            raise ValueError("cores of RearrangedGram are I/m plus a low-rank term")
        tr, A_side, Z0, T0, B0 = self._base()
        Bm, low = B0, None
        if C.X is not None:
            Xc, Yc = (C.Y, C.X) if tr else (C.X, C.Y)  # Z = Z₀ + Xc (Ycᵀ L)
            YL = (xp.matrix_transpose(Yc) @ Z0) * self.m  # (j, r)
            MX = A_side.apply(Xc)  # (m, j)
            XT = xp.matrix_transpose(Xc) @ T0  # (j, r)
            XMX = xp.matrix_transpose(Xc) @ MX  # (j, j)
            Bm = (B0 + xp.matrix_transpose(XT) @ YL + xp.matrix_transpose(YL) @ XT
                  + xp.matrix_transpose(YL) @ (XMX @ YL))
            low = (Xc, YL, MX)
        dev = device_of(self.a)
        kk = min(k, int(Bm.shape[0]))
        if kk == 0:
            lam = xp.zeros((0,), dtype=xp.float64, device=dev)
            Q = xp.zeros((Bm.shape[0], 0), dtype=xp.float64, device=dev)
        else:
            lam, Q = _top_eigh(Bm, kk, xp)
        sig = np.sqrt(np.maximum(np.asarray([float(x) for x in lam]), 0.0))
        # orient each eigenvector so that the weights of the factored side sum to ≥ 0
        # (the leading ones are then all ≥ 0 by Perron–Frobenius: one SYRK each)
        if kk:
            sgn = xp.sum(Z0 @ Q, axis=0)
            Q = Q * xp.where(sgn < 0, -xp.ones_like(sgn), xp.ones_like(sgn))
        if core is None:
            self._sigma1 = float(sig[0]) if sig.size else 0.0
        s1 = self.sigma1
        keep = int(np.sum(sig > self.rank_rtol * s1)) if s1 > 0 else 0
        sigma = np.zeros(k)
        sigma[:keep] = sig[:keep]
        w = xp.zeros((self.m, k), dtype=xp.float64, device=dev)
        d = xp.zeros((self.m, k), dtype=xp.float64, device=dev)
        if keep:
            Qk = Q[:, :keep]
            ZQ, TQ = Z0 @ Qk, T0 @ Qk
            if low is not None:
                Xc, YL, MX = low
                YQ = YL @ Qk
                ZQ, TQ = ZQ + Xc @ YQ, TQ + MX @ YQ
            s_dev = asarray_on(sig[:keep], Qk, dtype=xp.float64)
            X2 = C.apply(TQ, xp, transpose=not tr) / s_dev
            w[:, :keep], d[:, :keep] = (X2, ZQ) if tr else (ZQ, X2)
        return sigma, w, d

    @property
    def sigma1(self) -> float:
        """``σ₁(R(F_l)) = ‖R(F_l)‖₂``, the reference of the rank threshold."""
        if getattr(self, "_sigma1", None) is None:
            self.top(1)
        return self._sigma1

    def numerical_rank(self, upto: int) -> int:
        """The numerical rank of ``R(F_l)`` if it is below ``upto``, else ``upto``."""
        s, _, _ = self.top(upto)
        return int(np.sum(s > 0))

    def lanczos(self, k: int = 2, core: _Core | None = None, *, tol: float = 1e-10,
                rng=None):
        """The ``k`` leading triplets of ``Uᵀ C V`` by Golub–Kahan bidiagonalisation in
        Gram coefficients (:meth:`golub_kahan`), grown until every Ritz residual is below
        ``tol·σ₁`` or the space is exhausted (then the triplets are exact); ``rng``
        perturbs the start vector (default: a fixed seed).

        Returns ``(sigma, w, d, report)`` like :meth:`top`.
        """
        C = core if core is not None else self.core()
        sig, w, d, rep = self.golub_kahan(k, C, tol=tol, max_steps=self.m, rng=rng)
        s1 = float(sig[0]) if core is None else self.sigma1
        keep = int(np.sum(sig > self.rank_rtol * s1)) if s1 > 0 else 0
        sig = np.where(np.arange(k) < keep, sig, 0.0)
        mask = asarray_on(np.where(np.arange(k) < keep, 1.0, 0.0), w, dtype=self.xp.float64)
        rep.method = "gram-lanczos"
        rep.rank = keep
        rep.sigma = tuple(float(x) for x in sig)
        return sig, w * mask, d * mask, rep

    def coordinates(self, core: _Core | None = None) -> GramCoordinates:
        """``Uᵀ C V`` (default ``R(F_l)``) as a small dense product pair in isometric
        coordinates, for running the papers' iterative solvers cheaply (see
        :class:`GramCoordinates`)."""
        return GramCoordinates(self, core)

    def g_inner(self, G):
        """``[⟨G_n, G⟩_F]_n = [Σ_k g_nkᵀ G g_nk]_n`` (float64, ``O(N K d_g²)``)."""
        xp, m, K, d_g = self.xp, self.m, self.K, self.d_g
        gf = xp.reshape(self.g, (m * K, d_g))
        G = asarray_on(G, gf, dtype=gf.dtype)
        q = xp.sum(xp.reshape(xp.sum((gf @ G) * gf, axis=1), (m, K)), axis=1)
        return xp.astype(q, xp.float64)

    # -- back to Kronecker factors -----------------------------------------------------
    def term(self, sigma: float, w, d):
        """The Kronecker term ``σ unvec(u) ⊗ unvec(v)`` as balanced factors
        ``(A, G) = (Āᵀdiag(w)Ā/√σ, Σ_n d_n G_n/√σ)``, signed by :func:`psd_sign`, in the
        input dtype (zero factors for ``σ = 0``)."""
        xp = self.xp
        if sigma <= 0:
            return (xp.zeros((self.d_a, self.d_a), dtype=self.dtype, device=device_of(self.a)),
                    xp.zeros((self.d_g, self.d_g), dtype=self.dtype, device=device_of(self.a)))
        c = 1.0 / math.sqrt(float(sigma))
        wa = xp.astype(w * c, self.dtype)
        dg = xp.astype(d * c, self.dtype)
        A = weighted_gram(self.a, wa)
        G = weighted_gram(self.g, dg)
        return psd_sign(A, G)

    def terms(self, sigma, w, d) -> list[tuple]:
        """:meth:`term` for every column of the weights."""
        return [self.term(float(sigma[r]), w[:, r], d[:, r]) for r in range(len(sigma))]


class GramCoordinates:
    """``R = Uᵀ C V`` (``R(F_l)`` for ``C = I/m``) in isometric coordinates: the dense
    ``r_U × r_V`` matrix ``R̃ = L_Uᵀ C L_V`` (``U Uᵀ = L_U L_Uᵀ``, ``V Vᵀ = L_V L_Vᵀ``),
    a product pair on which the papers' iterative solvers run exactly as on the
    matrix-free ``R`` — the map between the two is an isometry on the row and column
    spaces of ``R`` — at ``O(N²)`` per product instead of ``O(N (d_a² + K d_g²))``.

    A right vector ``vec(G)`` has coordinates ``L_V⁺ [⟨G_n, G⟩]_n`` (its projection on
    the row space of ``R``, which is all ``R`` sees); a triplet ``(σ, ũ, ṽ)`` maps back
    to weights ``w = C L_V ṽ`` (``R v = Uᵀ w``) and ``d = Cᵀ L_U ũ`` (``Rᵀu = Vᵀ d``), so
    ``σ u ≈ Uᵀ w`` and ``σ v ≈ Vᵀ d`` up to the solver's residual.
    """

    def __init__(self, gram: RearrangedGram, core: _Core | None = None):
        xp = gram.xp
        C = core if core is not None else gram.core()
        self.gram, self.core, self.xp = gram, C, xp
        Lu, Lv = gram.U.factor(), gram.V.factor()
        self.ZV = C.apply(Lv, xp)  # (m, r_V)
        self.ZU = C.apply(Lu, xp, transpose=True)  # (m, r_U)
        self.Rt = xp.matrix_transpose(Lu) @ self.ZV
        self.shape = (int(self.Rt.shape[0]), int(self.Rt.shape[1]))
        self.dtype = self.Rt.dtype

    def matvec(self, x):
        return self.Rt @ x

    def rmatvec(self, y):
        return self.xp.matrix_transpose(self.Rt) @ y

    def right(self, G):
        """Coordinates of ``vec(G)/‖G‖_F`` (``None`` for ``G = 0``)."""
        xp, gram = self.xp, self.gram
        nG = float(xp.linalg.vector_norm(G))
        if nG == 0.0:
            return None
        if gram.V.kind == "explicit":
            return xp.astype(vec(asarray_on(G, gram.a), xp), xp.float64) / nG
        return gram.V.coords(gram.g_inner(G)) / nG

    def right_kfac(self):
        """Coordinates of ``vec(G_K)/‖G_K‖_F`` for the KFAC factor ``G_K = Vᵀ1/m``:
        ``L_Vᵀ 1/m`` (``L_V⁺ M_V 1 = L_Vᵀ 1``), no solve."""
        xp = self.xp
        Lv = self.gram.V.factor()
        v = xp.sum(Lv, axis=0) / self.gram.m
        n = float(xp.linalg.vector_norm(v))
        return v / n if n > 0 else None

    def random(self, rng):
        x = rng.standard_normal(self.shape[1])
        return asarray_on(x / np.linalg.norm(x), self.Rt, dtype=self.dtype)

    def term(self, sigma: float, u, v):
        """The Kronecker term of the triplet ``(σ, ũ, ṽ)`` (see the class notes)."""
        return self.gram.term(float(sigma), self.ZV @ v, self.ZU @ u)
