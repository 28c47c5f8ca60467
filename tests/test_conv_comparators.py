"""The comparators on convolution blocks: EKFAC / EigenCorrected, DiagonalFisher,
BlockExact, LowRank and LowRank+Diagonal on factor batches with a position axis.

Every operator is checked against a dense construction from per-sample Jacobian rows
``vec(J_nk)``, ``J_nk = Σ_t g_nkt ā_ntᵀ``, built here with loops over ``n, k, t`` (no fimlab
Jacobian code), with KFC factors summed by loops and NumPy ``eigh``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_conv_fisher import explicit_rows, theta_to_torch_order, torch_twin_cnn

import fimlab as fl
from fimlab.approx.eigencorrected import projected_second_moments
from fimlab.models.layers import Activation, Conv2d, Flatten, Linear, MaxPool2d
from fimlab.models.network import Network, cuda_convnet, network_factor_batch

FISHERS = ["exact", "mc", "empirical"]


# -- independent references ------------------------------------------------------------------
def loop_rows(a, g):
    """Rows vec(J_nk) of one layer (column-major vec of the d_g × d_a matrix), by loops;
    a dense layer (a 2-D) is one position."""
    a, g = np.asarray(a), np.asarray(g)
    if a.ndim == 2:
        a, g = a[:, None, :], g[:, :, None, :]
    return explicit_rows(a, g)


def loop_fisher(b):
    U = np.concatenate([loop_rows(a, g) for a, g in zip(b.a, b.g)], axis=1)
    return U.T @ U / b.n_samples


def loop_kfc(a, g):
    """KFC factors by loops: A = (1/(N T)) Σ ā āᵀ, G = (1/N) Σ g gᵀ."""
    a, g = np.asarray(a), np.asarray(g)
    if a.ndim == 2:
        a, g = a[:, None, :], g[:, :, None, :]
    N, T, da = a.shape
    A = sum(np.outer(a[n, t], a[n, t]) for n in range(N) for t in range(T)) / (N * T)
    G = sum(np.outer(g[n, k, t], g[n, k, t]) for n in range(N) for k in range(g.shape[1])
            for t in range(T)) / N
    return A, G


def eigen_corrected_dense(Fl, A, G):
    """Q diag(diag(Qᵀ F_l Q)) Qᵀ, Q = Q_A ⊗ Q_G (np.kron)."""
    _, QA = np.linalg.eigh(A)
    _, QG = np.linalg.eigh(G)
    Q = np.kron(QA, QG)
    return Q @ np.diag(np.diag(Q.T @ Fl @ Q)) @ Q.T


def sl(b, l):
    return slice(b.offsets[l], b.offsets[l + 1])


def _small_net():
    return Network([Conv2d(2, 3, 3, padding=1), Activation("tanh"), MaxPool2d(2),
                    Conv2d(3, 2, 2), Activation("relu"), Flatten(), Linear(8, 3)],
                   (2, 6, 6), "categorical", seed=1)


def net_batch(fisher, N=5, seed=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 2, 6, 6))
    y = rng.integers(0, 3, size=N)
    return network_factor_batch(_small_net(), X, y, fisher=fisher, mc_samples=2, rng=seed + 1)


def random_conv_batch(rng, N=3, K=2, T=4, da=3, dg=2):
    return fl.FactorBatch([rng.normal(size=(N, T, da)), rng.normal(size=(N, 3))],
                          [rng.normal(size=(N, K, T, dg)), rng.normal(size=(N, K, 2))])


# -- EKFAC / EigenCorrected / Diagonal -------------------------------------------------------
@pytest.mark.parametrize("fisher", FISHERS)
def test_ekfac_and_diagonal_on_conv_blocks_vs_loops(fisher):
    b = net_batch(fisher)
    assert b.positional == [True, True, False]
    F = fl.FisherOperator(b)
    Fd = loop_fisher(b)
    E, D, K = fl.EKFAC(b), fl.DiagonalFisher(b), fl.KFAC(b)
    np.testing.assert_allclose(D.diagonal(), np.diag(Fd), rtol=1e-10, atol=1e-14)
    for l in range(b.n_layers):
        Fl = Fd[sl(b, l), sl(b, l)]
        A, G = loop_kfc(b.a[l], b.g[l])
        ref = eigen_corrected_dense(Fl, A, G)
        np.testing.assert_allclose(E.blocks[l].to_dense(), ref, atol=1e-12)
        # (EK2) ‖F_l − E_l‖² = ‖F_l‖² − ‖s‖², and the E1 metric equals the dense one
        s = E.blocks[l].diagonal_values
        assert np.isclose(np.sum((Fl - ref) ** 2), np.sum(Fl**2) - np.sum(s**2), rtol=1e-8,
                          atol=1e-14)
        e_ref = np.linalg.norm(Fl - ref) / np.linalg.norm(Fl)
        assert fl.relative_frobenius_error(F, E, block=l) == pytest.approx(e_ref, rel=1e-7,
                                                                           abs=1e-10)
        e_d = np.linalg.norm(Fl - np.diag(np.diag(Fl))) / np.linalg.norm(Fl)
        assert fl.relative_frobenius_error(F, D, block=l) == pytest.approx(e_d, rel=1e-7,
                                                                           abs=1e-10)
        # the guaranteed ordering: EKFAC is the Frobenius projection onto a space holding KFC
        e_k = np.linalg.norm(Fl - K.blocks[l].to_dense()) / np.linalg.norm(Fl)
        assert e_ref <= e_k + 1e-12
        assert fl.relative_frobenius_error(F, E, block=l) <= \
            fl.relative_frobenius_error(F, K, block=l) + 1e-9
    whole = np.linalg.norm(Fd - E.to_dense()) / np.linalg.norm(Fd)
    assert fl.relative_frobenius_error(F, E) == pytest.approx(whole, rel=1e-7)
    v = np.random.default_rng(0).normal(size=b.n_params)
    for op in (E, D):
        np.testing.assert_allclose(op.solve(v, 0.1),
                                   np.linalg.solve(op.to_dense() + 0.1 * np.eye(len(v)), v),
                                   rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("fisher", FISHERS)
def test_eigencorrected_kpsvd_on_conv_blocks(fisher):
    """EigenCorrected(KPSVD): the eigenbasis of the (symmetric) KPSVD factors, the
    scalings from the loop Fisher; never worse than KPSVD."""
    b = net_batch(fisher, seed=4)
    F = fl.FisherOperator(b)
    Fd = loop_fisher(b)
    Kp = fl.KPSVD(b)
    E = fl.EigenCorrected(Kp)
    for l in range(b.n_layers):
        A, G = (np.asarray(x) for x in Kp.blocks[l].terms[0])
        Fl = Fd[sl(b, l), sl(b, l)]
        ref = eigen_corrected_dense(Fl, A, G)
        np.testing.assert_allclose(E.blocks[l].to_dense(), ref, atol=1e-12)
        assert fl.relative_frobenius_error(F, E, block=l) <= \
            fl.relative_frobenius_error(F, Kp, block=l) + 1e-9


def test_eigencorrected_conv_against_another_batch():
    """fisher_inner against the Fisher of other samples (no EK2 shortcut), and the moving
    average of the scalings, vs the dense construction."""
    # N = 12: the dense layer's A (d_a = 9) has no repeated (zero) eigenvalues, so the
    # eigenbasis is unique up to signs
    b1, b2 = net_batch("exact", N=12, seed=0), net_batch("exact", N=12, seed=7)
    E = fl.EKFAC(b1)
    F2 = fl.FisherOperator(b2)
    D2 = loop_fisher(b2)
    for l in range(b1.n_layers):
        s = sl(b2, l)
        ref = np.linalg.norm(D2[s, s] - E.blocks[l].to_dense()) / np.linalg.norm(D2[s, s])
        assert fl.relative_frobenius_error(F2, E, block=l) == pytest.approx(ref, rel=1e-7)
    E2 = E.rescaled(b2, rho=0.25)
    for l in range(b1.n_layers):
        A, G = loop_kfc(b1.a[l], b1.g[l])  # basis of b1, scalings 0.25 s(b1) + 0.75 s(b2)
        _, QA = np.linalg.eigh(A)
        _, QG = np.linalg.eigh(G)
        Q = np.kron(QA, QG)
        d1 = np.diag(Q.T @ loop_fisher(b1)[sl(b1, l), sl(b1, l)] @ Q)
        d2 = np.diag(Q.T @ D2[sl(b2, l), sl(b2, l)] @ Q)
        ref = Q @ np.diag(0.25 * d1 + 0.75 * d2) @ Q.T
        np.testing.assert_allclose(E2.blocks[l].to_dense(), ref, atol=1e-12)
    with pytest.raises(fl.ShapeError, match="layer sizes"):
        E.rescaled(random_conv_batch(np.random.default_rng(0)))


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 4), K=st.integers(1, 3), T=st.integers(1, 5), da=st.integers(1, 4),
       dg=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_property_positional_second_moments_and_ek2(N, K, T, da, dg, seed):
    """S = (1/N) Σ (Q_Aᵀ J_nkᵀ Q_G)∘² against the diagonal of Qᵀ F Q from loop rows, for
    random orthogonal bases; with the KFC basis, (EK2) and EKFAC ≤ KFC in E1."""
    rng = np.random.default_rng(seed)
    a, g = rng.normal(size=(N, T, da)), rng.normal(size=(N, K, T, dg))
    U = loop_rows(a, g)
    Fl = U.T @ U / N
    QA, _ = np.linalg.qr(rng.normal(size=(da, da)))
    QG, _ = np.linalg.qr(rng.normal(size=(dg, dg)))
    Q = np.kron(QA, QG)
    S = projected_second_moments(a, g, QA, QG)
    np.testing.assert_allclose(S.reshape(-1), np.diag(Q.T @ Fl @ Q), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(projected_second_moments(a, g).reshape(-1), np.diag(Fl),
                               rtol=1e-9, atol=1e-12)
    b = fl.FactorBatch([a], [g])
    E, Kf = fl.EKFAC(b), fl.KFAC(b)
    Ed, Kd = E.to_dense(), Kf.to_dense()
    nF = np.sum(Fl**2)
    s = E.blocks[0].diagonal_values
    assert np.sum((Fl - Ed) ** 2) == pytest.approx(nF - np.sum(s**2), rel=1e-7, abs=1e-9 * nF)
    assert np.sum((Fl - Ed) ** 2) <= np.sum((Fl - Kd) ** 2) * (1 + 1e-9) + 1e-12 * nF


def test_positional_second_moments_in_chunks(monkeypatch):
    """Chunks of samples (a small memory budget) give the same S."""
    from fimlab.approx import eigencorrected

    rng = np.random.default_rng(3)
    a, g = rng.normal(size=(7, 5, 4)), rng.normal(size=(7, 2, 5, 3))
    QA, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    S1 = projected_second_moments(a, g, QA, None)
    monkeypatch.setattr(eigencorrected, "POSITIONAL_CHUNK_BYTES", 1)
    S2 = projected_second_moments(a, g, QA, None)
    np.testing.assert_allclose(S2, S1, rtol=1e-12)
    Q = np.kron(QA, np.eye(3))
    U = loop_rows(a, g)
    np.testing.assert_allclose(S2.reshape(-1), np.diag(Q.T @ (U.T @ U / 7) @ Q), rtol=1e-9)


def test_projected_second_moments_bad_shapes():
    rng = np.random.default_rng(0)
    a, g = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 1, 4, 2))
    with pytest.raises(fl.ShapeError, match="T, d_a"):
        projected_second_moments(a, g[:, :, 0])
    with pytest.raises(fl.ShapeError):
        projected_second_moments(a, g[:, :, :3])
    with pytest.raises(fl.ShapeError, match="QA"):
        projected_second_moments(a, g, np.eye(3), None)


# -- BlockExact ------------------------------------------------------------------------------
@pytest.mark.parametrize("fisher", FISHERS)
def test_block_exact_on_conv_blocks_vs_loops(fisher):
    b = net_batch(fisher, seed=5)
    F = fl.FisherOperator(b)
    Fd = loop_fisher(b)
    B = fl.BlockExact(b)
    Bd = np.zeros_like(Fd)
    for l in range(b.n_layers):
        Bd[sl(b, l), sl(b, l)] = Fd[sl(b, l), sl(b, l)]
        assert fl.relative_frobenius_error(F, B, block=l) == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(B.to_dense(), Bd, atol=1e-12)
    assert fl.relative_frobenius_error(F, B) == pytest.approx(
        np.linalg.norm(Fd - Bd) / np.linalg.norm(Fd), rel=1e-7)
    v = np.random.default_rng(1).normal(size=b.n_params)
    np.testing.assert_allclose(B.solve(v, 0.05),
                               np.linalg.solve(Bd + 0.05 * np.eye(len(v)), v),
                               rtol=1e-7, atol=1e-10)


def test_block_exact_conv_e1_against_another_batch():
    """⟨F'_l, F_l⟩ of two batches' conv blocks (the positional Gram route) vs dense."""
    b1, b2 = net_batch("exact", seed=0), net_batch("mc", seed=8)
    B = fl.BlockExact(b1)
    F2 = fl.FisherOperator(b2)
    D1, D2 = loop_fisher(b1), loop_fisher(b2)
    for l in range(b1.n_layers):
        s = sl(b1, l)
        ref = np.linalg.norm(D2[s, s] - D1[s, s]) / np.linalg.norm(D2[s, s])
        assert fl.relative_frobenius_error(F2, B, block=l) == pytest.approx(ref, rel=1e-7)


# -- LowRank / LowRank+Diagonal --------------------------------------------------------------
@pytest.mark.parametrize("fisher", FISHERS)
@pytest.mark.parametrize("kw", [{}, {"method": "lanczos"}, {"explicit": False}])
def test_lowrank_on_conv_blocks_vs_loops(fisher, kw):
    b = net_batch(fisher, N=4, seed=6)
    F = fl.FisherOperator(b)
    Fd = loop_fisher(b)
    w, V = np.linalg.eigh(Fd)
    w, V = w[::-1], V[:, ::-1]
    k = 3
    Fk = (V[:, :k] * w[:k]) @ V[:, :k].T
    L = fl.LowRank(b, k=k, max_steps=b.n_params, **kw)
    np.testing.assert_allclose(L.values, w[:k], rtol=1e-8)
    np.testing.assert_allclose(L.to_dense(), Fk, atol=1e-9 * w[0])
    assert fl.relative_frobenius_error(F, L) == pytest.approx(
        np.linalg.norm(Fd - Fk) / np.linalg.norm(Fd), rel=1e-6)
    for l in range(b.n_layers):
        s = sl(b, l)
        ref = np.linalg.norm(Fd[s, s] - Fk[s, s]) / np.linalg.norm(Fd[s, s])
        assert fl.relative_frobenius_error(F, L, block=l) == pytest.approx(ref, rel=1e-6)
    v = np.random.default_rng(2).normal(size=b.n_params)
    np.testing.assert_allclose(L.solve(v, 0.1), np.linalg.solve(Fk + 0.1 * np.eye(len(v)), v),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fisher", FISHERS)
def test_lowrank_plus_diagonal_on_conv_blocks_vs_loops(fisher):
    b = net_batch(fisher, N=4, seed=9)
    F = fl.FisherOperator(b)
    Fd = loop_fisher(b)
    w, V = np.linalg.eigh(Fd)
    k = 2
    Fk = (V[:, -k:] * w[-k:]) @ V[:, -k:].T
    ref = Fk + np.diag(np.maximum(np.diag(Fd - Fk), 0.0))
    L = fl.LowRankPlusDiagonal(b, k=k)
    np.testing.assert_allclose(L.to_dense(), ref, atol=1e-9 * w[-1])
    np.testing.assert_allclose(np.diag(L.to_dense()), np.diag(Fd), rtol=1e-8, atol=1e-12)
    assert fl.relative_frobenius_error(F, L) == pytest.approx(
        np.linalg.norm(Fd - ref) / np.linalg.norm(Fd), rel=1e-6)
    for l in range(b.n_layers):
        s = sl(b, l)
        e = np.linalg.norm(Fd[s, s] - ref[s, s]) / np.linalg.norm(Fd[s, s])
        assert fl.relative_frobenius_error(F, L, block=l) == pytest.approx(e, rel=1e-6)
    v = np.random.default_rng(3).normal(size=b.n_params)
    np.testing.assert_allclose(L.solve(v, 0.1), np.linalg.solve(ref + 0.1 * np.eye(len(v)), v),
                               rtol=1e-6, atol=1e-9)


def test_comparator_orderings_on_cuda_convnet():
    """On a scaled-down cuda-convnet (exact Fisher): per conv block EKFAC ≤ KFC,
    EigenCorrected(KPSVD) ≤ KPSVD, BlockExact = 0; for the whole network LowRank is the
    Eckart–Young value of the dense eigenvalues and LowRank+Diagonal ≤ LowRank (its
    diagonal is that of the positive semi-definite remainder)."""
    rng = np.random.default_rng(2)
    net = cuda_convnet(input_shape=(3, 26, 26), channels=(3, 3, 4), seed=0)
    b = network_factor_batch(net, rng.normal(size=(6, 3, 26, 26)))
    F = fl.FisherOperator(b)
    ops = {"kfc": fl.KFAC(b), "ekfac": fl.EKFAC(b), "kp": fl.KPSVD(b),
           "eckp": fl.EigenCorrected(fl.KPSVD(b)), "be": fl.BlockExact(b)}
    for l in range(b.n_layers):
        e = {name: fl.relative_frobenius_error(F, op, block=l) for name, op in ops.items()}
        assert e["ekfac"] <= e["kfc"] + 1e-9
        assert e["eckp"] <= e["kp"] + 1e-9
        assert e["be"] == pytest.approx(0.0, abs=1e-6)
    k = 5
    e_lr = fl.relative_frobenius_error(F, fl.LowRank(b, k=k))
    w = np.linalg.eigvalsh(F.to_dense())[::-1]
    assert e_lr == pytest.approx(np.sqrt(np.sum(w[k:] ** 2) / np.sum(w**2)), rel=1e-6)
    e_lrd = fl.relative_frobenius_error(F, fl.LowRankPlusDiagonal(b, k=k))
    assert e_lrd <= e_lr + 1e-9
    assert b.positional[:3] == [True, True, True]


def test_conv_comparators_on_array_backends(xp_backend):
    """EKFAC, the diagonal and BlockExact of a conv batch on NumPy / array_api_strict
    against the NumPy result."""
    from fimlab.backend import to_numpy

    rng = np.random.default_rng(5)
    b_np = random_conv_batch(rng)
    b = fl.FactorBatch([xp_backend.asarray(x) for x in b_np.a],
                       [xp_backend.asarray(x) for x in b_np.g])
    for cls in (fl.EKFAC, fl.DiagonalFisher, fl.BlockExact):
        np.testing.assert_allclose(to_numpy(cls(b).to_dense()), cls(b_np).to_dense(),
                                   atol=1e-12)
    F = fl.FisherOperator(b)
    assert fl.relative_frobenius_error(F, fl.EKFAC(b), block=0) == pytest.approx(
        fl.relative_frobenius_error(fl.FisherOperator(b_np), fl.EKFAC(b_np), block=0),
        rel=1e-9)


def test_ekfac_on_cnn_matches_curvlinops():
    """EKFAC on a CNN = curvlinops' EKFACLinearOperator(kfac_approx="expand") on the same
    PyTorch CNN (exact Fisher, mean reduction): curvlinops also rotates and squares the
    per-sample gradients summed over positions."""
    torch = pytest.importorskip("torch")
    curvlinops = pytest.importorskip("curvlinops")
    nn = torch.nn
    torch.set_num_threads(1)
    rng = np.random.default_rng(6)
    net, model = torch_twin_cnn(torch)
    X = rng.normal(size=(12, 2, 4, 4))
    data = [(torch.tensor(X), torch.tensor(rng.integers(0, 3, size=12)))]
    params = list(model.parameters())
    try:
        op = curvlinops.EKFACLinearOperator(
            model, nn.CrossEntropyLoss(), params, data, fisher_type="type-2",
            kfac_approx="expand", separate_weight_and_bias=False, check_deterministic=False)
    except TypeError as exc:  # pragma: no cover - an incompatible curvlinops version
        pytest.skip(f"curvlinops API differs: {exc}")
    b = network_factor_batch(net, X)
    E = fl.EKFAC(b)
    P = E.shape[0]
    Pt = theta_to_torch_order(net)  # fimlab's θ (column-major vec of [W | b]) -> torch's
    D_t = (op @ torch.eye(P, dtype=torch.float64)).detach().numpy()
    D_f = E.to_dense()
    np.testing.assert_allclose(Pt @ D_f @ Pt.T, D_t, rtol=1e-8, atol=1e-10 * np.abs(D_t).max())
    assert np.abs(D_f - fl.KFAC(b).to_dense()).max() > 1e-4 * np.abs(D_f).max()
