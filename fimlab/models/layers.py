"""NumPy layers for networks beyond MLPs: convolution, pooling, batch norm, dense, activations.

Every layer maps a batch ``h`` of shape ``(N, *in_shape)`` to ``(N, *out_shape)`` in
:meth:`Layer.forward` (returning the output and a cache), and back-propagates ``K`` vectors
per sample, ``g`` of shape ``(N, K, *out_shape)``, to ``(N, K, *in_shape)`` in
:meth:`Layer.backward` (the transposed Jacobian of the layer applied to each vector).
Images are ``(N, C, H, W)`` (PyTorch's layout).

Layers with parameters hold one matrix each (the network's parameter block):

* :class:`Linear`: ``[W | b]`` of shape ``(d_out, d_in + 1)``, bias last;
* :class:`Conv2d`: ``[W | b]`` of shape ``(c_out, c_in·k_h·k_w + 1)`` with
  ``W = weight.reshape(c_out, c_in·k_h·k_w)`` (PyTorch's weight layout and unfold order),
  so that the parameter vector means the same in NumPy and PyTorch;
* :class:`BatchNorm`: ``[γ | β]`` of shape ``(C, 2)`` (scale, shift).

The convolution unfolds its input into patches ``ā_{n,t}`` (bias entry 1 appended) with a
strided view (no Python loop over output positions) and runs one GEMM; its output at
position ``t`` is ``W̄ ā_{n,t}``. Layers compute in NumPy.
"""

from __future__ import annotations

import numpy as np

from .._errors import ShapeError, UnknownNameError
from . import _pool

__all__ = [
    "Layer", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten", "BatchNorm",
    "Activation", "ReLU", "Tanh", "Sigmoid", "Identity", "Residual", "Sequential",
]


def _pair(v, name):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ShapeError(f"{name} must be an int or a pair of ints, got {v!r}")
        out = (int(v[0]), int(v[1]))
    else:
        out = (int(v), int(v))
    return out


def _torch_uniform(rng, shape, fan_in):
    """PyTorch's default initialisation of ``nn.Linear``/``nn.Conv2d``: ``U(±1/√fan_in)``."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


class Layer:
    """Base class. ``params`` is ``None`` or one 2-D matrix (the layer's parameter block)."""

    params = None
    kind = "none"
    #: whether :meth:`backward` returns a new array (``True``), its input ``g`` or a view
    #: of it (``None``: ownership passes through), or may do either (``False``); lets
    #: :class:`Sequential` run activations' backward in place on arrays only it holds
    _fresh_grad = False

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def init(self, rng, dtype):  # noqa: B027  (layers without parameters do nothing)
        pass

    def forward(self, h, train: bool = False):
        raise NotImplementedError

    def backward(self, cache, g):
        raise NotImplementedError

    def grad(self, cache, g):
        """Gradient of the layer's block for vectors ``g`` ``(N, K, *out_shape)``: the
        per-vector gradient matrices ``(N, K, *params.shape)``."""
        raise NotImplementedError

    def grad_sum(self, cache, g):
        """``Σ_{n,k}`` of :meth:`grad` (the gradient of a summed loss), shape
        ``params.shape``; layers override it with one product instead of ``N·K`` matrices."""
        return self.grad(cache, g).sum(axis=(0, 1))


# -- dense ----------------------------------------------------------------------------------
class Linear(Layer):
    """``s = W ā`` with ``ā = [h; 1]`` (bias last). Input ``(N, d_in)``.

    Examples
    --------
    >>> import numpy as np
    >>> lin = Linear(3, 2); lin.init(np.random.default_rng(0), "float64")
    >>> lin.params.shape
    (2, 4)
    >>> lin.forward(np.ones((5, 3)))[0].shape
    (5, 2)
    """

    _fresh_grad = True

    kind = "linear"

    def __init__(self, d_in: int, d_out: int):
        self.d_in, self.d_out = int(d_in), int(d_out)
        if self.d_in < 1 or self.d_out < 1:
            raise ShapeError(f"Linear sizes must be >= 1, got {d_in}, {d_out}")

    def out_shape(self, in_shape):
        if tuple(in_shape) != (self.d_in,):
            raise ShapeError(f"Linear({self.d_in}, {self.d_out}) needs inputs of shape "
                             f"({self.d_in},), got {tuple(in_shape)}")
        return (self.d_out,)

    def init(self, rng, dtype):
        W = np.empty((self.d_out, self.d_in + 1))
        W[:, :-1] = _torch_uniform(rng, (self.d_out, self.d_in), self.d_in)
        W[:, -1] = _torch_uniform(rng, (self.d_out,), self.d_in)
        self.params = W.astype(dtype)

    def forward(self, h, train=False):
        ab = np.concatenate([h, np.ones((h.shape[0], 1), dtype=h.dtype)], axis=1)
        return ab @ self.params.T, ab

    def backward(self, cache, g):
        return g @ self.params[:, :-1]

    def factors(self, cache, g):
        """``ā`` ``(N, d_in+1)`` and ``g`` ``(N, K, d_out)`` of the factor batch."""
        return cache, g

    def grad(self, cache, g):
        return g[..., :, None] * cache[:, None, None, :]

    def grad_sum(self, cache, g):
        return g.sum(axis=1).T @ cache


# -- convolution ----------------------------------------------------------------------------
def unfold(x, kernel_size, stride=1, padding=0, dilation=1):
    """Patches of ``x`` ``(N, C, H, W)``: shape ``(N, T, C·k_h·k_w)`` in PyTorch's unfold
    order (channel slowest, then kernel row, kernel column), ``T = H_out·W_out`` positions
    in row-major order. A strided view plus one copy; no loop over positions.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> unfold(x, 2, stride=2)[0].tolist()
    [[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0], [8.0, 9.0, 12.0, 13.0], [10.0, 11.0, 14.0, 15.0]]
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    N, C, H, W = x.shape
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if H < eh or W < ew:
        raise ShapeError(f"input of spatial size {H}x{W} (padded) is smaller than the "
                         f"kernel's extent {eh}x{ew}")
    v = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(2, 3))
    v = v[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    Ho, Wo = v.shape[2], v.shape[3]
    return np.ascontiguousarray(v.transpose(0, 2, 3, 1, 4, 5)).reshape(N, Ho * Wo, C * kh * kw)


def fold(cols, in_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Adjoint of :func:`unfold`: ``cols`` ``(M, T, C·k_h·k_w)`` summed back into images
    ``(M, C, H, W)`` (one strided add per kernel offset, none per position)."""
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    C, H, W = in_shape
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    c = cols.reshape(cols.shape[0], Ho, Wo, C, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    return _fold_ck(c, in_shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw))


#: the convolution's backward forms its columns in chunks of at most this many bytes
_COLS_CHUNK_BYTES = 8 << 20


def _fold_ck(c, in_shape, kernel_size, stride, padding, dilation, out=None):
    """:func:`fold` of columns in the layout ``(M, C, k_h, k_w, H_out, W_out)`` (what the
    convolution's backward GEMM gives): each kernel offset's slab is added, contiguous, to
    a strided view of the (padded) image; ``out``: a zero (padded) image to add into."""
    kh, kw = kernel_size
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    C, H, W = in_shape
    M, Ho, Wo = c.shape[0], c.shape[4], c.shape[5]
    if out is None:
        out = np.zeros((M, C, H + 2 * ph, W + 2 * pw), dtype=c.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            out[:, :, r0:r0 + sh * (Ho - 1) + 1:sh, c0:c0 + sw * (Wo - 1) + 1:sw] += \
                c[:, :, i, j]
    return out[:, :, ph:ph + H, pw:pw + W]


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as PyTorch) with stride, padding and dilation.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    kernel_size, stride, padding, dilation : int or (int, int)
    groups : int
        Only ``1`` is supported (grouped and depthwise convolutions raise).

    Notes
    -----
    The parameter block is ``[W | b]`` of shape ``(c_out, c_in·k_h·k_w + 1)``; the output
    at position ``t`` is ``[W | b] ā_{n,t}`` with ``ā_{n,t}`` the unfolded patch and a 1.

    Examples
    --------
    >>> import numpy as np
    >>> conv = Conv2d(3, 4, 3, padding=1); conv.init(np.random.default_rng(0), "float64")
    >>> conv.params.shape
    (4, 28)
    >>> conv.forward(np.ones((2, 3, 5, 5)))[0].shape
    (2, 4, 5, 5)
    """

    _fresh_grad = True

    kind = "conv"

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0, dilation=1, groups=1):
        if int(groups) != 1:
            raise ShapeError(f"Conv2d supports groups=1 only (got groups={groups}); grouped "
                             "and depthwise convolutions have no Kronecker-factored block here")
        self.c_in, self.c_out = int(c_in), int(c_out)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ShapeError("kernel_size, stride, dilation must be >= 1 and padding >= 0")
        self.d_in = self.c_in * self.kernel_size[0] * self.kernel_size[1]

    def _conf(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation)

    def out_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.c_in:
            raise ShapeError(f"Conv2d({self.c_in}, {self.c_out}) needs inputs (C={self.c_in}, "
                             f"H, W), got {tuple(in_shape)}")
        _, H, W = in_shape
        hw = []
        for s, k, st, p, d in zip((H, W), self.kernel_size, self.stride, self.padding,
                                  self.dilation):
            o = (s + 2 * p - d * (k - 1) - 1) // st + 1
            if o < 1:
                raise ShapeError(f"Conv2d: input {H}x{W} too small for kernel "
                                 f"{self.kernel_size}, padding {self.padding}, dilation "
                                 f"{self.dilation}")
            hw.append(o)
        return (self.c_out, hw[0], hw[1])

    def init(self, rng, dtype):
        W = np.empty((self.c_out, self.d_in + 1))
        W[:, :-1] = _torch_uniform(rng, (self.c_out, self.d_in), self.d_in)
        W[:, -1] = _torch_uniform(rng, (self.c_out,), self.d_in)
        self.params = W.astype(dtype)

    def forward(self, h, train=False):
        N = h.shape[0]
        C, H, W = self.out_shape(h.shape[1:])
        p = unfold(h, **self._conf())  # (N, T, d_in)
        ab = np.concatenate([p, np.ones(p.shape[:2] + (1,), dtype=p.dtype)], axis=2)
        T, D = ab.shape[1], ab.shape[2]
        if T >= D:  # many positions, short patches: [W | b] @ ābᵀ per sample gives the
            # (c_out, T) layout of the output directly (measured faster for the first
            # convolution of the cuda-convnet, T = 900, d = 28)
            out = np.matmul(self.params, ab.transpose(0, 2, 1)).reshape(N, C, H, W)
        else:  # one GEMM over all positions, then the output's transpose
            out = (ab @ self.params.T).transpose(0, 2, 1).reshape(N, C, H, W)
        return out, (ab, tuple(h.shape[1:]))

    def backward(self, cache, g):
        _, in_shape = cache
        N, K, _, Ho, Wo = g.shape
        kh, kw = self.kernel_size
        M = N * K
        Wt = np.ascontiguousarray(self.params[:, :-1].T)  # (d_in, c_out)
        gm = np.ascontiguousarray(g).reshape(M, self.c_out, Ho * Wo)
        (ph, pw), (_, H, W) = self.padding, in_shape
        out = np.zeros((M, self.c_in, H + 2 * ph, W + 2 * pw), dtype=g.dtype)
        # one GEMM per vector, (d_in, c_out) @ (c_out, T): the columns come out in the
        # layout (C, k_h, k_w, T) that the fold adds without a transpose; in chunks of
        # vectors so that the columns (k_h·k_w times the input's size) are never whole
        step = max(1, _COLS_CHUNK_BYTES // (self.d_in * Ho * Wo * g.itemsize))
        for m0 in range(0, M, step):
            cols = Wt @ gm[m0:m0 + step]
            c = cols.reshape(cols.shape[0], self.c_in, kh, kw, Ho, Wo)
            _fold_ck(c, in_shape, self.kernel_size, self.stride, self.padding,
                     self.dilation, out=out[m0:m0 + step])
        return out[:, :, ph:ph + H, pw:pw + W].reshape((N, K) + in_shape)

    def _positions(self, g):
        N, K, C = g.shape[:3]
        return g.reshape(N, K, C, -1).transpose(0, 1, 3, 2)

    def factors(self, cache, g):
        """Patches ``ā`` ``(N, T, d_in+1)`` and ``g`` ``(N, K, T, c_out)``."""
        return cache[0], np.ascontiguousarray(self._positions(g))

    def grad(self, cache, g):
        N, K = g.shape[:2]
        gc = np.ascontiguousarray(g).reshape(N, K, self.c_out, -1)  # (N, K, c_out, T)
        return gc @ cache[0][:, None]  # (N, K, c_out, d_in+1): one GEMM per (n, k)

    def grad_sum(self, cache, g):
        N, K = g.shape[:2]
        gs = g[:, 0] if K == 1 else g.sum(axis=1)
        gs = gs.reshape(N, self.c_out, -1)  # (N, c_out, T)
        return (gs @ cache[0]).sum(axis=0)  # one GEMM per sample, no transposed copy


# -- pooling -------------------------------------------------------------------------------
class _Pool2d(Layer):
    _fresh_grad = True

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ShapeError("pooling kernel_size and stride must be >= 1, padding >= 0")

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(f"pooling needs (C, H, W) inputs, got {tuple(in_shape)}")
        C, H, W = in_shape
        o = [(s + 2 * p - k) // st + 1 for s, k, st, p in
             zip((H, W), self.kernel_size, self.stride, self.padding)]
        if min(o) < 1:
            raise ShapeError(f"pooling: input {H}x{W} smaller than kernel {self.kernel_size}")
        return (C, o[0], o[1])

    def _conf(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)


class MaxPool2d(_Pool2d):
    """Max pooling (PyTorch's defaults: ``stride = kernel_size``, padding with ``−∞``).
    Ties go to the first maximum in the window (row-major), as PyTorch's CPU kernel: the
    gradient of a window goes to that one element (summed where overlapping windows chose
    the same one).

    The forward pass keeps the flat index of each window's maximum; the backward pass
    scatters by index (:mod:`fimlab.models._pool`; no loop over windows or offsets).

    Examples
    --------
    >>> import numpy as np
    >>> MaxPool2d(2).forward(np.arange(16.0).reshape(1, 1, 4, 4))[0][0, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """

    def forward(self, h, train=False):
        self.out_shape(h.shape[1:])
        out, where = _pool.max_pool_forward(h, **self._conf())
        return out, (where, tuple(h.shape[1:]))

    def backward(self, cache, g):
        where, in_shape = cache
        return _pool.max_pool_backward(g, where, in_shape, **self._conf())


class AvgPool2d(_Pool2d):
    """Average pooling (zero padding counted in the average, PyTorch's default).

    Examples
    --------
    >>> import numpy as np
    >>> AvgPool2d(2).forward(np.arange(16.0).reshape(1, 1, 4, 4))[0][0, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """

    def forward(self, h, train=False):
        self.out_shape(h.shape[1:])
        v = _pool.pool_windows(h, pad_value=0.0, **self._conf())
        return v.mean(axis=(-2, -1)), tuple(h.shape[1:])

    def backward(self, cache, g):
        return _pool.avg_pool_backward(g, cache, **self._conf())


class Flatten(Layer):
    """``(N, C, H, W) → (N, C·H·W)`` (C order, as ``torch.flatten(x, 1)``)."""

    _fresh_grad = None

    def out_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, h, train=False):
        return h.reshape(h.shape[0], -1), tuple(h.shape[1:])

    def backward(self, cache, g):
        return g.reshape(g.shape[:2] + cache)


# -- batch normalisation -----------------------------------------------------------------
class BatchNorm(Layer):
    """Batch normalisation over the channel axis 1 of ``(N, C)`` or ``(N, C, H, W)``.

    ``y = γ x̂ + β`` with ``x̂ = (x − μ)/√(σ² + ε)``. Train mode (``train=True``): ``μ, σ²``
    are the batch mean and (biased) variance over samples (and positions), so samples are
    coupled and :meth:`backward` back-propagates through the batch statistics (for each of
    the ``K`` vector sets separately). Eval mode: the running statistics, a per-sample
    affine map. :meth:`update_running` updates them as PyTorch does (momentum, unbiased
    variance).

    Parameters
    ----------
    C : int
        Channels (features).
    eps, momentum : float
        As ``torch.nn.BatchNorm1d/2d``.

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm(3); bn.init(None, "float64")
    >>> bn.params.tolist()        # [γ | β]
    [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    >>> y, _ = bn.forward(np.arange(6.0).reshape(2, 3), train=True)
    >>> np.round(y, 3).tolist()
    [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
    """

    _fresh_grad = True

    kind = "batchnorm"

    def __init__(self, C: int, eps: float = 1e-5, momentum: float = 0.1):
        self.C, self.eps, self.momentum = int(C), float(eps), float(momentum)

    def out_shape(self, in_shape):
        if len(in_shape) not in (1, 3) or in_shape[0] != self.C:
            raise ShapeError(f"BatchNorm({self.C}) needs inputs (C,) or (C, H, W) with "
                             f"C = {self.C}, got {tuple(in_shape)}")
        return tuple(in_shape)

    def init(self, rng, dtype):
        P = np.zeros((self.C, 2))
        P[:, 0] = 1.0
        self.params = P.astype(dtype)
        self.running_mean = np.zeros(self.C, dtype=dtype)
        self.running_var = np.ones(self.C, dtype=dtype)

    @staticmethod
    def _axes(h):
        return (0,) if h.ndim == 2 else (0, 2, 3)

    def _bc(self, v, ndim):
        return v.reshape((1, self.C) + (1,) * (ndim - 2))

    def forward(self, h, train=False):
        self.out_shape(h.shape[1:])
        if train:
            ax = self._axes(h)
            mu = h.mean(axis=ax)
            var = h.var(axis=ax)
        else:
            mu, var = self.running_mean, self.running_var
        inv = 1.0 / np.sqrt(var + self.eps)
        xh = (h - self._bc(mu, h.ndim)) * self._bc(inv, h.ndim)
        gam, bet = self.params[:, 0], self.params[:, 1]
        out = xh * self._bc(gam, h.ndim) + self._bc(bet, h.ndim)
        return out, (xh, inv, bool(train))

    def update_running(self, h):
        """Update the running statistics with the batch ``h`` (PyTorch's rule)."""
        ax = self._axes(h)
        m = h.size // self.C
        mu, var = h.mean(axis=ax), h.var(axis=ax)
        mom = self.momentum
        self.running_mean = (1 - mom) * self.running_mean + mom * mu
        self.running_var = (1 - mom) * self.running_var + mom * var * m / max(m - 1, 1)

    def backward(self, cache, g):
        xh, inv, train = cache
        nd = xh.ndim + 1  # g has the K axis
        scale = (self.params[:, 0] * inv).reshape((1, 1, self.C) + (1,) * (nd - 3))
        if not train:
            return g * scale
        # batch statistics: dx = γ/σ (g − mean(g) − x̂ mean(g x̂)), means over the samples
        # (and positions) of each of the K vector sets
        ax = (0,) if nd == 3 else (0, 3, 4)
        x = xh[:, None]
        mg = g.mean(axis=ax, keepdims=True)
        mgx = (g * x).mean(axis=ax, keepdims=True)
        return scale * (g - mg - x * mgx)

    def grad(self, cache, g):
        xh = cache[0]
        sp = tuple(range(3, g.ndim))
        dg = (g * xh[:, None]).sum(axis=sp) if sp else g * xh[:, None]
        db = g.sum(axis=sp) if sp else g
        return np.stack([dg, db], axis=-1)  # (N, K, C, 2)


# -- activations -------------------------------------------------------------------------------
class Activation(Layer):
    """Elementwise nonlinearity ``relu``, ``tanh``, ``sigmoid`` or ``linear``."""

    def __init__(self, name: str):
        if name not in ("relu", "tanh", "sigmoid", "linear"):
            raise UnknownNameError(f"unknown activation {name!r}; choose relu, tanh, "
                                   "sigmoid or linear")
        self.name = name

    def forward(self, h, train=False):
        if self.name == "relu":
            out = np.maximum(h, 0)
            return out, (h > 0).astype(h.dtype)
        if self.name == "tanh":
            out = np.tanh(h)
            return out, 1.0 - out * out
        if self.name == "sigmoid":
            e = np.exp(-np.abs(h))
            out = np.where(h >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            return out, out * (1.0 - out)
        return h, None

    @property
    def _fresh_grad(self):
        return None if self.name == "linear" else True

    def backward(self, cache, g, inplace: bool = False):
        """``g ∘ f'(h)``; ``inplace=True`` overwrites ``g`` (for callers that hold the only
        reference to it, as :class:`Sequential` does between layers)."""
        if cache is None:
            return g
        return np.multiply(g, cache[:, None], out=g if inplace else None)


def ReLU():
    return Activation("relu")


def Tanh():
    return Activation("tanh")


def Sigmoid():
    return Activation("sigmoid")


def Identity():
    return Activation("linear")


# -- containers -----------------------------------------------------------------------------
class Sequential(Layer):
    """Layers applied in order (used inside :class:`Residual`; networks are
    :class:`fimlab.models.network.Network`)."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def out_shape(self, in_shape):
        for lay in self.layers:
            in_shape = lay.out_shape(in_shape)
        return in_shape

    def forward(self, h, train=False):
        caches = []
        for lay in self.layers:
            h, c = lay.forward(h, train)
            caches.append(c)
        return h, caches

    def backward(self, cache, g, record=None, input_grad=True):
        """Back-propagate ``g`` through the layers (recording ``(cache, g)`` at each layer
        with parameters in ``record``); returns the gradient at the input.

        ``input_grad=False``: the input gradient is not wanted (the network's input is
        data), so the back-propagation stops at the first layer with parameters (its
        ``g`` recorded, its own backward not run) and ``None`` is returned.
        """
        stop = 0 if input_grad else _first_param_layer(self.layers)
        owned = False  # g is an array that only this loop holds (not the caller's g)
        for i in range(len(self.layers) - 1, stop - 1, -1):
            lay, c = self.layers[i], cache[i]
            if record is not None and lay.params is not None:
                record[id(lay)] = (c, g)
                owned = False
            if isinstance(lay, (Sequential, Residual)):
                g = lay.backward(c, g, record)
                owned = isinstance(lay, Residual)  # g + body's: a new array
                continue
            if i == stop and not input_grad:
                return None
            if isinstance(lay, Activation) and owned and g.flags.writeable:
                g = lay.backward(c, g, inplace=True)  # no new array of g's size
            else:
                g = lay.backward(c, g)
            fresh = lay._fresh_grad
            owned = owned if fresh is None else bool(fresh)
        return None if not input_grad else g


def _first_param_layer(layers):
    """Index of the first layer with parameters (a container counts if any of its layers
    has them); ``len(layers)`` if none has."""
    for i, lay in enumerate(layers):
        if lay.params is not None:
            return i
        if isinstance(lay, (Sequential, Residual)) and \
                _first_param_layer(lay.layers) < len(lay.layers):
            return i
    return len(layers)


class Residual(Layer):
    """``y = h + body(h)`` (identity shortcut; body's output shape must equal its input's)."""

    def __init__(self, *layers):
        self.body = Sequential(*layers)
        self.layers = self.body.layers

    def out_shape(self, in_shape):
        o = self.body.out_shape(in_shape)
        if tuple(o) != tuple(in_shape):
            raise ShapeError(f"Residual body maps {tuple(in_shape)} to {tuple(o)}; an "
                             "identity shortcut needs equal shapes")
        return o

    def forward(self, h, train=False):
        y, c = self.body.forward(h, train)
        return h + y, c

    def backward(self, cache, g, record=None):
        return g + self.body.backward(cache, g, record)
