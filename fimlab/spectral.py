"""Spectral densities by stochastic Lanczos quadrature, and stochastic trace/diagonal
estimators (docs/papers.md "Spectral densities").

**Stochastic Lanczos quadrature** (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019;
Papyan 2020). For a symmetric ``A`` (``n × n``) and a Rademacher probe ``v``
(``‖v‖² = n``), ``m`` Lanczos steps from ``q₁ = v/‖v‖`` give the tridiagonal ``T_m =
S Θ Sᵀ``, and ``vᵀ f(A) v ≈ ‖v‖² Σ_j τ_j² f(θ_j)`` with ``τ_j = S_{1j}`` — the ``m``-point
Gauss quadrature of the spectral measure of ``A`` seen from ``v``, exact for
polynomials of degree ``≤ 2m − 1``. Averaged over ``p`` independent probes,

    tr f(A) ≈ (n/p) Σ_p Σ_j τ_pj² f(θ_pj)

is *unbiased* (Hutchinson: ``E[v vᵀ] = I``) for every polynomial ``f`` of degree
``≤ 2m − 1``: the weights are unbiased for the Euclidean inner product ``⟨x, y⟩ = xᵀy``
in which ``A`` is symmetric. The density is ``(1/p) Σ τ_pj² δ(λ − θ_pj)`` (a fraction of
the ``n`` eigenvalues), drawn broadened by a Gaussian of width ``σ`` in ``log₁₀ λ``.

**Preconditioned spectra.** For an approximation ``F̃`` that is a symmetric positive
definite linear map, the density is that of ``F̃_λ^{-1/2} F_λ F̃_λ^{-1/2}`` (``F_λ = F +
λI``), run in the Euclidean inner product with ``F̃_λ^{-1/2}`` applied exactly (Kronecker
eigendecompositions, eigenvalue-corrected bases, Gram eigenpairs). PCG-based solves
(rank ≥ 3 or ``rule="exact"`` on rank-2 Kronecker sums) and the two-level methods are
refused: the first is not a fixed linear map (a tolerance-dependent iteration), the
residual two-level form is not symmetric; neither has an inverse square root.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._errors import ShapeError
from ._validation import check_damping

__all__ = ["SpectralDensity", "spectral_density", "inverse_sqrt_map", "hutchinson",
           "hutchpp", "xtrace", "diagonal_estimate"]


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise TypeError("pass rng= (a numpy.random.Generator or an int seed): results are "
                        "random and fimlab keeps randomness explicit")
    return np.random.default_rng(rng)


def _check_pos_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ShapeError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _as_apply(op):
    """``(X ↦ A X, n, xp, dtype, device)`` for a curvature operator or a dense array."""
    from .backend import array_namespace, device_of
    from .operators import CurvatureOperator

    if isinstance(op, CurvatureOperator):
        return op.matmat, op.shape[0], op.xp, op.dtype, op.device
    if hasattr(op, "ndim") and op.ndim == 2 and op.shape[0] == op.shape[1]:
        xp = array_namespace(op)
        return (lambda X: op @ X), int(op.shape[0]), xp, op.dtype, device_of(op)
    raise TypeError(f"need a curvature operator or a square array, got {type(op).__name__}")


# -- F̃_λ^{-1/2} for the approximations that are symmetric positive definite linear maps ---------
def _sym_pow(M, xp, shift: float, power: float):
    M = 0.5 * (M + xp.matrix_transpose(M))
    w, Q = xp.linalg.eigh(M)
    w = w + shift
    if bool(xp.any(w <= 0)):
        raise ShapeError("the damped factor is not positive definite: no inverse square root")
    return (Q * (w ** power)[None, :]) @ xp.matrix_transpose(Q)


def _kron_inv_sqrt(block, lam: float, rule: str):
    from .kron import kron_matmat

    xp = block.xp
    if len(block.terms) != 1:
        raise ShapeError(
            f"a Kronecker block with {len(block.terms)} terms has no inverse square root here "
            "(its damped inverse is a simultaneous diagonalisation or PCG, not a map with a "
            "square root fimlab forms); use fl.preconditioned_spectrum for its Ritz values")
    A, G = block.terms[0]
    if rule == "factor":
        s = math.sqrt(lam)
        Ah, Gh = _sym_pow(A, xp, s, -0.5), _sym_pow(G, xp, s, -0.5)
        return lambda X: kron_matmat(Ah, Gh, X)
    if rule == "pi":
        dA, dG = A.shape[0], G.shape[0]
        ta = float(xp.sum(xp.linalg.diagonal(A))) / dA
        tg = float(xp.sum(xp.linalg.diagonal(G))) / dG
        pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
        s = math.sqrt(lam)
        Ah, Gh = _sym_pow(A, xp, pi * s, -0.5), _sym_pow(G, xp, s / pi, -0.5)
        return lambda X: kron_matmat(Ah, Gh, X)
    # exact: (A ⊗ G + λI)^{-1/2} in the joint eigenbasis
    A2, G2 = 0.5 * (A + xp.matrix_transpose(A)), 0.5 * (G + xp.matrix_transpose(G))
    wa, QA = xp.linalg.eigh(A2)
    wg, QG = xp.linalg.eigh(G2)
    d = xp.reshape(wa[:, None] * wg[None, :], (-1,)) + lam
    if bool(xp.any(d <= 0)):
        raise ShapeError("A ⊗ G + λI is not positive definite: no inverse square root")
    dh = d ** -0.5
    QAt, QGt = xp.matrix_transpose(QA), xp.matrix_transpose(QG)
    return lambda X: kron_matmat(QA, QG, dh[:, None] * kron_matmat(QAt, QGt, X))


def _gram_inv_sqrt(N, lam, xp, layers_op):
    """``(F + λI)^{-1/2}`` for ``F = UᵀU/N`` from the Gram eigenpairs: ``λ^{-1/2}I +
    Σ_i ((μ_i + λ)^{-1/2} − λ^{-1/2}) u_i u_iᵀ`` with ``u_i = Uᵀw_i/√(Nμ_i)``."""
    b = layers_op.batch
    M = b.gram() / N
    mu, W = xp.linalg.eigh(0.5 * (M + xp.matrix_transpose(M)))
    keep = mu > float(xp.max(mu)) * M.shape[0] * 1e-14 if float(xp.max(mu)) > 0 else mu > 0
    mu = mu[keep]
    W = W[:, keep]
    coef = ((mu + lam) ** -0.5 - lam ** -0.5) / (N * mu)
    K = b.n_vectors

    def apply(X):
        UX = xp.reshape(layers_op.jacobian_rows(X), (N * K, X.shape[1]))
        Y = W @ (coef[:, None] * (xp.matrix_transpose(W) @ UX))
        return X * lam ** -0.5 + layers_op.jacobian_rows_transpose(xp.reshape(Y, (N, K, X.shape[1])))

    return apply


def inverse_sqrt_map(approx, damping: float, rule: str = "factor"):
    """``X ↦ F̃_λ^{-1/2} X`` for an approximation that is a symmetric positive definite
    linear map, with the damping of its ``solve(·, λ, rule)``.

    Supported: one-term Kronecker blocks (KFAC, KPSVD rank 1; rules ``"factor"``,
    ``"pi"``, ``"exact"``), eigenvalue-corrected and diagonal blocks (exact), exact Fisher
    blocks and the Fisher itself (Gram eigenpairs), ``LowRank`` (its eigenpairs),
    block-diagonal operators of these.

    Raises
    ------
    ShapeError
        For approximations whose damped inverse is not a fixed SPD linear map with a
        square root fimlab forms: Kronecker sums of two or more terms (simultaneous
        diagonalisation or PCG), ``LowRankPlusDiagonal``, two-level methods (the residual
        form is not symmetric; the coarse spaces built from residuals make it nonlinear).
    """
    from .approx.eigencorrected import EigenbasisBlock, check_rule
    from .approx.lowrank import LowRank, LowRankPlusDiagonal
    from .curvature import FisherBlock, FisherOperator
    from .operators import BlockDiagonalOperator, KroneckerOperator

    lam = check_damping(damping)
    check_rule(rule)
    if type(approx).__name__ in ("TwoLevel", "TwoLevelOperator"):
        raise ShapeError(
            "two-level methods are left out of preconditioned densities: the residual form "
            "is not a symmetric linear map and the residual-based coarse spaces depend on "
            "the gradient; use fl.preconditioned_spectrum on the additive form")
    if isinstance(approx, BlockDiagonalOperator):
        maps = [inverse_sqrt_map(b, lam, rule) for b in approx.blocks]
        offs = approx.offsets

        def apply(X):
            xp = approx.xp
            return xp.concat([f(X[offs[i]:offs[i + 1], ...]) for i, f in enumerate(maps)],
                             axis=0)
        return apply
    if isinstance(approx, KroneckerOperator):
        return _kron_inv_sqrt(approx, lam, rule)
    if isinstance(approx, EigenbasisBlock):
        dh = (approx.diagonal_values + lam) ** -0.5
        return lambda X: approx.apply_diagonal(X, dh)
    if isinstance(approx, FisherBlock):
        return _gram_inv_sqrt(approx.batch.n_samples, lam, approx.xp,
                              FisherOperator(approx.batch.layer(approx.l)))
    if isinstance(approx, FisherOperator):
        return _gram_inv_sqrt(approx.batch.n_samples, lam, approx.xp, approx)
    if isinstance(approx, LowRankPlusDiagonal):
        raise ShapeError("LowRankPlusDiagonal has no inverse square root fimlab forms "
                         "(low rank plus a non-uniform diagonal); use "
                         "fl.preconditioned_spectrum for its Ritz values")
    if isinstance(approx, LowRank):
        xp = approx.xp
        lamk = approx.values_array
        coef = (lamk + lam) ** -0.5 - lam ** -0.5
        V = approx.V if approx.V is not None else approx.eigenvectors()
        return lambda X: X * lam ** -0.5 + V @ (coef[:, None] * (xp.matrix_transpose(V) @ X))
    raise ShapeError(f"{type(approx).__name__} has no inverse square root fimlab forms; "
                     "preconditioned densities need a symmetric positive definite linear map")


# -- stochastic Lanczos quadrature --------------------------------------------------------------
@dataclass
class SpectralDensity:
    """A spectral density by stochastic Lanczos quadrature.

    Attributes
    ----------
    nodes, weights : arrays (probes, m) or (probes, m + 1)
        Ritz values ``θ_pj`` and weights ``τ_pj²·‖v_p‖²/n`` (each row sums to
        ``‖v_p‖²/n``, 1 for Rademacher probes). A probe whose Krylov space is exhausted
        before ``m`` steps (then its Ritz values are eigenvalues) is padded with copies of
        its largest Ritz value of weight 0. For a Fisher operator or block with a null
        space, Lanczos runs from the probe's part in the range of ``F`` (the projector
        from the Gram eigenpairs) and the last column is an exact node at 0 weighted by
        the probe's null-space part ``‖P₀ v_p‖²/n``.
    n : int
        Dimension.
    grid, density : arrays
        ``log₁₀ λ`` grid and the broadened density per unit ``log₁₀ λ`` (fraction of
        eigenvalues); it integrates to ``1 − zero_mass``.
    zero_mass : float
        Estimated fraction of eigenvalues at zero (``θ ≤ zero_rtol·max θ``), reported
        separately (it cannot be drawn on a log scale).
    exact_zero_mass : float or None
        ``1 − rank/n`` when the rank is known exactly (Fisher operators: Gram route).
    outliers : array or None
        The largest eigenvalues, exact (Gram route), when asked for.
    inner_product : str
        The inner product the weights are unbiased for.
    """

    nodes: np.ndarray
    weights: np.ndarray
    n: int
    grid: np.ndarray
    density: np.ndarray
    zero_mass: float
    exact_zero_mass: float | None = None
    outliers: np.ndarray | None = None
    inner_product: str = "Euclidean ⟨x, y⟩ = xᵀy"
    label: str = ""
    info: dict = field(default_factory=dict)

    def moment(  # xp: host nodes and weights
            self, j: int) -> float:
        """Estimate of ``tr(A^j)``: ``n·mean_p Σ_j w_pj θ_pj^j`` (unbiased for
        ``j ≤ 2m − 1``)."""
        return float(self.n * np.mean(np.sum(self.weights * self.nodes ** j, axis=1)))


def _slq_nodes(  # xp: host probes (then moved) and the small Lanczos data
        apply, n, xp, dtype, device, probes, steps, rng, project=None):
    """Quadrature nodes and weights, one row per probe. With ``project`` (the orthogonal
    projector onto the range of ``A``) each probe is split as ``v = P_r v + P₀ v``:
    Lanczos runs from ``P_r v`` (its Krylov space stays in the range, so every Ritz value
    approximates a non-zero eigenvalue), and the null-space part is one exact node at 0
    of weight ``‖P₀ v‖²/n``. ``vᵀ f(A) v = (P_r v)ᵀ f(A) P_r v + f(0)‖P₀ v‖²`` holds
    exactly, so the quadrature keeps its exactness for polynomials of degree ≤ 2m − 1."""
    from .backend import from_host, to_numpy
    from .kron import lanczos

    nodes, weights = [], []
    m = min(steps, n)
    for _ in range(probes):
        v = rng.choice(np.array([-1.0, 1.0]), size=n)  # Rademacher: ‖v‖² = n
        v0 = from_host(v, xp, dtype=dtype, device=device)
        t, w = np.zeros(m), np.zeros(m)
        mass = 1.0  # ‖v0‖²/n of the vector Lanczos starts from
        if project is not None:
            v0 = project(v0)
            mass = min(float(to_numpy(xp.sum(v0 * v0))) / n, 1.0)
        if mass > 0.0:
            res = lanczos(lambda x, Mx: apply(xp.reshape(x, (-1, 1)))[:, 0], n, xp=xp,
                          dtype=dtype, device=device, which="both", tol=0.0, max_steps=m,
                          v0=v0, want_vectors=True, warn=False)
            # τ_j = first component of the j-th eigenvector of T = q₁ᵀ(Ritz vector j)
            tau = to_numpy(xp.matrix_transpose(res.vectors) @ v0) / math.sqrt(mass * n)
            th = np.asarray(res.values, dtype=float)
            t[:] = th[-1]  # a Krylov space exhausted early: padded, weight 0
            t[: th.size], w[: th.size] = th, mass * tau ** 2
        if project is not None:  # the null-space part: one exact node at 0
            t, w = np.append(t, 0.0), np.append(w, 1.0 - mass)
        nodes.append(t)
        weights.append(w)
    return np.array(nodes), np.array(weights)


def _range_projector(  # xp: the numerical rank is decided on the host Gram eigenvalues
        op, xp):
    """``(P_r, eigenvalues of F)`` for a Fisher operator or block ``F = UᵀU/N``:
    ``P_r v = Uᵀ W_r Λ_r⁻¹ W_rᵀ U v`` from the eigenpairs ``(Λ, W)`` of the Gram matrix
    ``U Uᵀ`` (``N·K × N·K``), ``r`` its numerical rank; never forms ``P × P``."""
    from .backend import device_of, to_numpy
    from .curvature import FisherBlock, FisherOperator

    F = FisherOperator(op.batch.layer(op.l)) if isinstance(op, FisherBlock) else op
    b = F.batch
    lam, W = xp.linalg.eigh(b.gram())
    lam_h = np.asarray(to_numpy(lam), dtype=float)
    top = float(np.max(lam_h)) if lam_h.size else 0.0
    keep = lam_h > top * lam_h.size * np.finfo(float).eps * 10 if top > 0 else lam_h < 0
    ev = np.sort(lam_h)[::-1] / b.n_samples
    idx = [int(i) for i in np.flatnonzero(keep)]
    if not idx:
        return (lambda v: v * 0.0), ev, 0
    where = xp.asarray(idx, device=device_of(W))
    Wr = xp.take(W, where, axis=1)
    inv = 1.0 / xp.take(lam, where)
    shape = (b.n_samples, b.n_vectors, 1)

    def project(v):
        y = xp.reshape(F.jacobian_rows(xp.reshape(v, (-1, 1))), (-1,))
        c = Wr @ ((xp.matrix_transpose(Wr) @ y) * inv)
        return xp.reshape(F.jacobian_rows_transpose(xp.reshape(c, shape)), (-1,))
    return project, ev, len(idx)


def spectral_density(  # xp: the quadrature nodes/weights and the density grid are host data
        op, *, probes: int = 8, steps: int = 40, rng=0,
                     preconditioner=None, damping: float | None = None,
                     rule: str = "factor", n_grid: int = 400, sigma: float = 0.05,
                     grid=None, zero_rtol: float | None = None, outliers: int = 0,
                     label: str = "") -> SpectralDensity:
    """The spectral density of a symmetric operator by stochastic Lanczos quadrature.

    Parameters
    ----------
    op : CurvatureOperator or square array
        The Fisher (operator or block), an approximation, or any symmetric operator.
    probes : int
        Number of Rademacher probes ``p``; the density's standard error shrinks as
        ``1/√p`` (variance of a moment estimate: ``2(‖f(A)‖²_F − Σ f(A)_ii²)/p`` for
        Rademacher probes, Hutchinson's).
    steps : int
        Lanczos steps ``m`` per probe (full reorthogonalisation); moments up to degree
        ``2m − 1`` are unbiased.
    rng : numpy.random.Generator or int
        The probes' randomness (explicit; default seed 0).
    preconditioner : approximation, optional
        Draw ``F̃_λ^{-1/2} F_λ F̃_λ^{-1/2}`` instead of ``op`` (``op`` the Fisher, ``F̃`` a
        symmetric positive definite linear map, see :func:`inverse_sqrt_map`); needs
        ``damping``.
    damping : float
        ``λ`` of the preconditioned operator (``F_λ = F + λI``, ``F̃_λ`` by ``rule``).
    n_grid, sigma, grid
        The ``log₁₀ λ`` grid (default: from ``min θ/10`` to ``max θ·10`` over the non-zero
        nodes) and the Gaussian broadening in ``log₁₀`` units.
    zero_rtol : float, optional
        Ritz values ``≤ zero_rtol·max θ`` count as zero (``zero_mass``). Default: for a
        Fisher operator or block (not preconditioned), half its smallest non-zero
        eigenvalue, exact from the Gram matrix; ``1e-6`` otherwise. For a Fisher the zero
        mass does not depend on it: each probe is split into its range and null-space
        parts (``P_r v`` by ``Uᵀ W_r Λ_r⁻¹ W_rᵀ U v`` from the ``N·K × N·K`` Gram
        eigenpairs), Lanczos runs on the range part only, and the null-space part is an
        exact node at 0 — without the split, a Lanczos approximation of the zero
        eigenvalue converges slowly (to ~1e-8 relative, not round-off) and with fewer
        steps than the rank it sat above the threshold, so the zero mass read 0.
    outliers : int
        Also return the ``outliers`` largest eigenvalues exactly, by the ``N·K × N·K``
        Gram matrix (Fisher operators and blocks only).

    Returns
    -------
    SpectralDensity

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> A = np.diag(np.arange(1.0, 11.0))
    >>> d = fl.spectral_density(A, probes=4, steps=10, rng=0)
    >>> round(d.moment(1), 6), round(d.moment(2), 6)          # Rademacher: exact on diagonals
    (55.0, 385.0)
    """
    from .curvature import FisherBlock, FisherOperator

    probes = _check_pos_int(probes, "probes")
    steps = _check_pos_int(steps, "steps")
    n_grid = _check_pos_int(n_grid, "n_grid")
    if not sigma > 0:
        raise ShapeError(f"sigma must be positive, got {sigma!r}")
    rng = _rng(rng)
    apply, n, xp, dtype, device = _as_apply(op)
    inner = "Euclidean ⟨x, y⟩ = xᵀy"
    if preconditioner is not None:
        if damping is None:
            raise ShapeError("a preconditioned density needs damping= (λ of F_λ and F̃_λ)")
        lam = check_damping(damping)
        if getattr(preconditioner, "shape", (n, n)) != (n, n):
            raise ShapeError(f"the preconditioner has shape {preconditioner.shape}, the "
                             f"operator ({n}, {n})")
        S = inverse_sqrt_map(preconditioner, lam, rule)
        base = apply

        def apply(X):  # noqa: F811 - the preconditioned operator
            Y = S(X)
            return S(base(Y) + lam * Y)
        inner = "Euclidean ⟨x, y⟩ = xᵀy (F̃_λ^{-1/2} F_λ F̃_λ^{-1/2} applied exactly)"
    exact_zero, outs, ev, project = None, None, None, None
    fisher = isinstance(op, (FisherOperator, FisherBlock)) and preconditioner is None
    if outliers and not fisher:
        raise ShapeError("exact outliers need a Fisher operator or block (the Gram route)")
    if fisher:
        project, ev, rank = _range_projector(op, xp)
        exact_zero = 1.0 - rank / n
        if rank == n:
            project = None  # no null space: plain probes
        if outliers:
            outs = ev[: min(int(outliers), rank)]
    nodes, weights = _slq_nodes(apply, n, xp, dtype, device, probes, steps, rng, project)
    top = float(np.max(np.abs(nodes))) if nodes.size else 0.0
    if fisher and zero_rtol is None and rank >= 1 and top > 0:
        zero_rtol = 0.5 * ev[rank - 1] / top
    if zero_rtol is None:
        zero_rtol = 1e-6
    zero = nodes <= zero_rtol * top
    zero_mass = float(np.mean(np.sum(weights * zero, axis=1)))
    pos = ~zero & (nodes > 0)
    if grid is None:
        lo = float(np.log10(np.min(nodes[pos]))) - 1 if pos.any() else -1.0
        hi = float(np.log10(np.max(nodes[pos]))) + 1 if pos.any() else 1.0
        grid = np.linspace(lo, hi, n_grid)
    grid = np.asarray(grid, dtype=float)
    dens = np.zeros_like(grid)
    if pos.any():
        t = np.log10(nodes[pos])
        w = weights[pos] / probes
        dens = (w[None, :] * np.exp(-0.5 * ((grid[:, None] - t[None, :]) / sigma) ** 2)).sum(1)
        dens /= sigma * math.sqrt(2 * math.pi)
    return SpectralDensity(nodes, weights, n, grid, dens, zero_mass, exact_zero, outs, inner,
                           label, {"probes": probes, "steps": steps})


# -- stochastic trace and diagonal estimators ---------------------------------------------------
def _probe(rng, n, k, xp, dtype, device):  # xp: host draw, then moved
    from .backend import from_host

    return from_host(rng.choice(np.array([-1.0, 1.0]), size=(n, k)), xp, dtype=dtype,
                     device=device)


def hutchinson(  # xp: host probe draws (moved) and p host scalars
        op, probes: int = 32, *, rng=0):
    """Hutchinson's trace estimate ``(1/p) Σ vᵀAv`` with ``p`` Rademacher probes.

    Unbiased; variance ``2(‖A‖²_F − Σ_i A_ii²)/p``. Returns ``(estimate, standard error)``
    (the error from the sample variance of the ``p`` terms).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> est, se = fl.spectral.hutchinson(np.diag([1.0, 2.0, 3.0]), probes=5, rng=0)
    >>> est, se                                   # diagonal: every probe is exact
    (6.0, 0.0)
    """
    from .backend import to_numpy

    probes = _check_pos_int(probes, "probes")
    rng = _rng(rng)
    apply, n, xp, dtype, device = _as_apply(op)
    V = _probe(rng, n, probes, xp, dtype, device)
    t = np.asarray(to_numpy(xp.sum(V * apply(V), axis=0)), dtype=float)
    se = float(np.std(t, ddof=1) / math.sqrt(probes)) if probes > 1 else float("nan")
    return float(np.mean(t)), se


def hutchpp(op, matvecs: int = 48, *, rng=0) -> float:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021): ``m`` products split in thirds —
    a sketch ``Q = orth(A S)`` (``m/3`` columns), ``tr(QᵀAQ)`` exactly, Hutchinson with
    ``m/3`` probes on ``(I − QQᵀ)A(I − QQᵀ)``.

    Unbiased; for PSD ``A`` the variance is at most ``(4/(m/3))·‖A − A_{m/3}‖²_F``
    (``A_k`` the best rank-``k`` part): relative error ``O(1/m)`` instead of
    Hutchinson's ``O(1/√m)``. Exact when ``rank A ≤ m/3``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> A = np.diag([5.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    >>> round(fl.spectral.hutchpp(A, matvecs=9, rng=0), 10)   # rank 2 ≤ 3: exact
    6.0
    """
    matvecs = _check_pos_int(matvecs, "matvecs")
    if matvecs < 3:
        raise ShapeError(f"Hutch++ needs at least 3 products, got matvecs={matvecs}")
    rng = _rng(rng)
    apply, n, xp, dtype, device = _as_apply(op)
    k = matvecs // 3
    S = _probe(rng, n, k, xp, dtype, device)
    Q, _ = xp.linalg.qr(apply(S))
    t1 = float(xp.sum(Q * apply(Q)))
    G = _probe(rng, n, matvecs - 2 * k, xp, dtype, device)
    G = G - Q @ (xp.matrix_transpose(Q) @ G)
    t2 = float(xp.sum(G * apply(G))) / G.shape[1]
    return t1 + t2


def xtrace(  # xp: host probe draws (moved) and s host scalars
        op, matvecs: int = 48, *, rng=0):
    """XTrace (Epperly, Tropp & Webber 2024): the exchangeable trace estimator, every
    probe used both in the sketch and as a Hutchinson probe (leave-one-out).

    With ``s = m/2`` Rademacher probes ``Ω``: for each ``i``, ``Q_i`` spans ``AΩ`` without
    column ``i``, and ``t_i = tr(Q_iᵀAQ_i) + ω_iᵀ(I − Q_iQ_iᵀ)A(I − Q_iQ_iᵀ)ω_i``; the
    estimate is the mean of the ``t_i``, unbiased, with standard error
    ``std(t_i)/√s``. Returns ``(estimate, standard error)``. Dense ``n × s`` algebra
    (``O(n s²)`` for the ``s`` leave-one-out bases).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> A = np.diag([5.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    >>> est, se = fl.spectral.xtrace(A, matvecs=8, rng=0)   # rank 2 < s − 1: exact
    >>> round(est, 10), se < 1e-10
    (6.0, True)
    """
    matvecs = _check_pos_int(matvecs, "matvecs")
    s = matvecs // 2
    if s < 2:
        raise ShapeError(f"XTrace needs at least 4 products, got matvecs={matvecs}")
    rng = _rng(rng)
    apply, n, xp, dtype, device = _as_apply(op)
    Om = _probe(rng, n, s, xp, dtype, device)
    Y = apply(Om)
    ts = []
    for i in range(s):
        keep = [j for j in range(s) if j != i]
        Yi = xp.take(Y, xp.asarray(keep, device=device), axis=1)
        Q, _ = xp.linalg.qr(Yi)
        AQ = apply(Q)
        w = Om[:, i:i + 1]
        r = w - Q @ (xp.matrix_transpose(Q) @ w)
        ts.append(float(xp.sum(Q * AQ)) + float(xp.sum(r * apply(r))))
    ts = np.array(ts)
    return float(np.mean(ts)), float(np.std(ts, ddof=1) / math.sqrt(s))


def diagonal_estimate(  # xp: host probe draws (moved); the estimate is returned on the host
        op, probes: int = 32, *, rng=0):
    """Stochastic diagonal ``diag(A) ≈ (1/p) Σ v ∘ Av`` (Bekas, Kokiopoulou & Saad 2007)
    with Rademacher probes: unbiased, ``Var[d̂_i] = Σ_{j≠i} A_ij² / p``. Returns
    ``(estimate, standard error per entry)`` (host NumPy).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> d, se = fl.spectral.diagonal_estimate(np.diag([1.0, 2.0]), probes=3, rng=0)
    >>> d.tolist(), se.tolist()
    ([1.0, 2.0], [0.0, 0.0])
    """
    from .backend import to_numpy

    probes = _check_pos_int(probes, "probes")
    rng = _rng(rng)
    apply, n, xp, dtype, device = _as_apply(op)
    V = _probe(rng, n, probes, xp, dtype, device)
    T = np.asarray(to_numpy(V * apply(V)), dtype=float)
    se = (np.std(T, axis=1, ddof=1) / math.sqrt(probes) if probes > 1
          else np.full(n, np.nan))
    return T.mean(axis=1), se
