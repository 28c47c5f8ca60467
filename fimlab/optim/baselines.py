"""First-order baselines of the papers' comparisons: SGD (heavy-ball or Nesterov momentum)
and Adam. Both follow PyTorch's update rules, so that learning rates carry over.

Weight decay is the L2 kind: ``wd·θ`` is added to the gradient before the update.
"""

from __future__ import annotations

from .base import Optimizer, OptionError, check_nonneg

__all__ = ["SGD", "Adam"]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum.

    With ``d = ∇L(θ) + wd·θ``, the buffer ``v ← μ v + d`` (``v = 0`` initially) and

    - heavy ball (default): ``θ ← θ − η v``;
    - Nesterov: ``θ ← θ − η (d + μ v)``.

    Parameters
    ----------
    net : fimlab.MLP
    lr : float
        ``η > 0``.
    momentum : float
        ``μ`` in ``[0, 1)`` (0.9 in the papers).
    nesterov : bool
    weight_decay : float

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 4, 3], activation="tanh", likelihood="gaussian", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(16, 3))
    >>> opt = fl.SGD(net, lr=0.1, momentum=0.0)
    >>> l0 = opt.step(X, X); l1 = opt.step(X, X)
    >>> l1 < l0
    True
    """

    name = "sgd"

    def __init__(self, net, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(net, lr, weight_decay)
        self.momentum = check_nonneg(momentum, "momentum")
        if self.momentum >= 1:
            raise OptionError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.nesterov = bool(nesterov)
        self.velocity = None

    def _update(self, theta, g, X, y):
        d = g + self.weight_decay * theta if self.weight_decay else g
        v = d if self.velocity is None else self.momentum * self.velocity + d
        self.velocity = v
        step = d + self.momentum * v if self.nesterov else v
        return theta - self.lr * step

    def state_dict(self) -> dict:
        return {"t": self.t, "velocity": self._to_host(self.velocity)}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.velocity = self._to_net(state.get("velocity"))


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as in PyTorch.

    With ``d = ∇L(θ) + wd·θ``: ``m ← β₁m + (1−β₁)d``, ``s ← β₂s + (1−β₂)d²``,
    ``θ ← θ − η m̂ / (√ŝ + ε)`` with ``m̂ = m/(1−β₁ᵗ)``, ``ŝ = s/(1−β₂ᵗ)``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 6, 4], activation="tanh", likelihood="gaussian", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(32, 4))
    >>> opt = fl.Adam(net, lr=1e-2)
    >>> losses = [opt.step(X, X) for _ in range(20)]
    >>> losses[-1] < losses[0], opt.t
    (True, 20)
    """

    name = "adam"

    def __init__(self, net, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(net, lr, weight_decay)
        b1, b2 = (check_nonneg(b, "an Adam beta") for b in betas)
        if not (b1 < 1 and b2 < 1):
            raise OptionError(f"Adam's betas must lie in [0, 1), got {tuple(betas)!r}")
        self.betas = (b1, b2)
        self.eps = check_nonneg(eps, "eps")
        self.m = None
        self.s = None

    def _update(self, theta, g, X, y):
        xp = self.net.xp
        b1, b2 = self.betas
        d = g + self.weight_decay * theta if self.weight_decay else g
        if self.m is None:
            self.m = xp.zeros_like(d)
            self.s = xp.zeros_like(d)
        self.m = b1 * self.m + (1.0 - b1) * d
        self.s = b2 * self.s + (1.0 - b2) * (d * d)
        t = self.t + 1
        mhat = self.m / (1.0 - b1**t)
        shat = self.s / (1.0 - b2**t)
        return theta - self.lr * mhat / (xp.sqrt(shat) + self.eps)

    def state_dict(self) -> dict:
        return {"t": self.t, "m": self._to_host(self.m), "s": self._to_host(self.s)}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.m = self._to_net(state.get("m"))
        self.s = self._to_net(state.get("s"))
