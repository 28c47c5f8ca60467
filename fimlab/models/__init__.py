"""Models that produce factor batches: the NumPy MLP and its likelihoods."""

from .likelihoods import LIKELIHOODS, Bernoulli, Categorical, Gaussian, get_likelihood
from .mlp import (
    ACTIVATIONS,
    FISHER_TYPES,
    MLP,
    empirical_fisher,
    exact_fisher,
    factor_batch,
)

__all__ = [
    "MLP", "factor_batch", "exact_fisher", "empirical_fisher", "ACTIVATIONS", "FISHER_TYPES",
    "LIKELIHOODS", "Categorical", "Gaussian", "Bernoulli", "get_likelihood",
]
