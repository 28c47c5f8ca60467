"""Two-level corrections (docs/papers.md T1-T4 and the coarse-space table) against dense
references built independently with numpy (np.kron, np.linalg)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.linalg import block_diag

import fimlab as fl
from fimlab.approx.twolevel import user_space

LAM = 3e-2
NETS = [
    ([4, 5, 3], "tanh", "categorical"),
    ([3, 3, 3, 3], "linear", "gaussian"),  # a (small) deep linear network
]
FINES = ["kfac", "rank2", "kfac-corrected"]


# ---------------------------------------------------------------------------------------
# problems and independent dense references
# ---------------------------------------------------------------------------------------
def _psd(rng, d, scale):
    B = rng.normal(size=(d, d))
    return scale * (B @ B.T) / d


def make_fine(batch, kind, rng=None):
    """KFAC, or a hand-built rank-2 fine operator: KFAC factors plus a PSD second term
    (so that the papers' |s| rule of I1 is the true inverse of the Kronecker sum)."""
    K = fl.KFAC(batch)
    if kind == "kfac":
        return K
    if kind == "kfac-corrected":  # the KPSVD family's rank-2 operator (second term indefinite)
        return fl.KFACCorrected(batch)
    rng = np.random.default_rng(7) if rng is None else rng
    blocks = []
    for A, G in K.factors:
        A2 = _psd(rng, A.shape[0], 0.3 * np.trace(A) / A.shape[0])
        G2 = _psd(rng, G.shape[0], 0.3 * np.trace(G) / G.shape[0])
        blocks.append(fl.KroneckerOperator([(A, G), (A2, G2)]))
    return fl.BlockDiagonalOperator(blocks)


def _inv_sqrt(M):
    w, Q = np.linalg.eigh(0.5 * (M + M.T))
    return (Q / np.sqrt(w)) @ Q.T


def dense_i1_inverse(A1, G1, A2, G2, lam):
    """docs/papers.md (I1) with the papers' |s| rule, from explicit Kronecker products:
    (K₁⊗K₂) diag(1/(1 + |s₁|⊗|s₂|)) (K₁⊗K₂)ᵀ."""
    Ah, Gh = _inv_sqrt(A1 + lam * np.eye(len(A1))), _inv_sqrt(G1 + lam * np.eye(len(G1)))
    s1, E1 = np.linalg.eigh(Ah @ A2 @ Ah)
    s2, E2 = np.linalg.eigh(Gh @ G2 @ Gh)
    K = np.kron(Ah @ E1, Gh @ E2)
    return K @ np.diag(1.0 / (1.0 + np.kron(np.abs(s1), np.abs(s2)))) @ K.T


def dense_fine_inverse_blocks(fine, lam):
    """``M_i⁻¹`` per block from explicit Kronecker products (rule="factor": K2 / I1)."""
    out = []
    for blk in fine.blocks:
        (A1, G1), *rest = blk.terms
        if not rest:
            sq = np.sqrt(lam)
            out.append(np.kron(np.linalg.inv(A1 + sq * np.eye(len(A1))),
                               np.linalg.inv(G1 + sq * np.eye(len(G1)))))
        else:
            (A2, G2), = rest
            out.append(dense_i1_inverse(A1, G1, A2, G2, lam))
    return out


def test_rank2_reference_is_the_true_inverse_for_psd_second_terms():
    rng = np.random.default_rng(3)
    A1, G1, A2, G2 = _psd(rng, 4, 1.0), _psd(rng, 3, 1.0), _psd(rng, 4, 0.3), _psd(rng, 3, 0.3)
    X = np.kron(A1 + 0.1 * np.eye(4), G1 + 0.1 * np.eye(3)) + np.kron(A2, G2)
    np.testing.assert_allclose(dense_i1_inverse(A1, G1, A2, G2, 0.1), np.linalg.inv(X),
                               rtol=1e-9, atol=1e-12)


def blockdiag(mats):
    return block_diag(*mats)  # SciPy's, an independent implementation


class Problem:
    def __init__(self, sizes, act, lik, fine_kind="kfac", N=12, seed=0, lam=LAM):
        rng = np.random.default_rng(seed)
        self.net = fl.MLP(sizes, activation=act, likelihood=lik, seed=seed)
        X = rng.normal(size=(N, sizes[0]))
        self.batch = fl.factor_batch(self.net, X, fisher="exact")
        self.F = fl.FisherOperator(self.batch)
        self.P = self.batch.n_params
        self.Fl = self.F.to_dense() + lam * np.eye(self.P)
        self.lam = lam
        self.fine = make_fine(self.batch, fine_kind)
        self.Minv_blocks = dense_fine_inverse_blocks(self.fine, lam)
        self.Minv = blockdiag(self.Minv_blocks)
        self.offsets = self.batch.offsets
        if lik == "categorical":
            y = rng.integers(0, sizes[-1], size=N)
        else:
            y = rng.normal(size=(N, sizes[-1]))
        grads = self.net.gradient(X, y)
        self.g = self.net.flatten(grads) + 0.1 * rng.normal(size=self.P)

    def sl(self, l):
        return slice(self.offsets[l], self.offsets[l + 1])

    def energy(self, z, g=None):
        g = self.g if g is None else g
        e = z - np.linalg.solve(self.Fl, g)
        return float(e @ self.Fl @ e)


def scaled(v):
    return v / v[np.argmax(np.abs(v))]


def dense_space(p: Problem, name, g=None):
    """Rows of R0 built densely from the table of docs/papers.md (spectral excluded)."""
    g = p.g if g is None else g
    L = len(p.offsets) - 1
    r = g - p.Fl @ (p.Minv @ g)
    rows = []
    for l in range(L):
        s = p.sl(l)
        Mi = p.Minv_blocks[l]
        row = np.zeros(p.P)
        one = np.ones(s.stop - s.start)
        vecs = {
            "nicolaides": [one], "previous": [one],
            "residual": [Mi @ r[s]],
            "krylov-nicolaides": [one, Mi @ one],
            "krylov-residual": [Mi @ r[s], Mi @ (Mi @ r[s])],
        }[name]
        for v in vecs:
            row = np.zeros(p.P)
            row[s] = scaled(v)
            rows.append(row)
    return np.array(rows)


def dense_previous_matrix(batch, lam):
    """Tselepidis et al.: F_c[i,j] ≈ sum(A_ij)·sum(G_ij) + λ n_i δ_ij, from the explicit
    cross-layer factors A_ij = E[ā_i ā_jᵀ], G_ij = E[Σ_k g_i,k g_j,kᵀ]."""
    L, N = batch.n_layers, batch.n_samples
    Fc = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            Aij = batch.a[i].T @ batch.a[j] / N
            Gij = sum(batch.g[i][:, k, :].T @ batch.g[j][:, k, :]
                      for k in range(batch.n_vectors)) / N
            Fc[i, j] = Aij.sum() * Gij.sum() + (lam * batch.block_sizes[i] if i == j else 0.0)
    return Fc


def dense_direction(p: Problem, R0, form, g=None, Fc=None):
    g = p.g if g is None else g
    zK = p.Minv @ g
    Fc = R0 @ p.Fl @ R0.T if Fc is None else Fc
    rhs = R0 @ (g if form == "additive" else g - p.Fl @ zK)
    return zK + R0.T @ np.linalg.solve(Fc, rhs)


@pytest.fixture(scope="module", params=[(n, f) for n in range(len(NETS)) for f in FINES],
                ids=[f"{NETS[n][0]}-{f}" for n in range(len(NETS)) for f in FINES])
def prob(request):
    n, f = request.param
    return Problem(*NETS[n], fine_kind=f, seed=n)


# ---------------------------------------------------------------------------------------
# coarse spaces
# ---------------------------------------------------------------------------------------
def _built(p: Problem, name):
    T = fl.TwoLevel(p.fine, coarse_space=name, batch=p.batch, form="residual", damping=p.lam)
    T.solve(p.g)
    return T


@pytest.mark.parametrize("name", fl.COARSE_SPACES)
def test_rows_on_one_layer_with_max_abs_one(prob, name):
    R0 = _built(prob, name).coarse.to_dense()
    L = len(prob.offsets) - 1
    per_layer = 2 if name.startswith("krylov") else 1
    assert R0.shape == (per_layer * L, prob.P)
    layers = []
    for row in R0:
        support = [l for l in range(L) if np.any(row[prob.sl(l)] != 0)]
        assert len(support) == 1
        layers.append(support[0])
        assert np.max(np.abs(row)) == 1.0
        assert row[np.argmax(np.abs(row))] == 1.0
    assert sorted(layers) == sorted(list(range(L)) * per_layer)


@pytest.mark.parametrize("name", ["nicolaides", "residual", "krylov-nicolaides",
                                  "krylov-residual", "previous"])
def test_coarse_space_rows_match_dense_table(prob, name):
    R0 = _built(prob, name).coarse.to_dense()
    np.testing.assert_allclose(R0, dense_space(prob, name), rtol=1e-9, atol=1e-12)


def test_spectral_rows_are_dominant_eigenvectors(prob):
    R0 = _built(prob, "spectral").coarse.to_dense()
    for l, Mi in enumerate(prob.Minv_blocks):
        v = R0[l, prob.sl(l)]
        mu = np.linalg.eigvalsh(Mi)[-1]
        np.testing.assert_allclose(v @ Mi @ v / (v @ v), mu, rtol=1e-8)
        assert np.linalg.norm(Mi @ v - mu * v) <= 1e-6 * mu * np.linalg.norm(v)


@pytest.mark.parametrize("rule", ["factor", "pi", "exact"])
def test_spectral_kfac_closed_form_under_each_rule(rule):
    p = Problem(*NETS[0], seed=3)
    S = fl.spectral_space(p.fine, p.lam, rule)
    R0 = S.to_dense()
    for l, blk in enumerate(p.fine.blocks):
        (A, G), = blk.terms  # the damped inverse from explicit Kronecker products (K2-K4)
        da, dg, sq = len(A), len(G), np.sqrt(p.lam)
        if rule == "exact":
            Mi = np.linalg.inv(np.kron(A, G) + p.lam * np.eye(da * dg))
        else:
            pi = np.sqrt((np.trace(A) / da) / (np.trace(G) / dg)) if rule == "pi" else 1.0
            Mi = np.kron(np.linalg.inv(A + pi * sq * np.eye(da)),
                         np.linalg.inv(G + sq / pi * np.eye(dg)))
        v = R0[l, p.sl(l)]
        mu = np.linalg.eigvalsh(0.5 * (Mi + Mi.T))[-1]
        assert np.linalg.norm(Mi @ v - mu * v) <= 1e-8 * mu * np.linalg.norm(v)


def test_spectral_lanczos_matches_closed_form_for_kfac():
    """The generic Lanczos route (taken for rank ≥ 2) agrees with the KFAC closed form:
    force it by handing the block's solve through solve kwargs-free wrapper operators."""
    p = Problem(*NETS[0], seed=4)

    class Wrapped(fl.CurvatureOperator):  # not a KroneckerOperator: Lanczos is used
        def __init__(self, blk):
            self.blk, self.shape, self.dtype, self.xp = blk, blk.shape, blk.dtype, blk.xp

        def _matmat(self, X):
            return self.blk._matmat(X)

        def solve(self, v, damping, rule="factor", **kw):
            return self.blk.solve(v, damping, rule=rule, **kw)

    wrapped = fl.BlockDiagonalOperator([Wrapped(b) for b in p.fine.blocks])
    R_l = fl.spectral_space(wrapped, p.lam).to_dense()
    R_c = fl.spectral_space(p.fine, p.lam).to_dense()
    for l, Mi in enumerate(p.Minv_blocks):
        w = np.linalg.eigvalsh(Mi)
        if w[-1] - w[-2] > 1e-6 * w[-1]:  # simple top eigenvalue: the vectors agree
            np.testing.assert_allclose(R_l[l], R_c[l], atol=1e-6)


# ---------------------------------------------------------------------------------------
# coarse matrices (T1) and the "previous" approximation
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", fl.COARSE_SPACES)
def test_coarse_matrix_matrix_free_vs_dense(prob, name):
    S = _built(prob, name).coarse
    R0 = S.to_dense()
    np.testing.assert_allclose(fl.coarse_matrix(S, prob.batch, prob.lam), R0 @ prob.Fl @ R0.T,
                               rtol=1e-10, atol=1e-12)


def test_coarse_matrix_of_rows_spanning_several_layers(prob):
    rng = np.random.default_rng(11)
    R0 = rng.normal(size=(4, prob.P))
    S = user_space(R0, prob.offsets)
    np.testing.assert_allclose(S.to_dense(), R0)
    np.testing.assert_allclose(fl.coarse_matrix(S, prob.F, prob.lam), R0 @ prob.Fl @ R0.T,
                               rtol=1e-10)
    v = rng.normal(size=prob.P)
    np.testing.assert_allclose(S.apply(v), R0 @ v, rtol=1e-12)
    np.testing.assert_allclose(S.apply_t(v[:4]), R0.T @ v[:4], rtol=1e-12)
    np.testing.assert_allclose(S.gram(), R0 @ R0.T, rtol=1e-12)


def test_previous_matrix_vs_explicit_formula(prob):
    want = dense_previous_matrix(prob.batch, prob.lam)
    atol = 1e-13 * np.abs(want).max()  # softmax: sums over the last layer's g vanish
    np.testing.assert_allclose(fl.previous_coarse_matrix(prob.batch, prob.lam), want,
                               rtol=1e-10, atol=atol)
    T = fl.TwoLevel(prob.fine, "previous", prob.batch, form="additive", damping=prob.lam)
    np.testing.assert_allclose(T.coarse_matrix, want, rtol=1e-10, atol=atol)


def test_previous_matrix_is_exact_for_one_sample_and_one_vector():
    """With m = 1, K = 1 the expectation of the product is the product of expectations:
    the Tselepidis factorisation equals the exact Nicolaides coarse matrix (T1)."""
    net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=1)
    X = np.random.default_rng(1).normal(size=(1, 4))
    b = fl.factor_batch(net, X, y=np.array([2]), fisher="empirical")
    K = fl.KFAC(b)
    exact = fl.coarse_matrix(fl.nicolaides_space(K), b, 0.1)
    np.testing.assert_allclose(fl.previous_coarse_matrix(b, 0.1), exact, rtol=1e-10,
                               atol=1e-14 * np.abs(exact).max())
    b2 = fl.factor_batch(net, np.random.default_rng(2).normal(size=(6, 4)))
    assert not np.allclose(fl.previous_coarse_matrix(b2, 0.1),
                           fl.coarse_matrix(fl.nicolaides_space(fl.KFAC(b2)), b2, 0.1))


# ---------------------------------------------------------------------------------------
# the two forms (T2, T3) against dense formulas
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", fl.approx.twolevel.FORMS)
@pytest.mark.parametrize("name", fl.COARSE_SPACES)
def test_two_level_direction_vs_dense(prob, name, form):
    T = fl.TwoLevel(prob.fine, coarse_space=name, batch=prob.batch, form=form,
                    damping=prob.lam)
    zeta = T.solve(prob.g)
    R0 = dense_space(prob, name) if name != "spectral" else T.coarse.to_dense()
    Fc = dense_previous_matrix(prob.batch, prob.lam) if name == "previous" else None
    want = dense_direction(prob, R0, form, Fc=Fc)
    np.testing.assert_allclose(zeta, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(T.zeta_fine, prob.Minv @ prob.g, rtol=1e-9)
    # the energy gain of the direction actually taken, checked with the dense F
    gain = prob.energy(zeta) - prob.energy(T.zeta_fine)
    np.testing.assert_allclose(T.energy_gain, gain, rtol=1e-7, atol=1e-9 * prob.energy(zeta))


def test_residual_form_never_increases_the_energy(prob):
    for name in fl.COARSE_SPACES:
        T = fl.TwoLevel(prob.fine, name, prob.batch, form="residual", damping=prob.lam)
        z = T.solve(prob.g)
        assert prob.energy(z) <= prob.energy(T.zeta_fine) * (1 + 1e-10)


@pytest.mark.parametrize("fine_kind", FINES)
@pytest.mark.parametrize("form", ["residual", "additive"])
def test_full_space_coarse_space(fine_kind, form):
    """R₀ = I: the residual form gives the exact damped natural gradient (F + λI)⁻¹g; the
    additive form gives M⁻¹g + F_λ⁻¹g."""
    p = Problem(*NETS[0], fine_kind=fine_kind, seed=5)
    T = fl.TwoLevel(p.fine, np.eye(p.P), p.batch, form=form, damping=p.lam)
    z = T.solve(p.g)
    exact = p.F.solve(p.g, p.lam)
    np.testing.assert_allclose(exact, np.linalg.solve(p.Fl, p.g), rtol=1e-9)
    want = exact if form == "residual" else p.Minv @ p.g + exact
    np.testing.assert_allclose(z, want, rtol=1e-7, atol=1e-10 * np.abs(want).max())


def test_operator_form(prob):
    for name in ("nicolaides", "spectral", "krylov-nicolaides", "previous"):
        T = fl.TwoLevel(prob.fine, name, prob.batch, form="additive", damping=prob.lam)
        assert T.is_linear and T.is_symmetric
        op = T.as_operator()
        D = op.to_dense()
        R0 = T.coarse.to_dense()
        want = prob.Minv + R0.T @ np.linalg.solve(T.coarse_matrix, R0)
        np.testing.assert_allclose(D, want, rtol=1e-8, atol=1e-12 * np.abs(want).max())
        np.testing.assert_allclose(D, D.T, rtol=1e-8, atol=1e-12 * np.abs(want).max())
        np.testing.assert_allclose(op @ prob.g, T.solve(prob.g), rtol=1e-10)
    for name, form in (("nicolaides", "residual"), ("residual", "additive"),
                       ("krylov-residual", "residual")):
        T = fl.TwoLevel(prob.fine, name, prob.batch, form=form, damping=prob.lam)
        assert not T.is_symmetric
        with pytest.raises(fl.ShapeError, match="not a symmetric linear map"):
            T.as_operator()


def test_fisher_operator_accepted_as_batch():
    p = Problem(*NETS[0], seed=6)
    T1 = fl.TwoLevel(p.fine, "spectral", p.batch, form="residual", damping=p.lam)
    T2 = fl.TwoLevel(p.fine, "spectral", p.F, form="residual", damping=p.lam)
    np.testing.assert_allclose(T1.solve(p.g), T2.solve(p.g), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# (T4) property test
# ---------------------------------------------------------------------------------------
@st.composite
def two_level_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    L = draw(st.integers(1, 3))
    dims = draw(st.lists(st.integers(1, 4), min_size=L + 1, max_size=L + 1))
    N = draw(st.integers(1, 6))
    K = draw(st.integers(1, 3))
    lam = draw(st.floats(1e-3, 1.0))
    name = draw(st.sampled_from(fl.COARSE_SPACES))
    fine_kind = draw(st.sampled_from(FINES))
    return seed, dims, N, K, lam, name, fine_kind


@given(two_level_cases())
def test_energy_identity_property(case):
    """(T4): 𝔈(β*) − 𝔈(0) = −(R₀r)ᵀF_c⁻¹(R₀r) ≤ 0, equal to the dense energies."""
    seed, dims, N, K, lam, name, fine_kind = case
    rng = np.random.default_rng(seed)
    L = len(dims) - 1
    a = [np.concatenate([rng.normal(size=(N, dims[l])), np.ones((N, 1))], axis=1)
         for l in range(L)]
    g = [rng.normal(size=(N, K, dims[l + 1])) for l in range(L)]
    batch = fl.FactorBatch(a, g)
    fine = make_fine(batch, fine_kind, rng)
    P = batch.n_params
    grad = rng.normal(size=P)
    T = fl.TwoLevel(fine, name, batch, form="residual", damping=lam)
    z = T.solve(grad)
    Fl = fl.FisherOperator(batch).to_dense() + lam * np.eye(P)
    ex = np.linalg.solve(Fl, grad)
    zK = blockdiag(dense_fine_inverse_blocks(fine, lam)) @ grad

    def E(v):
        return float((v - ex) @ Fl @ (v - ex))

    r = grad - Fl @ zK
    R0 = T.coarse.to_dense()
    if R0.shape[0]:
        Rr = R0 @ r
        t4 = -float(Rr @ np.linalg.lstsq(R0 @ Fl @ R0.T, Rr, rcond=1e-12)[0])
    else:
        t4 = 0.0
    scale = E(zK) + 1e-300
    assert t4 <= 1e-12 * scale
    tol = 1e-7 * scale + 1e-13
    assert abs(T.optimal_energy_gain - t4) <= tol
    assert abs(T.energy_gain - (E(z) - E(zK))) <= tol
    if name != "previous":  # "previous" inverts an approximate F_c: β is not β*
        assert abs((E(z) - E(zK)) - t4) <= tol
        assert abs(float(T.beta @ (R0 @ r)) + t4) <= tol  # (R₀r)ᵀβ* = −gain


# ---------------------------------------------------------------------------------------
# bad input, fallbacks
# ---------------------------------------------------------------------------------------
def test_unknown_names():
    p = Problem(*NETS[0], seed=8)
    with pytest.raises(fl.UnknownNameError, match="coarse space"):
        fl.TwoLevel(p.fine, "galerkin", p.batch, form="residual", damping=p.lam)
    with pytest.raises(fl.UnknownNameError, match="form"):
        fl.TwoLevel(p.fine, "nicolaides", p.batch, form="multiplicative", damping=p.lam)
    with pytest.raises(fl.UnknownNameError):
        fl.build_coarse_space("dirichlet", p.fine, p.lam)
    with pytest.raises(fl.UnknownNameError, match="zero_rows"):
        fl.TwoLevel(p.fine, "residual", p.batch, damping=p.lam, zero_rows="ignore")


def test_bad_arguments():
    p = Problem(*NETS[0], seed=8)
    with pytest.raises(TypeError, match="batch"):
        fl.TwoLevel(p.fine, "nicolaides", form="residual", damping=p.lam)
    with pytest.raises(TypeError, match="damping"):
        fl.TwoLevel(p.fine, "nicolaides", p.batch, form="residual")
    with pytest.raises(fl.DampingError):
        fl.TwoLevel(p.fine, "nicolaides", p.batch, damping=-1.0)
    with pytest.raises(TypeError, match="block-diagonal"):
        fl.TwoLevel(fl.DenseOperator(np.eye(p.P)), "nicolaides", p.batch, damping=p.lam)
    other = fl.factor_batch(fl.MLP([4, 6, 3], seed=0), np.ones((3, 4)))
    with pytest.raises(fl.ShapeError, match="do not match"):
        fl.TwoLevel(fl.KFAC(other), "nicolaides", p.batch, damping=p.lam)
    T = fl.TwoLevel(p.fine, "nicolaides", p.batch, damping=p.lam)
    with pytest.raises(RuntimeError, match="solve"):
        _ = T.energy_gain
    with pytest.raises(fl.ShapeError, match="one gradient"):
        T.solve(np.ones((p.P, 2)))
    with pytest.raises(fl.NonFiniteError):
        T.solve(np.full(p.P, np.nan))
    with pytest.raises(fl.ShapeError, match="shape"):
        fl.TwoLevel(p.fine, np.ones((2, p.P + 1)), p.batch, damping=p.lam)
    R0 = np.ones((2, p.P))
    R0[0, 0] = np.inf
    with pytest.raises(fl.NonFiniteError):
        fl.TwoLevel(p.fine, R0, p.batch, damping=p.lam)
    with pytest.raises(fl.ShapeError, match="residual="):
        fl.build_coarse_space("residual", p.fine, p.lam)


def _dead_first_layer_problem():
    """A factor batch whose first layer receives no back-propagated signal, with a
    gradient that is zero on that layer: its residual r₀ is exactly zero."""
    p = Problem(*NETS[0], seed=9)
    b = p.batch
    batch = fl.FactorBatch(b.a, [np.zeros_like(b.g[0])] + list(b.g[1:]))
    g = p.g.copy()
    g[p.sl(0)] = 0.0
    return p, batch, g


@pytest.mark.parametrize("name", ["residual", "krylov-residual"])
def test_zero_row_dropped_or_raised(name):
    p, batch, g = _dead_first_layer_problem()
    fine = fl.KFAC(batch)
    T = fl.TwoLevel(fine, name, batch, form="residual", damping=p.lam)
    z = T.solve(g)
    per = 2 if name.startswith("krylov") else 1
    assert T.coarse.n_rows == per  # layer 0's rows dropped
    assert len(T.coarse.dropped) == per and all("layer 0" in d for d in T.coarse.dropped)
    # the direction is the dense formula with the remaining rows
    Fl = fl.FisherOperator(batch).to_dense() + p.lam * np.eye(p.P)
    Minv = blockdiag(dense_fine_inverse_blocks(fine, p.lam))
    zK = Minv @ g
    r = g - Fl @ zK
    assert np.all(r[p.sl(0)] == 0.0)
    R0 = T.coarse.to_dense()
    assert np.all(R0[:, p.sl(0)] == 0.0)
    want = zK + R0.T @ np.linalg.solve(R0 @ Fl @ R0.T, R0 @ r)
    np.testing.assert_allclose(z, want, rtol=1e-9)
    with pytest.raises(fl.SingularMatrixError, match="zero row"):
        fl.TwoLevel(fine, name, batch, form="residual", damping=p.lam,
                    zero_rows="raise").solve(g)


def test_zero_gradient_gives_zero_direction():
    p = Problem(*NETS[0], seed=10)
    for name in ("residual", "krylov-residual", "nicolaides"):
        T = fl.TwoLevel(p.fine, name, p.batch, form="residual", damping=p.lam)
        z = T.solve(np.zeros(p.P))
        assert np.all(z == 0.0)
        assert T.energy_gain == 0.0


def test_user_zero_row_dropped_or_raised():
    p = Problem(*NETS[0], seed=12)
    R0 = np.zeros((3, p.P))
    R0[0, p.sl(0)] = 1.0
    R0[2, p.sl(1)] = 1.0
    T = fl.TwoLevel(p.fine, R0, p.batch, form="residual", damping=p.lam)
    assert T.coarse.n_rows == 2 and T.coarse.dropped == ["row 1"]
    T2 = fl.TwoLevel(p.fine, "nicolaides", p.batch, form="residual", damping=p.lam)
    np.testing.assert_allclose(T.solve(p.g), T2.solve(p.g), rtol=1e-10)
    with pytest.raises(fl.SingularMatrixError, match="row 1"):
        fl.TwoLevel(p.fine, R0, p.batch, damping=p.lam, zero_rows="raise")


@pytest.mark.parametrize("form", ["additive", "residual"])
def test_singular_coarse_matrix_pinv_or_raise(form):
    """Linearly dependent rows make F_c singular: the pseudo-inverse fallback gives the
    direction of a basis of the row space; on_singular='raise' says so."""
    p = Problem(*NETS[0], seed=13)
    R_basis = dense_space(p, "nicolaides")
    R_dup = np.vstack([R_basis, 2.0 * R_basis[0], R_basis[0] - 3.0 * R_basis[1]])
    T = fl.TwoLevel(p.fine, R_dup, p.batch, form=form, damping=p.lam)
    assert T.coarse_rank == 2 and T.coarse.n_rows == 4
    np.testing.assert_allclose(T.solve(p.g), dense_direction(p, R_basis, form), rtol=1e-8)
    with pytest.raises(fl.SingularMatrixError, match="linearly dependent"):
        fl.TwoLevel(p.fine, R_dup, p.batch, form=form, damping=p.lam, on_singular="raise")


def test_indefinite_or_bad_coarse_matrix_raises():
    from fimlab.approx.twolevel import _CoarseInverse

    with pytest.raises(fl.SingularMatrixError, match="indefinite"):
        _CoarseInverse(np.array([[1.0, 2.0], [2.0, 1.0]]), "pinv", None)
    with pytest.raises(fl.SingularMatrixError, match="diagonal"):
        _CoarseInverse(np.array([[0.0, 0.0], [0.0, 1.0]]), "pinv", None)


def test_array_api_strict_namespace():
    """The two-level code makes no NumPy-only call on the batch's arrays."""
    xps = pytest.importorskip("array_api_strict")
    p = Problem(*NETS[0], seed=14)
    b = p.batch
    bs = fl.FactorBatch([xps.asarray(a) for a in b.a], [xps.asarray(g) for g in b.g])
    gs = xps.asarray(p.g)
    Ks = fl.KFAC(bs)
    for name in fl.COARSE_SPACES:
        for form in ("additive", "residual"):
            Ts = fl.TwoLevel(Ks, name, bs, form=form, damping=p.lam)
            T = fl.TwoLevel(p.fine, name, b, form=form, damping=p.lam)
            np.testing.assert_allclose(np.asarray(Ts.solve(gs)), T.solve(p.g), rtol=1e-9)


# ---------------------------------------------------------------------------------------
# fimlab study --two-level
# ---------------------------------------------------------------------------------------
def test_study_two_level(tmp_path, capsys):
    import csv

    from fimlab import cli

    out = tmp_path / "s"
    assert cli.main(["study", "--two-level", "--damping", "0.01", "--iterations", "2",
                     "--every", "2", "--n-samples", "200", "--batch-size", "50",
                     "--methods", "KFAC", "--fisher", "exact", "--out", str(out),
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "two-level corrections of KFAC" in text and "krylov-residual/residual" in text
    rows = list(csv.DictReader((out / "two_level.csv").open()))
    assert (out / "two_level.png").stat().st_size > 10_000
    its = sorted({int(r["iteration"]) for r in rows})
    assert its == [0, 2]
    per_it = 1 + 2 * len(fl.COARSE_SPACES)
    assert len(rows) == per_it * len(its)
    for it in its:
        rs = {r["method"]: r for r in rows if int(r["iteration"]) == it}
        e5k = float(rs["KFAC"]["e5"])
        for cs in fl.COARSE_SPACES:
            if cs != "previous":  # T4: the residual form never increases the energy
                assert float(rs[f"{cs}/residual"]["e5"]) <= e5k * (1 + 1e-9)
        assert 0.0 <= float(rs["KFAC"]["offdiag_share"]) <= 1.0

    # iteration 0, recomputed independently with dense matrices
    from sklearn.datasets import load_digits

    X = load_digits().data[:200] / 16.0
    y = load_digits().target[:200]
    idx = np.random.default_rng(0).permutation(200)[:50]
    net = fl.MLP([64, 32, 10], activation="tanh", likelihood="categorical", seed=0)
    b = fl.factor_batch(net, X[idx], fisher="exact")
    g = net.flatten(net.gradient(X[idx], y[idx]))
    lam = 0.01
    P = b.n_params
    Fd = fl.FisherOperator(b).to_dense()
    Fl = Fd + lam * np.eye(P)
    ex = np.linalg.solve(Fl, g)
    Minv = blockdiag(dense_fine_inverse_blocks(fl.KFAC(b), lam))
    R0 = np.zeros((2, P))
    R0[0, :b.offsets[1]] = 1.0
    R0[1, b.offsets[1]:] = 1.0
    zK = Minv @ g
    z = zK + R0.T @ np.linalg.solve(R0 @ Fl @ R0.T, R0 @ (g - Fl @ zK))
    rs = {r["method"]: r for r in rows if int(r["iteration"]) == 0}

    def e5(v):
        return (v - ex) @ Fl @ (v - ex) / (ex @ Fl @ ex)

    def e4(v):
        return np.degrees(np.arccos(v @ ex / np.linalg.norm(v) / np.linalg.norm(ex)))

    assert float(rs["KFAC"]["e5"]) == pytest.approx(e5(zK), rel=1e-7)
    assert float(rs["KFAC"]["e4_deg"]) == pytest.approx(e4(zK), rel=1e-7)
    assert float(rs["nicolaides/residual"]["e5"]) == pytest.approx(e5(z), rel=1e-7)
    assert float(rs["nicolaides/residual"]["e4_deg"]) == pytest.approx(e4(z), rel=1e-7)
    s = b.offsets[1]
    diag = np.sum(Fd[:s, :s] ** 2) + np.sum(Fd[s:, s:] ** 2)
    assert float(rs["KFAC"]["offdiag_share"]) == pytest.approx(1 - diag / np.sum(Fd**2),
                                                               rel=1e-7)


def test_study_two_level_bad_damping():
    from fimlab.study import run_study

    with pytest.raises(fl.DampingError):
        run_study({"two_level": True, "damping": -1.0, "iterations": 0, "n_samples": 50,
                   "out": None}, progress=False, verbose=False)


def test_experiment_two_level_coupling_fast(tmp_path):
    """The documented experiment runs in its fast mode and writes its outputs."""
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "two_level_coupling.py"
    spec = importlib.util.spec_from_file_location("two_level_coupling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tlc"
    assert mod.main(["--fast", "--cases", "deep-linear,mlp", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "two_level_coupling.csv").open()))
    assert {r["case"] for r in rows} == {"deep-linear", "mlp"}
    assert len(rows) == 2 * (1 + 2 * len(fl.COARSE_SPACES))
    for case in ("deep-linear", "mlp"):
        rs = {r["method"]: r for r in rows if r["case"] == case}
        for cs in ("nicolaides", "residual", "krylov-nicolaides", "krylov-residual"):
            assert float(rs[f"{cs}/residual"]["e5"]) <= float(rs["KFAC"]["e5"]) * (1 + 1e-9)
    md = (out / "two_level_coupling.md").read_text()
    assert "| nicolaides/residual |" in md and "Command:" in md
    assert (out / "two_level_coupling.png").stat().st_size > 10_000


@pytest.mark.parametrize("fine_cls", ["KPSVD", "Deflation", "Lanczos", "KFACCorrected"])
def test_every_coarse_space_with_every_kpsvd_family_fine_level(fine_cls):
    """Each fine operator of the KPSVD family, with every coarse space and both forms,
    against the dense formulas (M⁻¹ from its terms by explicit Kronecker products: K2 or
    I1, not from its own solve)."""
    p = Problem(*NETS[0], seed=15)
    fine = getattr(fl, fine_cls)(p.batch)
    Minv = blockdiag(dense_fine_inverse_blocks(fine, p.lam))
    for name in fl.COARSE_SPACES:
        for form in ("additive", "residual"):
            T = fl.TwoLevel(fine, name, p.batch, form=form, damping=p.lam)
            z = T.solve(p.g)
            R0 = T.coarse.to_dense()
            Fc = (dense_previous_matrix(p.batch, p.lam) if name == "previous"
                  else R0 @ p.Fl @ R0.T)
            zK = Minv @ p.g
            rhs = R0 @ (p.g if form == "additive" else p.g - p.Fl @ zK)
            want = zK + R0.T @ np.linalg.solve(Fc, rhs)
            np.testing.assert_allclose(z, want, rtol=1e-7, atol=1e-10 * np.abs(want).max(),
                                       err_msg=f"{fine_cls} {name} {form}")
            if form == "residual" and name != "previous":
                assert p.energy(z) <= p.energy(zK) * (1 + 1e-10)
