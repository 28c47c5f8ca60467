"""
3. The rearrangement and the Kronecker product SVD
==================================================

KFAC approximates a Fisher block :math:`F_l` by *a* Kronecker product, :math:`A \\otimes G`
built from averages. Which Kronecker product is *closest* to :math:`F_l`? Van Loan and
Pitsianis answered with a rearrangement that turns the question into an ordinary
low-rank approximation:

.. math::

   \\|M - B \\otimes C\\|_F = \\|\\mathcal R(M) - \\mathrm{vec}(B)\\,\\mathrm{vec}(C)^\\top\\|_F
   \\qquad \\text{(docs/papers.md R1)}

where :math:`\\mathcal R(M)` has one row :math:`\\mathrm{vec}(M_{kl})^\\top` per
:math:`d_g \\times d_g` block :math:`M_{kl}` of :math:`M` (blocks taken in column-major
order). A Kronecker product becomes a rank-one matrix, and the nearest one is given by
the leading singular triplet of :math:`\\mathcal R(M)`. Keeping :math:`r` triplets gives
the *Kronecker product SVD* (KPSVD) truncated to :math:`r` terms (R2), optimal among all
sums of :math:`r` Kronecker products.
"""

# %%
# The rearrangement on a small example
# ------------------------------------
# ``M`` is a :math:`d_a \times d_a` grid of :math:`d_g \times d_g` blocks; block
# :math:`(k, l)` of :math:`B \otimes C` is :math:`B_{kl} C`. Reshaping the grid puts
# :math:`\mathrm{vec}(M_{kl})` in row :math:`k + l\,d_a` — five lines of NumPy.
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import fimlab as fl

# Small matrices: one BLAS thread is faster than several (a tutorial run as a script
# with two OpenBLAS threads took 10x longer on a busy 2-core machine).
threadpool_limits(1)

FAST = os.environ.get("FIMLAB_FAST", "0") not in ("", "0")


def rearrange(M, d_a, d_g):
    """R(M): row k + l·d_a is vec(M_kl)ᵀ, column-major vec (docs/papers.md R1)."""
    blocks = M.reshape(d_a, d_g, d_a, d_g)  # [k, i, l, j] = M[k·d_g + i, l·d_g + j]
    return blocks.transpose(2, 0, 3, 1).reshape(d_a * d_a, d_g * d_g)


def vec(W):
    return W.ravel(order="F")


def unvec(v, n):
    return v.reshape(n, n, order="F")


rng = np.random.default_rng(0)
B, C = rng.normal(size=(2, 2)), rng.normal(size=(3, 3))
R = rearrange(np.kron(B, C), 2, 3)
print("R(B ⊗ C) == vec(B) vec(C)ᵀ:", np.allclose(R, np.outer(vec(B), vec(C))))
print("singular values of R(B ⊗ C):", np.round(np.linalg.svd(R, compute_uv=False), 12))

# %%
# The rearrangement is a permutation of the entries, so it keeps the Frobenius norm, and
# a sum of :math:`r` Kronecker products becomes a matrix of rank :math:`r`.
B2, C2 = rng.normal(size=(2, 2)), rng.normal(size=(3, 3))
M = np.kron(B, C) + np.kron(B2, C2)
print("||R(M)|| == ||M||:", np.isclose(np.linalg.norm(rearrange(M, 2, 3)), np.linalg.norm(M)),
      " rank of R(M):", np.linalg.matrix_rank(rearrange(M, 2, 3)))

# %%
# The rearranged Fisher block
# ---------------------------
# For a Fisher block the rearrangement has a structure of its own: from
# :math:`F_l = \frac1N \sum_n (\bar a_n \bar a_n^\top) \otimes G_n`,
#
# .. math::
#
#    \mathcal R(F_l) = \frac1N \sum_n \mathrm{vec}(\bar a_n \bar a_n^\top)\,
#                      \mathrm{vec}(G_n)^\top  \qquad \text{(R3)},
#
# a sum of :math:`N` rank-one terms: its rank is at most :math:`N`, and products with it
# cost two GEMMs on the factor batch, so fimlab never forms it (nor :math:`F_l`) outside
# teaching scripts like this one. Below, a block of a small tanh network.
N = 48 if FAST else 200
net = fl.MLP([8, 10, 6, 3], activation="tanh", likelihood="categorical", seed=1)
X = rng.normal(size=(N, 8))
batch = fl.factor_batch(net, X, fisher="exact")
F = fl.FisherOperator(batch)
l = 1
d_a, d_g = batch.d_a[l], batch.d_g[l]
Fl = F.block(l)
R = rearrange(Fl, d_a, d_g)

a, g = batch.a[l], batch.g[l]
Gn = np.einsum("nki,nkj->nij", g, g)  # G_n = Σ_k g_nk g_nkᵀ
R3 = np.einsum("ni,nj->nij", a, a).reshape(N, -1).T @ Gn.reshape(N, -1) / N
# (the outer products ā āᵀ and G_n are symmetric: their vec order does not matter here)
print(f"block {l}: F_l is {Fl.shape}, R(F_l) is {R.shape};",
      "R3 formula agrees:", np.allclose(R, R3))

# %%
# The KPSVD
# ---------
# The SVD of :math:`\mathcal R(F_l)` gives :math:`F_l = \sum_r \sigma_r U_r \otimes V_r`
# with :math:`U_r = \mathrm{unvec}(u_r)`, :math:`V_r = \mathrm{unvec}(v_r)`. By
# Eckart–Young, keeping :math:`r` terms leaves the error
# :math:`\sqrt{\sum_{k>r} \sigma_k^2} / \|F_l\|_F` — nothing can do better with
# :math:`r` Kronecker products. KFAC's :math:`A \otimes G` is one particular Kronecker
# product, so its error is at least the rank-one optimum.
U, sig, Vt = np.linalg.svd(R, full_matrices=False)
fro = np.linalg.norm(Fl)
r_max = 8
tail = np.sqrt(np.maximum(np.linalg.norm(sig) ** 2 - np.cumsum(sig**2), 0.0))[:r_max] / fro

truncated_err = []
for r in range(1, r_max + 1):
    Fr = sum(sig[k] * np.kron(unvec(U[:, k], d_a), unvec(Vt[k], d_g)) for k in range(r))
    truncated_err.append(np.linalg.norm(Fl - Fr) / fro)
print("Eckart-Young holds:", np.allclose(truncated_err, tail))

kfac_err = fl.relative_frobenius_error(F, fl.KFAC(batch), block=l)
print(f"KFAC error {kfac_err:.4f}  >=  best Kronecker product {tail[0]:.4f};",
      f"best sum of two: {tail[1]:.4f}")

# %%
# The leading factors of a positive semi-definite block can be chosen positive
# semi-definite too (R4): flip the signs of :math:`u_1` and :math:`v_1` so that their
# traces are positive.
A1 = np.sqrt(sig[0]) * unvec(U[:, 0], d_a)
G1 = np.sqrt(sig[0]) * unvec(Vt[0], d_g)
if np.trace(A1) < 0:
    A1, G1 = -A1, -G1
print("smallest eigenvalues of the leading factors:",
      f"{np.linalg.eigvalsh(A1).min():.1e}, {np.linalg.eigvalsh(G1).min():.1e}")

# %%
# fimlab does the same without forming anything: ``fl.kron.rearrange`` is the dense
# rearrangement (for tests and teaching), and ``fl.KPSVD(batch, rank=r)`` the truncated
# KPSVD of every block, computed from an :math:`N \times N` Gram problem of the factor
# batch — its error is the Eckart–Young value.
print("fl.kron.rearrange agrees with ours:", np.allclose(fl.kron.rearrange(Fl, d_a, d_g), R))
for r in (1, 2, 3):
    err = fl.relative_frobenius_error(F, fl.KPSVD(batch, rank=r), block=l)
    print(f"fl.KPSVD(rank={r}): error {err:.6f} on block {l}, Eckart-Young {tail[r - 1]:.6f}")

# %%
# How many terms can there be? :math:`\mathcal R(F_l)` has rank at most :math:`N`, and
# since the :math:`\bar a_n \bar a_n^\top` and :math:`G_n` are symmetric, at most
# :math:`d_a(d_a+1)/2` and :math:`d_g(d_g+1)/2` as well — a symmetric matrix has that many
# free entries.
bound = min(N, d_a * (d_a + 1) // 2, d_g * (d_g + 1) // 2)
print(f"rank of R(F_l): {np.linalg.matrix_rank(R)}  (bound min(N, d_a(d_a+1)/2, "
      f"d_g(d_g+1)/2) = {bound})")

# %%
# The picture: the singular values of the rearranged block fall quickly (down to round-off
# past the rank), and the error of the truncated KPSVD falls with them; KFAC sits above
# the rank-one optimum.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
ax1.semilogy(np.arange(1, len(sig) + 1), sig / sig[0], ".-")
ax1.set_xlabel("index r")
ax1.set_ylabel(r"$\sigma_r / \sigma_1$")
ax1.set_title(r"singular values of $\mathcal{R}(F_l)$")
ax1.set_ylim(bottom=max(sig[-1] / sig[0], 1e-17))
ax2.plot(range(1, r_max + 1), truncated_err, "o-", label="KPSVD, r terms (optimal)")
ax2.axhline(kfac_err, color="C3", ls="--", label="KFAC (one term)")
ax2.set_xlabel("Kronecker terms r")
ax2.set_ylabel(r"$\|F_l - \tilde F_l\|_F / \|F_l\|_F$")
ax2.set_yscale("log")
ax2.set_title(f"approximating block {l} ({Fl.shape[0]}×{Fl.shape[0]})")
ax2.legend()
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
# * The rearrangement turns "nearest Kronecker product" into "nearest rank-one matrix".
# * For a Fisher block, :math:`\mathcal R(F_l)` is a sum of :math:`N` rank-one terms built
#   from the factor batch; its products cost as much as computing the KFAC factors.
# * KFAC is not the nearest Kronecker product; the KPSVD family of the next tutorial
#   (``fl.KPSVD``, ``fl.KFACCorrected``, ``fl.Deflation``, ``fl.Lanczos``) computes the
#   nearest one, or the nearest sum of two, matrix-free.
