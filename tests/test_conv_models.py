"""Conv / pooling / batch-norm layers and networks: vs naive loops, finite differences and
PyTorch with copied weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab.models.layers import (
    Activation,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Residual,
    fold,
    unfold,
)
from fimlab.models.network import (
    DEEP_BN_MNIST13_WIDTHS,
    Network,
    cuda_convnet,
    deep_bn_fashion64,
    deep_bn_linear,
    deep_bn_mnist13,
    network_factor_batch,
    small_resnet,
)


def naive_unfold(x, k, s, p, d):
    """Patches by explicit loops over positions, channels and kernel offsets."""
    N, C, H, W = x.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    Ho = (H + 2 * p - d * (k - 1) - 1) // s + 1
    Wo = (W + 2 * p - d * (k - 1) - 1) // s + 1
    out = np.zeros((N, Ho * Wo, C * k * k))
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                col = 0
                for c in range(C):
                    for u in range(k):
                        for v in range(k):
                            out[n, i * Wo + j, col] = xp_[n, c, i * s + u * d, j * s + v * d]
                            col += 1
    return out


@settings(max_examples=15)
@given(k=st.integers(1, 3), s=st.integers(1, 2), p=st.integers(0, 2), d=st.integers(1, 2),
       H=st.integers(5, 7), seed=st.integers(0, 2**16))
def test_unfold_matches_loops_and_fold_is_adjoint(k, s, p, d, H, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 2, H, H + 1))
    P = unfold(x, k, s, p, d)
    xs = x[..., :H]  # square input for the naive helper
    np.testing.assert_array_equal(unfold(xs, k, s, p, d), naive_unfold(xs, k, s, p, d))
    c = rng.normal(size=P.shape)
    lhs = np.sum(P * c)
    rhs = np.sum(x * fold(c, x.shape[1:], k, s, p, d))
    assert np.isclose(lhs, rhs, rtol=1e-12)


def _layer_cases():
    return [
        ("conv", lambda: Conv2d(2, 3, 3, stride=2, padding=1, dilation=1), (2, 6, 5)),
        ("conv-dil", lambda: Conv2d(2, 2, (2, 3), stride=(1, 2), padding=(1, 0), dilation=2),
         (2, 6, 7)),
        ("maxpool", lambda: MaxPool2d(3), (2, 7, 6)),
        ("maxpool-overlap", lambda: MaxPool2d(3, stride=2, padding=1), (2, 5, 5)),
        ("avgpool", lambda: AvgPool2d(2, stride=1, padding=1), (2, 4, 5)),
        ("flatten", lambda: Flatten(), (2, 3, 3)),
        ("bn2d", lambda: BatchNorm(2), (2, 3, 3)),
        ("bn1d", lambda: BatchNorm(4), (4,)),
        ("linear", lambda: Linear(4, 3), (4,)),
        ("relu", lambda: Activation("relu"), (3, 2, 2)),
        ("tanh", lambda: Activation("tanh"), (5,)),
        ("sigmoid", lambda: Activation("sigmoid"), (5,)),
        ("residual", lambda: Residual(Conv2d(2, 2, 3, padding=1), Activation("tanh")),
         (2, 4, 4)),
    ]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("case", _layer_cases(), ids=lambda c: c[0])
def test_layer_backward_vs_finite_differences(case, train):
    """Σ_n g_nk · (∂out/∂x) dx  =  the directional derivative of Σ_n g_nk · out(x) (the
    whole batch: batch norm in train mode couples the samples)."""
    name, make, shape = case
    rng = np.random.default_rng(7)
    lay = make()
    for sub in getattr(lay, "layers", [lay]):
        sub.init(rng, "float64")
        if isinstance(sub, BatchNorm):  # non-trivial parameters and running statistics
            sub.params = rng.normal(size=sub.params.shape)
            sub.running_mean = rng.normal(size=sub.C)
            sub.running_var = rng.uniform(0.5, 2.0, size=sub.C)
    N, K = 3, 2
    x = rng.normal(size=(N,) + shape)
    out, cache = lay.forward(x, train)
    g = rng.normal(size=(N, K) + out.shape[1:])
    gin = lay.backward(cache, g)
    dx = rng.normal(size=x.shape)
    eps = 1e-6
    fp = lay.forward(x + eps * dx, train)[0]
    fm = lay.forward(x - eps * dx, train)[0]
    for k in range(K):
        fd = np.sum(g[:, k] * (fp - fm)) / (2 * eps)
        assert np.isclose(np.sum(gin[:, k] * dx), fd, rtol=1e-6, atol=1e-8), (name, k)


def _tiny_cnn(likelihood="categorical", seed=0):
    return Network([Conv2d(2, 3, 3, padding=1), Activation("relu"), MaxPool2d(2),
                    BatchNorm(3), Conv2d(3, 4, 2, stride=2), Activation("tanh"), Flatten(),
                    Linear(4, 3)], (2, 4, 4), likelihood, seed=seed)


def _randomise_bn(net, rng):
    for lay in net.param_layers:
        if isinstance(lay, BatchNorm):
            lay.params = rng.normal(size=lay.params.shape)
            lay.running_mean = rng.normal(size=lay.C) * 0.1
            lay.running_var = rng.uniform(0.5, 2.0, size=lay.C)


def _targets(lik, N, C, rng):
    if lik == "categorical":
        return rng.integers(0, C, size=N)
    if lik == "gaussian":
        return rng.normal(size=(N, C))
    return (rng.random((N, C)) < 0.5).astype(float)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("lik", ["categorical", "gaussian", "bernoulli"])
def test_network_gradient_vs_finite_differences(lik, train):
    rng = np.random.default_rng(3)
    net = _tiny_cnn(lik)
    _randomise_bn(net, rng)
    X = rng.normal(size=(5, 2, 4, 4))
    y = _targets(lik, 5, 3, rng)
    loss, grads = net.loss_and_gradient(X, y, train=train)
    assert np.isclose(loss, net.loss(X, y, train=train))
    gflat = np.concatenate([G.ravel(order="F") for G in grads])
    theta = net.get_flat()
    d = rng.normal(size=theta.shape)
    eps = 1e-6
    net.set_flat(theta + eps * d)
    lp = net.loss(X, y, train=train)
    net.set_flat(theta - eps * d)
    lm = net.loss(X, y, train=train)
    net.set_flat(theta)
    assert np.isclose(gflat @ d, (lp - lm) / (2 * eps), rtol=1e-6, atol=1e-9)


def test_per_sample_jacobians_vs_finite_differences():
    """Eval mode: row (n, k) is ∂(v_nkᵀ z_n)/∂θ; columns checked by central differences
    of the network output."""
    rng = np.random.default_rng(4)
    net = _tiny_cnn("gaussian")
    _randomise_bn(net, rng)
    X = rng.normal(size=(3, 2, 4, 4))
    V = rng.normal(size=(3, 2, 3))
    Jr = net.per_sample_jacobians(X, V)
    theta = net.get_flat()
    eps = 1e-6
    for i in rng.choice(theta.size, size=25, replace=False):
        e = np.zeros_like(theta)
        e[i] = eps
        net.set_flat(theta + e)
        zp = net.forward(X)
        net.set_flat(theta - e)
        zm = net.forward(X)
        net.set_flat(theta)
        dz = (zp - zm) / (2 * eps)  # (N, C)
        fd = np.einsum("nkc,nc->nk", V, dz).reshape(-1)
        np.testing.assert_allclose(Jr[:, i], fd, rtol=1e-6, atol=1e-9)


def test_running_statistics_update_like_torch_rule():
    rng = np.random.default_rng(0)
    bn = BatchNorm(3, momentum=0.2)
    bn.init(None, "float64")
    x = rng.normal(size=(6, 3, 2, 2))
    bn.update_running(x)
    mu = x.mean(axis=(0, 2, 3))
    var_unb = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean, 0.2 * mu)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var_unb)


def test_constructors_shapes():
    net = cuda_convnet(seed=0)
    assert net.shapes == [(32, 28), (32, 2), (32, 289), (32, 2), (64, 129), (10, 65)]
    assert net.forward(np.zeros((2, 3, 32, 32))).shape == (2, 10)
    assert net.kinds() == ["conv", "batchnorm", "conv", "batchnorm", "conv", "linear"]
    m13 = deep_bn_mnist13()
    assert DEEP_BN_MNIST13_WIDTHS == [784, 1000, 900, 800, 700, 600, 500, 400, 300, 200,
                                      100, 50, 20, 10]
    lin = [s for s, k in zip(m13.shapes, m13.kinds()) if k == "linear"]
    assert [s[1] - 1 for s in lin] == DEEP_BN_MNIST13_WIDTHS[:-1]
    assert [s[0] for s in lin] == DEEP_BN_MNIST13_WIDTHS[1:]
    assert m13.kinds().count("batchnorm") == 12
    f64 = deep_bn_fashion64()
    lin = [s for s, k in zip(f64.shapes, f64.kinds()) if k == "linear"]
    assert lin[0] == (10, 785) and lin[-1] == (10, 11) and len(lin) == 64
    assert all(s == (10, 11) for s in lin[1:])
    r = small_resnet(input_shape=(1, 6, 6), channels=3, n_blocks=2)
    assert r.forward(np.ones((2, 1, 6, 6))).shape == (2, 10)
    assert r.kinds().count("conv") == 5


def test_errors():
    with pytest.raises(fl.ShapeError, match="groups"):
        Conv2d(4, 4, 3, groups=2)
    with pytest.raises(fl.ShapeError, match="identity shortcut"):
        Network([Residual(Conv2d(1, 2, 3, padding=1)), Flatten(), Linear(8, 2)], (1, 2, 2))
    with pytest.raises(fl.ShapeError, match="X must have shape"):
        _tiny_cnn().forward(np.zeros((2, 3, 4, 4)))
    with pytest.raises(fl.ShapeError, match="output must be a vector"):
        Network([Conv2d(1, 2, 3)], (1, 4, 4))
    with pytest.raises(fl.UnknownNameError):
        Activation("gelu")
    with pytest.raises(fl.ShapeError, match="too small"):
        Conv2d(1, 1, 5).out_shape((1, 3, 3))
    with pytest.raises(fl.ShapeError):
        deep_bn_linear([5])
    with pytest.raises(fl.NonFiniteError):
        _tiny_cnn().forward(np.full((1, 2, 4, 4), np.nan))
    with pytest.raises(fl.ShapeError, match="empirical"):
        network_factor_batch(_tiny_cnn(), np.zeros((1, 2, 4, 4)), fisher="empirical")


# -- PyTorch with copied weights ---------------------------------------------------------
def _to_torch(net, torch):
    nn = torch.nn

    def conv(lay):
        m = nn.Conv2d(lay.c_in, lay.c_out, lay.kernel_size, stride=lay.stride,
                      padding=lay.padding, dilation=lay.dilation).double()
        W = lay.params
        with torch.no_grad():
            m.weight.copy_(torch.tensor(W[:, :-1]).reshape(m.weight.shape))
            m.bias.copy_(torch.tensor(W[:, -1]))
        return m

    def build(layers):
        mods = []
        for lay in layers:
            if isinstance(lay, Conv2d):
                mods.append(conv(lay))
            elif isinstance(lay, Linear):
                m = nn.Linear(lay.d_in, lay.d_out).double()
                with torch.no_grad():
                    m.weight.copy_(torch.tensor(lay.params[:, :-1]))
                    m.bias.copy_(torch.tensor(lay.params[:, -1]))
                mods.append(m)
            elif isinstance(lay, BatchNorm):
                m = nn.BatchNorm2d(lay.C).double()
                with torch.no_grad():
                    m.weight.copy_(torch.tensor(lay.params[:, 0]))
                    m.bias.copy_(torch.tensor(lay.params[:, 1]))
                    m.running_mean.copy_(torch.tensor(lay.running_mean))
                    m.running_var.copy_(torch.tensor(lay.running_var))
                mods.append(_BN(m))
            elif isinstance(lay, MaxPool2d):
                mods.append(nn.MaxPool2d(lay.kernel_size, lay.stride, lay.padding))
            elif isinstance(lay, AvgPool2d):
                mods.append(nn.AvgPool2d(lay.kernel_size, lay.stride, lay.padding))
            elif isinstance(lay, Flatten):
                mods.append(nn.Flatten())
            elif isinstance(lay, Activation):
                mods.append({"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(),
                             "linear": nn.Identity()}[lay.name])
            elif isinstance(lay, Residual):
                mods.append(_Res(nn.Sequential(*build(lay.layers))))
        return mods

    torch_mod = pytest.importorskip("torch")

    class _BN(torch_mod.nn.Module):  # BatchNorm2d accepts 2-D input only as 1d
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            if x.ndim == 2:
                return torch.nn.functional.batch_norm(
                    x, self.m.running_mean, self.m.running_var, self.m.weight, self.m.bias,
                    self.training, 0.0, self.m.eps)
            return torch.nn.functional.batch_norm(
                x, self.m.running_mean, self.m.running_var, self.m.weight, self.m.bias,
                self.training, 0.0, self.m.eps)

    class _Res(torch_mod.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return x + self.body(x)

    return nn.Sequential(*build(net.layers))


def _torch_flat_grad(model, torch):
    """θ order of fimlab: per layer [W | b] column-major, BN [γ | β]."""
    parts = []
    mods = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear,
                                                         torch.nn.BatchNorm2d))]
    for m in mods:
        if isinstance(m, torch.nn.BatchNorm2d):
            parts.append(torch.cat([m.weight.grad, m.bias.grad]))
        else:
            W = torch.cat([m.weight.grad.reshape(m.weight.shape[0], -1),
                           m.bias.grad[:, None]], dim=1)
            parts.append(W.T.reshape(-1))
    return torch.cat(parts).numpy()


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("which", ["tiny", "convnet", "resnet", "deepbn"])
def test_against_torch(which, train):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    if which == "tiny":
        net, shape = _tiny_cnn(), (2, 4, 4)
    elif which == "convnet":
        net, shape = cuda_convnet(input_shape=(3, 26, 26), channels=(3, 4, 5), seed=1), \
            (3, 26, 26)
    elif which == "resnet":
        net, shape = small_resnet(input_shape=(2, 4, 4), channels=2, n_blocks=1, seed=2), \
            (2, 4, 4)
    else:
        net, shape = deep_bn_linear([6, 5, 4, 3], seed=3), (6,)
    _randomise_bn(net, rng)
    model = _to_torch(net, torch)
    model.train(train)
    X = rng.normal(size=(6,) + shape)
    y = rng.integers(0, net.output_size, size=6)
    Xt = torch.tensor(X)
    zt = model(Xt)
    np.testing.assert_allclose(net.forward(X, train=train), zt.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    loss_t = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    loss_t.backward()
    loss, grads = net.loss_and_gradient(X, y, train=train)
    assert np.isclose(loss, loss_t.item(), rtol=1e-12)
    gflat = np.concatenate([G.ravel(order="F") for G in grads])
    np.testing.assert_allclose(gflat, _torch_flat_grad(model, torch), rtol=1e-9, atol=1e-12)


def test_per_sample_gradients_against_torch_func():
    """Eval mode: empirical factor batch rows = per-sample gradients by torch.func."""
    torch = pytest.importorskip("torch")
    from torch.func import functional_call, grad, vmap

    rng = np.random.default_rng(5)
    net = cuda_convnet(input_shape=(3, 26, 26), channels=(3, 4, 5), seed=1)
    _randomise_bn(net, rng)
    model = _to_torch(net, torch).eval()
    X = rng.normal(size=(4, 3, 26, 26))
    y = rng.integers(0, 10, size=4)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss1(p, x, t):
        z = functional_call(model, p, (x[None],))
        return torch.nn.functional.cross_entropy(z, t[None])

    gs = vmap(grad(loss1), in_dims=(None, 0, 0))(params, torch.tensor(X), torch.tensor(y))
    b = network_factor_batch(net, X, y, fisher="empirical")
    U = b.jacobian_matrix()
    # the factor batch covers the conv and linear blocks, in forward order
    names = [k for k in params if k.endswith("weight") and params[k].ndim > 1]
    cols = []
    for wn in names:
        gw, gb = gs[wn], gs[wn[:-6] + "bias"]
        M = torch.cat([gw.reshape(4, gw.shape[1], -1), gb[:, :, None]], dim=2)
        cols.append(M.transpose(1, 2).reshape(4, -1))
    np.testing.assert_allclose(U, torch.cat(cols, dim=1).numpy(), rtol=1e-9, atol=1e-12)
