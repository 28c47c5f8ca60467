"""Factor batches with a position axis (convolutions): Fisher products, Woodbury, norms and
KFC, each against explicit per-sample Jacobians built independently."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab.approx.kfc import kfc_factors
from fimlab.models.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
)
from fimlab.models.network import Network, cuda_convnet, network_factor_batch


def explicit_rows(a, g):
    """vec(J_nk), J_nk = Σ_t g_nkt ā_ntᵀ, by loops over samples, vectors and positions."""
    N, T, da = a.shape
    K, dg = g.shape[1], g.shape[3]
    rows = np.zeros((N * K, da * dg))
    for n in range(N):
        for k in range(K):
            J = np.zeros((dg, da))
            for t in range(T):
                J += np.outer(g[n, k, t], a[n, t])
            rows[n * K + k] = J.ravel(order="F")
    return rows


def random_batch(rng, N=3, K=2, layers=((4, 3, 2), (None, 3, 2))):
    """Mixed batch: (T, d_a, d_g) per layer, T=None for a dense layer."""
    a, g = [], []
    for T, da, dg in layers:
        if T is None:
            a.append(rng.normal(size=(N, da)))
            g.append(rng.normal(size=(N, K, dg)))
        else:
            a.append(rng.normal(size=(N, T, da)))
            g.append(rng.normal(size=(N, K, T, dg)))
    return fl.FactorBatch(a, g)


def explicit_U(b):
    cols = []
    for al, gl in zip(b.a, b.g):
        if al.ndim == 2:
            al, gl = al[:, None, :], gl[:, :, None, :]
        cols.append(explicit_rows(np.asarray(al), np.asarray(gl)))
    return np.concatenate(cols, axis=1)


@settings(max_examples=15)
@given(N=st.integers(1, 4), K=st.integers(1, 3), T=st.integers(1, 5), da=st.integers(1, 4),
       dg=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_positional_fisher_matches_explicit_rows(N, K, T, da, dg, seed):
    rng = np.random.default_rng(seed)
    b = random_batch(rng, N, K, ((T, da, dg), (None, 2, dg)))
    U = explicit_U(b)
    F_ref = U.T @ U / N
    np.testing.assert_allclose(b.jacobian_matrix(), U, atol=1e-12)
    F = fl.FisherOperator(b)
    X = rng.normal(size=(F.shape[0], 3))
    np.testing.assert_allclose(F @ X, F_ref @ X, atol=1e-10)
    np.testing.assert_allclose(F.to_dense(), F_ref, atol=1e-10)
    np.testing.assert_allclose(b.gram(), U @ U.T, atol=1e-10)
    assert np.isclose(F.frobenius_norm_sq(), np.sum(F_ref**2), rtol=1e-10)
    assert np.isclose(F.trace(), np.trace(F_ref), rtol=1e-10)
    lam = 0.3
    v = rng.normal(size=F.shape[0])
    np.testing.assert_allclose(F.solve(v, lam), np.linalg.solve(F_ref + lam * np.eye(len(v)), v),
                               rtol=1e-8, atol=1e-10)
    B0 = F.diagonal_block(0)
    s0 = F.block_slice(0)
    np.testing.assert_allclose(F.block(0), F_ref[s0, s0], atol=1e-10)
    assert np.isclose(B0.frobenius_norm_sq(), np.sum(F_ref[s0, s0] ** 2), rtol=1e-10)
    A, G = rng.normal(size=(da, da)), rng.normal(size=(dg, dg))
    A, G = A + A.T, G + G.T
    assert np.isclose(B0.inner_kron([(A, G)]), np.sum(F_ref[s0, s0] * np.kron(A, G)),
                      rtol=1e-9, atol=1e-10)


def _conv_net():
    return Network([Conv2d(2, 3, 3, padding=1, stride=2), Activation("tanh"), MaxPool2d(2),
                    BatchNorm(3), Flatten(), Linear(3, 3)], (2, 5, 5), "categorical", seed=1)


@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_network_factor_batch_is_per_sample_jacobian(fisher):
    """The batch's rows = the network's per-sample Jacobian rows of the same output
    vectors (columns of the conv and linear blocks), which are checked against finite
    differences in test_conv_models; and the Fisher matches the definition."""
    rng = np.random.default_rng(2)
    net = _conv_net()
    X = rng.normal(size=(4, 2, 5, 5))
    y = rng.integers(0, 3, size=4)
    b = network_factor_batch(net, X, y, fisher=fisher, mc_samples=2, rng=3)
    z = net.forward(X)
    lik = net.likelihood
    V = {"exact": lambda: lik.sqrt_fisher(z),
         "mc": lambda: lik.mc_vectors(z, np.random.default_rng(3), 2),
         "empirical": lambda: lik.dloss(z, y)[:, None, :]}[fisher]()
    Jr = net.per_sample_jacobians(X, V)
    keep = np.concatenate([np.arange(o, o + r * c) for (r, c), k, o in
                           zip(net.shapes, net.kinds(),
                               np.cumsum([0] + [r * c for r, c in net.shapes]))
                           if k != "batchnorm"])
    np.testing.assert_allclose(b.jacobian_matrix(), Jr[:, keep], atol=1e-12)
    assert b.positional == [True, False] and b.positions == [9, 1]


def test_exact_fisher_of_conv_net_vs_finite_difference_jacobian():
    """Exact Fisher (1/N) Σ_n J_nᵀ H_n J_n with J_n = ∂z_n/∂θ by finite differences
    (conv and linear blocks), H_n the softmax Hessian."""
    rng = np.random.default_rng(9)
    net = _conv_net()
    X = rng.normal(size=(3, 2, 5, 5))
    b = network_factor_batch(net, X)
    theta = net.get_flat()
    offs = np.cumsum([0] + [r * c for r, c in net.shapes])
    idx = np.concatenate([np.arange(offs[i], offs[i + 1]) for i, k in enumerate(net.kinds())
                          if k != "batchnorm"])
    eps = 1e-6
    J = np.zeros((3, 3, idx.size))
    for j, i in enumerate(idx):
        e = np.zeros_like(theta)
        e[i] = eps
        net.set_flat(theta + e)
        zp = net.forward(X)
        net.set_flat(theta - e)
        zm = net.forward(X)
        J[:, :, j] = (zp - zm) / (2 * eps)
    net.set_flat(theta)
    p = net.likelihood.mean(net.forward(X))
    F_ref = sum(J[n].T @ (np.diag(p[n]) - np.outer(p[n], p[n])) @ J[n] for n in range(3)) / 3
    np.testing.assert_allclose(fl.FisherOperator(b).to_dense(), F_ref, atol=1e-7)


# -- KFC -----------------------------------------------------------------------------------
def test_kfc_factors_vs_loops_and_curvlinops_convention():
    rng = np.random.default_rng(0)
    N, K, T, da, dg = 3, 2, 4, 3, 2
    a = rng.normal(size=(N, T, da))
    g = rng.normal(size=(N, K, T, dg))
    A, G = kfc_factors(a, g)
    A_ref = sum(np.outer(a[n, t], a[n, t]) for n in range(N) for t in range(T)) / (N * T)
    G_ref = sum(np.outer(g[n, k, t], g[n, k, t]) for n in range(N) for k in range(K)
                for t in range(T)) / N
    np.testing.assert_allclose(A, A_ref, atol=1e-12)
    np.testing.assert_allclose(G, G_ref, atol=1e-12)
    # through KFAC on a mixed batch
    b = fl.FactorBatch([a, rng.normal(size=(N, 2))], [g, rng.normal(size=(N, K, 3))])
    Kop = fl.KFAC(b)
    np.testing.assert_allclose(Kop.factors[0][0], A_ref, atol=1e-12)
    np.testing.assert_allclose(fl.FisherBlock(b, 0).kfac_factors()[1], G_ref, atol=1e-12)


@settings(max_examples=10)
@given(K=st.integers(1, 3), da=st.integers(1, 4), dg=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_kfc_is_exact_for_one_sample_one_position(K, da, dg, seed):
    rng = np.random.default_rng(seed)
    b = fl.FactorBatch([rng.normal(size=(1, 1, da))], [rng.normal(size=(1, K, 1, dg))])
    A, G = fl.KFAC(b).factors[0]
    np.testing.assert_allclose(np.kron(A, G), fl.FisherOperator(b).to_dense(), atol=1e-12)
    # and T = 1 KFC = the dense layer's KFAC
    b2 = fl.FactorBatch([b.a[0][:, 0]], [b.g[0][:, :, 0]])
    for x, y in zip(fl.KFAC(b2).factors[0], (A, G)):
        np.testing.assert_allclose(x, y, atol=1e-12)


def test_kfc_is_not_exact_with_several_positions():
    """With T > 1 the conv block is not A ⊗ G (KFC is an approximation there): the test
    above is not vacuous."""
    rng = np.random.default_rng(1)
    b = fl.FactorBatch([rng.normal(size=(1, 3, 2))], [rng.normal(size=(1, 1, 3, 2))])
    A, G = fl.KFAC(b).factors[0]
    assert not np.allclose(np.kron(A, G), fl.FisherOperator(b).to_dense(), atol=1e-3)


@pytest.mark.parametrize("rule", ["exact", "factor", "pi"])
def test_kfc_damped_solves_vs_dense(rule):
    rng = np.random.default_rng(4)
    net = cuda_convnet(input_shape=(3, 26, 26), channels=(2, 2, 3), seed=0)
    b = network_factor_batch(net, rng.normal(size=(3, 3, 26, 26)))
    Kop = fl.KFAC(b)
    lam = 0.05
    v = rng.normal(size=Kop.shape[0])
    out = Kop.solve(v, lam, rule=rule)
    o = 0
    for (A, G), sz in zip(Kop.factors, b.block_sizes):
        da, dg = A.shape[0], G.shape[0]
        if rule == "exact":
            M = np.kron(A, G) + lam * np.eye(sz)
        elif rule == "factor":
            M = np.kron(A + np.sqrt(lam) * np.eye(da), G + np.sqrt(lam) * np.eye(dg))
        else:
            pi = np.sqrt((np.trace(A) / da) / (np.trace(G) / dg))
            M = np.kron(A + pi * np.sqrt(lam) * np.eye(da),
                        G + np.sqrt(lam) / pi * np.eye(dg))
        np.testing.assert_allclose(out[o:o + sz], np.linalg.solve(M, v[o:o + sz]),
                                   rtol=1e-8, atol=1e-10)
        o += sz


def torch_twin_cnn(torch):
    """A small NumPy CNN and the same network in PyTorch (float64, weights copied)."""
    nn = torch.nn
    net = Network([Conv2d(2, 3, 3, padding=1), Activation("relu"), Conv2d(3, 2, 2, stride=2),
                   Flatten(), Linear(8, 3)], (2, 4, 4), "categorical", seed=0)
    c1, c2 = nn.Conv2d(2, 3, 3, padding=1).double(), nn.Conv2d(3, 2, 2, stride=2).double()
    lin = nn.Linear(8, 3).double()
    with torch.no_grad():
        for m, W in zip((c1, c2, lin), net.params):
            m.weight.copy_(torch.tensor(W[:, :-1]).reshape(m.weight.shape))
            m.bias.copy_(torch.tensor(W[:, -1]))
    return net, nn.Sequential(c1, nn.ReLU(), c2, nn.Flatten(), lin)


def theta_to_torch_order(net):
    """The permutation ``Pt`` from fimlab's θ (column-major vec of each ``[W | b]``) to
    PyTorch's parameter order (weight row-major, then bias), as a dense matrix."""
    P = sum(r * c for r, c in net.shapes)
    E, cols = np.eye(P), []
    for j in range(P):
        blocks, o = [], 0
        for (r, c) in net.shapes:
            M = E[o:o + r * c, j].reshape((r, c), order="F")
            blocks += [M[:, :-1].reshape(-1), M[:, -1]]
            o += r * c
        cols.append(np.concatenate(blocks))
    return np.stack(cols, axis=1)


def test_kfc_matches_curvlinops_expand():
    """KFC (A carrying 1/T) = curvlinops' KFACLinearOperator(kfac_approx="expand") on the
    same PyTorch CNN (exact Fisher, mean reduction)."""
    torch = pytest.importorskip("torch")
    curvlinops = pytest.importorskip("curvlinops")
    rng = np.random.default_rng(6)
    net, model = torch_twin_cnn(torch)
    nn = torch.nn
    X = rng.normal(size=(5, 2, 4, 4))
    y = rng.integers(0, 3, size=5)
    data = [(torch.tensor(X), torch.tensor(y))]
    params = [p for p in model.parameters()]
    try:
        op = curvlinops.KFACLinearOperator(
            model, nn.CrossEntropyLoss(), params, data, fisher_type="type-2",
            kfac_approx="expand", separate_weight_and_bias=False, check_deterministic=False)
    except TypeError as exc:  # pragma: no cover - an incompatible curvlinops version
        pytest.skip(f"curvlinops API differs: {exc}")
    b = network_factor_batch(net, X)
    Kop = fl.KFAC(b)
    # curvlinops indexes θ in PyTorch's parameter order (weight row-major, then bias):
    # a permutation Pt maps fimlab's θ (column-major vec of [W | b]) to it
    P = Kop.shape[0]
    Pt = theta_to_torch_order(net)
    D_t = (op @ torch.eye(P, dtype=torch.float64)).detach().numpy()
    D_f = Kop.to_dense()
    np.testing.assert_allclose(Pt @ D_f @ Pt.T, D_t, rtol=1e-8, atol=1e-10)


def test_positional_batch_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(fl.ShapeError, match="positions"):
        fl.FactorBatch([rng.normal(size=(2, 3, 2))], [rng.normal(size=(2, 1, 4, 2))])
    with pytest.raises(fl.ShapeError, match=r"\(N, K, T, d_out\)"):
        fl.FactorBatch([rng.normal(size=(2, 3, 2))], [rng.normal(size=(2, 1, 2))])
    with pytest.raises(fl.ShapeError):
        kfc_factors(rng.normal(size=(2, 2)), rng.normal(size=(2, 1, 2)))
    b = random_batch(rng)
    assert b.subset([0, 2]).a[0].shape == (2, 4, 3)
    assert b.layer(0).positional == [True]


def test_positional_batch_on_array_backends(xp_backend):
    """The matrix-free conv Fisher and KFC on NumPy / array_api_strict (/ CuPy)."""
    rng = np.random.default_rng(3)
    host = random_batch(rng, N=3, K=2, layers=((4, 3, 2), (None, 3, 2)))
    b = fl.FactorBatch([xp_backend.asarray(x) for x in host.a],
                       [xp_backend.asarray(x) for x in host.g])
    assert b.xp is xp_backend.xp
    U = explicit_U(host)
    F_ref = U.T @ U / 3
    F = fl.FisherOperator(b)
    v = rng.normal(size=F.shape[0])
    out = F @ xp_backend.asarray(v)
    np.testing.assert_allclose(np.asarray(fl.backend.to_numpy(out)), F_ref @ v, atol=1e-10)
    sol = F.solve(xp_backend.asarray(v), 0.2)
    np.testing.assert_allclose(np.asarray(fl.backend.to_numpy(sol)),
                               np.linalg.solve(F_ref + 0.2 * np.eye(len(v)), v), atol=1e-9)
    np.testing.assert_allclose(fl.backend.to_numpy(b.jacobian_matrix()), U, atol=1e-12)
    A, G = fl.KFAC(b).factors[0]
    A_ref, G_ref = kfc_factors(host.a[0], host.g[0])
    np.testing.assert_allclose(fl.backend.to_numpy(A), A_ref, atol=1e-12)
    np.testing.assert_allclose(fl.backend.to_numpy(G), G_ref, atol=1e-12)
    assert np.isclose(F.trace(), np.trace(F_ref))


def test_train_mode_batch_is_the_batched_backward():
    """Train mode (batch statistics): the vectors g are those of a batched backward, so
    Σ_n row(n, k) = ∂/∂θ Σ_n v_nkᵀ z_n(θ) with z computed with batch statistics (checked
    by central differences of that coupled function); and they differ from eval mode."""
    rng = np.random.default_rng(8)
    net = _conv_net()
    X = rng.normal(size=(4, 2, 5, 5))
    b = network_factor_batch(net, X, fisher="exact", train=True)
    z = net.forward(X, train=True)
    V = net.likelihood.sqrt_fisher(z)  # the vectors the batch used
    U = b.jacobian_matrix().reshape(4, b.n_vectors, -1).sum(axis=0)  # (K, P_conv+lin)
    theta = net.get_flat()
    offs = np.cumsum([0] + [r * c for r, c in net.shapes])
    idx = np.concatenate([np.arange(offs[i], offs[i + 1]) for i, k in enumerate(net.kinds())
                          if k != "batchnorm"])
    eps = 1e-6
    for j in rng.choice(idx.size, size=12, replace=False):
        e = np.zeros_like(theta)
        e[idx[j]] = eps
        net.set_flat(theta + e)
        zp = net.forward(X, train=True)
        net.set_flat(theta - e)
        zm = net.forward(X, train=True)
        net.set_flat(theta)
        fd = np.einsum("nkc,nc->k", V, (zp - zm) / (2 * eps))
        np.testing.assert_allclose(U[:, j], fd, rtol=1e-6, atol=1e-9)
    b_eval = network_factor_batch(net, X, fisher="exact")
    assert not np.allclose(b.jacobian_matrix(), b_eval.jacobian_matrix())
