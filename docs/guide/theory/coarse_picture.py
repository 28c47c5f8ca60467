"""The Nicolaides coarse space R_0 on a small network, and the coarse matrix F_c (theory).

R_0 has one row per layer, all ones on that layer's parameters (scaled by the largest
absolute entry, i.e. unchanged); F_c = R_0 (F + lambda I) R_0^T is computed densely here
and by ``fimlab.coarse_matrix`` in the code. The off-diagonal share of ||F||_F^2 is
printed in the title: it bounds what any coarse correction can restore.
"""

import matplotlib.pyplot as plt
import numpy as np

import fimlab as fl

net = fl.MLP([4, 3, 3, 2], activation="tanh", likelihood="categorical", seed=0)
X = np.random.default_rng(0).normal(size=(50, 4))
batch = fl.factor_batch(net, X, fisher="exact")
F = fl.FisherOperator(batch).to_dense()
off = batch.offsets
P, L = F.shape[0], len(off) - 1
lam = 1e-2
R0 = np.zeros((L, P))
for i in range(L):
    R0[i, off[i]:off[i + 1]] = 1.0
Fc = R0 @ (F + lam * np.eye(P)) @ R0.T
diag = sum(np.linalg.norm(F[off[i]:off[i + 1], off[i]:off[i + 1]]) ** 2 for i in range(L))
share = 1 - diag / np.linalg.norm(F) ** 2

fig = plt.figure(figsize=(9, 8.4))  # two rows: readable at the column's width
gs = fig.add_gridspec(2, 2, width_ratios=[1.0, 0.75], height_ratios=[1.0, 0.62])
ax = fig.add_subplot(gs[0, 0])
ax.imshow(np.log10(np.abs(F) + 1e-8), cmap="viridis")
for o in off[1:-1]:
    ax.axhline(o - 0.5, color="w", lw=1.5)
    ax.axvline(o - 0.5, color="w", lw=1.5)
ax.set_title(f"$\\log_{{10}}|F|$ ({P} × {P}), layer blocks\n"
             f"off-diagonal share of $\\|F\\|_F^2$: {share:.2f}", fontsize=14)
ax.set_xticks([])
ax.set_yticks([])
ax = fig.add_subplot(gs[0, 1])
ax.imshow(np.log10(np.abs(Fc) + 1e-12), cmap="viridis")
for i in range(L):
    for j in range(L):
        ax.text(j, i, f"{Fc[i, j]:.2g}", ha="center", va="center", color="w", fontsize=13)
ax.set_xticks([])
ax.set_yticks([])
ax.set_title("$F_c = R_0 F_\\lambda R_0^\\top$\n($c \\times c$, $\\lambda = 10^{-2}$)",
             fontsize=14)
ax = fig.add_subplot(gs[1, :])
ax.imshow(R0, cmap="Greys", aspect="auto", vmin=0, vmax=1.3)
for o in off[1:-1]:
    ax.axvline(o - 0.5, color="C3", lw=1.5)
ax.set_yticks(range(L), [f"row {i}: $\\mathbf{{1}}_{i}$" for i in range(L)], fontsize=13)
ax.tick_params(axis="x", labelsize=12)
ax.set_xlabel("parameter index (layers 0, 1, 2)", fontsize=13)
ax.set_title(f"$R_0$ (Nicolaides, $c = {L}$ rows × $P = {P}$)", fontsize=14)
fig.tight_layout()
