"""The picture of the conventions page: vec order, parameter order, a Fisher block.

Drawn at build time by matplotlib's ``plot`` directive from a real three-layer network,
so the picture is the convention the code uses, not a drawing of it.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import fimlab as fl

net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
X = np.random.default_rng(0).normal(size=(40, 3))
batch = fl.factor_batch(net, X, fisher="exact")
F = fl.FisherOperator(batch)
Fd = F.to_dense()
d_a, d_g = batch.d_a[0], batch.d_g[0]  # layer 0: W_0 is 4 x (3 + 1)
colors = ["C0", "C1", "C2"]

fig = plt.figure(figsize=(11, 7.2), layout="constrained")
gs = fig.add_gridspec(2, 3, width_ratios=[1.0, 0.35, 1.25], height_ratios=[1, 1.25])

# (a) W_0 with the position of each entry in vec(W_0) -----------------------------------
ax = fig.add_subplot(gs[0, 0])
ax.set_title("(a) $W_0$ ($d_g \\times d_a$, bias last): entry = its index in vec$(W_0)$",
             fontsize=9)
for i in range(d_g):
    for j in range(d_a):
        bias = j == d_a - 1
        ax.add_patch(Rectangle((j, d_g - 1 - i), 1, 1, fc="#fde0c5" if bias else "#dbe9f6",
                               ec="k", lw=0.8))
        ax.text(j + 0.5, d_g - 0.5 - i, str(j * d_g + i), ha="center", va="center")
for j in range(d_a):
    ax.text(j + 0.5, d_g + 0.25, "bias" if j == d_a - 1 else f"input {j}", ha="center",
            fontsize=8)
for i in range(d_g):
    ax.text(-0.15, d_g - 0.5 - i, f"unit {i}", ha="right", va="center", fontsize=8)
for j in range(d_a):
    ax.annotate("", xy=(j + 0.15, 0.1), xytext=(j + 0.15, d_g - 0.1),
                arrowprops=dict(arrowstyle="->", color="C3", lw=1.2))
ax.text(d_a / 2, -0.35, "column-major vec: down each column, columns left to right",
        color="C3", fontsize=8, ha="center", va="center")
ax.set_xlim(-1.3, d_a + 0.1)
ax.set_ylim(-0.6, d_g + 0.6)
ax.set_aspect("equal")
ax.axis("off")

# (b) θ = [vec(W_0); vec(W_1)] ------------------------------------------------------------
ax = fig.add_subplot(gs[:, 1])
ax.set_title("(b) $\\theta$", fontsize=9)
P = batch.n_params
for l in range(batch.n_layers):
    o0, o1 = batch.offsets[l], batch.offsets[l + 1]
    ax.add_patch(Rectangle((0, P - o1), 1, o1 - o0, fc=colors[l], alpha=0.5, ec="k"))
    ax.text(0.5, P - (o0 + o1) / 2, f"vec$(W_{l})$\n{o1 - o0} entries\n"
            f"$d_a$={batch.d_a[l]}, $d_g$={batch.d_g[l]}", ha="center", va="center",
            fontsize=8)
ax.set_xlim(-0.1, 1.1)
ax.set_ylim(0, P)
ax.axis("off")

# (c) the Fisher, layer blocks --------------------------------------------------------------
ax = fig.add_subplot(gs[0, 2])
vmax = np.abs(Fd).max()
ax.imshow(Fd, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
o = batch.offsets[1]
ax.axhline(o - 0.5, color="k", lw=1)
ax.axvline(o - 0.5, color="k", lw=1)
ax.add_patch(Rectangle((-0.5, -0.5), o, o, fill=False, ec=colors[0], lw=2.5))
ax.text(o / 2, o / 2, "$F_{00}$", fontsize=14, ha="center", va="center")
ax.text(o + (P - o) / 2, o / 2, "$F_{01}$", fontsize=12, ha="center", va="center")
ax.text(o / 2, o + (P - o) / 2, "$F_{10}$", fontsize=12, ha="center", va="center")
ax.text(o + (P - o) / 2, o + (P - o) / 2, "$F_{11}$", fontsize=12, ha="center",
        va="center")
ax.set_title("(c) $F$ ($P \\times P$), rows and columns in the order of $\\theta$",
             fontsize=9)
ax.set_xticks([])
ax.set_yticks([])

# (d) one diagonal block: a d_a x d_a grid of d_g x d_g blocks ------------------------------
ax = fig.add_subplot(gs[1, 0])
F00 = F.block(0)
v0 = np.abs(F00).max()
ax.imshow(F00, cmap="RdBu_r", vmin=-v0, vmax=v0)
for k in range(1, d_a):
    ax.axhline(k * d_g - 0.5, color="k", lw=0.8)
    ax.axvline(k * d_g - 0.5, color="k", lw=0.8)
ax.add_patch(Rectangle((3 * d_g - 0.5, 2 * d_g - 0.5), d_g, d_g, fill=False, ec="C3",
                       lw=2.5))
ax.set_xticks([(k + 0.5) * d_g - 0.5 for k in range(d_a)], [f"j={k}" for k in range(d_a)],
              fontsize=8)
ax.set_yticks([(k + 0.5) * d_g - 0.5 for k in range(d_a)], [f"i={k}" for k in range(d_a)],
              fontsize=8)
ax.set_title("(d) $F_{00}$: a $d_a \\times d_a$ grid of $d_g \\times d_g$ blocks", fontsize=9)

# (e) the text of the block -----------------------------------------------------------------
ax = fig.add_subplot(gs[1, 2])
ax.axis("off")
ax.text(0.0, 0.95, "Block $(i, j)$ of $F_{00}$ (red in (d)):", fontsize=10, va="top")
ax.text(0.03, 0.80,
        "$F_{00}[i, j] = \\frac{1}{N}\\sum_n \\bar a_{n,i}\\,\\bar a_{n,j}\\, G_n$,"
        "   $G_n = \\sum_k g_{nk} g_{nk}^\\top$", fontsize=11, va="top")
ax.text(0.0, 0.62, "so that", fontsize=10, va="top")
ax.text(0.03, 0.52, "$F_{00} = \\frac{1}{N}\\sum_n (\\bar a_n \\bar a_n^\\top) \\otimes G_n$"
        "   (formula F1)", fontsize=11, va="top")
ax.text(0.0, 0.36, "and KFAC replaces block $(i, j)$ by $A_{ij}\\, G$:", fontsize=10,
        va="top")
ax.text(0.03, 0.26, "$A \\otimes G$,  $A = \\frac{1}{N}\\sum_n \\bar a_n \\bar a_n^\\top$,"
        "  $G = \\frac{1}{N}\\sum_n G_n$   (K1)", fontsize=11, va="top")
ax.text(0.0, 0.10, "$(A \\otimes G)\\,\\mathrm{vec}(V) = \\mathrm{vec}(G V A^\\top)$ — "
        "the Kronecker product is never formed.", fontsize=10, va="top")
plt.show()
