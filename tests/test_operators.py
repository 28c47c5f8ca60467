"""Operator plumbing: Kronecker blocks, lazy algebra, dense operators, scipy interop."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import given
from hypothesis import strategies as st

import fimlab as fl
from fimlab import kron


def _spd(rng, n, shift=0.1):
    M = rng.normal(size=(n, n))
    return M @ M.T / n + shift * np.eye(n)


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_kron_matmat_is_vec_trick(da, dg, k, seed):
    rng = np.random.default_rng(seed)
    A, G = rng.normal(size=(da, da)), rng.normal(size=(dg, dg))
    X = rng.normal(size=(da * dg, k))
    np.testing.assert_allclose(kron.kron_matmat(A, G, X), np.kron(A, G) @ X, rtol=1e-10,
                               atol=1e-12)
    V = rng.normal(size=(dg, da))  # (A ⊗ G) vec(V) = vec(G V Aᵀ)
    np.testing.assert_allclose(kron.kron_matmat(A, G, kron.vec(V)), kron.vec(G @ V @ A.T),
                               rtol=1e-10, atol=1e-12)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_kronecker_operator_dense_and_norms(da, dg, r, seed):
    rng = np.random.default_rng(seed)
    terms = [(_spd(rng, da), _spd(rng, dg)) for _ in range(r)]
    K = fl.KroneckerOperator(terms)
    D = sum(np.kron(A, G) for A, G in terms)
    np.testing.assert_allclose(K.to_dense(), D, rtol=1e-12)
    assert K.frobenius_norm_sq() == pytest.approx((D**2).sum(), rel=1e-10)
    assert K.trace() == pytest.approx(np.trace(D), rel=1e-10)
    v = rng.normal(size=da * dg)
    np.testing.assert_allclose(K @ v, D @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("signed", [False, True])
def test_rank2_factor_rule_I1(signed, rng):
    da, dg, lam = 4, 3, 0.05
    A1, G1, A2, G2 = _spd(rng, da), _spd(rng, dg), _spd(rng, da), _spd(rng, dg)
    K = fl.KroneckerOperator([(A1, G1), (A2, G2)])
    v = rng.normal(size=da * dg)
    X = np.kron(A1 + lam * np.eye(da), G1 + lam * np.eye(dg)) + np.kron(A2, G2)
    # PSD second term: |s| = s, both variants are the true inverse of X (PAPERS.md I1)
    np.testing.assert_allclose(K.solve(v, lam, signed=signed), np.linalg.solve(X, v), rtol=1e-9)


def test_rank2_exact_rule_is_pcg_on_damped_sum(rng):
    da, dg, lam = 4, 3, 0.05
    terms = [(_spd(rng, da), _spd(rng, dg)), (_spd(rng, da) - 0.5 * np.eye(da), _spd(rng, dg))]
    K = fl.KroneckerOperator(terms)
    D = K.to_dense()
    v = rng.normal(size=da * dg)
    x = K.solve(v, lam + 2.0, rule="exact")
    np.testing.assert_allclose(x, np.linalg.solve(D + (lam + 2.0) * np.eye(da * dg), v),
                               rtol=1e-8)
    assert K.last_solve_info["iterations"] >= 1


def test_signed_rank2_detects_singular_sum():
    da = dg = 2
    lam = 1e-12
    A1, G1 = np.eye(da), np.eye(dg)
    # second term -I⊗I makes X = (1+λ)²I − I ≈ 0 for the signed rule
    K = fl.KroneckerOperator([(A1, G1), (-np.eye(da), np.eye(dg))])
    with pytest.raises(fl.SingularMatrixError, match="singular"):
        K.solve(np.ones(4), lam, signed=True)
    assert np.all(np.isfinite(K.solve(np.ones(4), lam)))  # |s| rule: papers' behaviour


def test_pi_rule_only_for_one_term(rng):
    K = fl.KroneckerOperator([(_spd(rng, 2), _spd(rng, 2))] * 2)
    with pytest.raises(fl.DampingError, match="one Kronecker term"):
        K.solve(np.ones(4), 0.1, rule="pi")


def test_kronecker_operator_bad_factors():
    with pytest.raises(fl.ShapeError, match="must be square"):
        fl.KroneckerOperator([(np.ones((2, 3)), np.eye(2))])
    with pytest.raises(fl.ShapeError, match="same space"):
        fl.KroneckerOperator([(np.eye(2), np.eye(2)), (np.eye(3), np.eye(2))])
    with pytest.raises(fl.ShapeError, match="at least one"):
        fl.KroneckerOperator([])


def test_lazy_algebra_and_scipy(rng):
    A = fl.DenseOperator(_spd(rng, 5))
    B = fl.KroneckerOperator([(_spd(rng, 5), np.eye(1))])
    C = 2.0 * A + B - A
    D = 2 * A.M + B.to_dense() - A.M
    np.testing.assert_allclose(C.to_dense(), D, rtol=1e-12)
    w = spla.eigsh(C.to_scipy(), k=2, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(w), np.linalg.eigvalsh(D)[-2:], rtol=1e-8)
    x, info = spla.cg(C.to_scipy(), np.ones(5), rtol=1e-12)
    np.testing.assert_allclose(D @ x, np.ones(5), rtol=1e-8)
    # generic solve: CG on F + λI
    np.testing.assert_allclose(C.solve(np.ones(5), 0.5), np.linalg.solve(D + 0.5 * np.eye(5),
                               np.ones(5)), rtol=1e-8)
    with pytest.raises(fl.DampingError, match="rule='exact'"):
        C.solve(np.ones(5), 0.5, rule="factor")
    with pytest.raises(fl.ShapeError, match="cannot add"):
        A + fl.DenseOperator(np.eye(3))
    np.testing.assert_allclose(A.solve(np.ones(5), 0.1),
                               np.linalg.solve(A.M + 0.1 * np.eye(5), np.ones(5)))


def test_block_diagonal_operator(rng):
    blocks = [fl.KroneckerOperator([(_spd(rng, 2), _spd(rng, 3))]), fl.DenseOperator(_spd(rng, 4))]
    Bd = fl.BlockDiagonalOperator(blocks)
    D = np.zeros((10, 10))
    D[:6, :6] = blocks[0].to_dense()
    D[6:, 6:] = blocks[1].M
    np.testing.assert_allclose(Bd.to_dense(), D)
    v = rng.normal(size=10)
    np.testing.assert_allclose(Bd @ v, D @ v, rtol=1e-12)
    with pytest.raises(fl.DenseMemoryError, match="matvec"):
        Bd.to_dense(max_bytes=100)
