"""Fixed small cases shared by property tests: tiny networks and their targets.

These need neither Hypothesis nor pytest: :data:`SMALL_NETS` lists four tiny MLPs that
cover every activation and likelihood, and :func:`make_targets` draws targets of the
right kind for a likelihood.

Examples
--------
>>> import numpy as np
>>> from fimlab.testing import SMALL_NETS, make_targets
>>> sizes, activation, likelihood = SMALL_NETS[0]
>>> sizes, activation, likelihood
([4, 5, 3], 'tanh', 'categorical')
>>> make_targets(likelihood, 4, sizes[-1], np.random.default_rng(0)).shape
(4,)
"""

from __future__ import annotations

import numpy as np

from .._errors import UnknownNameError

__all__ = ["SMALL_NETS", "LIKELIHOODS", "ACTIVATIONS", "make_targets", "small_net"]

#: small MLP cases: (layer sizes, activation, likelihood); every activation and
#: likelihood appears at least once
SMALL_NETS = [
    ([4, 5, 3], "tanh", "categorical"),
    ([3, 4, 4, 2], "relu", "gaussian"),
    ([5, 3, 4], "sigmoid", "bernoulli"),
    ([3, 3, 3, 3], "linear", "gaussian"),
]

#: the likelihoods of :class:`fimlab.MLP`
LIKELIHOODS = ("categorical", "gaussian", "bernoulli")

#: the hidden-layer activations of :class:`fimlab.MLP`
ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")


def make_targets(likelihood: str, N: int, C: int, rng) -> np.ndarray:
    """Targets of ``N`` samples for a network with ``C`` outputs.

    Parameters
    ----------
    likelihood : {"categorical", "gaussian", "bernoulli"}
    N, C : int
        Number of samples and of outputs.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        Class indices ``(N,)`` (categorical), standard normal ``(N, C)`` floats
        (gaussian), or 0/1 floats ``(N, C)`` (bernoulli), as :func:`fimlab.factor_batch`
        expects them.

    Raises
    ------
    UnknownNameError
        For another likelihood name.

    Examples
    --------
    >>> import numpy as np
    >>> make_targets("bernoulli", 2, 3, np.random.default_rng(1)).shape
    (2, 3)
    """
    if likelihood == "categorical":
        return rng.integers(0, C, size=N)
    if likelihood == "gaussian":
        return rng.normal(size=(N, C))
    if likelihood == "bernoulli":
        return (rng.random((N, C)) < 0.5).astype(float)
    raise UnknownNameError(
        f"unknown likelihood {likelihood!r}; expected one of {', '.join(LIKELIHOODS)}"
    )


def small_net(i: int, perturb: float = 0.1):
    """The MLP of case ``SMALL_NETS[i]`` (seed ``i``) with every parameter moved by
    ``perturb`` times a standard normal draw (seed ``i``).

    The perturbation gives non-zero biases: with zero biases a ReLU layer fed all-zero
    inputs sits exactly on its kink, where finite differences see the average of the two
    one-sided slopes.

    Examples
    --------
    >>> from fimlab.testing import small_net
    >>> net = small_net(1)
    >>> net.layer_sizes, net.activations[0]
    ([3, 4, 4, 2], 'relu')
    """
    import fimlab as fl

    sizes, act, lik = SMALL_NETS[i]
    net = fl.MLP(sizes, activation=act, likelihood=lik, seed=i)
    theta = net.get_flat()
    net.set_flat(theta + perturb * np.random.default_rng(i).normal(size=theta.size))
    return net
