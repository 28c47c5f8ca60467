"""KFAC: factors, theory oracles (where KFAC is exact), damping rules vs dense formulas."""

import numpy as np
import pytest

import fimlab as fl


def test_factors_match_definitions(rng):
    net = fl.MLP([4, 5, 3], likelihood="categorical", seed=0)
    b = fl.factor_batch(net, rng.normal(size=(11, 4)), fisher="exact")
    K = fl.KFAC(b)
    for l, (A, G) in enumerate(K.factors):
        a, g = b.a[l], b.g[l]
        np.testing.assert_allclose(A, sum(np.outer(x, x) for x in a) / 11, rtol=1e-12)
        Gref = sum(np.outer(v, v) for n in range(11) for v in g[n]) / 11
        np.testing.assert_allclose(G, Gref, rtol=1e-12)
        assert K.blocks[l].terms[0][0] is A


def test_kfac_exact_for_one_sample(rng):
    net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    b = fl.factor_batch(net, rng.normal(size=(1, 3)), fisher="exact")
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    for l in range(2):
        np.testing.assert_allclose(K.blocks[l].to_dense(), F.block(l), rtol=1e-12, atol=1e-15)
        assert fl.relative_frobenius_error(F, K, block=l) < 1e-6


def test_kfac_exact_for_deep_linear_gaussian(rng):
    """Deep linear network + Gaussian likelihood: g_nk does not depend on n, so every
    diagonal block of the exact Fisher is exactly A ⊗ G."""
    net = fl.MLP([3, 4, 4, 2], activation="linear", likelihood="gaussian", seed=1)
    b = fl.factor_batch(net, rng.normal(size=(25, 3)), fisher="exact")
    F, K = fl.FisherOperator(b), fl.KFAC(b)
    for l in range(3):
        np.testing.assert_allclose(K.blocks[l].to_dense(), F.block(l), rtol=1e-10, atol=1e-13)
    # ... but not with a non-linearity
    net2 = fl.MLP([3, 4, 4, 2], activation="tanh", likelihood="gaussian", seed=1)
    b2 = fl.factor_batch(net2, rng.normal(size=(25, 3)), fisher="exact")
    assert fl.relative_frobenius_error(fl.FisherOperator(b2), fl.KFAC(b2), block=0) > 1e-3


def _dense_rules(A, G, lam):
    da, dg = len(A), len(G)
    Ia, Ig = np.eye(da), np.eye(dg)
    pi = np.sqrt((np.trace(A) / da) / (np.trace(G) / dg))
    return {
        "factor": np.kron(np.linalg.inv(A + np.sqrt(lam) * Ia), np.linalg.inv(G + np.sqrt(lam) * Ig)),
        "pi": np.kron(np.linalg.inv(A + pi * np.sqrt(lam) * Ia),
                      np.linalg.inv(G + np.sqrt(lam) / pi * Ig)),
        "exact": np.linalg.inv(np.kron(A, G) + lam * np.eye(da * dg)),
    }


@pytest.mark.parametrize("rule", ["factor", "pi", "exact"])
@pytest.mark.parametrize("lam", [1e-3, 0.3])
def test_damping_rules_match_dense_formulas(rule, lam, rng):
    net = fl.MLP([4, 5, 3], activation="relu", likelihood="categorical", seed=2)
    b = fl.factor_batch(net, rng.normal(size=(30, 4)), fisher="mc", rng=3)
    K = fl.KFAC(b)
    V = rng.normal(size=(K.shape[0], 2))
    out = K.solve(V, lam, rule=rule)
    refs = [_dense_rules(A, G, lam)[rule] for A, G in K.factors]
    o = K.offsets
    for l, R in enumerate(refs):
        np.testing.assert_allclose(out[o[l] : o[l + 1]], R @ V[o[l] : o[l + 1]], rtol=1e-9,
                                   atol=1e-12)
    # vectors too, and a second call hits the cached inverse
    np.testing.assert_allclose(K.solve(V[:, 0], lam, rule=rule), out[:, 0], rtol=1e-12)


def test_matvec_and_dense_agree(rng):
    net = fl.MLP([4, 5, 3], seed=0)
    K = fl.KFAC(fl.factor_batch(net, rng.normal(size=(10, 4))))
    D = K.to_dense()
    for l, (A, G) in enumerate(K.factors):
        s = K.block_slice(l)
        np.testing.assert_allclose(D[s, s], np.kron(A, G), rtol=1e-13)
    v = rng.normal(size=K.shape[0])
    np.testing.assert_allclose(K @ v, D @ v, rtol=1e-12)
    np.testing.assert_allclose(K.block(0, 1), 0.0)


def test_kfac_bad_input(rng):
    net = fl.MLP([4, 5, 3], seed=0)
    K = fl.KFAC(fl.factor_batch(net, rng.normal(size=(10, 4))))
    v = np.ones(K.shape[0])
    with pytest.raises(fl.UnknownNameError, match="damping rule"):
        K.solve(v, 0.1, rule="tikhonov")
    with pytest.raises(fl.DampingError):
        K.solve(v, -0.1)
    with pytest.raises(fl.ShapeError, match="rows"):
        K.solve(np.ones(3), 0.1)
    with pytest.raises(TypeError, match="FactorBatch"):
        fl.KFAC([np.ones((3, 3))])
