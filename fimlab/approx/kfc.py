"""KFC: Kronecker factors of a convolution layer (Grosse & Martens, 2016).

For a layer applied at ``T`` positions (factor batch ``a`` of shape ``(N, T, d_a)``,
``g`` of shape ``(N, K, T, d_g)``), the Fisher block
``F_l = (1/N) Σ_{n,k} vec(J_nk) vec(J_nk)ᵀ``, ``J_nk = Σ_t g_nkt ā_ntᵀ``, is approximated
by ``A ⊗ G`` with (the ``1/T`` written into ``A``)::

    A = (1/(N·T)) Σ_n Σ_t ā_nt ā_ntᵀ,      G = (1/N) Σ_n Σ_k Σ_t g_nkt g_nktᵀ

so that ``A ⊗ G = (Σ_t ā āᵀ/N) ⊗ G / T`` — the same matrix as curvlinops'
``KFACLinearOperator`` with ``kfac_approx="expand"``. With ``T = 1`` these are the dense
layer's KFAC factors.

Damping: :meth:`fimlab.operators.KroneckerOperator.solve` applies every rule to the pair
``(A, G)`` as stored here: ``"exact"`` inverts ``A ⊗ G + λI``; ``"factor"`` inverts
``(A + √λ I) ⊗ (G + √λ I)``; ``"pi"`` inverts ``(A + π√λ I) ⊗ (G + (√λ/π) I)``.
fimlab's ``λ`` is always the one added to ``A ⊗ G`` as returned here. A code that keeps the positions summed, ``A' = T·A``, has
``A ⊗ G + λI = (A' ⊗ G + T·λ I)/T``: its damping of ``A' ⊗ G`` by ``λ'`` is fimlab's
``λ = λ'/T`` (the ``λ/T`` of the papers' code), and the factored rules rescale the same way
(``√λ`` per factor with ``A`` averaged over positions).
"""

from __future__ import annotations

from ..backend import array_namespace

__all__ = ["kfc_factors"]


def kfc_factors(a, g):
    """KFC factors of one convolution layer (``1/T`` carried by ``A``).

    Parameters
    ----------
    a : array, shape (N, T, d_a)
        Unfolded input patches ``ā_nt`` (bias entry included).
    g : array, shape (N, K, T, d_g)
        Back-propagated vectors ``g_nkt``.

    Returns
    -------
    A : array, shape (d_a, d_a)
        ``(1/(N·T)) Σ_{n,t} ā_nt ā_ntᵀ``.
    G : array, shape (d_g, d_g)
        ``(1/N) Σ_{n,k,t} g_nkt g_nktᵀ``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.ones((1, 2, 2)); g = np.array([[[[1.0], [2.0]]]])   # N=1, K=1, T=2
    >>> A, G = kfc_factors(a, g)
    >>> A.tolist(), G.tolist()
    ([[1.0, 1.0], [1.0, 1.0]], [[5.0]])
    """
    from ..kron.gram import gram_of_rows

    xp = array_namespace(a, g)
    if a.ndim != 3 or g.ndim != 4 or g.shape[2] != a.shape[1] or g.shape[0] != a.shape[0]:
        from .._errors import ShapeError

        raise ShapeError(f"kfc_factors needs a (N, T, d_a) and g (N, K, T, d_g), got "
                         f"{tuple(a.shape)} and {tuple(g.shape)}")
    N, T, da = a.shape
    K, dg = g.shape[1], g.shape[3]
    A = gram_of_rows(xp.reshape(a, (N * T, da)), 1.0 / (N * T))
    G = gram_of_rows(xp.reshape(g, (N * K * T, dg)), 1.0 / N)
    return A, G
