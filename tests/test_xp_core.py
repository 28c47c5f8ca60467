"""The linear-algebra core on every array backend (issue 7; DESIGN.md principle 5).

Each core computation — factor batches, the Fisher operator, Kronecker algebra, KFAC,
the metrics — runs on the namespace of its inputs. These tests run it on NumPy, on
``array_api_strict`` (arrays on its non-default ``"device1"``: a non-portable call or an
array created without the inputs' device fails) and on CuPy when a GPU is usable, and
compare every result with the NumPy computation of the same inputs (to round-off), and
check that it stays in the inputs' namespace and on their device.
"""

from __future__ import annotations

import numpy as np
import pytest

import fimlab as fl
from fimlab import kron as K
from fimlab.backend import array_namespace, device_of, to_numpy
from fimlab.operators import DenseOperator, ScaledOperator, SumOperator
from fimlab.testing import SMALL_NETS, make_targets, rtol_for

RTOL = 1e-10


@pytest.fixture(params=["array_api_strict", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp_backend(request):
    """The backends under test, NumPy excluded (issue 21): on NumPy these tests compared
    the NumPy code with itself. The NumPy results are checked against the explicit
    definitions by tests/test_crosscheck.py (every doubly-implemented quantity, four
    Fisher contexts) and the module tests; here the other namespaces are compared with
    NumPy."""
    from conftest import _backend_or_skip

    return _backend_or_skip(request.param)


def assert_on(backend, out):
    """``out`` is an array of ``backend``'s namespace, on its device."""
    assert array_namespace(out) is backend.xp, f"result left the namespace: {type(out)}"
    assert device_of(out) == backend.device, f"result left the device: {device_of(out)}"


def assert_close(backend, out, ref, rtol=RTOL):
    """``out`` (on ``backend``) equals the NumPy result ``ref`` to round-off."""
    assert_on(backend, out)
    ref = np.asarray(ref)
    got = to_numpy(out)
    assert got.shape == ref.shape
    atol = rtol * max(float(np.max(np.abs(ref), initial=0.0)), 1e-300)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


def spd(rng, n, shift=0.1):
    M = rng.normal(size=(n, n))
    return M @ M.T / n + shift * np.eye(n)


def batch_on(backend, b_np: fl.FactorBatch) -> fl.FactorBatch:
    """The same factor batch, its arrays moved to ``backend``."""
    return fl.FactorBatch([backend.asarray(a) for a in b_np.a],
                          [backend.asarray(g) for g in b_np.g], fisher=b_np.fisher)


# -- factor batches from a model created on the backend ---------------------------------
@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("case", range(len(SMALL_NETS)),
                         ids=[f"{s}-{a}-{l}" for s, a, l in SMALL_NETS])
def test_factor_batch_from_model(xp_backend, case, fisher):
    sizes, act, lik = SMALL_NETS[case]
    rng = np.random.default_rng(case)
    X = rng.normal(size=(7, sizes[0]))
    y = make_targets(lik, 7, sizes[-1], rng)
    with fl.use_backend("numpy"):  # the reference, whatever FIMLAB_BACKEND says
        net_np = fl.MLP(sizes, activation=act, likelihood=lik, seed=case)
    with xp_backend.use():
        net = fl.MLP(sizes, activation=act, likelihood=lik, seed=case)
    for W, W_np in zip(net.params, net_np.params, strict=True):
        assert_close(xp_backend, W, W_np, rtol=0)  # same seed, same bits everywhere
    kw = dict(fisher=fisher, mc_samples=3, rng=5)
    b_np = fl.factor_batch(net_np, X, y, **kw)
    # host data is moved to the model; data already on the backend stays there
    for Xin, yin in ((X, y), (xp_backend.asarray(X), xp_backend.asarray(y))):
        b = fl.factor_batch(net, Xin, yin, **kw)
        assert b.xp is xp_backend.xp and b.device == xp_backend.device
        assert (b.n_samples, b.n_vectors) == (b_np.n_samples, b_np.n_vectors)
        for l in range(b.n_layers):
            assert_close(xp_backend, b.a[l], b_np.a[l])
            assert_close(xp_backend, b.g[l], b_np.g[l])
    # the model's own computations follow its parameters
    assert_close(xp_backend, net.forward(X), net_np.forward(X))
    assert_close(xp_backend, net.get_flat(), net_np.get_flat(), rtol=0)
    loss, grads = net.loss_and_gradient(X, y)
    loss_np, grads_np = net_np.loss_and_gradient(X, y)
    assert loss == pytest.approx(loss_np, rel=RTOL)
    for gr, gr_np in zip(grads, grads_np, strict=True):
        assert_close(xp_backend, gr, gr_np)


def test_float32_model(xp_backend):
    X = np.random.default_rng(0).normal(size=(9, 4))
    with fl.use_backend("numpy"):
        net_np = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=1,
                        dtype="float32")
    with xp_backend.use():
        net = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=1,
                     dtype="float32")
    b, b_np = fl.factor_batch(net, X), fl.factor_batch(net_np, X)
    assert "float32" in str(b.dtype)
    v = np.random.default_rng(1).normal(size=b.n_params).astype(np.float32)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    assert_close(xp_backend, F @ xp_backend.asarray(v), F_np @ v, rtol=rtol_for("float32"))


# -- FactorBatch keeps its inputs ---------------------------------------------------------
@pytest.fixture
def host_batch():
    """A 3-layer Monte-Carlo factor batch (K = 2) on the host."""
    with fl.use_backend("numpy"):
        net = fl.MLP([4, 5, 4, 3], activation="tanh", likelihood="categorical", seed=3)
    X = np.random.default_rng(3).normal(size=(10, 4))
    return fl.factor_batch(net, X, fisher="mc", mc_samples=2, rng=7)


def test_factor_batch_keeps_namespace_and_arrays(xp_backend, host_batch):
    a = [xp_backend.asarray(x) for x in host_batch.a]
    g = [xp_backend.asarray(x) for x in host_batch.g]
    b = fl.FactorBatch(a, g)
    assert all(x is y for x, y in zip(b.a, a, strict=True))  # no conversion, no copy
    assert all(x is y for x, y in zip(b.g, g, strict=True))
    assert b.xp is xp_backend.xp and b.device == xp_backend.device
    assert b.layer(1).a[0] is a[1]


def test_factor_batch_methods(xp_backend, host_batch):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    for l in range(b.n_layers):
        assert_close(xp_backend, b.jacobian(l), b_np.jacobian(l))
        assert_close(xp_backend, b.jacobian(l, 2, 5), b_np.jacobian(l, 2, 5))
        assert_close(xp_backend, b.gram(l), b_np.gram(l))
    assert_close(xp_backend, b.jacobian_matrix(), b_np.jacobian_matrix())
    assert_close(xp_backend, b.gram(), b_np.gram())
    idx = np.array([0, 3, 4, 9])
    mask = np.arange(10) % 3 == 0
    for sel in (slice(1, 6), idx, xp_backend.asarray(idx), [0, 3, 4, 9], mask,
                xp_backend.asarray(mask)):
        sub = b.subset(sel)
        ref = b_np.subset(sel if not isinstance(sel, (list,)) else np.asarray(sel))
        for l in range(b.n_layers):
            assert_close(xp_backend, sub.a[l], ref.a[l], rtol=0)
            assert_close(xp_backend, sub.g[l], ref.g[l], rtol=0)
    b32 = b.astype(xp_backend.xp.float32)
    assert_close(xp_backend, b32.g[0], b_np.g[0].astype(np.float32), rtol=0)


# -- the Fisher operator ------------------------------------------------------------------
def test_fisher_operator(xp_backend, host_batch):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    rng = np.random.default_rng(0)
    v = rng.normal(size=F.shape[0])
    V = rng.normal(size=(F.shape[0], 3))
    vx, Vx = xp_backend.asarray(v), xp_backend.asarray(V)
    assert_close(xp_backend, F.matvec(vx), F_np.matvec(v))
    assert_close(xp_backend, F @ Vx, F_np @ V)
    assert_close(xp_backend, F.matmat(Vx), F_np.matmat(V))
    assert_close(xp_backend, F.to_dense(), F_np.to_dense())
    for i in range(b.n_layers):
        for j in range(b.n_layers):
            assert_close(xp_backend, F.block(i, j), F_np.block(i, j))
    for lam in (1e-3, 0.5):
        assert_close(xp_backend, F.solve(vx, lam), F_np.solve(v, lam), rtol=1e-8)
        assert_close(xp_backend, F.solve(Vx, lam), F_np.solve(V, lam), rtol=1e-8)
    assert F.frobenius_norm_sq() == pytest.approx(F_np.frobenius_norm_sq(), rel=RTOL)
    assert F.trace() == pytest.approx(F_np.trace(), rel=RTOL)
    assert_close(xp_backend, F.block_diagonal().to_dense(), F_np.block_diagonal().to_dense())
    assert_close(xp_backend, F.block_diagonal() @ vx, F_np.block_diagonal() @ v)


def test_fisher_block(xp_backend, host_batch):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    rng = np.random.default_rng(1)
    for l in range(b.n_layers):
        Fl, Fl_np = fl.FisherOperator(b).diagonal_block(l), fl.FisherOperator(b_np).diagonal_block(l)
        v = rng.normal(size=Fl.shape[0])
        vx = xp_backend.asarray(v)
        assert_close(xp_backend, Fl @ vx, Fl_np @ v)
        assert_close(xp_backend, Fl.to_dense(), Fl_np.to_dense())
        assert_close(xp_backend, Fl.solve(vx, 1e-2), Fl_np.solve(v, 1e-2), rtol=1e-8)
        assert Fl.frobenius_norm_sq() == pytest.approx(Fl_np.frobenius_norm_sq(), rel=RTOL)
        terms_np = [(spd(rng, Fl.d_a), spd(rng, Fl.d_g)) for _ in range(2)]
        terms = [(xp_backend.asarray(A), xp_backend.asarray(G)) for A, G in terms_np]
        assert Fl.inner_kron(terms) == pytest.approx(Fl_np.inner_kron(terms_np), rel=RTOL)
        for M, M_np in zip(Fl.kfac_factors(), Fl_np.kfac_factors(), strict=True):
            assert_close(xp_backend, M, M_np)


# -- Kronecker algebra ------------------------------------------------------------------
def _terms(rng, r, d_a=4, d_g=3):
    """``r`` Kronecker terms: a leading SPD term, then smaller symmetric ones."""
    out = [(spd(rng, d_a), spd(rng, d_g))]
    for _ in range(r - 1):
        A, G = rng.normal(size=(d_a, d_a)), rng.normal(size=(d_g, d_g))
        out.append((0.2 * (A + A.T), 0.2 * (G + G.T)))
    return out


RULES = [(1, "factor", {}), (1, "pi", {}), (1, "exact", {}),
         (2, "factor", {}), (2, "factor", {"signed": True}), (2, "exact", {}),
         (3, "factor", {}), (3, "exact", {})]


@pytest.mark.parametrize("rank,rule,kw", RULES,
                         ids=[f"r{r}-{rule}{'-signed' if kw else ''}" for r, rule, kw in RULES])
def test_kronecker_operator(xp_backend, rank, rule, kw):
    rng = np.random.default_rng(rank)
    terms_np = _terms(rng, rank)
    terms = [(xp_backend.asarray(A), xp_backend.asarray(G)) for A, G in terms_np]
    Kx, K_np = fl.KroneckerOperator(terms), fl.KroneckerOperator(terms_np)
    v = rng.normal(size=Kx.shape[0])
    V = rng.normal(size=(Kx.shape[0], 2))
    vx, Vx = xp_backend.asarray(v), xp_backend.asarray(V)
    assert_close(xp_backend, Kx @ vx, K_np @ v)
    assert_close(xp_backend, Kx @ Vx, K_np @ V)
    assert_close(xp_backend, Kx.to_dense(), K_np.to_dense())
    assert Kx.frobenius_norm_sq() == pytest.approx(K_np.frobenius_norm_sq(), rel=RTOL)
    assert Kx.trace() == pytest.approx(K_np.trace(), rel=RTOL)
    rtol = 1e-8 if rank >= 2 and (rule == "exact" or rank >= 3) else RTOL * 100
    # the exact damped inverse needs Σ A_r⊗G_r + λI positive definite (an indefinite
    # sum is refused, issue 15): λ = 1 lifts these terms' smallest eigenvalue above 0
    lam = 1.0 if rule == "exact" and rank >= 2 else 0.1
    assert_close(xp_backend, Kx.solve(vx, lam, rule=rule, **kw),
                 K_np.solve(v, lam, rule=rule, **kw), rtol=rtol)
    assert_close(xp_backend, Kx.solve(Vx, lam, rule=rule, **kw),
                 K_np.solve(V, lam, rule=rule, **kw), rtol=rtol)


def test_kron_functions(xp_backend):
    rng = np.random.default_rng(4)
    A, G = spd(rng, 4), spd(rng, 3)
    W = rng.normal(size=(3, 4))
    X = rng.normal(size=(12, 5))
    Ax, Gx, Wx, Xx = (xp_backend.asarray(M) for M in (A, G, W, X))
    assert_close(xp_backend, K.vec(Wx), W.ravel(order="F"), rtol=0)
    assert_close(xp_backend, K.unvec(K.vec(Wx), 3, 4), W, rtol=0)
    assert_close(xp_backend, K.kron(Ax, Gx), np.kron(A, G), rtol=0)
    assert_close(xp_backend, K.kron_matmat(Ax, Gx, Xx), np.kron(A, G) @ X)
    assert_close(xp_backend, K.kron_matmat(Ax, Gx, Xx[:, 0]), np.kron(A, G) @ X[:, 0])
    t, t_np = [(Ax, Gx)], [(A, G)]
    assert K.kron_sum_inner(t, t) == pytest.approx(K.kron_sum_inner(t_np, t_np), rel=RTOL)
    assert_close(xp_backend, K.kron_sum_solve(t, Xx, 0.1, "exact"),
                 np.linalg.solve(np.kron(A, G) + 0.1 * np.eye(12), X), rtol=1e-9)
    M = np.kron(A, G) + 0.1 * np.eye(12)
    Mx = xp_backend.asarray(M)
    Y, info = K.pcg(lambda Z: Mx @ Z, Xx, None, tol=1e-12, maxiter=200)
    assert_close(xp_backend, Y, np.linalg.solve(M, X), rtol=1e-9)
    assert info["residual"] <= 1e-12


# -- approximations and metrics ---------------------------------------------------------
def test_kfac(xp_backend, host_batch):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    Kx, K_np = fl.KFAC(b), fl.KFAC(b_np)
    for (A, G), (A_np, G_np) in zip(Kx.factors, K_np.factors, strict=True):
        assert_close(xp_backend, A, A_np)
        assert_close(xp_backend, G, G_np)
    v = np.random.default_rng(2).normal(size=Kx.shape[0])
    vx = xp_backend.asarray(v)
    assert_close(xp_backend, Kx @ vx, K_np @ v)
    assert_close(xp_backend, Kx.to_dense(), K_np.to_dense())
    assert_close(xp_backend, Kx.block(0, 1), K_np.block(0, 1), rtol=0)
    for rule in ("factor", "pi", "exact"):
        assert_close(xp_backend, Kx.solve(vx, 1e-2, rule=rule), K_np.solve(v, 1e-2, rule=rule),
                     rtol=1e-9)
    from fimlab.approx import build_approximation

    assert_close(xp_backend, build_approximation("KFAC", b) @ vx, K_np @ v)


def test_metrics(xp_backend, host_batch):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    Kx, K_np = fl.KFAC(b), fl.KFAC(b_np)
    E1, E2 = fl.relative_frobenius_error, fl.singular_value_error
    for blk in (None, 0, 2):
        for method in ("auto", "gram", "dense"):
            assert E1(F, Kx, block=blk, method=method) == pytest.approx(
                E1(F_np, K_np, block=blk, method=method), rel=1e-9)
        assert E2(F, Kx, block=blk) == pytest.approx(E2(F_np, K_np, block=blk), rel=1e-9)
    # the Gram route agrees with the dense one on the backend too
    assert E1(F, Kx, method="gram") == pytest.approx(E1(F, Kx, method="dense"), rel=1e-9)
    # dense arrays and generic operators of the backend
    D, D_np = F.to_dense(), F_np.to_dense()
    Kd, Kd_np = Kx.to_dense(), K_np.to_dense()
    assert E1(D, Kd) == pytest.approx(E1(D_np, Kd_np), rel=1e-9)
    assert E2(D, Kd) == pytest.approx(E2(D_np, Kd_np), rel=1e-9)
    assert E1(DenseOperator(D), Kx) == pytest.approx(E1(DenseOperator(D_np), K_np), rel=1e-9)


# -- generic operators ------------------------------------------------------------------
def test_generic_operators(xp_backend):
    rng = np.random.default_rng(5)
    M_np = spd(rng, 6)
    M = xp_backend.asarray(M_np)
    v, V = rng.normal(size=6), rng.normal(size=(6, 2))
    vx, Vx = xp_backend.asarray(v), xp_backend.asarray(V)
    D, D_np = DenseOperator(M), DenseOperator(M_np)
    assert_close(xp_backend, D.solve(vx, 0.1), np.linalg.solve(M_np + 0.1 * np.eye(6), v))
    assert_close(xp_backend, D.solve(Vx, 0.1), np.linalg.solve(M_np + 0.1 * np.eye(6), V))
    S = SumOperator(D, ScaledOperator(D, 2.0))
    assert_close(xp_backend, S @ vx, 3.0 * M_np @ v)
    assert_close(xp_backend, (D - 0.5 * D).to_dense(), 0.5 * M_np)
    # generic fallback: conjugate gradients on the lazy sum
    assert_close(xp_backend, S.solve(vx, 0.1), np.linalg.solve(3.0 * M_np + 0.1 * np.eye(6), v),
                 rtol=1e-8)
    with pytest.raises(TypeError, match="to_numpy"):
        D.to_scipy()
    np.testing.assert_allclose(D_np.to_scipy() @ v, M_np @ v, rtol=1e-14)


def test_operand_from_another_backend_is_a_clear_error(host_batch):
    """An operator on one backend refuses operands of another library or device."""
    import array_api_strict as xs

    b = fl.FactorBatch([xs.asarray(a, device=xs.Device("device1")) for a in host_batch.a],
                       [xs.asarray(g, device=xs.Device("device1")) for g in host_batch.g])
    v = np.ones(b.n_params)
    ops = [fl.FisherOperator(b), fl.KFAC(b), fl.KFAC(b).blocks[0]]
    for op in ops:
        P = op.shape[0]
        with pytest.raises(fl.BackendError, match="move it first"):
            op @ v[:P]
        with pytest.raises(fl.BackendError, match="device"):
            op @ xs.asarray(v[:P])  # right library, wrong device
        with pytest.raises(fl.BackendError, match="move it first"):
            op.solve(v[:P], 0.1) if not isinstance(op, fl.FisherOperator) else \
                op.solve(v[:P], 0.1, rule="exact")
    with pytest.raises(fl.BackendError, match="holds numpy arrays.*array_api_strict array"):
        fl.FisherOperator(fl.FactorBatch(host_batch.a, host_batch.g)) @ \
            xs.asarray(v)


def test_boundary_checks_on_the_backend(xp_backend, host_batch):
    """Finiteness and damping checks work on every backend (``~`` on bool, int sums)."""
    a = [xp_backend.asarray(x) for x in host_batch.a]
    g_np = host_batch.g[0].copy()
    g_np[1, 0, 2] = np.nan
    g_np[3, 1, 0] = np.inf
    g = [xp_backend.asarray(g_np)] + [xp_backend.asarray(x) for x in host_batch.g[1:]]
    with pytest.raises(fl.NonFiniteError, match="g\\[0\\] contains 2 non-finite"):
        fl.FactorBatch(a, g)
    F = fl.FisherOperator(batch_on(xp_backend, host_batch))
    with pytest.raises(fl.DampingError):
        F.solve(xp_backend.asarray(np.ones(F.shape[0])), -1.0)
    with pytest.raises(fl.ShapeError):
        F @ xp_backend.asarray(np.ones(F.shape[0] + 1))


# -- the KPSVD family (issue 3) ----------------------------------------------------
KPSVD_CASES = [("KPSVD", {"rank": 1}), ("KPSVD", {"rank": 2}), ("KPSVD", {"rank": 3}),
               ("KFACCorrected", {}), ("Deflation", {}), ("Lanczos", {"steps": 2}),
               ("Lanczos", {"steps": 3})]


@pytest.mark.filterwarnings("ignore::fimlab.ConvergenceWarning")  # paper solvers at caps
@pytest.mark.parametrize("solver", ["exact", "paper"])
@pytest.mark.parametrize("name,kw", KPSVD_CASES,
                         ids=[n + "".join(f"-{k}{v}" for k, v in kw.items())
                              for n, kw in KPSVD_CASES])
def test_kpsvd_family(xp_backend, host_batch, name, kw, solver):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    cls = getattr(fl, name)
    opts = dict(kw, solver=solver, seed=0) if solver == "paper" else dict(kw)
    Kx, K_np = cls(b, **opts), cls(b_np, **opts)
    rtol = 1e-8 if solver == "exact" else 1e-6
    for terms, terms_np in zip(Kx.terms, K_np.terms, strict=True):
        assert len(terms) == len(terms_np)
        for (A, G), (A_np, G_np) in zip(terms, terms_np, strict=True):
            assert_close(xp_backend, A, A_np, rtol=rtol)
            assert_close(xp_backend, G, G_np, rtol=rtol)
    v = np.random.default_rng(6).normal(size=Kx.shape[0])
    vx = xp_backend.asarray(v)
    assert_close(xp_backend, Kx @ vx, K_np @ v, rtol=rtol)
    for rule in ("factor", "exact"):
        assert_close(xp_backend, Kx.solve(vx, 1e-2, rule=rule), K_np.solve(v, 1e-2, rule=rule),
                     rtol=1e-6)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    assert fl.relative_frobenius_error(F, Kx) == pytest.approx(
        fl.relative_frobenius_error(F_np, K_np), rel=1e-6)


def test_kron_rearrangement_and_iterative_svds(xp_backend, host_batch):
    """The Kronecker algebra of the KPSVD issue: rearrangement, dense KPSVD, matrix-free
    products with ``R(F_i)``, power / Golub-Kahan / Lanczos SVDs, weighted Gram."""
    xb, rng = xp_backend, np.random.default_rng(11)
    d_a, d_g = 3, 2
    M = rng.normal(size=(d_a * d_g, d_a * d_g))
    M = M @ M.T
    Mx = xb.asarray(M)
    Rm, Rm_np = K.rearrange(Mx, d_a, d_g), K.rearrange(M, d_a, d_g)
    assert_close(xb, Rm, Rm_np, rtol=0)
    assert_close(xb, K.rearrange_inverse(Rm, d_a, d_g), M, rtol=0)
    ks, ks_np = K.kpsvd(Mx, d_a, d_g, rank=2), K.kpsvd(M, d_a, d_g, rank=2)
    np.testing.assert_allclose(to_numpy(ks[0]), to_numpy(ks_np[0]), rtol=1e-10)
    for X, X_np in ((ks[1], ks_np[1]), (ks[2], ks_np[2])):
        assert_close(xb, X, X_np, rtol=1e-8)
    for X, X_np in zip(K.nearest_kronecker(Mx, d_a, d_g), K.nearest_kronecker(M, d_a, d_g),
                       strict=True):
        assert_close(xb, X, X_np, rtol=1e-8)
    a_np, g_np = host_batch.a[1], host_batch.g[1]
    a, g = xb.asarray(a_np), xb.asarray(g_np)
    da, dg = a_np.shape[1], g_np.shape[2]
    V, U = rng.normal(size=(dg, dg)), rng.normal(size=(da, da))
    assert_close(xb, K.rearranged_matvec(a, g, xb.asarray(V)), K.rearranged_matvec(a_np, g_np, V))
    assert_close(xb, K.rearranged_rmatvec(a, g, xb.asarray(U)),
                 K.rearranged_rmatvec(a_np, g_np, U))
    R, R_np = K.RearrangedFisher(a, g), K.RearrangedFisher(a_np, g_np)
    assert_close(xb, R.to_dense(), R_np.to_dense())
    s, u, v, _ = K.power_svd(R, rng=np.random.default_rng(0), tol=1e-10)
    s_np, u_np, v_np, _ = K.power_svd(R_np, rng=np.random.default_rng(0), tol=1e-10)
    assert s == pytest.approx(s_np, rel=1e-9)
    assert_close(xb, u, u_np, rtol=1e-6)
    s, Ul, Vl, _ = K.lanczos_svd(R, k=2, steps=None, rng=np.random.default_rng(0), tol=1e-10)
    s_np, Ul_np, Vl_np, _ = K.lanczos_svd(R_np, k=2, steps=None, rng=np.random.default_rng(0),
                                          tol=1e-10)
    np.testing.assert_allclose(to_numpy(s), to_numpy(s_np), rtol=1e-9)
    assert_close(xb, Vl, Vl_np, rtol=1e-6)
    Ug, Bg, Vg, _ = K.golub_kahan(R, 3, rng=np.random.default_rng(0))
    Ug_np, Bg_np, Vg_np, _ = K.golub_kahan(R_np, 3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(to_numpy(Bg), to_numpy(Bg_np), rtol=1e-9)
    assert_close(xb, Vg, Vg_np, rtol=1e-9)
    w = rng.normal(size=a_np.shape[0])
    assert_close(xb, K.weighted_gram(g, xb.asarray(w)), K.weighted_gram(g_np, w))
    Dp = K.deflate(R, [(s[0], Ul[:, 0], Vl[:, 0])])
    Dp_np = K.deflate(R_np, [(s_np[0], Ul_np[:, 0], Vl_np[:, 0])])
    x = rng.normal(size=R.shape[1])
    assert_close(xb, Dp.matvec(xb.asarray(x)), Dp_np.matvec(x), rtol=1e-8)


# -- two-level corrections and the direction/spectrum metrics (issue 4) -----------
TWO_LEVEL = [("KFAC", "nicolaides", "residual"), ("KFAC", "nicolaides", "additive"),
             ("KFAC", "spectral", "residual"), ("KFAC", "residual", "residual"),
             ("KFAC", "krylov-nicolaides", "additive"), ("KFAC", "krylov-residual", "residual"),
             ("KFAC", "previous", "residual"), ("KFACCorrected", "spectral", "additive")]


@pytest.mark.parametrize("fine,space,form", TWO_LEVEL,
                         ids=[f"{m}-{s}-{f}" for m, s, f in TWO_LEVEL])
def test_two_level(xp_backend, host_batch, fine, space, form):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    g = np.random.default_rng(8).normal(size=b.n_params)
    gx = xp_backend.asarray(g)
    kw = dict(coarse_space=space, form=form, damping=1e-2)
    M = getattr(fl, fine)
    T, T_np = fl.TwoLevel(M(b), batch=b, **kw), fl.TwoLevel(M(b_np), batch=b_np, **kw)
    assert_close(xp_backend, T.solve(gx), T_np.solve(g), rtol=1e-7)
    assert T.energy_gain == pytest.approx(T_np.energy_gain, rel=1e-6, abs=1e-12)
    assert T.optimal_energy_gain == pytest.approx(T_np.optimal_energy_gain, rel=1e-6,
                                                  abs=1e-12)
    if T.is_symmetric:
        op, op_np = T.as_operator(), T_np.as_operator()
        assert_close(xp_backend, op @ gx, op_np @ g, rtol=1e-7)


def test_direction_and_spectrum_metrics(xp_backend, host_batch):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    Kx, K_np = fl.KFAC(b), fl.KFAC(b_np)
    g = np.random.default_rng(9).normal(size=b.n_params)
    gx = xp_backend.asarray(g)
    z, z_np = Kx.solve(gx, 1e-2), K_np.solve(g, 1e-2)
    from fimlab import metrics as M

    assert M.direction_angle(z, F, gx, 1e-2) == pytest.approx(
        M.direction_angle(z_np, F_np, g, 1e-2), rel=1e-7, abs=1e-10)
    assert M.energy_error(z, F, gx, 1e-2) == pytest.approx(
        M.energy_error(z_np, F_np, g, 1e-2), rel=1e-7)
    for alg in ("dense", "lanczos"):
        s = M.preconditioned_spectrum(F, Kx, 1e-2, algorithm=alg)
        s_np = M.preconditioned_spectrum(F_np, K_np, 1e-2, algorithm=alg)
        s, s_np = (x[0] if isinstance(x, tuple) else x for x in (s, s_np))
        np.testing.assert_allclose(to_numpy(s), to_numpy(s_np), rtol=1e-6)
    assert M.preconditioned_condition_number(F, Kx, 1e-2) == pytest.approx(
        M.preconditioned_condition_number(F_np, K_np, 1e-2), rel=1e-6)
    for alg in ("dense", "lanczos"):
        assert M.preconditioner_distance(F, Kx, 1e-2, algorithm=alg) == pytest.approx(
            M.preconditioner_distance(F_np, K_np, 1e-2, algorithm=alg), rel=1e-6)


def test_two_level_user_space_and_operator(xp_backend, host_batch):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    rng = np.random.default_rng(10)
    R0 = rng.normal(size=(3, b.n_params))
    R0[1, :] = 0.0  # a zero row: dropped
    R0[2, : b.offsets[1]] = 0.0  # a row on layers 1 and 2 only
    g = rng.normal(size=b.n_params)
    kw = dict(form="additive", damping=1e-2)
    T = fl.TwoLevel(fl.KFAC(b), coarse_space=xp_backend.asarray(R0), batch=b, **kw)
    T_np = fl.TwoLevel(fl.KFAC(b_np), coarse_space=R0, batch=b_np, **kw)
    assert_close(xp_backend, T.solve(xp_backend.asarray(g)), T_np.solve(g), rtol=1e-8)
    assert_close(xp_backend, T.coarse_matrix, T_np.coarse_matrix, rtol=1e-9)
    assert_close(xp_backend, T.as_operator().to_dense(), T_np.as_operator().to_dense(),
                 rtol=1e-8)


# -- E3 and the kernel twins (issue 6) ------------------------------------------------
@pytest.mark.parametrize("block", [None, 1])
def test_spectral_error(xp_backend, host_batch, block):
    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    Kx, K_np = fl.KFAC(b), fl.KFAC(b_np)
    for method in ("lanczos", "dense"):
        assert fl.spectral_error(F, Kx, block=block, method=method) == pytest.approx(
            fl.spectral_error(F_np, K_np, block=block, method=method), rel=1e-7)


def test_kernel_twins_on_the_backend(xp_backend):
    """The kernel dispatcher runs the array-API twin for non-NumPy inputs (Numba is
    CPU-only) and agrees with the NumPy result."""
    from fimlab import _kernels

    rng = np.random.default_rng(12)
    N, K_, d = 5, 3, 4
    g = rng.normal(size=(N, K_, d))
    gx = xp_backend.asarray(g)
    expect = "numba" if xp_backend.name == "numpy" and _kernels.numba_enabled() else "numpy"
    assert _kernels.implementation(gx) == expect
    assert_close(xp_backend, _kernels.second_moment_gram(gx), _kernels.second_moment_gram(g))
    X, Y = rng.normal(size=(N * K_, d)), rng.normal(size=(N * K_, d))
    out, out_np = xp_backend.asarray(np.zeros(N)), np.zeros(N)
    _kernels.grouped_rowdot(xp_backend.asarray(X), xp_backend.asarray(Y), K_, out)
    _kernels.grouped_rowdot(X, Y, K_, out_np)
    assert_close(xp_backend, out, out_np)
    M = rng.normal(size=(300, 300))  # beyond one 256-tile of the twin
    Mx = xp_backend.asarray(M)
    _kernels.symmetrize_lower(Mx)
    assert_close(xp_backend, Mx, np.tril(M) + np.tril(M, -1).T, rtol=0)


# -- the comparators and the spectral module (issue 17) on every backend ------------------
@pytest.mark.parametrize("name", ["EKFAC", "EigenCorrected(KPSVD)", "Diagonal", "BlockExact",
                                  "LowRank", "LowRank+Diagonal"])
def test_comparators(xp_backend, host_batch, name):
    """Each comparator built on the backend equals the NumPy one: products, the damped
    solve, and E1 per block and for the whole network."""
    from fimlab.approx import build_approximation

    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    A, A_np = build_approximation(name, b), build_approximation(name, b_np)
    v = np.random.default_rng(5).normal(size=b_np.n_params)
    assert_close(xp_backend, A @ xp_backend.asarray(v), A_np @ v, rtol=1e-9)
    assert_close(xp_backend, A.solve(xp_backend.asarray(v), 0.1), A_np.solve(v, 0.1),
                 rtol=1e-8)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    for block in (None, 1):
        e = fl.relative_frobenius_error(F, A, block=block)
        assert e == pytest.approx(fl.relative_frobenius_error(F_np, A_np, block=block),
                                  rel=1e-8, abs=1e-12)


def test_spectral_module(xp_backend, host_batch):
    """SLQ, the preconditioned density and the trace/diagonal estimators give on the
    backend what they give on NumPy (same probes: the randomness is drawn on the host)."""
    from fimlab import spectral

    b_np = host_batch
    b = batch_on(xp_backend, b_np)
    F, F_np = fl.FisherOperator(b), fl.FisherOperator(b_np)
    d, d_np = spectral.spectral_density(F, probes=3, steps=12, rng=1), \
        spectral.spectral_density(F_np, probes=3, steps=12, rng=1)
    np.testing.assert_allclose(np.sort(d.nodes, axis=None), np.sort(d_np.nodes, axis=None),
                               rtol=1e-7, atol=1e-12)
    assert d.zero_mass == pytest.approx(d_np.zero_mass, abs=1e-9)
    kw = dict(probes=2, steps=8, rng=2, damping=1e-2)
    p = spectral.spectral_density(F, preconditioner=fl.KFAC(b), **kw)
    p_np = spectral.spectral_density(F_np, preconditioner=fl.KFAC(b_np), **kw)
    np.testing.assert_allclose(np.sort(p.nodes, axis=None), np.sort(p_np.nodes, axis=None),
                               rtol=1e-7)
    for est in (spectral.hutchinson, spectral.hutchpp, spectral.xtrace):
        assert est(F, rng=3) == pytest.approx(est(F_np, rng=3), rel=1e-8)
    assert_close(xp_backend, xp_backend.asarray(spectral.diagonal_estimate(F, rng=4)),
                 spectral.diagonal_estimate(F_np, rng=4), rtol=1e-8)
