"""
6. Natural-gradient training compared with SGD and Adam
=======================================================

Everything so far measured matrices and directions. What the papers care about in the
end is training: does preconditioning the gradient with an approximation of the Fisher,

.. math::

   \\theta \\leftarrow \\theta - \\eta\\, (\\tilde F + \\lambda I)^{-1} \\nabla L(\\theta),

reach a lower loss sooner than the first-order methods? This tutorial trains a small deep
auto-encoder — the papers' benchmark, scaled down to scikit-learn's bundled 8×8 digits —
with four optimizers from :mod:`fimlab.optim`:

* **SGD** with momentum 0.9, and **Adam**, the first-order baselines;
* **NGD-KFAC**: natural gradient preconditioned by KFAC, with the papers' setup (the
  curvature from a quarter of the mini-batch with targets sampled from the model, moving
  averages of the factors, KL-clipping, momentum);
* **NGD-exact**: the exact natural gradient of the curvature batch, by Woodbury
  (docs/papers.md F3) — affordable here because the network is tiny, and the reference that
  every approximation tries to match.

The learning rates were picked from a small grid on this problem (SGD: 0.1, 0.5 diverges;
Adam: 3e-3 and 1e-2; NGD: 0.1, 0.3 and 1). ``fimlab train`` and ``fimlab sweep`` do this
properly, over seeds, at the papers' sizes.
"""

# %%
# The data and the network
# ------------------------
import os
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import fimlab as fl
from fimlab.datasets import load_digits
from fimlab.optim import NGD, SGD, Adam

# Small matrices: one BLAS thread is faster than several (a tutorial run as a script
# with two OpenBLAS threads took 10x longer on a busy 2-core machine).
threadpool_limits(1)

FAST = os.environ.get("FIMLAB_FAST", "0") not in ("", "0")
EPOCHS = 2 if FAST else 15
BATCH = 100

data = load_digits()  # pixel values in [0, 1]; the targets are the inputs
if FAST:
    data = data.subset(n_train=300, n_val=100)
X, X_val = data.X_train, data.X_val
sizes = [64, 32, 8, 32, 64]  # encoder 64-32-8, decoder 8-32-64
print(data, "| network", "-".join(map(str, sizes)), "with Bernoulli outputs")

# %%
# One training loop for every optimizer
# -------------------------------------
# An optimizer's ``step(X, y)`` computes the loss and gradient of the mini-batch and
# updates the network in place. The natural-gradient optimizer also builds, every
# ``stat_period`` iterations, the factor batch of its curvature batch and the damped
# inverse of its preconditioner.
OPTIMIZERS = {
    "SGD (momentum 0.9)": lambda net: SGD(net, lr=0.1, momentum=0.9),
    "Adam": lambda net: Adam(net, lr=1e-2),
    "NGD-KFAC": lambda net: NGD(net, "KFAC", lr=0.3, damping=1e-2, stat_period=5),
    "NGD-exact": lambda net: NGD(net, "exact", lr=0.3, damping=1e-1),
}


def train(make_optimizer, seed=0):
    net = fl.MLP(sizes, activation="tanh", likelihood="bernoulli", seed=seed)
    opt = make_optimizer(net)
    order = np.random.default_rng(seed)  # the same mini-batches for every optimizer
    losses, times = [net.loss(X_val, X_val)], [0.0]
    start = time.perf_counter()
    for _ in range(EPOCHS):
        perm = order.permutation(len(X))
        for i in range(0, len(X) - BATCH + 1, BATCH):
            batch = X[perm[i : i + BATCH]]
            opt.step(batch, batch)
        times.append(time.perf_counter() - start)
        losses.append(net.loss(X_val, X_val))
    return np.array(losses), np.array(times)


results = {name: train(make) for name, make in OPTIMIZERS.items()}
for name, (losses, times) in results.items():
    print(f"{name:20s} validation loss {losses[0]:6.2f} -> {losses[-1]:6.2f} "
          f"in {times[-1]:5.2f} s")

# %%
# The papers' figure: loss against epoch and against time
# -------------------------------------------------------
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
for k, (name, (losses, times)) in enumerate(results.items()):
    ax1.plot(np.arange(len(losses)), losses, "o-", ms=3, color=f"C{k}", label=name)
    ax2.plot(times, losses, "o-", ms=3, color=f"C{k}", label=name)
ax1.set_xlabel("epoch")
ax2.set_xlabel("wall time (s, this machine)")
ax1.set_ylabel("validation loss (mean negative log-likelihood)")
ax1.set_yscale("log")
ax1.legend(fontsize=8)
ax1.set_title("per epoch", fontsize=9)
ax2.set_title("per second", fontsize=9)
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
# * Per epoch, the natural-gradient steps make more progress than SGD and Adam here: the
#   preconditioner rescales the step to the curvature of the model, layer by layer.
#   KFAC does about as well as the exact natural gradient of the curvature batch.
# * Per second the comparison depends on the network's size and on the machine: on a
#   network this small every natural-gradient step pays a fixed cost (a factor batch,
#   small eigendecompositions) comparable with the gradient itself. The papers' claim is
#   about the large auto-encoders; the results pages report what ``fimlab train``
#   measures there.
# * The KPSVD family and the two-level corrections plug into the same optimizer:
#   ``NGD(net, method)`` with any name of ``fimlab.optim.ngd_methods()``, and
#   ``two_level={...}``.
