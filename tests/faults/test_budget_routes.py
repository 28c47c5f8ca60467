"""The memory budget and the cost-chosen routes of the whole-network Fisher solve and
norm: every route agrees with dense NumPy, ``"auto"`` takes the cheapest route that fits,
an explicit route that does not fit is refused before it starts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fimlab as fl
from fimlab._budget import parse_bytes
from fimlab._fisher_routes import norm_route, route_costs, solve_route


def _fisher(sizes, n, fisher="exact", seed=0):
    net = fl.MLP(sizes, activation="tanh", likelihood="categorical", seed=seed)
    X = np.random.default_rng(seed).normal(size=(n, sizes[0]))
    return fl.FisherOperator(fl.factor_batch(net, X, fisher=fisher, rng=seed))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 30), h=st.integers(1, 6), c=st.integers(2, 4),
       fisher=st.sampled_from(["exact", "mc"]), lam=st.floats(1e-3, 1.0))
def test_every_route_matches_dense_numpy(n, h, c, fisher, lam):
    F = _fisher([3, h, c], n, fisher)
    D = F.to_dense()
    v = np.random.default_rng(n).normal(size=F.shape[0])
    ref = np.linalg.solve(D + lam * np.eye(len(v)), v)
    for route in ("gram", "dense", "cg"):
        x = F.solve(v, lam, route=route, **({"tol": 1e-13, "maxiter": 5000}
                                            if route == "cg" else {}))
        assert np.allclose(x, ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max()), route
    nF = np.sum(D * D)
    for route in ("gram", "dense", "chunked"):
        assert F.frobenius_norm_sq(route=route) == pytest.approx(nF, rel=1e-10), route


def test_auto_takes_the_cheaper_route_that_fits():
    tall = _fisher([30, 20, 10], 200)  # N·K = 2,000 > P = 830: dense is cheaper
    wide = _fisher([30, 20, 10], 5)  # N·K = 50 < P: Gram is cheaper
    assert solve_route(tall.batch) == "dense"  # Cholesky of P×P, not of (N·K)×(N·K)
    assert solve_route(wide.batch) == "gram" and norm_route(wide.batch) == "gram"
    nc = route_costs(tall.batch, "norm")  # the norm: fewer flops by the Gram route here
    assert norm_route(tall.batch) == min(nc, key=lambda r: nc[r][1])
    c = route_costs(tall.batch)
    with fl.memory_budget(c["dense"][0] - 1):  # neither fits: the matrix-free routes
        assert solve_route(tall.batch) == "cg"
        with pytest.raises(fl.DenseMemoryError, match="route='cg'"):
            tall.solve(np.ones(tall.shape[0]), 1e-2, route="dense")
    with fl.memory_budget(route_costs(tall.batch, "norm")["dense"][0] - 1):
        assert norm_route(tall.batch) in ("chunked", "gram")


def test_budget_sources(monkeypatch):
    monkeypatch.delenv("FIMLAB_MEMORY_BUDGET", raising=False)
    default = fl.get_memory_budget()
    assert 0 < default <= 2 * 1024**3
    monkeypatch.setenv("FIMLAB_MEMORY_BUDGET", "1.5GiB")
    assert fl.get_memory_budget() == int(1.5 * 1024**3)
    with fl.memory_budget(1000):
        assert fl.get_memory_budget() == 1000
    assert fl.get_memory_budget() == int(1.5 * 1024**3)
    monkeypatch.setenv("FIMLAB_MEMORY_BUDGET", "-3")
    with pytest.raises(fl.OptionError, match="FIMLAB_MEMORY_BUDGET"):
        fl.get_memory_budget()
    assert parse_bytes("512 MB") == 512 * 1000**2 and parse_bytes(4096) == 4096
    for bad in ("", "lots", float("nan"), 0, True):
        with pytest.raises(fl.OptionError):
            parse_bytes(bad)


def test_dense_guards_follow_the_budget():
    F = _fisher([3, 4, 3], 5)
    with fl.memory_budget(100):
        with pytest.raises(fl.DenseMemoryError, match="set_memory_budget"):
            F.to_dense()
    assert F.to_dense().shape == F.shape
