"""
8. Your own model: PyTorch and Flax
===================================

fimlab's curvature code sees factor batches, not models. :mod:`fimlab.torch` and
:mod:`fimlab.jax` build the factor batch of a model you already have — a
``torch.nn.Module``, a Flax or an Equinox model — in one call, and
:func:`fimlab.compare` turns it into a table of approximation errors. This tutorial

* trains a small PyTorch classifier with ``torch.optim.Adam`` and a Flax one with
  ``optax.adam`` on scikit-learn's 8×8 digits, measuring along the way how well KFAC and
  two KPSVD-family methods approximate the Fisher of each layer block;
* then trains the PyTorch model with a fimlab preconditioner (KFAC natural gradient)
  inside a plain PyTorch loop, through :func:`fimlab.torch.unflatten`.

It needs the extras: ``pip install "fimlab[torch,jax]"``.
"""

# %%
# Data and the three-line path
# ----------------------------
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
from flax import linen as lnn
from sklearn.datasets import load_digits
from torch import nn

import fimlab as fl
import fimlab.jax as flj
import fimlab.torch as flt

FAST = bool(os.environ.get("FIMLAB_FAST"))
ITERS = 30 if FAST else 400
EVERY = 10 if FAST else 40
METHODS = ["KFAC", "KPSVD", "KFAC-corrected"]

digits = load_digits()  # 1,797 8×8 images, classes 0..9
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
rng = np.random.default_rng(0)
torch.manual_seed(0)

model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(),
                      nn.Linear(16, 10))
loss_fn = nn.CrossEntropyLoss()

# %%
# The whole path from a PyTorch model to a table is three lines:
batch = flt.factor_batch(model, X[:256], likelihood=loss_fn, fisher="mc", rng=0)
table = fl.compare(batch, methods=METHODS)
print(table)

# %%
# Training with torch.optim.Adam, measuring as we go
# --------------------------------------------------
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
curves_torch = {m: [] for m in METHODS}
its = []
for it in range(ITERS + 1):
    idx = torch.from_numpy(rng.choice(len(X), 128, replace=False))
    if it % EVERY == 0:
        b = flt.factor_batch(model, Xt[idx], likelihood=loss_fn, fisher="mc", rng=it)
        t = fl.compare(b, methods=METHODS)
        its.append(it)
        for m in METHODS:
            curves_torch[m].append(np.mean([t.get(m, block=l)["e1"] for l in range(3)]))
    opt.zero_grad()
    loss_fn(model(Xt[idx]), yt[idx]).backward()
    opt.step()


# %%
# The same with Flax and optax
# ----------------------------
class Net(lnn.Module):
    @lnn.compact
    def __call__(self, x):
        x = jnp.tanh(lnn.Dense(32)(x))
        x = jnp.tanh(lnn.Dense(16)(x))
        return lnn.Dense(10)(x)


net = Net()
params = net.init(jax.random.PRNGKey(0), X[:2])
tx = optax.adam(3e-3)
state = tx.init(params)


@jax.jit
def train_step(params, state, xb, yb):
    def loss(p):
        z = net.apply(p, xb)
        return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()

    g = jax.grad(loss)(params)
    upd, state = tx.update(g, state)
    return optax.apply_updates(params, upd), state


curves_flax = {m: [] for m in METHODS}
for it in range(ITERS + 1):
    idx = rng.choice(len(X), 128, replace=False)
    if it % EVERY == 0:
        b = flj.factor_batch(net, X[idx], params=params, likelihood="categorical",
                             fisher="mc", rng=it)
        t = fl.compare(b, methods=METHODS)
        for m in METHODS:
            curves_flax[m].append(np.mean([t.get(m, block=l)["e1"] for l in range(3)]))
    params, state = train_step(params, state, X[idx], y[idx])

# %%
# A fimlab preconditioner in a plain PyTorch loop
# -----------------------------------------------
# :func:`fimlab.torch.flatten` turns the gradients into fimlab's parameter vector θ,
# ``KFAC(batch).solve`` gives the damped natural-gradient direction, and
# :func:`fimlab.torch.unflatten` hands it back as ``{name: tensor}``.
torch.manual_seed(0)
ngd_model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(),
                          nn.Linear(16, 10))
adam_model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(),
                           nn.Linear(16, 10))
adam_model.load_state_dict(ngd_model.state_dict())
adam = torch.optim.Adam(adam_model.parameters(), lr=3e-3)
loss_ngd, loss_adam = [], []
for it in range(ITERS):
    idx = torch.from_numpy(rng.choice(len(X), 128, replace=False))
    ngd_model.zero_grad()
    loss = loss_fn(ngd_model(Xt[idx]), yt[idx])
    loss.backward()
    b = flt.factor_batch(ngd_model, Xt[idx], likelihood=loss_fn, fisher="mc", rng=it)
    step = flt.unflatten(ngd_model, fl.KFAC(b).solve(flt.flatten(ngd_model), damping=1e-2))
    with torch.no_grad():
        for name, p in ngd_model.named_parameters():
            p -= 0.1 * step[name]
    loss_ngd.append(float(loss.detach()))
    adam.zero_grad()
    la = loss_fn(adam_model(Xt[idx]), yt[idx])
    la.backward()
    adam.step()
    loss_adam.append(float(la.detach()))
print(f"after {ITERS} iterations: KFAC-NGD loss {loss_ngd[-1]:.3f}, Adam {loss_adam[-1]:.3f}")

# %%
# The figure
# ----------
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
for m in METHODS:
    axes[0].plot(its, curves_torch[m], marker="o", ms=3, label=m)
    axes[1].plot(its, curves_flax[m], marker="o", ms=3, label=m)
axes[0].set_title("PyTorch + torch.optim.Adam")
axes[1].set_title("Flax + optax.adam")
for ax in axes[:2]:
    ax.set_xlabel("iteration")
    ax.set_ylabel("E1, mean over the 3 blocks")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
axes[2].plot(loss_ngd, label="KFAC natural gradient (fimlab)")
axes[2].plot(loss_adam, label="torch.optim.Adam")
axes[2].set_yscale("log")
axes[2].set_xlabel("iteration")
axes[2].set_ylabel("mini-batch loss")
axes[2].set_title("a fimlab preconditioner in a torch loop")
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()
