"""fimlab.torch: factor batches of PyTorch models, checked against fimlab's own MLP,
against dense Fisher matrices from torch.func autodiff, and against curvlinops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fimlab as fl  # noqa: E402
import fimlab.torch as flt  # noqa: E402

from conftest import make_targets  # noqa: E402


@pytest.fixture(autouse=True)
def _float64_default():
    """float64 tensors by default in this module only (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}
LOSS = {"categorical": nn.CrossEntropyLoss, "gaussian": nn.MSELoss,
        "bernoulli": nn.BCEWithLogitsLoss}
CASES = [([4, 6, 5, 3], "tanh", "categorical"), ([3, 5, 4, 2], "relu", "gaussian"),
         ([5, 4, 3], "sigmoid", "bernoulli")]


def torch_copy(net: fl.MLP) -> nn.Sequential:
    """A PyTorch Sequential holding the weights of a fimlab MLP."""
    mods = []
    for l, W in enumerate(net.params):
        lin = nn.Linear(W.shape[1] - 1, W.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W[:, :-1])))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(W[:, -1])))
        mods.append(lin)
        if l < net.n_layers - 1:
            mods.append(ACT[net.activations[l]]())
    return nn.Sequential(*mods)


def same_batch(b1, b2, rtol=1e-12):
    assert b1.n_layers == b2.n_layers and b1.n_vectors == b2.n_vectors
    for x, y in zip(b1.a + b1.g, b2.a + b2.g):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max())


# -- the same weights give the same factor batch as fimlab's MLP ---------------------------
@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_factor_batch_as_mlp(case, fisher):
    sizes, act, lik = CASES[case]
    net = fl.MLP(sizes, activation=act, likelihood=lik, seed=case)
    model = torch_copy(net)
    rng = np.random.default_rng(case)
    X = rng.normal(size=(17, sizes[0]))
    y = make_targets(lik, 17, sizes[-1], rng)
    ref = fl.factor_batch(net, X, y, fisher=fisher, mc_samples=3, rng=11)
    for likelihood in (lik, LOSS[lik](), LOSS[lik](reduction="sum")):
        got = flt.factor_batch(model, torch.from_numpy(X), torch.from_numpy(y),
                               likelihood=likelihood, fisher=fisher, mc_samples=3, rng=11)
        same_batch(got, ref)
    if fisher == "mc":  # the sampled targets passed in
        z = net.forward(X)
        ys = flt.sample_targets(z, lik, 3, rng=11)
        got = flt.factor_batch(model, X, likelihood=lik, fisher="mc", targets=ys)
        same_batch(got, ref)
        other = flt.factor_batch(model, X, likelihood=lik, fisher="mc", mc_samples=3, rng=12)
        assert not np.allclose(other.g[-1], ref.g[-1])


def test_float32_model_gives_float32_batch():
    net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    model = torch_copy(net).float()
    X = np.random.default_rng(0).normal(size=(8, 3))
    b = flt.factor_batch(model, X, likelihood="categorical")
    assert b.dtype == np.float32
    ref = fl.factor_batch(net, X)
    for x, r in zip(b.g, ref.g):
        np.testing.assert_allclose(x, r, rtol=1e-5, atol=1e-6)


# -- models that are not chains, against a dense Fisher from torch.func --------------------
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6, bias=False)])
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for blk in self.blocks:
            h = h + torch.relu(blk(h))
        return self.out(h)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Linear(4, 3)  # registered first, called second
        self.a = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3, bias=False))

    def forward(self, x):
        return self.a(x) + torch.sigmoid(self.b(x))


def dense_fisher_autodiff(model, X, y, lik, fisher, order):
    """``(1/N) Σ_n J_nᵀ M_n J_n`` with ``J_n`` from ``torch.func.jacrev`` and ``M_n`` the
    Hessian of the per-sample loss in ``z`` (exact: through its eigendecomposition's
    square root) or the outer product of the loss gradient (empirical); rows and columns
    in fimlab's θ order (layers in ``order``, each ``vec([W | b])``)."""
    from torch.func import functional_call, grad, hessian, jacrev

    params = {k: v.detach() for k, v in model.named_parameters()}
    Xt = torch.from_numpy(X)

    def out(p, x):
        return functional_call(model, p, (x[None],))[0]

    def nll(z, t):
        if lik == "categorical":
            return torch.logsumexp(z, 0) - z[t]
        if lik == "gaussian":
            return 0.5 * ((z - t) ** 2).sum()
        return (nn.functional.softplus(z) - t * z).sum()

    yt = torch.from_numpy(y)
    N = X.shape[0]
    F = 0
    for n in range(N):  # the reference is allowed a loop over samples
        J = jacrev(out)(params, Xt[n])
        cols = []
        for name in order:
            Jw = J[f"{name}.weight"]  # (C, d_out, d_in)
            blk = Jw
            if f"{name}.bias" in J:
                blk = torch.cat([Jw, J[f"{name}.bias"][:, :, None]], dim=2)
            cols.append(blk.transpose(1, 2).reshape(blk.shape[0], -1))  # column-major vec
        Jn = torch.cat(cols, dim=1)  # (C, P)
        zn = out(params, Xt[n]).detach()
        if fisher == "exact":
            H = hessian(nll)(zn, yt[n])
            ev, Q = torch.linalg.eigh(H)
            R = Q * ev.clamp(min=0).sqrt()  # H = R Rᵀ
            M = R @ R.T
        else:
            gz = grad(nll)(zn, yt[n])
            M = torch.outer(gz, gz)
        F = F + Jn.T @ M @ Jn
    return (F / N).numpy()


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("Model,lik", [(Residual, "categorical"), (TwoBranches, "gaussian"),
                                       (TwoBranches, "bernoulli")])
def test_non_chain_models_against_autodiff(Model, lik, fisher):
    torch.manual_seed(0)
    model = Model().double()
    rng = np.random.default_rng(1)
    X = rng.normal(size=(9, 4))
    y = make_targets(lik, 9, 3, rng)
    b = flt.factor_batch(model, X, y, likelihood=lik, fisher=fisher)
    if Model is TwoBranches:
        assert b.layer_names == ["a.0", "a.2", "b"]  # call order, not registration order
    else:
        assert b.layer_names == ["inp", "blocks.0", "blocks.1", "out"]
        assert b.d_a[2] == 6  # no bias column for the bias-free layer
    F = fl.FisherOperator(b).to_dense()
    ref = dense_fisher_autodiff(model, X, y, lik, fisher, b.layer_names)
    np.testing.assert_allclose(F, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


def test_vmapped_backward_equals_per_vector_backwards(monkeypatch):
    """The fallback (one batched backward per vector) gives the same batch."""
    torch.manual_seed(0)
    model = Residual().double()
    X = np.random.default_rng(0).normal(size=(6, 4))
    ref = flt.factor_batch(model, X, likelihood="categorical")
    real = torch.autograd.grad

    def no_vmap(*args, **kw):
        if kw.get("is_grads_batched"):
            raise RuntimeError("batching rule not implemented (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    same_batch(flt.factor_batch(model, X, likelihood="categorical"), ref)


# -- against curvlinops (a peer no one here wrote) ----------------------------------------
def perm_curvlinops(batch) -> np.ndarray:
    """Index of each curvlinops parameter entry in fimlab's θ: curvlinops flattens the
    parameters in ``model.parameters()`` order, each weight row-major, then the bias;
    fimlab stacks ``vec([W | b])`` column-major per layer."""
    idx = []
    for l in range(batch.n_layers):
        d_out, cols = batch.d_g[l], batch.d_a[l]
        pos = batch.offsets[l] + np.arange(d_out * cols).reshape(cols, d_out).T  # (d_out, cols)
        idx += [pos[:, :-1].ravel(), pos[:, -1]]  # weight row-major, then bias
    return np.concatenate(idx)


# the factor from fimlab's Fisher (mean over samples of the per-sample NLL's curvature) to
# curvlinops' (the curvature of the loss module with reduction="mean"): PyTorch's MSELoss
# is (1/(N·C)) Σ (z − y)² with no ½ (Hessian 2/C per sample relative to fimlab's);
# BCEWithLogitsLoss(mean) also averages over the C outputs (1/C)
def loss_scale(lik, C):
    return {"categorical": 1.0, "gaussian": 2.0 / C, "bernoulli": 1.0 / C}[lik]


# curvlinops' empirical Fisher with reduction="mean" is c Σ_n ∇ℓ_n ∇ℓ_nᵀ with c = 1/(N·C)
# for the losses that average over outputs and ℓ_n the per-sample SUM over outputs
# (MSE: Σ_c (z_c − y_c)², gradient 2(z − y)): 4/C times fimlab's for MSELoss, 1/C for
# BCEWithLogitsLoss, 1 for CrossEntropyLoss (c = 1/N)
def ef_scale(lik, C):
    return {"categorical": 1.0, "gaussian": 4.0 / C, "bernoulli": 1.0 / C}[lik]


@pytest.fixture(scope="module")
def curvlinops():
    return pytest.importorskip("curvlinops")


@pytest.mark.parametrize("case", range(len(CASES)))
def test_against_curvlinops_ggn_kfac_ef(case, curvlinops):
    sizes, act, lik = CASES[case]
    net = fl.MLP(sizes, activation=act, likelihood=lik, seed=case)
    model = torch_copy(net)
    loss = LOSS[lik]()
    rng = np.random.default_rng(case)
    N, C = 15, sizes[-1]
    X = rng.normal(size=(N, sizes[0]))
    y = make_targets(lik, N, C, rng)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    data = [(Xt, yt)]
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    eye = torch.eye(P)
    s = loss_scale(lik, C)
    kw = dict(check_deterministic=False)

    b = flt.factor_batch(model, Xt, yt, likelihood=loss, fisher="exact")
    perm = perm_curvlinops(b)
    G = (curvlinops.GGNLinearOperator(model, loss, params, data, **kw) @ eye).numpy()
    F = fl.FisherOperator(b).to_dense()[np.ix_(perm, perm)]
    np.testing.assert_allclose(s * F, G, rtol=1e-10, atol=1e-12 * np.abs(G).max())

    Kc = curvlinops.KFACLinearOperator(model, loss, params, data, fisher_type="type-2",
                                       separate_weight_and_bias=False, **kw)
    Kd = (Kc @ eye).numpy()
    Kf = fl.KFAC(b).to_dense()[np.ix_(perm, perm)]
    np.testing.assert_allclose(s * Kf, Kd, rtol=1e-10, atol=1e-12 * np.abs(Kd).max())

    be = flt.factor_batch(model, Xt, yt, likelihood=loss, fisher="empirical")
    E = (curvlinops.EFLinearOperator(model, loss, params, data, **kw) @ eye).numpy()
    Fe = fl.FisherOperator(be).to_dense()[np.ix_(perm, perm)]
    se = ef_scale(lik, C)
    np.testing.assert_allclose(se * Fe, E, rtol=1e-10, atol=1e-12 * np.abs(E).max())
    Ke = curvlinops.KFACLinearOperator(model, loss, params, data, fisher_type="empirical",
                                       separate_weight_and_bias=False, **kw)
    Ked = (Ke @ eye).numpy()
    Kfe = fl.KFAC(be).to_dense()[np.ix_(perm, perm)]
    np.testing.assert_allclose(se * Kfe, Ked, rtol=1e-10, atol=1e-12 * np.abs(Ked).max())


@pytest.mark.parametrize("case", [0, 2])
def test_mc_kfac_against_curvlinops_in_expectation(case, curvlinops):
    """MC KFAC with many samples: fimlab's and curvlinops' (their own draws) both approach
    the exact-type KFAC, with the same scaling."""
    sizes, act, lik = CASES[case]
    net = fl.MLP(sizes, activation=act, likelihood=lik, seed=case)
    model = torch_copy(net)
    loss = LOSS[lik]()
    rng = np.random.default_rng(case)
    N, C, S = 12, sizes[-1], 3000
    X = rng.normal(size=(N, sizes[0]))
    y = make_targets(lik, N, C, rng)
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    Kc = curvlinops.KFACLinearOperator(
        model, loss, params, [(torch.from_numpy(X), torch.from_numpy(y))], fisher_type="mc",
        mc_samples=S, separate_weight_and_bias=False, check_deterministic=False)
    Kd = (Kc @ torch.eye(P)).numpy()
    b_mc = flt.factor_batch(model, X, likelihood=loss, fisher="mc", mc_samples=S, rng=0)
    b_ex = flt.factor_batch(model, X, likelihood=loss, fisher="exact")
    perm = perm_curvlinops(b_ex)
    s = loss_scale(lik, C)
    K_mc = s * fl.KFAC(b_mc).to_dense()[np.ix_(perm, perm)]
    K_ex = s * fl.KFAC(b_ex).to_dense()[np.ix_(perm, perm)]
    err = lambda A: np.linalg.norm(A - K_ex) / np.linalg.norm(K_ex)  # noqa: E731
    assert err(K_mc) < 0.06 and err(Kd) < 0.06
    assert err(10.0 * K_mc) > 1  # (the check can fail)


# -- θ <-> model -------------------------------------------------------------------------
def test_flatten_unflatten_round_trip():
    torch.manual_seed(0)
    model = TwoBranches().double()
    X = np.random.default_rng(0).normal(size=(5, 4))
    b = flt.factor_batch(model, X, likelihood="gaussian")
    theta = np.random.default_rng(1).normal(size=b.n_params)
    d = flt.unflatten(model, theta)
    assert set(d) == {"a.0.weight", "a.0.bias", "a.2.weight", "b.weight", "b.bias"}
    for k, v in d.items():
        assert v.shape == dict(model.named_parameters())[k].shape and v.dtype == torch.float64
    np.testing.assert_array_equal(flt.flatten(model, d), theta)
    # layer a.0's block is vec([W | b]) column-major
    W = np.column_stack([d["a.0.weight"].numpy(), d["a.0.bias"].numpy()])
    np.testing.assert_array_equal(theta[:b.block_sizes[0]], W.ravel(order="F"))
    np.testing.assert_array_equal(flt.unflatten(model, torch.from_numpy(theta))["b.bias"],
                                  d["b.bias"])
    with pytest.raises(fl.ShapeError, match=r"θ must have shape \(55,\)"):
        flt.unflatten(model, theta[:-1])


def test_flatten_of_grads_is_the_gradient_of_the_mlp():
    net = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=0)
    model = torch_copy(net)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    nn.CrossEntropyLoss()(model(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    np.testing.assert_allclose(flt.flatten(model), net.flatten(net.gradient(X, y)),
                               rtol=1e-12, atol=1e-15)


def test_a_fimlab_step_through_unflatten_equals_the_step_on_the_mlp():
    net = fl.MLP([4, 6, 5, 3], activation="tanh", likelihood="categorical", seed=2)
    model = torch_copy(net)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    lr, lam = 0.3, 1e-2
    # on the MLP
    step_np = fl.KFAC(fl.factor_batch(net, X)).solve(net.flatten(net.gradient(X, y)), lam)
    net.set_flat(net.get_flat() - lr * step_np)
    # on the torch model, in a plain torch loop
    model.zero_grad()
    nn.CrossEntropyLoss()(model(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    b = flt.factor_batch(model, X, likelihood=nn.CrossEntropyLoss())
    step = flt.unflatten(model, fl.KFAC(b).solve(flt.flatten(model), lam))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p -= lr * step[name]
    for W, lin in zip(net.params, [model[0], model[2], model[4]]):
        np.testing.assert_allclose(lin.weight.detach().numpy(), W[:, :-1], rtol=1e-11)
        np.testing.assert_allclose(lin.bias.detach().numpy(), W[:, -1], rtol=1e-11,
                                   atol=1e-14)


# -- data loaders ------------------------------------------------------------------------
def test_data_loader_is_concatenated():
    from torch.utils.data import DataLoader, TensorDataset

    net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    model = torch_copy(net)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(23, 3)), rng.integers(0, 2, 23)
    dl = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), batch_size=5)
    same_batch(flt.factor_batch(model, dl, likelihood="categorical", fisher="empirical"),
               fl.factor_batch(net, X, y, fisher="empirical"))
    with pytest.raises(fl.DenseMemoryError, match="data loader"):
        flt.factor_batch(model, dl, likelihood="categorical", max_bytes=100)
    with pytest.raises(fl.ShapeError, match="leave y=None"):
        flt.factor_batch(model, dl, y, likelihood="categorical")


# -- to="torch": the core on torch tensors ------------------------------------------------
def test_to_torch_keeps_tensors_and_core_agrees():
    net = fl.MLP([4, 6, 5, 3], activation="tanh", likelihood="categorical", seed=3)
    model = torch_copy(net)
    X = np.random.default_rng(3).normal(size=(12, 4))
    bt = flt.factor_batch(model, X, likelihood="categorical", fisher="mc", mc_samples=2,
                          to="torch")
    bn = fl.factor_batch(net, X, fisher="mc", mc_samples=2, rng=None)
    assert all(isinstance(x, torch.Tensor) for x in bt.a + bt.g)
    v = np.random.default_rng(0).normal(size=bn.n_params)
    vt = torch.from_numpy(v)
    Ft, Fn = fl.FisherOperator(bt), fl.FisherOperator(bn)
    out = Ft @ vt
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), Fn @ v, rtol=1e-11)
    Kt, Kn = fl.KFAC(bt), fl.KFAC(bn)
    np.testing.assert_allclose((Kt @ vt).numpy(), Kn @ v, rtol=1e-11)
    np.testing.assert_allclose(Kt.solve(vt, 1e-2).numpy(), Kn.solve(v, 1e-2), rtol=1e-9)
    for blk in (0, None):
        assert fl.relative_frobenius_error(Ft, Kt, block=blk) == pytest.approx(
            fl.relative_frobenius_error(Fn, Kn, block=blk), rel=1e-10)


# -- errors --------------------------------------------------------------------------------
class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.fc(x)))


class WithParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.fc(x) * self.scale


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class Sequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # x: (N, S*3)
        return self.head(self.fc(x.reshape(x.shape[0], -1, 3)).mean(1))


X3 = torch.randn(6, 3, dtype=torch.float64)


@pytest.mark.parametrize("model,match", [
    (WithNorm(), r"'norm.weight' belongs to a LayerNorm.*freeze it.*layers="),
    (WithParameter(), r"'scale' belongs to a WithParameter"),
    (nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(3, 2)),
     r"'0.weight' belongs to a Embedding"),
    # nn.Conv2d and batch norm are supported (tests/test_torch_conv.py)
    (nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv1d(1, 1, 1), nn.Flatten(),
                   nn.Linear(3, 2)), r"belongs to a Conv1d.*supported: nn.Linear and nn.Conv2d"),
])
def test_trainable_parameters_outside_linear_are_refused(model, match):
    with pytest.raises(fl.ShapeError, match=match):
        flt.factor_batch(model.double(), X3, likelihood="categorical")


def test_layers_makes_the_others_fixed():
    model = WithNorm().double().eval()
    b = flt.factor_batch(model, X3, likelihood="categorical", layers=["head"])
    assert b.n_layers == 1 and b.layer_names == ["head"]
    b2 = flt.factor_batch(model, X3, likelihood="categorical", layers=[model.fc, model.head])
    assert b2.layer_names == ["fc", "head"]
    frozen = WithNorm().double()
    frozen.norm.requires_grad_(False)
    assert flt.factor_batch(frozen, X3, likelihood="categorical").n_layers == 2
    with pytest.raises(fl.ShapeError, match="'norm' is a LayerNorm, not an nn.Linear"):
        flt.factor_batch(model, X3, likelihood="categorical", layers=["norm"])
    with pytest.raises(fl.UnknownNameError, match="no module 'nope'"):
        flt.factor_batch(model, X3, likelihood="categorical", layers=["nope"])


def test_weight_sharing_is_refused():
    with pytest.raises(fl.ShapeError, match="'fc' is called more than once"):
        flt.factor_batch(Shared().double(), X3, likelihood="categorical")
    with pytest.raises(fl.ShapeError, match=r"'fc' received inputs of shape \(6, 2, 3\)"):
        flt.factor_batch(Sequence().double(), torch.randn(6, 6), likelihood="categorical")
    b = flt.factor_batch(Shared().double(), X3, likelihood="categorical", layers=["head"])
    assert b.layer_names == ["head"]


@pytest.mark.parametrize("loss,match", [
    (nn.CrossEntropyLoss(weight=torch.ones(2)), "weight"),
    (nn.CrossEntropyLoss(ignore_index=0), "ignore_index=0"),
    (nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing=0.1"),
    (nn.BCEWithLogitsLoss(pos_weight=torch.ones(2)), "pos_weight"),
    (nn.L1Loss(), "does not know the loss L1Loss"),
])
def test_unsupported_loss_options_are_refused(loss, match):
    with pytest.raises(fl.UnknownNameError, match=match):
        flt.factor_batch(nn.Linear(3, 2).double(), X3, likelihood=loss)


def test_train_mode_dropout_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    with pytest.raises(fl.ShapeError, match=r"'1' \(Dropout, p=0.5\) is in train mode.*eval"):
        flt.factor_batch(model, X3, likelihood="categorical")
    assert flt.factor_batch(model.eval(), X3, likelihood="categorical").n_layers == 2


def test_other_input_errors():
    model = nn.Linear(3, 2).double()
    with pytest.raises(fl.UnknownNameError, match="pass likelihood="):
        flt.factor_batch(model, X3)
    with pytest.raises(fl.UnknownNameError, match="Fisher type"):
        flt.factor_batch(model, X3, likelihood="categorical", fisher="kfac")
    with pytest.raises(fl.ShapeError, match="empirical Fisher needs the true targets"):
        flt.factor_batch(model, X3, likelihood="categorical", fisher="empirical")
    with pytest.raises(fl.ShapeError, match=r"targets= must hold .* \(N, S\)"):
        flt.factor_batch(model, X3, likelihood="categorical", fisher="mc",
                         targets=np.zeros((6, 2, 2)))
    with pytest.raises(fl.ShapeError, match="mc_samples must be a positive integer"):
        flt.factor_batch(model, X3, likelihood="categorical", fisher="mc", mc_samples=0)
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        flt.factor_batch(lambda x: x, X3, likelihood="categorical")


def test_import_without_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import fimlab.torch\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'fimlab[torch]'" in out and "download.pytorch.org/whl/cpu" in out


def test_core_import_does_not_import_frameworks():
    code = ("import sys, fimlab, fimlab.compare\n"
            "print(sorted(m for m in ('torch', 'jax', 'flax', 'equinox') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- torch as a third array backend of the linear-algebra core (a representative subset
# of tests/test_xp_core.py, run on CPU torch tensors) --------------------------------------
class TorchBackend:
    name = "torch"

    def __init__(self):
        import array_api_compat

        self.device = torch.device("cpu")
        self.xp = array_api_compat.array_namespace(torch.zeros(1))

    def asarray(self, a, dtype=None):
        t = torch.as_tensor(np.ascontiguousarray(np.asarray(a)))
        return t if dtype is None else t.to(getattr(torch, np.dtype(dtype).name))


CORE_TESTS = ["test_factor_batch_keeps_namespace_and_arrays", "test_factor_batch_methods",
              "test_fisher_operator", "test_fisher_block", "test_kfac", "test_metrics",
              "test_spectral_error"]


@pytest.mark.parametrize("name", CORE_TESTS)
def test_core_on_torch_tensors(name):
    import test_xp_core as core

    with fl.use_backend("numpy"):
        net = fl.MLP([4, 5, 4, 3], activation="tanh", likelihood="categorical", seed=3)
    X = np.random.default_rng(3).normal(size=(10, 4))
    host = fl.factor_batch(net, X, fisher="mc", mc_samples=2, rng=7)
    fn = getattr(core, name)
    if name == "test_spectral_error":
        fn(TorchBackend(), host, 0)
    else:
        fn(TorchBackend(), host)


@pytest.mark.filterwarnings("ignore::fimlab.ConvergenceWarning")
@pytest.mark.parametrize("args", [("KPSVD", {"rank": 2}, "exact"), ("KPSVD", {"rank": 1}, "paper"),
                                  ("KFACCorrected", {}, "exact"), ("Lanczos", {"steps": 2}, "exact")])
def test_kpsvd_family_on_torch_tensors(args):
    import test_xp_core as core

    net = fl.MLP([4, 5, 4, 3], activation="tanh", likelihood="categorical", seed=3)
    host = fl.factor_batch(net, np.random.default_rng(3).normal(size=(10, 4)), fisher="mc",
                           mc_samples=2, rng=7)
    core.test_kpsvd_family(TorchBackend(), host, *args)


def test_two_level_on_torch_tensors():
    import test_xp_core as core

    net = fl.MLP([4, 5, 4, 3], activation="tanh", likelihood="categorical", seed=3)
    host = fl.factor_batch(net, np.random.default_rng(3).normal(size=(10, 4)), fisher="mc",
                           mc_samples=2, rng=7)
    core.test_two_level(TorchBackend(), host, *core.TWO_LEVEL[0])


def test_readme_three_lines():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.findall(r"```py\n(.*?)```", text, re.S)[0]
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    X = torch.randn(20, 4)
    ns = {"torch": torch, "model": model, "X": X}
    exec(code, ns)
    assert isinstance(ns["batch"], fl.FactorBatch) and ns["batch"].n_layers == 2
