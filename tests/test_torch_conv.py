"""fimlab.torch on convolution and batch-norm networks: the factor batch of a PyTorch CNN
against the NumPy Network with the same weights, against per-sample gradients by
``torch.func.vmap(grad)``, KFC against curvlinops' KFAC ("expand"), the Fisher product
against curvlinops' GGN product, and the errors for what is not supported."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import fimlab as fl  # noqa: E402
import fimlab.torch as flt  # noqa: E402
from fimlab.models.layers import (  # noqa: E402
    Activation,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
)
from fimlab.models.network import (  # noqa: E402
    Network,
    cuda_convnet,
    deep_bn_linear,
    network_factor_batch,
    small_resnet,
)

nn = torch.nn


def _randomise_bn(net, rng):
    for lay in net.param_layers:
        if isinstance(lay, BatchNorm):
            lay.params = rng.normal(size=lay.params.shape)
            lay.running_mean = rng.normal(size=lay.C) * 0.1
            lay.running_var = rng.uniform(0.5, 2.0, size=lay.C)


def _net(which):
    if which == "convnet":
        return cuda_convnet(input_shape=(3, 26, 26), channels=(3, 4, 5), seed=1)
    if which == "resnet":
        return small_resnet(input_shape=(2, 6, 6), channels=3, n_blocks=1, seed=2)
    return deep_bn_linear([6, 5, 4, 3], seed=3)


def _targets(lik, N, C, rng):
    if lik == "categorical":
        return rng.integers(0, C, size=N)
    if lik == "gaussian":
        return rng.normal(size=(N, C))
    return (rng.random((N, C)) < 0.5).astype(float)


def _assert_same_batch(b, ref, rtol=1e-10, atol=1e-12):
    assert b.n_layers == ref.n_layers
    for x, y in zip(b.a + b.g, ref.a + ref.g):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# -- the same factor batch as the NumPy network -------------------------------------------
@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("which", ["convnet", "resnet", "deepbn"])
def test_same_factor_batch_as_the_numpy_network(which, fisher):
    rng = np.random.default_rng(11)
    net = _net(which)
    _randomise_bn(net, rng)
    model = flt.to_torch(net)
    X = rng.normal(size=(5,) + net.input_shape)
    y = rng.integers(0, net.output_size, size=5)
    np.testing.assert_allclose(model(torch.tensor(X)).detach().numpy(), net.forward(X),
                               rtol=1e-12, atol=1e-12)
    ref = network_factor_batch(net, X, y, fisher=fisher, mc_samples=3, rng=7)
    b = flt.factor_batch(model, X, y, likelihood="categorical", fisher=fisher, mc_samples=3,
                         rng=7)
    _assert_same_batch(b, ref)
    assert b.positional == ref.positional
    kinds = [k for k in net.kinds() if k != "batchnorm"]
    assert [isinstance(m, nn.Conv2d) for m in
            (dict(model.named_modules())[n] for n in b.layer_names)] == \
        [k == "conv" for k in kinds]


def test_mc_with_the_same_drawn_targets():
    """MC: targets drawn once (flt.sample_targets) give the same batch as the NumPy
    network drawing them from the same generator."""
    rng = np.random.default_rng(3)
    net = _net("convnet")
    _randomise_bn(net, rng)
    model = flt.to_torch(net)
    X = rng.normal(size=(4,) + net.input_shape)
    z = model(torch.tensor(X))
    t = flt.sample_targets(z, "categorical", mc_samples=2, rng=np.random.default_rng(5))
    b = flt.factor_batch(model, X, likelihood="categorical", fisher="mc", targets=t)
    ref = network_factor_batch(net, X, fisher="mc", mc_samples=2,
                               rng=np.random.default_rng(5))
    _assert_same_batch(b, ref)


@pytest.mark.parametrize("which", ["convnet", "resnet", "deepbn"])
def test_train_mode_batch_statistics_like_the_numpy_network(which):
    """train=True: batch statistics, the K vector sets back-propagated through them as the
    NumPy network's train-mode batch; the model's modes and running statistics are left
    as they were."""
    rng = np.random.default_rng(4)
    net = _net(which)
    _randomise_bn(net, rng)
    model = flt.to_torch(net)
    X = rng.normal(size=(6,) + net.input_shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = network_factor_batch(net, X, train=True)
    b = flt.factor_batch(model, X, likelihood="categorical", train=True)
    _assert_same_batch(b, ref, rtol=1e-9, atol=1e-11)
    assert not any(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # and the eval-mode batch differs (the option is not a no-op)
    ev = flt.factor_batch(model, X, likelihood="categorical")
    assert not np.allclose(ev.g[0], b.g[0])
    # a model in train mode: refused without train=True, accepted with it, mode kept
    model.train()
    with pytest.raises(fl.ShapeError, match=r"is in train mode.*model.eval\(\).*train=True"):
        flt.factor_batch(model, X, likelihood="categorical")
    b2 = flt.factor_batch(model, X, likelihood="categorical", train=True)
    _assert_same_batch(b2, ref, rtol=1e-9, atol=1e-11)
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 3), s=st.integers(1, 2), p=st.integers(0, 2), d=st.integers(1, 2),
       pool=st.sampled_from(["max", "avg", "none"]), seed=st.integers(0, 2**16))
def test_conv_hyperparameters_property(k, s, p, d, pool, seed):
    """Any stride, padding, dilation (and pooling after): the torch batch equals the
    NumPy network's on copied weights."""
    rng = np.random.default_rng(seed)
    H = 7
    layers = [Conv2d(2, 3, k, stride=s, padding=p, dilation=d), Activation("tanh")]
    shape = layers[0].out_shape((2, H, H))
    if pool != "none" and min(shape[1:]) >= 2:
        layers.append(MaxPool2d(2) if pool == "max" else AvgPool2d(2, padding=1))
        shape = layers[-1].out_shape(shape)
    layers += [BatchNorm(3), Flatten(), Linear(int(np.prod(shape)), 4)]
    net = Network(layers, (2, H, H), "categorical", seed=seed % 1000)
    _randomise_bn(net, rng)
    X = rng.normal(size=(3, 2, H, H))
    ref = network_factor_batch(net, X)
    b = flt.factor_batch(flt.to_torch(net), X, likelihood="categorical")
    _assert_same_batch(b, ref)


# -- against torch.func per-sample gradients ------------------------------------------------
class _Odd(nn.Module):
    """Convolutions the NumPy layers do not have: 'same' padding with an even kernel,
    reflect padding, no bias; a residual branch; batch norm; average pooling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, (2, 3), padding="same", dilation=(1, 2))
        self.bn = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect", bias=False)
        self.c3 = nn.Conv2d(3, 4, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = h + torch.tanh(self.c2(h))
        return self.fc(torch.flatten(self.pool(self.c3(h)), 1))


def _per_sample_rows(model, X, y, loss):
    """Per-sample gradients of the per-sample loss by torch.func.vmap(grad), as fimlab θ
    rows (flatten of each sample's gradients)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss1(p, x, t):
        return loss(functional_call(model, p, (x[None],)), t[None])

    gs = vmap(grad(loss1), in_dims=(None, 0, 0))(params, X, y)
    return np.stack([flt.flatten(model, {k: v[n] for k, v in gs.items()})
                     for n in range(X.shape[0])])


def _randomise_torch_bn(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.normal_(generator=gen)
                m.bias.normal_(generator=gen)
                m.running_mean.normal_(generator=gen).mul_(0.1)
                m.running_var.uniform_(0.5, 2.0, generator=gen)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_empirical_rows_are_torch_func_per_sample_gradients():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = _Odd().double().eval()
    _randomise_torch_bn(model, gen)
    X = torch.randn(5, 2, 6, 6, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (5,), generator=gen)
    b = flt.factor_batch(model, X, y, likelihood=nn.CrossEntropyLoss(), fisher="empirical")
    assert b.layer_names == ["c1", "c2", "c3", "fc"]
    assert [tuple(a.shape) for a in b.a] == [(5, 36, 13), (5, 36, 27), (5, 4, 28), (5, 5)]
    ref = _per_sample_rows(model, X, y, nn.CrossEntropyLoss(reduction="sum"))
    np.testing.assert_allclose(b.jacobian_matrix(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("which", ["convnet", "resnet"])
def test_numpy_network_rows_are_torch_func_per_sample_gradients(which):
    rng = np.random.default_rng(2)
    net = _net(which)
    _randomise_bn(net, rng)
    model = flt.to_torch(net)
    X = rng.normal(size=(4,) + net.input_shape)
    y = rng.integers(0, net.output_size, size=4)
    b = flt.factor_batch(model, X, y, likelihood="categorical", fisher="empirical")
    ref = _per_sample_rows(model, torch.tensor(X), torch.tensor(y),
                           nn.CrossEntropyLoss(reduction="sum"))
    np.testing.assert_allclose(b.jacobian_matrix(), ref, rtol=1e-9, atol=1e-12)


# -- against curvlinops ----------------------------------------------------------------------
def _torch_order(model, b):
    """Index map: θ in PyTorch's parameter order (each weight flattened row-major, then its
    bias) = θ_fimlab[perm] (fimlab: column-major vec([W | b]) per layer)."""
    named = dict(model.named_modules())
    perm, o = [], 0
    for n in b.layer_names:
        m = named[n]
        r, c = m.weight.shape[0], m.weight[0].numel()
        cols = c + (m.bias is not None)
        idx = np.arange(r * cols).reshape((r, cols), order="F") + o
        perm += [idx[:, :c].ravel(), *([idx[:, c]] if m.bias is not None else [])]
        o += r * cols
    return np.concatenate(perm)


def _treated_params(model, b):
    named = dict(model.named_modules())
    return [p for n in b.layer_names for p in named[n].parameters(recurse=False)]


def _cnn_with_bn():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(3),
        nn.Conv2d(3, 4, 2, stride=1, dilation=2), nn.Tanh(), nn.Flatten(),
        nn.Linear(16, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double().eval()
    _randomise_torch_bn(model, gen)
    X = torch.randn(6, 2, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    return model, X, y


def test_kfc_from_the_torch_batch_equals_curvlinops_kfac_expand():
    curvlinops = pytest.importorskip("curvlinops")
    model, X, y = _cnn_with_bn()
    b = flt.factor_batch(model, X, likelihood=nn.CrossEntropyLoss())
    assert b.positional == [True, True, False, False]
    params = _treated_params(model, b)  # batch-norm parameters held fixed, as fimlab
    op = curvlinops.KFACLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(X, y)], fisher_type="type-2",
        kfac_approx="expand", separate_weight_and_bias=False, check_deterministic=False)
    P = b.n_params
    D_t = (op @ torch.eye(P, dtype=torch.float64)).detach().numpy()
    D_f = fl.KFAC(b).to_dense()
    perm = _torch_order(model, b)
    np.testing.assert_allclose(D_f[np.ix_(perm, perm)], D_t, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("loss,scale", [(nn.CrossEntropyLoss(), 1.0),
                                        (nn.MSELoss(), 2.0 / 3)])
def test_fisher_product_equals_curvlinops_ggn_product(loss, scale):
    """The exact Fisher is the GGN for these likelihoods; PyTorch's mean MSE is 2/C times
    fimlab's Gaussian (see fimlab.torch.resolve_likelihood)."""
    curvlinops = pytest.importorskip("curvlinops")
    model, X, y = _cnn_with_bn()
    if isinstance(loss, nn.MSELoss):
        y = torch.randn(X.shape[0], 3, dtype=torch.float64)
    b = flt.factor_batch(model, X, likelihood=loss)
    params = _treated_params(model, b)
    G = curvlinops.GGNLinearOperator(model, loss, params, [(X, y)],
                                     check_deterministic=False)
    rng = np.random.default_rng(0)
    V = rng.normal(size=(b.n_params, 3))
    perm = _torch_order(model, b)
    got = (fl.FisherOperator(b) @ V)[perm]
    ref = (G @ torch.tensor(V[perm])).detach().numpy()
    np.testing.assert_allclose(scale * got, ref, rtol=1e-9, atol=1e-12)


# -- θ <-> parameters ------------------------------------------------------------------------
def test_flatten_unflatten_round_trip_with_convolutions():
    model, X, y = _cnn_with_bn()
    b = flt.factor_batch(model, X, likelihood="categorical")
    theta = np.random.default_rng(0).normal(size=b.n_params)
    d = flt.unflatten(model, theta)
    assert set(d) == {f"{n}.{k}" for n in b.layer_names for k in ("weight", "bias")}
    assert d["0.weight"].shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(flt.flatten(model, d), theta)
    # the block layout: vec([weight.reshape(c_out, -1) | bias]), column-major
    W = np.concatenate([d["0.weight"].reshape(3, -1).numpy(), d["0.bias"][:, None].numpy()],
                       axis=1)
    np.testing.assert_array_equal(theta[:W.size], W.ravel(order="F"))


# -- errors --------------------------------------------------------------------------------
X4 = torch.randn(3, 2, 5, 5, dtype=torch.float64)


@pytest.mark.parametrize("model,match", [
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(36, 2)),
     r"nn.Conv2d '0' has groups=2.*supported: nn.Linear and nn.Conv2d"),
    (nn.Sequential(nn.Conv2d(2, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(), nn.Linear(18, 2)),
     r"'1.weight' belongs to a GroupNorm.*supported: nn.Linear and nn.Conv2d.*BatchNorm"),
    (nn.Sequential(nn.ConvTranspose2d(2, 2, 2), nn.Flatten(), nn.Linear(72, 2)),
     r"'0.weight' belongs to a ConvTranspose2d.*supported"),
    (nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2, track_running_stats=False),
                   nn.Flatten(), nn.Linear(18, 2)),
     r"'1' \(BatchNorm2d\) has no running statistics.*train=True"),
])
def test_unsupported_modules_are_refused_with_a_clear_message(model, match):
    with pytest.raises(fl.ShapeError, match=match):
        flt.factor_batch(model.double().eval(), X4, likelihood="categorical")


class _TwiceConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(50, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.c(self.c(x)), 1))


class _Unbatched(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(50, 2)

    def forward(self, x):  # one unbatched image (C, H, W) through the convolution
        return self.fc(self.c(x[0]).reshape(1, -1).expand(x.shape[0], -1))


def test_conv_call_errors_and_layers_selection():
    with pytest.raises(fl.ShapeError, match="'c' is called more than once"):
        flt.factor_batch(_TwiceConv().double(), X4, likelihood="categorical")
    with pytest.raises(fl.ShapeError, match=r"Conv2d 'c' received inputs of shape "
                                            r"\(2, 5, 5\), not \(N, C, H, W\)"):
        flt.factor_batch(_Unbatched().double(), X4, likelihood="categorical")
    b = flt.factor_batch(_TwiceConv().double(), X4, likelihood="categorical", layers=["fc"])
    assert b.layer_names == ["fc"]
    model, X, _ = _cnn_with_bn()
    b = flt.factor_batch(model, X, likelihood="categorical", layers=["4", model[0]])
    assert b.layer_names == ["0", "4"] and b.positional == [True, True]
    with pytest.raises(fl.ShapeError, match=r"'3' is a BatchNorm2d, not an nn.Linear or "
                                            r"nn.Conv2d; supported"):
        flt.factor_batch(model, X, likelihood="categorical", layers=["3"])


def test_to_torch_refuses_other_objects():
    with pytest.raises(TypeError, match="needs a fimlab Network"):
        flt.to_torch(fl.MLP([3, 2]))
