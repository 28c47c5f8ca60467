"""Batch-norm scales and shifts as blocks of the factor batch
(``network_factor_batch(..., batchnorm="include")``): each block's rows against central
differences of the network's own forward pass (eval mode: per sample; train mode: the
sum over the coupled samples), so the batch's Fisher is the Fisher of all of θ in θ's
order; and every approximation is exact on those blocks (``a`` is a column of ones)."""

from __future__ import annotations

import numpy as np
import pytest

import fimlab as fl
from fimlab.models.network import (
    cuda_convnet,
    deep_bn_linear,
    network_factor_batch,
    small_resnet,
)


def _nets():
    rng = np.random.default_rng(3)
    return {
        "deep-bn": (deep_bn_linear([6, 5, 4, 3], seed=1), rng.normal(size=(6, 6))),
        "cuda-convnet": (cuda_convnet(input_shape=(2, 26, 26), channels=(3, 3, 4), seed=1),
                         rng.normal(size=(4, 2, 26, 26))),
        "resnet": (small_resnet(input_shape=(1, 8, 8), channels=2, n_blocks=1, seed=1),
                   rng.normal(size=(4, 1, 8, 8))),
    }


def _randomise_bn(net, seed=0):
    """Non-trivial scales, shifts and running statistics (the init is γ = 1, β = 0);
    ``seed`` an int or a Generator (then its draws continue from here)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    theta = net.get_flat()
    net.set_flat(theta + 0.3 * rng.standard_normal(theta.shape))
    for lay in net.param_layers:
        if lay.kind == "batchnorm":
            lay.running_mean = 0.2 * rng.standard_normal(lay.running_mean.shape)
            lay.running_var = 0.5 + rng.random(lay.running_var.shape)
    return net


def _fd_rows(net, X, V, train, h=1e-6):
    """Rows ∂(v_nkᵀ z_n)/∂θ by central differences (``(N, K, P)``; in train mode the
    outputs depend on every sample through the batch statistics)."""
    theta = net.get_flat().copy()
    N, K = V.shape[:2]
    out = np.zeros((N, K, theta.size))
    for p in range(theta.size):
        vals = []
        for s in (1.0, -1.0):
            t = theta.copy()
            t[p] += s * h
            net.set_flat(t)
            vals.append(np.einsum("nkc,nc->nk", V, net.forward(X, train=train)))
        out[:, :, p] = (vals[0] - vals[1]) / (2 * h)
    net.set_flat(theta)
    return out


@pytest.mark.parametrize("name", ["deep-bn", "cuda-convnet", "resnet"])
@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_eval_mode_fisher_of_all_parameters_equals_finite_differences(name, fisher):
    net, X = _nets()[name]
    net = _randomise_bn(net).eval()
    y = np.arange(X.shape[0]) % 3
    b = network_factor_batch(net, X, y, fisher=fisher, rng=5, batchnorm="include")
    kinds = [lay.kind for lay in net.param_layers]
    assert b.n_layers == len(kinds) and sum(b.d_a[l] * b.d_g[l] for l in range(b.n_layers)) \
        == net.n_params
    for l, k in enumerate(kinds):
        if k == "batchnorm":
            assert b.a[l].shape == (X.shape[0], 1) and np.all(b.a[l] == 1)
    # the same back-propagated vectors, from the batch without batch-norm blocks' twin
    V = _vectors(net, X, y, fisher)
    rows = _fd_rows(net, X, V, train=False)
    N, K = V.shape[:2]
    R = rows.reshape(N * K, -1)
    F_fd = R.T @ R / N
    F = fl.FisherOperator(b).to_dense()
    np.testing.assert_allclose(F, F_fd, rtol=1e-6, atol=1e-8 * np.abs(F_fd).max())


def _vectors(net, X, y, fisher):
    from fimlab.models.network import _output_vectors

    z = net.forward(X, train=False)
    return _output_vectors(net, z, y, fisher, 1, 5)


@pytest.mark.parametrize("name", ["deep-bn", "cuda-convnet", "resnet"])
def test_train_mode_rows_sum_to_the_gradient_of_the_coupled_function(name):
    """In train mode the samples are coupled; the rows of a batch-norm block summed over
    the samples are the gradient of ``Σ_n v_nkᵀ z_n(θ)`` with batch statistics."""
    net, X = _nets()[name]
    net = _randomise_bn(net, 1).train()
    b = network_factor_batch(net, X, fisher="exact", train=True, batchnorm="include")
    z = net.forward(X, train=True)
    V = net.likelihood.sqrt_fisher(z)
    fd = _fd_rows(net, X, V, train=True).sum(axis=0)  # (K, P)
    off = 0
    for l in range(b.n_layers):
        P_l = b.d_a[l] * b.d_g[l]
        if b.d_a[l] == 1 and not b.positional[l]:
            ours = b.g[l].sum(axis=0)  # (K, 2C): 1 ⊗ row
            np.testing.assert_allclose(ours, fd[:, off:off + P_l], rtol=1e-6,
                                       atol=1e-8 * max(1.0, np.abs(fd).max()))
        off += P_l
    assert off == net.n_params


@pytest.mark.parametrize("method", ["KFAC", "KPSVD", "KFAC-corrected", "Deflation", "EKFAC",
                                    "EigenCorrected(KPSVD)", "BlockExact"])
def test_every_kronecker_method_is_exact_on_the_batch_norm_blocks(method):
    net, X = _nets()["cuda-convnet"]
    net = _randomise_bn(net, 2).eval()
    b = network_factor_batch(net, X, fisher="exact", batchnorm="include")
    F = fl.FisherOperator(b)
    A = fl.approx.APPROXIMATIONS[method](b)
    bn = [l for l, lay in enumerate(net.param_layers) if lay.kind == "batchnorm"]
    assert bn
    for l in bn:
        Fl = F.diagonal_block(l).to_dense()
        Al = A.blocks[l].to_dense()
        np.testing.assert_allclose(Al, Fl, rtol=1e-9, atol=1e-12 * np.abs(Fl).max())


def test_batchnorm_option_is_checked_and_fixed_is_the_default():
    net, X = _nets()["deep-bn"]
    with pytest.raises(fl.UnknownNameError, match="batchnorm"):
        network_factor_batch(net, X, batchnorm="frozen")
    b0 = network_factor_batch(net, X)
    b1 = network_factor_batch(net, X, batchnorm="include")
    assert b1.n_layers == b0.n_layers + sum(lay.kind == "batchnorm" for lay in net.param_layers)
