"""Models that produce factor batches: the NumPy MLP, layered networks (convolution,
pooling, batch norm) and their likelihoods."""

from .likelihoods import LIKELIHOODS, Bernoulli, Categorical, Gaussian, get_likelihood
from .mlp import (
    ACTIVATIONS,
    FISHER_TYPES,
    MLP,
    empirical_fisher,
    exact_fisher,
    factor_batch,
)
from .network import (
    Network,
    cuda_convnet,
    deep_bn_fashion64,
    deep_bn_linear,
    deep_bn_mnist13,
    network_factor_batch,
    small_resnet,
)

__all__ = [
    "MLP", "factor_batch", "exact_fisher", "empirical_fisher", "ACTIVATIONS", "FISHER_TYPES",
    "LIKELIHOODS", "Categorical", "Gaussian", "Bernoulli", "get_likelihood",
    "Network", "network_factor_batch", "cuda_convnet", "deep_bn_linear", "deep_bn_mnist13",
    "deep_bn_fashion64", "small_resnet",
]
