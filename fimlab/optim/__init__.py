"""Optimizers: natural gradient with any Fisher approximation, and first-order baselines.

- :class:`NGD` — natural-gradient descent with the papers' options (curvature batch with
  sampled targets, moving averages, refresh periods, KL-clipping, momentum, weight decay
  after preconditioning, damping rules), preconditioned by any approximation of
  :data:`fimlab.approx.APPROXIMATIONS`, the exact block-diagonal Fisher or the exact Fisher;
- :class:`SGD` (heavy-ball or Nesterov momentum) and :class:`Adam`;
- :func:`make_optimizer` builds any of them by name.
"""

from __future__ import annotations

from .base import Optimizer, OptionError, check_lr
from .baselines import SGD, Adam
from .ngd import (
    EMA_MODES,
    KL_CLIP_FORMS,
    NGD,
    ngd_methods,
    resolve_method,
    window_batch,
)

__all__ = [
    "Optimizer", "OptionError", "NGD", "SGD", "Adam", "make_optimizer", "optimizer_names",
    "ngd_methods", "resolve_method", "window_batch", "check_lr", "EMA_MODES", "KL_CLIP_FORMS",
]

#: first-order baselines, by (lower-case) name
BASELINES = {"sgd": SGD, "adam": Adam}


def optimizer_names() -> list[str]:
    """Every method name :func:`make_optimizer` accepts (the baselines, then the
    natural-gradient preconditioners registered now)."""
    return ["sgd", "adam"] + ngd_methods()


def make_optimizer(method: str, net, lr: float, **options) -> Optimizer:
    """Build the optimizer for ``method``.

    Parameters
    ----------
    method : str
        ``"sgd"``, ``"adam"`` (case-insensitive), or a natural-gradient preconditioner
        (see :func:`ngd_methods`): the result is then :class:`NGD`.
    net : fimlab.MLP
    lr : float
    **options
        Keyword arguments of the optimizer's class.

    Raises
    ------
    UnknownNameError
        ``method`` is none of these (the message lists them).

    Examples
    --------
    >>> import fimlab as fl
    >>> net = fl.MLP([4, 6, 4], activation="tanh", likelihood="gaussian", seed=0)
    >>> [type(fl.make_optimizer(m, net, lr=0.1)).__name__ for m in ("sgd", "Adam", "KFAC")]
    ['SGD', 'Adam', 'NGD']
    """
    if isinstance(method, str) and method.lower() in BASELINES:
        return BASELINES[method.lower()](net, lr=lr, **options)
    try:
        name = resolve_method(method)
    except Exception as exc:
        from .._errors import UnknownNameError

        raise UnknownNameError(
            f"unknown optimizer / method {method!r}; choose one of: "
            f"{', '.join(map(repr, optimizer_names()))}"
        ) from exc
    return NGD(net, name, lr=lr, **options)
