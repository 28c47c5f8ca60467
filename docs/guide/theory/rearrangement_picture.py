"""The rearrangement R(M) drawn on a small block (d_a = 3, d_g = 2).

Each d_g x d_g block M_ij of M (left) becomes the row vec(M_ij)^T of R(M) (right), blocks
taken in column-major order; the colours follow the blocks. The entries are the numbers
of a real matrix, and R(M) is computed by ``fimlab.kron.rearrange``, so the picture is
what the code does.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from fimlab import kron

d_a, d_g = 3, 2
M = np.arange(1, (d_a * d_g) ** 2 + 1, dtype=float).reshape(d_a * d_g, d_a * d_g, order="F")
R = kron.rearrange(M, d_a, d_g)  # d_a^2 x d_g^2
cmap = plt.get_cmap("tab10")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 5.2),
                               gridspec_kw={"width_ratios": [6, 4.6]})
ax0.set_title(r"$M$: a $d_a \times d_a$ grid of $d_g \times d_g$ blocks $M_{ij}$"
              "\n" r"($d_a = 3$, $d_g = 2$)", fontsize=16)
for j in range(d_a):          # block column
    for i in range(d_a):      # block row
        b = j * d_a + i       # column-major block index = row of R(M)
        ax0.add_patch(Rectangle((j * d_g, i * d_g), d_g, d_g, color=cmap(b), alpha=0.35))
        ax0.add_patch(Rectangle((j * d_g, i * d_g), d_g, d_g, fill=False, lw=2))
        ax0.text(j * d_g + d_g / 2, i * d_g + d_g - 0.08, f"$M_{{{i}{j}}}$",
                 ha="center", va="bottom", fontsize=13, color="0.25")
for r in range(d_a * d_g):
    for c in range(d_a * d_g):
        ax0.text(c + 0.5, r + 0.45, f"{M[r, c]:.0f}", ha="center", va="center", fontsize=16)
ax0.set_xlim(0, d_a * d_g)
ax0.set_ylim(d_a * d_g, 0)
ax0.set_aspect("equal")
ax0.set_xticks([])
ax0.set_yticks([])

ax1.set_title(r"$\mathcal{R}(M)$: row $j d_a + i$ is $\mathrm{vec}(M_{ij})^\top$"
              "\n" r"($d_a^2 \times d_g^2 = 9 \times 4$)", fontsize=16)
for b in range(d_a * d_a):
    i, j = b % d_a, b // d_a
    ax1.add_patch(Rectangle((0, b), d_g * d_g, 1, color=cmap(b), alpha=0.35))
    ax1.text(-0.15, b + 0.5, f"$M_{{{i}{j}}}$", ha="right", va="center", fontsize=14)
    for c in range(d_g * d_g):
        ax1.text(c + 0.5, b + 0.5, f"{R[b, c]:.0f}", ha="center", va="center", fontsize=16)
ax1.add_patch(Rectangle((0, 0), d_g * d_g, d_a * d_a, fill=False, lw=2))
ax1.set_xlim(-1.4, d_g * d_g)
ax1.set_ylim(d_a * d_a, 0)
ax1.set_aspect("equal")
ax1.axis("off")
fig.tight_layout()
