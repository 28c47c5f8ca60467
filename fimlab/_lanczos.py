"""Symmetric Lanczos with full reorthogonalisation, in any inner product (private).

Used by the two-level coarse spaces (the dominant eigenvector of a fine block's damped
inverse, PAPERS.md coarse-space table) and by the preconditioner-quality metrics (the
spectrum of ``F̃_λ⁻¹F_λ``, PAPERS.md E4), which is self-adjoint in the ``F_λ`` inner
product. Vectors live in the caller's array namespace; only the small tridiagonal
matrix ``T_m`` is diagonalised on the host.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._errors import ConvergenceWarning
from .backend import device_of, from_host

__all__ = ["LanczosResult", "lanczos"]


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
    which : {"largest", "smallest", "both"}
        Which extreme Ritz values must converge before stopping.
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
    Q, MQ = [v], [Mv]
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
        w = op(Q[j], MQ[j])
        # full reorthogonalisation, classical Gram-Schmidt twice: ⟨q_i, w⟩_M = (M q_i)ᵀ w
        Qm = xp.stack(Q, axis=1)
        MQm = xp.stack(MQ, axis=1)
        c = xp.matrix_transpose(MQm) @ w
        alpha = float(c[j])
        w = w - Qm @ c
        c2 = xp.matrix_transpose(MQm) @ w
        w = w - Qm @ c2
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
            idx = {"largest": [-1], "smallest": [0], "both": [0, -1]}[which]
            converged = all(res[i] <= tol * ref for i in idx)
            check_every = 1 if m < 20 else 5
            if breakdown:
                exhausted = True
                converged = True
                break
            if converged:
                break
        Q.append(w / beta)
        MQ.append(Mw / beta)
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
        Qm = xp.stack(Q[:m], axis=1)
        vectors = Qm @ from_host(np.ascontiguousarray(S), xp, dtype=dtype,
                                 device=device_of(Qm))
    return LanczosResult(theta, res, vectors, m, converged, exhausted)
