"""The two-level corrections on CNNs (a scaled-down cuda-convnet and a small residual CNN):
the direction against the dense formulas (T1-T3) and the energy inequality (T4) of the
residual form, with the Fisher built from per-sample Jacobian rows summed by loops over
``n, k, t`` and the fine level's inverse from explicit Kronecker products."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_conv_comparators import loop_fisher, loop_kfc, loop_rows
from test_twolevel import blockdiag, dense_fine_inverse_blocks

import fimlab as fl
from fimlab.models.network import cuda_convnet, network_factor_batch, small_resnet

SPACES = [s for s in fl.COARSE_SPACES if s != "previous"]


def _net(kind):
    if kind == "cuda-convnet":
        return cuda_convnet(input_shape=(3, 26, 26), channels=(3, 3, 4), seed=0), (3, 26, 26)
    return small_resnet(input_shape=(1, 8, 8), channels=2, n_blocks=1, seed=0), (1, 8, 8)


class ConvProblem:
    """Exact-Fisher factor batch of a CNN, F_λ from loop-built rows, and a gradient g (the
    mean empirical per-sample gradient, loop-built, plus noise)."""

    def __init__(self, kind, N=6, seed=0, lam=3e-2):
        rng = np.random.default_rng(seed)
        net, shape = _net(kind)
        X = rng.normal(size=(N, *shape))
        y = rng.integers(0, 10, size=N)
        self.batch = network_factor_batch(net, X, fisher="exact")
        emp = network_factor_batch(net, X, y, fisher="empirical")
        self.P = self.batch.n_params
        self.lam = lam
        self.Fl = loop_fisher(self.batch) + lam * np.eye(self.P)
        rows = np.concatenate([loop_rows(a, g) for a, g in zip(emp.a, emp.g)], axis=1)
        self.g = rows.sum(axis=0) / N + 0.1 * np.abs(rows).mean() * rng.normal(size=self.P)
        self.exact = np.linalg.solve(self.Fl, self.g)

    def energy(self, z):
        e = z - self.exact
        return float(e @ self.Fl @ e)


@pytest.fixture(scope="module", params=["cuda-convnet", "small-resnet"])
def prob(request):
    return ConvProblem(request.param)


def _kfc_inverse(b, lam):
    """blockdiag((A + √λI)⁻¹ ⊗ (G + √λI)⁻¹) with the KFC factors summed by loops."""
    sq = np.sqrt(lam)
    out = []
    for a, g in zip(b.a, b.g):
        A, G = loop_kfc(a, g)
        out.append(np.kron(np.linalg.inv(A + sq * np.eye(len(A))),
                           np.linalg.inv(G + sq * np.eye(len(G)))))
    return blockdiag(out)


@pytest.mark.parametrize("fine_kind", ["KFAC", "KFACCorrected", "KPSVD"])
def test_two_level_on_cnn_vs_dense_and_energy_inequality(prob, fine_kind):
    """Every coarse space that supports conv batches, both forms: the direction equals
    ζ_K + R₀ᵀ(R₀F_λR₀ᵀ)⁻¹R₀(g or g − F_λζ_K) densely, the reported energy gain is the
    dense one, and the residual form never increases the energy error (T4)."""
    b = prob.batch
    assert any(b.positional) and not all(b.positional)
    fine = getattr(fl, fine_kind)(b)
    if fine_kind == "KFAC":
        Minv = _kfc_inverse(b, prob.lam)
    else:
        Minv = blockdiag(dense_fine_inverse_blocks(fine, prob.lam))
    zK = Minv @ prob.g
    for name in SPACES:
        for form in ("additive", "residual"):
            T = fl.TwoLevel(fine, name, b, form=form, damping=prob.lam)
            z = T.solve(prob.g)
            np.testing.assert_allclose(T.zeta_fine, zK, rtol=1e-7,
                                       atol=1e-10 * np.abs(zK).max())
            R0 = T.coarse.to_dense()
            rhs = R0 @ (prob.g if form == "additive" else prob.g - prob.Fl @ zK)
            want = zK + R0.T @ np.linalg.lstsq(R0 @ prob.Fl @ R0.T, rhs, rcond=None)[0]
            np.testing.assert_allclose(z, want, rtol=1e-6, atol=1e-8 * np.abs(want).max(),
                                       err_msg=f"{fine_kind} {name} {form}")
            gain = prob.energy(z) - prob.energy(zK)
            assert T.energy_gain == pytest.approx(gain, rel=1e-6,
                                                  abs=1e-9 * prob.energy(zK))
            if form == "residual":
                assert prob.energy(z) <= prob.energy(zK) * (1 + 1e-10), (fine_kind, name)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), lam=st.floats(1e-3, 1.0),
       name=st.sampled_from(SPACES), fisher=st.sampled_from(["exact", "mc", "empirical"]))
def test_property_residual_form_never_increases_energy_on_cnn(seed, lam, name, fisher):
    """(T4) on random inputs, gradients and damping, all three Fisher types: the residual
    form's energy error ≤ KFC's, with the dense F_λ from loop-built rows."""
    rng = np.random.default_rng(seed)
    net = cuda_convnet(input_shape=(3, 26, 26), channels=(2, 2, 3), seed=seed % 7)
    X = rng.normal(size=(4, 3, 26, 26))
    y = rng.integers(0, 10, size=4)
    b = network_factor_batch(net, X, y, fisher=fisher, mc_samples=2, rng=seed)
    Fl = loop_fisher(b) + lam * np.eye(b.n_params)
    g = rng.normal(size=b.n_params)
    exact = np.linalg.solve(Fl, g)

    def energy(z):
        return float((z - exact) @ Fl @ (z - exact))

    T = fl.TwoLevel(fl.KFAC(b), name, b, form="residual", damping=lam)
    z = T.solve(g)
    assert energy(z) <= energy(T.zeta_fine) * (1 + 1e-10) + 1e-14
    assert T.energy_gain <= 0.0


def test_previous_coarse_matrix_raises_on_conv_batches(prob):
    with pytest.raises(fl.ShapeError, match="convolution"):
        fl.TwoLevel(fl.KFAC(prob.batch), "previous", prob.batch, form="additive",
                    damping=prob.lam)
