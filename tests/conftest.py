"""Shared test configuration: Hypothesis profiles, tolerances, small networks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Deterministic in CI, randomised locally (FIMLAB_HYPOTHESIS=random).
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("random", deadline=None, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FIMLAB_HYPOTHESIS", "ci"))


def rtol_for(dtype, scale: float = 1.0) -> float:
    """Default relative tolerance: ``4·√eps(dtype)`` times ``scale`` (SciPy's habit)."""
    eps = np.finfo(np.dtype(str(dtype).rsplit(".", 1)[-1])).eps
    return 4.0 * float(np.sqrt(eps)) * scale


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: small MLP cases shared by the test modules: (layer sizes, activation, likelihood)
SMALL_NETS = [
    ([4, 5, 3], "tanh", "categorical"),
    ([3, 4, 4, 2], "relu", "gaussian"),
    ([5, 3, 4], "sigmoid", "bernoulli"),
    ([3, 3, 3, 3], "linear", "gaussian"),
]


def make_targets(likelihood: str, N: int, C: int, rng):
    if likelihood == "categorical":
        return rng.integers(0, C, size=N)
    if likelihood == "gaussian":
        return rng.normal(size=(N, C))
    return (rng.random((N, C)) < 0.5).astype(float)


@pytest.fixture(params=range(len(SMALL_NETS)), ids=[f"{s}-{a}-{l}" for s, a, l in SMALL_NETS])
def small_net(request):
    import fimlab as fl

    sizes, act, lik = SMALL_NETS[request.param]
    return fl.MLP(sizes, activation=act, likelihood=lik, seed=request.param)
