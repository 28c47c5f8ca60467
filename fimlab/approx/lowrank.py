"""Low-rank approximations of the whole Fisher: the top-k eigenpairs (Eckart–Young), and
the same plus the exact diagonal of the remainder.

``F = UᵀU/N`` with ``U`` the ``N·K × P`` matrix of per-sample Jacobian rows ``j_nk``. Its
non-zero eigenvalues are those of the ``N·K × N·K`` Gram matrix ``M = UUᵀ/N``: with
``M w_i = μ_i w_i``, ``u_i = Uᵀ w_i / √(Nμ_i)`` is a unit eigenvector of ``F``. So

    F_k = Σ_{i≤k} μ_i u_i u_iᵀ = Uᵀ C Λ Cᵀ U,    C = W_k (NΛ)^{-1/2},  Λ = diag(μ_1 … μ_k)

and the basis ``u_i`` need never be formed: a product is ``U``, a ``k``-column GEMM and
``Uᵀ``. When ``N·K`` is too large for the Gram matrix, Lanczos on the matrix-free ``F``
finds the top-k pairs instead (the basis is then explicit, ``P × k``). A ``P × P`` matrix
is never formed.
"""

from __future__ import annotations

import warnings

from .._errors import ConvergenceWarning, ShapeError
from .._validation import check_choice, check_damping, check_dense_memory, nbytes_of
from ..batch import FactorBatch
from ..curvature import FisherBlock, FisherOperator
from ..operators import CurvatureOperator
from .eigencorrected import check_rule, projected_second_moments

__all__ = ["LowRank", "LowRankPlusDiagonal", "LowRankBlock", "top_eigenpairs"]

#: the Gram route is taken while the N·K × N·K Gram matrix stays below this many bytes
GRAM_MAX_BYTES = 1024**3
#: the eigenvectors are formed explicitly (P × k) when they fit in this many bytes
EXPLICIT_MAX_BYTES = 64 * 1024**2


def _check_k(k) -> int:
    import numpy as np

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ShapeError(f"k (the number of eigenpairs) must be an integer >= 1, got {k!r}")
    return int(k)


def _numerical_rank(  # xp: host eigenvalues (a few numbers)
        ev, n: int) -> int:
    import numpy as np

    ev = np.asarray(ev)
    top = float(np.max(ev)) if ev.size else 0.0
    if top <= 0:
        return 0
    return int(np.sum(ev > top * max(n, 1) * np.finfo(ev.dtype).eps * 10))


def top_eigenpairs(  # xp: eigenvalues, ranks and Ritz data on the host; vectors stay in xp
        F: FisherOperator, k: int, *, method: str = "auto", tol: float = 1e-10,
                   max_steps: int | None = None, seed: int = 0, clip: bool = False):
    """The ``k`` largest eigenvalues of a Fisher operator, with their Gram coefficients.

    Returns ``(values, C, V)``: descending eigenvalues (host NumPy), and either the Gram
    coefficients ``C`` (``N·K × k``; eigenvectors ``Uᵀ C``) with ``V = None`` (Gram route)
    or ``C = None`` and the explicit eigenvectors ``V`` (``P × k``; Lanczos route).

    Raises
    ------
    ShapeError
        ``k < 1`` or ``k`` above the numerical rank of ``F``.
    """
    import numpy as np

    from ..backend import to_numpy

    k = _check_k(k)
    check_choice(method, ("auto", "gram", "lanczos"), "low-rank method")
    b, xp = F.batch, F.xp
    N, NK, P = b.n_samples, b.n_samples * b.n_vectors, b.n_params
    if method == "auto":
        method = "gram" if nbytes_of((NK, NK), b.dtype) <= GRAM_MAX_BYTES else "lanczos"
    if method == "gram":
        M = b.gram() / N
        ev, W = xp.linalg.eigh(0.5 * (M + xp.matrix_transpose(M)))
        evh = to_numpy(ev)[::-1].copy()
        rank = _numerical_rank(evh, NK)
        if clip and rank >= 1:
            k = min(k, rank)
        if k > rank:
            raise ShapeError(
                f"k = {k} is above the numerical rank {rank} of the Fisher (N·K = {NK} rows, "
                f"P = {P}); ask for k <= {rank}")
        idx = xp.asarray(np.arange(NK - 1, NK - 1 - k, -1), device=b.device)
        Wk = xp.take(W, idx, axis=1)
        lam = evh[:k]
        scale = xp.asarray(1.0 / np.sqrt(N * lam), dtype=b.dtype, device=b.device)
        return lam, Wk * scale[None, :], None
    from ..kron import lanczos

    bound = min(NK, P)
    if k > bound:
        raise ShapeError(f"k = {k} is above the rank bound min(N·K, P) = {bound} of the Fisher")
    steps = min(P, max_steps if max_steps is not None else max(2 * k + 20, 40))
    check_dense_memory((P, steps), b.dtype, None, "Lanczos basis",
                       "a smaller k or max_steps, or the Gram route (method='gram')")
    res = lanczos(lambda v, Mv: F.matvec(v), P, xp=xp, dtype=b.dtype, device=b.device,
                  which="largest", tol=0.0, max_steps=steps, seed=seed, want_vectors=True,
                  warn=False)
    vals = np.asarray(res.values)[::-1]
    resid = np.asarray(res.residuals)[::-1]
    rank = _numerical_rank(vals, P)
    if clip and rank >= 1:
        k = min(k, rank)
    if k > rank:
        raise ShapeError(f"k = {k} is above the numerical rank {rank} found by Lanczos")
    if np.any(resid[:k] > tol * vals[0]):
        warnings.warn(
            f"LowRank: Lanczos ({res.steps} steps) left a relative residual "
            f"{float(np.max(resid[:k])) / vals[0]:.1e} on the top {k} pairs (tol={tol:g}); "
            "raise max_steps", ConvergenceWarning, stacklevel=3)
    idx = xp.asarray(np.arange(res.steps - 1, res.steps - 1 - k, -1), device=b.device)
    return vals[:k].copy(), None, xp.take(res.vectors, idx, axis=1)


class LowRankBlock(CurvatureOperator):
    """Diagonal block ``l`` of a low-rank (plus diagonal) matrix: ``V_l Λ V_lᵀ + D_l``.

    ``V_l`` (``P_l × k``) are the rows of block ``l`` of the eigenvectors (not orthonormal);
    ``D_l`` an optional non-negative diagonal. Norms, inner products with a Fisher block
    and the damped inverse (Woodbury, exact for any ``rule``) are computed without
    forming the block.

    With ``gram = (H, C, N, a, g)`` the rows are ``V_l = U_lᵀ C`` for the Jacobian rows
    ``U_l`` of layer ``l`` (arrays ``a``, ``g``; ``H = U_l U_lᵀ``, ``N·K × N·K``), and the
    terms that only involve ``V_l`` come from ``H``: ``V_lᵀV_l = Cᵀ H C`` and, for the
    Fisher block of those rows, ``Σ_i μ_i v_iᵀ F_l v_i = (1/N) Σ_i μ_i ‖H c_i‖²`` —
    ``O((NK)²k)`` instead of ``k`` products with the block. ``V`` may then be a
    callable that forms the rows when something needs them (products, solves).
    """

    def __init__(self, V, lam, D=None, *, gram=None, shape=None, dtype=None, device=None):
        from ..backend import array_namespace

        self._V, self.D, self._gram = V, D, gram
        ref = gram[0] if gram is not None else V
        self.xp = array_namespace(ref)
        self.dtype = ref.dtype if dtype is None else dtype
        self._dev_ = self._dev(ref) if device is None else device
        self.lam = self.xp.asarray(lam, dtype=self.dtype, device=self._dev_)
        n = int(V.shape[0]) if shape is None else int(shape)
        self.shape = (n, n)

    @property
    def V(self):
        """The rows ``V_l`` (``P_l × k``), formed on first use when given as a callable."""
        if callable(self._V):
            self._V = self._V()
        return self._V

    @staticmethod
    def _dev(V):
        from ..backend import device_of

        return device_of(V)

    def _device(self):
        return self._dev_

    def _vtv(self):
        """``Λ^{1/2} V_lᵀ V_l Λ^{1/2}`` (``k × k``)."""
        xp = self.xp
        s = xp.sqrt(self.lam)
        if self._gram is not None:
            H, C = self._gram[0], self._gram[1]
            G = xp.matrix_transpose(C) @ (H @ C)
        else:
            G = xp.matrix_transpose(self.V) @ self.V
        return G * s[:, None] * s[None, :]

    def _matmat(self, X):
        xp = self.xp
        Y = self.V @ (self.lam[:, None] * (xp.matrix_transpose(self.V) @ X))
        if self.D is not None:
            Y = Y + self.D[:, None] * X
        return Y

    def diagonal(self):
        """The diagonal of the block."""
        d = _row_weighted_sq(self.V, self.lam)
        return d if self.D is None else d + self.D

    def frobenius_norm_sq(self) -> float:
        xp = self.xp
        B = self._vtv()
        out = float(xp.sum(B * B))
        if self.D is not None:
            dl = _row_weighted_sq(self.V, self.lam)
            out += 2.0 * float(xp.sum(dl * self.D)) + float(xp.sum(self.D * self.D))
        return out

    def fisher_inner(self, Fb) -> float | None:
        """``⟨F_l, V_lΛV_lᵀ + D_l⟩ = Σ_i μ_i v_iᵀ F_l v_i + Σ diag(F_l)·D_l``."""
        if not isinstance(Fb, FisherBlock) or Fb.shape != self.shape:
            return None
        xp = self.xp
        gr = self._gram
        if gr is not None and Fb.a is gr[3] and Fb.g is gr[4]:  # the rows of this block
            HC = gr[0] @ gr[1]
            out = float(xp.sum(self.lam[None, :] * HC * HC)) / gr[2]
        else:
            out = float(xp.sum(self.lam[None, :] * self.V * Fb.matmat(self.V)))
        if self.D is not None:
            dF = xp.reshape(projected_second_moments(Fb.a, Fb.g), (-1,))
            out += float(xp.sum(dF * self.D))
        return out

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(V_lΛV_lᵀ + D_l + λI)⁻¹ v`` by Woodbury (exact; ``rule`` does not apply)."""
        lam = check_damping(damping)
        check_rule(rule)
        self._check_operand(v, (1, 2))
        return _woodbury_lowrank(self.V, self.lam, self.D, lam, v, self.xp)


def _row_weighted_sq(V, lam, rows: int = 1 << 16):
    """``Σ_i μ_i V[:, i]²`` (the diagonal of ``V Λ Vᵀ``) a block of rows at a time: one
    ``rows × k`` temporary instead of two ``P × k`` ones (450 MB each for the 2.8 M
    parameters of the MNIST auto-encoder at k = 20)."""
    from ..backend import array_namespace

    xp = array_namespace(V)
    n = int(V.shape[0])
    if n <= rows:
        return (V * V) @ lam
    return xp.concat([(V[s:s + rows, :] * V[s:s + rows, :]) @ lam
                      for s in range(0, n, rows)], axis=0)


def _woodbury_lowrank(V, lam_k, D, lam, v, xp):
    """``(D + λI + V Λ Vᵀ)⁻¹ v`` with ``(D+λ)⁻¹ − (D+λ)⁻¹V(Λ⁻¹ + Vᵀ(D+λ)⁻¹V)⁻¹Vᵀ(D+λ)⁻¹``."""
    X = xp.reshape(v, (-1, 1)) if v.ndim == 1 else v
    n = V.shape[0]
    d = (xp.zeros((n,), dtype=V.dtype, device=LowRankBlock._dev(V)) if D is None else D) + lam
    Vd = V / d[:, None]
    core = _diag(1.0 / lam_k, xp) + xp.matrix_transpose(V) @ Vd
    Y = X / d[:, None] - Vd @ xp.linalg.solve(core, xp.matrix_transpose(Vd) @ X)
    return Y[:, 0] if v.ndim == 1 else Y


def _diag(x, xp):
    n = x.shape[0]
    out = xp.zeros((n, n), dtype=x.dtype, device=LowRankBlock._dev(x))
    for i in range(n):
        out[i, i] = x[i]
    return out


class LowRank(CurvatureOperator):
    """The best rank-``k`` approximation of the whole Fisher, ``F_k = Σ_{i≤k} μ_i u_i u_iᵀ``.

    Parameters
    ----------
    batch : FactorBatch
    k : int
        Number of eigenpairs, ``1 ≤ k ≤ rank F``.
    method : {"auto", "gram", "lanczos"}
        ``"gram"``: exact, from the eigendecomposition of the ``N·K × N·K`` Gram matrix
        (``"auto"`` while it takes at most :data:`GRAM_MAX_BYTES`); ``"lanczos"``:
        Lanczos with full reorthogonalisation on the matrix-free ``F``.
    clip : bool
        Take ``min(k, rank F)`` pairs instead of raising for ``k`` above the rank (what
        ``fimlab study`` and ``fimlab train`` use; ``.k`` is the number kept).
    explicit : bool, optional
        Form the eigenvectors (``P × k``); default: when they take at most
        :data:`EXPLICIT_MAX_BYTES`. Otherwise (Gram route) they stay implicit,
        ``u_i = Uᵀw_i/√(Nμ_i)``, applied through the factor batch.

    Raises
    ------
    ShapeError
        ``k < 1`` or ``k`` above the numerical rank of ``F``.

    Notes
    -----
    ``values`` holds ``λ_1 ≥ … ≥ λ_k``. ``solve(v, λ)`` is ``(F_k + λI)⁻¹v =
    (1/λ)(v − Σ_i μ_i/(μ_i+λ) u_i u_iᵀ v)`` (Woodbury; exact whatever ``rule``). E1 for the
    whole network is exact by Eckart–Young, ``‖F − F_k‖²_F = ‖F‖²_F − Σ_{i≤k} μ_i²``; per
    block from ``⟨F_l, (F_k)_ll⟩ = Σ_i μ_i v_iᵀF_l v_i`` and ``‖V_lΛV_lᵀ‖²_F =
    ‖Λ^{1/2}V_lᵀV_lΛ^{1/2}‖²_F`` (``k``-column products, no block formed). ``blocks`` are
    the diagonal blocks of ``F_k`` (for per-block metrics; ``F_k`` itself is not
    block-diagonal).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.factor_batch(fl.MLP([3, 4, 2], seed=0), np.random.default_rng(0).normal(size=(4, 3)))
    >>> F = fl.FisherOperator(b)
    >>> L = fl.LowRank(b, k=2)
    >>> ev = np.linalg.eigvalsh(F.to_dense())[::-1]
    >>> bool(np.allclose(L.values, ev[:2]))
    True
    >>> e = fl.relative_frobenius_error(F, L)                  # Eckart–Young
    >>> bool(np.isclose(e, np.sqrt(np.sum(ev[2:] ** 2) / np.sum(ev ** 2))))
    True
    """

    method = "LowRank"
    _with_diagonal = False

    def __init__(self, batch: FactorBatch, k: int = 20, *, method: str = "auto",
                 explicit: bool | None = None, tol: float = 1e-10,
                 max_steps: int | None = None, seed: int = 0, clip: bool = False):
        if not isinstance(batch, FactorBatch):
            raise TypeError(f"{type(self).__name__} needs a FactorBatch, got "
                            f"{type(batch).__name__}")
        self.k = _check_k(k)
        self.batch = batch
        self.fisher = FisherOperator(batch)
        self.xp, self.dtype = batch.xp, batch.dtype
        P = batch.n_params
        self.shape = (P, P)
        self.offsets = list(batch.offsets)
        self.values, self._C, V = top_eigenpairs(self.fisher, self.k, method=method, tol=tol,
                                                 max_steps=max_steps, seed=seed, clip=clip)
        self.k = len(self.values)
        self.route = "gram" if V is None else "lanczos"
        xp = self.xp
        self._lam = xp.asarray(self.values, dtype=self.dtype, device=batch.device)
        want = (nbytes_of((P, self.k), self.dtype) <= EXPLICIT_MAX_BYTES
                if explicit is None else bool(explicit))
        if V is None and (want or self._with_diagonal):
            V = self.eigenvectors()
        self.V = V  # explicit eigenvectors (P × k), or None (implicit)
        self._blocks = None
        self.D = None

    def _device(self):
        return self.batch.device

    @property
    def values_array(self):
        """``values`` as an array of the batch's namespace and dtype."""
        return self._lam

    def eigenvectors(self, layers=None):
        """``Uᵀ C`` (the eigenvectors, rows of ``layers``), memory-guarded."""
        b, xp = self.batch, self.xp
        rows = b.n_params if layers is None else sum(b.block_sizes[l] for l in layers)
        check_dense_memory((rows, self.k), self.dtype, None, "low-rank eigenvectors",
                           "explicit=False (implicit eigenvectors)")
        C3 = xp.reshape(self._C, (b.n_samples, b.n_vectors, self.k))
        return self.fisher.jacobian_rows_transpose(C3, layers=layers)

    @property
    def n_blocks(self) -> int:
        return self.batch.n_layers

    def block_slice(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def _block_V(self, l: int):
        if self.V is not None:
            return self.V[self.offsets[l]:self.offsets[l + 1], :]
        return self.eigenvectors(layers=[l])

    def diagonal_block(self, l: int) -> LowRankBlock:
        """Diagonal block ``l`` of the approximation, as an operator.

        On the Gram route the block's norms and its inner product with the Fisher block
        come from the layer's ``N·K × N·K`` Gram matrix (when that is smaller than the
        block's ``P_l × k`` eigenvector rows); its rows are formed only when a product or
        a solve needs them.
        """
        if not 0 <= l < self.n_blocks:
            raise IndexError(f"block {l} out of range for {self.n_blocks} blocks")
        D = None if self.D is None else self.D[self.offsets[l]:self.offsets[l + 1]]
        b = self.batch
        NK = b.n_samples * b.n_vectors
        P_l = b.block_sizes[l]
        # Gram terms: H_l (NK² (d_a + d_g)) and H_l C (NK² k) against forming the rows and
        # k products with the block (3 NK P_l k)
        cheaper = NK * NK * (b.d_a[l] + b.d_g[l] + self.k) < 3 * NK * P_l * self.k
        if self._C is not None and not b.positional[l] and cheaper \
                and nbytes_of((NK, NK), self.dtype) <= GRAM_MAX_BYTES:
            gram = (b.gram(l), self._C, b.n_samples, b.a[l], b.g[l])
            V = self.V[self.offsets[l]:self.offsets[l + 1], :] if self.V is not None \
                else (lambda: self.eigenvectors(layers=[l]))
            return LowRankBlock(V, self._lam, D, gram=gram, shape=P_l, dtype=self.dtype,
                                device=b.device)
        return LowRankBlock(self._block_V(l), self._lam, D)

    @property
    def blocks(self) -> list[LowRankBlock]:
        """The diagonal blocks (for per-block metrics; the matrix is not block-diagonal)."""
        if self._blocks is None:
            self._blocks = [self.diagonal_block(l) for l in range(self.n_blocks)]
        return self._blocks

    def block(self, i: int, j: int | None = None):
        """Dense block ``(i, j)`` of the approximation."""
        xp = self.xp
        j = i if j is None else j
        Vi, Vj = self._block_V(i), self._block_V(j)
        out = (Vi * self._lam[None, :]) @ xp.matrix_transpose(Vj)
        if i == j and self.D is not None:
            s = self.block_slice(i)
            out = out + _diag(self.D[s], xp)
        return out

    def _lowrank_matmat(self, X):
        xp = self.xp
        if self.V is not None:
            return self.V @ (self._lam[:, None] * (xp.matrix_transpose(self.V) @ X))
        b, F = self.batch, self.fisher
        NK = b.n_samples * b.n_vectors
        UX = xp.reshape(F.jacobian_rows(X), (NK, X.shape[1]))
        Y = self._C @ (self._lam[:, None] * (xp.matrix_transpose(self._C) @ UX))
        return F.jacobian_rows_transpose(xp.reshape(Y, (b.n_samples, b.n_vectors, X.shape[1])))

    def _matmat(self, X):
        Y = self._lowrank_matmat(X)
        if self.D is not None:
            Y = Y + self.D[:, None] * X
        return Y

    def frobenius_norm_sq(self) -> float:
        """``‖F_k‖²_F = Σ μ_i²``."""
        return float(sum(float(v) ** 2 for v in self.values))

    def trace(self) -> float:
        return float(sum(float(v) for v in self.values))

    def fisher_inner(self, F) -> float | None:
        """``⟨F, F_k⟩_F``: ``Σ_{i≤k} μ_i²`` for the Fisher of the same batch (Eckart–Young),
        ``Σ_i μ_i u_iᵀ F u_i`` for another Fisher."""
        if not isinstance(F, FisherOperator) or F.shape != self.shape:
            return None
        if F.batch is self.batch:
            return LowRank.frobenius_norm_sq(self)
        V = self.V if self.V is not None else self.eigenvectors()
        return float(self.xp.sum(self._lam[None, :] * V * F.matmat(V)))

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(F_k + λI)⁻¹ v`` by Woodbury (exact; ``rule`` does not apply)."""
        lam = check_damping(damping)
        check_rule(rule)
        self._check_operand(v, (1, 2))
        xp = self.xp
        X = xp.reshape(v, (-1, 1)) if v.ndim == 1 else v
        w = self._lam / (self._lam + lam)
        if self.V is not None:
            Y = (X - self.V @ (w[:, None] * (xp.matrix_transpose(self.V) @ X))) / lam
        else:
            b, F = self.batch, self.fisher
            NK = b.n_samples * b.n_vectors
            UX = xp.reshape(F.jacobian_rows(X), (NK, X.shape[1]))
            Z = self._C @ (w[:, None] * (xp.matrix_transpose(self._C) @ UX))
            Y = (X - F.jacobian_rows_transpose(xp.reshape(Z, (b.n_samples, b.n_vectors, X.shape[1])))) / lam
        return Y[:, 0] if v.ndim == 1 else Y

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} k={self.k} route={self.route} "
                f"explicit={self.V is not None} shape={self.shape}>")


class LowRankPlusDiagonal(LowRank):
    """``F_k + diag(F − F_k)``: the best rank-``k`` part plus the exact diagonal of the rest.

    ``diag(F − F_k) = diag(F) − Σ_i μ_i u_i∘²`` is non-negative (``F − F_k`` is positive
    semi-definite). The eigenvectors are formed explicitly (``P × k``, memory-guarded).
    ``solve`` is Woodbury with the diagonal ``D + λI``; E1 exact from
    ``⟨F, F_k + D⟩ = Σμ_i² + ⟨diag F, D⟩`` and
    ``‖F_k + D‖² = Σμ_i² + 2⟨diag F_k, D⟩ + ‖D‖²``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.factor_batch(fl.MLP([3, 4, 2], seed=0), np.random.default_rng(0).normal(size=(6, 3)))
    >>> L = fl.LowRankPlusDiagonal(b, k=2)
    >>> bool(np.allclose(np.diag(L.to_dense()), np.diag(fl.FisherOperator(b).to_dense())))
    True
    """

    method = "LowRank+Diagonal"
    _with_diagonal = True

    def __init__(self, batch: FactorBatch, k: int = 20, **kwargs):
        kwargs.pop("explicit", None)
        super().__init__(batch, k, explicit=True, **kwargs)
        xp = self.xp
        dF = xp.concat([xp.reshape(projected_second_moments(a, g), (-1,))
                        for a, g in zip(batch.a, batch.g)], axis=0)
        dk = _row_weighted_sq(self.V, self._lam)
        self.diag_fisher, self._diag_lowrank = dF, dk
        self.D = xp.maximum(dF - dk, xp.zeros_like(dF))

    def frobenius_norm_sq(self) -> float:
        xp = self.xp
        dk = self._diag_lowrank  # diag(F_k)
        return (super().frobenius_norm_sq() + 2.0 * float(xp.sum(dk * self.D))
                + float(xp.sum(self.D * self.D)))

    def fisher_inner(self, F) -> float | None:
        base = super().fisher_inner(F)
        if base is None:
            return None
        xp = self.xp
        dF = self.diag_fisher if F.batch is self.batch else xp.concat(
            [xp.reshape(projected_second_moments(a, g), (-1,)) for a, g in
             zip(F.batch.a, F.batch.g)], axis=0)
        return base + float(xp.sum(dF * self.D))

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(F_k + D + λI)⁻¹ v`` by Woodbury with the diagonal ``D + λI`` (exact)."""
        lam = check_damping(damping)
        check_rule(rule)
        self._check_operand(v, (1, 2))
        return _woodbury_lowrank(self.V, self._lam, self.D, lam, v, self.xp)
