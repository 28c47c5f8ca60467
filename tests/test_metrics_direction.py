"""(E4) and (E5): direction angle, energy error, and the spectrum / condition number /
distance to the identity of F̃_λ⁻¹F_λ, against dense numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fimlab as fl

LAM = 5e-2


@pytest.fixture(scope="module")
def setup():
    net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(15, 4))
    b = fl.factor_batch(net, X)
    F = fl.FisherOperator(b)
    P = b.n_params
    Fl = F.to_dense() + LAM * np.eye(P)
    g = rng.normal(size=P)
    K = fl.KFAC(b)
    return b, F, Fl, g, K


def dense_angle(u, v):
    return float(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))


def dense_inverse(K, P):
    return np.hstack([K.solve(e, LAM)[:, None] for e in np.eye(P)])


def rank2(b, seed=3):
    rng = np.random.default_rng(seed)
    blocks = []
    for A, G in fl.KFAC(b).factors:
        Ba, Bg = rng.normal(size=A.shape), rng.normal(size=G.shape)
        blocks.append(fl.KroneckerOperator([(A, G), (0.1 * Ba @ Ba.T, 0.1 * Bg @ Bg.T)]))
    return fl.BlockDiagonalOperator(blocks)


# ---------------------------------------------------------------------------------------
# E4 angle, E5 energy error
# ---------------------------------------------------------------------------------------
def test_angle_and_energy_vs_dense(setup):
    b, F, Fl, g, K = setup
    ex = np.linalg.solve(Fl, g)
    for z in (K.solve(g, LAM), g, np.random.default_rng(1).normal(size=g.size)):
        np.testing.assert_allclose(fl.direction_angle(z, F, g, LAM), dense_angle(z, ex),
                                   rtol=1e-9)
        np.testing.assert_allclose(fl.direction_angle(z, F, g, LAM, degrees=True),
                                   np.degrees(dense_angle(z, ex)), rtol=1e-9)
        e = z - ex
        np.testing.assert_allclose(fl.energy_error(z, F, g, LAM),
                                   (e @ Fl @ e) / (ex @ Fl @ ex), rtol=1e-9)
        np.testing.assert_allclose(fl.energy_error(z, F, g, LAM, relative=False),
                                   e @ Fl @ e, rtol=1e-9)
        ref = F.solve(g, LAM)
        assert fl.energy_error(z, F, g, LAM, reference=ref) == pytest.approx(
            fl.energy_error(z, F, g, LAM), rel=1e-12)


def test_rescaled_energy_error_vs_dense(setup):
    b, F, Fl, g, K = setup
    ex = np.linalg.solve(Fl, g)
    for z in (K.solve(g, LAM), g, -3.0 * ex):
        alphas = np.linspace(-5, 5, 20001) * (z @ g) / (z @ Fl @ z)
        errs = [((a * z - ex) @ Fl @ (a * z - ex)) / (ex @ Fl @ ex) for a in alphas]
        cos2 = (z @ Fl @ ex) ** 2 / ((z @ Fl @ z) * (ex @ Fl @ ex))
        got = fl.energy_error(z, F, g, LAM, rescale=True)
        np.testing.assert_allclose(got, 1.0 - cos2, rtol=1e-7, atol=1e-12)
        assert got <= min(errs) + 1e-12 and got >= min(errs) - 1e-6
        assert got <= fl.energy_error(z, F, g, LAM) + 1e-12
    with pytest.raises(fl.ShapeError, match="non-zero direction"):
        fl.energy_error(np.zeros_like(g), F, g, LAM, rescale=True)


def test_exact_direction_scores_zero(setup):
    b, F, Fl, g, K = setup
    ex = np.linalg.solve(Fl, g)
    assert fl.direction_angle(ex, F, g, LAM) < 1e-7
    assert fl.energy_error(ex, F, g, LAM) < 1e-12
    assert fl.energy_error(np.zeros_like(g), F, g, LAM) == pytest.approx(1.0, rel=1e-12)
    assert fl.direction_angle(-3.0 * ex, F, g, LAM) == pytest.approx(np.pi, rel=1e-12)


def test_two_level_energy_drop_is_the_t4_gain(setup):
    b, F, Fl, g, K = setup
    ex = np.linalg.solve(Fl, g)
    norm2 = float(g @ ex)
    for name in fl.COARSE_SPACES:
        T = fl.TwoLevel(K, name, b, form="residual", damping=LAM)
        z = T.solve(g)
        drop = fl.energy_error(z, F, g, LAM) - fl.energy_error(T.zeta_fine, F, g, LAM)
        np.testing.assert_allclose(drop, T.energy_gain / norm2, rtol=1e-7, atol=1e-13)
        if name != "previous":
            np.testing.assert_allclose(drop, T.optimal_energy_gain / norm2, rtol=1e-7,
                                       atol=1e-13)
        assert drop <= 1e-12


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 6), t=st.floats(-3, 3),
       lam=st.floats(1e-3, 1.0), c=st.floats(0.01, 100.0))
def test_energy_error_is_quadratic_and_angle_scale_invariant(seed, n, t, lam, c):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(n, n))
    Fd = B @ B.T
    F = fl.DenseOperator(Fd)
    g = rng.normal(size=n)
    v = rng.normal(size=n)
    ex = np.linalg.solve(Fd + lam * np.eye(n), g)
    Fl = Fd + lam * np.eye(n)
    z = ex + t * v
    want = t * t * (v @ Fl @ v) / (ex @ Fl @ ex)
    assert fl.energy_error(z, F, g, lam) == pytest.approx(want, rel=1e-6, abs=1e-12)
    a = fl.direction_angle(v, F, g, lam)
    assert 0.0 <= a <= np.pi
    assert fl.direction_angle(c * v, F, g, lam) == pytest.approx(a, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------
# spectrum, condition number, distance to the identity
# ---------------------------------------------------------------------------------------
def _methods(setup):
    b, F, Fl, g, K = setup
    P = b.n_params
    out = [("kfac", K, dense_inverse(K, P))]
    R = rank2(b)
    out.append(("rank2", R, dense_inverse(R, P)))
    for name in ("nicolaides", "spectral", "krylov-nicolaides", "previous"):
        T = fl.TwoLevel(K, name, b, form="additive", damping=LAM)
        R0 = T.coarse.to_dense()
        out.append((name, T, dense_inverse(K, P) + R0.T @ np.linalg.solve(T.coarse_matrix, R0)))
    return out


def test_spectrum_condition_distance_vs_dense(setup):
    b, F, Fl, g, K = setup
    P = b.n_params
    for name, method, Pd in _methods(setup):
        mu = np.sort(np.linalg.eigvals(Pd @ Fl).real)
        lz = fl.preconditioned_spectrum(F, method, LAM)
        np.testing.assert_allclose([lz[0], lz[-1]], [mu[0], mu[-1]], rtol=1e-7, err_msg=name)
        dn = fl.preconditioned_spectrum(F, method, LAM, algorithm="dense")
        np.testing.assert_allclose(dn, mu, rtol=1e-7, atol=1e-10, err_msg=name)
        full = fl.preconditioned_spectrum(F, method, LAM, steps=P)
        assert np.all((full >= mu[0] * (1 - 1e-8)) & (full <= mu[-1] * (1 + 1e-8)))
        np.testing.assert_allclose(fl.preconditioned_condition_number(F, method, LAM),
                                   mu[-1] / mu[0], rtol=1e-6, err_msg=name)
        E = np.eye(P) - Pd @ Fl
        np.testing.assert_allclose(fl.preconditioner_distance(F, method, LAM),
                                   np.linalg.norm(E, 2), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(fl.preconditioner_distance(F, method, LAM, algorithm="dense"),
                                   np.linalg.norm(E, 2), rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(fl.preconditioner_distance(F, method, LAM, norm="energy"),
                                   max(abs(1 - mu[0]), abs(1 - mu[-1])), rtol=1e-6,
                                   err_msg=name)


def test_exact_inverse_has_unit_spectrum(setup):
    b, F, Fl, g, K = setup
    exact = lambda X: F.solve(X, LAM)  # noqa: E731
    mu = fl.preconditioned_spectrum(F, exact, LAM)
    np.testing.assert_allclose(mu, 1.0, rtol=1e-9)
    assert fl.preconditioner_distance(F, exact, LAM) < 1e-7
    assert fl.preconditioned_condition_number(F, exact, LAM) == pytest.approx(1.0, rel=1e-9)


def test_rule_is_passed_to_the_fine_solve(setup):
    b, F, Fl, g, K = setup
    P = b.n_params
    Pd = np.hstack([K.solve(e, LAM, rule="exact")[:, None] for e in np.eye(P)])
    mu = np.sort(np.linalg.eigvals(Pd @ Fl).real)
    lz = fl.preconditioned_spectrum(F, K, LAM, rule="exact")
    np.testing.assert_allclose([lz[0], lz[-1]], [mu[0], mu[-1]], rtol=1e-7)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
def test_direction_metric_errors(setup):
    b, F, Fl, g, K = setup
    z = K.solve(g, LAM)
    with pytest.raises(fl.ShapeError, match="undefined"):
        fl.direction_angle(np.zeros_like(g), F, g, LAM)
    with pytest.raises(fl.ShapeError, match="undefined"):
        fl.direction_angle(z, F, np.zeros_like(g), LAM)
    with pytest.raises(fl.ShapeError, match="zero gradient"):
        fl.energy_error(z, F, np.zeros_like(g), LAM)
    with pytest.raises(fl.ShapeError, match="direction"):
        fl.energy_error(z[:-1], F, g, LAM)
    with pytest.raises(fl.ShapeError, match="gradient"):
        fl.direction_angle(z, F, g[:-1], LAM)
    with pytest.raises(fl.ShapeError, match="reference"):
        fl.energy_error(z, F, g, LAM, reference=g[:3])
    with pytest.raises(fl.NonFiniteError):
        fl.energy_error(np.full_like(g, np.nan), F, g, LAM)
    with pytest.raises(fl.DampingError):
        fl.energy_error(z, F, g, 0.0)
    with pytest.raises(TypeError, match="operator"):
        fl.energy_error(z, Fl, g, LAM)


def test_matrix_metric_errors(setup):
    b, F, Fl, g, K = setup
    T = fl.TwoLevel(K, "nicolaides", b, form="residual", damping=LAM)
    with pytest.raises(fl.ShapeError, match="not a symmetric linear map"):
        fl.preconditioned_spectrum(F, T, LAM)
    Tk = fl.TwoLevel(K, "krylov-residual", b, form="additive", damping=LAM)
    with pytest.raises(fl.ShapeError, match="not linear"):
        fl.preconditioner_distance(F, Tk, LAM)
    Ta = fl.TwoLevel(K, "nicolaides", b, form="additive", damping=LAM)
    with pytest.raises(fl.DampingError, match="rebuild"):
        fl.preconditioned_condition_number(F, Ta, 2 * LAM)
    with pytest.raises(fl.UnknownNameError):
        fl.preconditioned_spectrum(F, K, LAM, algorithm="arpack")
    with pytest.raises(fl.UnknownNameError):
        fl.preconditioner_distance(F, K, LAM, norm="fro")
    with pytest.raises(TypeError, match="approx"):
        fl.preconditioned_spectrum(F, "kfac", LAM)
    small = fl.KFAC(fl.factor_batch(fl.MLP([2, 2], seed=0), np.ones((3, 2))))
    with pytest.raises(fl.ShapeError, match="shape"):
        fl.preconditioned_spectrum(F, small, LAM)
    with pytest.raises(TypeError, match="multiply"):
        Ta.as_operator().solve(g, LAM)
    with pytest.raises(fl.DenseMemoryError):
        fl.preconditioned_spectrum(F, K, LAM, algorithm="dense", max_bytes=100)


def test_lanczos_cap_warns(setup):
    b, F, Fl, g, K = setup
    with pytest.warns(fl.ConvergenceWarning, match="Lanczos stopped"):
        fl.preconditioned_spectrum(F, K, LAM, steps=3, tol=1e-14)
