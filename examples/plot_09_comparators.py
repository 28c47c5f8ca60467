"""
9. All the approximations side by side, and their spectra
=========================================================

How close does each approximation of the Fisher come, on one network and one curvature
batch? This tutorial builds every registered approximation — KFAC and the KPSVD family,
their eigenvalue corrections (EKFAC, and the same correction of rank-one KPSVD), the exact
diagonal, the exact diagonal blocks, and the best rank-:math:`k` approximation of the whole
Fisher with and without the diagonal of the rest — and compares them in two ways:

* the relative Frobenius error E1, per block and for the whole network, computed exactly
  without forming any block (Gram identities);
* the spectral density of the preconditioned Fisher
  :math:`\\tilde F_\\lambda^{-1/2} F_\\lambda \\tilde F_\\lambda^{-1/2}`, by stochastic
  Lanczos quadrature: a perfect preconditioner puts every eigenvalue at 1.
"""

# %%
# One network, one curvature batch
# --------------------------------
import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import fimlab as fl
from fimlab.approx import build_approximation
from fimlab.plotting import method_color

FAST = os.environ.get("FIMLAB_FAST", "0") not in ("", "0")
N = 48 if FAST else 256
X = load_digits().data[:N] / 16.0
net = fl.MLP([64, 16 if FAST else 32, 10], activation="tanh", likelihood="categorical", seed=0)
batch = fl.factor_batch(net, X, fisher="mc", rng=np.random.default_rng(0))
F = fl.FisherOperator(batch)
print(batch)

# %%
# Errors E1
# ---------
# ``EigenCorrected`` never does worse than the rank-one term it starts from (the theory
# page explains why); ``BlockExact`` has zero error on every block, and its whole-network
# error is the share of the Fisher outside the diagonal blocks — a floor for every
# block-diagonal method. ``LowRank`` is not block-diagonal: it can beat that floor.
names = ["KFAC", "EKFAC", "KPSVD", "EigenCorrected(KPSVD)", "Deflation", "Diagonal",
         "BlockExact", "LowRank", "LowRank+Diagonal"]
ops = {name: build_approximation(name, batch) for name in names}
rows = []
for name, op in ops.items():
    e = [fl.relative_frobenius_error(F, op, block=l) for l in range(batch.n_layers)]
    rows.append((name, *e, fl.relative_frobenius_error(F, op)))
print(f"{'method':<24}" + "".join(f"{'block ' + str(l):>10}" for l in range(batch.n_layers))
      + f"{'whole':>10}")
for r in rows:
    print(f"{r[0]:<24}" + "".join(f"{x:>10.4f}" for x in r[1:]))

# %%
# Spectral densities
# ------------------
# The Fisher of a mini-batch is low-rank: most of its eigenvalues are exactly zero, a
# share reported separately (the axis is logarithmic). The preconditioned densities use
# the damping λ of a natural-gradient step.
lam = 1e-3
probes, steps = (3, 15) if FAST else (8, 40)
dF = fl.spectral_density(F, probes=probes, steps=steps, rng=0, outliers=5)
print(f"zero mass of F: estimated {dF.zero_mass:.3f}, exact {dF.exact_zero_mass:.3f}; "
      f"largest eigenvalues {np.round(dF.outliers, 4)}")

fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4))
x = np.arange(len(rows))
ax0.bar(x, [r[-1] for r in rows], color=[method_color(r[0]) for r in rows])
ax0.set_xticks(x, [r[0] for r in rows], rotation=60, ha="right", fontsize=7)
ax0.set_ylabel("E1, whole network")
ax1.plot(dF.grid, dF.density, "k", lw=2, label=f"Fisher (zero mass {dF.zero_mass:.2f})")
for name in ("KFAC", "EKFAC", "Diagonal", "LowRank"):
    d = fl.spectral_density(ops[name], probes=probes, steps=steps, rng=1)
    ax1.plot(d.grid, d.density, color=method_color(name), label=name)
ax1.set_yscale("symlog", linthresh=1e-3)
ax1.set_xlabel("log10 eigenvalue")
ax1.set_title("spectral densities")
ax1.legend(fontsize=7)
for name, op in ops.items():
    try:
        d = fl.spectral_density(F, probes=probes, steps=steps, rng=2, preconditioner=op,
                                damping=lam, rule="exact")
    except fl.ShapeError as exc:  # Kronecker sums: no inverse square root, says why
        print(f"{name}: {str(exc)[:70]}...")
        continue
    ax2.plot(d.grid, d.density, color=method_color(name), label=name)
ax2.axvline(0.0, color="k", lw=0.5)
ax2.set_yscale("symlog", linthresh=1e-3)
ax2.set_xlabel("log10 eigenvalue of F̃_λ^{-1/2} F_λ F̃_λ^{-1/2}")
ax2.set_title(f"preconditioned densities, λ = {lam:g}")
ax2.legend(fontsize=7)
fig.tight_layout()
plt.show()
