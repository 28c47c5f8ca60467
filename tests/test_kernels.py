"""Numba kernels against their NumPy twins and against explicit loops (tests/naive-style
references); the dispatcher's choice; the chunked second-moment Gram."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fimlab as fl
from fimlab import _kernels
from fimlab._kernels import numba_impl, numpy_impl
from fimlab.testing import rtol_for

DTYPES = st.sampled_from(["float64", "float32"])


# -- independent references: explicit loops -----------------------------------------------
def naive_sq_gram_reduce(Gg, K):
    n, N = Gg.shape[0] // K, Gg.shape[1] // K
    out = np.zeros((n, N))
    for i in range(n):
        for j in range(N):
            out[i, j] = sum(float(Gg[i * K + k, j * K + kk]) ** 2
                            for k in range(K) for kk in range(K))
    return out


def naive_grouped_rowdot(X, Y, K):
    N = X.shape[0] // K
    return np.array([sum(float(X[n * K + k] @ Y[n * K + k]) for k in range(K))
                     for n in range(N)])


def naive_second_moments(g):
    N = g.shape[0]
    Gs = [g[n].T @ g[n] for n in range(N)]  # G_n = Σ_k g_nk g_nkᵀ
    return np.array([[np.sum(Gs[i] * Gs[j]) for j in range(N)] for i in range(N)])


# -- twins agree ---------------------------------------------------------------------------
@given(n=st.integers(1, 6), N=st.integers(1, 7), K=st.integers(1, 4), dtype=DTYPES,
       seed=st.integers(0, 2**16))
def test_sq_gram_reduce_twins_agree(n, N, K, dtype, seed):
    Gg = np.random.default_rng(seed).standard_normal((n * K, N * K)).astype(dtype)
    ref = naive_sq_gram_reduce(Gg.astype(np.float64), K)
    for impl in (numba_impl, numpy_impl, _kernels):
        out = np.full((n, N), np.nan, dtype=dtype)
        impl.sq_gram_reduce(Gg, K, out)
        np.testing.assert_allclose(out, ref, rtol=rtol_for(dtype), atol=0)
        assert out.dtype == np.dtype(dtype)


@given(N=st.integers(1, 8), K=st.integers(1, 4), d=st.integers(1, 11), dtype=DTYPES,
       seed=st.integers(0, 2**16))
def test_grouped_rowdot_twins_agree(N, K, d, dtype, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N * K, d)).astype(dtype)
    Y = rng.standard_normal((N * K, d)).astype(dtype)
    ref = naive_grouped_rowdot(X.astype(np.float64), Y.astype(np.float64), K)
    scale = np.abs(X.astype(np.float64)) @ np.abs(Y.astype(np.float64)).T  # sum of |terms|
    bound = rtol_for(dtype) * np.array([scale[n * K:(n + 1) * K, n * K:(n + 1) * K].trace()
                                        for n in range(N)])
    for impl in (numba_impl, numpy_impl, _kernels):
        out = np.full(N, np.nan, dtype=dtype)
        impl.grouped_rowdot(X, Y, K, out)
        assert np.all(np.abs(out - ref) <= bound + 1e-300)


@given(n=st.integers(1, 200), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_symmetrize_lower_twins_agree(n, dtype, seed):
    M = np.tril(np.random.default_rng(seed).standard_normal((n, n))).astype(dtype)
    ref = np.tril(M) + np.tril(M, -1).T
    for impl in (numba_impl, numpy_impl, _kernels):
        W = M.copy()
        impl.symmetrize_lower(W)
        np.testing.assert_array_equal(W, ref)  # a copy: bit for bit


def naive_outer_rows(a, g, P, offset):
    n, K, dg = g.shape
    U = np.zeros((n * K, P))
    for i in range(n):
        for k in range(K):  # vec(g ā_nᵀ), column-major: ā_n ⊗ g_nk
            U[i * K + k, offset:offset + a.shape[1] * dg] = np.kron(a[i], g[i, k])
    return U


@given(n=st.integers(1, 7), K=st.integers(1, 3), da=st.integers(1, 6), dg=st.integers(1, 6),
       pad=st.integers(0, 5), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_outer_rows_twins_agree(n, K, da, dg, pad, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, da)).astype(dtype)
    g = rng.standard_normal((n, K, dg)).astype(dtype)
    P, offset = da * dg + pad, pad // 2
    ref = naive_outer_rows(a.astype(np.float64), g.astype(np.float64), P, offset)
    for impl in (numba_impl, numpy_impl, _kernels):
        U = np.zeros((n * K, P), dtype=dtype)
        impl.outer_rows(a, g, U, offset)
        assert U.dtype == np.dtype(dtype)
        np.testing.assert_allclose(U, ref, rtol=rtol_for(dtype), atol=0)


def test_outer_rows_is_the_jacobian_of_a_factor_batch(monkeypatch):
    """The dense Jacobian U of a factor batch, by the kernel and by NumPy's broadcasting
    (FIMLAB_NUMBA=0), equals the explicit per-layer Kronecker rows."""
    net = fl.MLP([5, 4, 3], activation="tanh", likelihood="categorical", seed=0)
    b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(9, 5)), fisher="exact")
    U = b.jacobian_matrix()
    ref = np.concatenate([naive_outer_rows(b.a[l], b.g[l], b.d_a[l] * b.d_g[l], 0)
                          for l in range(b.n_layers)], axis=1)
    np.testing.assert_array_equal(U, ref)
    monkeypatch.setenv("FIMLAB_NUMBA", "0")
    np.testing.assert_array_equal(b.jacobian_matrix(), ref)


def test_parallel_variants_equal_serial(monkeypatch):
    """The multi-threaded variants sum each entry in the same order: equal bit for bit."""
    rng = np.random.default_rng(0)
    Gg = rng.standard_normal((12 * 3, 20 * 3))
    M = np.tril(rng.standard_normal((150, 150)))
    serial_out = np.empty((12, 20))
    numba_impl.sq_gram_reduce(Gg, 3, serial_out)
    serial_M = M.copy()
    numba_impl.symmetrize_lower(serial_M)
    a, g = rng.standard_normal((30, 7)), rng.standard_normal((30, 2, 5))
    serial_U = np.zeros((60, 40))
    numba_impl.outer_rows(a, g, serial_U, 3)
    monkeypatch.setattr(numba_impl, "_PARALLEL_MIN_WORK", 1)
    par_U = np.zeros((60, 40))
    numba_impl.outer_rows(a, g, par_U, 3)
    np.testing.assert_array_equal(par_U, serial_U)
    par_out = np.empty((12, 20))
    numba_impl.sq_gram_reduce(Gg, 3, par_out)
    par_M = M.copy()
    numba_impl.symmetrize_lower(par_M)
    np.testing.assert_array_equal(par_out, serial_out)
    np.testing.assert_array_equal(par_M, serial_M)


# -- the dispatcher ------------------------------------------------------------------------
def test_dispatcher_choice(monkeypatch):
    x = np.ones((4, 2))
    assert _kernels.implementation(x, x) == "numba"
    assert _kernels.implementation(x, x.astype(np.float32)) == "numpy"  # mixed dtypes
    assert _kernels.implementation(np.ones((4, 2), dtype=np.int64)) == "numpy"
    monkeypatch.setenv("FIMLAB_NUMBA", "0")
    assert not _kernels.numba_enabled()
    assert _kernels.implementation(x, x) == "numpy"


def test_outer_rows_dispatch_by_dtype(monkeypatch):
    """outer_rows keeps NumPy's broadcasting multiply in float32 (the Numba kernel was
    below 1.5× there) and takes Numba in float64; both fill U with the same rows, and a
    float32 Jacobian matrix of a factor batch equals the explicit rows."""
    assert _kernels.serves("outer_rows", np.float64)
    assert not _kernels.serves("outer_rows", np.float32)
    assert _kernels.serves("sq_gram_reduce", np.float32)  # other kernels: both dtypes
    calls = []
    monkeypatch.setattr(numba_impl, "outer_rows", lambda *a: calls.append(a[2].dtype))
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        a = rng.standard_normal((6, 4)).astype(dtype)
        g = rng.standard_normal((6, 2, 3)).astype(dtype)
        U = np.full((12, 14), np.nan, dtype=dtype)
        _kernels.outer_rows(a, g, U, 1)
        if dtype == np.float32:
            np.testing.assert_array_equal(U[:, 1:13], naive_outer_rows(a, g, 12, 0))
            assert np.isnan(U[:, 0]).all() and np.isnan(U[:, 13]).all()  # untouched
    assert calls == [np.dtype(np.float64)]  # Numba only for float64
    monkeypatch.undo()
    net = fl.MLP([5, 4, 3], activation="tanh", likelihood="categorical", seed=0,
                 dtype="float32")
    b = fl.factor_batch(net, rng.normal(size=(7, 5)), fisher="exact")
    ref = np.concatenate([naive_outer_rows(b.a[l], b.g[l], b.d_a[l] * b.d_g[l], 0)
                          for l in range(b.n_layers)], axis=1)
    np.testing.assert_array_equal(b.jacobian_matrix(), ref)


def test_dispatcher_uses_the_twin_for_other_namespaces():
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    out = xps.empty((3,), dtype=xps.float64)
    assert _kernels.implementation(xps.asarray(X)) == "numpy"
    _kernels.grouped_rowdot(xps.asarray(X), xps.asarray(Y), 2, out)
    np.testing.assert_allclose(np.asarray(out), naive_grouped_rowdot(X, Y, 2), rtol=1e-12)
    Gg = rng.standard_normal((6, 9))
    o2 = xps.empty((2, 3), dtype=xps.float64)
    _kernels.sq_gram_reduce(xps.asarray(Gg), 3, o2)
    np.testing.assert_allclose(np.asarray(o2), naive_sq_gram_reduce(Gg, 3), rtol=1e-12)
    a, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 2, 2))
    Us = xps.zeros((8, 7), dtype=xps.float64)
    _kernels.outer_rows(xps.asarray(a), xps.asarray(g), Us, 1)
    np.testing.assert_allclose(np.asarray(Us), naive_outer_rows(a, g, 7, 1), rtol=1e-15)
    M = np.tril(rng.standard_normal((300, 300)))
    Ms = xps.asarray(M)
    _kernels.symmetrize_lower(Ms)
    np.testing.assert_array_equal(np.asarray(Ms), np.tril(M) + np.tril(M, -1).T)


def test_kernel_shape_errors():
    with pytest.raises(fl.ShapeError, match="does not match"):
        _kernels.sq_gram_reduce(np.ones((6, 6)), 2, np.empty((2, 2)))
    with pytest.raises(fl.ShapeError, match="do not match"):
        _kernels.grouped_rowdot(np.ones((6, 2)), np.ones((6, 3)), 2, np.empty(3))
    with pytest.raises(fl.ShapeError, match="square"):
        _kernels.symmetrize_lower(np.ones((3, 4)))
    with pytest.raises(fl.ShapeError, match="outer_rows"):
        _kernels.outer_rows(np.ones((3, 2)), np.ones((3, 1, 2)), np.empty((3, 5)), 2)
    with pytest.raises(fl.ShapeError, match="outer_rows"):
        _kernels.outer_rows(np.ones((3, 2)), np.ones((2, 1, 2)), np.empty((3, 4)), 0)


# -- chunked second moments ------------------------------------------------------------------
@given(N=st.integers(1, 9), K=st.integers(1, 4), d=st.integers(1, 6), dtype=DTYPES,
       chunk=st.sampled_from([1, 200, 64 * 1024**2]), seed=st.integers(0, 2**16))
def test_second_moment_gram_chunked(N, K, d, dtype, chunk, seed):
    g = np.random.default_rng(seed).standard_normal((N, K, d)).astype(dtype)
    old = _kernels._GRAM_CHUNK_BYTES
    _kernels._GRAM_CHUNK_BYTES = chunk  # 1 byte: one sample per chunk
    try:
        S = _kernels.second_moment_gram(g)
    finally:
        _kernels._GRAM_CHUNK_BYTES = old
    ref = naive_second_moments(g.astype(np.float64))
    np.testing.assert_allclose(S, ref, rtol=rtol_for(dtype, 10), atol=0)


def test_second_moment_gram_strict():
    xps = pytest.importorskip("array_api_strict")
    g = np.random.default_rng(2).standard_normal((5, 3, 4))
    S = _kernels.second_moment_gram(xps.asarray(g))
    np.testing.assert_allclose(np.asarray(S), naive_second_moments(g), rtol=1e-12)
