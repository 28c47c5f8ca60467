"""Iterative solvers at realistic sizes (issue 21).

Golub–Kahan and Lanczos with Krylov dimensions in the hundreds on slowly decaying and
clustered spectra — where dropping a re-orthogonalisation loses orthogonality and
produces spurious copies of the leading values — checked against a dense SVD / eigh;
preconditioned CG held to iteration-count bounds that a lost preconditioner breaks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fimlab as fl
from fimlab import kron
from fimlab.kron import lanczos


def _matrix(m, n, sigma, seed):
    r = np.random.default_rng(seed)
    U, _ = np.linalg.qr(r.normal(size=(m, len(sigma))))
    V, _ = np.linalg.qr(r.normal(size=(n, len(sigma))))
    return (U * sigma) @ V.T


def _slow_clustered(k):
    """Slowly decaying (σ_i ∝ i^-0.3) with two clusters at the top."""
    s = (1.0 + np.arange(k)) ** -0.3
    s[:4] = [2.0, 2.0 - 1e-4, 2.0 - 2e-4, 2.0 - 3e-4]
    s[4:8] = 1.5 + 1e-5 * np.arange(4)
    return np.sort(s)[::-1]


def test_golub_kahan_220_steps_stays_orthogonal():
    sigma = _slow_clustered(280)
    R = _matrix(330, 300, sigma, 0)
    U, B, V, info = kron.golub_kahan(R, 220, rng=np.random.default_rng(1))
    assert info["steps"] == 220 and not info["breakdown"]
    I = np.eye(220)
    assert np.linalg.norm(U.T @ U - I) < 1e-10
    assert np.linalg.norm(V.T @ V - I) < 1e-10
    np.testing.assert_allclose(R @ V, U @ B, atol=1e-10)
    # the leading Ritz values: the clusters are resolved, no spurious copies
    s = np.linalg.svd(B, compute_uv=False)
    np.testing.assert_allclose(s[:8], sigma[:8], rtol=1e-9)


def test_lanczos_svd_grows_a_large_krylov_space_and_matches_dense_svd():
    sigma = _slow_clustered(250)
    R = _matrix(300, 260, sigma, 2)
    k = 60  # 60 triplets of a slowly decaying spectrum: a Krylov space of ~190
    s, U, V, rep = kron.lanczos_svd(R, k=k, steps=None, tol=1e-12, warn=True)
    assert rep.converged and rep.iterations >= 150
    Ud, sd, Vt = np.linalg.svd(R)
    np.testing.assert_allclose(s, sd[:k], rtol=1e-9)
    assert np.linalg.norm(U.T @ U - np.eye(k)) < 1e-8
    assert np.linalg.norm(V.T @ V - np.eye(k)) < 1e-8
    # triplets: R v = σ u and Rᵀ u = σ v
    np.testing.assert_allclose(R @ V, U * s, atol=1e-8)
    np.testing.assert_allclose(R.T @ U, V * s, atol=1e-8)


def test_rearranged_gram_golub_kahan_many_steps_vs_dense_svd():
    """The Gram-coefficient Golub–Kahan (the exact KPSVD route) asked for 24 triplets of a
    rearranged Fisher block with a slowly decaying spectrum: many steps, M-orthogonal
    reorthogonalisation; singular values against a dense SVD of R(F_i)."""
    r = np.random.default_rng(3)
    m, K, da, dg = 260, 2, 18, 17  # d² > m on both sides: Gram matrices, not rows
    a = r.normal(size=(m, da)) * (1.0 + np.arange(da)) ** -0.2
    g = r.normal(size=(m, K, dg))
    RG = kron.RearrangedGram(a, g)
    k = 24
    sig, w, d, rep = RG.golub_kahan(k, tol=1e-11, max_steps=m)
    assert rep.converged and rep.iterations >= 60
    R = kron.RearrangedFisher(a, g).to_dense()
    sd = np.linalg.svd(R, compute_uv=False)
    np.testing.assert_allclose(sig[:k], sd[:k], rtol=1e-8)
    # the singular vectors from their Gram weights: σ mat(u) = Āᵀdiag(w)Ā, σ mat(v) = Σ d_n G_n
    Gn = np.einsum("nki,nkj->nij", g, g)
    U = np.stack([(a.T * w[:, r]) @ a for r in range(k)]).reshape(k, -1).T / sig
    V = np.einsum("nr,nij->rij", d, Gn).reshape(k, -1).T / sig
    assert np.linalg.norm(U.T @ U - np.eye(k)) < 1e-8
    assert np.linalg.norm(V.T @ V - np.eye(k)) < 1e-8
    np.testing.assert_allclose(R @ V, U * sig, atol=1e-9 * sig[0])


def test_symmetric_lanczos_250_steps_clustered_vectors_orthonormal():
    r = np.random.default_rng(4)
    n = 400
    ev = np.concatenate([np.full(3, 10.0) + 1e-6 * np.arange(3),
                         np.linspace(1.0, 9.0, n - 6) ** 0.5,
                         [1e-3, 1e-3 + 1e-7, 2e-3]])
    Q, _ = np.linalg.qr(r.normal(size=(n, n)))
    A = (Q * ev) @ Q.T
    # a negative tolerance is never met: exactly 250 steps (a Krylov space of 250)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # 400 × 400 products: BLAS threads only add contention
        res = lanczos(lambda v, Mv: A @ v, n, xp=np, dtype=np.float64, which="both",
                      tol=-1.0, max_steps=250, want_vectors=True, warn=False)
    assert res.steps == 250
    Y = res.vectors
    assert np.linalg.norm(Y.T @ Y - np.eye(Y.shape[1])) < 1e-8
    w = np.linalg.eigvalsh(A)
    assert res.values[-1] == pytest.approx(w[-1], rel=1e-12)
    assert res.values[0] == pytest.approx(w[0], rel=1e-6)
    # no spurious (ghost) copies of the top eigenvalue beyond its true multiplicity
    assert int(np.sum(res.values > 10.0 - 1e-3)) <= 3


# -------------------------------------------------------------------------------------
# preconditioned CG: iteration counts
# -------------------------------------------------------------------------------------
def _cg_bound(kappa, tol):
    """Iterations after which ‖e‖_A/‖e₀‖_A ≤ 2((√κ−1)/(√κ+1))^k ≤ tol/√κ (so the relative
    residual is ≤ tol)."""
    q = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    return math.ceil(math.log(tol / (2 * math.sqrt(kappa))) / math.log(q)) + 1


def test_pcg_iteration_count_within_the_condition_number_bound():
    r = np.random.default_rng(5)
    n, kappa = 400, 1e4
    ev = np.geomspace(1.0, kappa, n)
    Q, _ = np.linalg.qr(r.normal(size=(n, n)))
    A = (Q * ev) @ Q.T
    b = r.normal(size=(n, 2))
    X, info = kron.pcg(lambda Z: A @ Z, b, None, tol=1e-8, maxiter=2000)
    np.testing.assert_allclose(A @ X, b, atol=1e-6 * np.linalg.norm(b))
    assert 50 < info["iterations"] <= _cg_bound(kappa, 1e-8)
    # Jacobi-like preconditioner that is exact on the eigenbasis: one iteration
    Minv = (Q / ev) @ Q.T
    X2, info2 = kron.pcg(lambda Z: A @ Z, b, lambda Z: Minv @ Z, tol=1e-8, maxiter=2000)
    assert info2["iterations"] <= 2
    np.testing.assert_allclose(X2, X, rtol=1e-6, atol=1e-8)


def test_kronecker_exact_solve_uses_its_preconditioner():
    """rule='exact' on A₁⊗G₁ + a·bᵀ⊗c·dᵀ-type low-rank second term: the preconditioner
    (the exact damped inverse of the leading term) leaves a rank-one perturbation of the
    identity, so CG needs at most 3 iterations; without it, CG needs many more (κ ~ 1e4)."""
    r = np.random.default_rng(6)
    da, dg = 20, 15

    def spd(d, kappa):
        Q, _ = np.linalg.qr(r.normal(size=(d, d)))
        return (Q * np.geomspace(1.0, kappa, d)) @ Q.T

    A1, G1 = spd(da, 100.0), spd(dg, 100.0)
    u, w = r.normal(size=da), r.normal(size=dg)
    A2, G2 = np.outer(u, u) * 0.5, np.outer(w, w) * 0.5
    terms = [(A1, G1), (A2, G2)]
    lam = 1e-2
    inv = kron.kron_sum_inverse(terms, lam, "exact", tol=1e-10)
    v = r.normal(size=(da * dg, 1))
    x = inv(v)
    D = np.kron(A1, G1) + np.kron(A2, G2) + lam * np.eye(da * dg)
    np.testing.assert_allclose(D @ x, v, atol=1e-8 * np.linalg.norm(v))
    assert inv.last_info["iterations"] <= 3
    # the same system without the preconditioner takes many iterations
    _, info = kron.pcg(lambda Z: D @ Z, v, None, tol=1e-10, maxiter=2000)
    assert info["iterations"] > 30
    # and through the operator: last_solve_info reports the same small count
    from fimlab.operators import KroneckerOperator

    op = KroneckerOperator(terms)
    op.solve(v[:, 0], lam, rule="exact", tol=1e-10)
    assert op.last_solve_info["iterations"] <= 3


def test_kronecker_three_terms_pcg_within_bound_of_preconditioned_kappa():
    r = np.random.default_rng(7)
    da, dg = 12, 10

    def spd(d):
        X = r.normal(size=(d, d + 3))
        return X @ X.T / d + 0.1 * np.eye(d)

    terms = [(spd(da), spd(dg)), (0.2 * spd(da), 0.2 * spd(dg)), (0.1 * spd(da), 0.1 * spd(dg))]
    lam = 1e-3
    D = sum(np.kron(A, G) for A, G in terms) + lam * np.eye(da * dg)
    P = np.kron(*terms[0]) + lam * np.eye(da * dg)
    mu = np.linalg.eigvals(np.linalg.solve(P, D)).real
    kappa_pre = mu.max() / mu.min()
    kappa = np.linalg.cond(D)
    inv = kron.kron_sum_inverse(terms, lam, "factor", tol=1e-10)  # r ≥ 3: PCG
    v = r.normal(size=(da * dg, 1))
    x = inv(v)
    np.testing.assert_allclose(D @ x, v, atol=1e-8 * np.linalg.norm(v))
    its = inv.last_info["iterations"]
    assert its <= _cg_bound(kappa_pre, 1e-10)
    assert _cg_bound(kappa_pre, 1e-10) < _cg_bound(kappa, 1e-10) / 3


def test_golub_kahan_bases_grow_with_the_chain_not_to_the_cap():
    """A 400,000 × 300,000 operator of rank 3: with ``steps=None`` the cap is the full
    dimension (bases of 300,001 columns would be terabytes); the bases grow with the
    chain, so the top triplets come out exactly, and a cap that does not fit the memory
    budget is refused before it is allocated."""
    from fimlab.kron import lanczos_svd

    rng = np.random.default_rng(0)
    m, n = 400_000, 300_000
    U = np.linalg.qr(rng.standard_normal((m, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((n, 3)))[0]
    s = np.array([5.0, 2.0, 0.5])

    class Op:
        shape = (m, n)
        dtype = np.float64

        def matvec(self, x):
            return U @ (s * (V.T @ x))

        def rmatvec(self, y):
            return V @ (s * (U.T @ y))

    sig, Uk, Vk, rep = lanczos_svd(Op(), k=2, steps=None, tol=1e-10,
                                   rng=np.random.default_rng(1))
    np.testing.assert_allclose(sig, s[:2], rtol=1e-10)
    np.testing.assert_allclose(np.abs(Uk.T @ U[:, :2]), np.eye(2), atol=1e-8)
    with fl.memory_budget(8 * 8 * (m + n)):  # less than the first 32 columns of the bases
        with pytest.raises(fl.DenseMemoryError, match="Golub–Kahan bases"):
            lanczos_svd(Op(), k=2, steps=None, tol=1e-10, rng=np.random.default_rng(1))
