"""Slow, obviously-correct references for the tests (finite differences, explicit
per-sample Jacobians, explicit Kronecker products). Nothing here is used by fimlab."""

from __future__ import annotations

import numpy as np


def fd_gradient(f, theta, h=1e-6):
    """Central finite differences of a scalar function of a flat vector."""
    g = np.zeros_like(theta)
    for i in range(theta.size):
        t = theta.copy()
        t[i] += h
        fp = f(t)
        t[i] -= 2 * h
        fm = f(t)
        g[i] = (fp - fm) / (2 * h)
    return g


def output_jacobians(net, X, h=1e-6):
    """Per-sample Jacobians of the network output w.r.t. θ by central differences:
    shape (N, C, P)."""
    theta = net.get_flat().copy()
    N, C, P = X.shape[0], net.layer_sizes[-1], theta.size
    J = np.zeros((N, C, P))
    for i in range(P):
        t = theta.copy()
        t[i] += h
        net.set_flat(t)
        zp = net.forward(X)
        t[i] -= 2 * h
        net.set_flat(t)
        zm = net.forward(X)
        J[:, :, i] = (zp - zm) / (2 * h)
    net.set_flat(theta)
    return J


def output_hessians(net, X):
    """H_n: the Fisher of the likelihood in output space, explicit (N, C, C)."""
    z = net.forward(X)
    name = net.likelihood.name
    N, C = z.shape
    if name == "categorical":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])
    if name == "gaussian":
        return np.broadcast_to(np.eye(C), (N, C, C)).copy()
    p = 1 / (1 + np.exp(-z))
    return np.stack([np.diag(pi * (1 - pi)) for pi in p])


def per_sample_loss_gradients(net, X, y, h=1e-6):
    """∇θ of each sample's loss by central differences: (N, P)."""
    theta = net.get_flat().copy()
    N = X.shape[0]
    out = np.zeros((N, theta.size))
    for n in range(N):
        Xn, yn = X[n : n + 1], y[n : n + 1]

        def loss_n(t, Xn=Xn, yn=yn):
            net.set_flat(t)
            return net.loss(Xn, yn)

        out[n] = fd_gradient(loss_n, theta, h)
    net.set_flat(theta)
    return out


def rearrange(M, d_a, d_g):
    """R(M) by explicit loops over blocks (PAPERS.md R1): row l*d_a + k is vec(M_kl)."""
    R = np.zeros((d_a * d_a, d_g * d_g))
    for l in range(d_a):
        for k in range(d_a):
            blk = M[k * d_g : (k + 1) * d_g, l * d_g : (l + 1) * d_g]
            R[l * d_a + k] = blk.ravel(order="F")
    return R
