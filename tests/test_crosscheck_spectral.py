"""Registry cross-checks (issue 21) for :mod:`fimlab.spectral`: the exact paths of
``spectral_density`` (``exact_zero_mass``, ``outliers``) vs ``eigvalsh`` of the dense
Fisher, the SLQ moments vs ``mean_p vᵀF^j v`` over the same Rademacher probes, the inverse
square roots of every supported approximation vs dense eigendecompositions (and squared,
vs ``solve``), the preconditioned SLQ moments, and the trace / diagonal estimators vs
their formulas with the same draws — on the contexts of
``tests/test_crosscheck_comparators.py`` (dense and convolution batches, every Fisher type,
``K > 1``). ``tests/test_crosscheck.py::test_registry_is_complete`` reads this module too.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_crosscheck as base
import test_crosscheck_comparators as comp

import fimlab.spectral as spectral_mod
from fimlab.approx import KFAC
from fimlab.curvature import FisherBlock, FisherOperator
from fimlab.spectral import SpectralDensity

LAM, KR = comp.LAM, comp.KR
REGISTRY: list = []


def add(*args, **kw):
    REGISTRY.append(comp.Entry(*args, **kw))


_V, _cached, _copy_batch, _layers = comp._V, comp._cached, comp._copy_batch, comp._layers
_ekfac, _diag, _bex, _lr = comp._ekfac, comp._diag, comp._bex, comp._lr
_kfc_def, _ekfac_def, _blocks_def = comp._kfc_def, comp._ekfac_def, comp._blocks_def
_lowrank_def, _mpow = comp._lowrank_def, comp._mpow


# -- spectral: exact paths, inverse square roots, SLQ and the trace estimators ------------
_PROBES = 3


def _probe_vectors(seed, n, p):
    rng = np.random.default_rng(seed)
    return [rng.choice(np.array([-1.0, 1.0]), size=n) for _ in range(p)]


def _exact_paths(op, n_out=3):
    d = spectral_mod.spectral_density(op, probes=1, steps=4, rng=0, outliers=n_out)
    return np.concatenate([[d.exact_zero_mass], d.outliers])


def _exact_paths_def(D, n_out=3):
    ev = np.sort(np.linalg.eigvalsh(D))[::-1]
    rank = int(np.sum(ev > ev[0] * 1e-9))
    return np.concatenate([[1.0 - rank / D.shape[0]], ev[:min(n_out, rank)]])


add("spectral-exact-paths", ("spectral.spectral_density",),
    {"FisherOperator": lambda c: _exact_paths(c.op),
     "FisherOperator(copy)": lambda c: _exact_paths(FisherOperator(_copy_batch(c.batch)))},
    lambda c: _exact_paths_def(c.F), rtol=1e-8, atol=1e-10)
add("spectral-exact-paths-blocks", ("spectral.spectral_density",),
    {"FisherBlock": lambda c: [_exact_paths(FisherBlock(c.batch, l))
                               for l in range(c.batch.n_layers)],
     "FisherOperator(layer(l))": lambda c: [_exact_paths(FisherOperator(c.batch.layer(l)))
                                           for l in range(c.batch.n_layers)]},
    lambda c: _layers(c, lambda c, l: _exact_paths_def(c.block(l))), rtol=1e-8, atol=1e-10)


def _slq_moments(op, steps, js=(0, 1, 2, 3)):
    d = spectral_mod.spectral_density(op, probes=_PROBES, steps=steps, rng=4)
    return np.array([d.moment(j) for j in js])


def _slq_moments_def(D, js=(0, 1, 2, 3)):
    vs = _probe_vectors(4, D.shape[0], _PROBES)
    return np.array([np.mean([v @ np.linalg.matrix_power(D, j) @ v for v in vs]) for j in js])


add("slq-moments", ("spectral.spectral_density", "SpectralDensity.moment",
                    "spectral.SpectralDensity"),
    {"operator, full Krylov space": lambda c: _slq_moments(c.op, c.batch.n_params),
     "dense array, full Krylov space": lambda c: _slq_moments(c.op.to_dense(), c.batch.n_params),
     "operator, 2 steps (exact to degree 3)": lambda c: _slq_moments(c.op, 2)},
    lambda c: _slq_moments_def(c.F), rtol=1e-8, atol=1e-10)

# approximations with an inverse square root: (builder, dense F̃ definition, rule)
_ISQRT = {
    "KFAC factor": (lambda c: KFAC(c.batch), "factor", None),
    "KFAC pi": (lambda c: KFAC(c.batch), "pi", None),
    "KFAC exact": (lambda c: KFAC(c.batch), "exact",
                   lambda c: _blocks_def(c, lambda c, l: np.kron(*_kfc_def(c, l)))),
    "EKFAC": (_ekfac, "exact", lambda c: _blocks_def(c, _ekfac_def)),
    "Diagonal": (_diag, "factor", lambda c: np.diag(np.diag(c.F))),
    "BlockExact": (_bex, "exact", lambda c: _blocks_def(c, lambda c, l: c.block(l))),
    "Fisher": (lambda c: c.op, "exact", lambda c: c.F),
    "LowRank": (_lr, "exact", _lowrank_def),
    "LowRank (lanczos)": (lambda c: _lr(c, "lanczos"), "exact", _lowrank_def),
}


def _isqrt_def(c, name):
    _, rule, dense = _ISQRT[name]
    if dense is not None:
        return _mpow(dense(c) + LAM * np.eye(c.F.shape[0]))
    out = []
    for l in range(c.batch.n_layers):
        A, G = _kfc_def(c, l)
        s, pi = np.sqrt(LAM), 1.0
        if rule == "pi":
            pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
        out.append(np.kron(_mpow(A, pi * s), _mpow(G, s / pi)))
    return base._blockdiag(out)


def _isqrt_entry(name):
    build, rule, _ = _ISQRT[name]

    def S(c):
        return spectral_mod.inverse_sqrt_map(build(c), LAM, rule)

    add(f"inverse-sqrt-{name}", ("spectral.inverse_sqrt_map",),
        {"map(X)": lambda c: S(c)(_V(c)),
         "map(map(X)) = solve": lambda c: S(c)(S(c)(_V(c))),
         f"solve(X, λ, {rule})": lambda c: build(c).solve(_V(c), LAM, rule=rule)},
        lambda c: {"map(X)": _isqrt_def(c, name) @ _V(c),
                   "map(map(X)) = solve": _isqrt_def(c, name) @ _isqrt_def(c, name) @ _V(c),
                   f"solve(X, λ, {rule})": _isqrt_def(c, name) @ _isqrt_def(c, name) @ _V(c)},
        rtol=1e-7, atol=1e-9)
    add(f"slq-preconditioned-{name}", ("spectral.spectral_density", "spectral.inverse_sqrt_map"),
        {"operator": lambda c: np.array([(lambda d: [d.moment(1), d.moment(2)])(
            spectral_mod.spectral_density(c.op, probes=_PROBES, steps=c.batch.n_params,
                                          rng=4, preconditioner=build(c), damping=LAM,
                                          rule=rule))]).ravel()},
        lambda c: (lambda S: _slq_moments_def(S @ (c.F + LAM * np.eye(c.F.shape[0])) @ S,
                                              (1, 2)))(_isqrt_def(c, name)),
        rtol=1e-7, atol=1e-9)


for _n in _ISQRT:
    _isqrt_entry(_n)


def _hutch_def(c, p=7):
    rng = np.random.default_rng(5)
    V = rng.choice(np.array([-1.0, 1.0]), size=(c.F.shape[0], p))
    t = np.einsum("ip,ip->p", V, c.F @ V)
    return np.array([t.mean(), t.std(ddof=1) / np.sqrt(p)])


def _hutchpp_def(c, m=13):
    rng = np.random.default_rng(5)
    n, k = c.F.shape[0], m // 3
    S = rng.choice(np.array([-1.0, 1.0]), size=(n, k))
    Q = np.linalg.qr(c.F @ S)[0]
    G = rng.choice(np.array([-1.0, 1.0]), size=(n, m - 2 * k))
    G = G - Q @ (Q.T @ G)
    return np.trace(Q.T @ c.F @ Q) + np.trace(G.T @ c.F @ G) / G.shape[1]


def _xtrace_def(c, m=12):
    rng = np.random.default_rng(5)
    n, s = c.F.shape[0], m // 2
    Om = rng.choice(np.array([-1.0, 1.0]), size=(n, s))
    ts = []
    for i in range(s):
        Q = np.linalg.qr(np.delete(c.F @ Om, i, axis=1))[0]
        r = Om[:, i] - Q @ (Q.T @ Om[:, i])
        ts.append(np.trace(Q.T @ c.F @ Q) + r @ c.F @ r)
    return np.array([np.mean(ts), np.std(ts, ddof=1) / np.sqrt(s)])


def _diag_est_def(c, p=6):
    rng = np.random.default_rng(5)
    V = rng.choice(np.array([-1.0, 1.0]), size=(c.F.shape[0], p))
    T = V * (c.F @ V)
    return np.concatenate([T.mean(1), T.std(1, ddof=1) / np.sqrt(p)])


add("hutchinson", ("spectral.hutchinson",),
    {"operator": lambda c: np.array(spectral_mod.hutchinson(c.op, 7, rng=5)),
     "dense array": lambda c: np.array(spectral_mod.hutchinson(c.op.to_dense(), 7, rng=5))},
    _hutch_def, rtol=1e-9, atol=1e-11)
add("hutchpp", ("spectral.hutchpp",),
    {"operator": lambda c: spectral_mod.hutchpp(c.op, 13, rng=5),
     "dense array": lambda c: spectral_mod.hutchpp(c.op.to_dense(), 13, rng=5)},
    _hutchpp_def, rtol=1e-9, atol=1e-11)
add("xtrace", ("spectral.xtrace",),
    {"operator": lambda c: np.array(spectral_mod.xtrace(c.op, 12, rng=5)),
     "dense array": lambda c: np.array(spectral_mod.xtrace(c.op.to_dense(), 12, rng=5))},
    _xtrace_def, rtol=1e-8, atol=1e-10)
add("diagonal-estimate", ("spectral.diagonal_estimate",),
    {"operator": lambda c: np.concatenate(spectral_mod.diagonal_estimate(c.op, 6, rng=5)),
     "dense array": lambda c: np.concatenate(spectral_mod.diagonal_estimate(
         c.op.to_dense(), 6, rng=5))},
    _diag_est_def, rtol=1e-9, atol=1e-11)
# the sketching estimators are exact on a matrix of rank ≤ m/3 (Hutch++) and < m/2 − 1
# (XTrace): a rank-3 LowRank and its dense matrix, against Σ λ_i
add("trace-estimators-exact-on-low-rank", ("spectral.hutchpp", "spectral.xtrace"),
    {"hutchpp(LowRank, 9)": lambda c: spectral_mod.hutchpp(_lr(c), 9, rng=1),
     "hutchpp(dense, 12)": lambda c: spectral_mod.hutchpp(_lr(c).to_dense(), 12, rng=2),
     "xtrace(LowRank, 10)": lambda c: spectral_mod.xtrace(_lr(c), 10, rng=1)[0],
     "xtrace(dense, 12)": lambda c: spectral_mod.xtrace(_lr(c).to_dense(), 12, rng=3)[0]},
    lambda c: np.sum(np.linalg.eigvalsh(c.F)[::-1][:KR]), rtol=1e-8, atol=1e-10)


CASES = [(e.name, ctx) for e in REGISTRY for ctx in e.contexts]


@pytest.mark.parametrize("entry,ctx", CASES)
def test_crosscheck(entry, ctx):
    base.check_entry(next(x for x in REGISTRY if x.name == entry), comp.get_ctx(ctx))


def test_registry_entries():
    names = {e.name for e in REGISTRY}
    assert len(names) == len(REGISTRY) and not names & {e.name for e in comp.REGISTRY}
    for e in REGISTRY:
        assert e.definition is not None and e.impls and e.covers, e.name


CLASSES = {"SpectralDensity": SpectralDensity}
MODULES = {"spectral": spectral_mod}
EXEMPT: dict = {}
