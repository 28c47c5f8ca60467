"""Likelihoods of the network output ``z``: loss, gradient, Fisher square root, sampling.

Each likelihood gives, per sample, the vectors that the factor batch back-propagates
(docs/guide/conventions.rst table):

=============  ==========================  ==========================  ==================
likelihood     loss −log p(y|z)            ``H^{1/2}`` columns (exact)  ``∇_z`` (MC / emp.)
=============  ==========================  ==========================  ==================
categorical    ``logsumexp(z) − z_y``      ``√p_k (e_k − p)``           ``p − e_y``
gaussian       ``½‖z − y‖²`` (σ = 1)       ``e_k``                      ``z − y``
bernoulli      ``Σ softplus(z) − y·z``     ``√(p_k(1−p_k)) e_k``        ``p − y``
=============  ==========================  ==========================  ==================

(``H = diag(p) − ppᵀ = B Bᵀ`` with ``B = diag(√p) − p √pᵀ`` for the softmax.) The Gaussian
loss omits the constant ``(C/2) log 2π``. Computations take the namespace of ``z``;
random draws come from a host ``numpy.random.Generator`` and are moved to ``z``'s device.
"""

from __future__ import annotations

import numpy as np

from .._errors import NonFiniteError, ShapeError
from .._validation import check_choice
from ..backend import (
    array_namespace,
    device_of,
    from_host,
    is_numpy_namespace,
    to_numpy,
)

__all__ = ["LIKELIHOODS", "get_likelihood", "Categorical", "Gaussian", "Bernoulli"]


def _sigmoid(z, xp):
    # numerically stable logistic function
    e = xp.exp(-xp.abs(z))
    r = 1.0 / (1.0 + e)
    return xp.where(z >= 0, r, e * r)


def _sigmoid_numpy(z):
    """:func:`_sigmoid` for a NumPy array with the same operations, in place: the same
    numbers, three temporaries fewer."""
    e = np.abs(z)
    np.negative(e, out=e)
    np.exp(e, out=e)  # e = exp(-|z|)
    r = np.add(e, 1.0)
    np.divide(1.0, r, out=r)  # r = 1 / (1 + e)
    np.multiply(e, r, out=e)  # e·r
    np.copyto(e, r, where=z >= 0)
    return e


def _softplus(z, xp):
    return xp.maximum(z, xp.zeros_like(z)) + xp.log1p(xp.exp(-xp.abs(z)))


def _to_device(arr: np.ndarray, like):
    xp = array_namespace(like)
    if is_numpy_namespace(xp):
        return np.asarray(arr, dtype=arr.dtype)
    return from_host(arr, xp, device=device_of(like))


class Likelihood:
    """Base class; see the module docstring for the formulas."""

    name = ""

    def check_targets(self, y, N: int, C: int):
        raise NotImplementedError

    def loss(self, z, y):
        """Mean over samples of ``−log p(y_n | z_n)``."""
        raise NotImplementedError

    def dloss(self, z, y):
        """``∂(−log p(y_n|z_n))/∂z_n`` for every sample, shape ``(N, C)``."""
        raise NotImplementedError

    def sqrt_fisher(self, z):
        """Columns of ``H_n^{1/2}``: shape ``(N, C, C)``, ``[n, k, :]`` the ``k``-th vector."""
        raise NotImplementedError

    def sample(self, z, rng: np.random.Generator, n_samples: int):
        """Targets drawn from the model, shape ``(N, S)`` (categorical) or ``(N, S, C)``."""
        raise NotImplementedError

    def mc_vectors(self, z, rng: np.random.Generator, n_samples: int = 1):
        """Monte-Carlo vectors ``∇_z(−log p(ŷ|z))/√S`` for ``S`` sampled targets ŷ:
        shape ``(N, S, C)``."""
        xp = array_namespace(z)
        ys = self.sample(z, rng, n_samples)
        vecs = [self.dloss(z, ys[:, s, ...]) for s in range(n_samples)]
        return xp.stack(vecs, axis=1) / float(np.sqrt(n_samples))

    def mean(self, z):
        """The model's prediction ``E[y|z]`` (probabilities or means)."""
        raise NotImplementedError


class Categorical(Likelihood):
    """Softmax cross-entropy; targets are class indices ``(N,)`` in ``[0, C)``."""

    name = "categorical"

    def check_targets(self, y, N, C):
        xp = array_namespace(y)
        if y.ndim != 1 or y.shape[0] != N:
            raise ShapeError(
                f"categorical targets must be class indices of shape ({N},), got "
                f"{tuple(y.shape)}"
            )
        if not xp.isdtype(y.dtype, "integral"):
            yh = to_numpy(y)
            if not np.all(np.isfinite(yh)):
                raise NonFiniteError("categorical targets contain NaN or inf")
            if not np.all(yh == np.round(yh)):
                raise ShapeError(
                    "categorical targets must be integer class indices (got non-integer "
                    "values); for one-hot targets pass y.argmax(axis=1)"
                )
            y = xp.astype(y, xp.int64)
        lo, hi = int(xp.min(y)), int(xp.max(y))
        if lo < 0 or hi >= C:
            raise ShapeError(
                f"categorical targets must lie in [0, {C - 1}] for {C} outputs; got values "
                f"from {lo} to {hi}"
            )
        return y

    def _onehot(self, y, z):
        xp = array_namespace(z)
        C = z.shape[1]
        return xp.astype(y[:, None] == xp.arange(C, device=_dev(z))[None, :], z.dtype)

    def probs(self, z):
        xp = array_namespace(z)
        zs = z - xp.max(z, axis=1, keepdims=True)
        e = xp.exp(zs)
        return e / xp.sum(e, axis=1, keepdims=True)

    mean = probs

    def loss(self, z, y):
        xp = array_namespace(z)
        m = xp.max(z, axis=1, keepdims=True)
        lse = xp.log(xp.sum(xp.exp(z - m), axis=1)) + m[:, 0]
        zy = xp.sum(z * self._onehot(y, z), axis=1)
        return float(xp.mean(lse - zy))

    def dloss(self, z, y):
        return self.probs(z) - self._onehot(y, z)

    def sqrt_fisher(self, z):
        xp = array_namespace(z)
        p = self.probs(z)
        C = z.shape[1]
        eye = xp.eye(C, dtype=z.dtype, device=_dev(z))
        # B[n, k, :] = √p_k (e_k − p)
        return xp.sqrt(p)[:, :, None] * (eye[None, :, :] - p[:, None, :])

    def sample(self, z, rng, n_samples):
        p = to_numpy(self.probs(z)).astype(np.float64)
        cdf = np.cumsum(p, axis=1)
        u = rng.random((p.shape[0], n_samples))
        ys = (u[:, :, None] > cdf[:, None, :-1]).sum(axis=2)
        return _to_device(ys.astype(np.int64), z)


class Gaussian(Likelihood):
    """Unit-variance Gaussian; targets ``(N, C)`` floats."""

    name = "gaussian"

    def check_targets(self, y, N, C):
        xp = array_namespace(y)
        if y.ndim != 2 or tuple(y.shape) != (N, C):
            raise ShapeError(f"gaussian targets must have shape ({N}, {C}), got {tuple(y.shape)}")
        if not bool(xp.all(xp.isfinite(y))):
            raise NonFiniteError("gaussian targets contain NaN or inf")
        return y

    def mean(self, z):
        return z

    def loss(self, z, y):
        xp = array_namespace(z)
        return float(0.5 * xp.mean(xp.sum((z - y) ** 2, axis=1)))

    def dloss(self, z, y):
        return z - y

    def sqrt_fisher(self, z):
        xp = array_namespace(z)
        N, C = z.shape
        eye = xp.eye(C, dtype=z.dtype, device=_dev(z))
        return xp.broadcast_to(eye[None, :, :], (N, C, C))

    def sample(self, z, rng, n_samples):
        xp = array_namespace(z)
        eps = rng.standard_normal((z.shape[0], n_samples, z.shape[1]))
        return z[:, None, :] + xp.astype(_to_device(eps, z), z.dtype)


class Bernoulli(Likelihood):
    """Independent Bernoulli outputs with logits ``z``; targets ``(N, C)`` in ``[0, 1]``
    (0/1, or soft targets such as pixel intensities, as in the auto-encoders)."""

    name = "bernoulli"

    def check_targets(self, y, N, C):
        xp = array_namespace(y)
        if y.ndim != 2 or tuple(y.shape) != (N, C):
            raise ShapeError(f"bernoulli targets must have shape ({N}, {C}), got {tuple(y.shape)}")
        if not bool(xp.all(xp.isfinite(y))):
            raise NonFiniteError("bernoulli targets contain NaN or inf")
        if bool(xp.any(y < 0)) or bool(xp.any(y > 1)):
            raise ShapeError("bernoulli targets must lie in [0, 1]")
        return y

    def mean(self, z):
        return _sigmoid(z, array_namespace(z))

    def loss(self, z, y):
        xp = array_namespace(z)
        return float(xp.mean(xp.sum(_softplus(z, xp) - y * z, axis=1)))

    def dloss(self, z, y):
        return self.mean(z) - y

    def sqrt_fisher(self, z):
        xp = array_namespace(z)
        p = self.mean(z)
        s = xp.sqrt(p * (1.0 - p))
        C = z.shape[1]
        eye = xp.eye(C, dtype=z.dtype, device=_dev(z))
        return s[:, :, None] * eye[None, :, :]

    def sample(self, z, rng, n_samples):
        xp = array_namespace(z)
        p = to_numpy(self.mean(z)).astype(np.float64)
        u = rng.random((p.shape[0], n_samples, p.shape[1]))
        return xp.astype(_to_device((u < p[:, None, :]).astype(np.float64), z), z.dtype)

    def mc_vectors(self, z, rng, n_samples=1):
        """As :meth:`Likelihood.mc_vectors` (the same draws, the same numbers), with the
        probabilities computed once for the draws and the vectors ``p − ŷ``."""
        xp = array_namespace(z)
        if type(z) is np.ndarray and z.dtype in (np.float32, np.float64):
            # NumPy: the same arithmetic in place (a handful of passes over N × C, not 20)
            p = _sigmoid_numpy(z)
            ph = p if p.dtype == np.float64 else p.astype(np.float64)
            u = rng.random((ph.shape[0], n_samples, ph.shape[1]))
            np.less(u, ph[:, None, :], out=u)  # the draws ŷ, as 0.0/1.0
            v = np.subtract(p[:, None, :], u, dtype=p.dtype)
        else:
            p = self.mean(z)
            ph = to_numpy(p).astype(np.float64)
            u = rng.random((ph.shape[0], n_samples, ph.shape[1]))
            ys = xp.astype(_to_device((u < ph[:, None, :]).astype(np.float64), z), z.dtype)
            v = p[:, None, :] - ys
        return v / float(np.sqrt(n_samples)) if n_samples > 1 else v


def _dev(z):
    from ..backend import device_of

    return device_of(z)


LIKELIHOODS = {"categorical": Categorical, "gaussian": Gaussian, "bernoulli": Bernoulli}


def get_likelihood(name) -> Likelihood:
    """The likelihood object for ``name`` (or ``name`` itself if already one)."""
    if isinstance(name, Likelihood):
        return name
    check_choice(name, LIKELIHOODS, "likelihood")
    return LIKELIHOODS[name]()
