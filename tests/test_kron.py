"""Kronecker algebra (fimlab.kron): identities, rearrangement, KPSVD, the matrix-free
products with R(F_i), the Gram route, the iterative SVDs, damped inverses (I1, PCG)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fimlab as fl
from fimlab import kron as K

SEEDS = st.integers(0, 2**31 - 1)
DIMS = st.integers(1, 4)


def _rng(seed):
    return np.random.default_rng(seed)


def _spd(rng, n, shift=1.0):
    X = rng.normal(size=(n, n))
    return X @ X.T / n + shift * np.eye(n)


def _sym(rng, n):
    X = rng.normal(size=(n, n))
    return X + X.T


def _vec(M):
    return M.ravel(order="F")


def _dense_R(a, g):
    """R(F_i) from the dense Fisher block (an independent route: per-sample Jacobians)."""
    F = fl.FisherOperator(fl.FactorBatch([a], [g])).to_dense()
    return K.rearrange(F, a.shape[1], g.shape[2])


def _layer(rng, m, Kk, d_a, d_g):
    a = rng.normal(size=(m, d_a))
    a[:, -1] = 1.0  # bias column, as in a real factor batch
    return a, rng.normal(size=(m, Kk, d_g))


# -- Kronecker identities (Hypothesis) ---------------------------------------------------
@given(SEEDS, DIMS, DIMS, DIMS, DIMS)
def test_mixed_product_rule(seed, p, q, r, s):
    rng = _rng(seed)
    A, C = rng.normal(size=(p, q)), rng.normal(size=(q, p))
    B, D = rng.normal(size=(r, s)), rng.normal(size=(s, r))
    lhs = K.kron(A, B) @ K.kron(C, D)
    np.testing.assert_allclose(lhs, np.kron(A @ C, B @ D), atol=1e-12)


@given(SEEDS, DIMS, DIMS, DIMS, st.integers(1, 12))
def test_vec_trick(seed, p, q, r, k):
    rng = _rng(seed)
    A, X, B = rng.normal(size=(p, q)), rng.normal(size=(q, r)), rng.normal(size=(r, p))
    np.testing.assert_allclose(K.vec(A @ X @ B), np.kron(B.T, A) @ _vec(X), atol=1e-12)
    # kron_matmat: (A ⊗ G) vec(V) = vec(G V Aᵀ), never forming A ⊗ G — for a vector,
    # one column, a few (one GEMM with transposes) and many (stacked products)
    Aq, Gq = rng.normal(size=(q, q)), rng.normal(size=(p, p))
    Xs = rng.normal(size=(q * p, k))
    np.testing.assert_allclose(K.kron_matmat(Aq, Gq, Xs), np.kron(Aq, Gq) @ Xs, atol=1e-12)
    np.testing.assert_allclose(K.kron_matmat(Aq, Gq, Xs[:, 0]), np.kron(Aq, Gq) @ Xs[:, 0],
                               atol=1e-12)


@given(SEEDS, DIMS, DIMS)
def test_kron_inverse(seed, n, m):
    rng = _rng(seed)
    A, B = _spd(rng, n), rng.normal(size=(m, m)) + 3 * m * np.eye(m)
    np.testing.assert_allclose(np.linalg.inv(K.kron(A, B)),
                               K.kron(np.linalg.inv(A), np.linalg.inv(B)), atol=1e-10)


@given(SEEDS, DIMS, DIMS)
def test_kron_eigenpairs_trace_det_logdet(seed, n, m):
    rng = _rng(seed)
    A, B = _spd(rng, n), _spd(rng, m)
    wa, Qa = np.linalg.eigh(A)
    wb, Qb = np.linalg.eigh(B)
    M = K.kron(A, B)
    for i in range(n):
        for j in range(m):
            x = np.kron(Qa[:, i], Qb[:, j])
            np.testing.assert_allclose(M @ x, wa[i] * wb[j] * x, atol=1e-10)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(M)), np.sort(np.outer(wa, wb).ravel()),
                               atol=1e-10)
    assert np.trace(M) == pytest.approx(np.trace(A) * np.trace(B), rel=1e-12)
    assert np.linalg.det(M) == pytest.approx(np.linalg.det(A) ** m * np.linalg.det(B) ** n,
                                             rel=1e-9)
    assert np.linalg.slogdet(M)[1] == pytest.approx(
        m * np.linalg.slogdet(A)[1] + n * np.linalg.slogdet(B)[1], rel=1e-10, abs=1e-10)


# -- rearrangement and KPSVD of dense matrices --------------------------------------------
@given(SEEDS, DIMS, DIMS)
def test_rearrangement_is_an_isometric_permutation(seed, d_a, d_g):
    M = _rng(seed).normal(size=(d_a * d_g, d_a * d_g))
    R = K.rearrange(M, d_a, d_g)
    assert R.shape == (d_a * d_a, d_g * d_g)
    assert np.linalg.norm(R) == pytest.approx(np.linalg.norm(M), rel=1e-14)
    np.testing.assert_array_equal(K.rearrange_inverse(R, d_a, d_g), M)
    # an explicit loop over the blocks (the definition)
    for k in range(d_a):
        for l in range(d_a):
            blk = M[k * d_g:(k + 1) * d_g, l * d_g:(l + 1) * d_g]
            np.testing.assert_array_equal(R[k + l * d_a], _vec(blk))


@given(SEEDS, DIMS, DIMS)
def test_rearrangement_of_a_kronecker_product(seed, d_a, d_g):
    rng = _rng(seed)
    A, G = rng.normal(size=(d_a, d_a)), rng.normal(size=(d_g, d_g))
    np.testing.assert_allclose(K.rearrange(np.kron(A, G), d_a, d_g), np.outer(_vec(A), _vec(G)),
                               atol=1e-14)
    # (R1): ‖M − B⊗C‖ = ‖R(M) − vec(B)vec(C)ᵀ‖
    M = rng.normal(size=(d_a * d_g,) * 2)
    assert np.linalg.norm(M - np.kron(A, G)) == pytest.approx(
        np.linalg.norm(K.rearrange(M, d_a, d_g) - np.outer(_vec(A), _vec(G))), rel=1e-12)


@given(SEEDS, st.integers(2, 4), st.integers(2, 4), st.integers(1, 3))
def test_exact_recovery_of_a_sum_of_kronecker_products(seed, d_a, d_g, r):
    rng = _rng(seed)
    M = sum(np.kron(rng.normal(size=(d_a, d_a)), rng.normal(size=(d_g, d_g))) for _ in range(r))
    res = K.kpsvd(M, d_a, d_g)
    assert res.rank == r
    np.testing.assert_allclose(sum(np.kron(A, G) for A, G in res.terms), M, atol=1e-10)
    np.testing.assert_allclose([np.linalg.norm(A) for A in res.A], 1.0, rtol=1e-12)


@given(SEEDS, st.integers(2, 4), st.integers(2, 4))
def test_eckart_young(seed, d_a, d_g):
    rng = _rng(seed)
    M = rng.normal(size=(d_a * d_g,) * 2)
    s = np.linalg.svd(K.rearrange(M, d_a, d_g), compute_uv=False)
    res = K.kpsvd(M, d_a, d_g)
    np.testing.assert_allclose(np.asarray(res.sigma), s[: res.rank], rtol=1e-12)
    for r in range(1, res.rank + 1):
        terms = K.kpsvd(M, d_a, d_g, rank=r).terms
        approx = sum(np.kron(A, G) for A, G in terms)
        err2 = np.linalg.norm(M - approx) ** 2
        assert err2 == pytest.approx(np.sum(s[r:] ** 2), rel=1e-9, abs=1e-10)
        # no nearby sum of r products does better: perturb the optimum's factors
        for _ in range(3):
            worse = sum(np.kron(A + 1e-2 * rng.normal(size=A.shape),
                                G + 1e-2 * rng.normal(size=G.shape)) for A, G in terms)
            assert np.linalg.norm(M - worse) ** 2 >= err2 - 1e-12


def test_nearest_kronecker_of_psd_matrix_is_psd(rng):
    a, g = _layer(rng, 30, 2, 4, 3)
    F = fl.FisherOperator(fl.FactorBatch([a], [g])).to_dense()
    A, G = K.nearest_kronecker(F, 4, 3)
    for X in (A, G):
        np.testing.assert_allclose(X, X.T, atol=1e-14)
        assert np.linalg.eigvalsh(X).min() >= -1e-12 * np.abs(X).max()
    s = np.linalg.svd(K.rearrange(F, 4, 3), compute_uv=False)
    assert np.linalg.norm(F - np.kron(A, G)) ** 2 == pytest.approx(np.sum(s[1:] ** 2), rel=1e-9)


def test_psd_sign_rule(rng):
    A, G = _spd(rng, 3), _spd(rng, 2)
    A2, G2 = K.psd_sign(-A, -G)
    np.testing.assert_array_equal(A2, A)
    np.testing.assert_array_equal(G2, G)
    A3, G3 = K.psd_sign(A, G)
    assert A3 is A and G3 is G
    # zero trace: the largest-magnitude entry decides
    Z = np.array([[1.0, -5.0], [-5.0, -1.0]])
    assert K.psd_sign(Z, G)[0][0, 1] == 5.0


# -- matrix-free R(F_i) products (R3) ---------------------------------------------------
@given(SEEDS, st.integers(1, 7), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))
def test_matrix_free_R_products_equal_explicit_R(seed, m, Kk, d_a, d_g):
    rng = _rng(seed)
    a, g = _layer(rng, m, Kk, d_a, d_g)
    R = _dense_R(a, g)
    op = K.RearrangedFisher(a, g)
    np.testing.assert_allclose(op.to_dense(), R, atol=1e-12)
    x, y = rng.normal(size=d_g * d_g), rng.normal(size=d_a * d_a)
    np.testing.assert_allclose(op.matvec(x), R @ x, atol=1e-11)
    np.testing.assert_allclose(op.rmatvec(y), R.T @ y, atol=1e-11)
    V = rng.normal(size=(2, d_g, d_g))  # stacks, non-symmetric operands
    out = K.rearranged_matvec(a, g, V)
    for c in range(2):
        np.testing.assert_allclose(_vec(out[c]), R @ _vec(V[c]), atol=1e-11)
    U = rng.normal(size=(2, d_a, d_a))
    out = K.rearranged_rmatvec(a, g, U)
    for c in range(2):
        np.testing.assert_allclose(_vec(out[c]), R.T @ _vec(U[c]), atol=1e-11)


def test_weighted_gram(rng):
    X = rng.normal(size=(9, 2, 4))
    w = rng.normal(size=9)
    ref = sum(w[n] * X[n].T @ X[n] for n in range(9))
    np.testing.assert_allclose(K.weighted_gram(X, w), ref, atol=1e-12)
    np.testing.assert_allclose(K.weighted_gram(X[:, 0, :], np.abs(w)),
                               X[:, 0, :].T @ np.diag(np.abs(w)) @ X[:, 0, :], atol=1e-12)
    np.testing.assert_array_equal(K.weighted_gram(X, np.zeros(9)), np.zeros((4, 4)))


# -- the exact Gram route ---------------------------------------------------------------
GRAM_CASES = [  # (m, K, d_a, d_g): Gram/explicit sides, K = 1 and K > 1
    (20, 1, 4, 3), (5, 2, 3, 4), (30, 3, 6, 2), (8, 1, 10, 9), (50, 4, 3, 3), (12, 3, 5, 5),
]


@pytest.fixture(params=["dense", "lanczos"])
def gram_route(request, monkeypatch):
    """Run a Gram-route test with the dense m × m eigenproblem and with Golub–Kahan in
    Gram coefficients (the default for m > 96), whatever m the test uses."""
    monkeypatch.setattr(K.RearrangedGram, "method", request.param)
    return request.param


@pytest.mark.parametrize("m,Kk,d_a,d_g", GRAM_CASES)
def test_gram_route_equals_svd_of_explicit_R(m, Kk, d_a, d_g, rng, gram_route):
    a, g = _layer(rng, m, Kk, d_a, d_g)
    R = _dense_R(a, g)
    U, s, Vh = np.linalg.svd(R)
    nrank = int(np.sum(s > 1e-9 * s[0]))
    gram = K.RearrangedGram(a, g)
    k = min(3, nrank)
    sig, w, d = gram.top(k)
    np.testing.assert_allclose(sig, s[:k], rtol=1e-10)
    terms = gram.terms(sig, w, d)
    best = (U[:, :k] * s[:k]) @ Vh[:k]
    approx = sum(np.outer(_vec(A), _vec(G)) for A, G in terms)
    np.testing.assert_allclose(approx, best, atol=1e-10 * s[0])
    # each term separately: σ_r u_r v_rᵀ (sign-free comparison)
    for r, (A, G) in enumerate(terms):
        np.testing.assert_allclose(np.outer(_vec(A), _vec(G)),
                                   s[r] * np.outer(U[:, r], Vh[r]), atol=1e-9 * s[0])
        np.testing.assert_allclose(A, A.T, atol=1e-13 * np.abs(A).max())
    # the leading factors are PSD (R4)
    A1, G1 = terms[0]
    assert np.linalg.eigvalsh(A1).min() >= -1e-10 * np.abs(A1).max()
    assert np.linalg.eigvalsh(G1).min() >= -1e-10 * np.abs(G1).max()
    # Golub–Kahan on the small problem gives the same triplets
    sl, wl, dl, rep = gram.lanczos(min(2, nrank))
    np.testing.assert_allclose(sl, s[: min(2, nrank)], rtol=1e-10)
    assert rep.converged


@pytest.mark.parametrize("m,Kk,d_a,d_g", GRAM_CASES)
def test_gram_route_cores(m, Kk, d_a, d_g, rng, gram_route):
    a, g = _layer(rng, m, Kk, d_a, d_g)
    R = _dense_R(a, g)
    s = np.linalg.svd(R, compute_uv=False)
    gram = K.RearrangedGram(a, g)
    # deflation core: the leading triplet of R − σ₁u₁v₁ᵀ is (σ₂, u₂, v₂)
    s1, w1, d1 = gram.top(1)
    s2, w2, d2 = gram.top(1, gram.core([(s1[0], w1[:, 0], d1[:, 0])]))
    assert s2[0] == pytest.approx(s[1] if s[1] > 1e-9 * s[0] else 0.0, rel=1e-9, abs=1e-12)
    # the KFAC residual core: R − vec(A_K) vec(G_K)ᵀ
    AK, GK = fl.kfac_factors(a, g)
    Rc = R - np.outer(_vec(AK), _vec(GK))
    Uc, sc, Vhc = np.linalg.svd(Rc)
    s3, w3, d3 = gram.top(1, gram.kfac_residual_core())
    assert s3[0] == pytest.approx(sc[0], rel=1e-9)
    A, G = gram.term(s3[0], w3[:, 0], d3[:, 0])
    np.testing.assert_allclose(np.outer(_vec(A), _vec(G)), sc[0] * np.outer(Uc[:, 0], Vhc[0]),
                               atol=1e-9 * s[0])


def test_gram_route_chunked_and_explicit_g_gram(rng):
    # K > 1, d_g² > m: the m·K Gram, in chunks, and the explicit-G_n Gram agree
    a, g = _layer(rng, 24, 5, 6, 6)
    ref = np.array([[np.sum((g[n] @ g[p].T) ** 2) for p in range(24)] for n in range(24)])
    gram = K.RearrangedGram(a, g)
    gram.chunk_bytes = 8 * 5 * 5 * 24 * 3  # three samples per chunk
    np.testing.assert_allclose(gram._g_gram(g), ref, rtol=1e-12)
    a, g = _layer(rng, 24, 9, 6, 6)  # d_g ≤ K²: the explicit G_n are cheaper
    ref = np.array([[np.sum((g[n] @ g[p].T) ** 2) for p in range(24)] for n in range(24)])
    np.testing.assert_allclose(K.RearrangedGram(a, g)._g_gram(g), ref, rtol=1e-12)


def test_gram_route_rank_deficiency(rng, gram_route):
    # duplicated samples: singular Gram matrices (Cholesky may fail: eigh fallback)
    a, g = _layer(rng, 4, 1, 7, 6)
    a, g = np.concatenate([a, a, a]), np.concatenate([g, g, g])
    R = _dense_R(a, g)
    s = np.linalg.svd(R, compute_uv=False)
    gram = K.RearrangedGram(a, g)
    sig, w, d = gram.top(6)
    assert gram.numerical_rank(6) == 4
    np.testing.assert_allclose(sig[:4], s[:4], rtol=1e-8)
    np.testing.assert_array_equal(sig[4:], 0.0)
    np.testing.assert_array_equal(w[:, 4:], 0.0)
    M = np.array([[1.0, 1.0], [1.0, 1.0]])  # exactly singular: the fallback
    L, kind = K._psd_factor(M, fl.backend.array_namespace(M))
    assert kind == "eigh"
    np.testing.assert_allclose(L @ L.T, M, atol=1e-14)
    # one output (d_g = 1): R(F_i) has rank one
    a, g = _layer(rng, 10, 1, 3, 1)
    assert K.RearrangedGram(a, g).numerical_rank(3) == 1


# -- Golub–Kahan in Gram coefficients (the default route for m > 96) ------------------
def _best_rank_k(R, k):
    U, s, Vh = np.linalg.svd(R)
    return (U[:, :k] * s[:k]) @ Vh[:k], s


@pytest.mark.parametrize("m,Kk,d_a,d_g", [(300, 1, 9, 7), (200, 2, 6, 8), (160, 1, 3, 30)])
def test_golub_kahan_at_large_m_equals_svd_of_explicit_R(m, Kk, d_a, d_g, rng):
    a, g = _layer(rng, m, Kk, d_a, d_g)
    gram = K.RearrangedGram(a, g)
    R = _dense_R(a, g)
    for k in (1, 2, 3):
        best, s = _best_rank_k(R, k)
        sig, w, d, rep = gram.golub_kahan(k)
        assert rep.converged and rep.iterations < m
        np.testing.assert_allclose(sig, s[:k], rtol=1e-10)
        # the weights give the triplets: σ_r u_r = Uᵀ w_r, σ_r v_r = Vᵀ d_r
        approx = sum(np.outer(_vec(a.T @ np.diag(w[:, r]) @ a),
                              _vec(sum(d[n, r] * g[n].T @ g[n] for n in range(m)))) / sig[r]
                     for r in range(k))
        np.testing.assert_allclose(approx, best, atol=1e-8 * s[0])
        # the default route of top() at this m is Golub–Kahan; it agrees with the dense one
        s_auto, w_auto, d_auto = gram.top(k)
        s_dense, _, _ = gram.top(k, method="dense")
        np.testing.assert_allclose(s_auto, s_dense, rtol=1e-10)
        terms = gram.terms(s_auto, w_auto, d_auto)
        np.testing.assert_allclose(sum(np.outer(_vec(A), _vec(G)) for A, G in terms), best,
                                   atol=1e-8 * s[0])
    # cores: the KFAC residual and a deflated R
    AK, GK = fl.kfac_factors(a, g)
    Rc = R - np.outer(_vec(AK), _vec(GK))
    best, sc = _best_rank_k(Rc, 1)
    s3, w3, d3 = gram.top(1, gram.kfac_residual_core(), method="lanczos")
    assert s3[0] == pytest.approx(sc[0], rel=1e-10)
    A, G = gram.term(s3[0], w3[:, 0], d3[:, 0])
    np.testing.assert_allclose(np.outer(_vec(A), _vec(G)), best, atol=1e-8 * sc[0])
    s1, w1, d1 = gram.top(1, method="lanczos")
    s2, _, _ = gram.top(1, gram.core([(s1[0], w1[:, 0], d1[:, 0])]), method="lanczos")
    assert s2[0] == pytest.approx(np.linalg.svd(R, compute_uv=False)[1], rel=1e-9)


def test_golub_kahan_falls_back_to_the_dense_route(rng):
    a, g = _layer(rng, 200, 1, 8, 8)
    gram = K.RearrangedGram(a, g)
    s, w, d, rep = gram.golub_kahan(3, max_steps=4)
    assert not rep.converged and rep.iterations == 4
    gram.max_steps = 4  # top() must not return unconverged triplets: the dense route
    sig, _, _ = gram.top(3)
    np.testing.assert_allclose(sig, np.linalg.svd(_dense_R(a, g), compute_uv=False)[:3],
                               rtol=1e-10)


def test_golub_kahan_breakdowns_give_exact_triplets(rng):
    # rank 3 (two distinct samples of a 2 x 2 layer ... repeated): an invariant subspace
    a, g = _layer(rng, 3, 1, 2, 2)
    a, g = np.concatenate([a] * 50), np.concatenate([g] * 50)
    gram = K.RearrangedGram(a, g)
    s_ref = np.linalg.svd(_dense_R(a, g), compute_uv=False)
    sig, w, d, rep = gram.golub_kahan(4)
    assert rep.breakdown and rep.converged
    np.testing.assert_allclose(sig[:3], s_ref[:3], rtol=1e-9)
    assert gram.numerical_rank(4) == 3
    # a zero batch: R = 0
    z = K.RearrangedGram(np.zeros((120, 3)), np.zeros((120, 1, 2)))
    sig, w, d, rep = z.golub_kahan(2)
    np.testing.assert_array_equal(sig, 0.0)
    assert rep.breakdown and rep.rank == 0


@given(SEEDS, st.integers(1, 40), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 3))
def test_golub_kahan_property(seed, m, Kk, d_a, d_g, k):
    """Golub–Kahan in Gram coefficients (forced at every size) gives the leading singular
    values of the explicit R(F_i) and the best rank-k approximation."""
    rng = _rng(seed)
    a, g = _layer(rng, m, Kk, d_a, d_g)
    R = _dense_R(a, g)
    s = np.linalg.svd(R, compute_uv=False)
    gram = K.RearrangedGram(a, g)
    sig, w, d = gram.top(k, method="lanczos")
    tol = gram.rank_rtol * s[0]
    nz = s[:k] > 10 * tol
    np.testing.assert_allclose(sig[: nz.sum()], s[:k][nz], rtol=1e-8)
    assert np.all(sig[nz.sum():] <= 10 * tol + 1e-300)


def test_top_unknown_method():
    a, g = _layer(_rng(0), 5, 1, 2, 2)
    with pytest.raises(fl.UnknownNameError, match="method of RearrangedGram.top"):
        K.RearrangedGram(a, g).top(1, method="arnoldi")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gram_of_rows(dtype, rng):
    Y = rng.normal(size=(37, 11)).astype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for arr in (Y, np.asfortranarray(Y), Y[::2]):  # BLAS syrk path and the fallback
        P = K.gram_of_rows(arr, 0.5)
        assert P.dtype == dtype
        np.testing.assert_allclose(P, 0.5 * arr.T.astype(np.float64) @ arr, rtol=rtol,
                                   atol=rtol * np.abs(arr).max() ** 2)
        np.testing.assert_array_equal(P, P.T)
    # signed weights through the two-update path agree with the explicit sum
    w, Y64 = rng.normal(size=37), Y.astype(np.float64)
    ref = sum(w[n] * np.outer(Y64[n], Y64[n]) for n in range(37))
    np.testing.assert_allclose(K.weighted_gram(Y64, w), ref, atol=1e-12 * 37)


def test_golub_kahan_on_array_api_strict():
    import array_api_strict as xs

    rng = _rng(3)
    a, g = _layer(rng, 130, 2, 5, 4)
    ref, _, _, _ = K.RearrangedGram(a, g).golub_kahan(2)
    gs = K.RearrangedGram(xs.asarray(a), xs.asarray(g))
    sig, w, d, rep = gs.golub_kahan(2)
    assert rep.converged
    np.testing.assert_allclose(sig, ref, rtol=1e-12)
    assert isinstance(w, type(xs.asarray(a)))
    np.testing.assert_allclose(K.gram_of_rows(xs.asarray(a)), a.T @ a, rtol=1e-12)


@pytest.mark.parametrize("case", ["cholesky", "explicit", "eigh"])
def test_gram_coordinates_are_isometric(case, rng):
    if case == "cholesky":  # m below the symmetric dimensions: PD Gram matrices
        a, g = _layer(rng, 8, 2, 5, 4)
    elif case == "explicit":
        a, g = _layer(rng, 30, 1, 3, 3)  # d² ≤ m: explicit rows on both sides
    else:  # duplicated samples: singular Gram matrices
        a, g = _layer(rng, 5, 1, 6, 5)
        a, g = np.concatenate([a, a]), np.concatenate([g, g])
    R = _dense_R(a, g)
    gram = K.RearrangedGram(a, g)
    C = gram.coordinates()
    assert gram.V.kind == case if case != "eigh" else gram.V.kind in ("eigh", "cholesky")
    s = np.linalg.svd(R, compute_uv=False)
    st_ = np.linalg.svd(C.Rt, compute_uv=False)
    np.testing.assert_allclose(st_[:5], s[:5], rtol=1e-8, atol=1e-10 * s[0])
    # a right vector: its coordinates carry the norm of its row-space projection
    G = rng.normal(size=(g.shape[2],) * 2)
    G = G + G.T
    x = _vec(G) / np.linalg.norm(G)
    Vrows = np.stack([_vec(gn.T @ gn) for gn in g])  # rows vec(G_n)
    P = np.linalg.pinv(Vrows) @ Vrows  # projector on the row space of V
    xt = C.right(G)
    assert np.linalg.norm(xt) == pytest.approx(np.linalg.norm(P @ x), rel=1e-7)
    assert np.linalg.norm(C.matvec(xt)) == pytest.approx(np.linalg.norm(R @ x), rel=1e-7)
    kf = C.right_kfac()
    AK, GK = fl.kfac_factors(a, g)
    assert np.linalg.norm(C.matvec(kf)) == pytest.approx(
        np.linalg.norm(R @ _vec(GK)) / np.linalg.norm(GK), rel=1e-9)
    # a triplet maps back to the dense term
    Ut, st2, Vth = np.linalg.svd(C.Rt)
    A1, G1 = C.term(st2[0], Ut[:, 0], Vth[0])
    U, s, Vh = np.linalg.svd(R)
    np.testing.assert_allclose(np.outer(_vec(A1), _vec(G1)), s[0] * np.outer(U[:, 0], Vh[0]),
                               atol=1e-9 * s[0])


# -- iterative SVDs on product pairs ---------------------------------------------------
def _gapped(rng, n_rows, n_cols, s):
    U, _ = np.linalg.qr(rng.normal(size=(n_rows, len(s))))
    V, _ = np.linalg.qr(rng.normal(size=(n_cols, len(s))))
    return (U * s) @ V.T


def test_power_svd_converges_and_reports(rng):
    M = _gapped(rng, 12, 9, [5.0, 2.0, 1.0, 0.5])
    s, u, v, rep = K.power_svd(M, tol=1e-12, maxiter=500, rng=rng)
    assert s == pytest.approx(5.0, rel=1e-12)
    assert np.linalg.norm(M @ v - s * u) <= 1e-11 * s
    assert rep.converged and rep.residual <= 1e-12 and rep.n_products == 2 * rep.iterations + 1
    # warm start from the answer: one iteration
    _, _, _, rep2 = K.power_svd(M, v0=v, tol=1e-10)
    assert rep2.iterations == 1


def test_power_svd_cap_warns_with_residual(rng):
    M = _gapped(rng, 10, 10, [1.0, 0.999, 0.5])
    with pytest.warns(fl.ConvergenceWarning, match=r"residual .* > tol"):
        s, u, v, rep = K.power_svd(M, tol=1e-12, maxiter=3, rng=rng)
    assert not rep.converged and rep.residual > 1e-12 and rep.iterations == 3
    assert np.linalg.norm(M @ v - s * u) / s == pytest.approx(rep.residual, rel=1e-8)


def test_power_svd_zero_operator(rng):
    s, u, v, rep = K.power_svd(np.zeros((4, 3)), rng=rng)
    assert s == 0.0 and rep.rank == 0 and rep.breakdown
    assert np.all(u == 0) and np.all(v == 0)


@pytest.mark.parametrize("steps", [None, 3, 6])
def test_lanczos_svd_matches_svd(steps, rng):
    M = _gapped(rng, 15, 11, [4.0, 3.0, 1.0, 0.9, 0.3, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s, U, V, rep = K.lanczos_svd(M, k=2, steps=steps, tol=1e-10, max_restarts=500,
                                     rng=rng)
    np.testing.assert_allclose(s, [4.0, 3.0], rtol=1e-9)
    for r in range(2):
        assert np.linalg.norm(M @ V[:, r] - s[r] * U[:, r]) <= 1e-8
        assert np.linalg.norm(M.T @ U[:, r] - s[r] * V[:, r]) <= 1e-8
    assert rep.converged and rep.rank == 2


def test_lanczos_breakdown_clips_steps(rng):
    # rank 1: more steps than the rank is an invariant subspace, not an error or a NaN
    M = np.outer(rng.normal(size=7), rng.normal(size=5))
    s, U, V, rep = K.lanczos_svd(M, k=2, steps=4, rng=rng)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(U)) and np.all(np.isfinite(V))
    assert s[0] == pytest.approx(np.linalg.norm(M, 2), rel=1e-12)
    assert s[1] == 0.0 and rep.rank == 1 and rep.breakdown and rep.converged
    Ub, B, Vb, info = K.golub_kahan(M, 4, rng=rng)
    assert info["breakdown"] and info["steps"] == 2  # v0, then the rest of v₁: α₁ = 0
    # R V = U B on a full-rank matrix, and the left space exhausted (more columns)
    M = rng.normal(size=(3, 6))
    Ub, B, Vb, info = K.golub_kahan(M, 3, rng=rng)
    np.testing.assert_allclose(M @ Vb, Ub @ B, atol=1e-12)
    np.testing.assert_allclose(np.sort(np.linalg.svd(B, compute_uv=False))[::-1][:3],
                               np.linalg.svd(M, compute_uv=False), rtol=1e-10)
    s, U, V, rep = K.lanczos_svd(M, k=2, steps=None, tol=1e-13, rng=rng)
    np.testing.assert_allclose(s, np.linalg.svd(M, compute_uv=False)[:2], rtol=1e-12)


def test_lanczos_cap_warns(rng):
    M = _gapped(rng, 30, 30, np.linspace(1.0, 0.9, 12))
    with pytest.warns(fl.ConvergenceWarning, match="restarts"):
        _, _, _, rep = K.lanczos_svd(M, k=2, steps=2, tol=1e-12, max_restarts=3, rng=rng)
    assert not rep.converged and rep.restarts == 3 and rep.residual > 1e-12


def test_bidiagonal_svd_large_path(rng):
    alpha, beta = rng.random(80) + 0.5, rng.random(79)
    B = np.diag(alpha) + np.diag(beta, 1)
    P, s, Qh = np.linalg.svd(B)
    s2, P2, Q2 = K._bidiag_top_svd(alpha, beta, 2)
    np.testing.assert_allclose(s2, s[:2], rtol=1e-12)
    for r in range(2):
        np.testing.assert_allclose(np.abs(P2[:, r] @ P[:, r]), 1.0, atol=1e-9)
        np.testing.assert_allclose(B @ Q2[:, r], s2[r] * P2[:, r], atol=1e-10)


def test_deflate_matches_dense(rng):
    M = rng.normal(size=(6, 4))
    x, y = rng.normal(size=6), rng.normal(size=4)
    D = K.deflate(M, [(2.0, x, y)])
    ref = M - 2.0 * np.outer(x, y)
    v, u = rng.normal(size=4), rng.normal(size=6)
    np.testing.assert_allclose(D.matvec(v), ref @ v, atol=1e-13)
    np.testing.assert_allclose(D.rmatvec(u), ref.T @ u, atol=1e-13)


# -- damped inverses: I1 and PCG -----------------------------------------------------
@given(SEEDS, st.integers(1, 4), st.integers(1, 4), st.floats(1e-3, 1.0))
def test_rank2_inverse_I1_equals_dense_solve(seed, d_a, d_g, lam):
    rng = _rng(seed)
    A1, G1 = _spd(rng, d_a, 0.1), _spd(rng, d_g, 0.1)
    A2, G2 = _spd(rng, d_a, 0.0) * 0.3, _spd(rng, d_g, 0.0) * 0.3  # PSD: |s| = s
    X = np.kron(A1 + lam * np.eye(d_a), G1 + lam * np.eye(d_g)) + np.kron(A2, G2)
    V = rng.normal(size=(d_a * d_g, 2))
    ref = np.linalg.solve(X, V)
    for signed in (False, True):
        out = K.kron_sum_solve([(A1, G1), (A2, G2)], V, lam, "factor", signed=signed)
        np.testing.assert_allclose(out, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())


@given(n=st.integers(1, 40), logscale=st.floats(-9, 3), dtype=st.sampled_from(
    ["float64", "float32"]), seed=st.integers(0, 2**16))
def test_damped_factor_inverse_matches_dense(n, logscale, dtype, seed):
    """The factor rule's (A + √λI)⁻¹ ⊗ (G + √λI)⁻¹ — by Cholesky (NumPy) and by eigh
    (array_api_strict) — equals the dense inverse, exactly symmetric, at any scale."""
    import array_api_strict as xs

    r = np.random.default_rng(seed)
    X = r.standard_normal((max(n // 2, 1), n))
    scale = 10.0 ** logscale
    S = (scale * (X.T @ X / X.shape[0] + 0.5 * np.eye(n))).astype(dtype)
    ref = np.linalg.inv(S.astype(np.float64))
    tol = 1e-10 if dtype == "float64" else 2e-4
    Si = K._inv_spd(S, np)
    assert Si.dtype == np.dtype(dtype) and Si.flags.c_contiguous
    np.testing.assert_array_equal(Si, Si.T)
    np.testing.assert_allclose(Si, ref, rtol=tol, atol=tol * np.abs(ref).max())
    Sx = np.asarray(K._inv_spd(xs.asarray(S), xs))  # the eigh path of other namespaces
    np.testing.assert_allclose(Sx, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_damped_factor_inverse_errors_and_tolerance():
    """Indefinite and numerically singular factors raise with the eigenvalues in the
    message; well-conditioned factors of small scale, and float32 factors of size 600
    with condition number 100, do not (the tolerance is relative: n·eps·λ_max)."""
    for S in (np.diag([1.0, -1.0]), np.diag([1.0, 1e-17])):
        with pytest.raises(fl.SingularMatrixError, match="smallest eigenvalue"):
            K._inv_spd(S, np)
    np.testing.assert_allclose(K._inv_spd(1e-9 * np.diag([1.0, 0.5]), np).diagonal(),
                               [1e9, 2e9])
    w = np.geomspace(1.0, 100.0, 600)
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((600, 600)))[0]
    S = ((Q * w) @ Q.T).astype(np.float32)
    Si = K._inv_spd(S, np)
    np.testing.assert_allclose(Si @ S, np.eye(600), atol=1e-3)
    # through the public solve: a KFAC block with λ = 0 and an indefinite factor
    op = fl.KroneckerOperator([(np.diag([1.0, -2.0]), np.eye(2))])
    with pytest.raises(fl.SingularMatrixError, match="increase the damping"):
        op.solve(np.ones(4), 1e-4, rule="factor")


@given(n=st.integers(1, 30), dtype=st.sampled_from(["float64", "float32"]),
       seed=st.integers(0, 2**16))
def test_simultaneous_diagonalisation(n, dtype, seed):
    """(I1)'s K with Kᵀ B K = I and Kᵀ A K = diag(s): LAPACK sygvd (NumPy) and the
    B^{-1/2} route (array_api_strict) both satisfy it, with the same s."""
    import array_api_strict as xs

    r = np.random.default_rng(seed)
    X, Y = r.standard_normal((n + 2, n)), r.standard_normal((n, n))
    B = (X.T @ X / (n + 2) + 0.3 * np.eye(n)).astype(dtype)
    A = (Y + Y.T).astype(dtype)  # indefinite, as a signed second term
    tol = 1e-9 if dtype == "float64" else 2e-3
    s_ref = np.linalg.eigvalsh(np.linalg.solve(np.linalg.cholesky(B.astype(float)),
                                               np.linalg.solve(np.linalg.cholesky(
                                                   B.astype(float)), A.astype(float)).T))
    for xp, Bx, Ax in ((np, B, A), (xs, xs.asarray(B), xs.asarray(A))):
        s, Kk = K._simultaneous_diagonalisation(Bx, Ax, xp)
        s, Kk = np.asarray(s, dtype=float), np.asarray(Kk, dtype=float)
        np.testing.assert_allclose(Kk.T @ B @ Kk, np.eye(n), atol=tol * 10)
        np.testing.assert_allclose(Kk.T @ A @ Kk, np.diag(s), atol=tol * 10 * max(
            1.0, np.abs(s).max()))
        np.testing.assert_allclose(np.sort(s), s_ref, atol=tol * 10 * max(1.0, np.abs(s_ref).max()))
    with pytest.raises(fl.SingularMatrixError, match="smallest eigenvalue -1"):
        K._simultaneous_diagonalisation(np.diag([1.0, -1.0]), np.eye(2), np)


def test_rank2_inverse_abs_rule_with_indefinite_term(rng):
    lam = 0.1
    A1, G1 = _spd(rng, 3, 0.5), _spd(rng, 2, 0.5)
    A2, G2 = _sym(rng, 3) * 0.2, _sym(rng, 2) * 0.2
    Ah = np.linalg.inv(np.linalg.cholesky(A1 + lam * np.eye(3))).T  # any W with W Wᵀ = (A1+λ)⁻¹
    Gh = np.linalg.inv(np.linalg.cholesky(G1 + lam * np.eye(2))).T

    def abs_part(Ws, M):  # the matrix whose whitened spectrum is |spectrum of Wᵀ M W|
        w, E = np.linalg.eigh(Ws.T @ M @ Ws)
        Wi = np.linalg.inv(Ws)
        return Wi.T @ (E * np.abs(w)) @ E.T @ Wi

    X_abs = np.kron(A1 + lam * np.eye(3), G1 + lam * np.eye(2)) + np.kron(
        abs_part(Ah, A2), abs_part(Gh, G2))
    V = rng.normal(size=6)
    out = K.kron_sum_solve([(A1, G1), (A2, G2)], V, lam, "factor")
    np.testing.assert_allclose(out, np.linalg.solve(X_abs, V), rtol=1e-9)
    X = np.kron(A1 + lam * np.eye(3), G1 + lam * np.eye(2)) + np.kron(A2, G2)
    out = K.kron_sum_solve([(A1, G1), (A2, G2)], V, lam, "factor", signed=True)
    np.testing.assert_allclose(out, np.linalg.solve(X, V), rtol=1e-8)


def test_rank2_signed_inverse_detects_singular_sum():
    lam = 0.25
    A1, G1 = (1 - lam) * np.eye(2), (1 - lam) * np.eye(2)  # A1 + λI = I
    A2, G2 = np.diag([-1.0, 0.5]), np.diag([1.0, 2.0])  # 1 + s2 s1 = 0 for a pair
    assert abs(np.linalg.det(np.eye(4) + np.kron(A2, G2))) < 1e-14
    with pytest.raises(fl.SingularMatrixError, match="numerically singular"):
        K.kron_sum_inverse([(A1, G1), (A2, G2)], lam, "factor", signed=True)
    op = fl.KroneckerOperator([(A1, G1), (A2, G2)])
    with pytest.raises(fl.SingularMatrixError):
        op.solve(np.ones(4), lam, signed=True)
    out = op.solve(np.ones(4), lam)  # the papers' |s| rule is always defined
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("rule", ["exact", "factor"])
def test_pcg_inverse_for_three_terms(rule, rng):
    lam = 0.05
    terms = [(_spd(rng, 3), _spd(rng, 4))] + [(_sym(rng, 3) * 0.1, _sym(rng, 4) * 0.1)
                                              for _ in range(2)]
    Fd = sum(np.kron(A, G) for A, G in terms) + lam * np.eye(12)
    V = rng.normal(size=(12, 2))
    inv = K.kron_sum_inverse(terms, lam, rule, tol=1e-12)
    np.testing.assert_allclose(inv(V), np.linalg.solve(Fd, V), rtol=1e-8)
    assert inv.last_info["iterations"] > 0 and inv.last_info["residual"] <= 1e-12


# -- bad input ---------------------------------------------------------------------------
def test_bad_input_errors(rng):
    with pytest.raises(fl.ShapeError, match="square"):
        K.rearrange(np.zeros((6, 4)), 2, 3)
    with pytest.raises(fl.ShapeError, match="d_a·d_g"):
        K.rearrange(np.zeros((6, 6)), 2, 2)
    with pytest.raises(fl.ShapeError, match="positive integer"):
        K.rearrange(np.zeros((6, 6)), 0, 6)
    with pytest.raises(fl.ShapeError, match="shape"):
        K.rearrange_inverse(np.zeros((4, 5)), 2, 2)
    M = np.kron(_spd(rng, 2), _spd(rng, 2))
    with pytest.raises(fl.ShapeError, match="at least 1"):
        K.kpsvd(M, 2, 2, rank=0)
    with pytest.raises(fl.ShapeError, match="numerical rank 1"):
        K.kpsvd(M, 2, 2, rank=2)
    with pytest.raises(fl.ShapeError, match="is zero"):
        K.kpsvd(np.zeros((4, 4)), 2, 2)
    a, g = _layer(rng, 5, 1, 3, 2)
    with pytest.raises(fl.ShapeError, match="samples"):
        K.RearrangedFisher(a[:4], g)
    with pytest.raises(fl.ShapeError, match=r"g\[:, None, :\]"):
        K.RearrangedGram(a, g[:, 0, :])
    with pytest.raises(fl.ShapeError, match=r"\(m, d_a\)"):
        K.rearranged_matvec(a[0], g, np.eye(2))
    with pytest.raises(fl.ShapeError, match="shape"):
        K.rearranged_matvec(a, g, np.eye(3))
    with pytest.raises(fl.ShapeError, match="length 4"):
        K.RearrangedFisher(a, g).matvec(np.ones(9))
    with pytest.raises(fl.ShapeError, match="tol"):
        K.power_svd(np.eye(3), tol=0.0)
    with pytest.raises(fl.ShapeError, match="maxiter"):
        K.power_svd(np.eye(3), maxiter=0)
    with pytest.raises(fl.ShapeError, match="steps=1 < k=2"):
        K.lanczos_svd(np.eye(3), k=2, steps=1)
    with pytest.raises(fl.ShapeError, match="v0"):
        K.power_svd(np.eye(3), v0=np.ones(4))
    with pytest.raises(TypeError, match="product pair"):
        K.power_svd("not an operator")
    with pytest.raises(fl.ShapeError, match="lengths"):
        K.deflate(np.eye(3), [(1.0, np.ones(2), np.ones(3))])


# -- portability: the numerical core makes no NumPy-only call ---------------------------
def test_array_api_strict_namespace(rng):
    xps = pytest.importorskip("array_api_strict")
    a, g = _layer(rng, 12, 2, 3, 4)
    R = _dense_R(a, g)
    s = np.linalg.svd(R, compute_uv=False)
    As, Gs = xps.asarray(a), xps.asarray(g)
    gram = K.RearrangedGram(As, Gs)
    sig, w, d = gram.top(2)
    np.testing.assert_allclose(sig, s[:2], rtol=1e-10)
    A, G = gram.term(sig[0], w[:, 0], d[:, 0])
    assert type(A).__module__.startswith("array_api_strict")
    op = K.RearrangedFisher(As, Gs)
    x = rng.normal(size=16)
    np.testing.assert_allclose(np.asarray(op.matvec(xps.asarray(x))), R @ x, atol=1e-12)
    sp, _, _, _ = K.power_svd(op, tol=1e-12, maxiter=2000, rng=rng)
    assert sp == pytest.approx(s[0], rel=1e-10)
    sl, _, _, _ = K.lanczos_svd(op, k=2, steps=None, tol=1e-12, rng=rng)
    np.testing.assert_allclose(sl, s[:2], rtol=1e-10)
    sg, _, _, _ = gram.lanczos(2)
    np.testing.assert_allclose(sg, s[:2], rtol=1e-10)
