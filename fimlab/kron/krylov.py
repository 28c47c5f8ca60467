"""The Krylov solvers of fimlab — the one module every Lanczos/Golub–Kahan user calls.

- singular triplets of a product pair (``R(F_l)`` and friends): :func:`power_svd`,
  :func:`golub_kahan`, :func:`lanczos_svd` (restarted), :func:`deflate`, with a
  :class:`ConvergenceReport`; :func:`gram_golub_kahan`, the same Golub–Kahan loop in
  the coefficients of a Gram basis (used by :class:`fimlab.kron.RearrangedGram`);
- eigenvalues of a self-adjoint operator (in any inner product): :func:`lanczos`, the
  symmetric Lanczos with full reorthogonalisation used by the two-level coarse spaces,
  the preconditioned spectrum (E4/E5) and the spectral error (E3).

Vectors live in the caller's array namespace; only the small bidiagonal/tridiagonal
matrices are factorised on the host.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._errors import ConvergenceWarning, ShapeError
from .._validation import check_choice
from ..backend import (
    array_namespace,
    asarray_on,
    device_of,
    dtype_eps,
    from_host,
)
from ._basis import RowBasis, grow_column_bases
from ._checks import check_solver_params
from .pairs import ConvergenceReport, as_product_pair

# =====================================================================================
# Iterative SVD on any product pair: power SVD, Golub–Kahan (Lanczos)
# =====================================================================================


def _norm(x, xp) -> float:
    return float(xp.linalg.vector_norm(x))


def _op_namespace(op, v0):
    if v0 is not None:
        return array_namespace(v0), v0.dtype
    xp = getattr(op, "xp", None) or array_namespace()
    dtype = getattr(op, "dtype", None) or xp.float64
    return xp, dtype


def _op_device(op):
    """The device of a product pair's arrays (``None``: the library's default)."""
    for name in ("a", "M", "Rt"):
        arr = getattr(op, name, None)
        if arr is not None:
            return device_of(arr)
    inner = getattr(op, "op", None)
    return _op_device(inner) if inner is not None else None


def _random_vector(n, xp, dtype, rng, like=None, device=None):
    rng = rng if rng is not None else np.random.default_rng(0)
    x = rng.standard_normal(n)
    x = x / np.linalg.norm(x)  # xp: host draw, then moved
    if like is not None:
        return asarray_on(x, like, dtype=dtype)
    return from_host(x, xp, dtype=dtype, device=device)


def power_svd(op, v0=None, *, tol: float = 1e-6, maxiter: int = 1000, rng=None,
              zero_tol: float = 0.0, warn: bool = True, name: str = "power SVD"):
    """Leading singular triplet of a product pair by power iteration (the papers' "power
    SVD", docs/papers.md methods table).

    Alternates ``u = R v/‖R v‖``, ``v = Rᵀu/‖Rᵀu‖`` and stops when
    ``‖R v − σ u‖ ≤ tol·σ`` (``σ = ‖Rᵀu‖ = uᵀRv``; the other residual ``Rᵀu − σv`` is
    zero by construction) or after ``maxiter`` iterations (two products each).

    Parameters
    ----------
    op : product pair or matrix
    v0 : array, optional
        Start (warm start from previous factors); random from ``rng`` otherwise.
    tol : float
        Relative residual tolerance (the papers: 1e-6).
    maxiter : int
        Iteration cap (the papers: 1000).
    rng : numpy.random.Generator, optional
    zero_tol : float
        ``‖R v₀‖ ≤ zero_tol`` (after one random retry) means ``R`` is numerically zero:
        the triplet ``(0, 0, 0)`` is returned with ``breakdown=True, rank=0``.
    warn : bool
        Emit :class:`ConvergenceWarning` at the cap (with the residual reached).

    Returns
    -------
    sigma : float
    u, v : arrays
    report : ConvergenceReport

    Notes
    -----
    The convergence rate is ``(σ₂/σ₁)²`` per iteration: with ``σ₂ ≈ σ₁`` it can need
    hundreds of iterations. fimlab's exact solvers do not use it (see
    :class:`RearrangedGram`).
    """
    t0 = time.perf_counter()
    op = as_product_pair(op)
    check_solver_params(tol=tol, maxiter=maxiter)
    n_rows, n_cols = op.shape
    xp, dtype = _op_namespace(op, v0)
    if v0 is None:
        v = _random_vector(n_cols, xp, dtype, rng, device=_op_device(op))
    else:
        if v0.shape != (n_cols,):
            raise ShapeError(f"v0 must have length {n_cols}, got shape {tuple(v0.shape)}")
        nv = _norm(v0, xp)
        v = v0 / nv if nv > 0 else _random_vector(n_cols, xp, dtype, rng, like=v0)
    x = op.matvec(v)
    nprod = 1
    s = _norm(x, xp)
    if s <= zero_tol and v0 is not None:  # a warm start in the null space: one retry
        v = _random_vector(n_cols, xp, dtype, rng, like=v)
        x = op.matvec(v)
        nprod += 1
        s = _norm(x, xp)
    if s <= zero_tol or s == 0.0:
        rep = ConvergenceReport("power", True, 0.0, tol, 0, 0, nprod, True, 0, (0.0,),
                                time.perf_counter() - t0)
        return 0.0, xp.zeros_like(x), xp.zeros_like(v), rep
    u = x / s
    it, res, t = 0, math.inf, s
    u_old = u
    while it < maxiter:
        y = op.rmatvec(u)
        t = _norm(y, xp)
        v = y / t
        x = op.matvec(v)
        it += 1
        nprod += 2
        u_old = u
        res = _norm(x - t * u_old, xp) / t
        s = _norm(x, xp)
        u = x / s
        if res <= tol:
            break
    converged = res <= tol
    if not converged and warn:
        warnings.warn(
            f"{name} stopped at its cap of {maxiter} iterations with relative residual "
            f"‖R v − σ u‖/σ = {res:.3e} > tol {tol:.1e} (σ = {t:.6e}); the factors are "
            "approximate. Raise maxiter, or use solver='exact'",
            ConvergenceWarning,
            stacklevel=2,
        )
    rep = ConvergenceReport("power", converged, res, tol, it, 0, nprod, False, 1, (t,),
                            time.perf_counter() - t0)
    return t, u_old, v, rep


class _GK:
    """Golub–Kahan bidiagonalisation with full reorthogonalisation, grown step by step.

    ``R V_k = U_k B_k`` with ``B_k`` upper bidiagonal (``α`` on the diagonal, ``β``
    above it) and ``Rᵀ U_k = V_k B_kᵀ + β_{k−1} v_k e_kᵀ`` while the chain is open. A
    breakdown (``α`` or ``β`` at round-off level) is an exact invariant subspace: the
    chain is closed with a zero coupling (an ``α``-breakdown keeps ``v_j`` with
    ``α_j = 0`` and a zero ``u_j``, so ``B`` stays square); :meth:`restart` may open a
    new chain from a vector orthogonal to the previous ones. ``B`` lives on the host.
    """

    def __init__(self, op, v0, cap: int, xp):
        self.op, self.xp = op, xp
        self.n_rows, self.n_cols = op.shape
        self.cap = max(1, min(cap, self.n_rows, self.n_cols))
        dtype = v0.dtype
        self.dtype = dtype
        self._dev = device_of(v0)
        # bases column by column, grown by doubling (fimlab/kron/_basis.py)
        self._cols = 0
        self.U = self.V = None
        self._room(min(self.cap, 31))
        self.alpha = np.zeros(self.cap + 1)
        self.beta = np.zeros(self.cap + 1)  # beta[j] couples v_{j+1} to u_j
        self.k = 0
        self.n_products = 0
        self.scale = 0.0
        eps = dtype_eps(dtype)
        self.bd_rel = eps * max(1000.0, 10.0 * math.sqrt(max(self.n_rows, self.n_cols)))
        self.open = False
        self.breakdowns = 0
        self.restart(v0)

    def _room(self, j: int) -> None:
        """Make basis column ``j`` exist (``j ≤ cap``): both bases grow by doubling."""
        if j >= self._cols:
            cols = min(self.cap + 1, max(2 * self._cols, j + 1, 8))
            self.U, self.V = grow_column_bases(self.xp, (self.U, self.V),
                                               (self.n_rows, self.n_cols), self._cols, cols,
                                               self.dtype, self._dev)
            self._cols = cols

    def _orth(self, x, B, j):
        if j == 0:
            return x
        xp = self.xp
        Bj = B[:, :j]
        for _ in range(2):  # classical Gram–Schmidt, twice
            x = x - Bj @ (xp.matrix_transpose(Bj) @ x)
        return x

    @property
    def exhausted(self) -> bool:
        return self.k >= self.cap and not self.open

    def restart(self, v) -> bool:
        """Open a chain at column ``k`` from ``v`` (orthogonalised against ``V[:, :k]``);
        False when ``v`` lies (numerically) in the span already explored."""
        if self.k >= self.cap:
            self.open = False
            return False
        xp = self.xp
        nv0 = _norm(v, xp)
        v = self._orth(v, self.V, self.k)
        nv = _norm(v, xp)
        if nv == 0.0 or nv <= self.bd_rel * nv0:
            self.open = False
            return False
        self._room(self.k)
        self.V[:, self.k] = v / nv
        self.open = True
        return True

    def step(self) -> bool:
        """One step; False once the chain is closed (breakdown) or the cap is reached."""
        xp, j = self.xp, self.k
        if not self.open or j >= self.cap:
            return False
        x = self.op.matvec(self.V[:, j])
        self.n_products += 1
        if j > 0 and self.beta[j - 1] != 0.0:
            x = x - float(self.beta[j - 1]) * self.U[:, j - 1]
        x = self._orth(x, self.U, j)
        a = _norm(x, xp)
        self.scale = max(self.scale, a)
        if a == 0.0 or a <= self.bd_rel * self.scale:
            # alpha-breakdown: R v_j ∈ span(U_j); (U_j, V_{j+1}) is an invariant pair
            self.alpha[j] = 0.0
            self.k = j + 1
            self.open = False
            self.breakdowns += 1
            return False
        self.alpha[j] = a
        self._room(j + 1)
        self.U[:, j] = x / a
        y = self.op.rmatvec(self.U[:, j]) - a * self.V[:, j]
        self.n_products += 1
        y = self._orth(y, self.V, j + 1)
        b = _norm(y, xp)
        self.scale = max(self.scale, b)
        self.k = j + 1
        if b == 0.0 or b <= self.bd_rel * self.scale:
            self.beta[j] = 0.0
            self.open = False
            self.breakdowns += 1
            return False
        self.beta[j] = b
        if self.k >= self.n_rows:
            # left space exhausted: R v_{j+1} lies in span(U); close with α = 0
            self.V[:, self.k] = y / b
            self.alpha[self.k] = 0.0
            self.k += 1
            self.open = False
            return False
        if self.k >= self.cap:
            # cap reached with the chain open: keep v_{k} for the residual / restart
            self.V[:, self.k] = y / b
            return False
        self.V[:, self.k] = y / b
        return True

    def last_beta(self) -> float:
        """The coupling to the unexplored next vector (zero when the chain is closed):
        the Ritz residuals are ``last_beta · |p_r[k−1]|``."""
        if self.open and self.k > 0:
            return float(self.beta[self.k - 1])
        return 0.0

    def bidiagonal(self):
        k = self.k
        Bm = np.zeros((k, k))
        idx = np.arange(k)
        Bm[idx, idx] = self.alpha[:k]
        if k > 1:
            Bm[idx[:-1], idx[:-1] + 1] = self.beta[: k - 1]
        return Bm

    def ritz(self, k_top: int):
        """Top ``k_top`` singular triplets of ``B_k``: ``(s, P, Q)`` on the host."""
        k = self.k
        if k <= 64:
            P, s, Qh = np.linalg.svd(self.bidiagonal())
            return s[:k_top], P[:, :k_top], Qh[:k_top, :].T
        return _bidiag_top_svd(self.alpha[:k], self.beta[: k - 1], k_top)

    def residual(self, k_top: int):
        """``(s, max_r residual_r)`` of the top Ritz triplets (absolute)."""
        s, P, _ = self.ritz(k_top)
        res = self.last_beta() * np.abs(P[-1, :]) if self.k else np.zeros(1)
        return s, float(np.max(res)) if res.size else 0.0


def _bidiag_top_svd(alpha, beta, k_top):
    """Top singular triplets of an upper bidiagonal matrix through the Golub–Kahan
    tridiagonal ``[[0, B], [Bᵀ, 0]]`` (zero diagonal, off-diagonal ``α₀, β₀, α₁, …``),
    whose eigenvalues are ``±σ`` (host, SciPy's ``eigh_tridiagonal``)."""
    import scipy.linalg

    k = alpha.shape[0]
    e = np.zeros(2 * k - 1)
    e[0::2] = alpha
    e[1::2] = beta
    n = 2 * k
    kt = min(k_top, k)
    w, Z = scipy.linalg.eigh_tridiagonal(np.zeros(n), e, select="i",
                                         select_range=(n - kt, n - 1))
    order = np.argsort(w)[::-1]
    w, Z = w[order], Z[:, order]
    # ordering (v_0, u_0, v_1, u_1, ...): eigenvector = [q; p]/√2 interleaved
    Q = Z[0::2, :] * math.sqrt(2.0)
    P = Z[1::2, :] * math.sqrt(2.0)
    return np.maximum(w, 0.0), P, Q


def golub_kahan(op, steps: int, v0=None, *, rng=None):
    """``steps`` steps of Golub–Kahan (Lanczos) bidiagonalisation of a product pair, with
    full reorthogonalisation.

    Returns ``(U, B, V, info)`` with ``R V = U B`` (``B`` upper bidiagonal, on the host)
    and ``Rᵀ U = V Bᵀ + info["beta_next"] v_next e_lastᵀ``. Steps beyond the rank of
    ``R`` are clipped: a breakdown is an exact invariant subspace (``info["breakdown"]``,
    ``info["steps"] < steps``), never an error or a NaN.
    """
    op = as_product_pair(op)
    check_solver_params(steps=steps)
    xp, dtype = _op_namespace(op, v0)
    if v0 is None:
        v0 = _random_vector(op.shape[1], xp, dtype, rng, device=_op_device(op))
    gk = _GK(op, v0, steps, xp)
    while gk.step():
        pass
    k = gk.k
    info = {"steps": k, "breakdown": gk.breakdowns > 0, "n_products": gk.n_products,
            "beta_next": gk.last_beta()}
    return gk.U[:, :k], gk.bidiagonal(), gk.V[:, :k], info


def lanczos_svd(op, k: int = 2, steps: int | None = 2, v0=None, *, tol: float = 1e-6,
                max_restarts: int = 100, rng=None, zero_tol: float = 0.0,
                warn: bool = True, name: str = "Lanczos SVD", max_steps: int | None = None):
    """Leading ``k`` singular triplets of a product pair by Golub–Kahan (Lanczos)
    bidiagonalisation (docs/papers.md methods table, "Lanczos").

    Two modes:

    - ``steps`` an integer (the papers: ``steps=2``, ``k=2``): bidiagonalise for
      ``steps`` steps from ``v0``, take the SVD of the small bidiagonal, keep ``k``
      triplets; while the residual is above ``tol`` restart from ``v₁ + … + v_k`` (at
      most ``max_restarts`` restarts), then warn with the residual reached.
    - ``steps=None``: grow one Krylov space until the ``k`` leading Ritz triplets reach
      ``tol`` or the space is exhausted (exact); a breakdown before that continues from
      a fresh vector orthogonal to the explored space. ``max_steps`` caps the space (a
      budget): reaching it with the triplets above ``tol`` returns them with
      ``report.converged`` False.

    The residual of triplet ``r`` is ``‖(R v_r − σ_r u_r, Rᵀu_r − σ_r v_r)‖ =
    β_last |p_r[last]|`` (``R V = U B`` holds exactly), reported relative to ``σ₁``.
    Steps beyond the rank of ``R`` are clipped by a breakdown (an invariant subspace,
    not an error); triplets beyond the rank come back as zeros (``report.rank < k``).

    Returns
    -------
    sigma : numpy array (k,)
    U : array (n_rows, k)
    V : array (n_cols, k)
    report : ConvergenceReport
    """
    t0 = time.perf_counter()
    op = as_product_pair(op)
    check_solver_params(tol=tol, max_restarts=max_restarts, steps=steps)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ShapeError(f"k must be a positive integer, got {k!r}")
    if steps is not None and steps < k:
        raise ShapeError(
            f"Lanczos needs at least as many bidiagonalisation steps as triplets kept: "
            f"steps={steps} < k={k}"
        )
    n_rows, n_cols = op.shape
    xp, dtype = _op_namespace(op, v0)
    rng = rng if rng is not None else np.random.default_rng(0)
    if v0 is None:
        v = _random_vector(n_cols, xp, dtype, rng, device=_op_device(op))
    else:
        if v0.shape != (n_cols,):
            raise ShapeError(f"v0 must have length {n_cols}, got shape {tuple(v0.shape)}")
        nv = _norm(v0, xp)
        v = v0 / nv if nv > 0 else _random_vector(n_cols, xp, dtype, rng, like=v0)
    nprod = 1
    probe = _norm(op.matvec(v), xp)
    if probe <= zero_tol and v0 is not None:  # warm start in the null space: retry
        v = _random_vector(n_cols, xp, dtype, rng, like=v)
        probe = _norm(op.matvec(v), xp)
        nprod += 1
    dev = device_of(v)
    if probe <= zero_tol or probe == 0.0:
        rep = ConvergenceReport("lanczos", True, 0.0, tol, 0, 0, nprod, True, 0,
                                (0.0,) * k, time.perf_counter() - t0)
        return (np.zeros(k), xp.zeros((n_rows, k), dtype=dtype, device=dev),
                xp.zeros((n_cols, k), dtype=dtype, device=dev), rep)

    dim = min(n_rows, n_cols)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(
            max_steps, (int, np.integer)) or max_steps < k):
        raise ShapeError(f"max_steps must be an integer >= k = {k}, got {max_steps!r}")
    cap = dim if max_steps is None else min(dim, int(max_steps))
    restarts, iters = 0, 0
    while True:
        gk = _GK(op, v, cap if steps is None else steps, xp)
        if steps is None:
            next_check = min(max(2 * k, 8), dim)
            opened, idle = None, 0
            while True:
                if gk.step():
                    if gk.k >= next_check:
                        s_c, r_c = gk.residual(k)
                        if r_c <= tol * float(s_c[0]):
                            break
                        next_check = max(gk.k + 4, int(gk.k * 1.25))
                    continue
                if gk.exhausted or gk.open:
                    break
                # breakdown before exhaustion: an exact invariant subspace was found;
                # the leading triplets may lie outside it, so explore on, from the row
                # space of R (Rᵀx, x random: the right singular vectors of the non-zero
                # singular values lie there). A random vector of R^{n_cols} would mostly
                # explore the null space, one dimension per restart (thousands of steps
                # for a low-rank R). A restart vector in the explored span, or two running
                # that break down at once (round-off of a null direction), mean the row
                # space is exhausted
                if opened is not None and gk.k == opened + 1 and gk.alpha[opened] == 0.0:
                    idle += 1
                    if idle >= 2:
                        break
                else:
                    idle = 0
                x = op.rmatvec(_random_vector(n_rows, xp, dtype, rng, like=v))
                nprod += 1
                opened = gk.k
                if not gk.restart(x):
                    break
        else:
            while gk.step():
                pass
        iters += gk.k
        nprod += gk.n_products
        s, P, Q = gk.ritz(k)
        s1 = float(s[0]) if s.shape[0] else 0.0
        res = (gk.last_beta() * float(np.max(np.abs(P[-1, :]))) / s1) if s1 > 0 else 0.0
        if steps is None or res <= tol or restarts >= max_restarts:
            break
        Qd = asarray_on(Q, gk.V, dtype=dtype)  # restart from v_1 + ... + v_k
        v = gk.V[:, : gk.k] @ xp.sum(Qd, axis=1)
        v = v / _norm(v, xp)
        restarts += 1

    converged = res <= tol
    if steps is None and cap < dim and gk.k >= cap and not gk.open:
        converged = False  # closed exactly at the budget: the space is not exhausted
    Pd = asarray_on(P, gk.U, dtype=dtype)
    Qd = asarray_on(Q, gk.V, dtype=dtype)
    Uk = gk.U[:, : gk.k] @ Pd
    Vk = gk.V[:, : gk.k] @ Qd
    floor = max(zero_tol, gk.bd_rel * max(gk.scale, s1))
    sig = np.zeros(k)
    Uo = xp.zeros((n_rows, k), dtype=dtype, device=dev)
    Vo = xp.zeros((n_cols, k), dtype=dtype, device=dev)
    n_keep = 0
    for i in range(s.shape[0]):
        if s[i] > floor:
            sig[i] = s[i]
            Uo[:, i] = Uk[:, i]
            Vo[:, i] = Vk[:, i]
            n_keep += 1
    if not converged and warn:
        warnings.warn(
            f"{name} stopped after {restarts} restarts (cap {max_restarts}) with relative "
            f"residual {res:.3e} > tol {tol:.1e}; the leading {k} triplets are "
            "approximate. Raise max_restarts or steps, or use solver='exact'",
            ConvergenceWarning,
            stacklevel=2,
        )
    rep = ConvergenceReport(
        "lanczos", converged, res, tol, iters, restarts, nprod,
        gk.breakdowns > 0 or n_keep < k, n_keep, tuple(float(x) for x in sig),
        time.perf_counter() - t0,
    )
    return sig, Uo, Vo, rep


def _reorth(p, Mp, Bt, MBt, xp):
    """Orthogonalise ``p`` against the rows of ``Bt`` in the inner product ``⟨x, y⟩ =
    xᵀ M y`` (``MBt`` = the rows times ``M``), updating ``Mp = M p`` alongside: classical
    Gram–Schmidt, repeated when the first pass removed more than half of the squared norm
    (Daniel–Gragg–Kaufman–Stewart). Returns ``(p, Mp, pᵀ M p)``."""
    n0 = float(xp.sum(p * Mp))
    n1 = n0
    for _ in range(2):
        c = MBt @ p
        p, Mp = p - xp.matrix_transpose(Bt) @ c, Mp - xp.matrix_transpose(MBt) @ c
        n1 = float(xp.sum(p * Mp))
        if n1 > 0.5 * n0:
            break
        n0 = n1
    return p, Mp, n1


def _bidiag_top(alphas, betas, k: int):
    """The ``k`` largest singular values of the upper bidiagonal ``B`` (diagonal
    ``alphas``, superdiagonal ``betas``) and the last components of their left singular
    vectors — from the top eigenpairs of the tridiagonal ``B Bᵀ`` (LAPACK ``stemr``,
    ``O(j·k)``: a few microseconds, where a dense SVD of ``B`` costs ``O(j³)``). For
    convergence checks; the final triplets come from an SVD of ``B``."""
    from scipy.linalg import eigh_tridiagonal

    a = np.asarray(alphas, dtype=np.float64)
    b = np.asarray(betas, dtype=np.float64)
    j = a.shape[0]
    if j <= 2 * k + 2:
        P, s, _ = np.linalg.svd(np.diag(a) + np.diag(b, 1))
        return s[:k], P[-1, :k]
    d = a * a
    d[:-1] += b * b
    e = b * a[1:]
    w, V = eigh_tridiagonal(d, e, select="i", select_range=(j - k, j - 1))
    return np.sqrt(np.maximum(w[::-1], 0.0)), V[-1, ::-1]


def gram_golub_kahan(apply_u, apply_v, c0, CX, CY, y, My, k, tol, rank_rtol, steps, rank_bound,
            u_le_v):
    """Golub–Kahan bidiagonalisation of ``R = Uᵀ C V`` on Gram coefficients (the loop of
    :meth:`fimlab.kron.RearrangedGram.golub_kahan`), with the Gram products given as
    callables ``apply_u(x) = M_U x``, ``apply_v(y) = M_V y``; ``C = c0·I + CX CYᵀ``;
    ``y`` (``M_V``-normalised) and ``My = M_V y`` start it.

    Returns ``(Xt, Yt, alphas, betas, flags, res)``: the left and right coefficient
    vectors as rows (``Yt`` has one row more than ``Xt`` after a left breakdown), the
    bidiagonal's entries, ``flags = (left_breakdown, converged, right_breakdown)`` and
    the largest relative Ritz residual at the last check.
    """
    xp = array_namespace(y)
    m = y.shape[0]
    dev = device_of(y)
    cap = min(steps + 1, 2 * k + 10)  # grown by doubling (no (steps+1) × m page faults)
    Xt, MXt, Yt, MYt = (xp.zeros((cap, m), dtype=xp.float64, device=dev) for _ in range(4))
    Yt[0, :], MYt[0, :] = y, My
    alphas, betas = [], []
    smax, res = 0.0, float("inf")
    conv = left_bd = breakdown = False
    j, next_check = 0, k
    low_rank = CX.shape[1] > 0
    CXt, CYt = xp.matrix_transpose(CX), xp.matrix_transpose(CY)

    def core(z, transpose=False):
        if not low_rank:
            return c0 * z
        return (c0 * z + CY @ (CXt @ z)) if transpose else (c0 * z + CX @ (CYt @ z))

    while True:
        # left: alpha_j x_j = C M_V y_j - beta_{j-1} x_{j-1}, M_U-orthogonal to X
        p = core(My)
        if j:
            p = p - betas[-1] * Xt[j - 1, :]
        Mp = apply_u(p)
        if j:
            p, Mp, a2 = _reorth(p, Mp, Xt[:j, :], MXt[:j, :], xp)
        else:
            a2 = float(xp.sum(p * Mp))
        alpha = math.sqrt(max(a2, 0.0))
        smax = max(smax, alpha)
        if alpha <= 1e-14 * smax or alpha == 0.0:
            left_bd = True
            break
        Xt[j, :], MXt[j, :] = p / alpha, Mp / alpha
        alphas.append(alpha)
        # right: beta_j y_{j+1} = Cᵀ M_U x_j - alpha_j y_j, M_V-orthogonal to Y
        q = core(MXt[j, :], True) - alpha * y
        Mq = apply_v(q)
        q, Mq, b2 = _reorth(q, Mq, Yt[: j + 1, :], MYt[: j + 1, :], xp)
        beta = math.sqrt(max(b2, 0.0))
        betas.append(beta)
        smax = max(smax, beta)
        j += 1
        breakdown = beta <= 1e-14 * smax
        if breakdown or j >= steps or j >= next_check:
            next_check = j + (2 if j < 40 else j // 8)  # small SVDs: cheap checks
            kk = min(k, j)
            svals, last = _bidiag_top(alphas, betas[:-1], kk)
            s1 = float(svals[0])
            resid = np.abs(beta * last)
            # triplets below the rank threshold count as converged (they are zeros)
            ok = (resid <= tol * s1) | (svals[:kk] <= rank_rtol * s1)
            res = float(np.max(resid) / s1) if s1 > 0 else 0.0
            if breakdown or (kk == k and bool(np.all(ok))):
                conv = True
                break
            if j >= steps:
                conv = j >= rank_bound  # the whole space: the triplets are exact
                if conv and u_le_v and beta > 0:
                    # the left space is exhausted (α_j+1 = 0 up to round-off): the exact
                    # triplets are those of [B_j β_j e_j] with y_j+1
                    left_bd = True
                else:
                    break
        y, My = q / beta, Mq / beta
        if j + 1 > cap - 1:  # room for x_j+1 and y_j+1
            cap2 = min(steps + 1, 2 * cap)
            grown = []
            for T in (Xt, MXt, Yt, MYt):
                T2 = xp.zeros((cap2, m), dtype=xp.float64, device=dev)
                T2[:cap, :] = T
                grown.append(T2)
            Xt, MXt, Yt, MYt = grown
            cap = cap2
        Yt[j, :], MYt[j, :] = y, My
        if left_bd:
            break
    n = len(alphas)
    ny = n + 1 if left_bd else n
    flags = (left_bd, conv, breakdown)
    return Xt[:n, :], Yt[:ny, :], np.asarray(alphas), np.asarray(betas), flags, res


# =====================================================================================
# Symmetric Lanczos (eigenvalues of a self-adjoint operator, in any inner product)
# =====================================================================================

_WHICH = ("largest", "smallest", "both", "magnitude")


@dataclass
class LanczosResult:
    """Ritz values (ascending, host NumPy) and, if asked, Ritz vectors (columns).

    ``residuals[i]`` bounds ``‖T y_i − θ_i y_i‖_M`` for the unit (M-norm) Ritz vector
    ``y_i``; ``exhausted`` is True when the Krylov space became invariant (then every
    Ritz value is an eigenvalue, and the distinct eigenvalues reachable from the start
    vector have all been found).
    """

    values: np.ndarray
    residuals: np.ndarray
    vectors: object
    steps: int
    converged: bool
    exhausted: bool


def lanczos(
    op: Callable,
    n: int,
    *,
    xp,
    dtype,
    device=None,
    M: Callable | None = None,
    which: str = "largest",
    tol: float = 1e-8,
    max_steps: int | None = None,
    seed: int = 0,
    v0=None,
    want_vectors: bool = False,
    warn: bool = True,
    what: str = "Lanczos",
) -> LanczosResult:
    """Lanczos on an operator ``T`` self-adjoint in the inner product ``⟨x, y⟩_M``.

    Parameters
    ----------
    op : callable
        ``op(v, Mv)`` returns ``T v`` (``Mv`` is supplied so that ``T = P M`` costs one
        product with ``P``).
    n : int
        Dimension.
    M : callable, optional
        ``v ↦ M v`` (symmetric positive definite); the identity when ``None``.
    which : {"largest", "smallest", "both", "magnitude"}
        Which extreme Ritz values must converge before stopping (``"magnitude"``: the
        one of largest ``|θ|``, for a spectral norm).
    tol : float
        Relative residual ``|β_m s_{m,i}| ≤ tol · max|θ|`` for the wanted extremes.
    max_steps : int, optional
        Cap on the Krylov dimension (default ``min(n, 300)``).
    seed, v0
        The start vector: ``v0`` if given, else a standard normal draw from ``seed``
        (on the host, then moved — same numbers on every backend).

    Returns
    -------
    LanczosResult
    """
    check_choice(which, _WHICH, "Lanczos 'which'")
    Mop = M if M is not None else (lambda v: v)
    max_steps = min(n, 300) if max_steps is None else max(1, min(int(max_steps), n))
    if v0 is None:
        v0 = from_host(np.random.default_rng(seed).standard_normal(n), xp, dtype=dtype,
                       device=device)
    v = v0
    Mv = Mop(v)
    nrm = math.sqrt(max(float(xp.sum(v * Mv)), 0.0))
    if not nrm > 0:
        raise ValueError("Lanczos start vector has zero norm")
    v, Mv = v / nrm, Mv / nrm
    # the basis as the rows of one growing array: the reorthogonalisation reads a
    # contiguous block (a list stacked at every step copied j·n numbers per step: 5 of the
    # 8 s of 30 steps at n = 785,000, most of the SLQ time on the auto-encoder)
    basis = RowBasis(v, max_steps + 1, xp)
    mbasis = RowBasis(Mv, max_steps + 1, xp) if M is not None else basis
    alphas: list[float] = []
    betas: list[float] = []
    exhausted = converged = False
    theta = np.zeros(0)
    S = np.zeros((0, 0))
    res = np.zeros(0)
    scale = 0.0

    def ritz():
        m = len(alphas)
        T = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
        th, Sv = np.linalg.eigh(T)
        b_last = betas[m - 1] if len(betas) >= m else 0.0
        return th, Sv, np.abs(b_last * Sv[-1, :])

    check_every = 1
    for j in range(max_steps):
        w = op(basis.row(j), mbasis.row(j))
        # full reorthogonalisation, classical Gram-Schmidt twice: ⟨q_i, w⟩_M = (M q_i)ᵀ w
        Qm, MQm = basis.rows(), mbasis.rows()
        c = MQm @ w
        alpha = float(c[j])
        w = w - xp.matrix_transpose(Qm) @ c
        c2 = MQm @ w
        w = w - xp.matrix_transpose(Qm) @ c2
        alphas.append(alpha + float(c2[j]))
        Mw = Mop(w)
        beta = math.sqrt(max(float(xp.sum(w * Mw)), 0.0))
        betas.append(beta)
        scale = max(scale, abs(alphas[-1]), beta)
        m = j + 1
        breakdown = beta <= 1e-12 * max(scale, 1e-300) or m == n
        if breakdown or m == max_steps or m % check_every == 0:
            theta, S, res = ritz()
            ref = max(float(np.max(np.abs(theta))), 1e-300)
            idx = ({"largest": [-1], "smallest": [0], "both": [0, -1]}[which]
                   if which != "magnitude" else [int(np.argmax(np.abs(theta)))])
            converged = all(res[i] <= tol * ref for i in idx)
            check_every = 1 if m < 20 else 5
            if breakdown:
                exhausted = True
                converged = True
                break
            if converged:
                break
        basis.append(w / beta)
        if M is not None:
            mbasis.append(Mw / beta)
    m = len(alphas)
    if warn and not converged:
        warnings.warn(
            f"{what}: Lanczos stopped after {m} steps with relative Ritz residual "
            f"{float(np.max(res)) / max(float(np.max(np.abs(theta))), 1e-300):.1e} above "
            f"tol={tol:.0e}; raise max_steps or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    vectors = None
    if want_vectors:
        Qm = basis.rows()[:m, ...]
        vectors = xp.matrix_transpose(Qm) @ from_host(np.ascontiguousarray(S), xp,
                                                      dtype=dtype, device=device_of(Qm))
    return LanczosResult(theta, res, vectors, m, converged, exhausted)
