"""
The rearrangement, the Kronecker product SVD, and the four KPSVD methods
=========================================================================

A worked example for ``docs/kpsvd.md`` (docs/papers.md R1-R4 and the methods table).

1. A small dense matrix ``M = A ⊗ G + 0.3 B ⊗ C``: its rearrangement ``R(M)`` has rank
   two, so the Kronecker product SVD recovers it with two terms, and truncating to one
   term leaves exactly ``σ₂`` (Eckart–Young).
2. A Fisher block of a small network: the singular values of ``R(F_i)`` (from the
   ``m × m`` Gram problem, checked against the dense ``R(F_i)``), and the relative
   Frobenius error (E1) of KFAC, KPSVD, KFAC-corrected, Deflation and Lanczos with the
   converged (``"exact"``) and the papers' (``"paper"``) solvers.

Run ``python examples/plot_kpsvd.py``; ``FIMLAB_FAST=1`` makes it a few-second run (the
test suite does that), ``FIMLAB_OUT=DIR`` says where ``plot_kpsvd.png`` goes.
"""

import os
import warnings
from pathlib import Path

import numpy as np

import fimlab as fl
from fimlab import kron
from fimlab.plotting import method_color, plt

FAST = os.environ.get("FIMLAB_FAST", "") not in ("", "0")
OUT = Path(os.environ.get("FIMLAB_OUT", "."))
np.set_printoptions(precision=3, suppress=True)

# %%
# 1. The rearrangement of a small matrix
# --------------------------------------
# ``M`` is 6 × 6, a 3 × 3 grid of 2 × 2 blocks (d_a = 3, d_g = 2). ``R(M)`` has one row
# ``vec(M_kl)ᵀ`` per block, so ``R(A ⊗ G) = vec(A) vec(G)ᵀ`` is rank one, and a sum of
# two Kronecker products has a rank-two rearrangement.
A = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
G = np.array([[1.0, 0.5], [0.5, 1.0]])
B = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
C = np.array([[1.0, 0.0], [0.0, -1.0]])
M = np.kron(A, G) + 0.3 * np.kron(B, C)
R = kron.rearrange(M, 3, 2)
s = np.linalg.svd(R, compute_uv=False)
print("R(M) =\n", R)
print("singular values of R(M):", s)

res = kron.kpsvd(M, 3, 2)  # every non-zero term: exact recovery
print("KPSVD rank:", res.rank, " max |M - Σ terms| =",
      np.abs(M - sum(np.kron(X, Y) for X, Y in res.terms)).max())
A1, G1 = kron.nearest_kronecker(M, 3, 2)  # the best single Kronecker product
err = np.linalg.norm(M - np.kron(A1, G1))
print(f"‖M − A₁⊗G₁‖_F = {err:.6f}   σ₂ = {s[1]:.6f}   (Eckart–Young: equal)")

# %%
# 2. A Fisher block and the four methods
# --------------------------------------
# The Monte-Carlo Fisher of a small tanh network on random inputs (the papers' choice of
# Fisher). ``R(F_i)`` is never formed by the methods; here it is formed once (small
# block) to check the singular values that the Gram route reports.
sizes = [12, 10, 6] if FAST else [30, 20, 10]
N = 64 if FAST else 256
net = fl.MLP(sizes, activation="tanh", likelihood="categorical", seed=0)
X = np.random.default_rng(0).normal(size=(N, sizes[0]))
batch = fl.factor_batch(net, X, fisher="mc", rng=np.random.default_rng(1))
F = fl.FisherOperator(batch)
l = 0
a, g = batch.a[l], batch.g[l]
n_sv = 40
gram = kron.RearrangedGram(a, g)
sig, _, _ = gram.top(min(n_sv, gram.numerical_rank(n_sv)))
sig_dense = np.linalg.svd(kron.RearrangedFisher(a, g).to_dense(), compute_uv=False)
print("σ(R(F_0)) Gram vs dense, max rel diff:",
      np.max(np.abs(sig - sig_dense[: sig.size])) / sig_dense[0])

methods = {
    "KFAC": lambda s: fl.KFAC(batch),
    "KPSVD": lambda s: fl.KPSVD(batch, solver=s),
    "KFAC-corrected": lambda s: fl.KFACCorrected(batch, solver=s),
    "Deflation": lambda s: fl.Deflation(batch, solver=s),
    "Lanczos": lambda s: fl.Lanczos(batch, solver=s),
}
e1 = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", fl.ConvergenceWarning)  # the papers' Lanczos budget
    for name, build in methods.items():
        for solver in ("exact", "paper"):
            op = build(solver)
            e1[name, solver] = [fl.relative_frobenius_error(F, op, block=b)
                                for b in range(batch.n_layers)]
for (name, solver), e in e1.items():
    print(f"{name:15s} {solver:6s} E1 per block: {np.round(e, 4)}")

# %%
# The figure: left, the spectrum of ``R(F_0)`` and the Eckart–Young error of rank-r
# KPSVD; right, E1 of every method on every block (solid bars: exact solver, hatched:
# the papers' solver).
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
r = np.arange(1, sig.size + 1)
ax1.semilogy(r, sig / sig[0], "o-", ms=3, color="0.3", label="σ_r / σ_1 of R(F_0)")
tail = np.sqrt(np.cumsum((sig_dense**2)[::-1])[::-1]) / np.linalg.norm(sig_dense)
ax1.semilogy(r[:-1], tail[1: sig.size], "s-", ms=3, color=method_color("KPSVD"),
             label="E1 of rank-r KPSVD = √(Σ_{k>r} σ_k²) / ‖F_0‖")
ax1.set_xlabel("r")
ax1.set_title(f"block 0: d_a={batch.d_a[0]}, d_g={batch.d_g[0]}, m={N}")
ax1.legend(fontsize=8)
bars = [("KFAC", "exact")] + [(n, s) for n in list(methods)[1:] for s in ("exact", "paper")]
nb = len(bars) + 1
for b in range(batch.n_layers):
    for j, (name, solver) in enumerate(bars):
        ax2.bar(b * nb + j, e1[name, solver][b], 0.8, color=method_color(name),
                hatch="//" if solver == "paper" else None, edgecolor="k", lw=0.3,
                label=(name if solver == "exact" else f"{name}, paper solver")
                if b == 0 else None)
lo = min(min(v) for v in e1.values())
ax2.set_ylim(0.9 * lo, 1.02 * max(max(v) for v in e1.values()))
ax2.set_xticks([b * nb + (nb - 2) / 2 for b in range(batch.n_layers)],
               [f"block {b}" for b in range(batch.n_layers)])
ax2.set_ylabel("E1 = ‖F_i − F̃_i‖_F / ‖F_i‖_F")
ax2.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
ax2.set_title("relative Frobenius error (hatched: the papers' solver)")
fig.tight_layout()
OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / "plot_kpsvd.png", dpi=110)
print("wrote", OUT / "plot_kpsvd.png")
