"""Factor batches and the Fisher matrix they define, as a matrix-free operator.

Every Fisher-type matrix of the papers is (docs/guide/conventions.rst)::

    F = (1/N) Σ_n Σ_k j_nk j_nkᵀ,    j_nk = [ā_0,n ⊗ g_0,nk ; … ; ā_{L−1},n ⊗ g_{L−1},nk]

A :class:`FactorBatch` holds, per layer ``l``, ``a[l]`` of shape ``(N, d_in+1)`` (the
bias-augmented inputs ``ā``) and ``g[l]`` of shape ``(N, K, d_out)`` (the vectors
back-propagated to the pre-activations). :class:`FisherOperator` is ``F`` as a
:class:`~fimlab.operators.CurvatureOperator`: products cost GEMMs on the factor batch,
the exact damped inverse is Woodbury on the ``N·K`` rows (docs/papers.md F3), and Frobenius
norms come from Gram matrices — ``F`` itself is never formed unless asked for.
"""

from __future__ import annotations

import math

from ._validation import check_damping, check_dense_memory, nbytes_of
from .operators import BlockDiagonalOperator, CurvatureOperator

__all__ = ["FactorBatch", "FisherOperator", "FisherBlock"]

from .batch import FactorBatch, c_order  # noqa: E402  (re-exported)

#: Per-sample Jacobian chunks are built in pieces of at most this many bytes.
_CHUNK_BYTES = 256 * 1024**2
#: NumPy dense assembly: up to this many bytes, ``U`` is built whole (one ``syrk``).
_ONE_PIECE_BYTES = 1024**3


def _split_rows(X, offsets):
    return [X[offsets[i] : offsets[i + 1], ...] for i in range(len(offsets) - 1)]


class FisherOperator(CurvatureOperator):
    """The Fisher matrix ``F = (1/N) Σ_{n,k} j_nk j_nkᵀ`` of a factor batch, matrix-free.

    Parameters
    ----------
    batch : FactorBatch
        From :func:`fimlab.factor_batch` (exact, Monte-Carlo or empirical Fisher) or
        from arrays produced by any framework.

    Notes
    -----
    ``F @ X`` costs ``O(N·K·P·k)`` in GEMMs: per layer, ``u_nk = g_nkᵀ V ā_n`` summed over
    layers, then ``(1/N) Σ_n ā_n (Σ_k g_nk u_nk)ᵀ`` back. ``solve`` is the exact damped
    natural gradient by Woodbury (docs/papers.md F3)::

        (F + λI)⁻¹ v = (1/λ) [v − Uᵀ (NλI + UUᵀ)⁻¹ U v]

    with ``U v`` and ``Uᵀ y`` applied matrix-free and ``UUᵀ`` from Gram matrices.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> rng = np.random.default_rng(0)
    >>> b = fl.FactorBatch(a=[rng.normal(size=(8, 3))], g=[rng.normal(size=(8, 2, 2))])
    >>> F = fl.FisherOperator(b)
    >>> v = rng.normal(size=F.shape[0])
    >>> bool(np.allclose(F @ v, F.to_dense() @ v))
    True
    """

    def __init__(self, batch: FactorBatch):
        if not isinstance(batch, FactorBatch):
            raise TypeError(
                f"FisherOperator needs a FactorBatch, got {type(batch).__name__}; build one "
                "with fl.factor_batch(net, X) or fl.FactorBatch(a=..., g=...)"
            )
        self.batch = batch
        self.xp = batch.xp
        self.dtype = batch.dtype
        P = batch.n_params
        self.shape = (P, P)
        self._woodbury_cache: dict = {}

    def _device(self):
        return self.batch.device

    @property
    def n_blocks(self) -> int:
        return self.batch.n_layers

    @property
    def offsets(self):
        return self.batch.offsets

    def block_slice(self, i: int) -> slice:
        return slice(self.batch.offsets[i], self.batch.offsets[i + 1])

    # -- U and Uᵀ, matrix-free ---------------------------------------------------------
    def _U(self, X, layers=None):
        """``U X`` reshaped ``(N, K, k)``: ``Σ_l g_l,nkᵀ V_l ā_l,n`` for each column."""
        b, xp = self.batch, self.xp
        N, k = b.n_samples, X.shape[1]
        layers = range(b.n_layers) if layers is None else layers
        out = None
        parts = _split_rows(X, b.offsets) if X.shape[0] == b.n_params else None
        for l in layers:
            Xl = parts[l] if parts is not None else X
            da, dg = b.d_a[l], b.d_g[l]
            if b.positional[l]:
                # u_nk = Σ_t g_nktᵀ V ā_nt: (N, T, d_a) @ (d_a, d_g·k) -> (N, T·d_g, k)
                T = b.positions[l]
                Z = xp.reshape(b.a[l] @ xp.reshape(Xl, (da, dg * k)), (N, T * dg, k))
                u = xp.reshape(b.g[l], (N, b.n_vectors, T * dg)) @ Z  # (N, K, k)
                out = u if out is None else out + u
                continue
            # grid layout: Xl -> (d_a, d_g*k); a (N, d_a) @ it -> (N, d_g, k)
            Z = xp.reshape(b.a[l] @ xp.reshape(Xl, (da, dg * k)), (N, dg, k))
            u = b.g[l] @ Z  # (N, K, k)
            out = u if out is None else out + u
        return out

    def jacobian_rows(self, X, layers=None):
        """Products with the per-sample Jacobian rows: ``U X``, shaped ``(N, K, k)``.

        ``F = UᵀU/N`` where the row ``(n, k)`` of ``U`` is the Jacobian row of sample
        ``n``, vector ``k`` (the Kronecker vector ``ā_n ⊗ g_{nk}`` per layer). ``X`` has
        ``P`` rows (all layers) or the rows of the one layer in ``layers``; ``layers``
        restricts the sum to those layers (default: all).

        Examples
        --------
        >>> import numpy as np, fimlab as fl
        >>> rng = np.random.default_rng(0)
        >>> b = fl.FactorBatch([rng.normal(size=(5, 3))], [rng.normal(size=(5, 2, 2))])
        >>> F = fl.FisherOperator(b)
        >>> X = rng.normal(size=(6, 2))
        >>> U = F.jacobian_rows(X)
        >>> U.shape
        (5, 2, 2)
        >>> bool(np.allclose(np.einsum("nkp,nkq->pq", U, U) / 5, X.T @ F.to_dense() @ X))
        True
        """
        return self._U(X, layers=layers)

    def jacobian_rows_transpose(self, Y, layers=None):
        """``Uᵀ Y`` for ``Y`` of shape ``(N, K, k)`` (the adjoint of :meth:`jacobian_rows`),
        the rows of ``layers`` stacked (default: all, ``P`` rows).

        Examples
        --------
        >>> import numpy as np, fimlab as fl
        >>> rng = np.random.default_rng(0)
        >>> b = fl.FactorBatch([rng.normal(size=(5, 3))], [rng.normal(size=(5, 2, 2))])
        >>> F = fl.FisherOperator(b)
        >>> X = rng.normal(size=(6, 2))
        >>> bool(np.allclose(F.jacobian_rows_transpose(F.jacobian_rows(X)) / 5, F @ X))
        True
        """
        return self._Ut(Y, layers=layers)

    def _Ut(self, Y, layers=None):
        """``Uᵀ Y`` for ``Y`` of shape ``(N, K, k)``, stacked over ``layers``."""
        b, xp = self.batch, self.xp
        N, k = b.n_samples, Y.shape[2]
        layers = range(b.n_layers) if layers is None else layers
        outs = []
        for l in layers:
            da, dg = b.d_a[l], b.d_g[l]
            if b.positional[l]:
                # Σ_{n,t} ā_nt ⊗ (Σ_k g_nkt y_nk): (N·T, d_a)ᵀ @ (N·T, d_g·k)
                T = b.positions[l]
                gf = xp.reshape(b.g[l], (N, b.n_vectors, T * dg))
                gt = c_order(xp.matrix_transpose(gf), xp)  # (N, T·d_g, K)
                H = xp.reshape(gt @ Y, (N * T, dg * k))
                af = xp.reshape(b.a[l], (N * T, da))
                outs.append(xp.reshape(xp.matrix_transpose(af) @ H, (da * dg, k)))
                continue
            H = xp.matrix_transpose(b.g[l]) @ Y  # (N, d_g, k)
            outs.append(xp.reshape(xp.matrix_transpose(b.a[l]) @ xp.reshape(H, (N, dg * k)),
                                   (da * dg, k)))
        return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)

    def _matmat(self, X):
        return self._Ut(self._U(X)) / self.batch.n_samples

    # -- dense -----------------------------------------------------------------------------
    def to_dense(self, max_bytes: int | None = None):
        """Dense ``F`` (``P × P``), assembled as ``UᵀU/N`` with BLAS-3 calls over sample
        chunks (memory-guarded: the message names the matrix-free alternative)."""
        b, xp = self.batch, self.xp
        P = b.n_params
        check_dense_memory(
            (P, P), self.dtype, max_bytes, "Fisher matrix",
            "FisherOperator.matvec/matmat, .solve (Woodbury) or .block(i, j)",
        )
        row_bytes = nbytes_of((b.n_vectors, P), self.dtype)
        chunk = max(1, min(b.n_samples, _CHUNK_BYTES // max(row_bytes, 1)))
        if _syrk_for(b) is not None:
            return _dense_syrk(b, chunk)
        F = None
        for s in range(0, b.n_samples, chunk):
            U = b.jacobian_matrix(s, min(s + chunk, b.n_samples), max_bytes=None)
            part = xp.matrix_transpose(U) @ U
            F = part if F is None else F + part
        return F / b.n_samples

    def block(self, i: int, j: int | None = None, max_bytes: int | None = None):
        """Dense block ``F_ij`` (docs/papers.md F1 for ``i == j``, F2 otherwise)."""
        b, xp = self.batch, self.xp
        j = i if j is None else j
        for idx in (i, j):
            if not 0 <= idx < b.n_layers:
                raise IndexError(f"layer index {idx} out of range for {b.n_layers} layers")
        check_dense_memory(
            (b.block_sizes[i], b.block_sizes[j]), self.dtype, max_bytes,
            f"Fisher block ({i}, {j})", f"FisherOperator.diagonal_block({i}) (matrix-free)",
        )
        row_bytes = nbytes_of((b.n_vectors, b.block_sizes[i] + b.block_sizes[j]), self.dtype)
        chunk = max(1, min(b.n_samples, _CHUNK_BYTES // max(row_bytes, 1)))
        out = None
        for s in range(0, b.n_samples, chunk):
            e = min(s + chunk, b.n_samples)
            Ji = b.jacobian(i, s, e)
            Jj = Ji if i == j else b.jacobian(j, s, e)
            part = xp.matrix_transpose(Ji) @ Jj
            out = part if out is None else out + part
        return out / b.n_samples

    def diagonal_block(self, l: int) -> FisherBlock:
        """The diagonal block ``F_ll`` as a matrix-free operator (docs/papers.md F1)."""
        return FisherBlock(self.batch, l)

    def block_diagonal(self) -> BlockDiagonalOperator:
        """``blockdiag(F_00, …, F_{L−1,L−1})`` (the exact block-diagonal Fisher)."""
        return BlockDiagonalOperator([self.diagonal_block(l) for l in range(self.n_blocks)])

    # -- norms -------------------------------------------------------------------------
    def frobenius_norm_sq(self, route: str = "auto", max_bytes: int | None = None) -> float:
        """``‖F‖²_F``: ``‖UUᵀ‖²_F / N²`` from the ``N·K × N·K`` Gram matrix, or from the
        dense ``P × P`` matrix, or the Gram matrix a block of rows at a time
        (``route="chunked"``); ``"auto"`` takes the cheapest route whose peak memory fits
        the memory budget (see ``fimlab.set_memory_budget``)."""
        from ._fisher_routes import gram_frobenius_sq_chunked, norm_route
        from ._validation import check_finite_scalar

        xp, b = self.xp, self.batch
        r = norm_route(b, route, max_bytes)
        if r == "gram":
            Gm = b.gram()
            out = float(xp.sum(Gm * Gm)) / b.n_samples**2
        elif r == "dense":
            out = float(xp.linalg.vector_norm(self.to_dense(max_bytes=max_bytes))) ** 2
        else:
            out = gram_frobenius_sq_chunked(b, max_bytes) / b.n_samples**2
        return check_finite_scalar(out, f"‖F‖²_F (the {r} route)",
                                   "it overflowed: the factor batch holds values too large "
                                   "(rescale the inputs of the network)")

    def trace(self) -> float:
        """``tr F = (1/N) Σ_{n,k} ‖ā_n‖² ‖g_nk‖²`` (``‖J_nk‖²_F`` for positional layers)."""
        b, xp = self.batch, self.xp
        t = 0.0
        for l in range(b.n_layers):
            if b.positional[l]:  # Σ ‖J_nk‖²_F over sample chunks of the rows
                row_bytes = nbytes_of((b.n_vectors, b.block_sizes[l]), self.dtype)
                chunk = max(1, _CHUNK_BYTES // max(row_bytes, 1))
                for s in range(0, b.n_samples, chunk):
                    J = b.jacobian(l, s, min(s + chunk, b.n_samples))
                    t += float(xp.sum(J * J))
                continue
            an = xp.sum(b.a[l] * b.a[l], axis=1)
            gn = xp.sum(b.g[l] * b.g[l], axis=2)
            t += float(xp.sum(an[:, None] * gn))
        return t / b.n_samples

    # -- exact damped inverse (Woodbury, F3) --------------------------------------------
    def _woodbury_factor(self, lam: float, route: str = "gram"):
        key = (lam, route)
        if key not in self._woodbury_cache:
            xp, b = self.xp, self.batch
            if route == "gram":
                NK = b.n_samples * b.n_vectors
                M = self.batch.gram()
                M = M + (b.n_samples * lam) * xp.eye(NK, dtype=self.dtype,
                                                     device=self._device())
            else:  # dense: F + λI
                M = self.to_dense(max_bytes=None)
                M = M + lam * xp.eye(M.shape[0], dtype=self.dtype, device=self._device())
            from ._fisher_routes import cholesky_or_singular

            L = cholesky_or_singular(M, lam, route, xp)
            self._woodbury_cache = {key: L}
        return self._woodbury_cache[key]

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """Exact damped natural gradient ``(F + λI)⁻¹ v`` by Woodbury (docs/papers.md F3).

        ``v`` is a vector of length ``P`` or a matrix ``(P, k)``. Cost: one Cholesky of
        the ``N·K × N·K`` matrix ``NλI + UUᵀ`` (cached per ``λ``) and matrix-free products
        with ``U`` and ``Uᵀ``. ``rule`` is accepted for a uniform interface; only
        ``"exact"`` is meaningful for the exact Fisher.
        """
        lam = check_damping(damping)
        if rule != "exact":
            from ._errors import DampingError

            raise DampingError(
                f"the exact Fisher's solve is always (F + λI)⁻¹ (rule='exact'); got {rule!r}"
            )
        xp = self.xp
        self._check_operand(v, (1, 2))
        vec_in = v.ndim == 1
        X = xp.reshape(v, (-1, 1)) if vec_in else v
        b = self.batch
        N, K, k = b.n_samples, b.n_vectors, X.shape[1]
        from ._fisher_routes import solve_route

        route = solve_route(b, kwargs.pop("route", "auto"), kwargs.pop("max_bytes", None))
        self.last_solve_route = route
        if route == "cg":
            from .kron.algebra import pcg

            out, self.last_solve_info = pcg(
                lambda Y: self._matmat(Y) + lam * Y, X, None, xp=xp, **kwargs)
        elif route == "dense":
            out = _chol_solve(self._woodbury_factor(lam, "dense"), X, xp)
        else:
            L = self._woodbury_factor(lam, "gram")
            Uv = xp.reshape(self._U(X), (N * K, k))
            y = _chol_solve(L, Uv, xp)
            out = (X - self._Ut(xp.reshape(y, (N, K, k)))) / lam
        return out[:, 0] if vec_in else out


def _syrk_for(b):
    """SciPy's BLAS ``syrk`` for a NumPy float batch, else ``None`` (array-API path)."""
    from .backend import is_numpy_namespace

    if not is_numpy_namespace(b.xp):
        return None
    import numpy as np
    from scipy.linalg import blas

    return {np.dtype(np.float64): blas.dsyrk, np.dtype(np.float32): blas.ssyrk}.get(
        np.dtype(b.dtype))


def _dense_syrk(b, chunk: int):
    """``F = UᵀU/N`` for NumPy batches. When ``U`` fits in 1 GiB: ``U.T @ U`` (NumPy runs
    it as a symmetric rank-k update) and an in-place ``/N``. Otherwise one BLAS ``syrk``
    per sample chunk accumulating (``beta = 1``, the scale ``1/N`` folded into ``alpha``)
    into a single ``P × P`` array, then one pass copying the computed triangle onto the
    other (a Numba kernel): no per-chunk ``P × P`` temporaries. Either way the flop count
    is that of ``U.T @ U``."""
    import numpy as np

    from . import _kernels

    syrk = _syrk_for(b)
    P, N = b.n_params, b.n_samples
    if nbytes_of((N * b.n_vectors, P), b.dtype) <= _ONE_PIECE_BYTES:
        # U fits in one piece: NumPy's own U.T @ U (a syrk in NumPy's BLAS, which
        # measured faster than SciPy's bundled one here) and one in-place scaling pass
        U = b.jacobian_matrix(max_bytes=None)
        if U.shape[0] < P:  # fold 1/N into the smaller operand: one pass over U, not F
            np.multiply(U, 1.0 / math.sqrt(N), out=U)
            return U.T @ U
        F = U.T @ U
        del U
        np.divide(F, N, out=F)
        return F
    C = np.zeros((P, P), dtype=b.dtype, order="F")
    for s in range(0, N, chunk):
        U = b.jacobian_matrix(s, min(s + chunk, N), max_bytes=None)  # (nK, P), C order
        # U.T is F-contiguous: C <- alpha·(U.T)(U.T)ᵀ + C on the upper triangle
        C = syrk(1.0 / N, U.T, beta=1.0, c=C, trans=0, lower=0, overwrite_c=1)
    M = C.T  # C-contiguous; its lower triangle holds F
    _kernels.symmetrize_lower(M)
    return M


def _chol_solve(L, B, xp):
    """Solve ``L Lᵀ x = B`` (``L`` lower triangular) — SciPy/CuPy triangular solves when
    available, the standard ``linalg.solve`` otherwise."""
    from .backend import scipy_linalg

    sl = scipy_linalg(xp)
    if sl is not None:
        y = sl.solve_triangular(L, B, lower=True)
        return sl.solve_triangular(xp.matrix_transpose(L), y, lower=False)
    return xp.linalg.solve(xp.matrix_transpose(L), xp.linalg.solve(L, B))


class FisherBlock(CurvatureOperator):
    """The diagonal block ``F_l = (1/N) Σ_n (ā_n ā_nᵀ) ⊗ G_n`` of one layer (docs/papers.md F1),
    matrix-free, with Gram-identity norms and inner products with Kronecker sums.

    Parameters
    ----------
    batch : FactorBatch
    l : int
        The layer (0-based).

    Raises
    ------
    IndexError
        For a layer index out of range.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(10, 3)))
    >>> F = fl.FisherOperator(b)
    >>> F0 = F.diagonal_block(0)                 # same as fl.FisherBlock(b, 0)
    >>> F0.shape, bool(np.allclose(F0.to_dense(), F.block(0)))
    ((16, 16), True)
    >>> bool(np.isclose(F0.frobenius_norm_sq(), np.linalg.norm(F.block(0)) ** 2))
    True
    >>> A, G = F0.kfac_factors()                 # docs/papers.md (K1)
    >>> bool(np.isclose(F0.inner_kron([(A, G)]), np.sum(F.block(0) * np.kron(A, G))))
    True
    """

    def __init__(self, batch: FactorBatch, l: int):
        if not 0 <= l < batch.n_layers:
            raise IndexError(f"layer index {l} out of range for {batch.n_layers} layers")
        self.batch, self.l = batch, l
        self._F = FisherOperator(batch.layer(l))
        self.xp, self.dtype = batch.xp, batch.dtype
        self.shape = (batch.block_sizes[l],) * 2
        self.d_a, self.d_g = batch.d_a[l], batch.d_g[l]
        self.a, self.g = batch.a[l], batch.g[l]

    def _device(self):
        return self.batch.device

    def _matmat(self, X):
        return self._F._matmat(X)

    def to_dense(self, max_bytes: int | None = None):
        return self._F.to_dense(max_bytes=max_bytes)

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(F_l + λI)⁻¹ v`` by Woodbury on this layer's rows."""
        return self._F.solve(v, damping, rule=rule, **kwargs)

    def frobenius_norm_sq(self) -> float:
        """``‖F_l‖²_F = (1/N²) Σ_{n,n'} (ā_nᵀā_n')² Σ_{k,k'} (g_nkᵀ g_n'k')²``."""
        from . import _kernels

        xp = self.xp
        N = self.batch.n_samples
        if self.batch.positional[self.l]:  # ‖J Jᵀ‖²_F / N² from the rows' Gram matrix
            Gm = self.batch.gram(self.l)
            return float(xp.sum(Gm * Gm)) / N**2
        Ga = self.a @ xp.matrix_transpose(self.a)
        GG = _kernels.second_moment_gram(self.g)  # ⟨G_n, G_n'⟩, chunked (no NK × NK)
        return float(xp.sum(Ga * Ga * GG)) / N**2

    def inner_kron(self, terms) -> float:
        """``⟨F_l, Σ_r A_r ⊗ G_r⟩_F = (1/N) Σ_r Σ_n (ā_nᵀ A_r ā_n)(Σ_k g_nkᵀ G_r g_nk)``."""
        from . import _kernels

        xp = self.xp
        N, K = self.batch.n_samples, self.batch.n_vectors
        if self.batch.positional[self.l]:
            T, da, dg = self.batch.positions[self.l], self.d_a, self.d_g
            cost_m = N * K * (da * da * dg + da * dg * dg)
            cost_p = N * (T * da * da + T * T * da) + N * K * (T * dg * dg + T * T * dg)
            if cost_p < cost_m and N * K * T * T * 8 <= 256 * 1024**2:
                # by positions: vec(J)ᵀ (A ⊗ G) vec(J) = Σ_{t,s} (ā_tᵀ A ā_s)(g_tᵀ G g_s)
                # = ⟨Ā_n A Ā_nᵀ, G_nk G G_nkᵀ⟩ (T × T matrices; rows ā_nt, g_nkt)
                af = xp.reshape(self.a, (N * T, da))
                gf = xp.reshape(self.g, (N * K * T, dg))
                aT = xp.matrix_transpose(self.a)  # (N, d_a, T)
                gT = xp.matrix_transpose(self.g)  # (N, K, d_g, T)
                total = 0.0
                for A, G in terms:
                    P = xp.reshape(af @ A, (N, T, da)) @ aT
                    Q = xp.reshape(gf @ G, (N, K, T, dg)) @ gT
                    total += float(xp.sum(P[:, None, ...] * Q))
                return total / N
            # vec(J)ᵀ (A ⊗ G) vec(J) = ⟨A M, M G⟩ with M = J_nkᵀ (d_a × d_g)
            M = xp.reshape(self.batch.jacobian(self.l), (N * K, da, dg))
            total = 0.0
            for A, G in terms:
                total += float(xp.sum((A @ M) * (M @ G)))
            return total / N
        gf = xp.reshape(self.g, (N * K, self.d_g))
        qa = xp.empty((N,), dtype=self.dtype, device=self._device())
        qg = xp.empty((N,), dtype=self.dtype, device=self._device())
        total = 0.0
        for A, G in terms:
            _kernels.grouped_rowdot(self.a @ A, self.a, 1, qa)  # ā_nᵀ A ā_n
            _kernels.grouped_rowdot(gf @ G, gf, K, qg)  # Σ_k g_nkᵀ G g_nk
            total += float(xp.sum(qa * qg))
        return total / N

    def kfac_factors(self):
        """KFAC factors of this block (docs/papers.md K1): ``A = E[ā āᵀ]``, ``G = E[Σ_k g gᵀ]``
        (the KFC factors of :func:`fimlab.approx.kfc.kfc_factors` for a positional layer)."""
        if self.batch.positional[self.l]:
            from .approx.kfc import kfc_factors

            return kfc_factors(self.a, self.g)
        xp = self.xp
        N, K = self.batch.n_samples, self.batch.n_vectors
        A = xp.matrix_transpose(self.a) @ self.a / N
        gf = xp.reshape(self.g, (N * K, self.d_g))
        G = xp.matrix_transpose(gf) @ gf / N
        return A, G
