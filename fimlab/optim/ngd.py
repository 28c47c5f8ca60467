"""Natural-gradient descent with any approximation of the Fisher as its preconditioner.

The training setup of both papers (docs/papers.md "The experiments"), each step an option:

1. **Curvature batch.** Every ``stat_period`` iterations the first
   ``m = ⌈curvature_fraction · batch⌉`` samples of the mini-batch (batch/4 in the papers)
   give a factor batch with targets sampled from the model (``fisher="mc"``).
2. **Statistics** (``ema=``):

   - ``"papers"``: the approximation is computed on the curvature batch and the factors
     of each of its Kronecker terms are averaged, ``X ← ρ X + (1 − ρ) X_new`` with
     ``ρ = min(1 − 1/t, ema_max)`` (``t`` the 1-based optimizer iteration, so the first
     refresh takes the new factors as they are). For KFAC these are ``A`` and ``G``; for
     the KPSVD family it is the papers' average of the *output* factors (not the
     Frobenius-optimal approximation of the averaged Fisher). Terms are sign-normalised
     (``tr A ≥ 0``) before averaging.
   - ``"window"``: the exact alternative: the approximation is computed on the factor
     batch made of the last ``window`` curvature batches, batch ``j`` weighted by ``w_j``
     (``∝ ema_max^age`` or uniform, ``Σ w_j = 1``) by scaling its back-propagated vectors by
     ``√(M w_j / m_j)`` (``M`` rows in all), so that its Fisher is ``Σ_j w_j F_j`` exactly.
   - ``"none"``: the current curvature batch only.
   - ``"auto"`` (default): ``"papers"`` for Kronecker-factored approximations, ``"none"`` for
     ``"exact"`` and ``"block-exact"`` (whose Fisher has no factors to average).

3. **Inverses** are refreshed every ``inverse_period`` iterations (at ``t = 0, T, 2T, …``):
   the preconditioner is rebuilt from the statistics and frozen until the next refresh;
   its damped inverse is computed once and reused (cached by the operators).
4. **Direction** ``ζ = (F̃ + λ)⁻¹ g`` by the operator's ``solve(g, λ, rule)`` with the damping
   rules of docs/guide/conventions.rst (``"factor"``: K2 / I1, the papers' choice; ``"pi"``: K3;
   ``"exact"``: K4 / PCG). ``method="exact"`` is the exact natural gradient of the curvature
   batch by Woodbury (F3); ``method="block-exact"`` the exact block-diagonal Fisher. With
   ``two_level={...}`` the fine operator is wrapped in ``fimlab.TwoLevel`` (T2/T3).
5. **KL-clipping**: ``ζ ← ν ζ`` with ``ν = min(1, √(κ / Σ_l |⟨g_l, ζ_l⟩|))`` (the papers'
   code, ``kl_clip_form="papers"``) or ``ν = min(1, √(κ / (η² Σ_l |⟨g_l, ζ_l⟩|)))``
   (``"lr2"``, the distributed-KFAC form); ``κ = kl_clip`` (0.01), ``l`` over layers.
6. **Weight decay after preconditioning**: ``d = ν ζ + wd·θ``.
7. **Momentum**: ``v ← μ v + d`` (``v = 0`` initially), ``θ ← θ − η v``.

Deterministic: the Monte-Carlo targets come from a generator seeded by ``seed``. With
``solver="paper"`` each approximation is warm-started from the previous one (the papers'
power SVD); that warm start is not part of :meth:`NGD.state_dict`, so a resumed
``solver="paper"`` run restarts it cold (``solver="exact"`` resumes bit for bit).
NumPy-first (the optimizer's bookkeeping); the curvature work runs in the operators'
namespace.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from .._errors import UnknownNameError
from .._validation import check_choice, check_damping
from ..backend import array_namespace
from ..batch import FactorBatch
from ..kron.algebra import DAMPING_RULES
from ..operators import BlockDiagonalOperator, KroneckerOperator
from .base import Optimizer, OptionError, check_nonneg, check_positive

__all__ = ["NGD", "ngd_methods", "resolve_method", "EMA_MODES", "KL_CLIP_FORMS"]

EMA_MODES = ("auto", "papers", "window", "none")
KL_CLIP_FORMS = ("papers", "lr2")
_EXACT_KINDS = ("exact", "block-exact")


def ngd_methods() -> list[str]:
    """Names of the preconditioners NGD accepts: every key of
    :data:`fimlab.approx.APPROXIMATIONS` (as it is now), ``"block-exact"`` and ``"exact"``."""
    from ..approx import APPROXIMATIONS

    return list(APPROXIMATIONS) + ["block-exact", "exact"]


def resolve_method(name: str) -> str:
    """The canonical spelling of a preconditioner name (case-insensitive), or
    :class:`~fimlab.UnknownNameError` listing the valid ones."""
    names = ngd_methods()
    if isinstance(name, str):
        low = {n.lower(): n for n in names}
        if name.lower() in low:
            return low[name.lower()]
    return check_choice(name, names, "natural-gradient preconditioner")


def _kron_terms(op):
    """Per-block Kronecker terms of a block-diagonal Kronecker operator, or None."""
    blocks = getattr(op, "blocks", None)
    if not isinstance(op, BlockDiagonalOperator) or blocks is None:
        return None
    if not all(isinstance(b, KroneckerOperator) for b in blocks):
        return None
    out = []
    for b in blocks:
        terms = []
        for A, G in b.terms:
            xp = array_namespace(A, G)
            if float(xp.sum(xp.linalg.diagonal(A))) < 0:  # sign-normalise: tr A >= 0
                A, G = -A, -G
            terms.append((A, G))
        out.append(terms)
    return out


def _ema_terms(old, new, rho: float):
    """``ρ·old + (1 − ρ)·new`` factor by factor; a block whose number of terms changed
    takes the new terms."""
    out = []
    for to, tn in zip(old, new):
        if len(to) != len(tn):
            out.append(list(tn))
            continue
        out.append([(rho * Ao + (1.0 - rho) * An, rho * Go + (1.0 - rho) * Gn)
                    for (Ao, Go), (An, Gn) in zip(to, tn)])
    return out


def window_batch(batches, weights) -> FactorBatch:
    """One factor batch whose Fisher is ``Σ_j w_j F_j`` for the batches ``F_j``.

    Batch ``j`` (``m_j`` samples) enters with its vectors ``g`` scaled by ``√(M w_j/m_j)``,
    ``M = Σ m_j``: then ``(1/M) Σ_j (M w_j/m_j) Σ_n j jᵀ = Σ_j w_j F_j``.
    """
    batches = list(batches)
    w = np.asarray(weights, dtype=float)
    if len(batches) != w.size or not np.all(w > 0):
        raise OptionError("window_batch needs one positive weight per batch")
    w = w / w.sum()
    if len(batches) == 1:
        return batches[0]
    xp = batches[0].xp
    M = sum(b.n_samples for b in batches)
    L = batches[0].n_layers
    a = [xp.concat([b.a[l] for b in batches], axis=0) for l in range(L)]
    g = [xp.concat([b.g[l] * float(math.sqrt(M * wj / b.n_samples))
                    for b, wj in zip(batches, w)], axis=0) for l in range(L)]
    return FactorBatch(a, g, fisher=batches[0].fisher)


class NGD(Optimizer):
    """Natural-gradient descent preconditioned by any approximation of the Fisher.

    See the module docstring for the algorithm (docs/papers.md "The experiments").

    Parameters
    ----------
    net : fimlab.MLP
    method : str
        A key of :data:`fimlab.approx.APPROXIMATIONS` (case-insensitive: ``"KFAC"``, the
        KPSVD family, ...), ``"exact"`` (Woodbury, F3) or ``"block-exact"``.
    lr : float
        Learning rate ``η > 0``.
    damping : float
        ``λ > 0``.
    damping_rule : {"factor", "pi", "exact"}
        docs/guide/conventions.rst damping rules for Kronecker operators (ignored by the exact methods).
    solver : {"exact", "paper"}
        Passed to the approximation builder.
    approx_options : dict, optional
        Extra keyword arguments of the approximation builder.
    momentum : float
        ``μ`` (0.9).
    weight_decay : float
        Added after preconditioning (1e-3 in the papers).
    kl_clip : float or None
        ``κ`` (0.01); ``None`` or 0 disables the clipping.
    kl_clip_form : {"papers", "lr2"}
    curvature_fraction : float
        Share of the mini-batch used for the curvature, in (0, 1] (0.25).
    fisher : {"mc", "exact", "empirical"}
        The factor batch's kind (``"mc"``: targets sampled from the model, the papers').
    mc_samples : int
    stat_period, inverse_period : int
        Refresh periods ``T`` in optimizer iterations (``inverse_period`` defaults to
        ``stat_period``).
    ema : {"auto", "papers", "window", "none"}
    ema_max : float
        The cap of ``ρ`` (0.95); also the decay of the ``"ema"`` window weights.
    window : int
        ``W`` for ``ema="window"``.
    window_weights : {"ema", "uniform"}
    two_level : dict, optional
        ``{"coarse_space": ..., "form": ..., ...}``: keyword arguments of
        ``fimlab.TwoLevel(fine, batch=curvature batch, damping=λ, rule=damping_rule, ...)``
        (T2, T3). The fine level is the (averaged) approximation; the coarse matrix uses
        the Fisher of the current curvature batch (of the window with ``ema="window"``).
    seed : int
        Seed of the Monte-Carlo targets.

    Attributes
    ----------
    stat_refreshes, inverse_refreshes : list of int
        The iterations at which statistics / inverses were refreshed.
    preconditioner : CurvatureOperator
        The current (frozen) preconditioner.
    last_nu : float
        The KL-clipping factor of the last step.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 6, 4], activation="tanh", likelihood="gaussian", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(32, 4))
    >>> opt = fl.NGD(net, "KFAC", lr=0.1, damping=1e-2)
    >>> losses = [opt.step(X, X) for _ in range(5)]
    >>> losses[-1] < losses[0], opt.inverse_refreshes
    (True, [0, 1, 2, 3, 4])
    """

    name = "ngd"

    def __init__(self, net, method: str = "KFAC", lr: float = 0.1, damping: float = 1e-3, *,
                 damping_rule: str = "factor", solver: str = "exact",
                 approx_options: dict | None = None, momentum: float = 0.9,
                 weight_decay: float = 1e-3, kl_clip: float | None = 0.01,
                 kl_clip_form: str = "papers", curvature_fraction: float = 0.25,
                 fisher: str = "mc", mc_samples: int = 1, stat_period: int = 1,
                 inverse_period: int | None = None, ema: str = "auto",
                 ema_max: float = 0.95, window: int = 5, window_weights: str = "ema",
                 two_level: dict | None = None, seed: int = 0):
        super().__init__(net, lr, weight_decay)
        from ..models.mlp import FISHER_TYPES

        self.method = resolve_method(method)
        self.kind = self.method if self.method in _EXACT_KINDS else "approx"
        self.damping = check_damping(damping)
        self.damping_rule = check_choice(damping_rule, DAMPING_RULES, "damping rule")
        self.solver = check_choice(solver, ("exact", "paper"), "solver")
        self.approx_options = dict(approx_options or {})
        self.momentum = check_nonneg(momentum, "momentum")
        if self.momentum >= 1:
            raise OptionError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.kl_clip = None if not kl_clip else check_positive(kl_clip, "kl_clip")
        self.kl_clip_form = check_choice(kl_clip_form, KL_CLIP_FORMS, "KL-clipping form")
        self.curvature_fraction = check_positive(curvature_fraction, "curvature_fraction")
        if self.curvature_fraction > 1:
            raise OptionError(f"curvature_fraction must lie in (0, 1], got {curvature_fraction!r}")
        self.fisher = check_choice(fisher, FISHER_TYPES, "Fisher type")
        self.mc_samples = _check_int(mc_samples, "mc_samples")
        self.stat_period = _check_int(stat_period, "stat_period")
        self.inverse_period = (self.stat_period if inverse_period is None
                               else _check_int(inverse_period, "inverse_period"))
        ema = check_choice(ema, EMA_MODES, "moving-average mode")
        if ema == "auto":
            from ..approx import FACTORLESS

            ema = "none" if self.kind in _EXACT_KINDS or self.method in FACTORLESS else "papers"
        if ema == "papers" and self.kind in _EXACT_KINDS:
            raise OptionError(
                f"ema='papers' averages the factors of Kronecker terms; method {self.method!r} "
                "has none. Use ema='window' (exact weighted average of the last curvature "
                "batches) or ema='none'"
            )
        self.ema = ema
        self.ema_max = check_nonneg(ema_max, "ema_max")
        if self.ema_max >= 1:
            raise OptionError(f"ema_max must lie in [0, 1), got {ema_max!r}")
        self.window = _check_int(window, "window")
        self.window_weights = check_choice(window_weights, ("ema", "uniform"), "window weights")
        self.two_level = None if two_level is None else dict(two_level)
        if self.two_level is not None:
            self._two_level_class()  # fail early when unavailable
        self.seed = int(seed)
        self.rng = np.random.default_rng([self.seed, 0x4E4744])
        self.velocity = None
        self.last_nu = 1.0
        self.stat_refreshes: list[int] = []
        self.inverse_refreshes: list[int] = []
        self._terms = None       # averaged (or latest) Kronecker terms, per block
        self._window = []        # the last W curvature batches (ema="window")
        self._latest = None      # the last curvature batch
        self._source = None      # what the current preconditioner was built from
        self.preconditioner = None
        self._direction_op = None
        self._warm = None        # the previous approximation (solver="paper" warm starts)

    # -- curvature ----------------------------------------------------------------------
    def _build(self, batch):
        """The approximation on ``batch``; with ``solver="paper"`` warm-started from the
        previous one (the papers' power SVD), as ``fimlab study`` does."""
        from ..approx import build_approximation

        kw = dict(self.approx_options)
        if self.solver == "paper" and self._warm is not None and self._accepts_warm_start():
            kw["warm_start"] = self._warm
        op = build_approximation(self.method, batch, solver=self.solver, **kw)
        if self.solver == "paper":
            self._warm = op
        return op

    def _accepts_warm_start(self) -> bool:
        import inspect

        from ..approx import APPROXIMATIONS

        try:
            params = inspect.signature(APPROXIMATIONS[self.method]).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover
            return False
        return any(p.name == "warm_start" or p.kind is p.VAR_KEYWORD for p in params)

    def _curvature_batch(self, X, y):
        from ..models.mlp import factor_batch

        N = X.shape[0]
        m = max(1, min(N, int(math.ceil(self.curvature_fraction * N))))
        yc = None if (y is None or self.fisher != "empirical") else y[:m]
        return factor_batch(self.net, X[:m], yc, fisher=self.fisher,
                            mc_samples=self.mc_samples, rng=self.rng)

    def _window_weights(self, k: int):
        """Unnormalised weights of the ``k`` windowed batches, oldest first."""
        if self.window_weights == "uniform":
            return np.ones(k)
        return self.ema_max ** np.arange(k - 1, -1, -1, dtype=float)  # 0**0 == 1

    def _refresh_statistics(self, X, y):
        t = self.t
        batch = self._curvature_batch(X, y)
        self._latest = batch
        if self.ema == "window":
            self._window = (self._window + [batch])[-self.window:]
        elif self.kind == "approx":
            built = self._build(batch)
            # eigenvalue-corrected (EKFAC): average the factors of its Kronecker term (the
            # eigenbasis comes from them at inverse refreshes) and, between those, refresh
            # the scalings in the frozen eigenbasis (George et al.)
            terms = _kron_terms(getattr(built, "base", built))
            if getattr(built, "eigen_corrected", False) and self.preconditioner is not None:
                rho = min(1.0 - 1.0 / (t + 1), self.ema_max) if self.ema == "papers" else 0.0
                self.preconditioner = self.preconditioner.rescaled(batch, rho)
                # a two-level wrapper holds the fine operator: rebuild it around the
                # rescaled one (same coarse batch), or its directions keep the old scalings
                self._wrap_two_level((self._source or {}).get("coarse_batch", self._latest))
            if terms is None:
                if self.ema == "papers":
                    raise OptionError(
                        f"ema='papers' needs a block-diagonal Kronecker approximation; "
                        f"{self.method!r} is not one. Use ema='window' or 'none'")
            elif self.ema == "papers" and self._terms is not None:
                rho = min(1.0 - 1.0 / (t + 1), self.ema_max)
                self._terms = _ema_terms(self._terms, terms, rho)
            else:
                self._terms = terms
        self.stat_refreshes.append(t)

    def _make_source(self) -> dict:
        src: dict = {}
        if self.ema == "window":
            ws = self._window_weights(len(self._window))
            ws = np.where(ws > 0, ws, 0.0)
            keep = [b for b, w in zip(self._window, ws) if w > 0]
            src["batch"] = window_batch(keep, ws[ws > 0])
        elif self.kind == "approx" and self._terms is not None:
            src["terms"] = self._terms
        else:
            src["batch"] = self._latest
        if self.two_level is not None:
            src["coarse_batch"] = src.get("batch", self._latest)
        return src

    def _build_from_source(self, src: dict):
        if "terms" in src and self._eigen_corrected():
            from ..approx.eigencorrected import EigenCorrected

            pre = EigenCorrected.from_terms(src["terms"], self._latest)
        elif "terms" in src:
            pre = BlockDiagonalOperator([KroneckerOperator(t) for t in src["terms"]])
        elif self.kind == "exact":
            from ..curvature import FisherOperator

            pre = FisherOperator(src["batch"])
        elif self.kind == "block-exact":
            from ..approx.blockexact import BlockExact

            pre = BlockExact(src["batch"])
        else:
            op = self._build(src["batch"])
            terms = None if getattr(op, "eigen_corrected", False) else _kron_terms(op)
            pre = op if terms is None else BlockDiagonalOperator(
                [KroneckerOperator(t) for t in terms])
        self.preconditioner = pre
        self._wrap_two_level(src.get("coarse_batch"))

    def _wrap_two_level(self, coarse_batch):
        """The direction operator: the preconditioner itself, or ``TwoLevel`` around it."""
        if self.two_level is not None:
            TL = self._two_level_class()
            opts = {"rule": self.damping_rule, **self.two_level}
            self._direction_op = TL(self.preconditioner, batch=coarse_batch,
                                    damping=self.damping, **opts)
        else:
            self._direction_op = None

    def _eigen_corrected(self) -> bool:
        return self.method in ("EKFAC", "EigenCorrected(KPSVD)")

    def _refresh_inverse(self):
        self._source = self._make_source()
        self._build_from_source(self._source)
        self.inverse_refreshes.append(self.t)

    @staticmethod
    def _two_level_class():
        if importlib.util.find_spec("fimlab.approx.twolevel") is None:
            raise UnknownNameError(
                "two_level=... needs fimlab.approx.twolevel (two-level KFAC), which this "
                "installation does not have; drop the two_level option")
        mod = importlib.import_module("fimlab.approx.twolevel")
        return mod.TwoLevel

    def direction(self, g):
        """``ζ``: the preconditioned gradient (before KL-clipping and weight decay)."""
        if self._direction_op is not None:
            return self._direction_op.solve(g)
        rule = "exact" if self.kind in _EXACT_KINDS else self.damping_rule
        return self.preconditioner.solve(g, self.damping, rule=rule)

    # -- the step -------------------------------------------------------------------------
    def kl_factor(self, g, zeta) -> float:
        """``ν = min(1, √(κ / Σ_l |⟨g_l, ζ_l⟩|))`` (``η²`` inside with ``"lr2"``)."""
        if self.kl_clip is None:
            return 1.0
        xp = array_namespace(g, zeta)
        total, o = 0.0, 0
        for r, c in self.net.shapes:
            total += abs(float(xp.sum(g[o : o + r * c] * zeta[o : o + r * c])))
            o += r * c
        if self.kl_clip_form == "lr2":
            total *= self.lr**2
        if not total > 0:
            return 1.0
        return min(1.0, math.sqrt(self.kl_clip / total))

    def _update(self, theta, g, X, y):
        if self.t % self.stat_period == 0 or self._latest is None:
            self._refresh_statistics(X, y)
        if self.t % self.inverse_period == 0 or self.preconditioner is None:
            self._refresh_inverse()
        zeta = self.direction(g)
        nu = self.kl_factor(g, zeta)
        self.last_nu = nu
        d = nu * zeta
        if self.weight_decay:
            d = d + self.weight_decay * theta
        v = d if self.velocity is None else self.momentum * self.velocity + d
        self.velocity = v
        return theta - self.lr * v

    # -- state ------------------------------------------------------------------------------
    def _batch_state(self, b):
        if b is None:
            return None
        return {"a": [self._to_host(x) for x in b.a], "g": [self._to_host(x) for x in b.g],
                "fisher": b.fisher}

    def _batch_load(self, s):
        if s is None:
            return None
        return FactorBatch([self._to_net(x) for x in s["a"]], [self._to_net(x) for x in s["g"]],
                           fisher=s["fisher"])

    def _terms_state(self, terms):
        if terms is None:
            return None
        return [[[self._to_host(A), self._to_host(G)] for A, G in blk] for blk in terms]

    def _terms_load(self, s):
        if s is None:
            return None
        return [[(self._to_net(A), self._to_net(G)) for A, G in blk] for blk in s]

    def state_dict(self) -> dict:
        src = self._source or {}
        return {
            "t": self.t,
            "velocity": self._to_host(self.velocity),
            "rng": self.rng.bit_generator.state,
            "last_nu": self.last_nu,
            "stat_refreshes": list(self.stat_refreshes),
            "inverse_refreshes": list(self.inverse_refreshes),
            "terms": self._terms_state(self._terms),
            "window": [self._batch_state(b) for b in self._window],
            "latest": self._batch_state(self._latest),
            "source": {
                "terms": self._terms_state(src.get("terms")),
                "batch": self._batch_state(src.get("batch")),
                "coarse_batch": self._batch_state(src.get("coarse_batch")),
            } if self._source is not None else None,
            # EKFAC: the scalings as refreshed since the last inverse refresh (the source
            # rebuilds only those of that refresh)
            "eigen_scalings": ([self._to_host(b.S) for b in self.preconditioner.blocks]
                               if self._eigen_corrected() and self.preconditioner is not None
                               else None),
        }

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.velocity = self._to_net(state.get("velocity"))
        self.rng.bit_generator.state = state["rng"]
        self.last_nu = float(state.get("last_nu", 1.0))
        self.stat_refreshes = [int(i) for i in state.get("stat_refreshes", [])]
        self.inverse_refreshes = [int(i) for i in state.get("inverse_refreshes", [])]
        self._terms = self._terms_load(state.get("terms"))
        self._window = [self._batch_load(b) for b in state.get("window", [])]
        self._latest = self._batch_load(state.get("latest"))
        src = state.get("source")
        if src is None:
            self._source = None
            self.preconditioner = None
            self._direction_op = None
        else:
            self._source = {k: v for k, v in (
                ("terms", self._terms_load(src.get("terms"))),
                ("batch", self._batch_load(src.get("batch"))),
                ("coarse_batch", self._batch_load(src.get("coarse_batch")))) if v is not None}
            self._build_from_source(self._source)
            if state.get("eigen_scalings") is not None and self._eigen_corrected():
                self.preconditioner = self.preconditioner.with_scalings(
                    [self._to_net(S) for S in state["eigen_scalings"]])
                self._wrap_two_level(self._source.get("coarse_batch", self._latest))

    def __repr__(self) -> str:
        return (f"<NGD method={self.method!r} lr={self.lr} damping={self.damping} "
                f"rule={self.damping_rule!r} ema={self.ema!r} t={self.t}>")


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise OptionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
