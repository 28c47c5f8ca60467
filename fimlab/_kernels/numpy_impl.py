"""Array-API twins of the Numba kernels (the reference, and the path for CuPy/strict).

Every function here has the signature of its twin in :mod:`fimlab._kernels.numba_impl`:
inputs first, the output array last, preallocated by the caller and filled in place
(``out[...] = ...``). They call only array-API functions, so they run on NumPy, CuPy and
``array_api_strict`` alike; the dispatcher in :mod:`fimlab._kernels` uses them for every
array that is not a NumPy float array, and whenever Numba is unavailable or disabled.
"""

from __future__ import annotations

from ..backend import array_namespace

__all__ = ["sq_gram_reduce", "grouped_rowdot", "symmetrize_lower", "outer_rows"]


def sq_gram_reduce(Gg, K: int, out) -> None:
    """Squared-Gram block sums ``out[i, j] = Σ_{k,k'} Gg[iK+k, jK+k']²``.

    Parameters
    ----------
    Gg : array, shape (n·K, N·K)
        A row chunk of the Gram matrix of the back-propagated vectors,
        ``Gg[(i,k), (j,k')] = g_ikᵀ g_jk'``.
    K : int
        Vectors per sample.
    out : array, shape (n, N)
        Receives ``⟨G_i, G_j⟩_F = Σ_{k,k'} (g_ikᵀ g_jk')²`` (``G_i = Σ_k g_ik g_ikᵀ``),
        the sample-space factor of ``‖F_l‖²_F`` (docs/papers.md F1; docs/guide/conventions.rst principle 1).
    """
    xp = array_namespace(Gg, out)
    n, N = out.shape
    if K == 1:
        out[...] = Gg * Gg
        return
    S = xp.reshape(Gg * Gg, (n * K * N, K))
    S = xp.reshape(xp.sum(S, axis=1), (n, K, N))  # sum over k' (contiguous)
    out[...] = xp.sum(S, axis=1)  # sum over k


def grouped_rowdot(X, Y, K: int, out) -> None:
    """Per-sample sums of row dot products ``out[n] = Σ_k Σ_j X[nK+k, j] Y[nK+k, j]``.

    With ``X = g G`` and ``Y = g`` (rows ``g_nk``) this is the per-sample quadratic form
    ``Σ_k g_nkᵀ G g_nk``; with ``K = 1``, ``X = ā A`` and ``Y = ā`` it is ``ā_nᵀ A ā_n``
    (the two factors of ``⟨F_l, A⊗G⟩_F``, docs/papers.md R3).

    Parameters
    ----------
    X, Y : arrays, shape (N·K, d)
    K : int
    out : array, shape (N,)
    """
    xp = array_namespace(X, Y, out)
    N = out.shape[0]
    out[...] = xp.sum(xp.reshape(X * Y, (N, K * X.shape[1])), axis=1)


def symmetrize_lower(M) -> None:
    """Copy the lower triangle of the square ``M`` onto its upper triangle, in place
    (``M`` is both input and output): after the call ``M`` is symmetric. Used after a
    BLAS ``syrk`` that filled one triangle of a dense Fisher matrix."""
    xp = array_namespace(M)
    n = M.shape[0]
    t = 256
    for i0 in range(0, n, t):
        i1 = min(i0 + t, n)
        M[i0:i1, i1:] = xp.matrix_transpose(M[i1:, i0:i1])
        blk = M[i0:i1, i0:i1]
        M[i0:i1, i0:i1] = xp.tril(blk) + xp.matrix_transpose(xp.tril(blk, k=-1))


def outer_rows(a, g, U, offset: int) -> None:
    """One layer's per-sample Jacobian rows written into their column block of ``U``:
    ``U[nK+k, offset + i·d_g + j] = a[n, i] · g[n, k, j]`` (``a``: ``(n, d_a)``, ``g``:
    ``(n, K, d_g)``, ``U``: ``(n·K, P)``) — row ``nK+k`` of the block is
    ``vec(g_nk ā_nᵀ) = ā_n ⊗ g_nk`` in the column-major convention."""
    xp = array_namespace(a, g, U)
    n, K, dg = g.shape
    da = a.shape[1]
    rows = xp.reshape(a[:, None, :, None] * g[:, :, None, :], (n * K, da * dg))
    U[:, offset : offset + da * dg] = rows
