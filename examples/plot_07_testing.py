"""
7. Property-testing your own Kronecker approximation
====================================================

Suppose you have an idea for a cheaper KFAC: keep the input-side factor :math:`A` but
replace the output-side factor :math:`G` by its diagonal,

.. math::

   F_l \\approx A \\otimes \\operatorname{diag}(G),

so that the output side costs :math:`d_g` numbers and its inverse is free. Before you
study it, you want to know that your *code* computes what you meant, for networks of any
shape, any Fisher type, float32 as well as float64, one sample or many — not only for
the one case you looked at.

:mod:`fimlab.testing` is what fimlab's own test suite is built on, and it is public:

* :mod:`fimlab.testing.strategies` — `Hypothesis <https://hypothesis.readthedocs.io>`_
  strategies that draw factor batches, SPD/PSD matrices, Kronecker products with their
  factors, damping values (``pip install "fimlab[test]"``);
* :mod:`fimlab.testing.oracles` — slow, obviously correct dense references (the Fisher
  from per-sample Jacobian rows, KFAC by explicit sums, the best Kronecker product by an
  explicit rearrangement and an SVD, damped inverses);
* :func:`fimlab.testing.assert_operator_close` — checks an operator against a dense
  matrix: products from the right and the left, with vectors and matrices, the adjoint,
  symmetry, and that calling it twice gives the same bits.

This tutorial tests the idea in about a dozen lines.
"""

# %%
# The new approximation
# ---------------------
# A block-diagonal operator of Kronecker blocks, like fimlab's own: it gets products,
# solves and metrics for free.
import os

import matplotlib.pyplot as plt
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab.testing import assert_operator_close, oracles
from fimlab.testing import strategies as fst

FAST = os.environ.get("FIMLAB_FAST", "0") not in ("", "0")


def kfac_diagonal_g(batch):
    """KFAC with the output-side factor replaced by its diagonal: A ⊗ diag(G)."""
    xp = fl.backend.array_namespace(batch.a[0])
    blocks = []
    for a, g in zip(batch.a, batch.g):
        A, G = fl.kfac_factors(a, g)
        blocks.append(fl.KroneckerOperator([(A, xp.linalg.diagonal(G) * xp.eye(
            G.shape[0], dtype=G.dtype, device=fl.backend.device_of(G)))]))
    return fl.BlockDiagonalOperator(blocks)


# %%
# The property test
# -----------------
# Three properties, for every factor batch Hypothesis draws (any depth and width, any
# of the three Fisher types, 1 to 6 samples, float32 or float64):
#
# 1. the operator *is* its dense definition ``blockdiag(A_l ⊗ diag(G_l))``, built by the
#    oracle's explicit sums (products, adjoint, symmetry, no hidden state);
# 2. it is positive semi-definite;
# 3. no Kronecker product is closer to a Fisher block than the best one, so
#    ``‖F_l − A_l ⊗ diag(G_l)‖ ≥ ‖F_l − KPSVD_l‖`` — with the oracle's KPSVD, computed
#    by an SVD of the rearranged dense block (up to rounding: when both are exact, as
#    for one sample and one output, both errors are rounding noise).
errors = []  # (best, ours) per block, for the figure


@settings(max_examples=20 if FAST else 150, derandomize=True, deadline=None, database=None)
@given(batch=fst.factor_batches(n_samples=st.integers(1, 6), dtype=fst.dtypes()))
def test_kfac_diagonal_g(batch):
    op = kfac_diagonal_g(batch)
    ref = oracles.block_diagonal([np.kron(A, np.diag(np.diag(G)))
                                  for A, G in oracles.dense_kfac_factors(batch)])
    assert_operator_close(op, ref)                                       # 1.
    assert np.linalg.eigvalsh(ref).min() >= -1e-6 * np.abs(ref).max()   # 2.
    F = oracles.dense_fisher(batch)
    for l, (i, j) in enumerate(zip(batch.offsets[:-1], batch.offsets[1:])):
        Fl = F[i:j, i:j]
        _, best = oracles.dense_kpsvd(Fl, batch.a[l].shape[1], batch.g[l].shape[2])
        ours = ref[i:j, i:j]
        e_best, e_ours = np.linalg.norm(Fl - best), np.linalg.norm(Fl - ours)
        assert e_ours >= e_best - 1e-9 * np.linalg.norm(Fl)                # 3.
        if np.linalg.norm(Fl) > 0:
            errors.append((e_best / np.linalg.norm(Fl), e_ours / np.linalg.norm(Fl)))


test_kfac_diagonal_g()  # with pytest, the function is collected and run like any test
print(f"{len(errors)} blocks of random factor batches checked: all three properties hold")

# %%
# A test that cannot fail proves nothing. Break the approximation on purpose — a factor
# of two, as from a sum counted twice — and the same test finds a failing batch and
# reports it (Hypothesis shrinks it to a small one first):
_correct = kfac_diagonal_g
kfac_diagonal_g = lambda batch: 2.0 * _correct(batch)  # noqa: E731 - a deliberate bug
try:
    test_kfac_diagonal_g()
except AssertionError as err:
    print("the broken version fails:", str(err).splitlines()[0][:60], "...")
else:  # pragma: no cover - would mean the test is toothless
    raise RuntimeError("the property test did not catch a factor of two")
kfac_diagonal_g = _correct

# %%
# What the test measured
# ----------------------
# Each point is one Fisher block of one drawn batch: the error of the best Kronecker
# product (horizontal) against the error of ``A ⊗ diag(G)`` (vertical). Property 3 says
# every point lies on or above the diagonal; how far above is the price of the diagonal
# output factor.
best, ours = np.array(errors).T
fig, ax = plt.subplots(figsize=(5, 4.2))
ax.scatter(best, ours, s=14, alpha=0.7, label="one Fisher block of a drawn batch")
lim = max(1e-3, float(max(best.max(), ours.max()))) * 1.05
ax.plot([0, lim], [0, lim], "k--", lw=1, label="equal error (the bound)")
ax.set_xlim(0, lim)
ax.set_ylim(0, lim)
ax.set_xlabel(r"best Kronecker product: $\|F_l - \mathrm{KPSVD}_l\|_F / \|F_l\|_F$")
ax.set_ylabel(r"$\|F_l - A \otimes \mathrm{diag}(G)\|_F / \|F_l\|_F$")
ax.set_title("KFAC with a diagonal G, on Hypothesis-drawn batches", fontsize=10)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %%
# In your own test suite
# ----------------------
# Put the test function in a ``tests/test_*.py`` file and run ``pytest``: the ``@given``
# decorator makes it a test. Hypothesis options such as ``max_examples`` go into
# ``@settings`` or a profile; ``derandomize=True`` makes runs repeatable. The
# :doc:`testing guide </guide/testing>` lists every strategy, oracle and check.
