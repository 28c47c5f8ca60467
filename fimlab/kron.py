"""Kronecker algebra as plain functions (backend-agnostic, matrix-free where it matters).

Conventions (DESIGN.md): ``vec`` is column-major, so for ``V`` of shape ``(d_g, d_a)``
``(A ⊗ G) vec(V) = vec(G V Aᵀ)``. A stack of ``k`` such vectors is an array ``X`` of
shape ``(d_a·d_g, k)``; reshaped (row-major) to ``(d_a, d_g, k)`` its entry
``[j, i, c]`` is ``V_c[i, j]`` — the "grid" layout used below, which needs no transpose.

Contents
--------
- :func:`vec`, :func:`unvec`, :func:`kron` (dense, for tests and teaching);
- :func:`kron_matmat` — ``(A ⊗ G) X`` by two GEMMs;
- :func:`kron_sum_inner` — ``⟨Σ A_r⊗G_r, Σ B_s⊗C_s⟩_F`` from factor inner products;
- :func:`kron_sum_inverse` / :func:`kron_sum_solve` — the damped inverses of PAPERS.md
  (K2, K3, K4 for one term; I1 for two; preconditioned CG for any number);
- :func:`rearrange`, :func:`rearrange_inverse`, :func:`kpsvd`, :func:`nearest_kronecker`,
  :func:`psd_sign` — the rearrangement and the Kronecker product SVD of a dense matrix
  (R1, R2, R4), for tests and teaching;
- :func:`rearranged_matvec`, :func:`rearranged_rmatvec`, :class:`RearrangedFisher` — the
  products with ``R(F_i)`` of a factor-batch layer, matrix-free (R3);
- :class:`RearrangedGram` — the exact route to the leading singular triplets of
  ``R(F_i)`` through an ``m × m`` problem built from Gram matrices (Golub–Kahan in Gram
  coefficients, or the dense eigenproblem; :func:`gram_of_rows`, :func:`weighted_gram`
  build the factors by symmetric rank-k updates);
- :func:`power_svd`, :func:`golub_kahan`, :func:`lanczos_svd`, :func:`deflate` — the
  papers' iterative solvers on any product pair, with convergence reports.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ._errors import ConvergenceWarning, DampingError, ShapeError, SingularMatrixError
from ._validation import check_choice, check_dense_memory
from .backend import (
    array_namespace,
    asarray_on,
    device_of,
    dtype_eps,
    from_host,
    is_numpy_namespace,
    kron,
    unvec,
    vec,
)

__all__ = [
    "vec",
    "unvec",
    "kron",
    "kron_matmat",
    "kron_sum_inner",
    "kron_sum_inverse",
    "kron_sum_solve",
    "DAMPING_RULES",
    # rearrangement and KPSVD of dense matrices (R1, R2, R4)
    "rearrange",
    "rearrange_inverse",
    "kpsvd",
    "nearest_kronecker",
    "psd_sign",
    "KronSVD",
    # matrix-free products with R(F_i) (R3) and the exact Gram route
    "rearranged_matvec",
    "rearranged_rmatvec",
    "RearrangedFisher",
    "RearrangedGram",
    "weighted_gram",
    "gram_of_rows",
    # iterative SVD on product pairs
    "as_product_pair",
    "deflate",
    "DeflatedProductPair",
    "power_svd",
    "golub_kahan",
    "lanczos_svd",
    "ConvergenceReport",
    "pcg",
]

DAMPING_RULES = ("factor", "pi", "exact")


def _grid(X, d_a: int, d_g: int, xp):
    return xp.reshape(X, (d_a, d_g, X.shape[-1]))


def kron_matmat(A, G, X):
    """``(A ⊗ G) X`` for ``X`` of shape ``(d_a·d_g, k)`` (or a vector), never forming
    ``A ⊗ G``: each column ``vec(V)`` maps to ``vec(G V Aᵀ)``.

    Cost ``O(k·d_a·d_g·(d_a + d_g))`` instead of ``O(k·d_a²·d_g²)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A, G, x = rng.normal(size=(3, 3)), rng.normal(size=(2, 2)), rng.normal(size=6)
    >>> bool(np.allclose(kron_matmat(A, G, x), np.kron(A, G) @ x))
    True
    """
    xp = array_namespace(A, G, X)
    d_a, d_g = A.shape[0], G.shape[0]
    is_vec = X.ndim == 1
    if is_vec:
        X = xp.reshape(X, (-1, 1))
    k = X.shape[1]
    T = A @ xp.reshape(X, (A.shape[1], d_g * k))  # (d_a, d_g*k): acts on the j index
    # G acts on the i index. A stacked G @ T(d_a, d_g, k) runs d_a products that each
    # re-read G: for few columns they are GEMV-like and memory-bound (2x slower at
    # d_a = 785, d_g = 1000, k = 1 or 4), so below 8 columns it is ONE GEMM (with two
    # transposing copies when k > 1); from 8 columns on the stacked products are
    # GEMM-shaped and skip the copies (~10 % faster at k = 16-900)
    if k == 1:
        Y = xp.reshape(T @ xp.matrix_transpose(G), (d_a * d_g, 1))  # rows j: (G t_j)ᵀ
    elif k >= 8:
        Y = xp.reshape(G @ xp.reshape(T, (d_a, d_g, k)), (d_a * d_g, k))
    else:
        Tg = xp.reshape(xp.permute_dims(xp.reshape(T, (d_a, d_g, k)), (1, 0, 2)),
                        (d_g, d_a * k))
        Y = xp.reshape(xp.permute_dims(xp.reshape(G @ Tg, (d_g, d_a, k)), (1, 0, 2)),
                       (d_a * d_g, k))
    return Y[:, 0] if is_vec else Y


def kron_sum_inner(terms1: Sequence[tuple], terms2: Sequence[tuple]) -> float:
    """Frobenius inner product ``⟨Σ_r A_r⊗G_r, Σ_s B_s⊗C_s⟩ = Σ_{r,s} ⟨A_r,B_s⟩⟨G_r,C_s⟩``."""
    total = 0.0
    for A, G in terms1:
        xp = array_namespace(A, G)
        for B, C in terms2:
            total += float(xp.sum(A * B)) * float(xp.sum(G * C))
    return total


def _sym(M, xp):
    return 0.5 * (M + xp.matrix_transpose(M))


def _eye(n, ref, xp):
    return xp.eye(n, dtype=ref.dtype, device=device_of(ref))


def _inv_spd(M, xp):
    """Inverse of a symmetric positive definite matrix, with a clear error if it is not
    (or is numerically singular: smallest eigenvalue ≤ n·eps·λ_max, the tolerance of
    ``numpy.linalg.matrix_rank``).

    NumPy float arrays: LAPACK Cholesky (``potrf``), a condition estimate (``pocon``,
    which bounds the smallest eigenvalue from below) and the inverse from the factor
    (``potri``) — 6x faster than an eigendecomposition at n = 1001 on this project's
    machine (17 vs 106 ms), which is what a KFAC inverse refresh spends its time on;
    when Cholesky fails or the estimate is near the threshold, and for other namespaces:
    ``eigh``, which gives the eigenvalues themselves.
    """
    S = _sym(M, xp)
    inv = _inv_spd_lapack(S)
    if inv is not None:
        return inv
    w, Q = xp.linalg.eigh(S)
    _check_spd(float(xp.min(w)), float(xp.max(w)), S)
    return (Q / w) @ xp.matrix_transpose(Q)


def _check_spd(wmin, wmax, M):
    # relative, as matrix_rank's: an absolute floor flagged factors of small scale, and
    # 1e3·n·eps (the old tolerance) rejected float32 factors of size 1000 with κ > 8
    if not (wmin > 0) or wmin <= M.shape[0] * _eps(M) * wmax:
        raise SingularMatrixError(
            f"a damped Kronecker factor is not positive definite (smallest eigenvalue "
            f"{wmin:.3e}, largest {wmax:.3e}); increase the damping"
        )


def _lapack_ready(M) -> bool:
    """A non-empty NumPy float32/float64 array: SciPy's LAPACK takes it as it is."""
    return type(M) is np.ndarray and M.dtype in (np.float32, np.float64) and M.size > 0


def _inv_spd_lapack(S):
    """``S⁻¹`` by Cholesky for a NumPy float ``S`` (symmetric); ``None`` for other arrays
    and whenever Cholesky fails or the condition estimate is near the threshold, so that
    the eigendecomposition gives the exact verdict (and the numbers of the error)."""
    if not _lapack_ready(S):
        return None
    from scipy.linalg import lapack

    potrf, pocon, potri = lapack.get_lapack_funcs(("potrf", "pocon", "potri"), (S,))
    n = S.shape[0]
    anorm = float(np.max(np.sum(np.abs(S), axis=0)))  # ‖S‖₁ ≥ λ_max
    c, info = potrf(S.T, lower=0, clean=0)  # S.T is F-ordered; potrf factors a copy
    if info == 0:
        rcond, info = pocon(c, anorm, uplo="U")
        # rcond = 1/(‖S‖₁‖S⁻¹‖₁) ≤ λ_min/λ_max: the check of _check_spd, on the safe side
        if info == 0 and rcond > n * _eps(S):
            inv, info = potri(c, lower=0, overwrite_c=1)
            if info == 0:
                from . import _kernels

                Mi = inv.T  # C order; its lower triangle holds S⁻¹
                _kernels.symmetrize_lower(Mi)
                return Mi
    return None  # not positive definite, or ill-conditioned: eigh decides, exactly


def _eps(M) -> float:
    return 1.2e-7 if "32" in str(M.dtype) else 2.3e-16


def _inv_sqrt_spd(M, xp):
    w, Q = xp.linalg.eigh(_sym(M, xp))
    wmin = float(xp.min(w))
    if not wmin > 0:
        raise SingularMatrixError(
            f"a damped Kronecker factor is not positive definite (smallest eigenvalue "
            f"{wmin:.3e}); increase the damping"
        )
    return (Q / xp.sqrt(w)) @ xp.matrix_transpose(Q)


def kron_sum_inverse(
    terms: Sequence[tuple],
    damping: float,
    rule: str = "factor",
    *,
    signed: bool = False,
    tol: float = 1e-10,
    maxiter: int | None = None,
) -> Callable:
    """Precompute a damped inverse of ``Σ_r A_r ⊗ G_r`` and return ``apply(X)``.

    Parameters
    ----------
    terms : sequence of (A, G)
        Kronecker terms; the first is the leading one.
    damping : float
        ``λ > 0``.
    rule : {"factor", "pi", "exact"}
        - ``"factor"``: one term, ``(A+√λI)⁻¹ ⊗ (G+√λI)⁻¹`` (PAPERS.md K2); two terms,
          the inverse of ``X = (A₁+λI)⊗(G₁+λI) + A₂⊗G₂`` by (I1); three or more terms,
          preconditioned CG on ``Σ A_r⊗G_r + λI`` (DESIGN.md).
        - ``"pi"``: factored Tikhonov ``(A+π√λI)⁻¹ ⊗ (G+√λ/π I)⁻¹`` (K3), one term only.
        - ``"exact"``: ``(Σ A_r⊗G_r + λI)⁻¹``: eigendecompositions for one term (K4),
          preconditioned CG (the leading term's exact damped inverse as preconditioner)
          otherwise.
    signed : bool
        For (I1) only: ``False`` (default, the papers' code) uses ``1 + |s₂||s₁|ᵀ``;
        ``True`` uses the signed eigenvalues, the true inverse of ``X``, and raises
        :class:`SingularMatrixError` when ``X`` is (near-)singular.
    tol, maxiter : float, int
        Relative residual tolerance and iteration cap of the CG solves.

    Returns
    -------
    apply : callable
        ``apply(X)`` maps ``(d_a·d_g, k)`` to ``(d_a·d_g, k)``; it has attributes
        ``rule`` and, for CG, ``last_info`` (iterations and residual of the last call).
    """
    rule = check_choice(rule, DAMPING_RULES, "damping rule")
    if not (isinstance(damping, (int, float)) and damping > 0 and math.isfinite(damping)):
        raise DampingError(f"damping must be a positive finite number, got {damping!r}")
    lam = float(damping)
    terms = list(terms)
    A1, G1 = terms[0]
    xp = array_namespace(A1, G1)
    d_a, d_g = A1.shape[0], G1.shape[0]
    r = len(terms)

    if rule == "pi" and r != 1:
        raise DampingError(
            f"the 'pi' rule (factored Tikhonov, K3) is defined for one Kronecker term; this "
            f"block has {r}. Use rule='factor' (I1) or rule='exact'"
        )
    if r == 1 and rule in ("factor", "pi"):
        sq = math.sqrt(lam)
        if rule == "factor":
            da_shift, dg_shift = sq, sq
        else:
            tra = float(xp.sum(xp.linalg.diagonal(A1))) / d_a
            trg = float(xp.sum(xp.linalg.diagonal(G1))) / d_g
            if not (tra > 0 and trg > 0):
                raise SingularMatrixError(
                    "the 'pi' rule needs factors with positive trace (π² = (tr A/d_a)/(tr G/d_g))"
                )
            pi = math.sqrt(tra / trg)
            da_shift, dg_shift = pi * sq, sq / pi
        Ai = _inv_spd(A1 + da_shift * _eye(d_a, A1, xp), xp)
        Gi = _inv_spd(G1 + dg_shift * _eye(d_g, G1, xp), xp)

        def apply(X):
            return kron_matmat(Ai, Gi, X)

        apply.rule = rule
        return apply

    if r == 1:  # exact, K4
        return _exact_rank1_inverse(A1, G1, lam, xp)

    if r == 2 and rule == "factor":
        return _rank2_inverse(terms, lam, xp, signed=signed)

    # exact for r >= 2, or factor for r >= 3: PCG on Σ A_r⊗G_r + λI
    precond = _exact_rank1_inverse(A1, G1, lam, xp)
    return _pcg_inverse(terms, lam, precond, tol=tol, maxiter=maxiter, rule=rule)


def _congruence_diagonal_inverse(La, Lg, den, xp):
    """``X ↦ (L_a ⊗ L_g) diag(den)⁻¹ (L_a ⊗ L_g)ᵀ X``: the shape shared by (K4), with
    orthogonal eigenvectors, and (I1), with ``K₁ = ÂE₁``, ``K₂ = ĜE₂``."""
    LaT, LgT = xp.matrix_transpose(La), xp.matrix_transpose(Lg)

    def apply(X):
        Y = kron_matmat(LaT, LgT, X)
        Y = Y / (den[:, None] if Y.ndim == 2 else den)
        return kron_matmat(La, Lg, Y)

    return apply


def _exact_rank1_inverse(A, G, lam, xp):
    """(K4): ``(A⊗G + λI)⁻¹ = (Q_A⊗Q_G)(Λ_A⊗Λ_G + λI)⁻¹(Q_A⊗Q_G)ᵀ``."""
    wa, Qa = xp.linalg.eigh(_sym(A, xp))
    wg, Qg = xp.linalg.eigh(_sym(G, xp))
    D = vec(wg[:, None] * wa[None, :], xp) + lam  # vec(λG λAᵀ): index j*d_g + i
    dmin = float(xp.min(D))
    if not dmin > 0:
        raise SingularMatrixError(
            f"A⊗G + λI is not positive definite (smallest eigenvalue {dmin:.3e}): the "
            "Kronecker factors have eigenvalues of opposite sign; increase the damping"
        )
    apply = _congruence_diagonal_inverse(Qa, Qg, D, xp)
    apply.rule = "exact"
    apply.diagonal = D
    apply.eigvecs = (Qa, Qg)
    return apply


def _simultaneous_diagonalisation(B, A, xp):
    """``(s, K)`` with ``Kᵀ B K = I`` and ``Kᵀ A K = diag(s)`` for a symmetric positive
    definite ``B`` and a symmetric ``A``.

    NumPy float arrays: LAPACK's generalized symmetric eigensolver (``sygvd``: Cholesky
    of ``B``, reduction, divide and conquer) in one call — 113 vs 270 ms at n = 1001 on
    this project's machine; other namespaces: ``K = B^{-1/2} E`` with ``E`` the
    eigenvectors of ``B^{-1/2} A B^{-1/2}`` — also where LAPACK finds ``B`` not positive
    definite, so that :func:`_inv_sqrt_spd` gives the verdict and its error.
    """
    B, A = _sym(B, xp), _sym(A, xp)
    if _lapack_ready(B):
        import scipy.linalg

        try:
            return scipy.linalg.eigh(A, B, check_finite=False, driver="gvd")
        except np.linalg.LinAlgError:
            pass
    Bh = _inv_sqrt_spd(B, xp)
    s, E = xp.linalg.eigh(_sym(Bh @ A @ Bh, xp))
    return s, Bh @ E


def _rank2_inverse(terms, lam, xp, *, signed: bool):
    """(I1): inverse of ``X = (A₁+λI)⊗(G₁+λI) + A₂⊗G₂`` by simultaneous diagonalisation."""
    (A1, G1), (A2, G2) = terms
    d_a, d_g = A1.shape[0], G1.shape[0]
    s1, Ka = _simultaneous_diagonalisation(A1 + lam * _eye(d_a, A1, xp), A2, xp)
    s2, Kg = _simultaneous_diagonalisation(G1 + lam * _eye(d_g, G1, xp), G2, xp)
    if not signed:
        s1, s2 = xp.abs(s1), xp.abs(s2)
    den = vec(1.0 + s2[:, None] * s1[None, :], xp)
    if signed:
        # |1 + s₂s₁| relative to the size of its terms: ~eps means X is singular
        ratio = xp.abs(den) / vec(1.0 + xp.abs(s2)[:, None] * xp.abs(s1)[None, :], xp)
        amin = float(xp.min(xp.abs(den)))
        if float(xp.min(ratio)) < 1e4 * _eps(A1):
            raise SingularMatrixError(
                f"the rank-2 Kronecker sum (A₁+λI)⊗(G₁+λI) + A₂⊗G₂ is numerically singular "
                f"(min |1 + s₂s₁| = {amin:.3e}); increase the damping, or use signed=False "
                "(the papers' |s| rule) or rule='exact'"
            )
    apply = _congruence_diagonal_inverse(Ka, Kg, den, xp)
    apply.rule = "factor"
    apply.signed = signed
    apply.denominator = den
    return apply


def _pcg_inverse(terms, lam, precond, *, tol, maxiter, rule):
    A1, G1 = terms[0]
    xp = array_namespace(A1, G1)
    n = A1.shape[0] * G1.shape[0]
    cap = maxiter if maxiter is not None else max(50, min(n, 2000))

    def op(X):
        out = lam * X
        for A, G in terms:
            out = out + kron_matmat(A, G, X)
        return out

    def apply(X):
        Y, info = pcg(op, X, precond, tol=tol, maxiter=cap, xp=xp)
        apply.last_info = info
        return Y

    apply.rule = rule
    apply.last_info = None
    return apply


def pcg(op: Callable, B, precond: Callable | None, *, tol: float = 1e-10,
        maxiter: int = 1000, xp=None):
    """Preconditioned conjugate gradients for an SPD ``op`` on every column of ``B``
    at once (independent scalars per column).

    Returns ``(X, info)`` with ``info = {"iterations", "residual"}`` (the largest relative
    residual over the columns). Emits :class:`ConvergenceWarning` at the cap.
    """
    xp = xp or array_namespace(B)
    vec_in = B.ndim == 1
    if vec_in:
        B = xp.reshape(B, (-1, 1))
    X = xp.zeros_like(B)
    R = B
    bnorm = xp.sqrt(xp.sum(B * B, axis=0))
    bnorm = xp.where(bnorm == 0, xp.ones_like(bnorm), bnorm)
    Z = precond(R) if precond is not None else R
    Pd = Z
    rz = xp.sum(R * Z, axis=0)
    it = 0
    res = float(xp.max(xp.sqrt(xp.sum(R * R, axis=0)) / bnorm))
    while res > tol and it < maxiter:
        Q = op(Pd)
        pq = xp.sum(Pd * Q, axis=0)
        _pcg_check_curvature(pq, Pd, Q, it, xp)  # SingularMatrixError if indefinite
        alpha = xp.where(pq != 0, rz / xp.where(pq != 0, pq, xp.ones_like(pq)), xp.zeros_like(pq))
        X = X + alpha * Pd
        R = R - alpha * Q
        Z = precond(R) if precond is not None else R
        rz_new = xp.sum(R * Z, axis=0)
        beta = xp.where(rz != 0, rz_new / xp.where(rz != 0, rz, xp.ones_like(rz)), xp.zeros_like(rz))
        Pd = Z + beta * Pd
        rz = rz_new
        it += 1
        res = float(xp.max(xp.sqrt(xp.sum(R * R, axis=0)) / bnorm))
    if not math.isfinite(res):  # a NaN residual is not convergence
        warnings.warn(
            f"preconditioned CG produced a non-finite residual ({res}) after {it} "
            "iteration(s): the system is not positive definite or overflowed; the result "
            "is not a solution (raise the damping)", ConvergenceWarning, stacklevel=3)
    elif res > tol:
        warnings.warn(
            f"preconditioned CG stopped at its cap of {maxiter} iterations with relative "
            f"residual {res:.2e} > tol {tol:.1e}; the result is approximate",
            ConvergenceWarning,
            stacklevel=3,
        )
    info = {"iterations": it, "residual": res}
    return (X[:, 0] if vec_in else X), info


def _pcg_check_curvature(pq, Pd, Q, it, xp):
    """Negative curvature ``pᵀ A p < 0`` (beyond round-off, ``1e-8 ‖p‖ ‖Ap‖``) proves
    ``A`` is not positive definite: refused like the one-term exact path does."""
    scale = xp.sqrt(xp.sum(Pd * Pd, axis=0) * xp.sum(Q * Q, axis=0))
    if bool(xp.any(pq < -1e-8 * scale)):
        raise SingularMatrixError(
            f"conjugate gradients met negative curvature (pᵀAp < 0) at iteration {it}: the "
            "damped system is not positive definite (an eigenvalue of the Kronecker sum is "
            "below −λ); raise the damping, or use rule='factor'")


def kron_sum_solve(terms, X, damping, rule: str = "factor", **kwargs):
    """One-shot ``apply`` of :func:`kron_sum_inverse` to ``X``."""
    return kron_sum_inverse(terms, damping, rule, **kwargs)(X)


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


# =====================================================================================
# Matrix-free products with R(F_i) for a factor-batch layer (R3)
# =====================================================================================


def _check_layer(a, g):
    """Validate one layer of a factor batch; return ``(xp, m, K, d_a, d_g)``."""
    xp = array_namespace(a, g)
    if a.ndim != 2:
        raise ShapeError(f"a must have shape (m, d_a), got {tuple(a.shape)}")
    if g.ndim != 3:
        raise ShapeError(
            f"g must have shape (m, K, d_g), got {tuple(g.shape)}; for one vector per "
            "sample use g[:, None, :]"
        )
    if a.shape[0] != g.shape[0]:
        raise ShapeError(
            f"a has {a.shape[0]} samples but g has {g.shape[0]}; they must hold the same "
            "samples"
        )
    if a.shape[0] == 0 or g.shape[1] == 0:
        raise ShapeError("a factor-batch layer needs at least one sample and one vector")
    return xp, int(a.shape[0]), int(g.shape[1]), int(a.shape[1]), int(g.shape[2])


def rearranged_matvec(a, g, V):
    """``R(F_i) vec(V)`` as a ``d_a × d_a`` matrix (PAPERS.md R3), never forming ``F_i``.

    ``F_i = (1/m) Σ_n (ā_n ā_nᵀ) ⊗ G_n`` with ``G_n = Σ_k g_nk g_nkᵀ``; then
    ``R(F_i) vec(V) = vec((1/m) Σ_n w_n ā_n ā_nᵀ)`` with ``w_n = Σ_k g_nkᵀ V g_nk``:
    two GEMMs, ``O(m (K d_g² + d_a²))``.

    Parameters
    ----------
    a : array (m, d_a)
    g : array (m, K, d_g)
    V : array (d_g, d_g), or a stack (c, d_g, d_g)

    Returns
    -------
    array (d_a, d_a), or (c, d_a, d_a) for a stack
    """
    xp, m, K, d_a, d_g = _check_layer(a, g)
    if V.shape[-2:] != (d_g, d_g) or V.ndim not in (2, 3):
        raise ShapeError(f"V must have shape ({d_g}, {d_g}) or (c, {d_g}, {d_g}), got "
                         f"{tuple(V.shape)}")
    gf = xp.reshape(g, (m * K, d_g))
    if V.ndim == 2:
        w = xp.sum(xp.reshape(xp.sum((gf @ V) * gf, axis=1), (m, K)), axis=1)
        return (xp.matrix_transpose(a) * (w / m)) @ a
    Vs = [V[c, ...] for c in range(V.shape[0])]
    return xp.stack([rearranged_matvec(a, g, Vc) for Vc in Vs])


def rearranged_rmatvec(a, g, U):
    """``R(F_i)ᵀ vec(U)`` as a ``d_g × d_g`` matrix (PAPERS.md R3):
    ``vec((1/m) Σ_n (ā_nᵀ U ā_n) G_n)``, ``O(m (d_a² + K d_g²))``.

    ``U`` is ``(d_a, d_a)`` or a stack ``(c, d_a, d_a)``.
    """
    xp, m, K, d_a, d_g = _check_layer(a, g)
    if U.shape[-2:] != (d_a, d_a) or U.ndim not in (2, 3):
        raise ShapeError(f"U must have shape ({d_a}, {d_a}) or (c, {d_a}, {d_a}), got "
                         f"{tuple(U.shape)}")
    if U.ndim == 3:
        return xp.stack([rearranged_rmatvec(a, g, U[c, ...]) for c in range(U.shape[0])])
    s = xp.sum((a @ U) * a, axis=1) / m  # (m,)
    gs = g * s[:, None, None]
    return xp.matrix_transpose(xp.reshape(gs, (m * K, d_g))) @ xp.reshape(g, (m * K, d_g))


class RearrangedFisher:
    """``R(F_i)`` of one factor-batch layer as a product pair (PAPERS.md R3).

    ``shape = (d_a², d_g²)``; ``matvec(x)`` (``x = vec(V)``, length ``d_g²``) and
    ``rmatvec(y)`` (``y = vec(U)``, length ``d_a²``) cost ``O(m (d_a² + K d_g²))`` and
    never form ``F_i`` or ``R(F_i)``; :meth:`to_dense` forms ``R(F_i) = (1/m) Σ_n
    vec(ā_n ā_nᵀ) vec(G_n)ᵀ`` for tests (memory-guarded).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> rng = np.random.default_rng(0)
    >>> a, g = rng.normal(size=(6, 3)), rng.normal(size=(6, 2, 2))
    >>> R = RearrangedFisher(a, g)
    >>> F = fl.FisherOperator(fl.FactorBatch([a], [g])).to_dense()
    >>> x = rng.normal(size=4)
    >>> bool(np.allclose(R.matvec(x), rearrange(F, 3, 2) @ x))
    True
    """

    def __init__(self, a, g):
        self.xp, self.m, self.K, self.d_a, self.d_g = _check_layer(a, g)
        self.a, self.g = a, g
        self.dtype = a.dtype
        self.shape = (self.d_a * self.d_a, self.d_g * self.d_g)

    def matvec(self, x):
        if x.shape != (self.shape[1],):
            raise ShapeError(f"matvec needs a vector of length {self.shape[1]}, got "
                             f"shape {tuple(x.shape)}")
        V = unvec(x, self.d_g, self.d_g, self.xp)
        return vec(rearranged_matvec(self.a, self.g, V), self.xp)

    def rmatvec(self, y):
        if y.shape != (self.shape[0],):
            raise ShapeError(f"rmatvec needs a vector of length {self.shape[0]}, got "
                             f"shape {tuple(y.shape)}")
        U = unvec(y, self.d_a, self.d_a, self.xp)
        return vec(rearranged_rmatvec(self.a, self.g, U), self.xp)

    def to_dense(self, max_bytes: int | None = None):
        """Dense ``R(F_i)`` (``d_a² × d_g²``), from the per-sample outer products."""
        check_dense_memory(self.shape, self.dtype, max_bytes, "rearranged block R(F_i)",
                           "RearrangedFisher.matvec/rmatvec")
        xp, a, g, m = self.xp, self.a, self.g, self.m
        Ua = vec(a[:, :, None] * a[:, None, :], xp)  # (m, d_a²)
        Gn = xp.matrix_transpose(g) @ g  # (m, d_g, d_g)
        return xp.matrix_transpose(Ua) @ vec(Gn, xp) / m


# =====================================================================================
# Iterative SVD on any product pair: power SVD, Golub–Kahan (Lanczos), deflation
# =====================================================================================


@dataclass
class ConvergenceReport:
    """What an SVD solver did, for one block (or one part of it).

    Attributes
    ----------
    method : str
        ``"power"``, ``"lanczos"``, ``"gram"`` (exact Gram eigenproblem) ...
    converged : bool
        The tolerance was met (exact methods: always ``True``).
    residual : float
        Relative residual reached: ``‖R v − σ u‖/σ`` (power SVD) or
        ``max_r ‖(R v_r − σ_r u_r, Rᵀu_r − σ_r v_r)‖/σ₁`` (Lanczos); 0 for exact methods
        up to round-off.
    tol : float
    iterations : int
        Power iterations, or Golub–Kahan steps summed over restarts.
    restarts : int
    n_products : int
        Products with ``R`` or ``Rᵀ``.
    breakdown : bool
        A Golub–Kahan breakdown (an exact invariant subspace) or a zero operator
        ended the iteration; requested terms beyond the rank were set to zero.
    rank : int or None
        Number of non-zero singular triplets found (``< requested`` when clipped).
    sigma : tuple of float
        The singular values found.
    seconds : float
        Wall time.
    parts : list of ConvergenceReport
        Sub-reports (e.g. the two power SVDs of Deflation).
    """

    method: str
    converged: bool = True
    residual: float = 0.0
    tol: float = 0.0
    iterations: int = 0
    restarts: int = 0
    n_products: int = 0
    breakdown: bool = False
    rank: int | None = None
    sigma: tuple = ()
    seconds: float = 0.0
    parts: list = field(default_factory=list)

    @classmethod
    def combine(cls, method: str, parts: list, sigma=(), rank=None) -> ConvergenceReport:
        """One report for several solver runs (worst residual, summed counts)."""
        return cls(
            method=method,
            converged=all(p.converged for p in parts),
            residual=max((p.residual for p in parts), default=0.0),
            tol=max((p.tol for p in parts), default=0.0),
            iterations=sum(p.iterations for p in parts),
            restarts=sum(p.restarts for p in parts),
            n_products=sum(p.n_products for p in parts),
            breakdown=any(p.breakdown for p in parts),
            rank=rank,
            sigma=tuple(sigma),
            seconds=sum(p.seconds for p in parts),
            parts=list(parts),
        )


class _DenseProductPair:
    def __init__(self, M):
        if M.ndim != 2:
            raise ShapeError(f"a product pair from an array needs a matrix, got shape "
                             f"{tuple(M.shape)}")
        self.M, self.xp = M, array_namespace(M)
        self.shape, self.dtype = (int(M.shape[0]), int(M.shape[1])), M.dtype

    def matvec(self, x):
        return self.M @ x

    def rmatvec(self, y):
        return y @ self.M


def as_product_pair(op):
    """``op`` as a product pair: anything with ``shape``, ``matvec`` and ``rmatvec``
    (a :class:`RearrangedFisher`, a SciPy ``LinearOperator``, ...) or a dense matrix."""
    if hasattr(op, "matvec") and hasattr(op, "rmatvec") and hasattr(op, "shape"):
        return op
    if hasattr(op, "ndim") and hasattr(op, "shape"):
        return _DenseProductPair(op)
    raise TypeError(
        f"expected a product pair (shape, matvec, rmatvec) or a matrix, got "
        f"{type(op).__name__}"
    )


class DeflatedProductPair:
    """``R − Σ_i s_i x_i y_iᵀ`` as a product pair, for known rank-one terms
    (PAPERS.md methods table: Deflation deflates ``σ₁u₁v₁ᵀ``; KFAC-corrected deflates
    the KFAC term ``vec(A_K) vec(G_K)ᵀ``). The vectors need not be unit."""

    def __init__(self, op, terms: Sequence[tuple]):
        self.op = as_product_pair(op)
        self.terms = [(float(s), x, y) for s, x, y in terms]
        for _, x, y in self.terms:
            if x.shape != (self.op.shape[0],) or y.shape != (self.op.shape[1],):
                raise ShapeError(
                    f"a deflation term needs vectors of lengths {self.op.shape}, got "
                    f"{tuple(x.shape)} and {tuple(y.shape)}"
                )
        self.shape = self.op.shape
        self.dtype = getattr(self.op, "dtype", None)
        self.xp = getattr(self.op, "xp", None)

    def matvec(self, v):
        out = self.op.matvec(v)
        xp = array_namespace(out)
        for s, x, y in self.terms:
            out = out - (s * float(xp.sum(y * v))) * x
        return out

    def rmatvec(self, u):
        out = self.op.rmatvec(u)
        xp = array_namespace(out)
        for s, x, y in self.terms:
            out = out - (s * float(xp.sum(x * u))) * y
        return out


def deflate(op, terms: Sequence[tuple]) -> DeflatedProductPair:
    """``op − Σ s_i x_i y_iᵀ`` matrix-free; ``terms`` is a list of ``(s, x, y)``."""
    return DeflatedProductPair(op, terms)


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
    SVD", PAPERS.md methods table).

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
    _check_solver_params(tol=tol, maxiter=maxiter)
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


def _check_solver_params(*, tol=None, maxiter=None, steps=None, max_restarts=None):
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0
                                and math.isfinite(tol)):
        raise ShapeError(f"tol must be a positive finite number, got {tol!r}")
    for name, val, lo in (("maxiter", maxiter, 1), ("steps", steps, 1),
                          ("max_restarts", max_restarts, 0)):
        if val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ShapeError(f"{name} must be an integer >= {lo}, got {val!r}")


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
        dev = device_of(v0)
        self.U = xp.zeros((self.n_rows, self.cap + 1), dtype=dtype, device=dev)
        self.V = xp.zeros((self.n_cols, self.cap + 1), dtype=dtype, device=dev)
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
    _check_solver_params(steps=steps)
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
                warn: bool = True, name: str = "Lanczos SVD"):
    """Leading ``k`` singular triplets of a product pair by Golub–Kahan (Lanczos)
    bidiagonalisation (PAPERS.md methods table, "Lanczos").

    Two modes:

    - ``steps`` an integer (the papers: ``steps=2``, ``k=2``): bidiagonalise for
      ``steps`` steps from ``v0``, take the SVD of the small bidiagonal, keep ``k``
      triplets; while the residual is above ``tol`` restart from ``v₁ + … + v_k`` (at
      most ``max_restarts`` restarts), then warn with the residual reached.
    - ``steps=None``: grow one Krylov space until the ``k`` leading Ritz triplets reach
      ``tol`` or the space is exhausted (exact); a breakdown before that continues from
      a fresh vector orthogonal to the explored space.

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
    _check_solver_params(tol=tol, max_restarts=max_restarts, steps=steps)
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
    restarts, iters = 0, 0
    while True:
        gk = _GK(op, v, dim if steps is None else steps, xp)
        if steps is None:
            next_check = min(max(2 * k, 8), dim)
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
                # the leading triplets may lie outside it, so explore on
                if not gk.restart(_random_vector(n_cols, xp, dtype, rng, like=v)):
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


# =====================================================================================
# The exact route: R(F_i) = (1/m) Uᵀ V and an m × m problem from Gram matrices
# =====================================================================================


def weighted_gram(X, w):
    """``Xᵀ diag(w) X`` for rows ``X`` of shape ``(m, d)``, or ``Σ_n w_n X_nᵀ X_n`` for
    ``X`` of shape ``(m, K, d)`` (``K`` rows per sample), with signed weights.

    Computed as two symmetric rank-k updates (``YᵀY``, which BLAS runs as SYRK) on the
    rows of positive and of negative weight, so a signed combination costs no more than
    one unweighted Gram matrix, and the result is exactly symmetric.
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
    syrk = _blas_syrk(Y)
    if syrk is not None:
        # NumPy: both updates accumulate into one triangle (BLAS syrk, beta = 1), then one
        # pass mirrors it — measured 1.5x faster at d = 1000 than two full products and a
        # subtraction, and as fast as one unweighted Gram matrix
        from . import _kernels

        C = syrk(1.0, xp.matrix_transpose(Yp), trans=0, lower=0)  # upper, F order
        C = syrk(-1.0, xp.matrix_transpose(Yn), beta=1.0, c=C, trans=0, lower=0,
                 overwrite_c=1)
        M = xp.matrix_transpose(C)  # C order; the lower triangle holds the result
        _kernels.symmetrize_lower(M)
        return M
    return xp.matrix_transpose(Yp) @ Yp - xp.matrix_transpose(Yn) @ Yn


def gram_of_rows(Y, alpha: float = 1.0):
    """``α YᵀY`` for ``Y`` of shape ``(n, d)``, exactly symmetric.

    NumPy float arrays: SciPy's BLAS ``syrk`` on the F-ordered ``Yᵀ`` (no copy, one
    triangle, ``α`` folded in) and one pass mirroring the triangle — measured 1.3–2x
    faster than ``Y.T @ Y`` at ``n = 512``, ``d`` = 250–1000 on this project's machine
    (``benchmarks``); other namespaces: ``Y.T @ Y``.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.arange(6.0).reshape(3, 2)
    >>> gram_of_rows(Y, 0.5).tolist()
    [[10.0, 13.0], [13.0, 17.5]]
    """
    syrk = _blas_syrk(Y)
    if syrk is None:
        xp = array_namespace(Y)
        P = xp.matrix_transpose(Y) @ Y
        return P if alpha == 1.0 else alpha * P
    from . import _kernels

    M = syrk(float(alpha), Y.T, trans=0, lower=0).T  # C order; lower triangle = α YᵀY
    _kernels.symmetrize_lower(M)
    return M


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


def _gk_loop(apply_u, apply_v, c0, CX, CY, y, My, k, tol, rank_rtol, steps, rank_bound,
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


def _squared_row_gram(X):
    """``(X Xᵀ)∘(X Xᵀ)`` for rows ``X`` of shape ``(m, d)``: one symmetric rank-k update
    (SciPy's BLAS ``syrk`` on the F-ordered ``Xᵀ`` for NumPy — no copy, one triangle,
    measured 1.1–1.5x faster than ``X @ X.T`` at m = 512), the square taken in place
    (a fresh ``m × m`` temporary costs page faults comparable to the product), one
    pass mirroring the triangle."""
    xp = array_namespace(X)
    syrk = _blas_syrk(X)
    if syrk is not None:
        from . import _kernels

        C = syrk(1.0, xp.matrix_transpose(X), trans=1, lower=0)  # X Xᵀ, upper, F order
        M = xp.matrix_transpose(C)  # C order, lower triangle
        M *= M
        _kernels.symmetrize_lower(M)
        return M
    G = X @ xp.matrix_transpose(X)
    return G * G


def _blas_syrk(Y):
    """SciPy's BLAS ``?syrk`` for a C-contiguous float32/float64 NumPy array, else
    ``None``."""
    if not isinstance(Y, np.ndarray) or not Y.flags.c_contiguous:
        return None
    from scipy.linalg import blas

    return {np.dtype(np.float64): blas.dsyrk, np.dtype(np.float32): blas.ssyrk}.get(Y.dtype)


class _GramSide:
    """One side of ``R(F_i) = (1/m) Uᵀ V``: the Gram matrix ``M = U Uᵀ`` (``m × m``),
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
            from .backend import scipy_linalg

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
    """The ``m × m`` core ``C = c0·I + X Yᵀ`` in ``R = Uᵀ C V``: ``I/m`` for ``R(F_i)``,
    ``I/m − 11ᵀ/m²`` for ``R(F_i) − vec(A_K)vec(G_K)ᵀ``, ``I/m − w dᵀ/σ`` after deflating
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
    """The exact leading singular triplets of ``R(F_i)`` without iterating over
    ``d_a²``- or ``d_g²``-long vectors (PAPERS.md R3; the route of issue 3).

    ``R(F_i) = (1/m) Uᵀ V`` with rows ``U_n = vec(ā_n ā_nᵀ)`` and ``V_n = vec(G_n)``.
    Its non-zero singular triplets are those of an ``m × m`` problem built from the Gram
    matrices ``M_U = U Uᵀ = (ĀĀᵀ)∘(ĀĀᵀ)`` and ``M_V = V Vᵀ = [⟨G_n, G_n'⟩] =
    [Σ_{k,k'} (g_nkᵀ g_n'k')²]``: with ``M_V = L Lᵀ`` (Cholesky, or thresholded eigh
    when ``M_V`` is numerically singular) and ``Z = C L`` (``C = I/m``),
    ``B = Zᵀ M_U Z`` has the eigenvalues ``σ_r²`` and eigenvectors ``q_r``; then

        σ_r mat(u_r) = Āᵀ diag(w_r) Ā,     w_r = Z q_r
        σ_r mat(v_r) = Σ_n d_rn G_n = gᵀ diag(d_r) g,   d_r = Cᵀ M_U w_r / σ_r

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
        ``R(F_i)``); default ``10·√(n·eps)``, ``n`` the size of the small problem (the
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
    >>> s_dense = np.linalg.svd(RearrangedFisher(a, g).to_dense(), compute_uv=False)
    >>> bool(np.allclose(s, s_dense[:2]))
    True
    """

    #: byte budget of one chunk of the g-Gram matrix (m·K)² when K > 1
    chunk_bytes = 64 * 1024**2

    def __init__(self, a, g, *, rank_rtol: float | None = None):
        xp, m, K, d_a, d_g = _check_layer(a, g)
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
        """``C = I/m − 11ᵀ/m²``: ``Uᵀ C V = R(F_i) − vec(A_K) vec(G_K)ᵀ`` with the KFAC
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
            if (B_side.kind == "cholesky" and A_side.M is not None
                    and is_numpy_namespace(xp) and L.dtype == xp.float64):
                # triangular L: half the flops of the two GEMMs (BLAS TRMM)
                from scipy.linalg.blas import dtrmm

                T0 = dtrmm(1.0 / self.m, L, A_side.M, side=1, lower=1)
                B0 = dtrmm(1.0 / self.m, L, T0, side=0, lower=1, trans_a=1)
            else:
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
        """The ``k`` leading singular triplets of ``Uᵀ C V`` (default ``R(F_i)``).

        Returns ``(sigma, w, d)``: ``sigma`` a float64 NumPy array ``(k,)``
        (descending), and weights ``w, d`` of shape ``(m, k)`` with
        ``σ_r mat(u_r) = Āᵀ diag(w_r) Ā`` and ``σ_r mat(v_r) = Σ_n d_rn G_n``. Singular
        values at or below ``rank_rtol·σ₁(R(F_i))`` (and their weights) are returned as
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
        applied at ``O(m·rank)`` per step (Golub–Kahan) or updates the cached dense
        problem at ``O(m²)`` (dense).
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
        Xt, Yt, alphas, betas, flags, res = _gk_loop(
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
        """``σ₁(R(F_i)) = ‖R(F_i)‖₂``, the reference of the rank threshold."""
        if getattr(self, "_sigma1", None) is None:
            self.top(1)
        return self._sigma1

    def numerical_rank(self, upto: int) -> int:
        """The numerical rank of ``R(F_i)`` if it is below ``upto``, else ``upto``."""
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
        """``Uᵀ C V`` (default ``R(F_i)``) as a small dense product pair in isometric
        coordinates, for running the papers' iterative solvers cheaply (see
        :class:`GramCoordinates`)."""
        return GramCoordinates(self, core)

    def g_inner(self, G):
        """``[⟨G_n, G⟩_F]_n = [Σ_k g_nkᵀ G g_nk]_n`` (float64, ``O(m K d_g²)``)."""
        xp, m, K, d_g = self.xp, self.m, self.K, self.d_g
        gf = xp.reshape(self.g, (m * K, d_g))
        G = asarray_on(G, gf, dtype=gf.dtype)
        q = xp.sum(xp.reshape(xp.sum((gf @ G) * gf, axis=1), (m, K)), axis=1)
        return xp.astype(q, xp.float64)

    # -- back to Kronecker factors -----------------------------------------------------
    def term(self, sigma: float, w, d):
        """The Kronecker term ``σ mat(u) ⊗ mat(v)`` as balanced factors
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
    """``R = Uᵀ C V`` (``R(F_i)`` for ``C = I/m``) in isometric coordinates: the dense
    ``r_U × r_V`` matrix ``R̃ = L_Uᵀ C L_V`` (``U Uᵀ = L_U L_Uᵀ``, ``V Vᵀ = L_V L_Vᵀ``),
    a product pair on which the papers' iterative solvers run exactly as on the
    matrix-free ``R`` — the map between the two is an isometry on the row and column
    spaces of ``R`` — at ``O(m²)`` per product instead of ``O(m (d_a² + K d_g²))``.

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
