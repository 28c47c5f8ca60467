"""The index-based pooling backward, the convolution's GEMM-layout backward, the summed and
per-sample gradient products and the skipped input gradient (issue 18, NumPy layers'
performance): against naive loops over windows, central differences and PyTorch autograd
with copied weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab.models import _pool
from fimlab.models import layers as layers_mod
from fimlab.models.layers import (
    Activation,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Residual,
    Sequential,
)
from fimlab.models.network import Network, cuda_convnet, network_factor_batch


# -- naive references -------------------------------------------------------------------------
def naive_max_pool(x, g, k, s, p):
    """Forward and backward by explicit loops over samples, channels and windows: each
    window's gradient goes to its first maximum (row-major scan with a strict ``>``)."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    N, C, H, W = x.shape
    K = g.shape[1]
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    out = np.empty((N, C, Ho, Wo))
    gin = np.zeros((N, K, C, H, W))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best, at = -np.inf, None
                    for u in range(kh):
                        for v in range(kw):
                            r, q = i * sh + u - ph, j * sw + v - pw
                            val = x[n, c, r, q] if 0 <= r < H and 0 <= q < W else -np.inf
                            if at is None or val > best:
                                best, at = val, (r, q)
                    out[n, c, i, j] = best
                    r, q = at
                    if 0 <= r < H and 0 <= q < W:
                        gin[n, :, c, r, q] += g[n, :, c, i, j]
    return out, gin


def naive_avg_pool_backward(g, in_shape, k, s, p):
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    N, K, C, Ho, Wo = g.shape
    _, H, W = in_shape
    gin = np.zeros((N, K, C, H, W))
    for i in range(Ho):
        for j in range(Wo):
            for u in range(kh):
                for v in range(kw):
                    r, q = i * sh + u - ph, j * sw + v - pw
                    if 0 <= r < H and 0 <= q < W:
                        gin[:, :, :, r, q] += g[:, :, :, i, j] / (kh * kw)
    return gin


def _tied_input(rng, shape, levels=3):
    """Few distinct values (ties in most windows) and whole zero windows (as after ReLU)."""
    x = rng.integers(0, levels, size=shape).astype(float)
    x[..., : shape[-2] // 2, : shape[-1] // 2] = 0.0
    return x


pool_shapes = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda k: st.tuples(st.just(k), st.tuples(st.integers(1, 4), st.integers(1, 4)),
                        st.tuples(st.integers(0, k[0] // 2), st.integers(0, k[1] // 2))))


# -- max pooling ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(ksp=pool_shapes, H=st.integers(3, 8), W=st.integers(3, 8), K=st.integers(1, 3),
       ties=st.booleans(), seed=st.integers(0, 2**16))
def test_max_pool_matches_naive_loops(ksp, H, W, K, ties, seed):
    """Every kernel/stride/padding (overlapping windows, disjoint ones, gaps between them,
    remainders): output and back-propagated vectors equal the naive loops exactly, ties
    included (the first maximum of each window gets the gradient)."""
    k, s, p = ksp
    rng = np.random.default_rng(seed)
    shape = (2, 2, H, W)
    x = _tied_input(rng, shape) if ties else rng.normal(size=shape)
    lay = MaxPool2d(k, s, p)
    out, cache = lay.forward(x)
    g = rng.normal(size=(2, K) + out.shape[1:])
    ref_out, ref_gin = naive_max_pool(x, g, k, s, p)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(lay.backward(cache, g), ref_gin, rtol=1e-14, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(ksp=pool_shapes, H=st.integers(3, 7), W=st.integers(3, 7), seed=st.integers(0, 2**16))
def test_avg_pool_backward_matches_naive_loops(ksp, H, W, seed):
    k, s, p = ksp
    rng = np.random.default_rng(seed)
    lay = AvgPool2d(k, s, p)
    out, cache = lay.forward(rng.normal(size=(2, 3, H, W)))
    g = rng.normal(size=(2, 2) + out.shape[1:])
    np.testing.assert_allclose(lay.backward(cache, g),
                               naive_avg_pool_backward(g, (3, H, W), k, s, p), atol=1e-14)


POOLS = [
    ("disjoint k3", lambda: MaxPool2d(3), (2, 9, 9)),
    ("disjoint remainder", lambda: MaxPool2d(3), (2, 8, 7)),
    ("disjoint rect", lambda: MaxPool2d((2, 3)), (2, 6, 7)),
    ("gaps s>k", lambda: MaxPool2d(2, stride=3), (2, 8, 8)),
    ("overlap k3 s2 p1", lambda: MaxPool2d(3, stride=2, padding=1), (2, 7, 6)),
    ("overlap k3 s1", lambda: MaxPool2d(3, stride=1), (2, 5, 6)),
    ("disjoint padded", lambda: MaxPool2d(2, padding=1), (2, 5, 5)),
    ("avg disjoint", lambda: AvgPool2d(2), (2, 6, 5)),
    ("avg overlap padded", lambda: AvgPool2d(3, stride=2, padding=1), (2, 7, 6)),
]


@pytest.mark.parametrize("case", POOLS, ids=lambda c: c[0])
def test_pool_backward_vs_finite_differences(case):
    """Σ g·(∂out/∂x)dx equals the central difference (no ties: random inputs)."""
    _, make, shape = case
    rng = np.random.default_rng(1)
    lay = make()
    x = rng.normal(size=(3,) + shape)
    out, cache = lay.forward(x)
    g = rng.normal(size=(3, 2) + out.shape[1:])
    gin = lay.backward(cache, g)
    dx = rng.normal(size=x.shape)
    eps = 1e-6
    fd = (lay.forward(x + eps * dx)[0] - lay.forward(x - eps * dx)[0]) / (2 * eps)
    for k in range(2):
        assert np.isclose(np.sum(gin[:, k] * dx), np.sum(g[:, k] * fd), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", POOLS, ids=lambda c: c[0])
def test_pool_backward_vs_torch(case, ties):
    """The vector-Jacobian products of PyTorch's pooling (autograd, one per vector), ties
    included: PyTorch's CPU kernel also sends a window's gradient to its first maximum."""
    torch = pytest.importorskip("torch")
    _, make, shape = case
    rng = np.random.default_rng(2)
    lay = make()
    x = _tied_input(rng, (3,) + shape) if ties else rng.normal(size=(3,) + shape)
    out, cache = lay.forward(x)
    K = 3
    g = rng.normal(size=(3, K) + out.shape[1:])
    gin = lay.backward(cache, g)
    if isinstance(lay, MaxPool2d):
        tl = torch.nn.MaxPool2d(lay.kernel_size, lay.stride, lay.padding)
    else:
        tl = torch.nn.AvgPool2d(lay.kernel_size, lay.stride, lay.padding)
    xt = torch.tensor(x, requires_grad=True)
    yt = tl(xt)
    np.testing.assert_allclose(yt.detach().numpy(), out, rtol=1e-15, atol=1e-15)
    for k in range(K):
        (gt,) = torch.autograd.grad(yt, xt, torch.tensor(g[:, k]), retain_graph=True)
        np.testing.assert_allclose(gin[:, k], gt.numpy(), rtol=1e-14, atol=1e-15)


def test_max_pool_float32_and_noncontiguous_vectors():
    """float32 stays float32 (the bincount path accumulates in float64 and casts back);
    a non-contiguous ``g`` gives the same result as its contiguous copy."""
    rng = np.random.default_rng(3)
    for lay in (MaxPool2d(3, stride=2), MaxPool2d(2)):
        x = rng.normal(size=(2, 3, 7, 7)).astype(np.float32)
        out, cache = lay.forward(x)
        assert out.dtype == np.float32
        g = rng.normal(size=(2, 4) + out.shape[1:]).astype(np.float32)
        gin = lay.backward(cache, g)
        assert gin.dtype == np.float32
        _, ref = naive_max_pool(x.astype(float), g.astype(float), lay.kernel_size,
                                lay.stride, lay.padding)
        np.testing.assert_allclose(gin, ref, rtol=1e-6, atol=1e-6)
        gT = np.swapaxes(np.swapaxes(g, 0, 1).copy(), 0, 1)  # same values, other strides
        np.testing.assert_array_equal(lay.backward(cache, gT), gin)


def test_max_pool_indices_point_at_the_maxima():
    """The cached flat indices address each window's maximum in the padded image."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 7, 8))
    out, where = _pool.max_pool_forward(x, (3, 2), (2, 2), (1, 1))
    xp_ = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    picked = np.take_along_axis(xp_.reshape(2, -1), where, axis=1)
    np.testing.assert_array_equal(picked, out.reshape(2, -1))


# -- convolution backward and gradient products ------------------------------------------------
CONVS = [  # forward by positions (T < d + 1) and by patches (T ≥ d + 1, "many positions")
    ("k3", lambda: Conv2d(2, 3, 3), (2, 6, 6)),
    ("many positions", lambda: Conv2d(1, 2, 2), (1, 7, 6)),
    ("k3 s2 p1", lambda: Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 6)),
    ("rect dil", lambda: Conv2d(2, 2, (2, 3), stride=(1, 2), padding=(1, 0), dilation=2),
     (2, 6, 7)),
]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("case", CONVS, ids=lambda c: c[0])
def test_conv_backward_and_gradients_vs_torch(case, chunked, monkeypatch):
    """Input gradient, per-vector gradient matrices (:meth:`grad`) and their sum
    (:meth:`grad_sum`) against PyTorch autograd with copied weights, one vector at a time;
    ``chunked``: the backward's columns formed one vector at a time (as for large N·K)."""
    torch = pytest.importorskip("torch")
    if chunked:
        monkeypatch.setattr(layers_mod, "_COLS_CHUNK_BYTES", 1)
    _, make, shape = case
    rng = np.random.default_rng(5)
    lay = make()
    lay.init(rng, "float64")
    N, K = 3, 2
    x = rng.normal(size=(N,) + shape)
    out, cache = lay.forward(x)
    g = rng.normal(size=(N, K) + out.shape[1:])
    gin, Gm, Gs = lay.backward(cache, g), lay.grad(cache, g), lay.grad_sum(cache, g)
    m = torch.nn.Conv2d(lay.c_in, lay.c_out, lay.kernel_size, lay.stride, lay.padding,
                        lay.dilation).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor(lay.params[:, :-1]).reshape(m.weight.shape))
        m.bias.copy_(torch.tensor(lay.params[:, -1]))
    total = np.zeros_like(lay.params)
    for n in range(N):
        xt = torch.tensor(x[n:n + 1], requires_grad=True)
        yt = m(xt)
        for k in range(K):
            gx, gw, gb = torch.autograd.grad(yt, (xt, m.weight, m.bias),
                                             torch.tensor(g[n:n + 1, k]), retain_graph=True)
            np.testing.assert_allclose(gin[n, k], gx[0].numpy(), atol=1e-13)
            ref = np.concatenate([gw.reshape(lay.c_out, -1).numpy(), gb.numpy()[:, None]], 1)
            np.testing.assert_allclose(Gm[n, k], ref, atol=1e-13)
            total += ref
    np.testing.assert_allclose(Gs, total, atol=1e-12)


def test_grad_sum_is_the_sum_of_grad_for_every_layer_kind():
    rng = np.random.default_rng(6)
    cases = [(Linear(4, 3), (4,)), (Conv2d(2, 3, 2, stride=2), (2, 5, 4)),
             (BatchNorm(2), (2, 3, 3)), (BatchNorm(4), (4,))]
    for lay, shape in cases:
        lay.init(rng, "float64")
        out, cache = lay.forward(rng.normal(size=(3,) + shape))
        g = rng.normal(size=(3, 2) + out.shape[1:])
        np.testing.assert_allclose(lay.grad_sum(cache, g), lay.grad(cache, g).sum((0, 1)),
                                   rtol=1e-12, atol=1e-13)


# -- the skipped input gradient ---------------------------------------------------------------
def _nets():
    return {
        "conv first": Network([Conv2d(2, 3, 3, padding=1), Activation("relu"), MaxPool2d(2),
                               BatchNorm(3), Flatten(), Linear(12, 3)], (2, 4, 4), seed=0),
        "pool first": Network([MaxPool2d(2, stride=1), Conv2d(2, 2, 2), Activation("tanh"),
                               Flatten(), Linear(8, 3)], (2, 4, 4), seed=1),
        "residual first": Network([Residual(Conv2d(2, 2, 3, padding=1), Activation("tanh")),
                                   AvgPool2d(2), Flatten(), Linear(8, 2)], (2, 4, 4), seed=2),
    }


@pytest.mark.parametrize("name", list(_nets()))
def test_skipping_the_input_gradient_records_the_same_vectors(name):
    """``Sequential.backward(..., input_grad=False)`` returns ``None`` and records the same
    ``(cache, g)`` at every layer with parameters as the full backward; the full backward
    (the default) still returns the input gradient, checked by central differences."""
    net = _nets()[name]
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3,) + net.input_shape)
    z, caches = net._forward(X)
    V = rng.normal(size=(3, 2, z.shape[1]))
    seq = Sequential(*net.layers)
    full, part = {}, {}
    gin = seq.backward(caches, V, full)
    assert seq.backward(caches, V, part, input_grad=False) is None
    assert full.keys() == part.keys() == {id(lay) for lay in net.param_layers}
    for key in full:
        np.testing.assert_array_equal(full[key][1], part[key][1])
    dX = rng.normal(size=X.shape)
    eps = 1e-6
    fd = (net.forward(X + eps * dX) - net.forward(X - eps * dX)) / (2 * eps)
    for k in range(2):
        assert np.isclose(np.sum(gin[:, k] * dX), np.sum(V[:, k] * fd), rtol=1e-7)
    recs = net.backward(caches, V)  # the network's backward skips it
    for lay, (_, g) in zip(net.param_layers, recs):
        np.testing.assert_array_equal(g, full[id(lay)][1])


def test_first_conv_backward_is_not_run(monkeypatch):
    """The network's backward never back-propagates through its first convolution."""
    net = _nets()["conv first"]
    first = net.layers[0]
    calls = []
    orig = Conv2d.backward

    def spy(self, cache, g):
        calls.append(self)
        return orig(self, cache, g)

    monkeypatch.setattr(Conv2d, "backward", spy)
    X = np.random.default_rng(8).normal(size=(2, 2, 4, 4))
    network_factor_batch(net, X)
    net.loss_and_gradient(X, np.array([0, 2]))
    assert first not in calls
    assert Sequential(first).backward([first.forward(X)[1]], np.ones((2, 1, 3, 4, 4))) \
        .shape == (2, 1, 2, 4, 4) and calls == [first]


# -- whole networks -------------------------------------------------------------------------
def _torch_block_grads(model, out, grad_out, torch):
    """PyTorch's gradients as fimlab blocks: ``[W | b]`` (conv, linear), ``[γ | β]``."""
    mods = [m for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d))]
    params = [t for m in mods for t in (m.weight, m.bias)]
    gs = torch.autograd.grad(out, params, grad_out, retain_graph=True)
    blocks = []
    for i, m in enumerate(mods):
        gw, gb = gs[2 * i].numpy(), gs[2 * i + 1].numpy()
        blocks.append(np.stack([gw, gb], 1) if isinstance(m, torch.nn.BatchNorm2d)
                      else np.concatenate([gw.reshape(gw.shape[0], -1), gb[:, None]], 1))
    return blocks


def test_convnet_gradients_vs_torch_with_tied_windows():
    """A cuda-convnet-shaped network whose first convolution has a negative bias (ReLU
    zeros whole 3×3 pooling windows: ties, whose gradient the ReLU then stops, so any
    tie-break gives the same result here; the tie-break itself is tested above): the
    mean-loss gradient (:meth:`grad_sum`) and the per-sample gradient rows (:meth:`grad`)
    against PyTorch autograd with copied weights."""
    torch = pytest.importorskip("torch")
    from fimlab.torch import to_torch

    net = cuda_convnet(input_shape=(1, 26, 26), channels=(3, 4, 4), seed=0)
    W0 = net.param_layers[0].params.copy()
    W0[:, -1] = -0.8
    net.params = [W0] + net.params[1:]
    rng = np.random.default_rng(9)
    X = rng.normal(size=(3, 1, 26, 26))
    h = np.maximum(net.layers[0].forward(X)[0], 0)
    zero_windows = (h.reshape(3, 3, 8, 3, 8, 3).max(axis=(3, 5)) == 0).sum()
    assert zero_windows > 5  # the test has ties
    y = np.array([1, 4, 7])
    loss, grads = net.loss_and_gradient(X, y, train=False)
    model = to_torch(net).eval()
    Xt = torch.tensor(X)
    zt = model(Xt)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    assert np.isclose(loss, lt.item(), rtol=1e-12)
    for G, R in zip(grads, _torch_block_grads(model, lt, None, torch)):
        np.testing.assert_allclose(G, R, rtol=1e-10, atol=1e-13)
    V = rng.normal(size=(3, 2, 10))
    J = net.per_sample_jacobians(X, V)
    for n in range(3):
        zn = model(Xt[n:n + 1])
        for k in range(2):
            blocks = _torch_block_grads(model, zn, torch.tensor(V[n:n + 1, k]), torch)
            row = np.concatenate([B.ravel(order="F") for B in blocks])
            np.testing.assert_allclose(J[n * 2 + k], row, rtol=1e-10, atol=1e-13)


def test_layers_run_on_array_backend_inputs(xp_backend):
    """Inputs in another array namespace are taken to NumPy by the network: the loss
    gradient and the factor batch equal those of the NumPy input."""
    net = Network([Conv2d(1, 2, 3), Activation("relu"), MaxPool2d(3, stride=2),
                   AvgPool2d(2, stride=1), Flatten(), Linear(2, 3)], (1, 8, 8), seed=3)
    rng = np.random.default_rng(10)
    X = rng.normal(size=(3, 1, 8, 8))
    y = np.array([0, 1, 2])
    Xb = xp_backend.asarray(X)
    ref_loss, ref_g = net.loss_and_gradient(X, y)
    loss, g = net.loss_and_gradient(Xb, y)
    assert np.isclose(loss, ref_loss, rtol=1e-14)
    for a, b in zip(g, ref_g):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    b_ref, b = network_factor_batch(net, X), network_factor_batch(net, Xb)
    for a1, a2 in zip(b.g, b_ref.g):
        np.testing.assert_allclose(fl.backend.to_numpy(a1), a2, rtol=1e-13)


def test_in_place_activation_backward_leaves_callers_arrays_alone():
    """Between layers :class:`Sequential` runs activations' backward in place on arrays
    only it holds: the caller's vectors and every recorded ``g`` keep the values of a
    layer-by-layer backward without in-place steps (the last layer here is an activation,
    so the first backward step receives the caller's array itself)."""
    net = Network([Conv2d(2, 3, 3, padding=1), Activation("relu"), MaxPool2d(2),
                   Activation("tanh"), Flatten(), Linear(12, 4), Activation("sigmoid")],
                  (2, 4, 4), likelihood="gaussian", seed=4)
    rng = np.random.default_rng(11)
    X = rng.normal(size=(3, 2, 4, 4))
    _, caches = net._forward(X)
    V = rng.normal(size=(3, 2, 4))
    V0 = V.copy()
    ref, g = {}, V
    for lay, c in zip(reversed(net.layers), reversed(caches)):
        if lay.params is not None:
            ref[id(lay)] = g
        g = lay.backward(c, g)
    recs = net.backward(caches, V)
    np.testing.assert_array_equal(V, V0)
    for lay, (_, gg) in zip(net.param_layers, recs):
        np.testing.assert_array_equal(gg, ref[id(lay)])
    act = Activation("tanh")
    h = rng.normal(size=(2, 3))
    out, c = act.forward(h)
    G = rng.normal(size=(2, 2, 3))
    expect = G * (1 - out**2)[:, None]
    res = act.backward(c, G, inplace=True)
    assert res is G
    np.testing.assert_allclose(G, expect, rtol=1e-15)
