"""
1. The Fisher matrix of a tiny MLP, and its three kinds
========================================================

A network with parameters :math:`\\theta` defines a distribution :math:`p(y \\mid x, \\theta)`
over its targets. Its *Fisher Information Matrix* is

.. math::

   F = \\mathbb{E}_{x}\\, \\mathbb{E}_{y \\sim p(y \\mid x, \\theta)}
       \\left[ \\nabla_\\theta \\log p(y \\mid x, \\theta)\\,
               \\nabla_\\theta \\log p(y \\mid x, \\theta)^\\top \\right],

the metric that natural-gradient descent uses in place of the identity. The outer
expectation runs over the inputs of a batch; what is done with the inner one, over the
targets, gives the three kinds of Fisher that the papers use:

* the **exact** (true) Fisher takes it in closed form. For the likelihoods of fimlab it
  equals the generalised Gauss-Newton matrix :math:`\\frac1N \\sum_n J_n^\\top H_n J_n`,
  with :math:`J_n` the Jacobian of the network output and :math:`H_n` the Fisher of the
  likelihood in output space (softmax: :math:`\\operatorname{diag}(p) - pp^\\top`);
* the **Monte-Carlo** Fisher samples :math:`S` targets from the model for each input;
* the **empirical** Fisher uses the true label instead of a sample — cheap, popular, and
  a different matrix.

This tutorial builds all three for a network small enough to look at, checks the exact one
against a finite-difference computation, and measures how far the other two are from it.
"""

# %%
# A tiny network and a batch
# --------------------------
# Four inputs, six tanh hidden units, three classes: ``P = 6·5 + 3·7 = 51`` parameters
# (each layer's bias is the last column of its weight matrix). The labels come from a
# fixed "teacher" rule that the untrained network does not know.
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
net = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=0)
X = rng.normal(size=(N, 4))
y = np.argmax(X @ rng.normal(size=(4, 3)), axis=1)  # teacher labels
print(net, "with", net.n_params, "parameters")

# %%
# The factor batch and the exact Fisher
# -------------------------------------
# fimlab never differentiates "the Fisher" as a whole. It asks the model for a *factor
# batch*: per layer ``l``, the bias-augmented inputs ``a[l]`` (``N × (d_in+1)``) and the
# ``K`` vectors ``g[l]`` back-propagated to the layer's pre-activations for each sample
# (``N × K × d_out``). For the exact Fisher, ``K`` is the number of classes: the
# back-propagated vectors are the columns of :math:`H_n^{1/2}`. Every Fisher-type matrix
# is then :math:`F = \frac1N \sum_{n,k} j_{nk} j_{nk}^\top` with
# :math:`j_{nk} = [\bar a_{0,n} \otimes g_{0,nk}; \dots]`.
batch = fl.factor_batch(net, X, fisher="exact")
print(batch)
print("a shapes:", [a.shape for a in batch.a], " g shapes:", [g.shape for g in batch.g])

F = fl.FisherOperator(batch)  # a matrix-free operator ...
F_exact = F.to_dense()  # ... formed here only because P = 51 is tiny
print("F is", F_exact.shape, "symmetric:", np.allclose(F_exact, F_exact.T),
      " smallest eigenvalue:", f"{np.linalg.eigvalsh(F_exact).min():.1e}")

# %%
# An independent check: the Gauss-Newton form
# -------------------------------------------
# Differentiate the network output by central finite differences, parameter by
# parameter, and assemble :math:`\frac1N \sum_n J_n^\top H_n J_n` by hand. It must agree
# with the factor-batch Fisher to the accuracy of the finite differences.
theta0 = net.get_flat()
h = 1e-5
J = np.empty((N, 3, net.n_params))  # dz_n / dθ
for p in range(net.n_params):
    e = np.zeros_like(theta0)
    e[p] = h
    net.set_flat(theta0 + e)
    z_plus = net.forward(X)
    net.set_flat(theta0 - e)
    z_minus = net.forward(X)
    J[:, :, p] = (z_plus - z_minus) / (2 * h)
net.set_flat(theta0)
prob = net.predict(X)
H = np.stack([np.diag(pn) - np.outer(pn, pn) for pn in prob])  # softmax Fisher
F_ggn = np.einsum("ncp,ncd,ndq->pq", J, H, J) / N
print("max |F - J^T H J / N| =", f"{np.abs(F_exact - F_ggn).max():.1e}",
      " (entries up to", f"{np.abs(F_exact).max():.2f})")

# %%
# Monte-Carlo and empirical Fisher
# --------------------------------
# The same call with ``fisher="mc"`` back-propagates the gradient of
# :math:`-\log p(\hat y \mid x)` for ``mc_samples`` targets :math:`\hat y` drawn from the
# model (``K = S``, each scaled by :math:`1/\sqrt{S}`); ``fisher="empirical"`` uses the
# true labels (``K = 1``). The randomness comes only from the ``rng`` argument.
F_mc = fl.FisherOperator(fl.factor_batch(net, X, fisher="mc", mc_samples=1, rng=1)).to_dense()
F_emp = fl.empirical_fisher(net, X, y)


def rel_err(A, B):
    """(E1) relative Frobenius error of B as an estimate of A."""
    return np.linalg.norm(A - B) / np.linalg.norm(A)


print(f"relative error of the MC Fisher (S=1):  {rel_err(F_exact, F_mc):.3f}")
print(f"relative error of the empirical Fisher: {rel_err(F_exact, F_emp):.3f}")

# %%
# What the three matrices look like. The lines separate the two layers' blocks: the
# parameters are ordered layer by layer, and within a layer by the column-major ``vec``
# of its weight matrix (see the :doc:`conventions </guide/conventions>`). Colours are on a
# symmetric log scale, so that small entries show.
P0 = net.shapes[0][0] * net.shapes[0][1]
vmax = np.abs(F_exact).max()
norm = SymLogNorm(linthresh=vmax / 100, vmin=-vmax, vmax=vmax)  # shows small entries too
fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), layout="constrained")
for ax, M, title in zip(axes, [F_exact, F_mc, F_emp],
                        ["exact Fisher", "Monte-Carlo Fisher, S = 1", "empirical Fisher"]):
    im = ax.imshow(M, cmap="RdBu_r", norm=norm)
    ax.axhline(P0 - 0.5, color="k", lw=0.8)
    ax.axvline(P0 - 0.5, color="k", lw=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.8)

# %%
# How fast does the Monte-Carlo Fisher converge?
# ----------------------------------------------
# It is an unbiased estimate: its error falls like :math:`1/\sqrt{S}` as the number of
# sampled targets grows. The empirical Fisher does not converge to anything but itself:
# it is biased, because the true labels are not draws from the model. Labels sampled
# *from the model* turn it back into a one-sample Monte-Carlo Fisher.
S_values = [1, 4, 16] if FAST else [1, 2, 4, 8, 16, 32, 64]
seeds = range(2 if FAST else 5)
mc_err = [
    np.mean([
        rel_err(F_exact, fl.FisherOperator(
            fl.factor_batch(net, X, fisher="mc", mc_samples=S, rng=seed)).to_dense())
        for seed in seeds
    ])
    for S in S_values
]
cum = np.cumsum(prob, axis=1)
y_model = (rng.random((N, 1)) > cum).sum(axis=1)  # one label per input drawn from p(y|x)
emp_model = rel_err(F_exact, fl.empirical_fisher(net, X, y_model))

fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
ax.loglog(S_values, mc_err, "o-", label="Monte-Carlo Fisher (mean of seeds)")
ax.loglog(S_values, mc_err[0] / np.sqrt(S_values), "k:", label=r"$\propto 1/\sqrt{S}$")
ax.axhline(rel_err(F_exact, F_emp), color="C3", label="empirical Fisher, true labels")
ax.plot([1], [emp_model], "s", color="C2", label="empirical Fisher, labels from the model")
ax.set_xlabel("sampled targets per input, S")
ax.set_ylabel(r"$\|F - \tilde F\|_F / \|F\|_F$")
ax.legend(fontsize=8)
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
# * One object, the factor batch, gives all three matrices; only the back-propagated
#   vectors differ. The exact Fisher here *is* the Gauss-Newton matrix.
# * The Monte-Carlo Fisher is unbiased and converges like :math:`1/\sqrt{S}`; the papers
#   use it (``S = 1``) for training, and fimlab's studies compare each approximation with
#   the Fisher of the *same* sampled batch.
# * The empirical Fisher is a different matrix. fimlab offers it for comparison.
#
# Next: :doc:`KFAC <plot_02_kfac>`, the approximation that makes the Fisher cheap
# to invert.
