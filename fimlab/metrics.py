"""Error metrics between the Fisher and an approximation (PAPERS.md E1-E5).

- (E1) :func:`relative_frobenius_error` — ``‖F − F̃‖_F / ‖F‖_F``, per block or for the
  whole network. For a Fisher operator (or block) against Kronecker-structured
  approximations it is computed *exactly and matrix-free* from Gram identities::

      ‖F_l‖²_F      = (1/N²) Σ_{n,n'} (ā_nᵀā_n')² Σ_{k,k'} (g_nkᵀ g_n'k')²
      ⟨F_l, A⊗G⟩_F  = (1/N) Σ_n (ā_nᵀ A ā_n) (Σ_k g_nkᵀ G g_nk)
      ‖A⊗G‖²_F      = ‖A‖²_F ‖G‖²_F

  so no block is ever formed; any other pair of operators goes through their dense forms
  (memory-guarded). The Gram route computes ``‖F‖² − 2⟨F, F̃⟩ + ‖F̃‖²``, so its *absolute*
  accuracy is about ``√eps`` (1e-8 in float64): errors below that read as ~1e-8, not 0.
- (E2) :func:`singular_value_error` — ``‖σ(F) − σ(F̃)‖₂ / ‖σ(F)‖₂`` with sorted singular
  values (dense; symmetric matrices, so ``σ = |eigenvalues|``).
"""

from __future__ import annotations

import math

from ._errors import ShapeError
from ._validation import check_choice
from .backend import array_namespace
from .curvature import FisherBlock, FisherOperator
from .operators import BlockDiagonalOperator, CurvatureOperator, KroneckerOperator

__all__ = ["relative_frobenius_error", "singular_value_error", "frobenius_terms"]

_METHODS = ("auto", "gram", "dense")


def _as_block(op, block: int | None):
    """The operator restricted to diagonal block ``block`` (or ``op`` if ``None``)."""
    if block is None:
        return op
    if isinstance(op, FisherOperator):
        return op.diagonal_block(block)
    if isinstance(op, BlockDiagonalOperator):
        if not 0 <= block < op.n_blocks:
            raise IndexError(f"block {block} out of range for {op.n_blocks} blocks")
        return op.blocks[block]
    if isinstance(op, (FisherBlock, KroneckerOperator)):
        raise ShapeError(
            f"block={block} was given, but {type(op).__name__} is already a single block"
        )
    return _DenseSlice(op, block)


class _DenseSlice:
    """Marker for 'take the dense diagonal block of a generic operator'."""

    def __init__(self, op, block):
        self.op, self.block = op, block


def _gram_able(F, Ft) -> bool:
    if isinstance(F, FisherBlock) and isinstance(Ft, KroneckerOperator):
        return True
    if isinstance(F, FisherOperator) and isinstance(Ft, BlockDiagonalOperator):
        return all(isinstance(b, KroneckerOperator) for b in Ft.blocks) and (
            Ft.n_blocks == F.n_blocks
        )
    return False


def frobenius_terms(F, Ft) -> tuple[float, float, float]:
    """``(‖F‖², ⟨F, F̃⟩, ‖F̃‖²)`` by Gram identities (Fisher vs Kronecker-structured)."""
    if isinstance(F, FisherBlock):
        return F.frobenius_norm_sq(), F.inner_kron(Ft.terms), Ft.frobenius_norm_sq()
    nF = F.frobenius_norm_sq()
    inner = sum(F.diagonal_block(l).inner_kron(b.terms) for l, b in enumerate(Ft.blocks))
    nFt = sum(b.frobenius_norm_sq() for b in Ft.blocks)
    return nF, inner, nFt


def _dense(op, block, max_bytes):
    if isinstance(op, _DenseSlice):
        D = op.op.to_dense(max_bytes=max_bytes)
        offs = getattr(op.op, "offsets", None)
        if offs is None:
            raise ShapeError("block= needs an operator with block structure (offsets)")
        s = slice(offs[op.block], offs[op.block + 1])
        return D[s, s]
    if isinstance(op, CurvatureOperator):
        return op.to_dense(max_bytes=max_bytes)
    xp = array_namespace(op)
    return xp.asarray(op)


def relative_frobenius_error(F, Ft, block: int | None = None, method: str = "auto",
                             max_bytes: int | None = None) -> float:
    """(E1) relative Frobenius error ``‖F − F̃‖_F / ‖F‖_F``.

    Parameters
    ----------
    F : FisherOperator, FisherBlock, CurvatureOperator or dense array
        The reference (usually the Fisher of the curvature batch).
    Ft : CurvatureOperator or dense array
        The approximation (KFAC, KPSVD, ...), built from the same factor batch.
    block : int, optional
        Compare diagonal block ``block`` only; ``None`` compares whole matrices (for a
        block-diagonal ``Ft`` this counts the dropped off-diagonal blocks of ``F``).
    method : {"auto", "gram", "dense"}
        ``"auto"`` takes the exact matrix-free Gram route when ``F`` is a Fisher operator
        (or block) and ``Ft`` is Kronecker-structured, dense otherwise.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 3)))
    >>> F, K = fl.FisherOperator(b), fl.KFAC(b)
    >>> e_gram = fl.relative_frobenius_error(F, K, block=0)
    >>> e_dense = fl.relative_frobenius_error(F, K, block=0, method="dense")
    >>> bool(abs(e_gram - e_dense) < 1e-10)
    True
    """
    check_choice(method, _METHODS, "metric method")
    Fb, Ftb = _as_block(F, block), _as_block(Ft, block)
    if isinstance(Fb, CurvatureOperator) and isinstance(Ftb, CurvatureOperator):
        if Fb.shape != Ftb.shape:
            raise ShapeError(f"cannot compare operators of shapes {Fb.shape} and {Ftb.shape}")
    if method != "dense" and _gram_able(Fb, Ftb):
        nF, inner, nFt = frobenius_terms(Fb, Ftb)
        if nF <= 0:
            raise ShapeError("the reference matrix is zero: the relative error is undefined")
        return math.sqrt(max(nF - 2.0 * inner + nFt, 0.0) / nF)
    if method == "gram":
        raise ShapeError(
            f"the Gram route needs a Fisher operator/block and a Kronecker-structured "
            f"approximation; got {type(Fb).__name__} and {type(Ftb).__name__}"
        )
    D1, D2 = _dense(Fb, block, max_bytes), _dense(Ftb, block, max_bytes)
    if D1.shape != D2.shape:
        raise ShapeError(f"cannot compare matrices of shapes {D1.shape} and {D2.shape}")
    xp = array_namespace(D1, D2)
    nF = float(xp.linalg.vector_norm(D1))
    if nF <= 0:
        raise ShapeError("the reference matrix is zero: the relative error is undefined")
    return float(xp.linalg.vector_norm(D1 - D2)) / nF


def singular_value_error(F, Ft, block: int | None = None,
                         max_bytes: int | None = None) -> float:
    """(E2) ``‖σ(F) − σ(F̃)‖₂ / ‖σ(F)‖₂`` with singular values sorted in decreasing order.

    Dense (the spectrum of each matrix is needed); memory-guarded.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> M = np.diag([3.0, 1.0]); N = np.diag([1.0, 3.0])
    >>> fl.singular_value_error(M, N)   # same spectrum
    0.0
    """
    Fb, Ftb = _as_block(F, block), _as_block(Ft, block)
    D1, D2 = _dense(Fb, block, max_bytes), _dense(Ftb, block, max_bytes)
    if D1.shape != D2.shape:
        raise ShapeError(f"cannot compare matrices of shapes {D1.shape} and {D2.shape}")
    xp = array_namespace(D1, D2)
    s1 = xp.flip(xp.sort(xp.abs(xp.linalg.eigvalsh(0.5 * (D1 + xp.matrix_transpose(D1))))))
    s2 = xp.flip(xp.sort(xp.abs(xp.linalg.eigvalsh(0.5 * (D2 + xp.matrix_transpose(D2))))))
    n1 = float(xp.linalg.vector_norm(s1))
    if n1 <= 0:
        raise ShapeError("the reference matrix is zero: the relative error is undefined")
    return float(xp.linalg.vector_norm(s1 - s2)) / n1


# -- (E3) relative spectral error, matrix-free ------------------------------------------------
def _lanczos_extreme(op, n: int, dtype, xp, *, tol: float, maxiter: int, seed: int,
                     max_bytes):
    """Largest ``|λ|`` of the symmetric operator ``op`` (a function ``X -> op @ X`` on
    ``(n, 1)`` arrays) by Lanczos with full reorthogonalisation.

    Stops when the Ritz value of largest magnitude has residual ``|β_k s_k| ≤ tol·|θ|``
    (its error is then below ``tol·|θ|``, and usually far below: ``r²/gap``), when the
    Krylov space is exhausted (an invariant subspace: exact), or at ``maxiter`` steps
    (a :class:`~fimlab.ConvergenceWarning` with the residual reached). Returns
    ``(|θ|, info)``.
    """
    import warnings

    import numpy as np

    from ._errors import ConvergenceWarning
    from ._validation import check_dense_memory
    from .backend import from_host

    m = max(1, min(int(maxiter), n))
    check_dense_memory((m + 1, n), dtype, max_bytes, "Lanczos basis",
                       "spectral_error(..., maxiter=smaller)")
    q = np.random.default_rng(seed).standard_normal(n)
    q = xp.astype(from_host(q / np.linalg.norm(q), xp), dtype)
    Qb = xp.zeros((m + 1, n), dtype=dtype)  # the basis, one vector per row
    Qb[0, :] = q
    alphas, betas = [], []
    theta, res = 0.0, float("inf")
    for k in range(m):
        qk = Qb[k, :]
        w = op(xp.reshape(qk, (n, 1)))[:, 0]
        a = float(xp.sum(w * qk))
        alphas.append(a)
        w = w - a * qk - (betas[-1] * Qb[k - 1, :] if betas else 0.0)
        Qk = Qb[: k + 1, :]
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - (Qk @ w) @ Qk
        b = float(xp.linalg.vector_norm(w))
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        ev, S = np.linalg.eigh(T)
        j = int(np.argmax(np.abs(ev)))
        theta = float(abs(ev[j]))
        res = abs(b * S[-1, j])
        if b <= 1e-14 * max(theta, 1e-300) * math.sqrt(n) or res <= tol * max(theta, 1e-300):
            return theta, {"iterations": k + 1, "residual": res, "converged": True}
        betas.append(b)
        Qb[k + 1, :] = w / b
    warnings.warn(
        f"Lanczos did not reach tol={tol:g} in {m} steps (residual {res:.3g} of |θ| = "
        f"{theta:.6g}); raise maxiter for a tighter estimate",
        ConvergenceWarning, stacklevel=3,
    )
    return theta, {"iterations": m, "residual": res, "converged": False}


def _fisher_spectral_norm(Fb, xp):
    """``‖F‖₂`` of a Fisher operator or block from its ``N·K × N·K`` Gram matrix (the
    non-zero eigenvalues of ``UᵀU/N`` are those of ``UUᵀ/N``)."""
    b = Fb.batch.layer(Fb.l) if isinstance(Fb, FisherBlock) else Fb.batch
    ev = xp.linalg.eigvalsh(b.gram())
    return float(xp.max(xp.abs(ev))) / b.n_samples


def spectral_error(F, Ft, block: int | None = None, method: str = "auto", *,
                   tol: float = 1e-8, maxiter: int = 300, seed: int = 0,
                   max_bytes: int | None = None) -> float:
    """(E3) relative spectral error ``‖F − F̃‖₂ / ‖F‖₂`` (PAPERS.md E3).

    Parameters
    ----------
    F : FisherOperator, FisherBlock, CurvatureOperator or dense array
        The reference.
    Ft : CurvatureOperator or dense array
        The approximation, built from the same factor batch.
    block : int, optional
        Compare diagonal block ``block`` only (as in :func:`relative_frobenius_error`).
    method : {"auto", "lanczos", "dense"}
        ``"lanczos"`` (what ``"auto"`` takes for operators): matrix-free, Lanczos with
        full reorthogonalisation on ``F − F̃`` using only products with ``F`` and ``F̃``
        (two GEMMs each for Fisher and Kronecker blocks), and ``‖F‖₂`` from the
        ``N·K × N·K`` Gram matrix of a Fisher operator (Lanczos otherwise).
        ``"dense"``: symmetric eigenvalues of the dense matrices (memory-guarded; the
        reference the tests compare with). Dense arrays always go the dense way.
    tol : float
        Relative residual of the extreme Ritz value at which Lanczos stops.
    maxiter : int
        Lanczos steps at most (the basis holds ``maxiter`` vectors of the block's size:
        memory-guarded by ``max_bytes``).
    seed : int
        Seed of the Lanczos start vector (results are deterministic).

    Returns
    -------
    float

    Notes
    -----
    ``F − F̃`` is symmetric and, in general, indefinite: its 2-norm is its eigenvalue of
    largest magnitude, which Lanczos finds from both ends of the spectrum at once.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 3)))
    >>> F, K = fl.FisherOperator(b), fl.KFAC(b)
    >>> e = fl.metrics.spectral_error(F, K, block=0)
    >>> bool(abs(e - fl.metrics.spectral_error(F, K, block=0, method="dense")) < 1e-8)
    True
    """
    from .operators import SumOperator

    check_choice(method, ("auto", "lanczos", "dense"), "spectral-error method")
    Fb, Ftb = _as_block(F, block), _as_block(Ft, block)
    ops = isinstance(Fb, CurvatureOperator) and isinstance(Ftb, CurvatureOperator)
    if method == "lanczos" and not ops:
        raise ShapeError(
            f"the Lanczos route needs two operators (or a block of block-structured ones); "
            f"got {type(Fb).__name__} and {type(Ftb).__name__}: use method='dense'"
        )
    if ops and Fb.shape != Ftb.shape:
        raise ShapeError(f"cannot compare operators of shapes {Fb.shape} and {Ftb.shape}")
    if ops and method != "dense":
        xp = Fb.xp
        n = Fb.shape[0]
        D = SumOperator(Fb, -1.0 * Ftb)
        kw = dict(tol=tol, maxiter=maxiter, seed=seed, max_bytes=max_bytes)
        dnorm, _ = _lanczos_extreme(D._matmat, n, Fb.dtype, xp, **kw)
        if isinstance(Fb, (FisherOperator, FisherBlock)):
            fnorm = _fisher_spectral_norm(Fb, xp)
        else:
            fnorm, _ = _lanczos_extreme(Fb._matmat, n, Fb.dtype, xp, **kw)
        if fnorm <= 0:
            raise ShapeError("the reference matrix is zero: the relative error is undefined")
        return dnorm / fnorm
    D1, D2 = _dense(Fb, block, max_bytes), _dense(Ftb, block, max_bytes)
    if D1.shape != D2.shape:
        raise ShapeError(f"cannot compare matrices of shapes {D1.shape} and {D2.shape}")
    xp = array_namespace(D1, D2)
    E = D1 - D2
    e = float(xp.max(xp.abs(xp.linalg.eigvalsh(0.5 * (E + xp.matrix_transpose(E))))))
    f = float(xp.max(xp.abs(xp.linalg.eigvalsh(0.5 * (D1 + xp.matrix_transpose(D1))))))
    if f <= 0:
        raise ShapeError("the reference matrix is zero: the relative error is undefined")
    return e / f
