"""Convergence of sigma_1 and sigma_2 of R(F_l) for each KPSVD algorithm (theory page).

The block is a real one: layer 0 of a small tanh network, Monte-Carlo Fisher. The three
algorithms are written out below exactly as the algorithms page states them (power
iteration with deflation, Golub-Kahan bidiagonalisation with full reorthogonalisation,
and the papers' two-step restarted Lanczos); the reference singular values come from
``numpy.linalg.svd`` of the explicit rearranged block built by ``fimlab.kron.rearrange``.
"""

import matplotlib.pyplot as plt
import numpy as np

import fimlab as fl
from fimlab import kron

net = fl.MLP([8, 6, 4], activation="tanh", likelihood="categorical", seed=0)
X = np.random.default_rng(0).normal(size=(64, 8))
batch = fl.factor_batch(net, X, fisher="mc", rng=1)
d_a, d_g = batch.d_a[0], batch.d_g[0]
R = kron.rearrange(fl.FisherOperator(batch).diagonal_block(0).to_dense(), d_a, d_g)
sigma = np.linalg.svd(R, compute_uv=False)
v0 = np.ones(R.shape[1]) / np.sqrt(R.shape[1])  # one start vector for every algorithm


def power(R, v, iters):
    """Power iteration: u = Rv/|Rv|, v = R^T u/|R^T u|; sigma = |Rv|. 2 products/iter."""
    est = []
    for _ in range(iters):
        u = R @ v
        s = np.linalg.norm(u)
        u /= s
        w = R.T @ u
        v = w / np.linalg.norm(w)
        est.append(s)
    u = R @ v
    s = np.linalg.norm(u)
    return np.array(est), s, u / s, v


def golub_kahan(R, v, steps, reorth=True):
    """k steps of Golub-Kahan: R V_k = U_k B_k, B_k upper bidiagonal; Ritz values of B_k."""
    V, U, alpha, beta = [v / np.linalg.norm(v)], [], [], []
    u = R @ V[0]
    ritz = []
    for j in range(steps):
        if j:
            u = R @ V[j] - beta[-1] * U[-1]
        if reorth:
            for q in U:
                u -= (q @ u) * q
        alpha.append(np.linalg.norm(u))
        U.append(u / alpha[-1])
        B = np.diag(alpha) + np.diag(beta, 1)
        P, s, Qt = np.linalg.svd(B)
        ritz.append(s)
        w = R.T @ U[-1] - alpha[-1] * V[-1]
        if reorth:
            for q in V:
                w -= (q @ w) * q
        beta.append(np.linalg.norm(w))
        if beta[-1] < 1e-14 * alpha[0]:
            break
        V.append(w / beta[-1])
    Vk = np.array(V[: len(alpha)]).T
    return ritz, Vk @ Qt.T, s


iters = 60
# KPSVD: power iteration for sigma_1; Deflation: power iteration on R - sigma_1 u_1 v_1^T
p1, s1, u1, v1 = power(R, v0, iters)
p2, _, _, _ = power(R - s1 * np.outer(u1, v1), v0, iters)
# Golub-Kahan (the exact solver's algorithm, here on the explicit R)
gk, _, _ = golub_kahan(R, v0, min(iters, min(R.shape)))
gk1 = np.array([r[0] for r in gk])
gk2 = np.array([r[1] if len(r) > 1 else np.nan for r in gk])
# the papers' Lanczos: two Golub-Kahan steps, restart from v_1 + v_2
lz1, lz2, x = [], [], v0
for _ in range(iters):
    ritz, Vr, s = golub_kahan(R, x, 2, reorth=False)
    lz1.append(s[0])
    lz2.append(s[1])
    x = Vr[:, 0] + Vr[:, 1]


def rel(est, ref):
    return np.maximum(np.abs(np.asarray(est) - ref) / ref, 1e-16)


fig, axes = plt.subplots(2, 1, figsize=(8, 8.6), sharex=True)  # stacked: readable at column width
for ax, k, ref, series in (
    (axes[0], 1, sigma[0], [("power iteration (KPSVD)", 2, p1),
                            ("Golub–Kahan, full reorth. (exact solver)", 2, gk1),
                            ("two-step restarted Lanczos (papers)", 4, lz1)]),
    (axes[1], 2, sigma[1], [("power iteration on the deflated $\\mathcal{R}$ (Deflation)",
                             2, p2),
                            ("Golub–Kahan, full reorth. (exact solver)", 2, gk2),
                            ("two-step restarted Lanczos (papers)", 4, lz2)]),
):
    for (label, cost, est), style in zip(series, ("-o", "-s", "-^")):
        it = np.arange(1, len(est) + 1) * cost
        ax.semilogy(it, rel(est, ref), style, ms=3, label=label)
    ax.set_title(f"$\\sigma_{k}$ = {ref:.4g}: relative error of the estimate", fontsize=14)
    ax.set_ylabel(r"$|\hat\sigma - \sigma| / \sigma$", fontsize=13)
    ax.tick_params(labelsize=11)
    ax.set_xlim(0, 2 * iters)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=11)
axes[1].set_xlabel("products with $\\mathcal{R}$ or $\\mathcal{R}^\\top$", fontsize=13)
fig.suptitle(f"$\\mathcal{{R}}(F_0)$ of a 8-6-4 tanh network, $N = 64$ "
             f"({R.shape[0]} × {R.shape[1]})\n$\\sigma_2/\\sigma_1$ = {sigma[1] / sigma[0]:.3f}, "
             f"$\\sigma_3/\\sigma_2$ = {sigma[2] / sigma[1]:.3f}", fontsize=14)
fig.tight_layout()
