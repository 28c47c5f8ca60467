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
  (K2, K3, K4 for one term; I1 for two; preconditioned CG for any number).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

from ._errors import ConvergenceWarning, DampingError, SingularMatrixError
from ._validation import check_choice
from .backend import array_namespace, device_of, kron, unvec, vec

__all__ = [
    "vec",
    "unvec",
    "kron",
    "kron_matmat",
    "kron_sum_inner",
    "kron_sum_inverse",
    "kron_sum_solve",
    "DAMPING_RULES",
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
    T = xp.reshape(T, (d_a, d_g, k))
    Y = xp.reshape(G @ T, (d_a * d_g, k))  # G acts on the i index, batched over j
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
    """Inverse of a symmetric positive definite matrix, with a clear error if it is not."""
    w, Q = xp.linalg.eigh(_sym(M, xp))
    wmin, wmax = float(xp.min(w)), float(xp.max(w))
    if not (wmin > 0) or wmin <= 1e3 * _eps(M) * max(abs(wmax), 1.0) * M.shape[0]:
        raise SingularMatrixError(
            f"a damped Kronecker factor is not positive definite (smallest eigenvalue "
            f"{wmin:.3e}, largest {wmax:.3e}); increase the damping"
        )
    return (Q / w) @ xp.matrix_transpose(Q)


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
    QaT, QgT = xp.matrix_transpose(Qa), xp.matrix_transpose(Qg)

    def apply(X):
        Y = kron_matmat(QaT, QgT, X)
        Y = Y / (D[:, None] if Y.ndim == 2 else D)
        return kron_matmat(Qa, Qg, Y)

    apply.rule = "exact"
    apply.diagonal = D
    apply.eigvecs = (Qa, Qg)
    return apply


def _rank2_inverse(terms, lam, xp, *, signed: bool):
    """(I1): inverse of ``X = (A₁+λI)⊗(G₁+λI) + A₂⊗G₂`` by simultaneous diagonalisation."""
    (A1, G1), (A2, G2) = terms
    d_a, d_g = A1.shape[0], G1.shape[0]
    Ah = _inv_sqrt_spd(A1 + lam * _eye(d_a, A1, xp), xp)
    Gh = _inv_sqrt_spd(G1 + lam * _eye(d_g, G1, xp), xp)
    s1, E1 = xp.linalg.eigh(_sym(Ah @ A2 @ Ah, xp))
    s2, E2 = xp.linalg.eigh(_sym(Gh @ G2 @ Gh, xp))
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
    K1, K2 = Ah @ E1, Gh @ E2
    K1T, K2T = xp.matrix_transpose(K1), xp.matrix_transpose(K2)

    def apply(X):
        Y = kron_matmat(K1T, K2T, X)
        Y = Y / (den[:, None] if Y.ndim == 2 else den)
        return kron_matmat(K1, K2, Y)

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
