"""Factor batches and the Fisher operator against independent dense computations."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla

import fimlab as fl
from fimlab.testing import SMALL_NETS, make_targets, small_net
from fimlab.testing.oracles import (
    output_hessians,
    output_jacobians,
    per_sample_loss_gradients,
)

_net = small_net  # SMALL_NETS[i] with perturbed (non-zero) biases


@pytest.mark.parametrize("i", range(len(SMALL_NETS)))
def test_exact_fisher_equals_JtHJ_from_finite_differences(i, rng):
    net = _net(i)
    X = rng.normal(size=(6, net.layer_sizes[0]))
    J = output_jacobians(net, X)  # (N, C, P)
    H = output_hessians(net, X)
    ref = np.einsum("ncp,ncd,ndq->pq", J, H, J) / X.shape[0]
    F = fl.exact_fisher(net, X)
    np.testing.assert_allclose(F, ref, rtol=1e-6, atol=1e-9)
    # symmetric positive semi-definite
    np.testing.assert_allclose(F, F.T, atol=1e-14)
    assert np.linalg.eigvalsh(F).min() > -1e-10 * np.abs(F).max()


@pytest.mark.parametrize("i", range(len(SMALL_NETS)))
def test_empirical_fisher_equals_per_sample_gradient_outer_products(i, rng):
    net = _net(i)
    N = 5
    X = rng.normal(size=(N, net.layer_sizes[0]))
    y = make_targets(net.likelihood.name, N, net.layer_sizes[-1], rng)
    Gs = per_sample_loss_gradients(net, X, y)
    np.testing.assert_allclose(fl.empirical_fisher(net, X, y), Gs.T @ Gs / N,
                               rtol=1e-6, atol=1e-9)
    # per_sample_gradients (dense convenience) is the same matrix of rows
    np.testing.assert_allclose(net.per_sample_gradients(X, y), Gs, rtol=1e-6, atol=1e-8)


def test_exact_fisher_is_the_ggn_for_gaussian(rng):
    # GGN = (1/N) Σ Jᵀ ∇²_z ℓ J and ∇²_z ℓ = I for the unit Gaussian
    net = fl.MLP([3, 4, 2], activation="tanh", likelihood="gaussian", seed=0)
    X = rng.normal(size=(5, 3))
    J = output_jacobians(net, X)
    np.testing.assert_allclose(fl.exact_fisher(net, X),
                               np.einsum("ncp,ncq->pq", J, J) / 5, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("lik", ["categorical", "gaussian", "bernoulli"])
def test_mc_fisher_converges_to_exact(lik, rng):
    net = fl.MLP([3, 4, 3], activation="tanh", likelihood=lik, seed=2)
    X = rng.normal(size=(4, 3))
    F = fl.exact_fisher(net, X)
    errs = []
    for S in (10, 1000):
        b = fl.factor_batch(net, X, fisher="mc", mc_samples=S, rng=np.random.default_rng(5))
        errs.append(np.linalg.norm(fl.FisherOperator(b).to_dense() - F) / np.linalg.norm(F))
    # the MC error decays like 1/√S: 100x samples -> ~10x smaller; allow a factor 2.5
    assert errs[1] < errs[0] / 4
    assert errs[1] < 0.15


def test_mc_is_deterministic_for_a_seed(rng):
    net = fl.MLP([3, 4, 3], likelihood="categorical", seed=0)
    X = rng.normal(size=(8, 3))
    b1 = fl.factor_batch(net, X, fisher="mc", mc_samples=3, rng=np.random.default_rng(1))
    b2 = fl.factor_batch(net, X, fisher="mc", mc_samples=3, rng=np.random.default_rng(1))
    for g1, g2 in zip(b1.g, b2.g):
        np.testing.assert_array_equal(g1, g2)
    assert b1.n_vectors == 3


@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_operator_products_blocks_solve_agree_with_dense(small_net, fisher, rng):
    net = small_net
    N = 9
    X = rng.normal(size=(N, net.layer_sizes[0]))
    y = make_targets(net.likelihood.name, N, net.layer_sizes[-1], rng)
    b = fl.factor_batch(net, X, y, fisher=fisher, mc_samples=2, rng=0)
    F = fl.FisherOperator(b)
    D = F.to_dense()
    U = b.jacobian_matrix()
    np.testing.assert_allclose(D, U.T @ U / N, rtol=1e-12, atol=1e-14)
    P = F.shape[0]
    v, V = rng.normal(size=P), rng.normal(size=(P, 3))
    np.testing.assert_allclose(F @ v, D @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.matmat(V), D @ V, rtol=1e-10, atol=1e-12)
    for i in range(b.n_layers):
        for j in range(b.n_layers):
            np.testing.assert_allclose(F.block(i, j), D[F.block_slice(i), F.block_slice(j)],
                                       rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(F.diagonal_block(i).to_dense(),
                                   D[F.block_slice(i), F.block_slice(i)], atol=1e-13)
    for lam in (1e-3, 1.0):
        x = F.solve(v, lam)
        np.testing.assert_allclose(x, np.linalg.solve(D + lam * np.eye(P), v), rtol=1e-7,
                                   atol=1e-9)
    X2 = F.solve(V, 0.1)
    np.testing.assert_allclose(X2, np.linalg.solve(D + 0.1 * np.eye(P), V), rtol=1e-8)
    # scipy interop
    Fs = F.to_scipy()
    np.testing.assert_allclose(Fs @ v, D @ v, rtol=1e-10, atol=1e-12)
    top = spla.eigsh(Fs, k=1, which="LA", return_eigenvectors=False)[0]
    assert top == pytest.approx(np.linalg.eigvalsh(D)[-1], rel=1e-8)
    # Frobenius norm and trace from the Gram matrix
    assert F.frobenius_norm_sq() == pytest.approx((D**2).sum(), rel=1e-10)
    assert F.trace() == pytest.approx(np.trace(D), rel=1e-10)


def test_dot_test(rng):
    net = fl.MLP([4, 5, 3], seed=0)
    F = fl.FisherOperator(fl.factor_batch(net, rng.normal(size=(7, 4))))
    x, y = rng.normal(size=F.shape[0]), rng.normal(size=F.shape[0])
    assert np.dot(F @ x, y) == pytest.approx(np.dot(x, F @ y), rel=1e-12)


def test_single_sample_block_is_kron_of_A_and_G(rng):
    """Column-major convention pinned: F_ll = kron(ā āᵀ, Σ_k g gᵀ) for one sample."""
    net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    b = fl.factor_batch(net, rng.normal(size=(1, 3)), fisher="exact")
    F = fl.FisherOperator(b)
    for l in range(2):
        a = b.a[l][0]
        G = b.g[l][0].T @ b.g[l][0]
        np.testing.assert_allclose(F.block(l), np.kron(np.outer(a, a), G), rtol=1e-12,
                                   atol=1e-15)


def test_factor_batch_shapes(rng):
    net = fl.MLP([4, 6, 3], likelihood="categorical", seed=0)
    X = rng.normal(size=(5, 4))
    b = fl.factor_batch(net, X, fisher="exact")
    assert [a.shape for a in b.a] == [(5, 5), (5, 7)]
    assert [g.shape for g in b.g] == [(5, 3, 6), (5, 3, 3)]
    np.testing.assert_array_equal(b.a[0][:, -1], 1.0)
    assert b.n_params == net.n_params
    be = fl.factor_batch(net, X, np.arange(5) % 3, fisher="empirical")
    assert be.n_vectors == 1


def test_factor_batch_bad_input(rng):
    net = fl.MLP([4, 6, 3], seed=0)
    X = rng.normal(size=(5, 4))
    with pytest.raises(fl.UnknownNameError, match="Fisher type"):
        fl.factor_batch(net, X, fisher="true")
    with pytest.raises(fl.ShapeError, match="needs the true targets"):
        fl.factor_batch(net, X, fisher="empirical")
    with pytest.raises(fl.ShapeError, match="mc_samples"):
        fl.factor_batch(net, X, fisher="mc", mc_samples=0)
    a = [rng.normal(size=(5, 3))]
    with pytest.raises(fl.ShapeError, match="one 'a' and one 'g'"):
        fl.FactorBatch(a, [])
    with pytest.raises(fl.ShapeError, match=r"g\[0\] must have shape \(N, K, d_out\)"):
        fl.FactorBatch(a, [rng.normal(size=(5, 2))])
    with pytest.raises(fl.ShapeError, match="same samples"):
        fl.FactorBatch(a, [rng.normal(size=(4, 1, 2))])
    bad = rng.normal(size=(5, 1, 2))
    bad[2, 0, 1] = np.nan
    with pytest.raises(fl.NonFiniteError, match=r"g\[0\]"):
        fl.FactorBatch(a, [bad])
    with pytest.raises(TypeError, match="dtype"):
        fl.FactorBatch([np.ones((5, 3), dtype=int)], [np.ones((5, 1, 2))])


def test_memory_guard_names_bytes_and_alternative(rng):
    net = fl.MLP([4, 6, 3], seed=0)
    F = fl.FisherOperator(fl.factor_batch(net, rng.normal(size=(5, 4))))
    with pytest.raises(fl.DenseMemoryError) as exc:
        F.to_dense(max_bytes=1000)
    msg = str(exc.value)
    assert f"{F.shape[0] ** 2 * 8:,} bytes" in msg and "matvec" in msg
    assert isinstance(exc.value, MemoryError)
    with pytest.raises(fl.DenseMemoryError):
        fl.exact_fisher(net, rng.normal(size=(5, 4)), max_bytes=10)


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_damping(lam, rng):
    net = fl.MLP([4, 6, 3], seed=0)
    F = fl.FisherOperator(fl.factor_batch(net, rng.normal(size=(5, 4))))
    with pytest.raises(fl.DampingError, match="positive"):
        F.solve(np.ones(F.shape[0]), lam)


def test_operand_shape_errors(rng):
    net = fl.MLP([4, 6, 3], seed=0)
    F = fl.FisherOperator(fl.factor_batch(net, rng.normal(size=(5, 4))))
    with pytest.raises(fl.ShapeError, match="cannot multiply"):
        F @ np.ones(3)
    with pytest.raises(TypeError, match="FactorBatch"):
        fl.FisherOperator(np.ones((3, 3)))


def test_float32_batches(rng):
    net = fl.MLP([4, 6, 3], seed=0, dtype="float32")
    b = fl.factor_batch(net, rng.normal(size=(20, 4)).astype(np.float32))
    F = fl.FisherOperator(b)
    D = F.to_dense()
    assert D.dtype == np.float32
    v = rng.normal(size=F.shape[0]).astype(np.float32)
    np.testing.assert_allclose(F @ v, D @ v, rtol=1e-4, atol=1e-5)
