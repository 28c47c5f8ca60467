"""One BLAS thread pool in the hot paths (issue 20), and the NumPy forward pass.

SciPy ships its own OpenBLAS (a second library with its own thread pool); calling it
right after NumPy's GEMMs made the KFAC factors 2x slower on two cores. The factor batch,
the KFAC factors and the Gram matrices must therefore not call ``scipy.linalg.blas``:
these tests replace every routine of that module by one that raises, and run the hot
paths (the patch is checked to intercept, so the test can fail).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg.blas as sblas

import fimlab as fl
from fimlab import kron
from fimlab.models import mlp


class SciPyBLASCalled(AssertionError):
    pass


@pytest.fixture
def no_scipy_blas(monkeypatch):
    """Every BLAS routine of ``scipy.linalg.blas`` (``dsyrk``, ``dgemm``, ``dtrmm``, …)
    and ``get_blas_funcs`` raise while the test runs."""
    names = [n for n in dir(sblas)
             if (n[:1] in "sdcz" and callable(getattr(sblas, n)) and len(n) <= 7
                 and not n.startswith("__")) or n == "get_blas_funcs"]
    assert {"dsyrk", "ssyrk", "dgemm", "dtrmm", "get_blas_funcs"} <= set(names)

    def make(name):
        def fail(*args, **kwargs):
            raise SciPyBLASCalled(f"scipy.linalg.blas.{name} called in a hot path")
        return fail

    for n in names:
        monkeypatch.setattr(sblas, n, make(n))
    return names


def test_the_patch_intercepts(no_scipy_blas):
    from scipy.linalg import blas

    with pytest.raises(SciPyBLASCalled):
        blas.dsyrk(1.0, np.ones((3, 2)))
    with pytest.raises(SciPyBLASCalled):
        from scipy.linalg.blas import dtrmm
        dtrmm(1.0, np.eye(2), np.eye(2))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_hot_paths_use_numpy_blas_only(no_scipy_blas, fisher, dtype, rng):
    net = fl.MLP([6, 9, 7, 4], activation="relu", likelihood="categorical", seed=0,
                 dtype=dtype)
    X = rng.normal(size=(40, 6)).astype(dtype)
    y = rng.integers(0, 4, size=40)
    b = fl.factor_batch(net, X, y, fisher=fisher, rng=1)
    K = fl.KFAC(b)
    for (A, G), a, g in zip(K.factors, b.a, b.g):
        # against plain sums of outer products (independent of BLAS)
        n, tol = a.shape[0], (1e-4 if dtype == "float32" else 1e-12)
        np.testing.assert_allclose(A, np.einsum("ni,nj->ij", a, a) / n, rtol=tol, atol=1e-6)
        np.testing.assert_allclose(G, np.einsum("nki,nkj->ij", g, g) / n, rtol=tol,
                                   atol=1e-6 * float(np.abs(G).max()))
        assert np.array_equal(A, A.T) and np.array_equal(G, G.T)
    w = rng.normal(size=40).astype(dtype)  # signed weights: the two-update route
    M = kron.weighted_gram(b.a[1], w)
    np.testing.assert_allclose(M, np.einsum("n,ni,nj->ij", w, b.a[1], b.a[1]),
                               rtol=1e-4 if dtype == "float32" else 1e-10, atol=1e-5)
    assert np.array_equal(M, M.T)
    b.gram()
    kron.gram_of_rows(b.a[0], 0.5)
    from fimlab.kron.gram import _squared_row_gram

    _squared_row_gram(b.a[0])


def test_rank_two_gram_route_uses_numpy_blas_only(no_scipy_blas, rng):
    net = fl.MLP([6, 9, 7, 4], activation="tanh", likelihood="categorical", seed=0)
    b = fl.factor_batch(net, rng.normal(size=(120, 6)), fisher="mc", rng=1)
    approx = fl.KPSVD(b, rank=2)
    assert len(approx.blocks[0].terms) == 2


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "linear"])
@pytest.mark.parametrize("lik", ["categorical", "gaussian", "bernoulli"])
def test_numpy_forward_pass_matches_the_array_api_pass(act, lik, rng, monkeypatch):
    """The preallocated NumPy forward/back-propagation (in-place activations, ``[h | 1]``
    written by the GEMM) against the namespace-generic code path it replaces."""
    net = fl.MLP([5, 7, 6, 4], activation=act, likelihood=lik, seed=3)
    X = rng.normal(size=(13, 5))
    y = (rng.integers(0, 4, size=13) if lik == "categorical"
         else (rng.random((13, 4)) < 0.5).astype(float))
    fast = {f: fl.factor_batch(net, X, y, fisher=f, mc_samples=3, rng=2)
            for f in ("exact", "mc", "empirical")}
    loss, grads = net.loss_and_gradient(X, y)
    abar, s_list, h_list = net._forward(X)
    assert s_list is None
    for l in range(net.n_layers - 1):  # h_l lives in ā_{l+1}: no concatenation copy
        assert np.shares_memory(h_list[l], abar[l + 1])
        assert np.all(abar[l + 1][:, -1] == 1.0)
    monkeypatch.setattr(mlp, "_numpy_fast", lambda x: False)
    for f, b in fast.items():
        ref = fl.factor_batch(net, X, y, fisher=f, mc_samples=3, rng=2)
        for p, q in zip(b.a + b.g, ref.a + ref.g):
            np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-15)
    loss2, grads2 = net.loss_and_gradient(X, y)
    assert loss == pytest.approx(loss2, rel=1e-13)
    for p, q in zip(grads, grads2):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15)


def test_scipy_lapack_runs_on_one_thread_beside_numpys_pool():
    """Where SciPy bundles an OpenBLAS of its own, the LAPACK calls of the inverse refresh
    run with its pool at one thread, and the setting is restored afterwards."""
    import scipy.linalg.lapack  # noqa: F401
    from threadpoolctl import threadpool_info

    from fimlab import _blas

    libs = _blas.blas_libraries()
    assert libs and all(d["user_api"] == "blas" for d in libs)
    sc = [d for d in libs if d["owner"] == "scipy"]
    nump = [d for d in libs if d["owner"] == "numpy"]

    def scipy_threads():
        return [d["num_threads"] for d in threadpool_info()
                if sc and d["filepath"] == sc[0]["filepath"]]

    before = scipy_threads()
    with _blas.scipy_lapack_threads():
        inside = scipy_threads()
    assert scipy_threads() == before
    if sc and nump and sc[0]["filepath"] != nump[0]["filepath"] and before[0] > 1:
        assert inside == [1]
    else:
        assert inside == before


def test_bench_warns_about_two_busy_pools():
    from benchmarks.suite import pool_warning

    a = {"user_api": "blas", "internal_api": "openblas", "num_threads": 2,
         "filepath": "/x/numpy.libs/libopenblas64_.so"}
    b = dict(a, filepath="/x/scipy.libs/libopenblas.so")
    assert "2 BLAS libraries" in pool_warning([a, b])
    assert pool_warning([a, dict(b, num_threads=1)]) is None
    assert pool_warning([a]) is None


def test_bench_pipeline_rows_and_their_ratios(tmp_path):
    """The end-to-end rows exist, each ratio is the row's time over its yardstick's time
    of the same run, and the three issue-20 targets are reported."""
    from benchmarks.suite import run_suite

    rep = run_suite(mode="tiny", sections=["pipeline"], use_peers=False,
                    out=tmp_path / "p.json", log=lambda s: None)
    rows = {r["step"]: r for r in rep["rows"] if r["section"] == "end to end"}
    assert set(rows) == {"GEMMs alone", "BLAS work alone", "factor batch", "KFAC from data",
                         "KFAC from data + solve", "training work alone",
                         "KFAC training iteration"}
    for step, ref in (("factor batch", "GEMMs alone"), ("KFAC from data", "BLAS work alone"),
                      ("KFAC training iteration", "training work alone")):
        assert rows[step]["ratio"] == pytest.approx(rows[step]["time_s"] / rows[ref]["time_s"])
    keys = {t["target"] for t in rep["targets"]}
    assert {"fb_vs_gemm", "kfac_vs_blas", "train_vs_blas"} <= keys


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("S", [1, 3])
def test_bernoulli_mc_vectors_equal_the_generic_definition(dtype, S, rng):
    """The in-place NumPy Monte-Carlo vectors of the Bernoulli likelihood: bit for bit the
    base class's ``dloss`` at targets drawn by ``sample`` with the same generator."""
    from fimlab.models import likelihoods as lk

    B = lk.Bernoulli()
    z = (rng.normal(size=(60, 9)) * 30).astype(dtype)
    z[0, :3] = [0.0, -0.0, 800.0]
    fast = B.mc_vectors(z, np.random.default_rng(5), S)
    ref = lk.Likelihood.mc_vectors(B, z, np.random.default_rng(5), S)
    assert fast.dtype == ref.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(lk._sigmoid_numpy(z), lk._sigmoid(z, np))
