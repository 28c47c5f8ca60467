"""The vec/Kronecker algebra and damped Kronecker inverses."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from .._errors import ConvergenceWarning, DampingError, SingularMatrixError
from .._validation import check_choice
from ..backend import (
    array_namespace,
    device_of,
    vec,
)

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
                from .. import _kernels

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
    if res > tol:
        warnings.warn(
            f"preconditioned CG stopped at its cap of {maxiter} iterations with relative "
            f"residual {res:.2e} > tol {tol:.1e}; the result is approximate",
            ConvergenceWarning,
            stacklevel=3,
        )
    info = {"iterations": it, "residual": res}
    return (X[:, 0] if vec_in else X), info


def kron_sum_solve(terms, X, damping, rule: str = "factor", **kwargs):
    """One-shot ``apply`` of :func:`kron_sum_inverse` to ``X``."""
    return kron_sum_inverse(terms, damping, rule, **kwargs)(X)


