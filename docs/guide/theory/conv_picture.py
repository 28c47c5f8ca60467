"""A convolution layer as one dense layer applied at T positions (the KFC picture).

A 4 x 4 one-channel input, a 2 x 2 kernel, stride 1: T = 9 output positions. Each
position t reads one patch of the input (left); unfolded and with the bias entry 1
appended it is the row abar_{n,t}^T of the T x d_a patch matrix (middle, d_a = 5),
computed by ``fimlab.models.layers.unfold`` (so the picture is what the code does); the
same weight matrix W (d_g x d_a) maps every row to the output s_{n,t} = W abar_{n,t} at
position t (right), where g_{nk,t} is back-propagated. Colours follow three positions.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from fimlab.models.layers import unfold

H = W = 4
k = 2
x = np.arange(1, H * W + 1, dtype=float).reshape(1, 1, H, W)
P = unfold(x, k)[0]                                   # (T, k*k), row-major positions
P = np.hstack([P, np.ones((P.shape[0], 1))])          # bias entry: d_a = k*k + 1
T, d_a = P.shape
Ho = Wo = H - k + 1
shown = {0: 0, 4: 1, 8: 2}                            # position t -> colour index
cmap = plt.get_cmap("tab10")

fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(12, 5.8),
                                    gridspec_kw={"width_ratios": [4, 5.2, 3.4]})

ax0.set_title("input of sample $n$\n($4 \\times 4$, one channel);\n"
              "patches at $t = 1, 5, 9$", fontsize=15)
for t, c in shown.items():
    r, q = divmod(t, Wo)
    ax0.add_patch(Rectangle((q + 0.06 * c, r + 0.06 * c), k - 0.12 * c, k - 0.12 * c,
                            fill=False, lw=3, ec=cmap(c)))
for r in range(H):
    for q in range(W):
        ax0.text(q + 0.5, r + 0.5, f"{x[0, 0, r, q]:.0f}", ha="center", va="center",
                 fontsize=16)
ax0.add_patch(Rectangle((0, 0), W, H, fill=False, lw=1, ec="0.5"))
ax0.set_xlim(-0.2, W + 0.2)
ax0.set_ylim(H + 0.2, -0.2)
ax0.set_aspect("equal")
ax0.axis("off")

ax1.set_title("patch matrix: row $t$ is $\\bar a_{n,t}^\\top$\n"
              f"($T \\times d_a = {T} \\times {d_a}$, last column: bias 1)", fontsize=15)
for t in range(T):
    if t in shown:
        ax1.add_patch(Rectangle((0, t), d_a, 1, color=cmap(shown[t]), alpha=0.35))
    ax1.text(-0.15, t + 0.5, f"$t = {t + 1}$", ha="right", va="center", fontsize=14)
    for j in range(d_a):
        ax1.text(j + 0.5, t + 0.5, f"{P[t, j]:.0f}", ha="center", va="center", fontsize=15)
ax1.add_patch(Rectangle((0, 0), d_a, T, fill=False, lw=1.5))
ax1.plot([d_a - 1, d_a - 1], [0, T], color="0.5", lw=1, ls="--")
ax1.set_xlim(-2.2, d_a + 0.2)
ax1.set_ylim(T + 0.2, -0.2)
ax1.set_aspect("equal")
ax1.axis("off")

ax2.set_title("output map\n($T = 3 \\times 3$ positions):\n"
              "$s_{n,t} = W \\bar a_{n,t}$,\nthe same $W$ at every $t$", fontsize=15)
for t in range(T):
    r, q = divmod(t, Wo)
    if t in shown:
        ax2.add_patch(Rectangle((q, r), 1, 1, color=cmap(shown[t]), alpha=0.35))
    ax2.text(q + 0.5, r + 0.5, f"$t={t + 1}$", ha="center", va="center", fontsize=14)
ax2.add_patch(Rectangle((0, 0), Wo, Ho, fill=False, lw=1.5))
for i in range(1, Wo):
    ax2.plot([i, i], [0, Ho], color="0.7", lw=0.8)
    ax2.plot([0, Wo], [i, i], color="0.7", lw=0.8)
ax2.set_xlim(-0.2, Wo + 0.2)
ax2.set_ylim(Ho + 0.2, -0.2)
ax2.set_aspect("equal")
ax2.axis("off")
fig.tight_layout()
