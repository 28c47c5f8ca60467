"""Tools for testing Kronecker-factored curvature code: strategies, oracles, assertions.

fimlab's own test suite is built on these, and they are public so that a researcher can
property-test a new approximation the same way:

- :mod:`fimlab.testing.strategies` — `Hypothesis <https://hypothesis.readthedocs.io>`_
  strategies: SPD/PSD matrices of controlled condition number and rank, Kronecker
  products and sums with their exact factors, matrices on a rearrangement grid, factor
  batches, small MLPs with targets, damping values; each takes an array namespace
  ``xp``. Needs Hypothesis (``pip install "fimlab[test]"``) and is imported on its own:
  ``from fimlab.testing import strategies``.
- :mod:`fimlab.testing.oracles` — naive dense references: the Fisher from explicit
  per-sample Jacobian rows or finite differences, dense KFAC, the Kronecker product SVD
  by explicit rearrangement and ``numpy.linalg.svd``, dense damped inverses per rule.
- :mod:`fimlab.testing.assertions` — :func:`assert_operator_close` and
  :func:`default_tolerances`.
- :mod:`fimlab.testing.cases` — fixed tiny networks (:data:`SMALL_NETS`) and
  :func:`make_targets`, :func:`small_net`.

Importing :mod:`fimlab.testing` needs neither Hypothesis nor pytest.

Examples
--------
>>> import numpy as np, fimlab as fl
>>> from fimlab.testing import assert_operator_close, oracles
>>> net = fl.MLP([3, 4, 2], seed=0)
>>> batch = fl.factor_batch(net, np.random.default_rng(0).normal(size=(8, 3)))
>>> assert_operator_close(fl.KFAC(batch), oracles.dense_kfac(batch))
>>> assert_operator_close(fl.FisherOperator(batch), oracles.dense_fisher(batch))
"""

from __future__ import annotations

from . import assertions, cases, oracles
from .assertions import Tolerances, assert_operator_close, default_tolerances, rtol_for
from .cases import ACTIVATIONS, LIKELIHOODS, SMALL_NETS, make_targets, small_net
from .oracles import (
    block_diagonal,
    dense_damped_inverse,
    dense_fisher,
    dense_kfac,
    dense_kfac_factors,
    dense_kpsvd,
    fd_gradient,
    finite_difference_fisher,
    jacobian_rows,
    output_hessians,
    output_jacobians,
    per_sample_loss_gradients,
    rearrange,
)

__all__ = [
    # assertions
    "assert_operator_close", "default_tolerances", "rtol_for", "Tolerances",
    # oracles
    "dense_fisher", "jacobian_rows", "finite_difference_fisher", "dense_kfac",
    "dense_kfac_factors", "dense_kpsvd", "rearrange", "dense_damped_inverse",
    "block_diagonal", "fd_gradient", "output_jacobians", "output_hessians",
    "per_sample_loss_gradients",
    # fixed cases
    "SMALL_NETS", "LIKELIHOODS", "ACTIVATIONS", "make_targets", "small_net",
    # modules
    "assertions", "oracles", "cases",
]


def __getattr__(name: str):
    # ``fimlab.testing.strategies`` on first use (it needs Hypothesis, the rest does not)
    if name == "strategies":
        import importlib

        return importlib.import_module(f"{__name__}.strategies")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
