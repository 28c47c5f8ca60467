"""What the PyTorch and JAX front-ends share: the output-space vectors of each Fisher
type, computed in NumPy from the network output ``z`` exactly as :func:`fimlab.factor_batch`
computes them for the NumPy MLP (same formulas, same Monte-Carlo draws for the same
``rng``), and the concatenation of a data loader's batches within the memory budget.

No framework is imported here.
"""

from __future__ import annotations

import math

import numpy as np

from ._errors import ShapeError
from ._validation import check_choice, check_dense_memory
from .models.likelihoods import Likelihood, get_likelihood
from .models.mlp import FISHER_TYPES

__all__ = ["output_vectors", "concat_batches", "check_mc_samples", "as_rng"]


def as_rng(rng):
    """``None`` -> seed 0 (deterministic), an int -> a seeded generator."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(0 if rng is None else int(rng))
    return rng


def check_mc_samples(mc_samples) -> int:
    if isinstance(mc_samples, bool) or int(mc_samples) != mc_samples or mc_samples < 1:
        raise ShapeError(f"mc_samples must be a positive integer, got {mc_samples!r}")
    return int(mc_samples)


def output_vectors(lik: Likelihood, z: np.ndarray, fisher: str, y=None, mc_samples: int = 1,
                   rng=None, targets=None) -> np.ndarray:
    """The ``(N, K, C)`` vectors to back-propagate from the output ``z`` (NumPy).

    ``fisher="exact"``: columns of ``H^{1/2}``; ``"mc"``: ``∇_z(−log p(ŷ|z))/√S`` for
    ``S`` targets ``ŷ`` drawn with ``rng`` (or given as ``targets``: ``(N, S)`` class
    indices for the categorical likelihood, ``(N, S, C)`` otherwise); ``"empirical"``:
    ``∇_z(−log p(y|z))`` (K = 1).
    """
    lik = get_likelihood(lik)
    check_choice(fisher, FISHER_TYPES, "Fisher type")
    N, C = z.shape
    if fisher == "exact":
        if targets is not None:
            raise ShapeError("targets= are the sampled Monte-Carlo targets; use them with "
                             "fisher='mc'")
        return np.ascontiguousarray(lik.sqrt_fisher(z))
    if fisher == "mc":
        if targets is None:
            S = check_mc_samples(mc_samples)
            ys = lik.sample(z, as_rng(rng), S)
        else:
            ys = np.asarray(targets)
            want = (N,) if lik.name == "categorical" else (N, C)
            if ys.ndim != len(want) + 1 or ys.shape[0] != N or ys.shape[2:] != want[1:]:
                shape = "(N, S)" if lik.name == "categorical" else "(N, S, C)"
                raise ShapeError(
                    f"targets= must hold the sampled targets with shape {shape} = "
                    f"{(N, 'S', *want[1:])}, got {ys.shape}"
                )
            S = ys.shape[1]
            ys = ys.astype(np.int64 if lik.name == "categorical" else z.dtype)
        vecs = [lik.dloss(z, lik.check_targets(ys[:, s, ...], N, C)) for s in range(S)]
        return np.stack(vecs, axis=1) / math.sqrt(S)
    if y is None:
        raise ShapeError("the empirical Fisher needs the true targets: pass y=...")
    y = np.asarray(y)
    if lik.name != "categorical":
        y = y.astype(z.dtype).reshape(N, -1) if y.ndim == 1 and C == 1 else y.astype(z.dtype)
    yy = lik.check_targets(y, N, C)
    return lik.dloss(z, yy)[:, None, :]


def concat_batches(batches, to_numpy, max_bytes=None, what="the data loader's samples"):
    """Concatenate an iterable of ``(X, y)`` (or ``X``) batches: ``(X, y or None)`` as
    lists of host arrays, refusing more than ``max_bytes`` for the inputs."""
    Xs, ys, n, row_bytes = [], [], 0, None
    for item in batches:
        if isinstance(item, (tuple, list)):
            if len(item) < 1:
                raise ShapeError("a data-loader batch must be (X, y) or X")
            Xb = to_numpy(item[0])
            yb = to_numpy(item[1]) if len(item) > 1 and item[1] is not None else None
        else:
            Xb, yb = to_numpy(item), None
        Xs.append(Xb)
        if yb is not None:
            ys.append(yb)
        n += Xb.shape[0]
        row_bytes = Xb.dtype.itemsize * int(np.prod(Xb.shape[1:]))
        check_dense_memory((n, max(row_bytes // Xb.dtype.itemsize, 1)), Xb.dtype, max_bytes,
                           f"concatenation of {what}",
                           "a smaller data loader (the Fisher of a sub-sample), or "
                           "FactorBatch per batch")
    if not Xs:
        raise ShapeError(f"{what}: the iterable gave no batches")
    if ys and len(ys) != len(Xs):
        raise ShapeError("some data-loader batches have targets and some do not")
    X = np.concatenate(Xs, axis=0)
    y = np.concatenate(ys, axis=0) if ys else None
    return X, y
