"""fimlab.torch.factor_batch(..., batchnorm="include"): batch-norm layers as blocks of their
own (``a`` a column of ones, ``g`` the rows ``[Σ_t δ ∘ x̂ ; Σ_t δ]``), against the NumPy
``network_factor_batch(..., batchnorm="include")`` on the same weights (eval and train
mode), against the exact Fisher of ALL parameters from per-sample Jacobians by
``torch.func`` (``functional_call`` + ``vmap`` + ``jacrev``) and the softmax Hessian, the
θ layout of flatten / unflatten / layer_names, "fixed" unchanged, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from test_torch_conv import _net, _randomise_bn  # noqa: E402  (NumPy nets, random BN)

import fimlab.torch as flt  # noqa: E402
from fimlab import ShapeError, UnknownNameError  # noqa: E402
from fimlab.models.network import (  # noqa: E402
    network_factor_batch,
)

nn = torch.nn


def _randomise_torch_bn(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                m.weight.normal_(generator=gen)
                m.bias.normal_(generator=gen)
                m.running_mean.normal_(generator=gen).mul_(0.1)
                m.running_var.uniform_(0.5, 2.0, generator=gen)


# -- against the NumPy network ----------------------------------------------------------
@pytest.mark.parametrize("which", ["convnet", "deep"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_include_equals_numpy_network(which, train, fisher):
    rng = np.random.default_rng(7)
    net = _net(which)
    _randomise_bn(net, rng)
    X = rng.normal(size=(5, *net.input_shape))
    y = rng.integers(0, 3, size=5)
    model = flt.to_torch(net)
    b0 = network_factor_batch(net, X, y, fisher=fisher, train=train, batchnorm="include")
    b1 = flt.factor_batch(model, torch.tensor(X), torch.tensor(y), likelihood="categorical",
                          fisher=fisher, train=train, batchnorm="include")
    kinds = [k for k in net.kinds() if k in ("linear", "conv", "batchnorm")]
    assert len(b1.a) == len(b0.a) == len(kinds)
    for k, a0, a1, g0, g1 in zip(kinds, b0.a, b1.a, b0.g, b1.g):
        assert a1.shape == a0.shape and g1.shape == g0.shape
        np.testing.assert_allclose(a1, a0, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-12)
        if k == "batchnorm":
            assert a1.shape[1] == 1 and np.all(a1 == 1.0)
    # the layer names follow the modules, treated layers and batch norm interleaved
    mods = dict(model.named_modules())
    assert [type(mods[n]).__name__[:4] for n in b1.layer_names] == [
        {"linear": "Line", "conv": "Conv", "batchnorm": "Batc"}[k] for k in kinds]
    assert flt.layer_names(model, batchnorm="include") == b1.layer_names
    # the modes and running statistics are restored after train=True
    assert not any(m.training for m in model.modules())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            assert m.num_batches_tracked.item() == 0


# -- against torch.func per-sample Jacobians of all parameters --------------------------
class _BN1d(nn.Module):
    """Registration order differs from call order; an affine=False batch norm (no block)."""

    def __init__(self):
        super().__init__()
        self.fc2 = nn.Linear(5, 3)
        self.bn = nn.BatchNorm1d(5)
        self.fc1 = nn.Linear(4, 5)
        self.plain = nn.BatchNorm1d(4, affine=False)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(self.plain(x)))))


class _BN2d(nn.Module):
    """Conv → BatchNorm2d → ReLU → BatchNorm1d on (N, C, L) → Linear without bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn2 = nn.BatchNorm2d(3)
        self.bn1 = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3 * 16, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.bn2(self.conv(x)))
        h = self.bn1(h.reshape(h.shape[0], 3, -1))
        return self.fc(torch.flatten(h, 1))


def _exact_fisher_torch_func(model, X, batchnorm="include"):
    """(1/N) Σ_n J_nᵀ H_n J_n of all parameters: J_n by functional_call + vmap + jacrev,
    H_n = diag(p_n) − p_n p_nᵀ of the softmax, columns in fimlab's θ order (flatten)."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def z1(p, x):
        return functional_call(model, p, (x[None],))[0]

    J = vmap(jacrev(z1), in_dims=(None, 0))(params, X)  # {name: (N, C, *shape)}
    N, C = X.shape[0], model(X).shape[1]
    rows = np.stack([np.stack([flt.flatten(model, {k: v[n, c] for k, v in J.items()},
                                           batchnorm=batchnorm) for c in range(C)])
                     for n in range(N)])  # (N, C, P)
    p = torch.softmax(model(X), dim=1).detach().numpy()
    H = np.stack([np.diag(pn) - np.outer(pn, pn) for pn in p])
    return np.einsum("ncp,ncd,ndq->pq", rows, H, rows) / N


class _BN1dSeq(nn.Module):
    """BatchNorm1d on (N, C, L) without a convolution (the vmapped backward, 4-D vectors)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(2)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        h = self.bn(self.fc1(x).reshape(x.shape[0], 2, 3))
        return self.fc2(torch.tanh(torch.flatten(h, 1)))


@pytest.mark.parametrize("cls,shape", [(_BN1d, (4,)), (_BN2d, (2, 6, 6)),
                                       (_BN1dSeq, (4,))])
def test_include_fisher_equals_torch_func_fisher_of_all_parameters(cls, shape):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = cls().double().eval()
    _randomise_torch_bn(model, gen)
    X = torch.randn(6, *shape, dtype=torch.float64, generator=gen)
    b = flt.factor_batch(model, X, likelihood="categorical", batchnorm="include")
    n_all = sum(p.numel() for p in model.parameters())
    assert b.n_params == n_all  # every parameter is in the batch
    U = b.jacobian_matrix()
    F_batch = U.T @ U / X.shape[0]
    F_ref = _exact_fisher_torch_func(model, X)
    assert np.abs(F_ref).max() > 1e-3
    np.testing.assert_allclose(F_batch, F_ref, rtol=1e-9, atol=1e-12)
    # the fixed batch is the sub-block without the batch-norm entries
    bf = flt.factor_batch(model, X, likelihood="categorical")
    Uf = bf.jacobian_matrix()
    names = b.layer_names
    keep = np.concatenate([np.arange(b.offsets[i], b.offsets[i + 1])
                           for i, n in enumerate(names) if n in bf.layer_names])
    np.testing.assert_allclose(Uf.T @ Uf / X.shape[0], F_ref[np.ix_(keep, keep)],
                               rtol=1e-9, atol=1e-12)


def test_call_order_and_blocks_of_a_custom_forward():
    torch.manual_seed(0)
    model = _BN1d().double().eval()
    X = torch.randn(4, 4, dtype=torch.float64)
    # before any factor batch: registration order (the affine=False module has no block)
    assert flt.layer_names(model, batchnorm="include") == ["fc2", "bn", "fc1"]
    b = flt.factor_batch(model, X, likelihood="categorical", batchnorm="include")
    assert b.layer_names == ["fc1", "bn", "fc2"]
    assert [tuple(a.shape) for a in b.a] == [(4, 5), (4, 1), (4, 6)]
    assert [tuple(g.shape) for g in b.g] == [(4, 3, 5), (4, 3, 10), (4, 3, 3)]
    assert flt.layer_names(model, batchnorm="include") == ["fc1", "bn", "fc2"]
    assert flt.layer_names(model) == ["fc1", "fc2"]  # the fixed order follows


def test_layers_with_include_treats_the_named_layers_and_every_batch_norm():
    torch.manual_seed(1)
    model = _BN1d().double().eval()
    X = torch.randn(4, 4, dtype=torch.float64)
    b = flt.factor_batch(model, X, likelihood="categorical", layers=["fc1"],
                         batchnorm="include")
    assert b.layer_names == ["fc1", "bn"]
    assert flt.layer_names(model, layers=["fc1"], batchnorm="include") == ["fc1", "bn"]
    p = dict(model.named_parameters())
    theta = flt.flatten(model, p, layers=["fc1"], batchnorm="include")
    assert theta.shape == (b.n_params,) == (35,)
    np.testing.assert_array_equal(theta[25:], np.concatenate(
        [p["bn.weight"].detach().numpy(), p["bn.bias"].detach().numpy()]))


# -- θ layout ---------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_flatten_unflatten_round_trip_with_include(seed):
    torch.manual_seed(0)
    model = _BN2d().double()
    theta = np.random.default_rng(seed).normal(size=sum(p.numel()
                                                        for p in model.parameters()))
    d = flt.unflatten(model, theta, batchnorm="include")
    assert set(d) == {n for n, _ in model.named_parameters()}
    for n, p in model.named_parameters():
        assert d[n].shape == p.shape and d[n].dtype == p.dtype
    np.testing.assert_array_equal(flt.flatten(model, d, batchnorm="include"), theta)


def test_flatten_order_is_gamma_then_beta_in_call_order():
    torch.manual_seed(0)
    model = _BN1d().double().eval()
    X = torch.randn(4, 4, dtype=torch.float64)
    flt.factor_batch(model, X, likelihood="categorical", batchnorm="include")
    p = dict(model.named_parameters())
    expect = np.concatenate([
        np.column_stack([p["fc1.weight"].detach().numpy(),
                         p["fc1.bias"].detach().numpy()]).ravel(order="F"),
        p["bn.weight"].detach().numpy(), p["bn.bias"].detach().numpy(),
        np.column_stack([p["fc2.weight"].detach().numpy(),
                         p["fc2.bias"].detach().numpy()]).ravel(order="F"),
    ])
    np.testing.assert_array_equal(flt.flatten(model, p, batchnorm="include"), expect)
    # fixed: without the batch-norm entries
    np.testing.assert_array_equal(flt.flatten(model, p),
                                  np.concatenate([expect[:25], expect[35:]]))


def test_fixed_is_unchanged_and_frozen_bn_has_no_block():
    rng = np.random.default_rng(1)
    net = _net("convnet")
    _randomise_bn(net, rng)
    X = rng.normal(size=(3, *net.input_shape))
    model = flt.to_torch(net)
    b_def = flt.factor_batch(model, torch.tensor(X), likelihood="categorical")
    b_fix = flt.factor_batch(model, torch.tensor(X), likelihood="categorical",
                             batchnorm="fixed")
    b_inc = flt.factor_batch(model, torch.tensor(X), likelihood="categorical",
                             batchnorm="include")
    b_np = network_factor_batch(net, X)
    assert b_def.layer_names == b_fix.layer_names == ["0", "4", "8", "11"]
    for x0, x1, x2 in zip(b_def.a + b_def.g, b_fix.a + b_fix.g, b_np.a + b_np.g):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_allclose(x0, x2, rtol=1e-10, atol=1e-12)
    # the include batch's treated blocks are the fixed batch's
    sel = [i for i, n in enumerate(b_inc.layer_names) if n in b_fix.layer_names]
    for i, j in zip(sel, range(4)):
        np.testing.assert_allclose(b_inc.a[i], b_fix.a[j], rtol=1e-14, atol=0)
        np.testing.assert_allclose(b_inc.g[i], b_fix.g[j], rtol=1e-12, atol=1e-15)
    # a frozen batch-norm module has no block
    for p in model[3].parameters():
        p.requires_grad_(False)
    b = flt.factor_batch(model, torch.tensor(X), likelihood="categorical",
                         batchnorm="include")
    assert b.layer_names == ["0", "4", "7", "8", "11"]
    assert flt.flatten(model, dict(model.named_parameters()),
                       batchnorm="include").shape == (b.n_params,)


# -- errors -----------------------------------------------------------------------------
def test_errors():
    torch.manual_seed(0)
    model = _BN1d().double().eval()
    X = torch.randn(4, 4, dtype=torch.float64)
    for call in (
        lambda: flt.factor_batch(model, X, likelihood="categorical", batchnorm="all"),
        lambda: flt.flatten(model, dict(model.named_parameters()), batchnorm=True),
        lambda: flt.unflatten(model, np.zeros(53), batchnorm="yes"),
        lambda: flt.layer_names(model, batchnorm="Include"),
    ):
        with pytest.raises(UnknownNameError, match="batchnorm"):
            call()
    n_all = sum(p.numel() for p in model.parameters())
    with pytest.raises(ShapeError, match="θ must have shape"):
        flt.unflatten(model, np.zeros(n_all - 1), batchnorm="include")
    bad = dict(model.named_parameters())
    bad["bn.weight"] = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"bn\.weight: expected shape \(5,\)"):
        flt.flatten(model, bad, batchnorm="include")
    model.bn.bias.requires_grad_(False)  # γ trainable, β frozen: not one block
    with pytest.raises(ShapeError, match="trainable and a frozen"):
        flt.factor_batch(model, X, likelihood="categorical", batchnorm="include")
    model.bn.bias.requires_grad_(True)
    model.train()  # batch statistics without train=True
    with pytest.raises(ShapeError, match="train mode"):
        flt.factor_batch(model, X, likelihood="categorical", batchnorm="include")
