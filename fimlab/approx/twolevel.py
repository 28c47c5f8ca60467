"""Two-level KFAC: a coarse-space correction on top of a block-diagonal fine level.

The fine level is any block-diagonal approximation ``M = blockdiag(M_i)`` of the Fisher
(KFAC, the KPSVD family, ...) applied as ``ζ_K = M⁻¹g = fine.solve(g, λ, rule)``. A coarse
space is a ``c × P`` matrix ``R₀`` whose rows are each supported on one layer (``r_i``,
shaped like ``W_i``) and scaled by their max-abs entry. With ``F_λ = F + λI`` (``F`` the
Fisher of the same factor batch), docs/papers.md:

- (T1) coarse matrix ``F_c = R₀ F_λ R₀ᵀ``, from the factor batch without forming ``F``:
  ``F_c[p,q] = (1/N) Σ_{n,k} u_{p,nk} u_{q,nk} + λ⟨r_p, r_q⟩``, ``u_{p,nk} = g_{i,nk}ᵀ r_p ā_{i,n}``;
- (T2) additive form ``ζ = ζ_K + R₀ᵀ F_c⁻¹ R₀ g``;
- (T3) residual (energy-minimising) form ``ζ = ζ_K + R₀ᵀβ*``, ``β* = F_c⁻¹R₀(g − F_λζ_K)``;
- (T4) energy ``𝔈(β) = ‖ζ_K + R₀ᵀβ − F_λ⁻¹g‖²_{F_λ}``;
  ``𝔈(β*) − 𝔈(0) = −(R₀r)ᵀF_c⁻¹(R₀r) ≤ 0``.

Coarse spaces (docs/papers.md table): :func:`nicolaides_space`, :func:`spectral_space`,
:func:`residual_space`, :func:`krylov_nicolaides_space`, :func:`krylov_residual_space`,
and "previous" (Tselepidis et al.: Nicolaides vectors with the cross-layer factor
approximation :func:`previous_coarse_matrix` of ``F_c``, additive form).

A coarse space is held as a :class:`CoarseSpace` (its rows stored per layer, never as a
dense ``c × P`` array); :func:`coarse_matrix` is (T1); :class:`TwoLevel` is the
preconditioner. It is linear and symmetric only in the additive form with a coarse
space that does not depend on ``g``; then :meth:`TwoLevel.as_operator` gives it as a
:class:`~fimlab.operators.CurvatureOperator` (the map ``g ↦ ζ``, an approximation of
``F_λ⁻¹``) so that matrix metrics apply.

Documented fallbacks
--------------------
- **Zero rows** (e.g. a layer whose residual ``r_i`` is exactly zero, as happens with a
  zero gradient on a layer that the batch does not reach): with ``zero_rows="drop"``
  (default) the row is removed from ``R₀`` (it spans nothing) and recorded in
  ``CoarseSpace.dropped``; a coarse space with no row left leaves the fine direction
  unchanged. ``zero_rows="raise"`` raises :class:`~fimlab.SingularMatrixError`.
- **Singular coarse matrix** (linearly dependent rows, e.g. a user ``R₀`` with a repeated
  row, or ``M_i⁻¹1_i ∥ 1_i``): with ``on_singular="pinv"`` (default) ``F_c`` is inverted
  on its range, after Jacobi scaling, discarding eigenvalues below ``rcond`` times the
  largest. Because ``F_c = R₀F_λR₀ᵀ``, the correction ``R₀ᵀF_c⁺R₀`` is then exactly the
  one of a basis of the row space of ``R₀`` (the direction is unchanged by dropping the
  redundant rows). ``on_singular="raise"`` raises :class:`~fimlab.SingularMatrixError`.
"""

from __future__ import annotations

from .._errors import ShapeError, SingularMatrixError
from .._validation import check_choice, check_damping, check_finite
from ..backend import array_namespace, device_of, dtype_eps
from ..batch import FactorBatch
from ..curvature import FisherOperator
from ..operators import CurvatureOperator
from .coarse import (
    COARSE_SPACES,
    RESIDUAL_BASED,
    ZERO_ROWS,
    CoarseSpace,
    build_coarse_space,
    krylov_nicolaides_space,
    krylov_residual_space,
    layer_info,
    nicolaides_space,
    residual_space,
    spectral_space,
    user_space,
)

__all__ = [
    "COARSE_SPACES",
    "FORMS",
    "CoarseSpace",
    "TwoLevel",
    "TwoLevelOperator",
    "build_coarse_space",
    "coarse_matrix",
    "krylov_nicolaides_space",
    "krylov_residual_space",
    "nicolaides_space",
    "previous_coarse_matrix",
    "residual_space",
    "spectral_space",
]

#: The two forms of the correction: (T2) and (T3).
FORMS = ("additive", "residual")
ON_SINGULAR = ("pinv", "raise")


# --------------------------------------------------------------------------------------
# coarse matrices
# --------------------------------------------------------------------------------------
def _as_fisher(batch) -> FisherOperator:
    if isinstance(batch, FisherOperator):
        return batch
    if isinstance(batch, FactorBatch):
        return FisherOperator(batch)
    raise TypeError(
        f"expected the curvature batch (fl.FactorBatch) or its fl.FisherOperator, got "
        f"{type(batch).__name__}"
    )


def coarse_matrix(R0: CoarseSpace, batch, damping: float):
    """(T1) ``F_c = R₀ F_λ R₀ᵀ`` from the factor batch, without forming ``F``.

    ``F_c[p,q] = (1/N) Σ_{n,k} u_{p,nk} u_{q,nk} + λ⟨r_p, r_q⟩`` with
    ``u_{p,nk} = g_{i,nk}ᵀ r_p ā_{i,n}`` (docs/papers.md T1): one pass over each layer's factor
    batch per row, ``O(N·K·P·c/L)`` flops, ``O(N·K·c)`` memory.

    Parameters
    ----------
    R0 : CoarseSpace
    batch : FactorBatch or FisherOperator
        The curvature batch (the same as the fine level's).
    damping : float
        ``λ`` of ``F_λ = F + λI``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> R0 = fl.nicolaides_space(fl.KFAC(b))
    >>> Fc = fl.coarse_matrix(R0, b, 1e-2)
    >>> R = R0.to_dense(); Fl = fl.FisherOperator(b).to_dense() + 1e-2 * np.eye(43)
    >>> bool(np.allclose(Fc, R @ Fl @ R.T))             # (T1), without forming F
    True
    """
    lam = check_damping(damping)
    F = _as_fisher(batch)
    if R0.n_params != F.shape[0]:
        raise ShapeError(
            f"the coarse space acts on {R0.n_params} parameters, the batch has {F.shape[0]}"
        )
    xp = R0.xp
    b = F.batch
    U = xp.reshape(R0.jacobian_products(F), (b.n_samples * b.n_vectors, R0.n_rows))
    Fc = xp.matrix_transpose(U) @ U / b.n_samples + lam * R0.gram()
    return 0.5 * (Fc + xp.matrix_transpose(Fc))


def previous_coarse_matrix(batch, damping: float):
    """The Tselepidis et al. approximation of ``F_c`` for the Nicolaides space.

    ``F_c[i,j] ≈ sum(A_ij) · sum(G_ij) + λ n_i δ_ij`` (docs/papers.md coarse-space table) with the
    cross-layer factors ``A_ij = E[ā_i ā_jᵀ]`` and ``G_ij = E[Σ_k g_{i,k} g_{j,k}ᵀ]``;
    ``sum(A_ij) = (1/N) Σ_n (1ᵀā_{i,n})(1ᵀā_{j,n})`` and likewise for ``G``, so only the
    per-sample sums of each layer's factors are needed. ``n_i`` is the number of
    parameters of layer ``i`` (``λ⟨1_i, 1_i⟩``). The exact matrix (T1) is
    ``(1/N) Σ_{n,k} (1ᵀā_i)(1ᵀā_j)(1ᵀg_i)(1ᵀg_j)``: the approximation factorises the
    expectation of the product, as KFAC does on the diagonal blocks. Symmetric positive
    definite (a Hadamard product of two Gram matrices plus a positive diagonal).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> Fc_prev = fl.previous_coarse_matrix(b, 1e-2)
    >>> Fc_prev.shape, bool(np.all(np.linalg.eigvalsh(Fc_prev) > 0))
    ((2, 2), True)
    """
    lam = check_damping(damping)
    b = _as_fisher(batch).batch
    if any(getattr(b, "positional", ())):
        raise ShapeError(
            "the 'previous' coarse matrix (cross-layer factor sums) is defined for dense "
            "layers only; this batch has convolution layers (positions): use "
            "coarse_matrix(R0, batch, damping), the exact R0 (F + λI) R0ᵀ"
        )
    xp = b.xp
    N, K = b.n_samples, b.n_vectors
    Sa = xp.stack([xp.sum(a, axis=1) for a in b.a], axis=0)  # (L, N)
    Sg = xp.stack([xp.reshape(xp.sum(g, axis=2), (N * K,)) for g in b.g], axis=0)  # (L, NK)
    SA = Sa @ xp.matrix_transpose(Sa) / N
    SG = Sg @ xp.matrix_transpose(Sg) / N
    n = xp.asarray([float(s) for s in b.block_sizes], dtype=b.dtype, device=b.device)
    return SA * SG + lam * _diag(n, xp)


def _diag(v, xp):
    n = int(v.shape[0])
    return xp.eye(n, dtype=v.dtype, device=device_of(v)) * v[None, :]


class _CoarseInverse:
    """``F_c⁺`` applied to vectors: Jacobi scaling, eigendecomposition, truncation."""

    def __init__(self, Fc, on_singular: str, rcond: float | None):
        xp = array_namespace(Fc)
        c = int(Fc.shape[0])
        self.xp, self.c = xp, c
        self.rank = c
        self.singular = False
        if c == 0:
            return
        d = xp.linalg.diagonal(Fc)
        dmin = float(xp.min(d))
        if not dmin > 0:
            raise SingularMatrixError(
                f"the coarse matrix F_c has a non-positive diagonal entry ({dmin:.3e}); "
                "F_c = R0 (F + λI) R0ᵀ is positive definite for λ > 0 and non-zero rows — "
                "check the coarse space and the damping"
            )
        s = 1.0 / xp.sqrt(d)
        S = s[:, None] * Fc * s[None, :]
        w, Q = xp.linalg.eigh(0.5 * (S + xp.matrix_transpose(S)))
        wmax = float(xp.max(w))
        rc = (1e3 * c * dtype_eps(Fc.dtype)) if rcond is None else float(rcond)
        thr = rc * wmax
        wmin = float(xp.min(w))
        if wmin < -thr:
            raise SingularMatrixError(
                f"the coarse matrix is indefinite (Jacobi-scaled eigenvalues {wmin:.3e} .. "
                f"{wmax:.3e}); it must be R0 F_λ R0ᵀ or another positive definite matrix"
            )
        keep = w > thr
        self.rank = int(xp.sum(xp.astype(keep, xp.int64)))
        self.singular = self.rank < c
        if self.singular and on_singular == "raise":
            raise SingularMatrixError(
                f"the coarse matrix F_c ({c} × {c}) is singular to working precision "
                f"(numerical rank {self.rank}, Jacobi-scaled eigenvalues {wmin:.3e} .. "
                f"{wmax:.3e}): the coarse space has linearly dependent rows. Remove them, or "
                "use on_singular='pinv' (inverts F_c on its range; same direction)"
            )
        winv = xp.where(keep, 1.0 / xp.where(keep, w, xp.ones_like(w)), xp.zeros_like(w))
        self.s, self.Q, self.winv = s, Q, winv

    def __call__(self, rhs):
        xp = self.xp
        if self.c == 0:
            return rhs
        y = xp.matrix_transpose(self.Q) @ (self.s * rhs if rhs.ndim == 1 else
                                           self.s[:, None] * rhs)
        y = self.winv * y if rhs.ndim == 1 else self.winv[:, None] * y
        y = self.Q @ y
        return self.s * y if rhs.ndim == 1 else self.s[:, None] * y


# --------------------------------------------------------------------------------------
# the two-level preconditioner
# --------------------------------------------------------------------------------------
class TwoLevel:
    """Two-level correction of a block-diagonal fine level (docs/papers.md T1-T4).

    Parameters
    ----------
    fine : block-diagonal operator
        The fine level ``M = blockdiag(M_i)`` (``fl.KFAC(batch)``, the KPSVD family, any
        :class:`~fimlab.BlockDiagonalOperator`), applied as ``fine.solve(·, λ, rule)``.
    coarse_space : str or array
        One of :data:`COARSE_SPACES` — ``"nicolaides"``, ``"spectral"``, ``"residual"``,
        ``"krylov-nicolaides"``, ``"krylov-residual"``, ``"previous"`` — or a user ``R₀``
        of shape ``(c, P)`` (used as given) or a :class:`CoarseSpace`.
    batch : FactorBatch or FisherOperator
        The curvature batch; ``F`` is its Fisher (the same batch as the fine level's).
    form : {"additive", "residual"}
        (T2) ``ζ = ζ_K + R₀ᵀF_c⁻¹R₀g`` or (T3) ``ζ = ζ_K + R₀ᵀF_c⁻¹R₀(g − F_λζ_K)``.
    damping : float
        ``λ`` of ``F_λ = F + λI``, also the fine level's damping.
    rule : {"factor", "pi", "exact"}
        The fine level's damping rule (docs/guide/conventions.rst); ``"factor"`` reproduces the papers.
    zero_rows : {"drop", "raise"}
        Zero rows of a coarse space (see the module's fallbacks).
    on_singular : {"pinv", "raise"}
        A singular coarse matrix (see the module's fallbacks).
    rcond : float, optional
        Relative eigenvalue threshold of the Jacobi-scaled ``F_c`` below which it counts
        as singular (default ``1e3·c·eps``).
    spectral_options : dict, optional
        Passed to :func:`spectral_space` (``tol``, ``max_steps``, ``seed``).

    Attributes
    ----------
    coarse : CoarseSpace
        ``R₀`` (for a residual-based space, the one of the last :meth:`solve`).
    coarse_matrix : array
        The ``c × c`` matrix inverted: ``R₀F_λR₀ᵀ`` (T1), or the factor approximation of
        :func:`previous_coarse_matrix` for ``"previous"``.
    beta : array
        The coarse coefficients of the last direction: ``F_c⁻¹R₀g`` (additive) or ``β*``
        (residual form).
    zeta_fine, residual : array
        ``ζ_K`` and ``r = g − F_λζ_K`` of the last solve (``residual`` is computed on
        demand in the additive form).
    energy_gain : float
        ``𝔈(ζ) − 𝔈(ζ_K)`` of the last direction (T4); for the residual form it equals
        ``−(R₀r)ᵀF_c⁻¹(R₀r) ≤ 0``.
    is_linear, is_symmetric : bool
        Whether ``g ↦ ζ`` is linear (coarse space independent of ``g``) and, moreover,
        symmetric (additive form).

    Notes
    -----
    Cost of one :meth:`solve`: one fine solve; for the residual form or a residual-based
    space one Fisher product (``F_λζ_K``) and, for the latter, one or two more fine solves
    and the coarse matrix (T1, ``O(N·K·P·c/L)``); the additive form with a fixed coarse
    space costs a fine solve and two thin products with ``R₀``. The coarse matrix of a
    fixed space is computed once, at construction.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(20, 4))
    >>> b = fl.factor_batch(net, X)
    >>> T = fl.TwoLevel(fl.KFAC(b), coarse_space="nicolaides", batch=b,
    ...                 form="residual", damping=1e-2)
    >>> g = np.random.default_rng(1).normal(size=b.n_params)
    >>> zeta = T.solve(g)
    >>> bool(T.energy_gain <= 0)
    True
    """

    def __init__(self, fine, coarse_space="nicolaides", batch=None, form: str = "residual",
                 damping: float | None = None, *, rule: str = "factor",
                 zero_rows: str = "drop", on_singular: str = "pinv",
                 rcond: float | None = None, spectral_options: dict | None = None):
        if batch is None:
            raise TypeError(
                "TwoLevel needs the curvature batch: TwoLevel(fine, coarse_space, batch=..., "
                "form=..., damping=...) — F_λ in the coarse matrix is its Fisher"
            )
        if damping is None:
            raise TypeError("TwoLevel needs damping=λ (the λ of F + λI and of the fine level)")
        self.damping = check_damping(damping)
        self.form = check_choice(form, FORMS, "two-level form")
        self.rule = rule
        self.zero_rows = check_choice(zero_rows, ZERO_ROWS, "zero_rows policy")
        self.on_singular = check_choice(on_singular, ON_SINGULAR, "on_singular policy")
        from .._validation import check_options, check_real

        if rcond is not None:
            rcond = check_real(rcond, "rcond", lo=0, hi=1, hi_open=True,
                               hint="eigenvalues below rcond·λ_max are dropped")
        self.rcond = rcond
        spectral_options = check_options(spectral_options, ("tol", "max_steps", "seed",
                                                            "maxiter", "signed"),
                                          "spectral_options")
        self.F = _as_fisher(batch)
        self.batch = self.F.batch
        self.fine = fine
        blocks, offsets = layer_info(fine)
        if offsets[-1] != self.batch.n_params or len(blocks) != self.batch.n_layers or any(
            int(bl.shape[0]) != s for bl, s in zip(blocks, self.batch.block_sizes, strict=False)
        ):
            raise ShapeError(
                f"the fine level's blocks {[int(bl.shape[0]) for bl in blocks]} do not match "
                f"the batch's layers {self.batch.block_sizes}; build both from the same batch"
            )
        fine_batch = getattr(fine, "batch", None)
        if fine_batch is not None and getattr(fine_batch, "n_samples", None) not in (
                None, self.batch.n_samples):
            raise ShapeError(
                f"the fine level was built from {fine_batch.n_samples} samples but batch= "
                f"holds {self.batch.n_samples}; build both from the same factor batch")
        self.offsets = offsets
        self.xp = self.batch.xp
        self.dtype = self.batch.dtype
        self.shape = (offsets[-1], offsets[-1])
        self._spectral_options = dict(spectral_options or {})
        if isinstance(coarse_space, str):
            self.name = check_choice(coarse_space, COARSE_SPACES, "coarse space")
        elif isinstance(coarse_space, CoarseSpace):
            self.name = "user"
            if coarse_space.n_params != offsets[-1]:
                raise ShapeError(
                    f"the coarse space acts on {coarse_space.n_params} parameters, the "
                    f"batch has {offsets[-1]}"
                )
        else:
            self.name = "user"
            coarse_space = user_space(coarse_space, offsets, zero_rows=self.zero_rows)
        self.depends_on_g = self.name in RESIDUAL_BASED
        self.is_linear = not self.depends_on_g
        self.is_symmetric = self.is_linear and self.form == "additive"
        self.coarse: CoarseSpace | None = None
        self.coarse_matrix = None
        self._cinv = None
        self._exact_Fc = None
        self.beta = self.zeta_fine = self._residual = self._g = self._d = None
        if not self.depends_on_g:
            if isinstance(coarse_space, CoarseSpace):
                R0 = coarse_space
            else:
                R0 = build_coarse_space(self.name, fine, self.damping, rule,
                                        **(self._spectral_options if self.name == "spectral"
                                           else {}))
            self._set_coarse(R0)

    # -- coarse level ------------------------------------------------------------------
    def _set_coarse(self, R0: CoarseSpace):
        self.coarse = R0
        self._exact_Fc = None
        if self.name == "previous":
            self.coarse_matrix = previous_coarse_matrix(self.F, self.damping)
        else:
            self.coarse_matrix = coarse_matrix(R0, self.F, self.damping)
            self._exact_Fc = self.coarse_matrix
        self._cinv = _CoarseInverse(self.coarse_matrix, self.on_singular, self.rcond)

    @property
    def coarse_rank(self) -> int:
        """Numerical rank of the coarse matrix (``< c`` when the pseudo-inverse fallback
        was used)."""
        return self._cinv.rank if self._cinv is not None else 0

    def _F_lambda(self, v):
        return self.F.matvec(v) + self.damping * v

    # -- the direction -----------------------------------------------------------------
    def solve(self, g):
        """The two-level direction ``ζ`` for the gradient ``g`` (T2 or T3).

        Parameters
        ----------
        g : array, shape (P,)

        Returns
        -------
        zeta : array, shape (P,)
        """
        xp = self.xp
        P = self.shape[0]
        if g.ndim != 1 or g.shape[0] != P:
            raise ShapeError(
                f"TwoLevel.solve takes one gradient of shape ({P},), got {tuple(g.shape)}; "
                "for a linear two-level map on several vectors use .as_operator()"
            )
        check_finite(g, "the gradient")
        lam = self.damping
        zK = self.fine.solve(g, lam, rule=self.rule)
        r = None
        if self.form == "residual" or self.depends_on_g:
            r = g - self._F_lambda(zK)
        if self.depends_on_g:
            R0 = build_coarse_space(self.name, self.fine, lam, self.rule, residual=r,
                                    zero_rows=self.zero_rows)
            self._set_coarse(R0)
        rhs = self.coarse.apply(r if self.form == "residual" else g)
        beta = self._cinv(rhs)
        d = self.coarse.apply_t(beta) if self.coarse.n_rows else xp.zeros_like(zK)
        self._g, self.zeta_fine, self._residual, self.beta, self._d = g, zK, r, beta, d
        return zK + d

    __call__ = solve

    def _need_solve(self):
        if self._g is None:
            raise RuntimeError("call .solve(g) first: this diagnostic is about the last direction")

    @property
    def residual(self):
        """``r = g − F_λ ζ_K`` of the last solve."""
        self._need_solve()
        if self._residual is None:
            self._residual = self._g - self._F_lambda(self.zeta_fine)
        return self._residual

    @property
    def energy_gain(self) -> float:
        """``𝔈(ζ) − 𝔈(ζ_K)`` of the last direction (docs/papers.md T4).

        With ``d = ζ − ζ_K`` and ``e = ζ_K − F_λ⁻¹g`` (so ``F_λe = −r``):
        ``‖e + d‖²_{F_λ} − ‖e‖²_{F_λ} = −2dᵀr + dᵀF_λd`` — one Fisher product, no solve.
        For the residual form it equals ``−(R₀r)ᵀF_c⁻¹(R₀r) = −(R₀r)ᵀβ* ≤ 0``.
        """
        self._need_solve()
        xp = self.xp
        d, r = self._d, self.residual
        return float(-2.0 * xp.sum(d * r) + xp.sum(d * self._F_lambda(d)))

    @property
    def optimal_energy_gain(self) -> float:
        """(T4) ``−(R₀r)ᵀ F_c⁻¹ (R₀r)`` with the exact coarse matrix (T1): the gain of the
        residual form, the best correction within the span of ``R₀``."""
        self._need_solve()
        if self.coarse.n_rows == 0:
            return 0.0
        xp = self.xp
        if self._exact_Fc is None:
            self._exact_Fc = coarse_matrix(self.coarse, self.F, self.damping)
        Rr = self.coarse.apply(self.residual)
        y = _CoarseInverse(self._exact_Fc, "pinv", self.rcond)(Rr)
        return float(-xp.sum(Rr * y))

    # -- the linear map as an operator ---------------------------------------------------
    def as_operator(self) -> TwoLevelOperator:
        """The map ``g ↦ ζ`` as a symmetric :class:`~fimlab.CurvatureOperator` — an
        approximation of ``F_λ⁻¹`` (the inverse, not ``F̃``) — for the additive form with a
        coarse space that does not depend on ``g``: ``M⁻¹ + R₀ᵀF_c⁻¹R₀``."""
        if not self.is_symmetric:
            why = ("its coarse space is built from the residual, so the map is not linear"
                   if self.depends_on_g else
                   "the residual form M⁻¹ + R₀ᵀF_c⁻¹R₀(I − F_λM⁻¹) is linear but not symmetric")
            raise ShapeError(
                f"TwoLevel({self.name!r}, form={self.form!r}) is not a symmetric linear map: "
                f"{why}. Matrix metrics need form='additive' with a fixed coarse space; the "
                "direction metrics (direction_angle, energy_error) apply to every form"
            )
        return TwoLevelOperator(self)

    def __repr__(self) -> str:
        return (f"<TwoLevel coarse_space={self.name!r} form={self.form!r} "
                f"damping={self.damping:g} rule={self.rule!r} P={self.shape[0]}>")


class TwoLevelOperator(CurvatureOperator):
    """``X ↦ M⁻¹X + R₀ᵀF_c⁻¹R₀X``: an additive two-level preconditioner with a fixed coarse
    space as a symmetric operator approximating ``F_λ⁻¹`` (see :meth:`TwoLevel.as_operator`).

    ``applies_inverse = True`` tells the metrics that products with this operator apply
    the method's inverse (``F̃_λ⁻¹``) directly.
    """

    applies_inverse = True

    def __init__(self, T: TwoLevel):
        self.T = T
        self.shape, self.dtype, self.xp = T.shape, T.dtype, T.xp
        self.damping = T.damping

    def _device(self):
        return self.T.batch.device

    def _matmat(self, X):
        T = self.T
        Y = T.fine.solve(X, T.damping, rule=T.rule)
        if T.coarse.n_rows:
            Y = Y + T.coarse.apply_t(T._cinv(T.coarse.apply(X)))
        return Y

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        raise TypeError(
            "a TwoLevelOperator already applies an (approximate) damped inverse F̃_λ⁻¹; "
            "multiply by it (op @ v) instead of solving with it"
        )

