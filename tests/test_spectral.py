"""Spectral densities (stochastic Lanczos quadrature) and stochastic trace/diagonal
estimators, against dense eigenvalues and exact traces through the Gram matrix.

Probabilistic tolerances: a Hutchinson-type estimate with ``p`` Rademacher probes has
standard deviation ``σ = √(2(‖B‖²_F − Σ B_ii²)/p)`` (``B`` the matrix whose trace is
estimated); the tests allow 4σ (a false failure has probability < 1e-3 for a fresh seed;
seeds are fixed, so the tests are deterministic).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab._errors import ShapeError
from fimlab.spectral import inverse_sqrt_map


def _batch(N=6, sizes=(4, 5, 3), fisher="exact", seed=0):
    rng = np.random.default_rng(seed)
    net = fl.MLP(list(sizes), activation="tanh", likelihood="categorical", seed=seed)
    return fl.factor_batch(net, rng.normal(size=(N, sizes[0])), fisher=fisher,
                           rng=np.random.default_rng(seed + 1))


def _hutch_sigma(B, p):
    return np.sqrt(2 * (np.sum(B**2) - np.sum(np.diag(B) ** 2)) / p)


@pytest.mark.parametrize("fisher", ["exact", "mc"])
def test_slq_moments_match_gram_traces(fisher):
    b = _batch(fisher=fisher)
    F = fl.FisherOperator(b)
    Fd = F.to_dense()
    M = np.asarray(b.gram()) / b.n_samples  # tr(F^j) = tr(M^j): the Gram route
    p = 30
    d = fl.spectral_density(F, probes=p, steps=25, rng=1)
    for j in (1, 2, 3):
        exact = np.trace(np.linalg.matrix_power(M, j))
        np.testing.assert_allclose(exact, np.trace(np.linalg.matrix_power(Fd, j)), rtol=1e-9)
        sig = _hutch_sigma(np.linalg.matrix_power(Fd, j), p)
        assert abs(d.moment(j) - exact) <= 4 * sig + 1e-12 * exact, (j, d.moment(j), exact)
    assert abs(d.moment(0) - F.shape[0]) < 1e-9  # weights sum to 1 per Rademacher probe


def test_slq_outliers_and_zero_mass_of_low_rank_fisher():
    b = _batch(N=3)  # rank 6 (3 samples × (C − 1)) in P = 43
    F = fl.FisherOperator(b)
    Fd = F.to_dense()
    ev = np.linalg.eigvalsh(Fd)[::-1]
    r = np.linalg.matrix_rank(Fd)
    d = fl.spectral_density(F, probes=20, steps=43, rng=0, outliers=4)
    np.testing.assert_allclose(d.outliers, ev[:4], rtol=1e-10)
    assert d.exact_zero_mass == pytest.approx(1 - r / Fd.shape[0])
    # estimated zero mass: mean of ‖P₀v‖²/n, a Hutchinson estimate of tr(P₀)/n
    n = Fd.shape[0]
    P0 = np.eye(n) - np.linalg.pinv(Fd) @ Fd
    assert abs(d.zero_mass - d.exact_zero_mass) <= 4 * _hutch_sigma(P0, 20) / n
    # the drawn density integrates to the non-zero mass
    integral = np.trapezoid(d.density, d.grid)
    assert integral == pytest.approx(1 - d.zero_mass, abs=1e-6)
    # Lanczos exhausts the Krylov space: the non-zero Ritz values are the eigenvalues
    keep = (d.weights[0] > 0) & (d.nodes[0] > 1e-9 * ev[0])
    nz = np.sort(d.nodes[0][keep])[::-1]
    np.testing.assert_allclose(nz, ev[:r], rtol=1e-8)


def _spread_batch(N=150, da=60, dg=30, seed=0):
    """One dense layer whose Fisher (rank N in P = da·dg) spans ~10 orders of magnitude."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, da)) * np.logspace(0, -5, da)
    g = rng.normal(size=(N, 1, dg)) * np.logspace(0, -4, dg)
    return fl.FactorBatch([a], [g])


@pytest.mark.parametrize("steps", [10, 20, 40])
def test_slq_zero_mass_with_fewer_steps_than_the_rank(steps):
    """Regression: with m < rank and a wide spectrum, the Ritz values of the null space
    sat above the zero threshold and the estimated zero mass read 0 (exact 0.917). The
    probes are now split into range and null-space parts (the Gram eigenpairs)."""
    b = _spread_batch()
    F = fl.FisherOperator(b)
    Fd = F.to_dense()
    n = Fd.shape[0]
    ev = np.linalg.eigvalsh(Fd)
    r = int(np.sum(ev > ev[-1] * n * np.finfo(float).eps * 10))
    d = fl.spectral_density(F, probes=8, steps=steps, rng=0)
    assert d.exact_zero_mass == pytest.approx(1 - r / n)
    P0 = np.eye(n) - np.linalg.pinv(Fd, rcond=1e-12) @ Fd
    assert abs(d.zero_mass - d.exact_zero_mass) <= 4 * _hutch_sigma(P0, 8) / n
    np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, atol=1e-12)
    # every node but the exact one at 0 approximates a non-zero eigenvalue
    nz = d.nodes[d.weights > 1e-14]
    nz = nz[nz != 0.0]
    assert nz.min() >= 0.5 * np.min(ev[ev > ev[-1] * n * np.finfo(float).eps * 10])
    integral = np.trapezoid(d.density, d.grid)
    assert integral == pytest.approx(1 - d.zero_mass, abs=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), N=st.integers(1, 5), K=st.integers(1, 2),
       T=st.integers(0, 3), steps=st.integers(1, 6))
def test_property_split_probe_quadrature_is_exact_per_probe(seed, N, K, T, steps):
    """Per probe v: n Σ_j w_j θ_j^i = vᵀ F^i v for i ≤ 2m − 1 when the range part's Krylov
    space has dimension ≥ m (the Gauss rule of the range part plus the exact node at 0);
    dense and conv (positional, T positions) blocks, Fisher operators and blocks."""
    rng = np.random.default_rng(seed)
    if T == 0:
        b = fl.FactorBatch([rng.normal(size=(N, 3)), rng.normal(size=(N, 4))],
                           [rng.normal(size=(N, K, 2)), rng.normal(size=(N, K, 3))])
    else:
        b = fl.FactorBatch([rng.normal(size=(N, T, 3))], [rng.normal(size=(N, K, T, 2))])
    for op in (fl.FisherOperator(b), fl.FisherOperator(b).diagonal_block(0)):
        Fd = op.to_dense()
        n = Fd.shape[0]
        d = fl.spectral_density(op, probes=3, steps=steps, rng=seed)
        probe_rng = np.random.default_rng(seed)
        rank = np.linalg.matrix_rank(Fd)
        m = min(steps, rank)  # the range part's Krylov space has dimension ≤ rank
        for p in range(3):
            v = probe_rng.choice(np.array([-1.0, 1.0]), size=n)
            for i in range(0, 2 * m):
                exact = v @ np.linalg.matrix_power(Fd, i) @ v
                got = n * np.sum(d.weights[p] * d.nodes[p] ** i)
                scale = n * np.linalg.norm(Fd, 2) ** i
                assert got == pytest.approx(exact, abs=1e-8 * scale), (p, i)
        assert d.exact_zero_mass == pytest.approx(1 - rank / n)


@settings(max_examples=8)
@given(seed=st.integers(0, 10**6), n=st.integers(3, 30))
def test_property_slq_exact_on_known_spectra(seed, n):
    """A diagonal matrix with known spectrum: Rademacher probes see every eigenvalue with
    weight exactly 1/n, so each moment (degree ≤ 2m − 1) is exact."""
    lam = np.random.default_rng(seed).uniform(0.1, 10, size=n)
    Q, _ = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(n, n)))
    d = fl.spectral_density(np.diag(lam), probes=2, steps=n, rng=seed)
    for j in range(4):
        assert d.moment(j) == pytest.approx(np.sum(lam**j), rel=1e-8)
    # rotated: unbiased, within 4σ
    A = (Q * lam) @ Q.T
    p = 40
    d = fl.spectral_density(A, probes=p, steps=n, rng=seed)
    for j in (1, 2):
        Aj = np.linalg.matrix_power(A, j)
        assert abs(d.moment(j) - np.trace(Aj)) <= 4 * _hutch_sigma(Aj, p) + 1e-9


def _dense_inv(op, lam, rule):
    n = op.shape[0]
    return op.solve(np.eye(n), lam, rule=rule)


@pytest.mark.parametrize("name,rule", [("KFAC", "factor"), ("KFAC", "pi"), ("KFAC", "exact"),
                                       ("KPSVD", "factor"), ("EKFAC", "exact"),
                                       ("Diagonal", "exact"), ("BlockExact", "exact"),
                                       ("LowRank", "exact")])
def test_inverse_sqrt_map_squares_to_the_inverse(name, rule):
    from fimlab.approx import build_approximation

    b = _batch(N=5)
    op = build_approximation(name, b)
    lam = 0.2
    S = inverse_sqrt_map(op, lam, rule)(np.eye(op.shape[0]))
    np.testing.assert_allclose(S, S.T, atol=1e-12)
    np.testing.assert_allclose(S @ S, _dense_inv(op, lam, rule), atol=1e-10)


def test_preconditioned_density():
    b = _batch(N=8)
    F = fl.FisherOperator(b)
    lam = 0.1
    # preconditioned by F itself: the identity
    d = fl.spectral_density(F, probes=3, steps=5, rng=0, preconditioner=F, damping=lam)
    np.testing.assert_allclose(d.nodes[d.weights > 1e-12], 1.0, rtol=1e-9)
    # KFAC (rule exact): moments vs the dense F̃_λ⁻¹F_λ, and extremes vs
    # preconditioned_spectrum (an independent Lanczos in the F_λ inner product)
    K = fl.KFAC(b)
    Fl = F.to_dense() + lam * np.eye(F.shape[0])
    B = K.solve(Fl, lam, rule="exact")
    p = 30
    d = fl.spectral_density(F, probes=p, steps=40, rng=2, preconditioner=K, damping=lam,
                            rule="exact")
    Sd = inverse_sqrt_map(K, lam, "exact")(np.eye(F.shape[0]))
    Sym = Sd @ Fl @ Sd
    for j in (1, 2):
        assert abs(d.moment(j) - np.trace(np.linalg.matrix_power(B, j))) <= \
            4 * _hutch_sigma(np.linalg.matrix_power(Sym, j), p) + 1e-9
    ev = np.sort(np.linalg.eigvals(B).real)
    assert d.nodes.max() == pytest.approx(ev[-1], rel=1e-8)
    assert d.nodes.min() == pytest.approx(ev[0], rel=1e-8)


def test_preconditioned_density_refusals():
    b = _batch(N=8)
    F = fl.FisherOperator(b)
    for bad in (fl.KPSVD(b, rank=2), fl.Deflation(b), fl.LowRankPlusDiagonal(b, k=2)):
        with pytest.raises(ShapeError, match="inverse square root"):
            fl.spectral_density(F, preconditioner=bad, damping=0.1, rng=0)
    T = fl.TwoLevel(fl.KFAC(b), coarse_space="nicolaides", batch=b, damping=0.1)
    with pytest.raises(ShapeError, match="two-level"):
        fl.spectral_density(F, preconditioner=T, damping=0.1, rng=0)
    with pytest.raises(ShapeError, match="damping"):
        fl.spectral_density(F, preconditioner=fl.KFAC(b), rng=0)


def test_spectral_density_bad_inputs():
    b = _batch()
    F = fl.FisherOperator(b)
    for kw in ({"probes": 0}, {"steps": 0}, {"probes": 1.5}, {"sigma": 0.0}):
        with pytest.raises(ShapeError):
            fl.spectral_density(F, rng=0, **kw)
    with pytest.raises(TypeError, match="rng"):
        fl.spectral_density(F, rng=None)
    with pytest.raises(TypeError):
        fl.spectral_density("F", rng=0)
    with pytest.raises(ShapeError, match="outliers"):
        fl.spectral_density(fl.KFAC(b), rng=0, outliers=2)


def test_densities_of_approximations():
    """Approximations' densities: KFAC's eigenvalues are products of factor eigenvalues."""
    b = _batch(N=10)
    K = fl.KFAC(b)
    d = fl.spectral_density(K, probes=4, steps=50, rng=0)
    A, G = K.factors[0]
    A1, G1 = K.factors[1]
    ev = np.concatenate([np.outer(np.linalg.eigvalsh(A), np.linalg.eigvalsh(G)).ravel(),
                         np.outer(np.linalg.eigvalsh(A1), np.linalg.eigvalsh(G1)).ravel()])
    assert d.nodes.max() == pytest.approx(ev.max(), rel=1e-9)
    assert d.moment(1) == pytest.approx(ev.sum(), rel=0.3)


# -- trace and diagonal estimators ------------------------------------------------------------
def test_hutchinson_unbiased_and_variance():
    b = _batch(N=6)
    F = fl.FisherOperator(b)
    Fd = F.to_dense()
    tr = np.trace(Fd)
    p = 50
    est, se = fl.spectral.hutchinson(F, probes=p, rng=3)
    assert abs(est - tr) <= 4 * _hutch_sigma(Fd, p)
    assert 0.3 < se / _hutch_sigma(Fd, p) < 3  # the reported error is the stated one
    assert fl.spectral.hutchinson(F, probes=1, rng=0)[1] != fl.spectral.hutchinson(F, probes=1, rng=0)[1]  # nan


def test_hutchpp_and_xtrace():
    b = _batch(N=2)  # rank 4
    F = fl.FisherOperator(b)
    tr = F.trace()
    assert fl.spectral.hutchpp(F, matvecs=15, rng=0) == pytest.approx(tr, rel=1e-10)
    est, se = fl.spectral.xtrace(F, matvecs=12, rng=0)
    assert est == pytest.approx(tr, rel=1e-10) and se < 1e-10 * tr
    b = _batch(N=12)
    F = fl.FisherOperator(b)
    Fd = F.to_dense()
    ev = np.linalg.eigvalsh(Fd)[::-1]
    m = 30
    bound = np.sqrt(4 / (m // 3) * np.sum(ev[m // 3:] ** 2))  # Hutch++ std bound
    assert abs(fl.spectral.hutchpp(F, matvecs=m, rng=1) - np.trace(Fd)) <= 4 * bound
    est, se = fl.spectral.xtrace(F, matvecs=m, rng=1)
    assert abs(est - np.trace(Fd)) <= 4 * bound
    for f, kw in ((fl.spectral.hutchpp, {"matvecs": 2}), (fl.spectral.xtrace, {"matvecs": 3}),
                  (fl.spectral.hutchinson, {"probes": 0})):
        with pytest.raises(ShapeError):
            f(F, rng=0, **kw)


def test_diagonal_estimate():
    b = _batch(N=6)
    F = fl.FisherOperator(b)
    Fd = F.to_dense()
    p = 60
    d, se = fl.spectral.diagonal_estimate(F, probes=p, rng=0)
    sig = np.sqrt((np.sum(Fd**2, axis=1) - np.diag(Fd) ** 2) / p)
    assert np.all(np.abs(d - np.diag(Fd)) <= 4 * sig + 1e-14)
    # the exact diagonal is fl.DiagonalFisher
    np.testing.assert_allclose(fl.DiagonalFisher(b).diagonal(), np.diag(Fd), atol=1e-14)


def test_study_spectra(tmp_path):
    import json

    from fimlab.study import run_study

    res = run_study({"iterations": 0, "n_samples": 120, "batch_size": 40, "solver": "exact",
                     "methods": ["KFAC", "EKFAC", "Deflation", "LowRank"], "spectra": True,
                     "spectra_probes": 2, "spectra_steps": 12, "sizes": [64, 6, 10]},
                    out_dir=tmp_path, progress=False, verbose=False)
    for f in ("spectra.csv", "spectra.json", "spectra_it0.png"):
        assert (tmp_path / f).is_file()
    recs = json.loads((tmp_path / "spectra.json").read_text())
    assert {r["block"] for r in recs} == {0, 1, "all"}
    fisher = [r for r in recs if r["method"] == "Fisher"]
    assert len(fisher) == 3 and all(r["outliers"] for r in fisher)
    # Deflation's preconditioned density is left out, with the reason
    skipped = [r for r in recs if r["method"] == "Deflation" and r["kind"] == "preconditioned"]
    assert skipped and all("inverse square root" in r["skipped"] for r in skipped)
    ok = [r for r in recs if r["method"] == "EKFAC" and r["kind"] == "preconditioned"]
    assert len(ok) == 3 and all(r["lambda_min"] > 0 for r in ok)
    assert res.spectra and len(res.spectra) == len(recs)
    from fimlab.study import _normalise

    for bad in ({"spectra": "yes"}, {"spectra_probes": 0}):
        with pytest.raises(ShapeError):
            _normalise(bad)
