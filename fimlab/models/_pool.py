"""Index-based pooling kernels for :mod:`fimlab.models.layers` (no Python loop over windows).

Max pooling finds each window's first maximum once in the forward pass and keeps its
*flat index* in the padded image (``(C, H_p, W_p)`` of one sample, row-major); the
backward pass sends every window's gradient to that one element:

* windows that do not overlap (``stride ≥ kernel`` in both directions): the indices are
  distinct, so the gradient is written with one fancy assignment (no accumulation);
* overlapping windows: one ``np.bincount`` over the flat indices sums the contributions
  of every window that chose the same element.

Both back-propagate the ``K`` vectors of each sample at once (the indices of sample ``n``
are reused for its ``K`` vectors, never copied ``K`` times as a mask).
"""

from __future__ import annotations

import numpy as np

__all__ = ["pool_windows", "max_pool_forward", "max_pool_backward", "avg_pool_backward"]


def _padded(h, padding, value):
    ph, pw = padding
    if ph or pw:
        h = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)
    return h


def pool_windows(h, kernel_size, stride, padding, pad_value):
    """Strided view of the windows of ``h`` ``(N, C, H, W)`` (padded with ``pad_value``):
    ``(N, C, H_out, W_out, k_h, k_w)``."""
    hp = _padded(h, padding, pad_value)
    v = np.lib.stride_tricks.sliding_window_view(hp, kernel_size, axis=(2, 3))
    return v[:, :, ::stride[0], ::stride[1]]


def max_pool_forward(h, kernel_size, stride, padding):
    """Max pooling of ``h`` ``(N, C, H, W)``: the output ``(N, C, H_out, W_out)`` and the
    flat index ``(N, C·H_out·W_out)`` of each window's maximum in the padded image of its
    sample (the first maximum in row-major window order on ties, as PyTorch's CPU kernel).
    """
    kh, kw = kernel_size
    sh, sw = stride
    N, C, H, W = h.shape
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    v = pool_windows(h, kernel_size, stride, padding, -np.inf)
    Ho, Wo = v.shape[2], v.shape[3]
    flat = v.reshape(N, C, Ho, Wo, kh * kw)  # one copy of the windows
    idx = np.argmax(flat, axis=-1)
    out = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    offset = (np.arange(kh)[:, None] * Wp + np.arange(kw)).ravel()  # window index → image
    base = ((np.arange(C)[:, None, None] * Hp + np.arange(Ho)[:, None] * sh) * Wp
            + np.arange(Wo) * sw)
    where = base + offset[idx]  # (N, C, Ho, Wo)
    return out, where.reshape(N, C * Ho * Wo)


def _crop(out, in_shape, padding):
    C, H, W = in_shape
    ph, pw = padding
    if ph or pw:
        out = np.ascontiguousarray(out[..., ph:ph + H, pw:pw + W])
    return out


def max_pool_backward(g, where, in_shape, kernel_size, stride, padding):
    """Back-propagate ``g`` ``(N, K, C, H_out, W_out)`` through max pooling with the flat
    indices ``where`` of :func:`max_pool_forward`: ``(N, K, C, H, W)``."""
    N, K = g.shape[:2]
    C, H, W = in_shape
    S = C * (H + 2 * padding[0]) * (W + 2 * padding[1])
    ix = (np.arange(N * K, dtype=np.intp).reshape(N, K, 1) * S
          + where.reshape(N, 1, -1)).ravel()
    gv = np.ascontiguousarray(g).reshape(-1)
    disjoint = stride[0] >= kernel_size[0] and stride[1] >= kernel_size[1]
    if disjoint:  # every input element is the maximum of at most one window
        out = np.zeros(N * K * S, dtype=g.dtype)
        out[ix] = gv
    else:
        out = np.bincount(ix, weights=gv, minlength=N * K * S).astype(g.dtype, copy=False)
    out = out.reshape((N, K, C, H + 2 * padding[0], W + 2 * padding[1]))
    return _crop(out, in_shape, padding)


def avg_pool_backward(g, in_shape, kernel_size, stride, padding):
    """Back-propagate ``g`` ``(N, K, C, H_out, W_out)`` through average pooling (zero
    padding counted): one strided add per kernel offset over all ``N·K`` vectors, one
    scaling at the end."""
    N, K, C, Ho, Wo = g.shape
    _, H, W = in_shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    out = np.zeros((N, K, C, H + 2 * ph, W + 2 * pw), dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            out[..., i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += g
    out *= 1.0 / (kh * kw)
    return _crop(out, in_shape, padding)
