"""A multilayer perceptron with a likelihood, and the factor batches it produces.

Layer ``l`` (0-based) computes ``s_l = W_l ā_l`` with ``ā_l = [a_{l−1}; 1]`` (bias in the
last column of ``W_l``, shape ``(d_out, d_in + 1)``) and ``a_l = φ_l(s_l)``; the last layer
has no activation: its output ``z`` goes to the likelihood. The parameter vector ``θ``
concatenates ``vec(W_0), …, vec(W_{L−1})`` (column-major ``vec``; docs/guide/conventions.rst).

The model is written against the array namespace of its parameters (NumPy by default; a
model created under ``fl.set_backend("cupy")`` lives on the GPU). Initialisation and
Monte-Carlo draws use host NumPy generators, so a seed gives the same numbers everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import InputTypeError, ShapeError
from .._validation import check_choice, check_dense_memory, check_finite
from ..backend import (
    array_namespace,
    asarray_on,
    default_namespace,
    device_of,
    from_host,
    to_numpy,
    vec,
)
from ..batch import FactorBatch
from .likelihoods import Likelihood, get_likelihood

__all__ = ["MLP", "factor_batch", "exact_fisher", "empirical_fisher", "ACTIVATIONS", "FISHER_TYPES"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")
#: weight initialisations of :class:`MLP` (``"default"``: N(0, gain²/d_in))
INITS = ("default", "xavier_uniform", "xavier_normal", "normal")
FISHER_TYPES = ("exact", "mc", "empirical")


def _act(name, s, xp):
    if name == "relu":  # a 0-d zero broadcasts: no N × d zeros array
        return xp.maximum(s, xp.zeros((), dtype=s.dtype, device=device_of(s)))
    if name == "tanh":
        return xp.tanh(s)
    if name == "sigmoid":
        e = xp.exp(-xp.abs(s))
        return xp.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return s


def _dact(name, s, h, xp):
    """Derivative of the activation at ``s`` (``h = φ(s)`` already computed)."""
    if name == "relu":  # h = max(s, 0) > 0 exactly where s > 0
        return xp.astype((h if s is None else s) > 0, h.dtype)
    if name == "tanh":
        return 1.0 - h * h
    if name == "sigmoid":
        return h * (1.0 - h)
    return xp.ones_like(s)


def _numpy_fast(x) -> bool:
    """A NumPy float32/float64 array: the forward and backward passes below apply."""
    return type(x) is np.ndarray and x.dtype in (np.float32, np.float64)


def _act_inplace(name, s) -> None:
    """``s ← φ(s)`` in place (NumPy)."""
    if name == "relu":
        np.maximum(s, 0.0, out=s)
    elif name == "tanh":
        np.tanh(s, out=s)
    elif name == "sigmoid":
        np.copyto(s, _act(name, s, np))


def _forward_numpy(net, X):
    """The forward pass for NumPy arrays at GEMM speed: each layer's
    bias-augmented input ``ā_l = [h_{l−1} | 1]`` is allocated once with its ones column,
    the GEMM of the layer before writes ``s`` straight into its first columns (a strided
    view, which BLAS takes as it is: no concatenation copy), and the activation runs in
    place there; no pre-activations are kept (``s_list`` is ``None``: the derivatives
    are computed from the outputs). ``h_list[l]`` is a view of ``abar[l + 1]``."""
    N, L = X.shape[0], net.n_layers
    dt = X.dtype
    ab = np.empty((N, X.shape[1] + 1), dtype=dt)
    ab[:, :-1] = X
    ab[:, -1] = 1.0
    abar, h_list = [], []
    for l, (W, act) in enumerate(zip(net._params, net.activations)):
        abar.append(ab)
        if l == L - 1:
            h_list.append(ab @ W.T)
            break
        nxt = np.empty((N, W.shape[0] + 1), dtype=dt)
        nxt[:, -1] = 1.0
        h = nxt[:, :-1]
        np.matmul(ab, W.T, out=h)
        _act_inplace(act, h)
        h_list.append(h)
        ab = nxt
    return abar, None, h_list


def _backprop_numpy(net, h_list, vectors):
    """Back-propagation for NumPy arrays: one GEMM per layer on the ``N·K`` rows into a
    fresh array, the activation's derivative (from the layer's output) applied in place
    (relu: zero where the output is zero; tanh: ``1 − h²``; sigmoid: ``h(1 − h)``)."""
    g = vectors
    N, K = g.shape[0], g.shape[1]
    gs = [None] * net.n_layers
    gs[-1] = g
    for l in range(net.n_layers - 1, 0, -1):
        W = net._params[l][:, :-1]
        gn = np.empty((N, K, W.shape[1]), dtype=g.dtype)
        np.matmul(g.reshape(N * K, g.shape[2]), W, out=gn.reshape(N * K, W.shape[1]))
        h, name = h_list[l - 1], net.activations[l - 1]
        if name == "relu":
            np.multiply(gn, (h > 0)[:, None, :], out=gn)
        elif name == "tanh":
            d = np.multiply(h, h)
            np.subtract(1.0, d, out=d)
            np.multiply(gn, d[:, None, :], out=gn)
        elif name == "sigmoid":
            d = np.subtract(1.0, h)
            np.multiply(d, h, out=d)
            np.multiply(gn, d[:, None, :], out=gn)
        gs[l - 1] = g = gn
    return gs


class MLP:
    """A fully connected network with a likelihood on its output.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[d_0, d_1, …, d_L]``: input size, hidden sizes, output size (``L`` layers).
    activation : str or sequence of str
        ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``: one for every hidden layer,
        or one per hidden layer (``L − 1`` names). The output layer is linear; the
        likelihood supplies the link.
    likelihood : {"categorical", "gaussian", "bernoulli"}
        Softmax, unit-variance Gaussian, or independent Bernoulli (sigmoid) outputs.
    seed : int
        Seed of the initialisation: ``W ~ N(0, gain²/d_in)`` (gain 1, or √2 for ReLU),
        biases zero.
    dtype : {"float64", "float32"}
        Parameter dtype (float64 by default).
    init : {"default", "xavier_uniform", "xavier_normal", "normal"}
        Weight initialisation: ``"default"`` as described under ``seed``;
        ``"xavier_uniform"``: ``U(−a, a)`` with ``a = √(6/(d_in + d_out))``;
        ``"xavier_normal"``: ``N(0, 2/(d_in + d_out))``; ``"normal"``:
        ``N(0, init_std²)`` (PyTorch's ``nn.init`` formulas, gain 1).
    init_bias : float
        The value every bias starts at (0 by default; the KPSVD paper's auto-encoders
        used 0.01 with ``"xavier_uniform"``).
    init_std : float
        Standard deviation of ``init="normal"``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 8, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> [W.shape for W in net.params]
    [(8, 5), (3, 9)]
    >>> X = np.ones((2, 4)); net.forward(X).shape
    (2, 3)
    >>> ae = fl.MLP([6, 3, 6], activation="relu", likelihood="bernoulli",
    ...             init="xavier_uniform", init_bias=0.01)
    >>> float(ae.params[0][0, -1]), bool(abs(ae.params[0][:, :-1]).max() <= 2 ** -0.5 * 1.5)
    (0.01, True)
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        activation: str | Sequence[str] = "tanh",
        likelihood: str | Likelihood = "categorical",
        seed: int = 0,
        dtype="float64",
        init: str = "default",
        init_bias: float = 0.0,
        init_std: float = 0.01,
    ):
        from .._validation import check_int

        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__iter__"):
            raise InputTypeError(f"layer_sizes must be a list of integers, got {layer_sizes!r}")
        sizes = [check_int(s, f"layer_sizes[{i}]") for i, s in enumerate(layer_sizes)]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ShapeError(
                f"layer_sizes must list at least an input and an output size, all >= 1; got "
                f"{list(layer_sizes)}"
            )
        L = len(sizes) - 1
        if isinstance(activation, str):
            acts = [activation] * (L - 1)
        else:
            acts = list(activation)
            if len(acts) != L - 1:
                raise ShapeError(
                    f"{L - 1} hidden layer(s) need {L - 1} activation name(s), got {len(acts)}"
                )
        for a in acts:
            check_choice(a, ACTIVATIONS, "activation")
        if isinstance(activation, str):
            check_choice(activation, ACTIVATIONS, "activation")
        self.layer_sizes = sizes
        self.activations = acts + ["linear"]
        self.likelihood = get_likelihood(likelihood)
        if self.likelihood.name == "categorical" and sizes[-1] < 2:
            raise ShapeError(
                f"a categorical likelihood needs at least 2 outputs (classes), got "
                f"{sizes[-1]}: with one class the probabilities are constant and the Fisher "
                "is identically zero; use likelihood='bernoulli' for a binary output")
        from .._validation import check_float_dtype, check_seed

        dtype = check_float_dtype(dtype)
        seed = check_seed(seed)
        from .._budget import check_memory

        n_par = sum((sizes[l] + 1) * sizes[l + 1] for l in range(L))
        # the weights, their float64 draw and cast, and one flat copy (get_flat)
        check_memory(n_par * (8 + 8 + 2 * (4 if dtype == "float32" else 8)),
                     f"an MLP with {n_par:,} parameters (layer sizes {sizes})",
                     "a smaller network")
        check_choice(init, INITS, "initialisation")
        for what, v in (("init_bias", init_bias), ("init_std", init_std)):
            if not np.isfinite(float(v)) or (what == "init_std" and float(v) <= 0):
                raise ShapeError(f"{what} must be a finite number (init_std > 0), got {v!r}")
        self.seed = seed
        self.init = init
        rng = np.random.default_rng(seed)
        params = []
        for l in range(L):
            d_in, d_out = sizes[l], sizes[l + 1]
            W = np.zeros((d_out, d_in + 1))
            if init == "default":
                gain = (np.sqrt(2.0) if self.activations[max(l - 1, 0)] == "relu" and l > 0
                        else 1.0)
                W[:, :d_in] = rng.standard_normal((d_out, d_in)) * gain / np.sqrt(d_in)
            elif init == "xavier_uniform":
                a = np.sqrt(6.0 / (d_in + d_out))
                W[:, :d_in] = rng.uniform(-a, a, size=(d_out, d_in))
            elif init == "xavier_normal":
                W[:, :d_in] = rng.standard_normal((d_out, d_in)) * np.sqrt(2.0 / (d_in + d_out))
            else:
                W[:, :d_in] = rng.standard_normal((d_out, d_in)) * float(init_std)
            W[:, d_in] = float(init_bias)
            params.append(from_host(W.astype(str(dtype)), default_namespace()))
        self._params = params

    # -- parameters ----------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layer_sizes) - 1

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(self.layer_sizes[l + 1], self.layer_sizes[l] + 1) for l in range(self.n_layers)]

    @property
    def n_params(self) -> int:
        return sum(r * c for r, c in self.shapes)

    @property
    def params(self) -> list:
        """``[W_0, …, W_{L−1}]``, ``W_l`` of shape ``(d_out, d_in + 1)``, bias last."""
        return self._params

    @params.setter
    def params(self, new):
        new = list(new)
        if len(new) != self.n_layers:
            raise ShapeError(f"expected {self.n_layers} weight matrices, got {len(new)}")
        for l, (W, shp) in enumerate(zip(new, self.shapes)):
            if tuple(W.shape) != shp:
                raise ShapeError(f"W_{l} must have shape {shp}, got {tuple(W.shape)}")
            check_finite(W, f"W_{l}")
        self._params = new

    @property
    def dtype(self):
        return self._params[0].dtype

    @property
    def xp(self):
        return array_namespace(self._params[0])

    def get_flat(self):
        """``θ = [vec(W_0); …; vec(W_{L−1})]`` (column-major vec)."""
        xp = self.xp
        return xp.concat([vec(W, xp) for W in self._params])

    def set_flat(self, theta) -> None:
        """Set the parameters from a flat ``θ`` (inverse of :meth:`get_flat`)."""
        self.params = self.unflatten(theta)

    def unflatten(self, theta) -> list:
        """Split a flat vector into matrices shaped like the weights."""
        xp = array_namespace(theta)
        if theta.ndim != 1 or theta.shape[0] != self.n_params:
            raise ShapeError(f"θ must have shape ({self.n_params},), got {tuple(theta.shape)}")
        out, o = [], 0
        for r, c in self.shapes:
            out.append(xp.matrix_transpose(xp.reshape(theta[o : o + r * c], (c, r))))
            o += r * c
        return out

    def flatten(self, mats) -> object:
        """Concatenate ``vec`` of matrices shaped like the weights."""
        xp = array_namespace(*mats)
        return xp.concat([vec(M, xp) for M in mats])

    # -- forward / backward --------------------------------------------------------------
    def _check_X(self, X):
        from .._validation import as_array

        X = as_array(X, "X")
        if X.ndim != 2 or X.shape[1] != self.layer_sizes[0]:
            raise ShapeError(
                f"X must have shape (N, {self.layer_sizes[0]}) for this network, got "
                f"{tuple(X.shape)}"
            )
        check_finite(X, "X")
        xp = self.xp
        dev = device_of(self._params[0])
        if array_namespace(X) is not xp or device_of(X) != dev:
            X = asarray_on(to_numpy(X), self._params[0])  # loaded data: to the model
        if X.dtype != self.dtype:
            X = xp.astype(X, self.dtype)
        return X

    def _forward(self, X):
        xp = self.xp
        X = self._check_X(X)
        if _numpy_fast(X):
            return _forward_numpy(self, X)
        abar, s_list, h_list = [], [], []
        h = X
        ones = xp.ones((X.shape[0], 1), dtype=X.dtype, device=device_of(X))
        for W, act in zip(self._params, self.activations):
            ab = xp.concat([h, ones], axis=1)
            s = ab @ xp.matrix_transpose(W)
            h = _act(act, s, xp)
            abar.append(ab)
            s_list.append(s)
            h_list.append(h)
        return abar, s_list, h_list

    def forward(self, X):
        """Network output ``z`` (logits or means), shape ``(N, d_L)``."""
        return self._forward(X)[2][-1]

    def predict(self, X):
        """``E[y | z]``: probabilities (categorical, bernoulli) or means (gaussian)."""
        return self.likelihood.mean(self.forward(X))

    def backprop(self, s_list, h_list, vectors):
        """Back-propagate output-space vectors ``(N, K, d_L)`` to every layer's
        pre-activation: returns ``[g_0, …, g_{L−1}]``, ``g_l`` of shape ``(N, K, d_out_l)``.
        ``s_list`` may be ``None`` (the NumPy forward pass keeps no pre-activations: every
        activation's derivative is a function of its output)."""
        xp = self.xp
        g = vectors
        if _numpy_fast(g) and all(_numpy_fast(h) for h in h_list[:-1]):
            return _backprop_numpy(self, h_list, g)
        gs = [None] * self.n_layers
        gs[-1] = g
        for l in range(self.n_layers - 1, 0, -1):
            W = self._params[l][:, :-1]
            s = None if s_list is None else s_list[l - 1]
            d = _dact(self.activations[l - 1], s, h_list[l - 1], xp)
            N, K = g.shape[0], g.shape[1]
            # one GEMM on the N·K rows (a stacked (N, K, d) @ W runs N small products)
            g = xp.reshape(xp.reshape(g, (N * K, g.shape[2])) @ W, (N, K, W.shape[1]))
            g = g * d[:, None, :]
            gs[l - 1] = g
        return gs

    def _targets(self, y, N):
        if y is None:
            raise ShapeError("targets y are required here")
        from .._validation import as_array

        y = as_array(y, "the targets y")
        ref = self._params[0]
        if not isinstance(y, (list, tuple)) and (
            array_namespace(y) is not self.xp or device_of(y) != device_of(ref)
        ):
            y = asarray_on(to_numpy(y), ref)  # loaded targets: to the model's device
        return self.likelihood.check_targets(y, N, self.layer_sizes[-1])

    def loss(self, X, y) -> float:
        """Mean negative log-likelihood over the samples."""
        X = self._check_X(X)
        z = self.forward(X)
        return self.likelihood.loss(z, self._targets(y, X.shape[0]))

    def loss_and_gradient(self, X, y):
        """``(loss, [∂loss/∂W_l])`` for the mean loss (shapes like :attr:`params`)."""
        X = self._check_X(X)
        abar, s_list, h_list = self._forward(X)
        xp = self.xp
        y = self._targets(y, X.shape[0])
        z = h_list[-1]
        loss = self.likelihood.loss(z, y)
        delta = self.likelihood.dloss(z, y)[:, None, :]  # (N, 1, C)
        gs = self.backprop(s_list, h_list, delta)
        N = X.shape[0]
        grads = [xp.matrix_transpose(g[:, 0, :]) @ ab / N for g, ab in zip(gs, abar)]
        return loss, grads

    def gradient(self, X, y) -> list:
        """Gradient of the mean loss, one matrix per layer."""
        return self.loss_and_gradient(X, y)[1]

    def per_sample_gradients(self, X, y, max_bytes=None):
        """Dense per-sample gradients ``(N, P)`` of ``−log p(y_n|x_n)`` (tests, benchmarks)."""
        N = X.shape[0]
        check_dense_memory((N, self.n_params), self.dtype, max_bytes, "per-sample gradients",
                           "factor_batch(..., fisher='empirical') and FisherOperator")
        b = factor_batch(self, X, y, fisher="empirical")
        return b.jacobian_matrix()

    def __repr__(self) -> str:
        return (f"MLP({self.layer_sizes}, activation={self.activations[:-1]}, "
                f"likelihood={self.likelihood.name!r}, seed={self.seed})")


def factor_batch(
    net: MLP,
    X,
    y=None,
    fisher: str = "exact",
    mc_samples: int = 1,
    rng: np.random.Generator | int | None = None,
) -> FactorBatch:
    """The factor batch of ``net`` on inputs ``X`` (docs/guide/conventions.rst).

    Parameters
    ----------
    net : MLP or Network
        A :class:`fimlab.Network` (convolution, pooling, batch norm) goes to
        :func:`fimlab.models.network.network_factor_batch` (eval mode).
    X : array, shape (N, d_0)
    y : array, optional
        Targets, required for ``fisher="empirical"``: class indices ``(N,)`` (categorical),
        ``(N, d_L)`` floats (gaussian), ``(N, d_L)`` values in [0, 1] (bernoulli).
    fisher : {"exact", "mc", "empirical"}
        ``"exact"``: back-propagate the ``C`` columns of ``H_n^{1/2}`` (K = C): the true
        Fisher, equal to the GGN for these likelihoods. ``"mc"``: back-propagate
        ``∇_z(−log p(ŷ|z))/√S`` for ``S = mc_samples`` targets ŷ sampled from the model
        (K = S). ``"empirical"``: back-propagate ``∇_z(−log p(y_n|z))`` with the true
        targets (K = 1).
    mc_samples : int
        Number of sampled targets per input for ``"mc"``.
    rng : numpy.random.Generator or int, optional
        Source of the Monte-Carlo draws (required for reproducibility; an int is a seed;
        ``None`` means seed 0 so that results stay deterministic).

    Returns
    -------
    FactorBatch
        ``a[l]``: ``(N, d_in+1)``; ``g[l]``: ``(N, K, d_out)``. No Python loop over samples.

    Raises
    ------
    UnknownNameError
        For a ``fisher`` other than the three above.
    ShapeError
        For ``X`` or ``y`` of the wrong shape, ``fisher="empirical"`` without ``y``, or a
        ``mc_samples`` that is not a positive integer.
    NonFiniteError
        For NaN or infinite inputs.

    Notes
    -----
    Every Fisher-type matrix is ``F = (1/N) Σ_{n,k} j_nk j_nkᵀ`` with
    ``j_nk = [ā_0,n ⊗ g_0,nk; …]`` (docs/guide/conventions.rst); only the back-propagated vectors differ
    between the three kinds. The diagonal blocks are docs/papers.md (F1), the off-diagonal
    ones (F2).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(10, 4)); y = np.arange(10) % 3
    >>> b = fl.factor_batch(net, X, fisher="exact")
    >>> [a.shape for a in b.a], [g.shape for g in b.g]
    ([(10, 5), (10, 6)], [(10, 3, 5), (10, 3, 3)])
    >>> [fl.factor_batch(net, X, y, fisher=f, mc_samples=4, rng=1).n_vectors
    ...  for f in ("exact", "mc", "empirical")]
    [3, 4, 1]
    """
    if not isinstance(net, MLP):
        from .network import Network, network_factor_batch

        if isinstance(net, Network):  # conv / batch-norm networks
            return network_factor_batch(net, X, y, fisher=fisher, mc_samples=mc_samples,
                                        rng=rng)
        raise TypeError(f"factor_batch needs an fl.MLP or an fl.Network, got "
                        f"{type(net).__name__}")
    check_choice(fisher, FISHER_TYPES, "Fisher type")
    X = net._check_X(X)
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below, by layer
        abar, s_list, h_list = net._forward(X)
    _check_forward_finite(abar, h_list)
    z = h_list[-1]
    N = X.shape[0]
    lik = net.likelihood
    if fisher == "exact":
        vectors = lik.sqrt_fisher(z)
    elif fisher == "mc":
        if int(mc_samples) != mc_samples or mc_samples < 1:
            raise ShapeError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        from .._validation import check_rng

        rng = check_rng(0 if rng is None else rng, "rng")
        vectors = lik.mc_vectors(z, rng, int(mc_samples))
    else:
        if y is None:
            raise ShapeError("the empirical Fisher needs the true targets: pass y=...")
        yy = net._targets(y, N)
        vectors = lik.dloss(z, yy)[:, None, :]
    g = net.backprop(s_list, h_list, vectors)
    return FactorBatch(abar, g, fisher=fisher)


def exact_fisher(net: MLP, X, max_bytes: int | None = None):
    """Dense exact Fisher ``(P, P)`` of ``net`` on ``X`` (= the GGN), memory-guarded.

    For large networks use ``FisherOperator(factor_batch(net, X))`` instead, which never
    forms the matrix.

    Parameters
    ----------
    net : MLP
    X : array, shape (N, d_0)
    max_bytes : int, optional
        Refuse to form a matrix larger than this (default 2 GiB).

    Returns
    -------
    array, shape (P, P)
        ``(1/N) Σ_n J_nᵀ H_n J_n``, rows and columns in the order of ``θ``.

    Raises
    ------
    DenseMemoryError
        When the matrix would exceed ``max_bytes``; the message names the matrix-free
        alternative.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> F = fl.exact_fisher(net, np.random.default_rng(0).normal(size=(10, 4)))
    >>> F.shape, bool(np.allclose(F, F.T)), bool(np.linalg.eigvalsh(F).min() > -1e-12)
    ((43, 43), True, True)
    """
    from ..curvature import FisherOperator

    check_dense_memory((net.n_params, net.n_params), net.dtype, max_bytes, "exact Fisher",
                       "FisherOperator(factor_batch(net, X)) (matvec, solve, block)")
    return FisherOperator(factor_batch(net, X, fisher="exact")).to_dense(max_bytes=max_bytes)


def empirical_fisher(net: MLP, X, y, max_bytes: int | None = None):
    """Dense empirical Fisher ``(1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ`` of ``net`` on ``(X, y)``.

    ``ℓ_n = −log p(y_n | x_n)`` with the true targets ``y`` (not samples from the model:
    this is not the Fisher information, see :func:`exact_fisher`).

    Parameters
    ----------
    net : MLP
    X : array, shape (N, d_0)
    y : array
        Targets, as for :func:`factor_batch`.
    max_bytes : int, optional
        Refuse to form a matrix larger than this (default 2 GiB).

    Returns
    -------
    array, shape (P, P)

    Raises
    ------
    DenseMemoryError
        When the matrix would exceed ``max_bytes``.
    ShapeError
        For targets of the wrong shape or out of range.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(10, 4)); y = np.arange(10) % 3
    >>> Fe = fl.empirical_fisher(net, X, y)
    >>> grads = [np.concatenate([W.ravel(order="F") for W in net.gradient(X[n:n+1], y[n:n+1])])
    ...          for n in range(10)]                    # per-sample gradients, one by one
    >>> bool(np.allclose(Fe, sum(np.outer(g, g) for g in grads) / 10))
    True
    """
    from ..curvature import FisherOperator

    check_dense_memory((net.n_params, net.n_params), net.dtype, max_bytes, "empirical Fisher",
                       "FisherOperator(factor_batch(net, X, y, fisher='empirical'))")
    b = factor_batch(net, X, y, fisher="empirical")
    return FisherOperator(b).to_dense(max_bytes=max_bytes)


def _check_forward_finite(abar, h_list):
    """Finite inputs whose forward pass overflowed (inputs of 1e200, ...): say in which
    layer, not as a NaN Fisher later."""
    from .._errors import NonFiniteError
    from ..backend import array_namespace

    for l, arr in enumerate(list(abar[1:]) + [h_list[-1]]):
        xp = array_namespace(arr)
        if not bool(xp.all(xp.isfinite(arr))):
            where = f"the input of layer {l + 1}" if l < len(abar) - 1 else "the output"
            raise NonFiniteError(
                f"the forward pass overflowed: {where} holds NaN or inf although X is "
                "finite; the inputs (or weights) are too large: rescale the data")
