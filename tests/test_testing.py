"""fimlab.testing checked: each strategy produces what it claims, each oracle agrees with a
second naive computation, and assert_operator_close fails on wrong operators."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
from hypothesis import find, given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab.backend import array_namespace, kron, library_name, to_numpy
from fimlab.operators import CurvatureOperator
from fimlab.testing import (
    SMALL_NETS,
    assert_operator_close,
    default_tolerances,
    make_targets,
    oracles,
    rtol_for,
    small_net,
)
from fimlab.testing import strategies as fst

EPS64 = np.finfo(np.float64).eps


def _eps(dtype):
    return float(np.finfo(np.dtype(str(dtype).rsplit(".", 1)[-1])).eps)


# == strategies ===========================================================================
@pytest.mark.parametrize("max_condition", [1.0, 10.0, 1e3, 1e6])
@given(data=st.data())
def test_spd_matrices_are_spd_within_the_condition_bound(max_condition, data):
    dtype = data.draw(fst.dtypes())
    if dtype == "float32" and max_condition > 1e3:
        dtype = "float64"
    n = data.draw(st.integers(1, 7))
    M = data.draw(fst.spd_matrices(n=n, max_condition=max_condition, dtype=dtype))
    assert M.shape == (n, n) and M.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(M, M.T)  # exactly symmetric
    w = np.linalg.eigvalsh(M.astype(np.float64))
    assert w.min() > 0
    assert w.max() / w.min() <= max_condition
    assert np.linalg.cond(M.astype(np.float64)) <= max_condition * (1 + 1e-12)


@given(data=st.data())
def test_psd_matrices_have_the_requested_rank(data):
    n = data.draw(st.integers(1, 7))
    r = data.draw(st.integers(0, n))
    dtype = data.draw(fst.dtypes())
    M = data.draw(fst.psd_matrices(n=n, rank=r, max_condition=100.0, dtype=dtype))
    assert M.shape == (n, n) and M.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(M, M.T)
    M = M.astype(np.float64)
    s = np.linalg.svd(M, compute_uv=False)
    norm = s[0] if n else 0.0
    if r == 0:
        np.testing.assert_array_equal(M, 0.0)
        return
    # r singular values in [‖M‖/κ, ‖M‖], the rest at the level of rounding
    assert s[r - 1] >= norm / 100.0 * (1 - 1e-6)
    assert np.all(s[r:] <= 20 * n * _eps(dtype) * norm)
    assert np.linalg.matrix_rank(M, tol=np.sqrt(_eps(dtype)) * norm) == r
    assert np.linalg.eigvalsh(M).min() >= -20 * n * _eps(dtype) * norm


@given(data=st.data())
def test_psd_matrices_any_rank_and_strategy_arguments(data):
    M = data.draw(fst.psd_matrices(n=st.integers(2, 4)))
    assert 2 <= M.shape[0] <= 4
    assert np.linalg.eigvalsh(M).min() >= -1e-12 * max(1.0, np.abs(M).max())


@pytest.mark.parametrize("factors", ["spd", "psd", "symmetric", "general"])
@given(data=st.data())
def test_kronecker_products_reproduce_their_factors_exactly(factors, data):
    dtype = data.draw(fst.dtypes())
    case = data.draw(fst.kronecker_products(factors=factors, dtype=dtype, max_condition=50.0))
    (A, G), = case.terms
    d_a, d_g = case.d_a, case.d_g
    M = case.matrix
    assert M.shape == (d_a * d_g,) * 2 and M.dtype == A.dtype == G.dtype == np.dtype(dtype)
    assert A.shape == (d_a, d_a) and G.shape == (d_g, d_g) and case.rank == 1
    # entry by entry, the definition of the Kronecker product (bit for bit)
    for i in range(d_a):
        for j in range(d_a):
            np.testing.assert_array_equal(M[i * d_g:(i + 1) * d_g, j * d_g:(j + 1) * d_g],
                                          A[i, j] * G)
    A64, G64 = A.astype(np.float64), G.astype(np.float64)
    if factors == "spd":
        assert np.linalg.eigvalsh(A64).min() > 0 and np.linalg.eigvalsh(G64).min() > 0
        assert np.linalg.cond(A64) <= 50.0 and np.linalg.cond(G64) <= 50.0
    if factors == "psd":
        for F in (A64, G64):
            assert np.linalg.eigvalsh(F).min() >= -50 * _eps(dtype) * np.abs(F).max()
            assert np.linalg.matrix_rank(F, tol=np.sqrt(_eps(dtype)) * np.abs(F).max()) >= 1
    if factors != "general":
        np.testing.assert_array_equal(A, A.T)
        np.testing.assert_array_equal(G, G.T)


@given(data=st.data())
def test_kronecker_sums_reproduce_their_terms_and_have_rearranged_rank_r(data):
    r = data.draw(st.integers(1, 4))
    case = data.draw(fst.kronecker_sums(d_a=st.integers(1, 3), d_g=st.integers(1, 3), rank=r))
    assert case.rank == r
    # the same sum, another code path (fimlab.backend.kron), in the same order: bit for bit
    total = None
    for A, G in case.terms:
        K = kron(A, G)
        total = K if total is None else total + K
    np.testing.assert_array_equal(total, case.matrix)
    Rm = oracles.rearrange(case.matrix, case.d_a, case.d_g)
    s = np.linalg.svd(Rm, compute_uv=False)
    # vec of a symmetric d × d matrix lives in a space of dimension d(d+1)/2
    expected = min(r, case.d_a * (case.d_a + 1) // 2, case.d_g * (case.d_g + 1) // 2)
    assert np.linalg.matrix_rank(Rm, tol=1e-9 * s[0]) == expected


@pytest.mark.parametrize("kind", ["psd", "symmetric", "general"])
@given(data=st.data())
def test_grid_matrices(kind, data):
    case = data.draw(fst.grid_matrices(kind=kind))
    n = case.d_a * case.d_g
    assert case.matrix.shape == (n, n)
    if kind != "general":
        np.testing.assert_array_equal(case.matrix, case.matrix.T)
    if kind == "psd":
        assert np.linalg.eigvalsh(case.matrix).min() >= -1e-12


@settings(max_examples=15)
@given(data=st.data())
def test_factor_batches_have_the_declared_shapes_dtypes_and_fisher(data):
    sizes = data.draw(fst.layer_sizes(max_layers=3, max_width=4))
    fisher = data.draw(fst.fisher_types())
    N = data.draw(st.integers(1, 5))
    S = data.draw(st.integers(1, 3))
    dtype = data.draw(fst.dtypes())
    b = data.draw(fst.factor_batches(n_samples=N, layer_sizes=sizes, fisher=fisher,
                                     mc_samples=S, dtype=dtype))
    K = {"exact": sizes[-1], "mc": S, "empirical": 1}[fisher]
    assert isinstance(b, fl.FactorBatch) and b.fisher == fisher
    assert b.n_layers == len(sizes) - 1 and b.n_samples == N and b.n_vectors == K
    for l in range(b.n_layers):
        assert b.a[l].shape == (N, sizes[l] + 1) and b.g[l].shape == (N, K, sizes[l + 1])
        assert b.a[l].dtype == b.g[l].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(b.a[l][:, -1], 1.0)  # the bias column
    # the empirical batch is the per-sample loss gradient: its rows have the loss's scale
    assert all(np.all(np.isfinite(g)) for g in b.g)


@settings(max_examples=15)
@given(data=st.data())
def test_factor_batches_with_dead_units_and_one_sample(data):
    N = data.draw(st.sampled_from([1, 4]))
    b = data.draw(fst.factor_batches(n_samples=N, dead_units=True))
    assert b.n_samples == N and b.n_layers >= 2
    dead = [(l, j) for l in range(b.n_layers - 1) for j in range(b.g[l].shape[2])
            if np.all(b.a[l + 1][:, j] == 0.0)]
    assert dead, "no dead unit"
    for l, j in dead:  # a dead ReLU unit gets no gradient either
        np.testing.assert_array_equal(b.g[l][:, :, j], 0.0)
    # the Fisher has the corresponding zero rows: the unit's incoming weights and the
    # next layer's weights from it are invisible
    F = fl.FisherOperator(b).to_dense()
    l, j = dead[0]
    o = b.offsets
    idx = o[l] + np.arange(b.a[l].shape[1]) * b.g[l].shape[2] + j  # rows of W_l[j, :]
    np.testing.assert_array_equal(F[idx], 0.0)


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
@settings(max_examples=10)
@given(data=st.data())
def test_mlps_with_targets_for_each_likelihood(likelihood, data):
    dtype = data.draw(fst.dtypes())
    case = data.draw(fst.mlps(likelihood=likelihood, n_samples=st.integers(1, 5),
                              dtype=dtype))
    net, X, y = case
    N, C = X.shape[0], net.layer_sizes[-1]
    assert X.shape == (N, net.layer_sizes[0]) and X.dtype == np.dtype(dtype)
    assert net.likelihood.name == likelihood and net.params[0].dtype == np.dtype(dtype)
    if likelihood == "categorical":
        assert y.shape == (N,) and np.all((0 <= y) & (y < C))
    elif likelihood == "bernoulli":
        assert y.shape == (N, C) and set(np.unique(y)) <= {0.0, 1.0}
    else:
        assert y.shape == (N, C)
    assert np.isfinite(float(net.loss(X, y)))
    # biases are non-zero (no ReLU sits on its kink for a zero input)
    assert all(np.any(W[:, -1] != 0) for W in net.params)


@given(lam=fst.dampings(1e-5, 10.0), rule1=fst.damping_rules(1), rule2=fst.damping_rules(2))
def test_dampings_and_rules(lam, rule1, rule2):
    assert 1e-5 <= lam <= 10.0 and np.isfinite(lam)
    assert rule1 in ("factor", "pi", "exact") and rule2 in ("factor", "exact")


def test_strategy_arguments_are_validated():
    from hypothesis.errors import InvalidArgument

    for bad in (lambda: fst.spd_matrices(n=0), lambda: fst.spd_matrices(max_condition=0.5),
                lambda: fst.dampings(0.0, 1.0), lambda: fst.layer_sizes(min_layers=0),
                lambda: fst.mlps(xp=pytest.importorskip("torch"))):
        with pytest.raises(InvalidArgument):
            bad()
    with pytest.raises(InvalidArgument, match="dtype"):
        find(fst.spd_matrices(n=2, dtype="int8"), lambda M: True)


# -- array namespaces --------------------------------------------------------------------
def _namespaces():
    return [pytest.param("array_api_strict", id="array_api_strict"),
            pytest.param("torch", id="torch"),
            pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]


def _xp_and_device(name):
    if name == "array_api_strict":
        import array_api_strict

        return array_api_strict, array_api_strict.Device("device1")
    if name == "cupy":
        try:
            with fl.use_backend("cupy"):
                import cupy
        except fl.BackendError as exc:  # not installed, or no GPU: the CPU suite skips it
            pytest.skip(f"CuPy backend unavailable: {exc}")
        return cupy, None
    torch = pytest.importorskip("torch")
    return torch, None


@pytest.mark.parametrize("name", _namespaces())
@settings(max_examples=5)
@given(data=st.data())
def test_strategies_respect_the_array_namespace(name, data):
    xp, device = _xp_and_device(name)
    M = data.draw(fst.spd_matrices(n=3, xp=xp, device=device, dtype="float32"))
    assert library_name(array_namespace(M)).endswith(name) or name in type(M).__module__
    assert "float32" in str(M.dtype)
    assert np.linalg.eigvalsh(to_numpy(M).astype(np.float64)).min() > 0
    case = data.draw(fst.kronecker_sums(d_a=2, d_g=2, rank=2, xp=xp, device=device))
    assert name in type(case.matrix).__module__
    assert all(name in type(A).__module__ for A, _ in case.terms)
    # still exact after the move: the host Kronecker sum of the moved factors
    host = sum(np.kron(to_numpy(A), to_numpy(G)) for A, G in case.terms)
    np.testing.assert_array_equal(host, to_numpy(case.matrix))
    b = data.draw(fst.factor_batches(n_samples=3, layer_sizes=[2, 3, 2], xp=xp, device=device))
    assert name in type(b.a[0]).__module__ and name in type(b.g[1]).__module__
    if device is not None:
        assert b.a[0].device == device and M.device == device


@settings(max_examples=3)
@given(data=st.data())
def test_mlps_on_array_api_strict(data):
    import array_api_strict as xps

    dev = xps.Device("device1")
    net, X, y = data.draw(fst.mlps(layer_sizes=[3, 4, 2], xp=xps, device=dev))
    assert type(X).__module__.startswith("array_api_strict") and X.device == dev
    with fl.use_backend("array_api_strict", dev):
        b = fl.factor_batch(net, X, fisher="exact")
    assert b.device == dev


# == oracles against a second naive computation ==============================================
_net = small_net  # SMALL_NETS[i] with perturbed (non-zero) biases


@pytest.mark.parametrize("i", range(len(SMALL_NETS)))
def test_dense_fisher_from_rows_equals_finite_differences(i, rng):
    net = _net(i)
    N = 4
    X = rng.normal(size=(N, net.layer_sizes[0]))
    y = make_targets(net.likelihood.name, N, net.layer_sizes[-1], rng)
    for fisher in ("exact", "empirical"):
        b = fl.factor_batch(net, X, y, fisher=fisher)
        F_rows = oracles.dense_fisher(b)
        F_fd = oracles.finite_difference_fisher(net, X, y, fisher=fisher)
        np.testing.assert_allclose(F_rows, F_fd, rtol=1e-6, atol=1e-8)
    # the empirical rows are the per-sample loss gradients themselves
    rows = oracles.jacobian_rows(fl.factor_batch(net, X, y, fisher="empirical"))
    np.testing.assert_allclose(rows[:, 0], oracles.per_sample_loss_gradients(net, X, y),
                               rtol=1e-6, atol=1e-8)


def test_finite_difference_fisher_errors():
    net = fl.MLP([2, 2], likelihood="gaussian")
    with pytest.raises(fl.ShapeError, match="targets"):
        oracles.finite_difference_fisher(net, np.ones((2, 2)), fisher="empirical")
    with pytest.raises(fl.UnknownNameError, match="exact"):
        oracles.finite_difference_fisher(net, np.ones((2, 2)), fisher="mc")


@settings(max_examples=15)
@given(b=fst.factor_batches(n_samples=st.integers(1, 4), layer_sizes=fst.layer_sizes(
    max_layers=2, max_width=3)))
def test_dense_kfac_equals_the_double_sum_over_samples(b):
    # A ⊗ G = ((1/N) Σ_n ā_n ā_nᵀ) ⊗ ((1/N) Σ_m G_m) = (1/N²) Σ_n Σ_m (ā_n ā_nᵀ) ⊗ G_m
    blocks = []
    N = b.n_samples
    for a, g in zip(b.a, b.g):
        d = a.shape[1] * g.shape[2]
        B = np.zeros((d, d))
        for n in range(N):
            for m in range(N):
                Gm = sum(np.outer(g[m, k], g[m, k]) for k in range(g.shape[1]))
                B += np.kron(np.outer(a[n], a[n]), Gm)
        blocks.append(B / N**2)
    np.testing.assert_allclose(oracles.dense_kfac(b), scipy.linalg.block_diag(*blocks),
                               rtol=1e-12, atol=1e-14)
    if N == 1:  # one sample: KFAC is the exact block diagonal of the Fisher
        F = oracles.dense_fisher(b)
        mask = scipy.linalg.block_diag(*[np.ones((x.shape[0],) * 2) for x in blocks]) > 0
        np.testing.assert_allclose(oracles.dense_kfac(b), np.where(mask, F, 0.0),
                                   rtol=1e-12, atol=1e-14)


@given(case=fst.grid_matrices(kind="general"))
def test_rearrange_by_loops_equals_the_index_formula(case):
    M, d_a, d_g = case
    R = oracles.rearrange(M, d_a, d_g)
    # R[l·d_a + k, j·d_g + i] = (M_kl)_ij = M[k·d_g + i, l·d_g + j]
    for k in range(d_a):
        for l in range(d_a):
            for i in range(d_g):
                for j in range(d_g):
                    assert R[l * d_a + k, j * d_g + i] == M[k * d_g + i, l * d_g + j]
    np.testing.assert_array_equal(R, fl.kron.rearrange(M, d_a, d_g))


def _nearest_kronecker_als(M, d_a, d_g, iters=500):
    """Brute-force rank-one nearest Kronecker product by alternating least squares on the
    blocks (no rearrangement, no SVD): A_kl = ⟨M_kl, G⟩/‖G‖², G = Σ A_kl M_kl / ‖A‖²."""
    blocks = [[M[k * d_g:(k + 1) * d_g, l * d_g:(l + 1) * d_g] for l in range(d_a)]
              for k in range(d_a)]
    G = sum(blocks[k][k] for k in range(d_a)) + 1e-3 * np.eye(d_g)
    A = np.zeros((d_a, d_a))
    for _ in range(iters):
        A = np.array([[np.sum(blocks[k][l] * G) for l in range(d_a)] for k in range(d_a)])
        A /= np.sum(G * G)
        G = sum(A[k, l] * blocks[k][l] for k in range(d_a) for l in range(d_a)) / np.sum(A * A)
    return np.kron(A, G)


@settings(max_examples=15)
@given(case=fst.grid_matrices(d_a=st.integers(1, 3), d_g=st.integers(1, 3), kind="psd"))
def test_dense_kpsvd_rank_one_equals_alternating_least_squares(case):
    M, d_a, d_g = case
    if np.linalg.norm(M) == 0:
        return
    ((A, G),), approx = oracles.dense_kpsvd(M, d_a, d_g, rank=1)
    np.testing.assert_allclose(approx, np.kron(A, G), rtol=1e-14, atol=1e-15)
    ref = _nearest_kronecker_als(M, d_a, d_g)
    s = np.linalg.svd(oracles.rearrange(M, d_a, d_g), compute_uv=False)
    if len(s) > 1 and s[1] > (1 - 1e-2) * s[0]:
        return  # no gap: the nearest Kronecker product is not unique
    np.testing.assert_allclose(approx, ref, rtol=1e-6, atol=1e-8 * np.abs(M).max())
    # a PSD matrix: the leading factors are PSD (sign rule)
    assert np.linalg.eigvalsh(A).min() >= -1e-10 * np.abs(A).max()
    assert np.linalg.eigvalsh(G).min() >= -1e-10 * np.abs(G).max()


@given(case=fst.kronecker_sums(d_a=st.integers(1, 3), d_g=st.integers(1, 3),
                               factors="symmetric"), data=st.data())
def test_dense_kpsvd_recovers_sums_and_is_optimal(case, data):
    M, terms, d_a, d_g = case
    r_max = min(d_a * d_a, d_g * d_g)
    r = min(case.rank, r_max)
    _, approx = oracles.dense_kpsvd(M, d_a, d_g, rank=r)
    np.testing.assert_allclose(approx, M, rtol=1e-9, atol=1e-10 * np.abs(M).max())
    # Eckart–Young: truncating to k terms leaves Σ_{i>k} σ_i² (σ² from the eigenvalues of
    # R Rᵀ, not from an SVD), and perturbing the factors only makes it worse
    k = data.draw(st.integers(1, r))
    tk, approx_k = oracles.dense_kpsvd(M, d_a, d_g, rank=k)
    Rm = oracles.rearrange(M, d_a, d_g)
    sig2 = np.sort(np.clip(np.linalg.eigvalsh(Rm @ Rm.T), 0, None))[::-1]
    err = np.linalg.norm(M - approx_k) ** 2
    assert err == pytest.approx(sig2[k:].sum(), rel=1e-6, abs=1e-9 * sig2[0])
    rng = np.random.default_rng(data.draw(fst.seeds()))
    for _ in range(3):
        other = sum(np.kron(A + 1e-3 * rng.normal(size=A.shape), G) for A, G in tk)
        assert np.linalg.norm(M - other) ** 2 >= err - 1e-12 * sig2[0]


@pytest.mark.parametrize("rule", ["factor", "pi", "exact"])
@given(case=fst.kronecker_products(d_a=st.integers(1, 3), d_g=st.integers(1, 3)),
       lam=fst.dampings(1e-3, 10.0), seed=fst.seeds())
def test_dense_damped_inverse_rank_one_equals_linalg_solve(rule, case, lam, seed):
    (A, G), = case.terms
    d_a, d_g = case.d_a, case.d_g
    v = np.random.default_rng(seed).normal(size=d_a * d_g)
    Ia, Ig = np.eye(d_a), np.eye(d_g)
    if rule == "factor":
        X = np.kron(A + np.sqrt(lam) * Ia, G + np.sqrt(lam) * Ig)
    elif rule == "pi":
        pi = np.sqrt((np.trace(A) / d_a) / (np.trace(G) / d_g))
        X = np.kron(A + pi * np.sqrt(lam) * Ia, G + np.sqrt(lam) / pi * Ig)
    else:
        X = case.matrix + lam * np.eye(d_a * d_g)
    D = oracles.dense_damped_inverse(case.terms, lam, rule)
    np.testing.assert_allclose(D @ v, np.linalg.solve(X, v), rtol=1e-8,
                               atol=1e-10 * np.abs(np.linalg.solve(X, v)).max())


@pytest.mark.parametrize("signed", [False, True])
@given(data=st.data(), lam=fst.dampings(1e-2, 10.0), seed=fst.seeds())
def test_dense_damped_inverse_rank_two_factor_rule(signed, data, lam, seed):
    d_a, d_g = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    # the leading term SPD (as KFAC's), the second symmetric and possibly indefinite
    first = data.draw(fst.kronecker_products(d_a, d_g, factors="spd"))
    second = data.draw(fst.kronecker_products(d_a, d_g, factors="symmetric"))
    terms = first.terms + second.terms
    (A1, G1), (A2, G2) = terms
    A1d, G1d = A1 + lam * np.eye(d_a), G1 + lam * np.eye(d_g)
    if not signed:
        # |B| in the metric of S by the generalised eigenproblem B e = s S e (Eᵀ S E = I)
        def absolute(B, S):
            s, E = scipy.linalg.eigh(B, S)
            return S @ E @ np.diag(np.abs(s)) @ E.T @ S

        A2, G2 = absolute(A2, A1d), absolute(G2, G1d)
    X = np.kron(A1d, G1d) + np.kron(A2, G2)
    if np.linalg.cond(X) > 1e8:
        return  # (near-)singular signed sum: no meaningful reference
    v = np.random.default_rng(seed).normal(size=d_a * d_g)
    ref = np.linalg.solve(X, v)
    D = oracles.dense_damped_inverse(terms, lam, "factor", signed=signed)
    np.testing.assert_allclose(D @ v, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())


@given(case=fst.kronecker_sums(d_a=2, d_g=2, rank=2, factors="spd"), lam=fst.dampings(1e-2, 1.0))
def test_rank_two_abs_and_signed_agree_for_psd_second_terms(case, lam):
    a = oracles.dense_damped_inverse(case.terms, lam, "factor", signed=False)
    b = oracles.dense_damped_inverse(case.terms, lam, "factor", signed=True)
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * np.abs(b).max())


def test_dense_damped_inverse_errors():
    A = np.eye(2)
    with pytest.raises(fl.DampingError):
        oracles.dense_damped_inverse([(A, A)], 0.0)
    with pytest.raises(fl.DampingError, match="one Kronecker term"):
        oracles.dense_damped_inverse([(A, A), (A, A)], 0.1, "pi")
    with pytest.raises(fl.DampingError, match="unknown"):
        oracles.dense_damped_inverse([(A, A)], 0.1, "tikhonov")
    with pytest.raises(fl.ShapeError):
        oracles.dense_kpsvd(np.eye(4), 2, 2, rank=5)
    with pytest.raises(fl.ShapeError):
        oracles.rearrange(np.eye(5), 2, 2)


# == fimlab's operators against the oracles, with assert_operator_close ======================
@settings(max_examples=10)
@given(b=fst.factor_batches(n_samples=st.integers(1, 5), dtype=fst.dtypes()))
def test_fisher_and_kfac_operators_match_their_oracles(b):
    assert_operator_close(fl.FisherOperator(b), oracles.dense_fisher(b))
    assert_operator_close(fl.KFAC(b), oracles.dense_kfac(b))


@settings(max_examples=10)
@given(b=fst.factor_batches(n_samples=st.integers(1, 6), layer_sizes=[3, 3, 2]),
       rank=st.integers(1, 2))
def test_kpsvd_blocks_match_the_dense_kpsvd_oracle(b, rank):
    F = oracles.dense_fisher(b)
    blocks, spectra = [], []
    for l in range(b.n_layers):
        sl = slice(b.offsets[l], b.offsets[l + 1])
        d_a, d_g = b.a[l].shape[1], b.g[l].shape[2]
        s = np.linalg.svd(oracles.rearrange(F[sl, sl], d_a, d_g), compute_uv=False)
        blocks.append((F[sl, sl], d_a, d_g))
        spectra.append(s)
    # a rank every block has numerically, and a gap after it (else the truncation is
    # not unique and no oracle can pin it down)
    r = min([rank] + [int(np.sum(s > 1e-8 * s[0])) if s[0] > 0 else 0 for s in spectra])
    if r == 0 or any(len(s) > r and s[r] > (1 - 1e-3) * s[r - 1] for s in spectra):
        return
    K = fl.KPSVD(b, rank=r)
    for blk, (Fl, d_a, d_g) in zip(K.blocks, blocks):
        _, ref = oracles.dense_kpsvd(Fl, d_a, d_g, rank=r)
        assert_operator_close(blk, ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("rule", ["factor", "pi", "exact"])
@given(case=fst.kronecker_products(d_a=st.integers(1, 3), d_g=st.integers(1, 3)),
       lam=fst.dampings(1e-3, 10.0))
def test_kronecker_solves_match_the_damped_inverse_oracle(rule, case, lam):
    K = fl.KroneckerOperator(case.terms)
    ref = oracles.dense_damped_inverse(case.terms, lam, rule)
    assert_operator_close(lambda X: K.solve(X, lam, rule=rule), ref,
                          rtol=1e-7, atol=1e-12 * np.abs(ref).max())


# == assert_operator_close can fail ========================================================
class _Matrix(CurvatureOperator):
    """A dense matrix as a fimlab operator (any matrix: no symmetry check)."""

    def __init__(self, M):
        self.M, self.shape, self.dtype, self.xp = M, M.shape, M.dtype, np
        self.calls = 0

    def _matmat(self, X):
        return self.M @ X


class _Stateful(_Matrix):
    """Products drift by a relative 1e-13 per call: inside any tolerance, yet stateful."""

    def _matmat(self, X):
        self.calls += 1
        return (self.M @ X) * (1.0 + 1e-13 * self.calls)


class _WrongLeft(_Matrix):
    def rmatvec(self, u):
        return self.M @ u + 1e-3 * u

    def rmatmat(self, U):
        return self.M @ U + 1e-3 * U


def _spd(n, seed=0):
    B = np.random.default_rng(seed).normal(size=(n, n))
    return B @ B.T + n * np.eye(n)


def test_assert_operator_close_passes_for_every_kind_of_operator():
    M = _spd(6)
    assert_operator_close(_Matrix(M), M)
    assert_operator_close(M, M)
    assert_operator_close(lambda X: M @ X, M)
    assert_operator_close(fl.DenseOperator(M), fl.DenseOperator(M))
    assert_operator_close(fl.DenseOperator(M).to_scipy(), M)


@pytest.mark.parametrize("rel", [1e-6, 1e-3])
def test_assert_operator_close_fails_on_a_perturbed_operator(rel):
    M = _spd(6)
    E = np.zeros_like(M)
    E[2, 4] = E[4, 2] = rel * np.abs(M).max()  # symmetric: only the products can see it
    with pytest.raises(AssertionError, match="right product with a vector"):
        assert_operator_close(_Matrix(M + E), M)


def test_assert_operator_close_fails_on_a_stateful_operator():
    M = _spd(5)
    op = _Stateful(M)
    with pytest.raises(AssertionError, match="hidden state"):
        assert_operator_close(op, M)
    assert op.calls > 3  # the products themselves were within tolerance


def test_assert_operator_close_fails_on_a_non_symmetric_operator():
    rng = np.random.default_rng(3)
    Nm = rng.normal(size=(5, 5))
    # a fimlab operator is symmetric by contract (rmatvec = matvec): its left product
    # disagrees with the non-symmetric reference's
    with pytest.raises(AssertionError, match="left product"):
        assert_operator_close(_Matrix(Nm), Nm)
    # a callable has no left product: the symmetry test catches it
    with pytest.raises(AssertionError, match="symmetry"):
        assert_operator_close(lambda X: Nm @ X, Nm)
    # and it passes once declared non-symmetric
    assert_operator_close(lambda X: Nm @ X, Nm, symmetric=False)
    assert_operator_close(Nm, Nm, symmetric=False)


def test_assert_operator_close_fails_on_a_wrong_adjoint_shape_or_dense_form():
    M = _spd(4)
    with pytest.raises(AssertionError, match="left product"):
        assert_operator_close(_WrongLeft(M), M)
    with pytest.raises(AssertionError, match="shape"):
        assert_operator_close(_Matrix(_spd(3)), M)

    class BadDense(_Matrix):
        def to_dense(self, max_bytes=None):
            return self.M + 1e-3

    with pytest.raises(AssertionError, match="to_dense"):
        assert_operator_close(BadDense(M), M)
    with pytest.raises(AssertionError, match="right product"):
        assert_operator_close(lambda X: np.full_like(X, np.nan), M)


def test_tolerances_by_dtype():
    t64, t32 = default_tolerances("float64"), default_tolerances(np.float32)
    assert t64.rtol == pytest.approx(4 * np.sqrt(EPS64))
    assert t64.rtol < t32.rtol < 1e-2 and t64.atol < t32.atol
    assert rtol_for("float32", 10) == pytest.approx(10 * t32.rtol)


def test_float32_operator_against_float64_oracle():
    net = fl.MLP([4, 5, 3], activation="tanh", seed=1, dtype="float32")
    X = np.random.default_rng(0).normal(size=(20, 4)).astype("float32")
    b = fl.factor_batch(net, X)
    ref = oracles.dense_kfac(b)
    assert_operator_close(fl.KFAC(b), ref)  # default float32 tolerances
    with pytest.raises(AssertionError):
        assert_operator_close(fl.KFAC(b), ref * (1 + 1e-2))


@pytest.mark.parametrize("name", [pytest.param("array_api_strict"),
                                  pytest.param("cupy", marks=pytest.mark.gpu)])
def test_assert_operator_close_on_other_namespaces(name):
    xp, dev = _xp_and_device(name)
    M = _spd(4)
    A, G = _spd(2, 1), _spd(2, 2)
    op = fl.KroneckerOperator([(fl.backend.from_host(A, xp, device=dev),
                                fl.backend.from_host(G, xp, device=dev))])
    if dev is not None:
        assert op.device == dev
    assert_operator_close(op, np.kron(A, G))
    assert_operator_close(op, op.to_dense())  # a reference of the same namespace
    with pytest.raises(AssertionError):
        assert_operator_close(op, M)
    # a factor batch drawn on the namespace, against the oracle
    b = find(fst.factor_batches(n_samples=3, layer_sizes=[2, 3, 2], xp=xp, device=dev),
             lambda b: True)
    assert_operator_close(fl.FisherOperator(b), oracles.dense_fisher(b))
    assert_operator_close(fl.KFAC(b), oracles.dense_kfac(b))


# == Hypothesis stays optional ===============================================================
def test_fimlab_testing_imports_without_hypothesis():
    code = textwrap.dedent("""
        import sys
        sys.modules["hypothesis"] = None          # as if Hypothesis were not installed
        import numpy as np
        import fimlab.testing as ft
        assert "pytest" not in sys.modules
        ft.assert_operator_close(np.eye(3), np.eye(3))
        assert ft.oracles.dense_kfac is ft.dense_kfac
        try:
            import fimlab.testing.strategies
        except ImportError as err:
            print("ImportError:", err)
        else:
            raise SystemExit("strategies imported without Hypothesis")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert 'pip install "fimlab[test]"' in out.stdout
    assert "Hypothesis" in out.stdout


def test_importing_fimlab_testing_does_not_import_hypothesis():
    code = ("import sys, fimlab.testing; "
            "print('hypothesis' in sys.modules, 'fimlab.testing.strategies' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]
