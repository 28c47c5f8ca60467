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

__all__ = ["sq_gram_reduce", "grouped_rowdot"]


@njit(cache=True, parallel=True)
def sq_gram_reduce(Gg, K, out):  # pragma: no cover - compiled (see NUMBA_DISABLE_JIT)
    """``out[i, j] = Σ_{k,k'} Gg[iK+k, jK+k']²`` in one pass over ``Gg`` (no squared
    copy, no strided reduction): rows ``i`` in parallel, each row of ``Gg`` read once."""
    n, N = out.shape
    for i in prange(n):
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
