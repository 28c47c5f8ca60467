"""Fused per-sample kernels with two interchangeable implementations.

- :mod:`fimlab._kernels.numba_impl`: ``@njit(cache=True)`` kernels (``fastmath`` off) for
  NumPy ``float32``/``float64`` arrays;
- :mod:`fimlab._kernels.numpy_impl`: array-API twins with identical signatures, used for
  every other array (CuPy, ``array_api_strict``), when Numba is not importable, or when
  the environment sets ``FIMLAB_NUMBA=0``.

The functions below dispatch on their inputs: same call, same result (to round-off), the
fastest implementation available for those arrays. Outputs are preallocated by the
caller and filled in place. What each kernel computes, and why it exists, is in its
docstring and in ``docs/performance.md`` ("Numba kernels").

Examples
--------
>>> import numpy as np
>>> from fimlab import _kernels
>>> X = np.arange(6.0).reshape(3, 2); out = np.empty(3)
>>> _kernels.grouped_rowdot(X, X, 1, out); out.tolist()   # squared row norms
[1.0, 13.0, 41.0]
"""

from __future__ import annotations

import os

import numpy as np

from .._errors import ShapeError
from ..backend import array_namespace, device_of
from . import numpy_impl

__all__ = [
    "sq_gram_reduce", "grouped_rowdot", "symmetrize_lower", "second_moment_gram", "outer_rows",
    "numba_enabled",
    "implementation",
    "serves",
]

try:  # Numba is a dependency, but the core must work without it (e.g. new Pythons)
    from . import numba_impl as _nb
except Exception:  # noqa: BLE001 - any import failure means: use the twins
    _nb = None

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# Dtypes for which the dispatcher takes the Numba twin of a kernel (all others: both
# float dtypes). outer_rows in float32 only writes half the bytes, and the write (with the
# first-touch page faults of a fresh U) is all it does: NumPy's broadcasting multiply into
# the view of U was as fast (Numba 0.83–1.43× in the suite's full run of 2026-12-04), so
# float32 keeps NumPy — issue 6 asks for ≥ 1.5× or the NumPy version.
_NUMBA_DTYPES = {"outer_rows": (np.dtype(np.float64),)}


def serves(kernel: str, dtype) -> bool:
    """True when the dispatcher takes the Numba twin of ``kernel`` for NumPy arrays of
    ``dtype`` (Numba enabled); the benchmark's targets count only these sizes."""
    return numba_enabled() and np.dtype(dtype) in _NUMBA_DTYPES.get(kernel, _FLOATS)


def numba_enabled() -> bool:
    """True when the Numba kernels are importable and not disabled (``FIMLAB_NUMBA=0``)."""
    return _nb is not None and os.environ.get("FIMLAB_NUMBA", "1") != "0"


def _numba_ok(*arrays) -> bool:
    if not numba_enabled():
        return False
    dt = arrays[0].dtype if isinstance(arrays[0], np.ndarray) else None
    return all(
        type(a) is np.ndarray and a.dtype == dt and a.dtype in _FLOATS for a in arrays
    )


def implementation(*arrays) -> str:
    """``"numba"`` or ``"numpy"``: which twin the dispatcher picks for ``arrays``."""
    return "numba" if _numba_ok(*arrays) else "numpy"


def sq_gram_reduce(Gg, K: int, out) -> None:
    """``out[i, j] = Σ_{k,k'} Gg[iK+k, jK+k']²`` (see
    :func:`fimlab._kernels.numpy_impl.sq_gram_reduce`)."""
    if Gg.ndim != 2 or out.ndim != 2 or Gg.shape != (out.shape[0] * K, out.shape[1] * K):
        raise ShapeError(
            f"sq_gram_reduce: Gg of shape {tuple(Gg.shape)} does not match out of shape "
            f"{tuple(out.shape)} with K={K}"
        )
    if K > 1 and _numba_ok(Gg, out):  # K = 1: a plain square, nothing to fuse
        _nb.sq_gram_reduce(np.ascontiguousarray(Gg), int(K), out)
    else:
        numpy_impl.sq_gram_reduce(Gg, K, out)


def grouped_rowdot(X, Y, K: int, out) -> None:
    """``out[n] = Σ_k Σ_j X[nK+k, j] Y[nK+k, j]`` (see
    :func:`fimlab._kernels.numpy_impl.grouped_rowdot`)."""
    if X.ndim != 2 or X.shape != Y.shape or out.ndim != 1 or X.shape[0] != out.shape[0] * K:
        raise ShapeError(
            f"grouped_rowdot: X {tuple(X.shape)}, Y {tuple(Y.shape)} and out "
            f"{tuple(out.shape)} do not match with K={K}"
        )
    if _numba_ok(X, Y, out):
        _nb.grouped_rowdot(np.ascontiguousarray(X), np.ascontiguousarray(Y), int(K), out)
    else:
        numpy_impl.grouped_rowdot(X, Y, K, out)


def outer_rows(a, g, U, offset: int) -> None:
    """Per-sample Jacobian rows ``ā_n ⊗ g_nk`` of one layer into columns
    ``offset : offset + d_a·d_g`` of ``U`` (see
    :func:`fimlab._kernels.numpy_impl.outer_rows`); Numba needs a C-contiguous ``U``."""
    if (a.ndim != 2 or g.ndim != 3 or U.ndim != 2 or g.shape[0] != a.shape[0]
            or U.shape[0] != g.shape[0] * g.shape[1]
            or not 0 <= offset <= U.shape[1] - a.shape[1] * g.shape[2]):
        raise ShapeError(
            f"outer_rows: a {tuple(a.shape)}, g {tuple(g.shape)}, U {tuple(U.shape)} and "
            f"offset {offset} do not match"
        )
    if _numba_ok(a, g, U) and U.flags.c_contiguous and serves("outer_rows", U.dtype):
        _nb.outer_rows(np.ascontiguousarray(a), np.ascontiguousarray(g), U, int(offset))
    elif all(type(x) is np.ndarray for x in (a, g, U)):
        # NumPy's broadcasting multiply straight into a view of U (no temporary)
        n, K, dg = g.shape
        da = a.shape[1]
        view = U[:, offset : offset + da * dg].reshape(n, K, da, dg)  # rows stride P
        np.multiply(a[:, None, :, None], g[:, :, None, :], out=view)
    else:
        numpy_impl.outer_rows(a, g, U, offset)


def symmetrize_lower(M) -> None:
    """Copy the lower triangle of the square ``M`` onto its upper triangle, in place
    (see :func:`fimlab._kernels.numpy_impl.symmetrize_lower`)."""
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ShapeError(f"symmetrize_lower needs a square matrix, got {tuple(M.shape)}")
    if _numba_ok(M):
        _nb.symmetrize_lower(M)
    else:
        numpy_impl.symmetrize_lower(M)


#: Row chunks of the ``N·K × N·K`` Gram matrix are formed at most this many bytes at once.
_GRAM_CHUNK_BYTES = 64 * 1024**2


def second_moment_gram(g, out=None):
    """``S[n, n'] = ⟨G_n, G_n'⟩_F = Σ_{k,k'} (g_nkᵀ g_n'k')²`` for ``g`` of shape
    ``(N, K, d)`` (``G_n = Σ_k g_nk g_nkᵀ``), without the ``N·K × N·K`` Gram matrix.

    Row chunks of the Gram matrix come from one GEMM each (at most 64 MiB at a time) and
    are reduced by :func:`sq_gram_reduce`: chunked accumulation, memory ``O(N² + chunk)``
    instead of ``O(N²K²)``. Array-API code (any namespace); the reduction is the Numba
    kernel for NumPy float arrays.
    """
    xp = array_namespace(g)
    N, K, d = g.shape
    gf = xp.reshape(g, (N * K, d))
    if out is None:
        out = xp.empty((N, N), dtype=g.dtype, device=device_of(g))
    if K == 1:  # nothing to reduce: the Gram matrix squared
        Gg = gf @ xp.matrix_transpose(gf)
        out[...] = Gg * Gg
        return out
    itemsize = 4 if g.dtype == xp.float32 else 8
    rows = max(1, min(N, _GRAM_CHUNK_BYTES // max(1, itemsize * K * N * K)))
    gT = xp.matrix_transpose(gf)
    for s in range(0, N, rows):
        e = min(N, s + rows)
        Gg = gf[s * K : e * K, :] @ gT  # ((e-s)K, NK)
        sq_gram_reduce(Gg, K, out[s:e, :])
    return out
