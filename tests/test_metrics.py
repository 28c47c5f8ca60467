"""E1/E2 against direct NumPy formulas; the Gram route against the dense one."""

import numpy as np
import pytest

import fimlab as fl
from fimlab.testing import SMALL_NETS, make_targets


@pytest.mark.parametrize("i", range(len(SMALL_NETS)))
@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_e1_gram_route_equals_dense(i, fisher, rng):
    sizes, act, lik = SMALL_NETS[i]
    net = fl.MLP(sizes, activation=act, likelihood=lik, seed=i)
    X = rng.normal(size=(13, sizes[0]))
    y = make_targets(lik, 13, sizes[-1], rng)
    b = fl.factor_batch(net, X, y, fisher=fisher, mc_samples=2, rng=1)
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    D, Kd = F.to_dense(), K.to_dense()
    for l in range(b.n_layers):
        s = F.block_slice(l)
        ref = np.linalg.norm(D[s, s] - Kd[s, s]) / np.linalg.norm(D[s, s])
        # the Gram route cancels ‖F‖² − 2⟨F,K⟩ + ‖K‖²: absolute accuracy ~ √eps
        assert fl.relative_frobenius_error(F, K, block=l) == pytest.approx(ref, rel=1e-9, abs=1e-7)
        assert fl.relative_frobenius_error(F, K, block=l, method="dense") == pytest.approx(ref, rel=1e-12)
        # one block against one block
        e = fl.relative_frobenius_error(F.diagonal_block(l), K.blocks[l], method="gram")
        assert e == pytest.approx(ref, rel=1e-9, abs=1e-7)
    whole = np.linalg.norm(D - Kd) / np.linalg.norm(D)
    assert fl.relative_frobenius_error(F, K) == pytest.approx(whole, rel=1e-9, abs=1e-7)
    assert fl.relative_frobenius_error(D, Kd) == pytest.approx(whole, rel=1e-12)


def test_e2_matches_direct_formula(rng):
    net = fl.MLP([4, 5, 3], seed=0)
    b = fl.factor_batch(net, rng.normal(size=(9, 4)))
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    for l in range(2):
        s = F.block_slice(l)
        D1, D2 = F.to_dense()[s, s], K.to_dense()[s, s]
        s1 = np.linalg.svd(D1, compute_uv=False)
        s2 = np.linalg.svd(D2, compute_uv=False)
        ref = np.linalg.norm(s1 - s2) / np.linalg.norm(s1)
        assert fl.singular_value_error(F, K, block=l) == pytest.approx(ref, rel=1e-8)


def test_identical_matrices_have_zero_error(rng):
    net = fl.MLP([3, 4, 2], seed=0)
    b = fl.factor_batch(net, rng.normal(size=(1, 3)))
    F, K = fl.FisherOperator(b), fl.KFAC(b)  # one sample: KFAC is exact
    assert fl.relative_frobenius_error(F, K, block=1) < 1e-6
    assert fl.singular_value_error(F, K, block=1) < 1e-10


def test_metric_errors(rng):
    net = fl.MLP([3, 4, 2], seed=0)
    b = fl.factor_batch(net, rng.normal(size=(5, 3)))
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    with pytest.raises(fl.UnknownNameError):
        fl.relative_frobenius_error(F, K, method="fast")
    with pytest.raises(fl.ShapeError, match="Gram route"):
        fl.relative_frobenius_error(F, fl.DenseOperator(F.to_dense()), method="gram")
    with pytest.raises(fl.ShapeError, match="shapes"):
        fl.relative_frobenius_error(np.eye(3), np.eye(4))
    with pytest.raises(fl.ShapeError, match="zero"):
        fl.relative_frobenius_error(np.zeros((2, 2)), np.eye(2))
    with pytest.raises(IndexError):
        fl.relative_frobenius_error(F, K, block=5)
    with pytest.raises(fl.DenseMemoryError):
        fl.singular_value_error(F, K, max_bytes=8)
