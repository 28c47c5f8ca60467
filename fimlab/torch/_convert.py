"""A fimlab :class:`~fimlab.models.network.Network` as a ``torch.nn`` module with the same
weights (:func:`to_torch`), so that the two can be compared and the PyTorch curvature
libraries run on the same network."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._errors import ShapeError

__all__ = ["to_torch", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """``y = x + body(x)`` (the identity shortcut of :class:`fimlab.models.layers.Residual`)."""

    def __init__(self, *body: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return x + self.body(x)


def _copy(t: torch.Tensor, value) -> None:
    with torch.no_grad():
        t.copy_(torch.as_tensor(np.ascontiguousarray(value)).reshape(t.shape))


def to_torch(net, dtype=None) -> nn.Module:
    """The PyTorch twin of a fimlab :class:`~fimlab.models.network.Network` (copied
    weights, running statistics, ``eps``, ``momentum``), in eval mode.

    ``Conv2d`` → ``nn.Conv2d`` (``weight = W.reshape(c_out, c_in, k_h, k_w)``, ``bias``
    the last column), ``Linear`` → ``nn.Linear``, ``BatchNorm`` → ``nn.BatchNorm1d`` on
    ``(N, C)`` and ``nn.BatchNorm2d`` on ``(N, C, H, W)``, pooling, ``Flatten``, the
    activations, and ``Residual`` → :class:`ResidualBlock`; an ``nn.Sequential``.

    Parameters
    ----------
    net : fimlab.Network
    dtype : torch.dtype, optional
        Default: the network's (``float64`` or ``float32``).

    Examples
    --------
    >>> import numpy as np, torch, fimlab as fl, fimlab.torch as flt
    >>> net = fl.cuda_convnet(input_shape=(3, 26, 26), channels=(2, 2, 3), seed=0)
    >>> model = flt.to_torch(net)
    >>> X = np.random.default_rng(0).normal(size=(2, 3, 26, 26))
    >>> bool(np.allclose(model(torch.tensor(X)).detach().numpy(), net.forward(X)))
    True
    """
    from ..models import layers as L
    from ..models.network import Network

    if not isinstance(net, Network):
        raise TypeError(f"to_torch needs a fimlab Network, got {type(net).__name__}")
    if dtype is None:
        dtype = torch.float64 if net.dtype == np.float64 else torch.float32

    kw = {"dtype": dtype}  # built in the dtype, so that the copies lose nothing

    def build(layers, shape):
        mods = []
        for lay in layers:
            out = lay.out_shape(shape)
            if isinstance(lay, L.Conv2d):
                m = nn.Conv2d(lay.c_in, lay.c_out, lay.kernel_size, stride=lay.stride,
                              padding=lay.padding, dilation=lay.dilation, **kw)
                _copy(m.weight, lay.params[:, :-1])
                _copy(m.bias, lay.params[:, -1])
            elif isinstance(lay, L.Linear):
                m = nn.Linear(lay.d_in, lay.d_out, **kw)
                _copy(m.weight, lay.params[:, :-1])
                _copy(m.bias, lay.params[:, -1])
            elif isinstance(lay, L.BatchNorm):
                cls = nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d
                m = cls(lay.C, eps=lay.eps, momentum=lay.momentum, **kw)
                _copy(m.weight, lay.params[:, 0])
                _copy(m.bias, lay.params[:, 1])
                _copy(m.running_mean, lay.running_mean)
                _copy(m.running_var, lay.running_var)
            elif isinstance(lay, L.MaxPool2d):
                m = nn.MaxPool2d(lay.kernel_size, lay.stride, lay.padding)
            elif isinstance(lay, L.AvgPool2d):
                m = nn.AvgPool2d(lay.kernel_size, lay.stride, lay.padding)
            elif isinstance(lay, L.Flatten):
                m = nn.Flatten()
            elif isinstance(lay, L.Activation):
                m = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                     "linear": nn.Identity}[lay.name]()
            elif isinstance(lay, L.Residual):
                m = ResidualBlock(*build(lay.layers, shape))
            elif isinstance(lay, L.Sequential):
                m = nn.Sequential(*build(lay.layers, shape))
            else:  # pragma: no cover - every fimlab layer is listed above
                raise ShapeError(f"to_torch: no PyTorch module for {type(lay).__name__}")
            mods.append(m)
            shape = out
        return mods

    return nn.Sequential(*build(net.layers, net.input_shape)).to(dtype).eval()
