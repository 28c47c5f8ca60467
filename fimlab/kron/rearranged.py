"""Matrix-free products with R(F_l) of a factor-batch layer."""

from __future__ import annotations

from .._errors import ShapeError
from .._validation import check_dense_memory
from ..backend import (
    unvec,
    vec,
)
from ._checks import check_layer

# =====================================================================================
# Matrix-free products with R(F_l) for a factor-batch layer (R3)
# =====================================================================================


def rearranged_matvec(a, g, V):
    """``R(F_l) vec(V)`` as a ``d_a × d_a`` matrix (docs/papers.md R3), never forming ``F_l``.

    ``F_l = (1/N) Σ_n (ā_n ā_nᵀ) ⊗ G_n`` with ``G_n = Σ_k g_nk g_nkᵀ``; then
    ``R(F_l) vec(V) = vec((1/N) Σ_n w_n ā_n ā_nᵀ)`` with ``w_n = Σ_k g_nkᵀ V g_nk``:
    two GEMMs, ``O(N (K d_g² + d_a²))``.

    Parameters
    ----------
    a : array (m, d_a)
    g : array (m, K, d_g)
    V : array (d_g, d_g), or a stack (c, d_g, d_g)

    Returns
    -------
    array (d_a, d_a), or (c, d_a, d_a) for a stack
    """
    xp, m, K, d_a, d_g = check_layer(a, g)
    if V.shape[-2:] != (d_g, d_g) or V.ndim not in (2, 3):
        raise ShapeError(f"V must have shape ({d_g}, {d_g}) or (c, {d_g}, {d_g}), got "
                         f"{tuple(V.shape)}")
    gf = xp.reshape(g, (m * K, d_g))
    if V.ndim == 2:
        w = xp.sum(xp.reshape(xp.sum((gf @ V) * gf, axis=1), (m, K)), axis=1)
        return (xp.matrix_transpose(a) * (w / m)) @ a
    Vs = [V[c, ...] for c in range(V.shape[0])]
    return xp.stack([rearranged_matvec(a, g, Vc) for Vc in Vs])


def rearranged_rmatvec(a, g, U):
    """``R(F_l)ᵀ vec(U)`` as a ``d_g × d_g`` matrix (docs/papers.md R3):
    ``vec((1/N) Σ_n (ā_nᵀ U ā_n) G_n)``, ``O(N (d_a² + K d_g²))``.

    ``U`` is ``(d_a, d_a)`` or a stack ``(c, d_a, d_a)``.
    """
    xp, m, K, d_a, d_g = check_layer(a, g)
    if U.shape[-2:] != (d_a, d_a) or U.ndim not in (2, 3):
        raise ShapeError(f"U must have shape ({d_a}, {d_a}) or (c, {d_a}, {d_a}), got "
                         f"{tuple(U.shape)}")
    if U.ndim == 3:
        return xp.stack([rearranged_rmatvec(a, g, U[c, ...]) for c in range(U.shape[0])])
    s = xp.sum((a @ U) * a, axis=1) / m  # (m,)
    gs = g * s[:, None, None]
    return xp.matrix_transpose(xp.reshape(gs, (m * K, d_g))) @ xp.reshape(g, (m * K, d_g))


class RearrangedFisher:
    """``R(F_l)`` of one factor-batch layer as a product pair (docs/papers.md R3).

    ``shape = (d_a², d_g²)``; ``matvec(x)`` (``x = vec(V)``, length ``d_g²``) and
    ``rmatvec(y)`` (``y = vec(U)``, length ``d_a²``) cost ``O(N (d_a² + K d_g²))`` and
    never form ``F_l`` or ``R(F_l)``; :meth:`to_dense` forms ``R(F_l) = (1/N) Σ_n
    vec(ā_n ā_nᵀ) vec(G_n)ᵀ`` for tests (memory-guarded).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> rng = np.random.default_rng(0)
    >>> a, g = rng.normal(size=(6, 3)), rng.normal(size=(6, 2, 2))
    >>> R = RearrangedFisher(a, g)
    >>> F = fl.FisherOperator(fl.FactorBatch([a], [g])).to_dense()
    >>> x = rng.normal(size=4)
    >>> from fimlab.kron import rearrange
    >>> bool(np.allclose(R.matvec(x), rearrange(F, 3, 2) @ x))
    True
    """

    def __init__(self, a, g):
        self.xp, self.m, self.K, self.d_a, self.d_g = check_layer(a, g)
        self.a, self.g = a, g
        self.dtype = a.dtype
        self.shape = (self.d_a * self.d_a, self.d_g * self.d_g)

    def matvec(self, x):
        if x.shape != (self.shape[1],):
            raise ShapeError(f"matvec needs a vector of length {self.shape[1]}, got "
                             f"shape {tuple(x.shape)}")
        V = unvec(x, self.d_g, self.d_g, self.xp)
        return vec(rearranged_matvec(self.a, self.g, V), self.xp)

    def rmatvec(self, y):
        if y.shape != (self.shape[0],):
            raise ShapeError(f"rmatvec needs a vector of length {self.shape[0]}, got "
                             f"shape {tuple(y.shape)}")
        U = unvec(y, self.d_a, self.d_a, self.xp)
        return vec(rearranged_rmatvec(self.a, self.g, U), self.xp)

    def to_dense(self, max_bytes: int | None = None):
        """Dense ``R(F_l)`` (``d_a² × d_g²``), from the per-sample outer products."""
        check_dense_memory(self.shape, self.dtype, max_bytes, "rearranged block R(F_l)",
                           "RearrangedFisher.matvec/rmatvec")
        xp, a, g, m = self.xp, self.a, self.g, self.m
        Ua = vec(a[:, :, None] * a[:, None, :], xp)  # (m, d_a²)
        Gn = xp.matrix_transpose(g) @ g  # (m, d_g, d_g)
        return xp.matrix_transpose(Ua) @ vec(Gn, xp) / m


