"""The KPSVD family on convolution blocks, against an SVD of the explicit R(F_l)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab.approx import conv_rearranged
from fimlab.approx.conv_rearranged import (
    RearrangedConvFisher,
    conv_top_triplets,
    normal_matrix,
)
from fimlab.kron import rearrange, rearrange_inverse
from fimlab.models.network import cuda_convnet, network_factor_batch


def explicit_F(a, g):
    """(1/N) Σ vec(J) vec(J)ᵀ by loops (independent of the package's Jacobian code)."""
    N, T, da = a.shape
    K, dg = g.shape[1], g.shape[3]
    F = np.zeros((da * dg, da * dg))
    for n in range(N):
        for k in range(K):
            J = sum(np.outer(g[n, k, t], a[n, t]) for t in range(T))
            j = J.ravel(order="F")
            F += np.outer(j, j)
    return F / N


def conv_batch(rng, N=4, K=2, T=3, da=3, dg=2):
    a = rng.normal(size=(N, T, da))
    g = rng.normal(size=(N, K, T, dg))
    return fl.FactorBatch([a, rng.normal(size=(N, 3))], [g, rng.normal(size=(N, K, 2))])


def sym_projector(d):
    """P with P vec(V) = vec((V + Vᵀ)/2), explicitly."""
    P = np.zeros((d * d, d * d))
    for i in range(d):
        for j in range(d):
            P[i + d * j, i + d * j] += 0.5
            P[i + d * j, j + d * i] += 0.5
    return P


def best_rank(F, da, dg, r):
    """Best sum of r Kronecker products with symmetric factors: SVD of R(F) P_g."""
    R = rearrange(F, da, dg) @ sym_projector(dg)
    U, S, Vt = np.linalg.svd(R)
    return rearrange_inverse((U[:, :r] * S[:r]) @ Vt[:r], da, dg), S


@settings(max_examples=15)
@given(N=st.integers(1, 4), K=st.integers(1, 2), T=st.integers(1, 4), da=st.integers(1, 3),
       dg=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_rearranged_conv_products_vs_explicit(N, K, T, da, dg, seed):
    rng = np.random.default_rng(seed)
    a, g = rng.normal(size=(N, T, da)), rng.normal(size=(N, K, T, dg))
    R_full = rearrange(explicit_F(a, g), da, dg)
    Pa, Pg = sym_projector(da), sym_projector(dg)
    # R(F) commutes with transposing both factors: P_a R = R P_g
    np.testing.assert_allclose(Pa @ R_full, R_full @ Pg, atol=1e-10)
    x, y = rng.normal(size=dg * dg), rng.normal(size=da * da)
    for sym, R_ref in ((False, R_full), (True, R_full @ Pg)):
        for route in ("samples", "positions"):
            R = RearrangedConvFisher(a, g, symmetric=sym, route=route)
            np.testing.assert_allclose(R.to_dense(), R_ref, atol=1e-10)
            np.testing.assert_allclose(R.matvec(x), R_ref @ x, atol=1e-10)
            np.testing.assert_allclose(R.rmatvec(y), R_ref.T @ y, atol=1e-10)
    if T == 1:  # a dense layer: no antisymmetric part
        np.testing.assert_allclose(R_full @ (np.eye(dg * dg) - Pg), 0, atol=1e-10)


def test_conv_block_has_an_antisymmetric_part():
    """Why the symmetric restriction matters: with T > 1, R(F) has a non-zero
    antisymmetric part (A ⊗ G with A, G antisymmetric)."""
    rng = np.random.default_rng(0)
    a, g = rng.normal(size=(3, 4, 3)), rng.normal(size=(3, 1, 4, 3))
    R = rearrange(explicit_F(a, g), 3, 3)
    assert np.linalg.norm(R @ (np.eye(9) - sym_projector(3))) > 1e-3


@pytest.mark.parametrize("route", ["dense", "golub-kahan", "normal", "auto", "auto-fallback",
                                   "auto-fallback-dense"])
def test_kpsvd_family_on_conv_block_vs_explicit_svd(route, monkeypatch):
    """Every exact route (dense SVD; Golub–Kahan; the normal route; "auto": Golub–Kahan
    within the budget of the cheaper direct route, and with a budget too small to
    converge, the fall-back to the normal or the dense route) against the explicit SVD."""
    if route not in ("dense", "auto-fallback-dense"):
        monkeypatch.setattr(conv_rearranged, "DENSE_MAX_ENTRIES", 0)
    monkeypatch.setattr(conv_rearranged, "EXACT_ROUTE",
                        "auto" if route.startswith("auto") else route)
    if route.startswith("auto-fallback"):
        monkeypatch.setattr(conv_rearranged, "gk_step_budget", lambda R, flops: 2)
    if route == "auto-fallback-dense":
        monkeypatch.setattr(conv_rearranged, "NORMAL_MAX_SIDE", 0)
    rng = np.random.default_rng(1)
    b = conv_batch(rng)
    want = {"dense": "dense-svd", "golub-kahan": "lanczos", "normal": "normal",
            "auto": "lanczos", "auto-fallback": "normal",
            "auto-fallback-dense": "dense-svd"}[route]
    for op in (fl.KPSVD(b), fl.KFACCorrected(b), fl.Deflation(b)):
        assert op.reports[0].method == want, (type(op).__name__, op.reports[0].method)
    a, g = b.a[0], b.g[0]
    F0 = explicit_F(a, g)
    s0 = slice(0, b.block_sizes[0])
    for r in (1, 2, 3):
        ref, S = best_rank(F0, 3, 2, r)
        np.testing.assert_allclose(fl.KPSVD(b, rank=r).blocks[0].to_dense(), ref, atol=1e-8)
    ref2, _ = best_rank(F0, 3, 2, 2)
    for op in (fl.Deflation(b), fl.Lanczos(b)):
        np.testing.assert_allclose(op.blocks[0].to_dense(), ref2, atol=1e-8)
    # KFAC-corrected: KFAC + the best rank-one term of the residual
    AK, GK = fl.KFAC(b).factors[0]
    Rres = rearrange(F0 - np.kron(AK, GK), 3, 2) @ sym_projector(2)
    U, S, Vt = np.linalg.svd(Rres)
    ref_c = np.kron(AK, GK) + rearrange_inverse(S[0] * np.outer(U[:, 0], Vt[0]), 3, 2)
    np.testing.assert_allclose(fl.KFACCorrected(b).blocks[0].to_dense(), ref_c, atol=1e-8)
    assert fl.FisherOperator(b).block(0) == pytest.approx(F0[s0, s0])


def test_error_orderings_on_conv_blocks():
    """E1 orderings of the family on every conv block of a small cuda-convnet (exact
    Fisher): rank-2 ≤ rank-1 ≤ KFAC, KFAC-corrected ≤ KFAC, Deflation = Lanczos = rank 2;
    the Gram-identity E1 equals the dense one."""
    rng = np.random.default_rng(2)
    net = cuda_convnet(input_shape=(3, 26, 26), channels=(3, 3, 4), seed=0)
    b = network_factor_batch(net, rng.normal(size=(6, 3, 26, 26)))
    F = fl.FisherOperator(b)
    ops = {"kfac": fl.KFAC(b), "k1": fl.KPSVD(b), "k2": fl.KPSVD(b, rank=2),
           "corr": fl.KFACCorrected(b), "defl": fl.Deflation(b), "lz": fl.Lanczos(b)}
    for l in range(b.n_layers):
        e = {k: fl.relative_frobenius_error(F, op, block=l) for k, op in ops.items()}
        e_dense = fl.relative_frobenius_error(F, ops["k1"], block=l, method="dense")
        assert e["k1"] == pytest.approx(e_dense, rel=1e-8, abs=1e-10)
        tol = 1e-9
        assert e["k2"] <= e["k1"] + tol <= e["kfac"] + 2 * tol
        assert e["corr"] <= e["kfac"] + tol
        assert e["defl"] == pytest.approx(e["k2"], abs=1e-8)
        assert e["lz"] == pytest.approx(e["k2"], abs=1e-8)
    assert b.positional[:3] == [True, True, True]


def test_paper_solver_on_conv_block_matches_exact():
    rng = np.random.default_rng(3)
    b = conv_batch(rng, N=5, T=4)
    ex = fl.KPSVD(b).blocks[0].to_dense()
    pa = fl.KPSVD(b, solver="paper", tol=1e-10, products="gram").blocks[0].to_dense()
    np.testing.assert_allclose(pa, ex, atol=1e-6)
    c_ex = fl.KFACCorrected(b).blocks[0].to_dense()
    c_pa = fl.KFACCorrected(b, solver="paper", tol=1e-10).blocks[0].to_dense()
    np.testing.assert_allclose(c_pa, c_ex, atol=1e-6)


def test_conv_rank_errors_and_zero_block():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2, 3, 2))
    g = rng.normal(size=(2, 1, 3, 1))  # d_g = 1: R(F) has rank 1
    b = fl.FactorBatch([a], [g])
    with pytest.raises(fl.ShapeError, match="rank"):
        fl.KPSVD(b, rank=2)
    bz = fl.FactorBatch([a], [np.zeros((2, 1, 3, 2))])
    assert np.all(fl.KPSVD(bz).blocks[0].to_dense() == 0)
    with pytest.raises(fl.ShapeError):
        RearrangedConvFisher(a[:, 0], g)
    with pytest.raises(fl.ShapeError, match="route"):
        RearrangedConvFisher(a, g, route="fast")


def test_conv_kpsvd_on_array_backends(xp_backend):
    """R(F_l) products, its dense form and the exact KPSVD of a conv block on NumPy /
    array_api_strict (Golub–Kahan route off NumPy) against the NumPy result."""
    from fimlab.backend import to_numpy

    rng = np.random.default_rng(5)
    a, g = rng.normal(size=(3, 4, 3)), rng.normal(size=(3, 2, 4, 2))
    R_np = RearrangedConvFisher(a, g).to_dense()
    ax, gx = xp_backend.asarray(a), xp_backend.asarray(g)
    for route in ("samples", "positions"):
        R = RearrangedConvFisher(ax, gx, route=route)
        np.testing.assert_allclose(to_numpy(R.to_dense()), R_np, atol=1e-12)
        x = rng.normal(size=4)
        np.testing.assert_allclose(to_numpy(R.matvec(xp_backend.asarray(x))), R_np @ x,
                                   atol=1e-12)
    b_np = fl.FactorBatch([a], [g])
    b = fl.FactorBatch([ax], [gx])
    np.testing.assert_allclose(to_numpy(fl.KPSVD(b).blocks[0].to_dense()),
                               fl.KPSVD(b_np).blocks[0].to_dense(), atol=1e-8)


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 4), K=st.integers(1, 2), T=st.integers(1, 4), da=st.integers(1, 4),
       dg=st.integers(1, 4), sym=st.booleans(), seed=st.integers(0, 2**16))
def test_normal_matrix_vs_explicit(N, K, T, da, dg, sym, seed):
    """RᵀR (d_g ≤ d_a) or RRᵀ of the (symmetric part of the) explicit R(F_l), also when
    the cross-Gram matrices come a few samples at a time."""
    rng = np.random.default_rng(seed)
    a, g = rng.normal(size=(N, T, da)), rng.normal(size=(N, K, T, dg))
    D = rearrange(explicit_F(a, g), da, dg)
    if sym:
        D = D @ sym_projector(dg)
    R = RearrangedConvFisher(a, g, symmetric=sym)
    H, side = normal_matrix(R)
    assert side == ("g" if dg <= da else "a")
    ref = D.T @ D if side == "g" else D @ D.T
    np.testing.assert_allclose(H, ref, atol=1e-10 * max(1.0, np.abs(ref).max()))
    with pytest.MonkeyPatch.context() as mp:  # one sample's cross-Grams per chunk
        mp.setattr(conv_rearranged, "NORMAL_CHUNK_BYTES", 1)
        H1 = normal_matrix(R)[0]
    np.testing.assert_allclose(H1, H, atol=1e-12 * max(1.0, np.abs(H).max()))


@pytest.mark.parametrize("shape", [(3, 2, 4, 5, 3), (3, 2, 4, 3, 5), (2, 1, 3, 4, 4)])
@pytest.mark.parametrize("sym", [True, False])
def test_normal_route_triplets_vs_explicit_svd(shape, sym):
    """The normal route's singular values and vectors (both sides; with and without a
    KFAC deflation term) against numpy's SVD of the explicit (symmetric part of) R."""
    from fimlab.approx.kfc import kfc_factors

    N, K, T, da, dg = shape
    rng = np.random.default_rng(sum(shape))
    a, g = rng.normal(size=(N, T, da)), rng.normal(size=(N, K, T, dg))
    D = rearrange(explicit_F(a, g), da, dg)
    if sym:
        D = D @ sym_projector(dg)
    R = RearrangedConvFisher(a, g, symmetric=sym)
    A, G = kfc_factors(a, g)
    x, y = A.reshape(-1, order="F"), G.reshape(-1, order="F")
    for defl, Dd in (([], D), ([(1.0, x, y)], D - np.outer(x, y))):
        S = np.linalg.svd(Dd, compute_uv=False)
        for k in (1, 2):
            s, U, V, rep = conv_top_triplets(R, k, defl, route="normal")
            assert rep.method == "normal" and rep.converged
            np.testing.assert_allclose(s, S[:k], rtol=1e-10)
            np.testing.assert_allclose(U.T @ Dd @ V, np.diag(s), atol=1e-10 * S[0])
            np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)
            np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-10)


def test_normal_route_defers_to_golub_kahan_on_a_rank_deficient_block(monkeypatch):
    """A wanted singular value RᵀR cannot resolve (rank below k): the normal route hands
    over to Golub–Kahan, which finds the rank (so the rank error stays the same)."""
    monkeypatch.setattr(conv_rearranged, "DENSE_MAX_ENTRIES", 0)
    monkeypatch.setattr(conv_rearranged, "EXACT_ROUTE", "normal")
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2, 3, 2))
    g = rng.normal(size=(2, 1, 3, 1))  # d_g = 1: R(F) has rank 1
    b = fl.FactorBatch([a], [g])
    with pytest.raises(fl.ShapeError, match="rank"):
        fl.KPSVD(b, rank=2)
    assert fl.KPSVD(b).reports[0].method == "normal"
    s, _, _, rep = conv_top_triplets(RearrangedConvFisher(a, g), 2, route="normal")
    assert rep.method == "lanczos" and s[1] == 0.0 and s[0] > 0
    with pytest.raises(fl.ShapeError, match="route"):
        conv_top_triplets(RearrangedConvFisher(a, g), 1, route="fast")


def test_lanczos_svd_step_budget():
    """max_steps caps the Krylov space: a flat spectrum is not resolved within the budget
    (converged False, no warning), and a budget at the dimension is the exact run."""
    import warnings

    from fimlab.kron.krylov import lanczos_svd
    from fimlab.kron.pairs import as_product_pair

    rng = np.random.default_rng(0)
    Q1, _ = np.linalg.qr(rng.normal(size=(60, 40)))
    Q2, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    Mx = (Q1 * np.linspace(1.0, 0.98, 40)) @ Q2.T  # flat spectrum
    op = as_product_pair(Mx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s, U, V, rep = lanczos_svd(op, k=2, steps=None, tol=1e-10, max_steps=5, warn=False)
    assert not rep.converged and rep.iterations <= 5
    s, U, V, rep = lanczos_svd(op, k=2, steps=None, tol=1e-10, max_steps=40)
    assert rep.converged
    np.testing.assert_allclose(s, np.linalg.svd(Mx, compute_uv=False)[:2], rtol=1e-10)
    with pytest.raises(fl.ShapeError, match="max_steps"):
        lanczos_svd(op, k=2, steps=None, max_steps=1)


def test_one_position_conv_block_is_the_dense_block():
    """T = 1 (a 1×1 output map): the KPSVD family takes the dense layers' Gram route and
    gives the block of the dense batch with the position axis dropped, = explicit SVD."""
    rng = np.random.default_rng(6)
    a, g = rng.normal(size=(5, 1, 4)), rng.normal(size=(5, 2, 1, 3))
    b = fl.FactorBatch([a], [g])
    bd = fl.FactorBatch([a[:, 0]], [g[:, :, 0]])
    F0 = explicit_F(a, g)
    for cls in (fl.KPSVD, fl.KFACCorrected, fl.Deflation, fl.Lanczos):
        op, od = cls(b), cls(bd)
        assert op.reports[0].method.startswith("gram")
        np.testing.assert_allclose(op.blocks[0].to_dense(), od.blocks[0].to_dense(),
                                   atol=1e-12)
    ref, _ = best_rank(F0, 4, 3, 2)
    np.testing.assert_allclose(fl.Deflation(b).blocks[0].to_dense(), ref, atol=1e-9)
    pa = fl.KPSVD(b, solver="paper", tol=1e-10).blocks[0].to_dense()
    np.testing.assert_allclose(pa, best_rank(F0, 4, 3, 1)[0], atol=1e-6)


def test_golub_kahan_stops_when_the_row_space_is_exhausted():
    """A low-rank operator (rank 5 in 300 columns): after the breakdown Golub–Kahan
    restarts from the row space (Rᵀx), finds nothing new and stops, instead of exploring
    the null space one dimension per restart; the triplets are exact. Also with a
    deflation term, and on a conv block with one position (rank ≤ N) through the
    Golub–Kahan route."""
    from fimlab.kron.krylov import lanczos_svd
    from fimlab.kron.pairs import as_product_pair, deflate

    rng = np.random.default_rng(1)
    Mx = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 300))
    S = np.linalg.svd(Mx, compute_uv=False)
    s, U, V, rep = lanczos_svd(as_product_pair(Mx), k=2, steps=None, tol=1e-10)
    assert rep.converged and rep.iterations <= 12
    np.testing.assert_allclose(s, S[:2], rtol=1e-10)
    x, y = U[:, 0] * s[0], V[:, 0]
    s2, _, _, rep2 = lanczos_svd(deflate(as_product_pair(Mx), [(1.0, x, y)]), k=1,
                                 steps=None, tol=1e-10)
    assert rep2.converged and rep2.iterations <= 12
    np.testing.assert_allclose(s2, S[1:2], rtol=1e-9)
    a, g = rng.normal(size=(4, 1, 12)), rng.normal(size=(4, 2, 1, 9))
    R = RearrangedConvFisher(a, g)
    D = R.to_dense()
    s3, U3, V3, rep3 = conv_top_triplets(R, 2, route="golub-kahan")
    assert rep3.method == "lanczos" and rep3.iterations <= 12
    np.testing.assert_allclose(s3, np.linalg.svd(D, compute_uv=False)[:2], rtol=1e-10)
