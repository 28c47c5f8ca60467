"""Hypothesis strategies for Kronecker-factored curvature: matrices, Kronecker products,
factor batches, small networks and damping values.

Every strategy draws its numbers with NumPy from a seed that Hypothesis chooses (so runs
are reproducible and ``derandomize=True`` works), builds the object in float64, rounds it
to ``dtype`` and moves it to the array namespace ``xp`` with :mod:`fimlab.backend`
(``xp=None`` or ``numpy``: NumPy; ``array_api_strict``, ``cupy``, ``torch`` when
installed; ``device=`` places the arrays). Sizes and options accept a value or a
strategy, in the style of ``hypothesis.extra.numpy``.

This module needs `Hypothesis <https://hypothesis.readthedocs.io>`_, an optional
dependency: ``pip install "fimlab[test]"``.

Examples
--------
>>> import numpy as np
>>> from hypothesis import given, settings
>>> from fimlab.testing import strategies as fst
>>> @settings(max_examples=5, derandomize=True, database=None)
... @given(fst.spd_matrices(n=3, max_condition=100.0))
... def test_spd(M):
...     assert np.linalg.eigvalsh(M).min() > 0 and np.linalg.cond(M) <= 100.0
>>> test_spd()
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.errors import InvalidArgument
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fimlab.testing.strategies needs Hypothesis, an optional dependency of fimlab: "
        'install it with pip install "fimlab[test]" (or pip install hypothesis). '
        "fimlab.testing's oracles and assertions work without it."
    ) from exc

from ..backend import from_host, is_numpy_namespace, library_name, use_backend
from .cases import ACTIVATIONS, LIKELIHOODS, make_targets

__all__ = [
    "FISHER_TYPES",
    "DAMPING_RULES",
    "KroneckerCase",
    "GridCase",
    "MLPCase",
    "seeds",
    "dtypes",
    "fisher_types",
    "layer_sizes",
    "spd_matrices",
    "psd_matrices",
    "kronecker_products",
    "kronecker_sums",
    "grid_matrices",
    "factor_batches",
    "mlps",
    "dampings",
    "damping_rules",
]

#: the three Fisher types of :func:`fimlab.factor_batch`
FISHER_TYPES = ("exact", "mc", "empirical")

#: the damping rules of fimlab's Kronecker operators
DAMPING_RULES = ("factor", "pi", "exact")

_FACTOR_KINDS = ("spd", "psd", "symmetric", "general")

# default sizes (module constants, so that the signatures show them)
_SIZES = st.integers(1, 6)
_DIMS = st.integers(1, 4)
_RANKS = st.integers(1, 3)
_SAMPLES = st.integers(1, 6)
_MC = st.integers(1, 3)


class KroneckerCase(NamedTuple):
    """A matrix ``Σ_r A_r ⊗ G_r`` together with its exact factors.

    ``matrix`` was computed from exactly these ``terms`` (in order, in the drawn dtype),
    so ``sum(kron(A, G) for A, G in terms)`` reproduces it bit for bit.
    """

    matrix: Any
    terms: list
    d_a: int
    d_g: int

    @property
    def rank(self) -> int:
        """The number of Kronecker terms."""
        return len(self.terms)


class GridCase(NamedTuple):
    """A ``(d_a·d_g) × (d_a·d_g)`` matrix seen as a ``d_a × d_a`` grid of ``d_g × d_g``
    blocks (the input of the rearrangement and of the Kronecker product SVD)."""

    matrix: Any
    d_a: int
    d_g: int


class MLPCase(NamedTuple):
    """A small :class:`fimlab.MLP` with inputs ``X`` and targets ``y`` of its likelihood."""

    net: Any
    X: Any
    y: Any


# -- helpers -------------------------------------------------------------------------------
def _resolve(draw, value):
    """A fixed value, or a draw when ``value`` is a strategy."""
    return draw(value) if isinstance(value, st.SearchStrategy) else value


def _dtype_name(dtype) -> str:
    name = str(dtype).rsplit(".", 1)[-1]
    if name not in ("float64", "float32"):
        raise InvalidArgument(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return name


def _eps(dtype_name: str) -> float:
    return float(np.finfo(np.dtype(dtype_name)).eps)


def _positive_int(name: str, value, lo: int = 1):
    if isinstance(value, st.SearchStrategy):
        return value
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= lo):
        raise InvalidArgument(f"{name} must be an integer >= {lo} or a strategy, got {value!r}")
    return int(value)


def _namespace(xp):
    """``None`` for NumPy; the namespace to move arrays to otherwise (raw ``torch`` is
    seen through ``array_api_compat``)."""
    if xp is None or is_numpy_namespace(xp):
        return None
    import array_api_compat

    if array_api_compat.is_torch_namespace(xp):
        import array_api_compat.torch as txp

        return txp
    return xp


def _to_xp(M: np.ndarray, xp, dtype: str, device=None):
    """Host array ``M`` rounded to ``dtype`` and moved to ``xp`` (on ``device``)."""
    M = np.asarray(M, dtype=dtype)
    ns = _namespace(xp)
    if ns is None:
        return M
    return from_host(M, ns, dtype=dtype, device=device)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _orthogonal(rng, n: int) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    Z = rng.standard_normal((n, n))
    Q, R = np.linalg.qr(Z)
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


def _spectrum(rng, k: int, kappa: float, scale: float) -> np.ndarray:
    """``k`` values in ``[scale/kappa, scale]`` with both ends attained (for ``k >= 2``)."""
    if k == 0:
        return np.zeros(0)
    u = rng.uniform(0.0, 1.0, size=k)
    u[0], u[-1] = 0.0, (1.0 if k > 1 else 0.0)
    return scale * kappa ** (-u)


def _check_condition(max_condition) -> float:
    if not (isinstance(max_condition, (int, float)) and math.isfinite(max_condition)
            and max_condition >= 1.0):
        raise InvalidArgument(f"max_condition must be a finite number >= 1, got {max_condition!r}")
    return float(max_condition)


def _draw_kappa(draw, max_condition: float, n: int, dtype: str) -> float:
    """A target condition number, kept far enough below ``max_condition`` that the
    rounding of the construction (and of the cast to ``dtype``) cannot push the
    computed condition number above it."""
    margin = 1.0 + 20.0 * n * _eps(dtype) * max_condition
    hi = max_condition / margin
    if hi <= 1.0:
        return 1.0
    return 10.0 ** draw(st.floats(0.0, math.log10(hi)))


def _spd_host(rng, n: int, kappa: float, scale: float) -> np.ndarray:
    if kappa == 1.0:  # a rotated multiple of I is a multiple of I: exactly, not to rounding
        return scale * np.eye(n)
    Q = _orthogonal(rng, n)
    w = _spectrum(rng, n, kappa, scale)
    M = (Q * w) @ Q.T
    return (M + M.T) / 2


def _psd_host(rng, n: int, rank: int, kappa: float, scale: float) -> np.ndarray:
    Q = _orthogonal(rng, n)[:, :rank]
    w = _spectrum(rng, rank, kappa, scale)
    M = (Q * w) @ Q.T
    return (M + M.T) / 2


def _scales() -> st.SearchStrategy:
    return st.floats(-2.0, 2.0).map(lambda e: 10.0 ** e)


def seeds() -> st.SearchStrategy:
    """Seeds for ``numpy.random.default_rng`` (what every strategy here draws first).

    Examples
    --------
    >>> from hypothesis import find
    >>> find(seeds(), lambda s: s > 10)
    11
    """
    return st.integers(0, 2**32 - 1)


def dtypes() -> st.SearchStrategy:
    """``"float64"`` or ``"float32"``.

    Examples
    --------
    >>> from hypothesis import find
    >>> find(dtypes(), lambda d: True)
    'float64'
    """
    return st.sampled_from(("float64", "float32"))


def fisher_types() -> st.SearchStrategy:
    """``"exact"``, ``"mc"`` or ``"empirical"``.

    Examples
    --------
    >>> from hypothesis import find
    >>> find(fisher_types(), lambda f: f != "exact")
    'mc'
    """
    return st.sampled_from(FISHER_TYPES)


def layer_sizes(*, min_layers: int = 1, max_layers: int = 3, min_width: int = 1,
                max_width: int = 5) -> st.SearchStrategy:
    """Layer sizes ``[d_0, d_1, …, d_L]`` of an MLP with ``L`` in
    ``[min_layers, max_layers]`` and every width in ``[min_width, max_width]``.

    Examples
    --------
    >>> from hypothesis import find
    >>> find(layer_sizes(min_layers=2), lambda s: True)
    [1, 1, 1]
    """
    if not 1 <= min_layers <= max_layers:
        raise InvalidArgument(f"need 1 <= min_layers <= max_layers, got {min_layers}, {max_layers}")
    if not 1 <= min_width <= max_width:
        raise InvalidArgument(f"need 1 <= min_width <= max_width, got {min_width}, {max_width}")
    return st.integers(min_layers, max_layers).flatmap(
        lambda L: st.lists(st.integers(min_width, max_width), min_size=L + 1, max_size=L + 1)
    )


# -- matrices -------------------------------------------------------------------------------
def spd_matrices(n=_SIZES, *, max_condition: float = 1e3, xp=None,
                 dtype="float64", device=None) -> st.SearchStrategy:
    """Symmetric positive definite ``n × n`` matrices with condition number at most
    ``max_condition``.

    ``Q diag(w) Qᵀ`` with ``Q`` Haar-random orthogonal and eigenvalues ``w`` spread
    log-uniformly over ``[s/κ, s]`` (both ends attained), ``κ`` drawn log-uniformly up
    to ``max_condition`` (less a margin for rounding: the *computed* ``cond`` of the
    returned matrix, after the cast to ``dtype``, stays within the bound), the scale
    ``s`` in ``[1e-2, 1e2]``. Exactly symmetric.

    Parameters
    ----------
    n : int or strategy
        Size.
    max_condition : float
        Bound on the 2-norm condition number.
    xp : array namespace, optional
        Where the array goes (NumPy by default).
    dtype : {"float64", "float32"} or strategy
    device : optional
        Device of ``xp`` to place it on.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import find
    >>> M = find(spd_matrices(n=4, max_condition=50.0), lambda M: True)
    >>> bool(np.linalg.eigvalsh(M).min() > 0), bool(np.linalg.cond(M) <= 50.0)
    (True, True)
    """
    n = _positive_int("n", n)
    max_condition = _check_condition(max_condition)

    @st.composite
    def build(draw):
        size = _resolve(draw, n)
        dt = _dtype_name(_resolve(draw, dtype))
        kappa = _draw_kappa(draw, max_condition, size, dt)
        scale = draw(_scales())
        M = _spd_host(_rng(draw(seeds())), size, kappa, scale)
        return _to_xp(M, xp, dt, device)

    return build()


def psd_matrices(n=_SIZES, *, rank=None, max_condition: float = 1e3, xp=None,
                 dtype="float64", device=None) -> st.SearchStrategy:
    """Symmetric positive semi-definite ``n × n`` matrices of a given rank.

    ``Q_r diag(w) Q_rᵀ`` with ``r`` orthonormal columns ``Q_r`` and ``w`` as in
    :func:`spd_matrices` (the condition number of the non-zero part is at most
    ``max_condition``). The numerical rank is exactly ``r``: ``r`` eigenvalues lie in
    ``[‖M‖/max_condition, ‖M‖]``, the other ``n − r`` are at the level of rounding
    (``≲ n·eps·‖M‖``). ``rank=0`` gives the zero matrix.

    Parameters
    ----------
    n : int or strategy
    rank : int, strategy or None
        ``None``: any rank in ``[0, n]``.
    max_condition, xp, dtype, device
        As in :func:`spd_matrices`.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import find
    >>> M = find(psd_matrices(n=5, rank=2), lambda M: True)
    >>> int(np.linalg.matrix_rank(M, tol=1e-8 * np.linalg.norm(M, 2)))
    2
    """
    n = _positive_int("n", n)
    max_condition = _check_condition(max_condition)
    if rank is not None:
        rank = _positive_int("rank", rank, lo=0)

    @st.composite
    def build(draw):
        size = _resolve(draw, n)
        r = draw(st.integers(0, size)) if rank is None else _resolve(draw, rank)
        if r > size:
            raise InvalidArgument(f"rank {r} exceeds the size {size}")
        dt = _dtype_name(_resolve(draw, dtype))
        kappa = _draw_kappa(draw, max_condition, size, dt)
        scale = draw(_scales())
        M = _psd_host(_rng(draw(seeds())), size, r, kappa, scale)
        return _to_xp(M, xp, dt, device)

    return build()


def _factor_host(rng, d: int, kind: str, max_condition: float, dt: str, kappa_draw) -> np.ndarray:
    if kind == "spd":
        return _spd_host(rng, d, kappa_draw(d), float(rng.uniform(0.1, 10.0)))
    if kind == "psd":
        r = int(rng.integers(1, d + 1))
        return _psd_host(rng, d, r, kappa_draw(d), float(rng.uniform(0.1, 10.0)))
    B = rng.standard_normal((d, d))
    if kind == "symmetric":
        return (B + B.T) / 2
    return B


def _kron_case(draw, d_a, d_g, r, factors, max_condition, xp, dtype, device) -> KroneckerCase:
    da, dg = _resolve(draw, d_a), _resolve(draw, d_g)
    kind = _resolve(draw, factors)
    if kind not in _FACTOR_KINDS:
        raise InvalidArgument(f"factors must be one of {_FACTOR_KINDS}, got {kind!r}")
    dt = _dtype_name(_resolve(draw, dtype))
    rng = _rng(draw(seeds()))

    def kappa_draw(d):
        hi = max_condition / (1.0 + 20.0 * d * _eps(dt) * max_condition)
        return float(10.0 ** rng.uniform(0.0, math.log10(max(hi, 1.0))))

    host_terms = []
    for _ in range(r):
        A = _factor_host(rng, da, kind, max_condition, dt, kappa_draw).astype(dt)
        G = _factor_host(rng, dg, kind, max_condition, dt, kappa_draw).astype(dt)
        host_terms.append((A, G))
    M = None
    for A, G in host_terms:  # in the drawn dtype, in order: reproducible bit for bit
        K = np.kron(A, G)
        M = K if M is None else M + K
    terms = [(_to_xp(A, xp, dt, device), _to_xp(G, xp, dt, device)) for A, G in host_terms]
    return KroneckerCase(_to_xp(M, xp, dt, device), terms, da, dg)


def kronecker_products(d_a=_DIMS, d_g=_DIMS, *, factors="spd",
                       max_condition: float = 1e2, xp=None, dtype="float64",
                       device=None) -> st.SearchStrategy:
    """A Kronecker product ``A ⊗ G`` with its exact factors, as a :class:`KroneckerCase`.

    Parameters
    ----------
    d_a, d_g : int or strategy
        Sizes of ``A`` (input side) and ``G`` (output side).
    factors : {"spd", "psd", "symmetric", "general"} or strategy
        What kind of factors: SPD (condition number at most ``max_condition``), PSD of
        random rank ``>= 1``, symmetric indefinite, or general square.
    max_condition, xp, dtype, device
        As in :func:`spd_matrices`.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import find
    >>> case = find(kronecker_products(d_a=2, d_g=3), lambda c: True)
    >>> (A, G), = case.terms
    >>> case.matrix.shape, bool(np.array_equal(np.kron(A, G), case.matrix))
    ((6, 6), True)
    """
    return kronecker_sums(d_a, d_g, rank=1, factors=factors, max_condition=max_condition,
                          xp=xp, dtype=dtype, device=device)


def kronecker_sums(d_a=_DIMS, d_g=_DIMS, rank=_RANKS, *,
                   factors="spd", max_condition: float = 1e2, xp=None, dtype="float64",
                   device=None) -> st.SearchStrategy:
    """A sum of ``rank`` Kronecker products ``Σ_r A_r ⊗ G_r`` with its exact factors, as
    a :class:`KroneckerCase` (``terms`` in the order they were summed).

    For random factors the rearrangement ``R(M) = Σ_r vec(A_r) vec(G_r)ᵀ`` has rank
    ``min(rank, d_a², d_g²)`` with probability one (``min(rank, d_a(d_a+1)/2,
    d_g(d_g+1)/2)`` for symmetric factors, whose ``vec`` lie in the symmetric subspace),
    so a Kronecker product SVD of that rank recovers ``M``.

    Parameters
    ----------
    d_a, d_g, rank : int or strategy
    factors, max_condition, xp, dtype, device
        As in :func:`kronecker_products`.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import find
    >>> case = find(kronecker_sums(d_a=2, d_g=2, rank=2), lambda c: True)
    >>> case.rank, bool(np.array_equal(sum(np.kron(A, G) for A, G in case.terms), case.matrix))
    (2, True)
    """
    d_a, d_g = _positive_int("d_a", d_a), _positive_int("d_g", d_g)
    rank = _positive_int("rank", rank)
    max_condition = _check_condition(max_condition)

    @st.composite
    def build(draw):
        r = _resolve(draw, rank)
        return _kron_case(draw, d_a, d_g, r, factors, max_condition, xp, dtype, device)

    return build()


def grid_matrices(d_a=_DIMS, d_g=_DIMS, *, kind="psd", xp=None,
                  dtype="float64", device=None) -> st.SearchStrategy:
    """Matrices on the rearrangement grid ``d_a × d_a`` of ``d_g × d_g`` blocks, as a
    :class:`GridCase`.

    Parameters
    ----------
    d_a, d_g : int or strategy
    kind : {"psd", "symmetric", "general"} or strategy
        A PSD matrix of any rank (like a Fisher block), a symmetric one, or a general
        square one (entries standard normal).
    xp, dtype, device
        As in :func:`spd_matrices`.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(grid_matrices(d_a=2, d_g=3), lambda c: True)
    >>> case.matrix.shape, case.d_a, case.d_g
    ((6, 6), 2, 3)
    """
    d_a, d_g = _positive_int("d_a", d_a), _positive_int("d_g", d_g)

    @st.composite
    def build(draw):
        da, dg = _resolve(draw, d_a), _resolve(draw, d_g)
        k = _resolve(draw, kind)
        dt = _dtype_name(_resolve(draw, dtype))
        rng = _rng(draw(seeds()))
        n = da * dg
        if k == "psd":
            M = _psd_host(rng, n, int(rng.integers(0, n + 1)), 1e3, 1.0)
        elif k == "symmetric":
            B = rng.standard_normal((n, n))
            M = (B + B.T) / 2
        elif k == "general":
            M = rng.standard_normal((n, n))
        else:
            raise InvalidArgument(f"kind must be 'psd', 'symmetric' or 'general', got {k!r}")
        return GridCase(_to_xp(M, xp, dt, device), da, dg)

    return build()


# -- networks and factor batches --------------------------------------------------------------
def _draw_net_spec(draw, sizes, activation, likelihood, min_layers: int = 1):
    if sizes is None:
        sz = draw(layer_sizes(min_layers=min_layers))
    else:
        sz = list(_resolve(draw, sizes))
    if len(sz) < 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in sz):
        raise InvalidArgument(f"layer_sizes must list >= 2 positive sizes, got {sz!r}")
    act = draw(st.sampled_from(ACTIVATIONS)) if activation is None else _resolve(draw, activation)
    # a categorical likelihood needs >= 2 classes (one class has an identically zero Fisher)
    liks = [x for x in LIKELIHOODS if x != "categorical" or sz[-1] >= 2 or sizes is None]
    lik = draw(st.sampled_from(liks)) if likelihood is None else _resolve(draw, likelihood)
    if lik == "categorical" and sz[-1] < 2:
        if sizes is not None:
            raise InvalidArgument(f"a categorical likelihood needs >= 2 outputs, got "
                                  f"layer_sizes {sz!r}")
        sz = sz[:-1] + [2]
    return [int(s) for s in sz], act, lik


def _numpy_net(sizes, act, lik, seed: int, dtype: str):
    """A fimlab MLP on the NumPy backend with small non-zero biases (so that ReLU units
    do not all sit on their kink for zero inputs)."""
    import fimlab as fl

    with use_backend("numpy"):
        net = fl.MLP(sizes, activation=act, likelihood=lik, seed=seed % 2**31, dtype=dtype)
    rng = _rng(seed + 1)
    params = []
    for W in net.params:
        W = np.array(W, dtype=np.float64)
        W[:, -1] = 0.1 * rng.standard_normal(W.shape[0])
        params.append(W.astype(dtype))
    net.params = params
    return net


def factor_batches(n_samples=_SAMPLES, layer_sizes=None, *, fisher=None,
                   mc_samples=_MC, activation=None, likelihood=None,
                   dead_units=False, xp=None, dtype="float64", device=None) -> st.SearchStrategy:
    """Factor batches of small random MLPs (:class:`fimlab.FactorBatch`).

    A random :class:`fimlab.MLP` (non-zero biases) is evaluated on ``N`` standard
    normal inputs with targets of its likelihood, and :func:`fimlab.factor_batch` gives
    the batch of the requested Fisher type (``K = C`` outputs for ``"exact"``,
    ``K = mc_samples`` for ``"mc"``, ``K = 1`` for ``"empirical"``). The arrays are then
    rounded to ``dtype`` and moved to ``xp``; ``batch.fisher`` records the type.

    Parameters
    ----------
    n_samples : int or strategy
        ``N``; pass ``1`` for the one-sample degenerate case.
    layer_sizes : list of int or strategy, optional
        ``[d_0, …, d_L]``; default :func:`layer_sizes` (at least two layers with
        ``dead_units``).
    fisher : {"exact", "mc", "empirical"}, strategy or None
        ``None``: any of the three.
    mc_samples : int or strategy
        ``S`` for ``"mc"``.
    activation, likelihood : str, strategy or None
        ``None``: any (the activation is ReLU with ``dead_units``).
    dead_units : bool or strategy
        ``True``: one or more hidden ReLU units of one hidden layer are dead — their
        incoming weights are zero and their bias is ``−1``, so for every sample their
        output (a column of ``a`` of the next layer) and their back-propagated entry
        (a column of ``g`` of their own layer) are exactly zero.
    xp, dtype, device
        As in :func:`spd_matrices`.

    Examples
    --------
    >>> from hypothesis import find
    >>> b = find(factor_batches(n_samples=3, layer_sizes=[2, 4, 3], fisher="exact"),
    ...          lambda b: True)
    >>> b.n_samples, b.n_vectors, b.fisher, [a.shape for a in b.a]
    (3, 3, 'exact', [(3, 3), (3, 5)])
    """
    n_samples = _positive_int("n_samples", n_samples)
    mc_samples = _positive_int("mc_samples", mc_samples)

    @st.composite
    def build(draw):
        import fimlab as fl

        dead = bool(_resolve(draw, dead_units))
        act_arg = "relu" if dead else activation
        sizes, act, lik = _draw_net_spec(draw, layer_sizes, act_arg, likelihood,
                                         min_layers=2 if dead else 1)
        if dead and len(sizes) < 3:
            raise InvalidArgument(f"dead_units needs a hidden layer; layer sizes {sizes}")
        N = _resolve(draw, n_samples)
        f = draw(fisher_types()) if fisher is None else _resolve(draw, fisher)
        if f not in FISHER_TYPES:
            raise InvalidArgument(f"fisher must be one of {FISHER_TYPES}, got {f!r}")
        S = _resolve(draw, mc_samples)
        dt = _dtype_name(_resolve(draw, dtype))
        seed = draw(seeds())
        net = _numpy_net(sizes, act, lik, seed, "float64")
        if dead:
            l = draw(st.integers(0, len(sizes) - 3))  # a hidden layer: output of layer l
            width = sizes[l + 1]
            units = draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=width,
                                  unique=True))
            params = [np.array(W) for W in net.params]
            params[l][units, :] = 0.0
            params[l][units, -1] = -1.0
            net.params = params
        rng = _rng(seed + 2)
        X = rng.standard_normal((N, sizes[0]))
        y = make_targets(lik, N, sizes[-1], rng)
        with use_backend("numpy"):
            b = fl.factor_batch(net, X, y, fisher=f, mc_samples=S, rng=seed % 2**31)
        a = [_to_xp(np.asarray(al), xp, dt, device) for al in b.a]
        g = [_to_xp(np.asarray(gl), xp, dt, device) for gl in b.g]
        return fl.FactorBatch(a=a, g=g, fisher=f)

    return build()


def mlps(layer_sizes=None, *, activation=None, likelihood=None, n_samples=_SAMPLES,
         xp=None, dtype="float64", device=None) -> st.SearchStrategy:
    """A small :class:`fimlab.MLP` with inputs and targets, as an :class:`MLPCase`.

    The network has small non-zero biases; ``X`` is standard normal ``(N, d_0)`` and ``y``
    holds targets of the likelihood (:func:`fimlab.testing.make_targets`: class indices,
    Gaussian values or 0/1 values).

    Parameters
    ----------
    layer_sizes : list of int or strategy, optional
        Default :func:`layer_sizes`.
    activation : str, strategy or None
        ``None``: any of ``"tanh"``, ``"relu"``, ``"sigmoid"``, ``"linear"``.
    likelihood : str, strategy or None
        ``None``: any of ``"categorical"``, ``"gaussian"``, ``"bernoulli"``.
    n_samples : int or strategy
    xp : array namespace, optional
        A fimlab backend (NumPy, ``array_api_strict`` or CuPy): the network is created
        on it (``fimlab.use_backend``) and ``X``, ``y`` are moved there. For PyTorch
        models use the PyTorch front-end instead.
    dtype, device
        As in :func:`spd_matrices`.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(mlps(layer_sizes=[3, 2], likelihood="categorical", n_samples=4),
    ...             lambda c: True)
    >>> case.net.layer_sizes, case.X.shape, case.y.shape
    ([3, 2], (4, 3), (4,))
    """
    n_samples = _positive_int("n_samples", n_samples)
    ns = _namespace(xp)
    backend = "numpy" if ns is None else library_name(ns)
    if backend not in ("numpy", "array_api_strict", "cupy"):
        raise InvalidArgument(
            f"mlps() builds fimlab.MLP networks, which live on fimlab's backends (numpy, "
            f"array_api_strict, cupy), not on {backend}; draw factor_batches(xp=...) instead"
        )

    @st.composite
    def build(draw):
        sizes, act, lik = _draw_net_spec(draw, layer_sizes, activation, likelihood)
        N = _resolve(draw, n_samples)
        dt = _dtype_name(_resolve(draw, dtype))
        seed = draw(seeds())
        host = _numpy_net(sizes, act, lik, seed, dt)
        rng = _rng(seed + 2)
        X = rng.standard_normal((N, sizes[0])).astype(dt)
        y = make_targets(lik, N, sizes[-1], rng)
        if backend == "numpy":
            return MLPCase(host, X, y)
        import fimlab as fl

        with use_backend(backend, device):
            net = fl.MLP(sizes, activation=act, likelihood=lik, seed=seed % 2**31, dtype=dt)
            net.params = [from_host(np.asarray(W), ns, dtype=dt, device=device)
                          for W in host.params]
        y_dt = None if lik == "categorical" else dt
        return MLPCase(net, from_host(X, ns, dtype=dt, device=device),
                       from_host(y, ns, dtype=y_dt, device=device))

    return build()


# -- damping ---------------------------------------------------------------------------------
def dampings(min_value: float = 1e-6, max_value: float = 1e2) -> st.SearchStrategy:
    """Damping values ``λ``, log-uniform in ``[min_value, max_value]`` (positive, finite).

    Examples
    --------
    >>> from hypothesis import find
    >>> lam = find(dampings(1e-4, 1.0), lambda lam: True)
    >>> 1e-4 <= lam <= 1.0
    True
    """
    if not (0 < min_value <= max_value < math.inf):
        raise InvalidArgument(f"need 0 < min_value <= max_value < inf, got {min_value}, {max_value}")
    lo, hi = math.log10(min_value), math.log10(max_value)
    return st.floats(lo, hi).map(lambda e: float(min(max(10.0 ** e, min_value), max_value)))


def damping_rules(n_terms: int = 1) -> st.SearchStrategy:
    """The damping rules that apply to a block of ``n_terms`` Kronecker terms:
    ``"factor"``, ``"pi"`` (one term only) and ``"exact"``.

    Examples
    --------
    >>> from hypothesis import find
    >>> find(damping_rules(2), lambda r: r != "factor")
    'exact'
    """
    rules = DAMPING_RULES if n_terms == 1 else ("factor", "exact")
    return st.sampled_from(rules)
