"""Numba kernels for the fused per-sample reductions that BLAS does not cover.

Twins of :mod:`fimlab._kernels.numpy_impl` (same signatures: inputs, then the output,
preallocated by the caller). Compiled with ``@njit(cache=True)`` and ``fastmath`` off:
the summation order is fixed by the code below (several independent partial sums, added
in a fixed order at the end), never reassociated by the compiler, so results are
deterministic and the tests compare them with the NumPy twins at round-off level.

Each kernel was kept because it measured at least 1.5x faster than its twin at the
sizes it serves (``docs/performance.md``, "Numba kernels"); the twins remain the path
for CuPy and ``array_api_strict`` arrays.
"""

from __future__ import annotations

from numba import njit, prange

__all__ = ["sq_gram_reduce", "grouped_rowdot", "symmetrize_lower"]


#: below this much work (``n·N·K²`` squares) the kernels run on one thread: starting the
#: thread pool costs more than it saves
_PARALLEL_MIN_WORK = 1_000_000


def _sq_gram_reduce_body(Gg, K, out, i):  # pragma: no cover - inlined into the kernels
    N = out.shape[1]
    for j in range(N):
        out[i, j] = 0.0
    for k in range(K):
        row = Gg[i * K + k]
        for j in range(N):
            s = 0.0
            base = j * K
            for kk in range(K):
                x = row[base + kk]
                s += x * x
            out[i, j] += s


_sq_row = njit(cache=True, inline="always")(_sq_gram_reduce_body)


@njit(cache=True)
def _sq_gram_reduce_serial(Gg, K, out):  # pragma: no cover - compiled
    for i in range(out.shape[0]):
        _sq_row(Gg, K, out, i)


@njit(cache=True, parallel=True)
def _sq_gram_reduce_parallel(Gg, K, out):  # pragma: no cover - compiled
    for i in prange(out.shape[0]):
        _sq_row(Gg, K, out, i)


def sq_gram_reduce(Gg, K, out):
    """``out[i, j] = Σ_{k,k'} Gg[iK+k, jK+k']²`` in one pass over ``Gg`` (no squared
    copy, no strided reduction); rows ``i`` on all threads for large problems. Each
    ``out[i, j]`` is summed in the same order whatever the thread count."""
    n, N = out.shape
    if n * N * K * K >= _PARALLEL_MIN_WORK:
        _sq_gram_reduce_parallel(Gg, K, out)
    else:
        _sq_gram_reduce_serial(Gg, K, out)


@njit(cache=True)
def _rowdot_range(X, Y, K, out, n0, n1):  # pragma: no cover - compiled
    d = X.shape[1]
    for n in range(n0, n1):
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for k in range(K):
            r = n * K + k
            j = 0
            while j + 4 <= d:
                s0 += X[r, j] * Y[r, j]
                s1 += X[r, j + 1] * Y[r, j + 1]
                s2 += X[r, j + 2] * Y[r, j + 2]
                s3 += X[r, j + 3] * Y[r, j + 3]
                j += 4
            while j < d:
                s0 += X[r, j] * Y[r, j]
                j += 1
        out[n] = (s0 + s1) + (s2 + s3)


@njit(cache=True)
def grouped_rowdot(X, Y, K, out):  # pragma: no cover - compiled
    """``out[n] = Σ_k Σ_j X[nK+k, j] Y[nK+k, j]`` fused (no ``X*Y`` temporary), four
    independent partial sums per sample so the loop is not latency-bound."""
    _rowdot_range(X, Y, K, out, 0, out.shape[0])


def _sym_tile_row(M, bi, t):  # pragma: no cover - inlined into the kernels
    n = M.shape[0]
    nb = (n + t - 1) // t
    i0 = bi * t
    i1 = min(i0 + t, n)
    for bj in range(bi, nb):
        j0 = bj * t
        j1 = min(j0 + t, n)
        for i in range(i0, i1):
            for j in range(max(j0, i + 1), j1):
                M[i, j] = M[j, i]


_sym_row = njit(cache=True, inline="always")(_sym_tile_row)


@njit(cache=True)
def _symmetrize_serial(M, t):  # pragma: no cover - compiled
    for bi in range((M.shape[0] + t - 1) // t):
        _sym_row(M, bi, t)


@njit(cache=True, parallel=True)
def _symmetrize_parallel(M, t):  # pragma: no cover - compiled
    for bi in prange((M.shape[0] + t - 1) // t):
        _sym_row(M, bi, t)


def symmetrize_lower(M):
    """Copy the lower triangle of the square ``M`` onto its upper triangle, in place,
    tile by tile (64 × 64) so that the strided reads stay in cache; row tiles on all
    threads for large matrices."""
    if M.shape[0] ** 2 >= _PARALLEL_MIN_WORK:
        _symmetrize_parallel(M, 64)
    else:
        _symmetrize_serial(M, 64)


def _outer_rows_body(a, g, U, offset, n):  # pragma: no cover - inlined into the kernels
    K = g.shape[1]
    dg = g.shape[2]
    da = a.shape[1]
    for k in range(K):
        r = n * K + k
        for i in range(da):
            ai = a[n, i]
            c = offset + i * dg
            for j in range(dg):
                U[r, c + j] = ai * g[n, k, j]


_outer_rows_row = njit(cache=True, inline="always")(_outer_rows_body)


@njit(cache=True)
def _outer_rows_serial(a, g, U, offset):  # pragma: no cover - compiled
    for n in range(a.shape[0]):
        _outer_rows_row(a, g, U, offset, n)


@njit(cache=True, parallel=True)
def _outer_rows_parallel(a, g, U, offset):  # pragma: no cover - compiled
    for n in prange(a.shape[0]):
        _outer_rows_row(a, g, U, offset, n)


def outer_rows(a, g, U, offset):
    """``U[nK+k, offset + i·d_g + j] = a[n, i] · g[n, k, j]``: one layer's per-sample
    Jacobian rows ``ā_n ⊗ g_nk`` written straight into their column block of ``U``
    (C-contiguous), samples on all threads — which also spreads the first-touch page
    faults of a freshly allocated ``U`` over the threads."""
    if U.size >= _PARALLEL_MIN_WORK:
        _outer_rows_parallel(a, g, U, offset)
    else:
        _outer_rows_serial(a, g, U, offset)
