"""Optimizers: NGD with every preconditioner, SGD and Adam, against hand computations."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import fimlab as fl
from fimlab.approx.kfac import kfac_factors
from fimlab.optim import NGD, SGD, Adam, make_optimizer, ngd_methods, optimizer_names
from fimlab.optim.ngd import window_batch

HAS_TWO_LEVEL = importlib.util.find_spec("fimlab.approx.twolevel") is not None


def _problem(seed=0, sizes=(6, 5, 3, 5, 6), lik="bernoulli", act="tanh", N=48):
    rng = np.random.default_rng(seed)
    net = fl.MLP(list(sizes), activation=act, likelihood=lik, seed=seed)
    X = rng.random((N, sizes[0]))
    y = X if lik == "bernoulli" else rng.normal(size=(N, sizes[-1]))
    return net, X, y


def _ngd(net, method="KFAC", **kw):
    base = dict(lr=0.05, damping=1e-2, momentum=0.0, weight_decay=0.0, kl_clip=None)
    base.update(kw)
    return NGD(net, method, **base)


# -- every optimizer trains ----------------------------------------------------------------------
@pytest.mark.parametrize("method", optimizer_names())
def test_every_optimizer_decreases_the_loss(method):
    net, X, y = _problem()
    lr = {"sgd": 0.5, "adam": 0.02}.get(method, 0.05)
    kw = {} if method in ("sgd", "adam") else dict(damping=1e-2, stat_period=2,
                                                   inverse_period=3)
    opt = make_optimizer(method, net, lr=lr, **kw)
    l0 = net.loss(X, y)
    for _ in range(25):
        opt.step(X, y)
    assert net.loss(X, y) < 0.95 * l0


@pytest.mark.parametrize("form", ["additive", "residual"])
def test_two_level_option(form):
    net, X, y = _problem()
    tl = {"coarse_space": "nicolaides", "form": form}
    if not HAS_TWO_LEVEL:  # before the two-level module lands: a clear error
        with pytest.raises(fl.UnknownNameError, match="twolevel"):
            NGD(net, "KFAC", two_level=tl)
        return
    # one step by hand: θ₁ = θ₀ − η · TwoLevel(KFAC(batch), batch, λ).solve(g)
    opt = _ngd(net, "KFAC", lr=0.05, damping=1e-2, two_level=tl)
    seen = _record_batches(opt)
    theta0 = net.get_flat().copy()
    g = net.flatten(net.gradient(X, y))
    opt.step(X, y)
    T = fl.TwoLevel(fl.KFAC(seen[0]), batch=seen[0], damping=1e-2, **tl)
    np.testing.assert_allclose(net.get_flat(), theta0 - 0.05 * T.solve(g), rtol=1e-10,
                               atol=1e-14)
    # and it trains
    net, X, y = _problem()
    opt = NGD(net, "KFAC", lr=0.05, damping=1e-2, two_level=tl)
    l0 = net.loss(X, y)
    for _ in range(25):
        opt.step(X, y)
    assert net.loss(X, y) < 0.95 * l0


# -- exact natural gradient ------------------------------------------------------------------------
def test_exact_ngd_with_huge_damping_is_a_scaled_gradient_step():
    net, X, y = _problem()
    theta0 = net.get_flat().copy()
    g = net.flatten(net.gradient(X, y))
    lam = 1e8
    opt = _ngd(net, "exact", lr=lam * 0.1, damping=lam)
    opt.step(X, y)
    step = theta0 - net.get_flat()
    np.testing.assert_allclose(step, 0.1 * g, rtol=1e-6, atol=1e-12)


def test_kfac_exact_rule_equals_exact_natural_gradient_for_linear_gaussian_layer():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, 4))
    Y = rng.normal(size=(20, 3))
    steps = []
    for method, rule in (("KFAC", "exact"), ("exact", "factor")):
        net = fl.MLP([4, 3], likelihood="gaussian", seed=1)
        theta0 = net.get_flat().copy()
        opt = _ngd(net, method, lr=0.5, damping=1e-3, damping_rule=rule, fisher="exact",
                   curvature_fraction=1.0)
        opt.step(X, Y)
        steps.append(theta0 - net.get_flat())
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-10, atol=1e-13)
    # and both equal lr (F + λI)⁻¹ g with F the dense exact Fisher
    net = fl.MLP([4, 3], likelihood="gaussian", seed=1)
    F = fl.exact_fisher(net, X)
    g = net.flatten(net.gradient(X, Y))
    np.testing.assert_allclose(steps[1], 0.5 * np.linalg.solve(F + 1e-3 * np.eye(len(g)), g),
                               rtol=1e-10)


def test_block_exact_uses_the_exact_diagonal_blocks():
    net, X, y = _problem(N=16)
    theta0 = net.get_flat().copy()
    g = net.flatten(net.gradient(X, y))
    opt = _ngd(net, "block-exact", lr=1.0, damping=1e-2, fisher="exact", curvature_fraction=1.0)
    opt.step(X, y)
    net2, _, _ = _problem(N=16)
    F = fl.exact_fisher(net2, X)
    D = np.zeros_like(F)
    off = np.cumsum([0] + [r * c for r, c in net2.shapes])
    for i in range(len(off) - 1):
        s = slice(off[i], off[i + 1])
        D[s, s] = F[s, s]
    np.testing.assert_allclose(theta0 - net.get_flat(),
                               np.linalg.solve(D + 1e-2 * np.eye(len(g)), g), rtol=1e-9)


# -- refresh periods, moving averages ----------------------------------------------------------------
def test_refresh_periods_count_optimizer_iterations():
    net, X, y = _problem()
    opt = _ngd(net, stat_period=3, inverse_period=4)
    pres = []
    for _ in range(10):
        opt.step(X, y)
        pres.append(opt.preconditioner)
    assert opt.stat_refreshes == [0, 3, 6, 9]
    assert opt.inverse_refreshes == [0, 4, 8]
    # the preconditioner is frozen between inverse refreshes
    assert pres[0] is pres[3] and pres[3] is not pres[4] and pres[4] is pres[7]


def _record_batches(opt):
    seen = []
    orig = opt._curvature_batch

    def rec(X, y):
        b = orig(X, y)
        seen.append(b)
        return b

    opt._curvature_batch = rec
    return seen


def test_papers_moving_average_of_kfac_factors_by_hand():
    net, X, y = _problem()
    opt = _ngd(net, stat_period=1, ema_max=0.6)
    seen = _record_batches(opt)
    for _ in range(4):
        opt.step(X, y)
    assert len(seen) == 4
    for l in range(net.n_layers):
        A = G = None
        for t, b in enumerate(seen, start=1):
            An, Gn = kfac_factors(b.a[l], b.g[l])
            rho = min(1 - 1 / t, 0.6)
            A = An if A is None else rho * A + (1 - rho) * An
            G = Gn if G is None else rho * G + (1 - rho) * Gn
        (Ae, Ge), = opt._terms[l]
        np.testing.assert_allclose(Ae, A, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(Ge, G, rtol=1e-13, atol=1e-15)
    # the curvature batch is the first quarter of the mini-batch, targets sampled
    assert seen[0].n_samples == 12 and seen[0].fisher == "mc"


def test_window_batch_fisher_is_the_weighted_sum():
    net, X, _ = _problem(N=12)
    rng = np.random.default_rng(0)
    bs = [fl.factor_batch(net, X[i * 4:(i + 1) * 4 + i], fisher="mc", rng=rng)
          for i in range(3)]  # 4, 5, 6 samples
    w = np.array([0.2, 0.3, 0.5])
    Fw = fl.FisherOperator(window_batch(bs, w)).to_dense()
    ref = sum(wi * fl.FisherOperator(b).to_dense() for wi, b in zip(w, bs))
    np.testing.assert_allclose(Fw, ref, rtol=1e-12, atol=1e-15)


def test_window_mode_preconditioner_is_built_on_the_weighted_window():
    net, X, y = _problem()
    opt = _ngd(net, "exact", ema="window", window=2, ema_max=0.5, stat_period=1)
    seen = _record_batches(opt)
    for _ in range(3):
        opt.step(X, y)
    F = opt.preconditioner.to_dense()
    ref = (0.5 * fl.FisherOperator(seen[1]).to_dense() + fl.FisherOperator(seen[2]).to_dense()
           ) / 1.5
    np.testing.assert_allclose(F, ref, rtol=1e-12, atol=1e-15)


def test_papers_ema_needs_kronecker_factors():
    net, _, _ = _problem()
    with pytest.raises(fl.OptionError, match="window"):
        NGD(net, "exact", ema="papers")


# -- KL-clipping, weight decay, momentum by hand --------------------------------------------------------
@pytest.mark.parametrize("form", ["papers", "lr2"])
def test_kl_clip_weight_decay_and_momentum_by_hand(form):
    net, X, y = _problem()
    lr, kappa, wd, mu = 0.3, 1e-4, 1e-2, 0.9
    opt = NGD(net, "KFAC", lr=lr, damping=1e-2, kl_clip=kappa, kl_clip_form=form,
              weight_decay=wd, momentum=mu, stat_period=10)
    v = None
    for _ in range(2):
        theta = net.get_flat().copy()
        g = net.flatten(net.gradient(X, y))
        opt.step(X, y)
        zeta = opt.preconditioner.solve(g, 1e-2, rule="factor")
        s, o = 0.0, 0
        for r, c in net.shapes:
            s += abs(float(g[o:o + r * c] @ zeta[o:o + r * c]))
            o += r * c
        if form == "lr2":
            s *= lr**2
        nu = min(1.0, math.sqrt(kappa / s))
        assert nu < 1 and opt.last_nu == pytest.approx(nu, rel=1e-12)
        d = nu * zeta + wd * theta  # weight decay after preconditioning (and clipping)
        v = d if v is None else mu * v + d
        np.testing.assert_allclose(net.get_flat(), theta - lr * v, rtol=1e-12, atol=1e-15)


# -- baselines by hand -------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_by_hand(nesterov):
    net, X, y = _problem()
    lr, mu, wd = 0.1, 0.9, 1e-3
    opt = SGD(net, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
    v = np.zeros(net.n_params)
    for _ in range(3):
        theta = net.get_flat().copy()
        d = net.flatten(net.gradient(X, y)) + wd * theta
        opt.step(X, y)
        v = mu * v + d
        step = d + mu * v if nesterov else v
        np.testing.assert_allclose(net.get_flat(), theta - lr * step, rtol=1e-13, atol=1e-15)


def test_adam_by_hand():
    net, X, y = _problem()
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.99, 1e-8, 1e-3
    opt = Adam(net, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    m = s = np.zeros(net.n_params)
    for t in range(1, 4):
        theta = net.get_flat().copy()
        d = net.flatten(net.gradient(X, y)) + wd * theta
        opt.step(X, y)
        m = b1 * m + (1 - b1) * d
        s = b2 * s + (1 - b2) * d * d
        ref = theta - lr * (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + eps)
        np.testing.assert_allclose(net.get_flat(), ref, rtol=1e-13, atol=1e-15)


# -- determinism, state --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["KFAC", "adam", "exact"])
def test_same_seed_same_curve_bit_for_bit(method):
    curves = []
    for _ in range(2):
        net, X, y = _problem()
        opt = make_optimizer(method, net, lr=0.05, **({} if method == "adam" else {"seed": 7}))
        curves.append([opt.step(X[i % 3::3], y[i % 3::3]) for i in range(8)])
    assert curves[0] == curves[1]
    net, X, y = _problem()
    if method != "adam":  # another seed: other sampled targets, another curve
        opt = make_optimizer(method, net, lr=0.05, seed=8)
        assert [opt.step(X[i % 3::3], y[i % 3::3]) for i in range(8)] != curves[0]


@pytest.mark.parametrize("kw", [dict(method="KFAC", stat_period=2, inverse_period=3),
                                dict(method="exact", ema="window", window=3),
                                dict(method="sgd"), dict(method="adam")])
def test_state_dict_roundtrip_continues_bit_for_bit(kw):
    kw = dict(kw)
    method = kw.pop("method")

    def make():
        net, X, y = _problem()
        return net, X, y, make_optimizer(method, net, lr=0.05, **kw)

    net, X, y, opt = make()
    full = [opt.step(X[i % 2::2], y[i % 2::2]) for i in range(9)]
    net, X, y, opt = make()
    part = [opt.step(X[i % 2::2], y[i % 2::2]) for i in range(4)]
    state, params = opt.state_dict(), [W.copy() for W in net.params]
    net2, X, y, opt2 = make()
    net2.set_flat(net2.flatten(params))  # the layout a step leaves (bit-for-bit BLAS paths)
    opt2.load_state_dict(state)
    part += [opt2.step(X[i % 2::2], y[i % 2::2]) for i in range(4, 9)]
    assert part == full


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_names_and_values():
    net, X, y = _problem()
    with pytest.raises(fl.UnknownNameError, match="KFAC"):
        make_optimizer("KFACX", net, lr=0.1)
    with pytest.raises(fl.UnknownNameError):
        NGD(net, "nope")
    for lr in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(fl.OptionError, match="learning rate"):
            make_optimizer("sgd", net, lr=lr)
        with pytest.raises(fl.OptionError, match="learning rate"):
            NGD(net, "KFAC", lr=lr)
    for lam in (0.0, -1e-3, float("inf")):
        with pytest.raises(fl.DampingError):
            NGD(net, "KFAC", lr=0.1, damping=lam)
    with pytest.raises(fl.UnknownNameError):
        NGD(net, "KFAC", damping_rule="magic")
    with pytest.raises(fl.UnknownNameError):
        NGD(net, "KFAC", ema="sometimes")
    for bad in (dict(stat_period=0), dict(inverse_period=-1), dict(curvature_fraction=1.5),
                dict(momentum=1.0), dict(window=0), dict(ema_max=1.0)):
        with pytest.raises(fl.OptionError):
            NGD(net, "KFAC", **bad)
    with pytest.raises(fl.OptionError):
        Adam(net, lr=0.1, betas=(1.0, 0.9))


def test_divergence_is_a_clear_error_and_keeps_the_parameters():
    net, X, y = _problem(lik="gaussian", act="linear")
    opt = SGD(net, lr=1e12, momentum=0.0)
    with pytest.raises(fl.DivergenceError, match="iteration"):
        for _ in range(20):
            before = [W.copy() for W in net.params]
            opt.step(X, y)
    assert all(np.all(np.isfinite(W)) for W in net.params)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.params))


def test_method_names_are_case_insensitive_and_listed():
    net, _, _ = _problem()
    assert NGD(net, "kfac").method == "KFAC"
    assert "exact" in ngd_methods() and "block-exact" in ngd_methods()
    assert optimizer_names()[:2] == ["sgd", "adam"]
    assert isinstance(make_optimizer("SGD", net, lr=0.1), SGD)


def test_paper_solver_warm_starts_from_the_previous_approximation(monkeypatch):
    from fimlab import approx

    real = approx.APPROXIMATIONS["KFAC"]
    seen = []

    def builder(batch, solver="exact", warm_start=None, **kw):
        seen.append((solver, warm_start))
        return real(batch, solver=solver, **kw)

    monkeypatch.setitem(approx.APPROXIMATIONS, "KFAC", builder)
    net, X, y = _problem()
    ops = []
    opt = _ngd(net, "KFAC", solver="paper", stat_period=1)
    orig = opt._build

    def rec(b):
        op = orig(b)
        ops.append(op)
        return op

    opt._build = rec
    for _ in range(3):
        opt.step(X, y)
    assert [s for s, _ in seen] == ["paper"] * 3
    assert seen[0][1] is None and seen[1][1] is ops[0] and seen[2][1] is ops[1]
    seen.clear()
    opt = _ngd(net, "KFAC", solver="exact")
    opt.step(X, y)
    opt.step(X, y)
    assert [w for _, w in seen] == [None, None]
