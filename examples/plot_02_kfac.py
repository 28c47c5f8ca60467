"""
2. KFAC: block-diagonal and Kronecker-factored, and when it is exact
====================================================================

The Fisher of a network with :math:`P` parameters is a dense :math:`P \\times P` matrix:
storing it costs :math:`P^2` numbers and inverting it :math:`P^3` operations, out of
reach beyond toy networks. KFAC (Martens & Grosse, 2015) makes two approximations:

1. **block-diagonal** — keep only the diagonal blocks :math:`F_l`, one per layer, and
   drop the interactions between layers;
2. **Kronecker-factored** — replace each block

   .. math::

      F_l = \\frac1N \\sum_n (\\bar a_n \\bar a_n^\\top) \\otimes G_n,
      \\qquad G_n = \\sum_k g_{nk} g_{nk}^\\top
      \\qquad \\text{(docs/papers.md F1)}

   by the Kronecker product of the averages,
   :math:`A \\otimes G` with :math:`A = \\frac1N\\sum_n \\bar a_n \\bar a_n^\\top` and
   :math:`G = \\frac1N \\sum_n G_n` (K1) — "the mean of products" replaced by "the
   product of means".

A Kronecker product is cheap: :math:`(A \\otimes G)\\,\\mathrm{vec}(V) = \\mathrm{vec}(G V A^\\top)`
and :math:`(A \\otimes G)^{-1} = A^{-1} \\otimes G^{-1}`, so the block's size
:math:`d_a d_g` never appears squared. This tutorial measures what each approximation
throws away, and shows the cases where the second one throws away nothing.
"""

# %%
# How much of the Fisher lives in the diagonal blocks?
# ----------------------------------------------------
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import SymLogNorm
from threadpoolctl import threadpool_limits

import fimlab as fl

# Small matrices: one BLAS thread is faster than several (a tutorial run as a script
# with two OpenBLAS threads took 10x longer on a busy 2-core machine).
threadpool_limits(1)

FAST = os.environ.get("FIMLAB_FAST", "0") not in ("", "0")
N = 64 if FAST else 256

rng = np.random.default_rng(0)
net = fl.MLP([6, 8, 8, 4], activation="tanh", likelihood="categorical", seed=0)
X = rng.normal(size=(N, 6))
batch = fl.factor_batch(net, X, fisher="exact")
F = fl.FisherOperator(batch)
F_dense = F.to_dense()

offsets = batch.offsets  # where each layer's parameters start in θ
diag_sq = sum(np.linalg.norm(F.block(l)) ** 2 for l in range(batch.n_layers))
total_sq = np.linalg.norm(F_dense) ** 2
print(f"share of ||F||_F^2 in the diagonal blocks: {diag_sq / total_sq:.1%}")
print("relative error of blockdiag(F) alone:",
      f"{fl.relative_frobenius_error(F, F.block_diagonal(), method='dense'):.3f}")

# %%
# The off-diagonal blocks are not small — KFAC's first approximation is a real one (the
# two-level corrections of tutorial 5 try to restore part of what it drops). What it
# buys is that each layer can be treated on its own.
#
# The Kronecker factors
# ---------------------
# ``fl.KFAC(batch)`` is a block-diagonal operator whose blocks are Kronecker operators;
# each exposes its factors as a list of ``(A, G)`` terms, one term for KFAC.
K = fl.KFAC(batch)
for l, blk in enumerate(K.blocks):
    A, G = blk.terms[0]
    print(f"layer {l}: F_l is {blk.shape[0]}x{blk.shape[0]} "
          f"({blk.shape[0] ** 2} numbers); A is {A.shape}, G is {G.shape} "
          f"({A.size + G.size} numbers); E1 = "
          f"{fl.relative_frobenius_error(F, K, block=l):.3f}")

# %%
# ``relative_frobenius_error(F, K, block=l)`` is exact and matrix-free: it evaluates
# :math:`\|F_l - A \otimes G\|_F` from Gram matrices of the factor batch, never forming
# either matrix. On this small block, the dense computation agrees:
l = 1
Fl = F.block(l)
A, G = K.blocks[l].terms[0]
dense_err = np.linalg.norm(Fl - np.kron(A, G)) / np.linalg.norm(Fl)
print(f"layer {l}: dense {dense_err:.12f}  vs  Gram route "
      f"{fl.relative_frobenius_error(F, K, block=l):.12f}")

# %%
# A picture of what is kept: the exact Fisher, KFAC as a dense matrix, and the
# difference (colours on a symmetric log scale, so that small entries show). The diagonal blocks of KFAC reproduce the coarse pattern of the exact
# ones; everything off the diagonal blocks is lost.
vmax = np.abs(F_dense).max()
norm = SymLogNorm(linthresh=vmax / 100, vmin=-vmax, vmax=vmax)  # shows small entries too
fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), layout="constrained")
for ax, M, title in zip(axes, [F_dense, K.to_dense(), F_dense - K.to_dense()],
                        ["exact Fisher $F$", r"KFAC: blockdiag$(A_l \otimes G_l)$", "$F$ − KFAC"]):
    im = ax.imshow(M, cmap="RdBu_r", norm=norm)
    for o in offsets[1:-1]:
        ax.axhline(o - 0.5, color="k", lw=0.6)
        ax.axvline(o - 0.5, color="k", lw=0.6)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.8)

# %%
# When is the Kronecker factorisation exact?
# ------------------------------------------
# :math:`\frac1N \sum_n (\bar a_n \bar a_n^\top) \otimes G_n = A \otimes G` holds
# whenever :math:`G_n` does not depend on the sample :math:`n` — the mean of products is
# then the product of means. Two cases where that happens:
#
# * **one sample** (:math:`N = 1`): trivially;
# * **a deep linear network with the Gaussian likelihood**: the back-propagated vectors
#   of the exact Fisher are the columns of :math:`H^{1/2} = I` pushed back through the
#   later weight matrices, the same for every input; every diagonal block is exactly
#   Kronecker-factored, however many samples.
#
# Away from these cases, the error of the factorisation grows with the diversity of the
# batch: below, the error of each layer's block as the number of samples grows, for the
# tanh network, against the deep linear one. (For the linear network the error is
# measured densely: the matrix-free Gram route evaluates
# :math:`\|F\|^2 - 2\langle F, K\rangle + \|K\|^2`, which cancels when the two
# matrices agree, so its floor is :math:`\sqrt{\varepsilon} \approx 10^{-8}`, not
# :math:`\varepsilon`.)
N_values = [1, 2, 4, 16, 64] if FAST else [1, 2, 4, 8, 16, 32, 64, 128, 256]
lin = fl.MLP([6, 8, 8, 4], activation="linear", likelihood="gaussian", seed=0)
err_tanh = np.array([[fl.relative_frobenius_error(Fn, fl.KFAC(bn), block=l)
                      for l in range(3)]
                     for bn in [fl.factor_batch(net, X[:n]) for n in N_values]
                     for Fn in [fl.FisherOperator(bn)]])
err_lin = np.array([[fl.relative_frobenius_error(Fn, fl.KFAC(bn), block=l, method="dense")
                     for l in range(3)]
                    for bn in [fl.factor_batch(lin, X[:n]) for n in N_values]
                    for Fn in [fl.FisherOperator(bn)]])
print("tanh network, N = 1:   ", np.array2string(err_tanh[0], precision=1))
print("deep linear Gaussian:  ", np.array2string(err_lin.max(axis=0), precision=1))

fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
floor = 1e-17  # an exact zero is drawn at this floor of the log scale
for l in range(3):
    ax.loglog(N_values, np.maximum(err_tanh[:, l], floor), "o-", color=f"C{l}",
              label=f"tanh, layer {l}")
    ax.loglog(N_values, np.maximum(err_lin[:, l], floor), "x--", color=f"C{l}",
              label=f"linear + Gaussian, layer {l}")
ax.axhspan(floor / 3, 1e-13, color="0.9", zorder=0)
ax.text(N_values[-1], 3e-14, "round-off", ha="right", va="top", fontsize=8)
ax.set_ylim(floor / 3, 2)
ax.set_xlabel("samples in the batch, N")
ax.set_ylabel(r"$\|F_l - A_l \otimes G_l\|_F / \|F_l\|_F$")
ax.set_title("KFAC is exact for one sample and for deep linear Gaussian networks",
             fontsize=9)
ax.legend(fontsize=7, ncol=2)

# %%
# Inverting KFAC
# --------------
# What natural-gradient training needs is a damped inverse applied to a gradient. The
# papers' rule (K2, the default ``rule="factor"``) damps each factor by
# :math:`\sqrt\lambda`: :math:`(A + \sqrt\lambda I)^{-1} \otimes (G + \sqrt\lambda I)^{-1}`,
# applied as two small solves. Checked here against the dense formula:
lam = 1e-2
v = rng.normal(size=K.shape[0])
s = K.block_slice(l)
A, G = K.blocks[l].terms[0]
dense = np.linalg.solve(np.kron(A + np.sqrt(lam) * np.eye(len(A)),
                                G + np.sqrt(lam) * np.eye(len(G))), v[s])
print("K.solve agrees with the dense inverse:",
      np.allclose(K.solve(v, damping=lam)[s], dense))
if "sphinx_gallery" in sys.modules or os.environ.get("DISPLAY"):
    plt.show()
else:  # run as a script with no display: save the figures in the working folder
    for _num in plt.get_fignums():
        _name = f"{os.path.splitext(os.path.basename(__file__))[0]}_{_num}.png"
        plt.figure(_num).savefig(_name, dpi=120)
        print("wrote", _name)

# %%
# Take-aways
# ----------
# * Block-diagonal: interactions between layers are dropped; here they carry a real
#   share of the Fisher's norm.
# * Kronecker-factored: exact when the back-propagated statistics :math:`G_n` do not
#   vary with the sample (one sample; deep linear Gaussian networks), an approximation
#   otherwise.
# * Both make the inverse cheap: a few :math:`d \times d` factorisations per layer.
#
# Next: the :doc:`Kronecker product SVD <plot_03_kpsvd>` finds the Kronecker product
# *closest* to :math:`F_l` — which KFAC's is not.
