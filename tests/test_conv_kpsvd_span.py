"""The exact KPSVD route on a convolution block with fewer patches than d_a (or vectors
than d_g): it solves in the span of the patches and lifts the factors; same operator as
the full problem and as the SVD of the explicit R(F_l)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab.approx import kpsvd as kpsvd_mod
from fimlab.kron import rearrange, rearrange_inverse


def explicit_F(a, g):
    """(1/N) Σ vec(J) vec(J)ᵀ, J = Σ_t g āᵀ, by loops."""
    N, T, da = a.shape
    K, dg = g.shape[1], g.shape[3]
    F = np.zeros((da * dg, da * dg))
    for n in range(N):
        for k in range(K):
            j = sum(np.outer(g[n, k, t], a[n, t]) for t in range(T)).ravel(order="F")
            F += np.outer(j, j)
    return F / N


def sym_projector(d):
    P = np.zeros((d * d, d * d))
    for i in range(d):
        for j in range(d):
            P[i + d * j, i + d * j] += 0.5
            P[i + d * j, j + d * i] += 0.5
    return P


def ops(b):
    return {"KPSVD": fl.KPSVD(b), "KPSVD-2": fl.KPSVD(b, rank=2),
            "KFAC-corrected": fl.KFACCorrected(b), "Deflation": fl.Deflation(b)}


def thin_batch(rng, N=2, K=1, T=2, da=7, dg=6):
    return fl.FactorBatch([rng.normal(size=(N, T, da))], [rng.normal(size=(N, K, T, dg))])


def test_span_reduction_engages_and_matches_explicit_svd(monkeypatch):
    rng = np.random.default_rng(0)
    b = thin_batch(rng)  # N·T = 4 patches in R^7, N·K·T = 4 vectors in R^6
    calls = []
    orig = kpsvd_mod._span_basis

    def spy(x, xp):
        Q = orig(x, xp)
        calls.append(None if Q is None else Q.shape)
        return Q

    monkeypatch.setattr(kpsvd_mod, "_span_basis", spy)
    got = {k: op.blocks[0].to_dense() for k, op in ops(b).items()}
    assert calls[:2] == [(7, 4), (6, 4)]
    a, g = b.a[0], b.g[0]
    F = explicit_F(a, g)
    R = rearrange(F, 7, 6) @ sym_projector(6)
    U, S, Vt = np.linalg.svd(R)
    for r, key in ((1, "KPSVD"), (2, "KPSVD-2"), (2, "Deflation")):
        ref = rearrange_inverse((U[:, :r] * S[:r]) @ Vt[:r], 7, 6)
        np.testing.assert_allclose(got[key], ref, atol=1e-9, err_msg=key)
    AK, GK = fl.KFAC(b).factors[0]
    Rres = rearrange(F - np.kron(AK, GK), 7, 6) @ sym_projector(6)
    U, S, Vt = np.linalg.svd(Rres)
    ref_c = np.kron(AK, GK) + rearrange_inverse(S[0] * np.outer(U[:, 0], Vt[0]), 7, 6)
    np.testing.assert_allclose(got["KFAC-corrected"], ref_c, atol=1e-9)
    # the lifted factors are symmetric and of the full sizes
    for A, G in fl.Deflation(b).blocks[0].terms:
        assert A.shape == (7, 7) and G.shape == (6, 6)
        np.testing.assert_allclose(A, A.T, atol=1e-12)
        np.testing.assert_allclose(G, G.T, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 3), K=st.integers(1, 2), T=st.integers(2, 3), da=st.integers(3, 9),
       dg=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_span_reduction_gives_the_full_problems_operator(N, K, T, da, dg, seed):
    rng = np.random.default_rng(seed)
    b = thin_batch(rng, N, K, T, da, dg)
    try:
        with_red = {k: op.blocks[0].to_dense() for k, op in ops(b).items()}
    except fl.ShapeError as exc:  # R(F_l) of rank < 2: both routes refuse the same way
        assert "rank" in str(exc)
        old, kpsvd_mod.SPAN_REDUCTION = kpsvd_mod.SPAN_REDUCTION, None
        try:
            with pytest.raises(fl.ShapeError, match="rank"):
                ops(b)
        finally:
            kpsvd_mod.SPAN_REDUCTION = old
        return
    old, kpsvd_mod.SPAN_REDUCTION = kpsvd_mod.SPAN_REDUCTION, None
    try:
        without = {k: op.blocks[0].to_dense() for k, op in ops(b).items()}
    finally:
        kpsvd_mod.SPAN_REDUCTION = old
    F = explicit_F(b.a[0], b.g[0])
    S = np.linalg.svd(rearrange(F, da, dg) @ sym_projector(dg), compute_uv=False)
    gap_ok = S[1] - S[2] > 1e-6 * S[0] if len(S) > 2 else True
    for key in with_red:
        if key in ("KPSVD-2", "Deflation") and not gap_ok:
            continue  # the best rank-2 sum is not unique
        if key == "KPSVD" and S[0] - S[1] <= 1e-6 * S[0]:
            continue
        np.testing.assert_allclose(with_red[key], without[key],
                                   atol=1e-7 * max(1.0, np.abs(without[key]).max()),
                                   err_msg=key)


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 4), K=st.integers(1, 3), T=st.integers(1, 5), da=st.integers(1, 6),
       dg=st.integers(1, 5), sym=st.booleans(), seed=st.integers(0, 2**16))
@example(N=2, K=1, T=2, da=6, dg=5, sym=False, seed=0)  # takes the position route
def test_inner_kron_on_conv_blocks_both_routes_vs_explicit(N, K, T, da, dg, sym, seed):
    """⟨F_l, Σ A ⊗ G⟩ of a positional block, by the T × T position route and by the
    per-sample matrices (forced), against the explicit F_l (any A, G, not only symmetric)."""
    from fimlab.curvature import FisherBlock

    rng = np.random.default_rng(seed)
    a, g = rng.normal(size=(N, T, da)), rng.normal(size=(N, K, T, dg))
    b = fl.FactorBatch([a], [g])
    terms = []
    for _ in range(2):
        A, G = rng.normal(size=(da, da)), rng.normal(size=(dg, dg))
        terms.append((A + A.T, G + G.T) if sym else (A, G))
    ref = sum(np.sum(explicit_F(a, g) * np.kron(A, G)) for A, G in terms)
    blk = FisherBlock(b, 0)
    got_p = blk.inner_kron(terms)
    # force the per-sample route: no T × T matrices allowed
    b.positions = [10**6]
    got_m = blk.inner_kron(terms)
    scale = max(1.0, abs(ref))
    assert got_p == pytest.approx(ref, abs=1e-9 * scale)
    assert got_m == pytest.approx(ref, abs=1e-9 * scale)


def test_inner_kron_takes_the_position_route_on_deep_conv_blocks(monkeypatch):
    """A ResNet stage-4 shape (d_a ≫ T): no per-sample d_a × d_g matrices are formed."""
    from fimlab.curvature import FisherBlock

    rng = np.random.default_rng(5)
    N, K, T, da, dg = 2, 1, 4, 300, 40
    b = fl.FactorBatch([rng.normal(size=(N, T, da))], [rng.normal(size=(N, K, T, dg))])
    monkeypatch.setattr(fl.FactorBatch, "jacobian",
                        lambda self, l: (_ for _ in ()).throw(AssertionError("formed M")))
    A, G = np.eye(da), np.eye(dg)
    got = FisherBlock(b, 0).inner_kron([(A, G)])
    # ⟨F, I ⊗ I⟩ = tr F = (1/N) Σ ‖J_nk‖²_F
    J = np.einsum("nktg,nta->nkga", b.g[0], b.a[0])
    assert got == pytest.approx(np.sum(J**2) / N, rel=1e-10)
