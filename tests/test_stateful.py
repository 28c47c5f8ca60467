"""Stateful objects tested by call sequences (issue 21).

The same object is asked in turn for different damping rules, dampings, vectors,
matrices and dtypes; every answer is compared with a fresh object and with the dense
formula — so an inverse cache keyed without the rule (or the damping, or the solver
options) fails here. Optimizers are run for several steps next to a reference
implementation written out in this file from the update formulas (SGD with momentum,
Nesterov and weight decay; Adam with bias correction; NGD with KFAC, moving averages,
refresh periods, KL clipping and momentum).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fimlab as fl
from fimlab.curvature import FisherOperator
from fimlab.operators import KroneckerOperator


def _spd(d, seed, shift=0.2):
    r = np.random.default_rng(seed)
    X = r.normal(size=(d, d + 2))
    return X @ X.T / d + shift * np.eye(d)


def _inv_def(terms, lam, rule, signed=False):
    """Dense damped inverses: K2 ('factor', one term), K3 ('pi'), K4/exact, and (I1)."""
    A, G = terms[0]
    da, dg = A.shape[0], G.shape[0]
    I_a, I_g = np.eye(da), np.eye(dg)
    if len(terms) == 1 and rule == "factor":
        s = np.sqrt(lam)
        return np.kron(np.linalg.inv(A + s * I_a), np.linalg.inv(G + s * I_g))
    if rule == "pi":
        s = np.sqrt(lam)
        pi = np.sqrt((np.trace(A) / da) / (np.trace(G) / dg))
        return np.kron(np.linalg.inv(A + pi * s * I_a), np.linalg.inv(G + s / pi * I_g))
    if rule == "exact":
        return np.linalg.inv(sum(np.kron(a, g) for a, g in terms) + lam * np.eye(da * dg))
    (A1, G1), (A2, G2) = terms  # (I1)
    if signed:
        return np.linalg.inv(np.kron(A1 + lam * I_a, G1 + lam * I_g) + np.kron(A2, G2))

    def simdiag(B, M):
        w, Q = np.linalg.eigh(B)
        Bh = Q @ np.diag(w ** -0.5) @ Q.T
        s, E = np.linalg.eigh(Bh @ M @ Bh)
        return s, Bh @ E

    s1, Ka = simdiag(A1 + lam * I_a, A2)
    s2, Kg = simdiag(G1 + lam * I_g, G2)
    Kk = np.kron(Ka, Kg)
    return Kk @ np.diag(1.0 / (1.0 + np.kron(np.abs(s1), np.abs(s2)))) @ Kk.T


# a call sequence: (rule, damping, operand kind, extra kwargs); it revisits keys after the
# cache (4 entries) has evicted them, and alternates rules at a fixed damping
SEQ1 = [("factor", 0.1, "vec", {}), ("exact", 0.1, "mat", {}), ("pi", 0.1, "vec", {}),
        ("factor", 0.1, "mat", {}), ("factor", 0.3, "vec", {}), ("exact", 0.3, "vec", {}),
        ("pi", 0.01, "mat", {}), ("exact", 0.1, "vec", {}), ("pi", 0.1, "mat", {}),
        ("factor", 0.1, "vec", {})]
SEQ2 = [("factor", 0.1, "vec", {}), ("exact", 0.1, "vec", {"tol": 1e-12}),
        ("factor", 0.1, "mat", {"signed": True}), ("factor", 0.1, "vec", {}),
        ("exact", 0.05, "mat", {"tol": 1e-12}), ("factor", 0.05, "vec", {"signed": True}),
        ("factor", 0.05, "mat", {}), ("exact", 0.1, "vec", {"tol": 1e-12}),
        ("factor", 0.1, "vec", {"signed": True})]


@pytest.mark.parametrize("rank,seq", [(1, SEQ1), (2, SEQ2)])
def test_kronecker_solve_call_sequence(rank, seq):
    da, dg = 4, 3
    terms = [(_spd(da, 1, shift=1.0), _spd(dg, 2, shift=1.0))]
    if rank == 2:
        # an indefinite second term (as KFAC-corrected's): the papers' |s| rule and the
        # signed inverse differ, so a cache that ignores signed= answers wrongly
        B = np.random.default_rng(4).normal(size=(dg, dg))
        terms.append((0.3 * _spd(da, 3), 0.1 * (B + B.T)))
    op = KroneckerOperator(terms)
    rng = np.random.default_rng(0)
    for i, (rule, lam, kind, kw) in enumerate(seq):
        v = rng.normal(size=da * dg) if kind == "vec" else rng.normal(size=(da * dg, 3))
        got = op.solve(v, lam, rule=rule, **kw)
        fresh = KroneckerOperator(terms).solve(v, lam, rule=rule, **kw)
        ref = _inv_def(terms, lam, rule, signed=kw.get("signed", False)) @ v
        if rank == 2 and rule == "factor":  # the two variants of (I1) really differ here
            other = _inv_def(terms, lam, rule, signed=not kw.get("signed", False)) @ v
            assert np.linalg.norm(other - ref) > 1e-3 * np.linalg.norm(ref)
        assert got.shape == v.shape
        np.testing.assert_allclose(got, fresh, rtol=1e-9, atol=1e-12,
                                   err_msg=f"call {i}: {rule}, λ={lam}, {kw}")
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-11,
                                   err_msg=f"call {i}: {rule}, λ={lam}, {kw} vs dense")


def test_kronecker_solve_float32_after_float64():
    """A float32 operator and its float64 twin, asked alternately: each answers in its own
    dtype with its own accuracy (no state shared through module-level caches)."""
    terms = [(_spd(5, 5), _spd(3, 6))]
    op64 = KroneckerOperator(terms)
    op32 = KroneckerOperator([(A.astype(np.float32), G.astype(np.float32)) for A, G in terms])
    v = np.random.default_rng(1).normal(size=15)
    for rule in ("factor", "exact", "pi", "factor"):
        ref = _inv_def(terms, 0.1, rule) @ v
        y64 = op64.solve(v, 0.1, rule=rule)
        y32 = op32.solve(v.astype(np.float32), 0.1, rule=rule)
        assert y64.dtype == np.float64 and y32.dtype == np.float32
        np.testing.assert_allclose(y64, ref, rtol=1e-10)
        np.testing.assert_allclose(y32, ref, rtol=2e-4, atol=1e-5)


def _batch(K=3, N=10, seed=0, dtype=np.float64):
    r = np.random.default_rng(seed)
    a = [r.normal(size=(N, 4)).astype(dtype), r.normal(size=(N, 3)).astype(dtype)]
    g = [r.normal(size=(N, K, 2)).astype(dtype), r.normal(size=(N, K, 3)).astype(dtype)]
    return fl.FactorBatch(a, g)


def _dense_F(b):
    rows = [np.concatenate([np.kron(a[n], g[n, k]) for a, g in zip(b.a, b.g)])
            for n in range(b.n_samples) for k in range(b.n_vectors)]
    J = np.array(rows, dtype=np.float64)
    return J.T @ J / b.n_samples


def test_fisher_woodbury_call_sequence():
    b = _batch()
    F = FisherOperator(b)
    D = _dense_F(b)
    P = D.shape[0]
    rng = np.random.default_rng(2)
    for i, lam in enumerate([0.1, 0.01, 0.1, 1.0, 0.01, 0.01]):
        v = rng.normal(size=P) if i % 2 else rng.normal(size=(P, 2))
        got = F.solve(v, lam)
        fresh = FisherOperator(b).solve(v, lam)
        ref = np.linalg.solve(D + lam * np.eye(P), v)
        np.testing.assert_allclose(got, fresh, rtol=1e-10, atol=1e-12, err_msg=f"call {i}")
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10, err_msg=f"call {i}")
        # a product in between must not disturb the cached factor
        np.testing.assert_allclose(F @ v, D @ v, rtol=1e-10, atol=1e-12)


def test_block_diagonal_solve_call_sequence():
    """KFAC (a BlockDiagonalOperator of Kronecker blocks) asked for every rule in turn."""
    b = _batch()
    K = fl.KFAC(b)
    rng = np.random.default_rng(3)
    for i, (rule, lam) in enumerate([("factor", 0.1), ("exact", 0.1), ("pi", 0.1),
                                     ("exact", 0.02), ("factor", 0.1), ("pi", 0.02)]):
        v = rng.normal(size=b.n_params)
        got = K.solve(v, lam, rule=rule)
        fresh = fl.KFAC(b).solve(v, lam, rule=rule)
        parts, o = [], 0
        for A, G in K.factors:
            n = A.shape[0] * G.shape[0]
            parts.append(_inv_def([(A, G)], lam, rule) @ v[o:o + n])
            o += n
        np.testing.assert_allclose(got, fresh, rtol=1e-10, atol=1e-12, err_msg=f"call {i}")
        np.testing.assert_allclose(got, np.concatenate(parts), rtol=1e-8, atol=1e-11,
                                   err_msg=f"call {i}: {rule}, λ={lam}")


def test_fisher_float32_batch_then_float64():
    b64 = _batch(seed=4)
    b32 = b64.astype(np.float32)
    D = _dense_F(b64)
    P = D.shape[0]
    v = np.random.default_rng(5).normal(size=P)
    F32, F64 = FisherOperator(b32), FisherOperator(b64)
    for lam in (0.1, 0.5, 0.1):
        ref = np.linalg.solve(D + lam * np.eye(P), v)
        y32 = F32.solve(v.astype(np.float32), lam)
        y64 = F64.solve(v, lam)
        assert y32.dtype == np.float32
        np.testing.assert_allclose(y64, ref, rtol=1e-9)
        np.testing.assert_allclose(y32, ref, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(F32.to_dense(), D, rtol=1e-4, atol=1e-5)


def test_two_level_call_sequence():
    """TwoLevel keeps per-call state (ζ_K, β, residual): asked for several gradients in
    turn, each answer equals that of a fresh object."""
    b = _batch(seed=6)
    kw = dict(coarse_space="nicolaides", batch=b, damping=0.05)
    for form in ("residual", "additive"):
        T = fl.TwoLevel(fl.KFAC(b), form=form, **kw)
        rng = np.random.default_rng(7)
        for _ in range(3):
            g = rng.normal(size=b.n_params)
            z = T.solve(g)
            T2 = fl.TwoLevel(fl.KFAC(b), form=form, **kw)
            np.testing.assert_allclose(z, T2.solve(g), rtol=1e-12, atol=1e-14)
            assert T.energy_gain == pytest.approx(T2.energy_gain, rel=1e-10, abs=1e-14)


# -------------------------------------------------------------------------------------
# optimizers: trajectories next to a hand-written reference
# -------------------------------------------------------------------------------------
def _problem(seed=0):
    net = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=seed)
    r = np.random.default_rng(seed)
    X = r.normal(size=(24, 4))
    y = r.integers(0, 3, size=24)
    batches = [(X[i::3], y[i::3]) for i in range(3)]
    return net, batches


def _grad(net, theta, X, y):
    net.set_flat(theta)
    return net.flatten(net.loss_and_gradient(X, y)[1])


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.5, nesterov=True),
                                dict(momentum=0.9, weight_decay=0.01), dict(momentum=0.0)])
def test_sgd_trajectory_matches_reference(kw):
    net, batches = _problem()
    ref_net, _ = _problem()
    opt = fl.SGD(net, lr=0.05, **kw)
    mu, wd, nest = kw.get("momentum", 0.9), kw.get("weight_decay", 0.0), kw.get("nesterov", False)
    theta, v = ref_net.get_flat().copy(), None
    for t in range(7):
        X, y = batches[t % 3]
        d = _grad(ref_net, theta, X, y) + wd * theta
        v = d if v is None else mu * v + d
        theta = theta - 0.05 * ((d + mu * v) if nest else v)
        opt.step(X, y)
        np.testing.assert_allclose(net.get_flat(), theta, rtol=1e-12, atol=1e-14,
                                   err_msg=f"step {t}")


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_trajectory_matches_reference(wd):
    net, batches = _problem(1)
    ref_net, _ = _problem(1)
    b1, b2, eps, lr = 0.8, 0.99, 1e-8, 0.01
    opt = fl.Adam(net, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    theta = ref_net.get_flat().copy()
    m = np.zeros_like(theta)
    s = np.zeros_like(theta)
    for t in range(1, 8):
        X, y = batches[t % 3]
        d = _grad(ref_net, theta, X, y) + wd * theta
        m = b1 * m + (1 - b1) * d
        s = b2 * s + (1 - b2) * d * d
        theta = theta - lr * (m / (1 - b1 ** t)) / (np.sqrt(s / (1 - b2 ** t)) + eps)
        opt.step(X, y)
        np.testing.assert_allclose(net.get_flat(), theta, rtol=1e-12, atol=1e-14,
                                   err_msg=f"step {t}")


def _kfac_def(net, X):
    """KFAC factors of the exact Fisher from the factor batch arrays, by loops."""
    b = fl.factor_batch(net, X, fisher="exact")
    out = []
    for a, g in zip(b.a, b.g):
        N, K = a.shape[0], g.shape[1]
        A = sum(np.outer(a[n], a[n]) for n in range(N)) / N
        G = sum(np.outer(g[n, k], g[n, k]) for n in range(N) for k in range(K)) / N
        out.append((A, G))
    return out


@pytest.mark.parametrize("kw", [
    dict(stat_period=1, inverse_period=1, kl_clip=0.01),
    dict(stat_period=2, inverse_period=3, kl_clip=None),
    dict(stat_period=1, inverse_period=2, kl_clip=1e-4, damping_rule="pi"),
])
def test_ngd_kfac_trajectory_matches_reference(kw):
    """NGD(KFAC) with the papers' running averages: ρ = min(1 − 1/(t+1), ρ_max) at every
    statistics refresh, the inverse frozen between refreshes, KL clipping
    ν = min(1, √(κ/Σ_l|g_lᵀζ_l|)), weight decay after preconditioning, momentum."""
    net, batches = _problem(2)
    ref_net, _ = _problem(2)
    lr, lam, mu, wd, rho_max = 0.1, 1e-2, 0.9, 1e-3, 0.95
    rule = kw.get("damping_rule", "factor")
    opt = fl.NGD(net, "KFAC", lr=lr, damping=lam, momentum=mu, weight_decay=wd,
                 fisher="exact", curvature_fraction=1.0, ema="papers", ema_max=rho_max, **kw)
    theta = ref_net.get_flat().copy()
    v, terms, frozen = None, None, None
    sizes = [r * c for r, c in ref_net.shapes]
    for t in range(7):
        X, y = batches[t % 3]
        g = _grad(ref_net, theta, X, y)
        if t % kw["stat_period"] == 0:
            new = _kfac_def(ref_net, X)
            if terms is None:
                terms = new
            else:
                rho = min(1 - 1 / (t + 1), rho_max)
                terms = [(rho * Ao + (1 - rho) * An, rho * Go + (1 - rho) * Gn)
                         for (Ao, Go), (An, Gn) in zip(terms, new)]
        if t % kw["inverse_period"] == 0:
            frozen = [(A.copy(), G.copy()) for A, G in terms]
        zs, o = [], 0
        for (A, G), n in zip(frozen, sizes):
            zs.append(_inv_def([(A, G)], lam, rule) @ g[o:o + n])
            o += n
        zeta = np.concatenate(zs)
        nu = 1.0
        if kw["kl_clip"]:
            o, tot = 0, 0.0
            for n in sizes:
                tot += abs(g[o:o + n] @ zeta[o:o + n])
                o += n
            nu = min(1.0, np.sqrt(kw["kl_clip"] / tot))
        d = nu * zeta + wd * theta
        v = d if v is None else mu * v + d
        theta = theta - lr * v
        opt.step(X, y)
        assert opt.last_nu == pytest.approx(nu, rel=1e-9)
        np.testing.assert_allclose(net.get_flat(), theta, rtol=1e-9, atol=1e-12,
                                   err_msg=f"step {t}")
    assert opt.stat_refreshes == [t for t in range(7) if t % kw["stat_period"] == 0]
    assert opt.inverse_refreshes == [t for t in range(7) if t % kw["inverse_period"] == 0]


def test_ngd_exact_direction_is_the_damped_natural_gradient():
    """method='exact': ζ = (F + λI)⁻¹ g with F the Fisher of the curvature batch (no
    averaging), checked against the dense Fisher from finite-difference Jacobians."""
    import naive

    net, batches = _problem(3)
    X, y = batches[0]
    opt = fl.NGD(net, "exact", lr=0.1, damping=1e-2, fisher="exact", curvature_fraction=1.0,
                 kl_clip=None, momentum=0.0, weight_decay=0.0)
    theta = net.get_flat().copy()
    g = net.flatten(net.loss_and_gradient(X, y)[1])
    Jo, H = naive.output_jacobians(net, X), naive.output_hessians(net, X)
    F = np.einsum("nci,ncd,ndj->ij", Jo, H, Jo) / X.shape[0]
    zeta = np.linalg.solve(F + 1e-2 * np.eye(F.shape[0]), g)
    opt.step(X, y)
    np.testing.assert_allclose(net.get_flat(), theta - 0.1 * zeta, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kw", [dict(method="KFAC", ema="papers", stat_period=2, inverse_period=3),
                                dict(method="KPSVD", ema="window", window=2),
                                dict(method="KFAC", two_level={"coarse_space": "nicolaides",
                                                               "form": "residual"}),
                                # EKFAC interrupted after scalings were refreshed in a
                                # frozen eigenbasis (t = 4 refreshes, t = 3 rebuilt)
                                dict(method="EKFAC", ema="papers", stat_period=1,
                                     inverse_period=3, stop=5),
                                dict(method="EKFAC", ema="papers", inverse_period=3, stop=5,
                                     two_level={"coarse_space": "nicolaides",
                                                "form": "residual"})])
def test_ngd_state_roundtrip_mid_run_then_dtype_of_state(kw):
    """Interrupt after 4 steps, reload into a fresh optimizer on a fresh network: the next
    steps are bit-identical to the uninterrupted run (the state carries every cache)."""
    net, batches = _problem(4)
    kw = dict(kw)
    method, stop = kw.pop("method"), kw.pop("stop", 4)
    opt = fl.NGD(net, method, lr=0.05, damping=1e-2, seed=3, **kw)
    for t in range(stop):
        opt.step(*batches[t % 3])
    state, theta = opt.state_dict(), net.get_flat().copy()
    net2, _ = _problem(4)
    net2.set_flat(theta)
    opt2 = fl.NGD(net2, method, lr=0.05, damping=1e-2, seed=3, **kw)
    opt2.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in range(stop, stop + 5):
            l1 = opt.step(*batches[t % 3])
            l2 = opt2.step(*batches[t % 3])
            assert l1 == l2
            assert np.array_equal(net.get_flat(), net2.get_flat()), f"step {t}"
