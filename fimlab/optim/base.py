"""The optimizer interface shared by natural gradient and the first-order baselines."""

from __future__ import annotations

import math

import numpy as np

from .._errors import DivergenceError, FimlabError
from ..backend import to_numpy

__all__ = ["Optimizer", "OptionError", "check_lr", "check_positive", "check_nonneg"]


class OptionError(FimlabError, ValueError):
    """A training or optimizer option with a value out of its range (learning rate <= 0,
    a period < 1, a fraction outside (0, 1], ...)."""


def check_lr(lr) -> float:
    """Return ``lr`` as a float after checking that it is a positive finite number."""
    return check_positive(
        lr, "the learning rate",
        "typical values: 1e-3 for Adam, 1e-2 .. 1e-1 for SGD and natural gradient")


def _as_float(value, name: str) -> float:
    if isinstance(value, bool):
        raise OptionError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{name} must be a number, got {value!r}") from exc


def check_positive(value, name: str, hint: str = "") -> float:
    """``value`` as a float, or :class:`OptionError` if it is not positive and finite."""
    x = _as_float(value, name)
    if not (math.isfinite(x) and x > 0):
        raise OptionError(f"{name} must be a positive finite number, got {value!r}"
                          + (f" ({hint})" if hint else ""))
    return x


def check_nonneg(value, name: str) -> float:
    """``value`` as a float, or :class:`OptionError` if it is negative or not finite."""
    x = _as_float(value, name)
    if not (math.isfinite(x) and x >= 0):
        raise OptionError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


class Optimizer:
    """Base class: one optimizer iteration is :meth:`step` on a mini-batch.

    Subclasses implement :meth:`_direction` (the update direction ``d`` such that the
    momentum buffer gets ``v ← μ v + d`` and ``θ ← θ − η v``) or override :meth:`_update`.

    Attributes
    ----------
    net : fimlab.MLP
        The model; its parameters are updated in place (``net.set_flat``).
    t : int
        Number of iterations done (0 before the first step).
    """

    name = "optimizer"

    def __init__(self, net, lr: float, weight_decay: float = 0.0):
        self.net = net
        self.lr = check_lr(lr)
        self.weight_decay = check_nonneg(weight_decay, "weight_decay")
        self.t = 0

    # -- one iteration ------------------------------------------------------------------
    def step(self, X, y) -> float:
        """One iteration on the mini-batch ``(X, y)``; returns the mini-batch loss (mean
        negative log-likelihood) *before* the update.

        Raises
        ------
        DivergenceError
            The loss or the new parameters are not finite (the parameters are left as they
            were before this step).
        """
        net = self.net
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, grads = net.loss_and_gradient(X, y)
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"the mini-batch loss became {loss} (optimizer iteration {self.t})")
        self.step_with_gradient(grads, X, y)
        return float(loss)

    def step_with_gradient(self, grads, X=None, y=None) -> None:
        """One iteration from a gradient the caller already computed (e.g. one it also
        measures curvature on): ``grads`` is the per-layer list of
        ``net.loss_and_gradient`` or the flat gradient. ``X, y`` (the mini-batch) are
        needed by the natural-gradient optimizers only.

        Examples
        --------
        >>> import numpy as np, fimlab as fl
        >>> net = fl.MLP([4, 6, 4], activation="tanh", likelihood="gaussian", seed=0)
        >>> X = np.random.default_rng(0).normal(size=(32, 4))
        >>> opt = fl.Adam(net, lr=1e-2)
        >>> loss, grads = net.loss_and_gradient(X, X)
        >>> opt.step_with_gradient(grads)
        >>> opt.t, net.loss(X, X) < loss
        (1, True)
        """
        net = self.net
        xp = net.xp
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            theta = net.get_flat()
            g = net.flatten(grads) if isinstance(grads, (list, tuple)) else grads
            new = self._update(theta, g, X, y)
            if not bool(xp.all(xp.isfinite(new))):
                raise DivergenceError(
                    f"the parameters became non-finite in the update (optimizer iteration "
                    f"{self.t})")
        net.set_flat(new)
        self.t += 1

    def _update(self, theta, g, X, y):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- state (checkpoints, resume) ------------------------------------------------------
    def state_dict(self) -> dict:
        """A nested dict of NumPy arrays, numbers, strings and lists that, with the network
        parameters, determines every later step bit for bit."""
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])

    def _to_host(self, x):
        return None if x is None else np.array(to_numpy(x), copy=True)

    def _to_net(self, x):
        if x is None:
            return None
        from ..backend import asarray_on

        return asarray_on(np.asarray(x), self.net.params[0])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} lr={self.lr} t={self.t}>"
