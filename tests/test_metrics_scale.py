"""Matrix-free metrics at scale against dense references: Gram-identity E1 (through the
kernels, chunked), the syrk dense assembly, matrix-free E3 by Lanczos; and the bench
suite in its tiny mode (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fimlab as fl
from fimlab import _kernels
from fimlab.metrics import spectral_error
from fimlab.testing import SMALL_NETS, make_targets, rtol_for


def _batch(i, fisher, N, seed, dtype="float64", mc=2):
    sizes, act, lik = SMALL_NETS[i]
    net = fl.MLP(sizes, activation=act, likelihood=lik, seed=i, dtype=dtype)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, sizes[0])).astype(dtype)
    y = make_targets(lik, N, sizes[-1], rng)
    return fl.factor_batch(net, X, y, fisher=fisher, mc_samples=mc, rng=seed)


def _random_kron(d_a, d_g, rank, rng):
    terms = []
    for _ in range(rank):
        A = rng.normal(size=(d_a, d_a))
        G = rng.normal(size=(d_g, d_g))
        terms.append((A + A.T, G + G.T))
    return fl.KroneckerOperator(terms)


# -- E1 through Gram identities ----------------------------------------------------------------
@given(i=st.integers(0, len(SMALL_NETS) - 1), fisher=st.sampled_from(["exact", "mc", "empirical"]),
       N=st.integers(1, 12), seed=st.integers(0, 2**16), rank=st.integers(1, 3),
       chunk=st.sampled_from([1, 64 * 1024**2]))
def test_gram_e1_equals_dense_e1(i, fisher, N, seed, rank, chunk):
    b = _batch(i, fisher, N, seed)
    F = fl.FisherOperator(b)
    rng = np.random.default_rng(seed)
    old = _kernels._GRAM_CHUNK_BYTES
    _kernels._GRAM_CHUNK_BYTES = chunk
    try:
        for l in range(b.n_layers):
            Fb = F.diagonal_block(l)
            K = _random_kron(b.d_a[l], b.d_g[l], rank, rng)
            D, Kd = F.block(l), K.to_dense()
            # each Gram identity on its own, then E1
            assert Fb.frobenius_norm_sq() == pytest.approx(np.sum(D * D), rel=1e-10)
            assert Fb.inner_kron(K.terms) == pytest.approx(
                np.sum(D * Kd), rel=1e-9, abs=1e-10 * np.linalg.norm(D) * np.linalg.norm(Kd))
            if not np.any(D):  # e.g. dead ReLUs: E1 is undefined, and says so
                with pytest.raises(fl.ShapeError, match="zero"):
                    fl.relative_frobenius_error(Fb, K, method="gram")
                continue
            ref = np.linalg.norm(D - Kd) / np.linalg.norm(D)
            got = fl.relative_frobenius_error(Fb, K, method="gram")
            assert got == pytest.approx(ref, rel=1e-8, abs=1e-7)
    finally:
        _kernels._GRAM_CHUNK_BYTES = old


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gram_e1_kfac_float32_and_64(dtype):
    b = _batch(0, "exact", 40, 3, dtype=dtype)
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    D, Kd = F.to_dense(), K.to_dense()
    for l in range(b.n_layers):
        s = F.block_slice(l)
        ref = np.linalg.norm((D[s, s] - Kd[s, s]).astype(np.float64)) / np.linalg.norm(
            D[s, s].astype(np.float64))
        tol = 1e-7 if dtype == "float64" else 3e-3  # the Gram route cancels: ~√eps absolute
        assert fl.relative_frobenius_error(F, K, block=l) == pytest.approx(ref, abs=tol)


def test_gram_identities_strict_namespace():
    xps = pytest.importorskip("array_api_strict")
    b = _batch(1, "exact", 9, 4)
    bs = fl.FactorBatch([xps.asarray(a) for a in b.a], [xps.asarray(g) for g in b.g])
    F, Fs = fl.FisherOperator(b), fl.FisherOperator(bs)
    K = fl.KFAC(b)
    for l in range(b.n_layers):
        A, G = K.factors[l]
        assert Fs.diagonal_block(l).frobenius_norm_sq() == pytest.approx(
            F.diagonal_block(l).frobenius_norm_sq(), rel=1e-12)
        assert Fs.diagonal_block(l).inner_kron([(xps.asarray(A), xps.asarray(G))]) == (
            pytest.approx(F.diagonal_block(l).inner_kron([(A, G)]), rel=1e-12))


# -- the dense Fisher (syrk accumulation) ---------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("chunk", [1, 7, None])
def test_dense_fisher_syrk_path(dtype, chunk, monkeypatch):
    import fimlab.curvature as curv

    b = _batch(1, "exact", 23, 0, dtype=dtype)
    if chunk is not None:  # several sample chunks accumulate into one matrix (syrk)
        row = b.n_vectors * b.n_params * np.dtype(dtype).itemsize
        monkeypatch.setattr(curv, "_CHUNK_BYTES", chunk * row)
        monkeypatch.setattr(curv, "_ONE_PIECE_BYTES", 0)
    U = b.jacobian_matrix().astype(np.float64)
    ref = U.T @ U / b.n_samples
    D = fl.FisherOperator(b).to_dense()
    assert D.dtype == np.dtype(dtype) and D.flags.c_contiguous
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_allclose(D, ref, rtol=rtol_for(dtype), atol=rtol_for(dtype) * np.abs(ref).max())


def test_dense_fisher_array_api_path_agrees():
    xps = pytest.importorskip("array_api_strict")
    b = _batch(0, "mc", 11, 2)
    bs = fl.FactorBatch([xps.asarray(a) for a in b.a], [xps.asarray(g) for g in b.g])
    np.testing.assert_allclose(np.asarray(fl.FisherOperator(bs).to_dense()),
                               fl.FisherOperator(b).to_dense(), rtol=1e-12, atol=1e-15)


# -- E3: Lanczos against dense ---------------------------------------------------------------
@given(i=st.integers(0, len(SMALL_NETS) - 1), fisher=st.sampled_from(["exact", "mc", "empirical"]),
       N=st.integers(2, 12), seed=st.integers(0, 2**16), rank=st.integers(1, 2))
def test_matrix_free_e3_equals_dense(i, fisher, N, seed, rank):
    b = _batch(i, fisher, N, seed)
    F = fl.FisherOperator(b)
    rng = np.random.default_rng(seed)
    for l in range(b.n_layers):
        K = _random_kron(b.d_a[l], b.d_g[l], rank, rng)
        if not np.any(F.block(l)):
            continue  # a zero block (dead ReLUs): E3 undefined (tested below)
        D = F.block(l) - K.to_dense()
        ref = np.max(np.abs(np.linalg.eigvalsh(D))) / np.max(np.linalg.eigvalsh(F.block(l)))
        got = spectral_error(F.diagonal_block(l), K)
        assert got == pytest.approx(ref, rel=1e-7)
        assert spectral_error(F.diagonal_block(l), K, method="dense") == pytest.approx(
            ref, rel=1e-10)


@pytest.mark.parametrize("fisher", ["exact", "mc"])
def test_e3_blocks_and_whole_network(fisher):
    b = _batch(1, fisher, 30, 5)
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    Dd, Kd = F.to_dense(), K.to_dense()
    for l in range(b.n_layers):
        s = F.block_slice(l)
        ref = (np.max(np.abs(np.linalg.eigvalsh(Dd[s, s] - Kd[s, s])))
               / np.max(np.linalg.eigvalsh(Dd[s, s])))
        assert spectral_error(F, K, block=l) == pytest.approx(ref, rel=1e-7)
    ref = np.max(np.abs(np.linalg.eigvalsh(Dd - Kd))) / np.max(np.linalg.eigvalsh(Dd))
    assert spectral_error(F, K) == pytest.approx(ref, rel=1e-7)
    # a generic operator as the reference: ‖F‖₂ by Lanczos as well
    assert spectral_error(fl.DenseOperator(Dd), K) == pytest.approx(ref, rel=1e-7)
    # dense arrays go the dense way
    assert spectral_error(Dd, Kd) == pytest.approx(ref, rel=1e-10)


def test_e3_one_sample_kfac_is_exact():
    b = _batch(0, "exact", 1, 0)  # one sample: KFAC equals the block (PAPERS.md K1)
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    assert spectral_error(F, K, block=1) < 1e-7


def test_e3_strict_namespace():
    xps = pytest.importorskip("array_api_strict")
    b = _batch(0, "exact", 8, 1)
    bs = fl.FactorBatch([xps.asarray(a) for a in b.a], [xps.asarray(g) for g in b.g])
    ref = spectral_error(fl.FisherOperator(b), fl.KFAC(b), block=0)
    assert spectral_error(fl.FisherOperator(bs), fl.KFAC(bs), block=0) == pytest.approx(
        ref, rel=1e-8)


def test_e3_errors_and_warning():
    b = _batch(0, "exact", 10, 0)
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    with pytest.raises(fl.UnknownNameError, match="spectral-error method"):
        spectral_error(F, K, block=0, method="svd")
    with pytest.raises(fl.ShapeError, match="Lanczos route needs two operators"):
        spectral_error(F.block(0), K.blocks[0].to_dense(), method="lanczos")
    with pytest.raises(fl.ShapeError, match="shapes"):
        spectral_error(F.diagonal_block(0), K.blocks[1])
    with pytest.raises(fl.DenseMemoryError, match="Lanczos basis"):
        spectral_error(F, K, block=0, max_bytes=100)
    with pytest.warns(fl.ConvergenceWarning, match="did not reach"):
        spectral_error(F, K, block=0, maxiter=2, tol=1e-14)
    Z = fl.FactorBatch([np.zeros((3, 4))], [np.zeros((3, 1, 2))])
    with pytest.raises(fl.ShapeError, match="zero"):
        spectral_error(fl.FisherOperator(Z), fl.KroneckerOperator([(np.eye(4), np.eye(2))]))


# -- the bench suite, tiny ------------------------------------------------------------------------
def test_bench_suite_tiny(tmp_path):
    from benchmarks import cases
    from benchmarks.suite import format_markdown, run_suite

    out = tmp_path / "bench.json"
    lines = []
    rep = run_suite(mode="tiny", use_peers=False, out=out, markdown=tmp_path / "b.md",
                    log=lines.append)
    data = json.loads(out.read_text())
    assert data["mode"] == "tiny" and data["rows"]
    sections = {r["section"] for r in data["rows"]}
    for s in ("forward + factor batch", "per-sample gradients", "KFAC factors",
              "dense exact Fisher", "Fisher matvec", "Woodbury natural gradient",
              "E1 per block", "E1 at full size", "Numba kernels"):
        assert s in sections, s
    assert all(r["time_s"] > 0 for r in data["rows"])
    assert {t["target"] for t in data["targets"]} >= {"dense_vs_syrk", "e1_full_size", "kernels"}
    assert data["machine"]["threadpools"] and "BLAS" in lines[0] + lines[1] + lines[2]
    # the E1 row matches an independent evaluation (QR coordinates of R(F_l) and
    # Eckart–Young, tests/refs.py) on the same MC factor batch
    from refs import KNOWN, independent_e1

    e1 = next(r for r in data["rows"] if r["section"] == "E1 at full size")
    net, X, y, _ = cases.make_problem(cases.MODES["tiny"]["blocks"], "float64")
    ref = independent_e1(fl.factor_batch(net, X, y, fisher="mc", rng=0))
    known = [m for m in e1["methods"] if m in KNOWN]
    assert {"KFAC", "KPSVD"} <= set(known)
    for m in known:
        np.testing.assert_allclose(e1["e1"][m], [ref[(m, l)] for l in range(net.n_layers)],
                                   rtol=1e-7, atol=1e-10)
    md = (tmp_path / "b.md").read_text()
    assert "### Targets" in md and "### Machine" in md and md == format_markdown(rep)


def test_bench_peers_absent_are_skipped_with_a_message(tmp_path, monkeypatch):
    from benchmarks import peers
    from benchmarks.suite import run_suite

    def absent():
        return {"torch": None, "curvlinops": None, "backpack": None, "kfoc": False,
                "message": "peer rows skipped for torch, curvlinops, backpack: not installed"}

    monkeypatch.setattr(peers, "status", absent)
    rep = run_suite(mode="tiny", sections=["kfac"], use_peers=True,
                    out=tmp_path / "p.json", log=lambda s: None)
    impls = {r["impl"] for r in rep["rows"]}
    assert impls <= {"fimlab", "fimlab (factors only)", "fimlab (with the factor batch)"}
    msgs = " ".join(s["message"] for s in rep["skipped"])
    assert "not installed" in msgs
    peers_target = next(t for t in rep["targets"] if t["target"] == "peers")
    assert peers_target["met"] is None and "not installed" in peers_target["reason"]


def test_bench_bad_mode_and_section(tmp_path):
    from benchmarks.suite import run_suite

    with pytest.raises(fl.UnknownNameError, match="bench mode"):
        run_suite(mode="huge", out=tmp_path / "x.json")
    with pytest.raises(fl.UnknownNameError, match="section"):
        run_suite(mode="tiny", sections=["nope"], out=tmp_path / "x.json")
