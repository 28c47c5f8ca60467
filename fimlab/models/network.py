"""Layered networks (convolutions, pooling, batch norm, dense layers) with a likelihood.

A :class:`Network` is a sequence of :mod:`fimlab.models.layers` layers on inputs of a
fixed per-sample shape, followed by one of the MLP's likelihoods. Its parameters are one
matrix per layer with parameters, in the order the forward pass calls them: ``[W | b]``
for dense and convolution layers (``W = weight.reshape(c_out, c_in·k_h·k_w)``, PyTorch's
layout), ``[γ | β]`` ``(C, 2)`` for batch norm; ``θ`` concatenates their column-major
``vec`` (as for :class:`fimlab.MLP`).

Batch norm runs in eval mode (running statistics: a per-sample map) unless ``train=True``
is passed (batch statistics: the samples of a batch are coupled).

Ready-made networks of the two-level paper: :func:`cuda_convnet`, :func:`deep_bn_linear`
(:func:`deep_bn_mnist13`, :func:`deep_bn_fashion64`) and a small residual CNN
:func:`small_resnet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import ShapeError, UnknownNameError
from .._validation import check_choice, check_dense_memory, check_finite
from ..backend import to_numpy
from ..batch import FactorBatch
from .layers import (
    Activation,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    Residual,
    Sequential,
)
from .likelihoods import Likelihood, get_likelihood

__all__ = ["Network", "network_factor_batch", "cuda_convnet", "deep_bn_linear",
           "deep_bn_mnist13", "deep_bn_fashion64", "small_resnet",
           "DEEP_BN_MNIST13_WIDTHS"]

FISHER_TYPES = ("exact", "mc", "empirical")

#: the 13-layer deep linear batch-norm net on MNIST
DEEP_BN_MNIST13_WIDTHS = [784, 1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 50, 20, 10]


def _param_layers(layers):
    out = []
    for lay in layers:
        if isinstance(lay, (Sequential, Residual)):
            out.extend(_param_layers(lay.layers))
        elif lay.kind != "none":
            out.append(lay)
    return out


class Network:
    """A feed-forward network of layers with a likelihood on its output.

    Parameters
    ----------
    layers : sequence of Layer
        Applied in order (:class:`~fimlab.models.layers.Residual` blocks allowed).
    input_shape : tuple of int
        Shape of one sample, e.g. ``(3, 32, 32)`` or ``(784,)``.
    likelihood : {"categorical", "gaussian", "bernoulli"} or Likelihood
    seed : int
        Initialisation seed (PyTorch's default scheme ``U(±1/√fan_in)``; batch norm
        ``γ = 1, β = 0``, running mean 0 and variance 1).
    dtype : {"float64", "float32"}

    Examples
    --------
    >>> import numpy as np
    >>> from fimlab.models.layers import Conv2d, ReLU, Flatten, Linear
    >>> net = Network([Conv2d(1, 2, 3), ReLU(), Flatten(), Linear(8, 3)], (1, 4, 4), seed=0)
    >>> [W.shape for W in net.params]
    [(2, 10), (3, 9)]
    >>> net.forward(np.ones((5, 1, 4, 4))).shape
    (5, 3)
    """

    def __init__(self, layers: Sequence[Layer], input_shape, likelihood="categorical",
                 seed: int = 0, dtype="float64"):
        self.layers = list(layers)
        self.input_shape = tuple(int(s) for s in input_shape)
        if str(dtype) not in ("float64", "float32"):
            raise UnknownNameError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.likelihood: Likelihood = get_likelihood(likelihood)
        shape = self.input_shape
        for lay in self.layers:
            if not isinstance(lay, Layer):
                raise TypeError(f"Network layers must be fimlab layers, got "
                                f"{type(lay).__name__}")
            shape = lay.out_shape(shape)
        if len(shape) != 1:
            raise ShapeError(f"the network's output must be a vector per sample, got shape "
                             f"{shape}; end with Flatten() and a Linear layer")
        self.output_size = shape[0]
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.param_layers = _param_layers(self.layers)
        for lay in self.param_layers:
            lay.init(rng, str(dtype))
        self._dtype = np.dtype(str(dtype))
        #: training mode: :meth:`loss_and_gradient` (hence the optimizers) use batch
        #: statistics and update the running ones, as a PyTorch module in ``train()``
        self.training = False

    def train(self, mode: bool = True) -> Network:
        """Set :attr:`training` (the optimizers' loss and gradient use batch statistics
        and update the running statistics); returns the network."""
        self.training = bool(mode)
        return self

    def eval(self) -> Network:
        return self.train(False)

    @property
    def xp(self):
        return np

    def flatten(self, mats):
        """Concatenate the column-major ``vec`` of matrices shaped like the blocks."""
        return np.concatenate([np.asarray(M).ravel(order="F") for M in mats])

    # -- parameters ----------------------------------------------------------------------
    @property
    def dtype(self):
        return self._dtype

    @property
    def shapes(self):
        return [tuple(lay.params.shape) for lay in self.param_layers]

    @property
    def n_params(self) -> int:
        return sum(r * c for r, c in self.shapes)

    @property
    def params(self) -> list:
        return [lay.params for lay in self.param_layers]

    @params.setter
    def params(self, new):
        new = list(new)
        if len(new) != len(self.param_layers):
            raise ShapeError(f"expected {len(self.param_layers)} parameter blocks, got "
                             f"{len(new)}")
        for i, (W, shp) in enumerate(zip(new, self.shapes)):
            if tuple(W.shape) != shp:
                raise ShapeError(f"block {i} must have shape {shp}, got {tuple(W.shape)}")
            check_finite(W, f"block {i}")
        for lay, W in zip(self.param_layers, new):
            lay.params = np.asarray(W, dtype=self._dtype)

    def get_flat(self):
        """``θ``: the column-major ``vec`` of every block, concatenated."""
        return np.concatenate([W.ravel(order="F") for W in self.params])

    def unflatten(self, theta) -> list:
        theta = np.asarray(theta)
        if theta.shape != (self.n_params,):
            raise ShapeError(f"θ must have shape ({self.n_params},), got {theta.shape}")
        out, o = [], 0
        for r, c in self.shapes:
            out.append(theta[o:o + r * c].reshape((r, c), order="F"))
            o += r * c
        return out

    def set_flat(self, theta) -> None:
        self.params = self.unflatten(theta)

    def kinds(self) -> list[str]:
        """Layer kind of each block: ``"linear"``, ``"conv"`` or ``"batchnorm"``."""
        return [lay.kind for lay in self.param_layers]

    # -- forward / backward --------------------------------------------------------------
    def _check_X(self, X):
        X = np.asarray(to_numpy(X))
        if X.ndim != 1 + len(self.input_shape) or tuple(X.shape[1:]) != self.input_shape:
            raise ShapeError(f"X must have shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"for this network, got {tuple(X.shape)}")
        check_finite(X, "X")
        return X.astype(self._dtype, copy=False)

    def _forward(self, X, train=False):
        h = self._check_X(X)
        caches = []
        for lay in self.layers:
            h, c = lay.forward(h, train)
            caches.append(c)
        return h, caches

    def forward(self, X, train: bool = False):
        """Network output ``z``, shape ``(N, d_out)`` (eval mode unless ``train``)."""
        return self._forward(X, train)[0]

    def predict(self, X, train: bool = False):
        return self.likelihood.mean(self.forward(X, train))

    def backward(self, caches, vectors) -> list:
        """Back-propagate output vectors ``(N, K, d_out)``; returns, per parameter block,
        ``(cache, g)`` with ``g`` ``(N, K, *out_shape)`` at that layer's output. The
        gradient at the network's input is not computed (the back-propagation stops at the
        first layer with parameters)."""
        record: dict = {}
        Sequential(*self.layers).backward(caches, vectors, record, input_grad=False)
        return [record[id(lay)] for lay in self.param_layers]

    def update_running_stats(self, X) -> None:
        """Update every batch-norm layer's running statistics with the batch ``X``."""
        h = self._check_X(X)

        def run(layers, h):
            for lay in layers:
                if isinstance(lay, Residual):
                    h = h + run(lay.layers, h)
                    continue
                if isinstance(lay, Sequential):
                    h = run(lay.layers, h)
                    continue
                if isinstance(lay, BatchNorm):
                    lay.update_running(h)
                h = lay.forward(h, True)[0]
            return h

        run(self.layers, h)

    def _targets(self, y, N):
        if y is None:
            raise ShapeError("targets y are required here")
        return self.likelihood.check_targets(np.asarray(to_numpy(y)), N, self.output_size)

    def loss(self, X, y, train: bool = False) -> float:
        """Mean negative log-likelihood."""
        return self.likelihood.loss(self.forward(X, train), self._targets(y, len(X)))

    def loss_and_gradient(self, X, y, train: bool | None = None):
        """``(loss, [∂loss/∂block])`` of the mean loss (through the batch statistics in
        train mode). ``train=None``: :attr:`training`, and then the running statistics are
        updated with ``X`` too (one more forward pass), as PyTorch does in training."""
        if train is None:
            train = self.training
            if train:
                self.update_running_stats(X)
        z, caches = self._forward(X, train)
        y = self._targets(y, z.shape[0])
        loss = self.likelihood.loss(z, y)
        delta = self.likelihood.dloss(z, y)[:, None, :]
        recs = self.backward(caches, delta)
        N = z.shape[0]
        return loss, [lay.grad_sum(c, g) / N
                      for lay, (c, g) in zip(self.param_layers, recs)]

    def gradient(self, X, y, train: bool | None = None) -> list:
        return self.loss_and_gradient(X, y, train)[1]

    def per_sample_jacobians(self, X, vectors, train: bool = False, max_bytes=None):
        """Rows ``vec`` of the gradient of ``vectors[n, k]ᵀ z_n`` w.r.t. ``θ``: ``(N·K, P)``
        (dense, memory-guarded; for tests and small networks)."""
        z, caches = self._forward(X, train)
        N, K = vectors.shape[:2]
        check_dense_memory((N * K, self.n_params), self._dtype, max_bytes,
                           "per-sample Jacobian rows", "network_factor_batch + FisherOperator")
        recs = self.backward(caches, vectors)
        cols = []
        for lay, (c, g) in zip(self.param_layers, recs):
            Gm = lay.grad(c, g)  # (N, K, r, c)
            r, cc = Gm.shape[2:]
            cols.append(Gm.transpose(0, 1, 3, 2).reshape(N * K, r * cc))
        return np.concatenate(cols, axis=1)

    def __repr__(self):
        names = ", ".join(type(lay).__name__ for lay in self.layers)
        return f"Network([{names}], input_shape={self.input_shape}, " \
               f"likelihood={self.likelihood.name!r})"


def _output_vectors(net, z, y, fisher, mc_samples, rng):
    lik = net.likelihood
    if fisher == "exact":
        return lik.sqrt_fisher(z)
    if fisher == "mc":
        if int(mc_samples) != mc_samples or mc_samples < 1:
            raise ShapeError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(0 if rng is None else int(rng))
        return lik.mc_vectors(z, rng, int(mc_samples))
    if y is None:
        raise ShapeError("the empirical Fisher needs the true targets: pass y=...")
    return lik.dloss(z, net._targets(y, z.shape[0]))[:, None, :]


def network_factor_batch(net: Network, X, y=None, fisher: str = "exact", mc_samples: int = 1,
                         rng=None, train: bool = False,
                         batchnorm: str = "fixed") -> FactorBatch:
    """The factor batch of the dense and convolution layers of ``net`` on ``X``.

    Parameters
    ----------
    net : Network
    X : array, shape (N, *input_shape)
    y, fisher, mc_samples, rng
        As :func:`fimlab.factor_batch`.
    train : bool
        Batch norm with batch statistics (the vectors a batched backward through the batch
        statistics gives: what KFAC sees in training; samples are coupled, so these are
        not per-sample gradients). Default ``False``: eval mode, running statistics, the
        per-sample Fisher.
    batchnorm : {"fixed", "include"}
        ``"fixed"`` (default): the batch-norm scales and shifts are held fixed and have no
        block. ``"include"``: each batch-norm layer is a block of its own, in ``θ``'s
        order, so the batch's Fisher is the Fisher of all of ``θ`` (see Notes).

    Returns
    -------
    FactorBatch
        One layer per dense or convolution layer (in forward order): dense ``a (N, d+1)``,
        ``g (N, K, d_out)``; convolution ``a (N, T, c_in·k_h·k_w + 1)`` (patches),
        ``g (N, K, T, c_out)``; with ``batchnorm="include"`` also one per batch-norm layer,
        ``a (N, 1)`` of ones and ``g (N, K, 2C)``.

    Notes
    -----
    With ``batchnorm="fixed"`` the Fisher of this batch is the Fisher of the parameters of
    the dense and convolution layers with the batch-norm scales and shifts held fixed (the
    block of ``θ`` without the batch-norm entries).

    A batch-norm layer's parameters ``[γ | β]`` (``C × 2``, column-major: ``γ`` then ``β``)
    have per-sample gradient rows ``[Σ_t δ_nkt ∘ x̂_nt ; Σ_t δ_nkt]`` (``δ`` the vector
    back-propagated to the layer's output, ``x̂`` its normalised input, ``t`` over the
    spatial positions of a 2-D batch norm). They are not a Kronecker product of two
    factors, so ``"include"`` writes each as the trivial one, ``1 ⊗ row``: the layer's
    ``a`` is a column of ones (``d_a = 1``) and its ``g`` holds the rows. Every product,
    norm and solve of the Fisher is then exact on these blocks, and every Kronecker
    approximation is *exact* on them (``A = 1``, ``G`` = the block itself): the methods
    differ only on the dense and convolution blocks. :meth:`Network.per_sample_jacobians`
    gives the same rows densely (tests).

    Examples
    --------
    >>> import numpy as np
    >>> net = cuda_convnet(input_shape=(3, 26, 26), channels=(4, 4, 8), seed=0)
    >>> b = network_factor_batch(net, np.zeros((2, 3, 26, 26)))
    >>> [tuple(a.shape) for a in b.a]
    [(2, 576, 28), (2, 36, 37), (2, 1, 17), (2, 9)]
    """
    if not isinstance(net, Network):
        raise TypeError(f"network_factor_batch needs a Network, got {type(net).__name__}")
    check_choice(fisher, FISHER_TYPES, "Fisher type")
    check_choice(batchnorm, ("fixed", "include"), "batchnorm")
    z, caches = net._forward(X, train)
    vectors = _output_vectors(net, z, y, fisher, mc_samples, rng)
    recs = net.backward(caches, vectors)
    a, g = [], []
    for lay, (c, gg) in zip(net.param_layers, recs):
        if lay.kind in ("linear", "conv"):
            al, gl = lay.factors(c, gg)
            a.append(al)
            g.append(gl)
        elif batchnorm == "include":  # rows [dγ; dβ] as the Kronecker product 1 ⊗ row
            Gm = lay.grad(c, gg)  # (N, K, C, 2)
            N, K = Gm.shape[:2]
            g.append(np.ascontiguousarray(
                np.swapaxes(Gm, 2, 3).reshape(N, K, 2 * Gm.shape[2])))
            a.append(np.ones((N, 1), dtype=Gm.dtype))
    return FactorBatch(a, g, fisher=fisher)


# -- ready-made networks ----------------------------------------------------------------------
def cuda_convnet(input_shape=(3, 32, 32), n_classes: int = 10, channels=(32, 32, 64),
                 likelihood="categorical", seed: int = 0, dtype="float64") -> Network:
    """The two-level paper's "cuda-convnet" CIFAR-10 CNN.

    Conv 3→32 k3, ReLU, MaxPool 3, BN; Conv 32→32 k3, ReLU, MaxPool 3, BN; Conv 32→64 k2,
    ReLU; Flatten; Linear → 10 (no padding, pooling stride 3: 32×32 → 30 → 10 → 8 → 2 → 1,
    so the linear layer sees 64 features). ``channels`` and ``input_shape`` scale it down.

    Examples
    --------
    >>> net = cuda_convnet(seed=0)
    >>> net.shapes
    [(32, 28), (32, 2), (32, 289), (32, 2), (64, 129), (10, 65)]
    """
    c1, c2, c3 = channels
    C = input_shape[0]
    layers = [Conv2d(C, c1, 3), Activation("relu"), MaxPool2d(3), BatchNorm(c1),
              Conv2d(c1, c2, 3), Activation("relu"), MaxPool2d(3), BatchNorm(c2),
              Conv2d(c2, c3, 2), Activation("relu"), Flatten()]
    shape = tuple(input_shape)
    for lay in layers:
        shape = lay.out_shape(shape)
    layers.append(Linear(shape[0], n_classes))
    return Network(layers, input_shape, likelihood, seed=seed, dtype=dtype)


def deep_bn_linear(widths, likelihood="categorical", seed: int = 0,
                   dtype="float64") -> Network:
    """A deep *linear* MLP with ``BatchNorm`` after every hidden linear layer (no
    nonlinearity): ``Linear(w0, w1), BN(w1), Linear(w1, w2), BN(w2), …, Linear(w_{L-1}, w_L)``.

    Examples
    --------
    >>> net = deep_bn_linear([6, 5, 4, 3])
    >>> net.kinds()
    ['linear', 'batchnorm', 'linear', 'batchnorm', 'linear']
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2:
        raise ShapeError(f"widths must list an input and an output size, got {widths}")
    layers: list = []
    for i in range(len(widths) - 1):
        layers.append(Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(BatchNorm(widths[i + 1]))
    return Network(layers, (widths[0],), likelihood, seed=seed, dtype=dtype)


def deep_bn_mnist13(seed: int = 0, dtype="float64") -> Network:
    """The 13-layer 784-1000-900-…-20-10 deep linear batch-norm net (MNIST)."""
    return deep_bn_linear(DEEP_BN_MNIST13_WIDTHS, seed=seed, dtype=dtype)


def deep_bn_fashion64(seed: int = 0, dtype="float64", width: int = 10,
                      n_inputs: int = 784) -> Network:
    """The 64-layer deep linear batch-norm net (784→10, 62×(10→10), 10→10; Fashion-MNIST).

    Examples
    --------
    >>> net = deep_bn_fashion64()
    >>> sum(k == "linear" for k in net.kinds()), sum(k == "batchnorm" for k in net.kinds())
    (64, 63)
    """
    return deep_bn_linear([n_inputs] + [width] * 63 + [10], seed=seed, dtype=dtype)


def small_resnet(input_shape=(3, 16, 16), n_classes: int = 10, channels: int = 8,
                 n_blocks: int = 2, likelihood="categorical", seed: int = 0,
                 dtype="float64") -> Network:
    """A small residual CNN (a stand-in for the papers' ResNets).

    Conv k3 (padding 1), BN, ReLU; ``n_blocks`` × [x + (Conv k3, BN, ReLU, Conv k3, BN)(x),
    ReLU]; AvgPool 2; Flatten; Linear.

    Examples
    --------
    >>> net = small_resnet(input_shape=(1, 8, 8), channels=2, n_blocks=1)
    >>> net.kinds()
    ['conv', 'batchnorm', 'conv', 'batchnorm', 'conv', 'batchnorm', 'linear']
    """
    c = int(channels)
    layers: list = [Conv2d(input_shape[0], c, 3, padding=1), BatchNorm(c), Activation("relu")]
    for _ in range(int(n_blocks)):
        layers.append(Residual(Conv2d(c, c, 3, padding=1), BatchNorm(c), Activation("relu"),
                               Conv2d(c, c, 3, padding=1), BatchNorm(c)))
        layers.append(Activation("relu"))
    layers += [AvgPool2d(2), Flatten()]
    shape = tuple(input_shape)
    for lay in layers:
        shape = lay.out_shape(shape)
    layers.append(Linear(shape[0], n_classes))
    return Network(layers, input_shape, likelihood, seed=seed, dtype=dtype)
