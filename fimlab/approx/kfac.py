"""KFAC: the Kronecker-factored block-diagonal approximation (Martens & Grosse, 2015).

docs/papers.md (K1): ``F_l ≈ A_l ⊗ G_l`` with ``A_l = (1/N) Σ_n ā_n ā_nᵀ`` and
``G_l = (1/N) Σ_n Σ_k g_nk g_nkᵀ``; damped inverses (K2, K3, K4) through
:meth:`fimlab.operators.KroneckerOperator.solve`.
"""

from __future__ import annotations

import numpy as np

from ..batch import FactorBatch
from ..operators import BlockDiagonalOperator, KroneckerOperator

__all__ = ["KFAC", "kfac_factors"]


def kfac_factors(a, g):
    """KFAC factors of one layer (docs/papers.md K1).

    Parameters
    ----------
    a : array, shape (N, d_a)
        Bias-augmented layer inputs ``ā_n``.
    g : array, shape (N, K, d_g)
        Back-propagated vectors ``g_nk``.

    Returns
    -------
    A : array, shape (d_a, d_a)
        ``(1/N) Σ_n ā_n ā_nᵀ``.
    G : array, shape (d_g, d_g)
        ``(1/N) Σ_n Σ_k g_nk g_nkᵀ``.

    For a convolution layer (``a`` of shape ``(N, T, d_a)``, ``g`` ``(N, K, T, d_g)``)
    the KFC factors of :func:`fimlab.approx.kfc.kfc_factors`.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[1.0, 1.0], [2.0, 1.0]]); g = np.array([[[1.0]], [[3.0]]])
    >>> A, G = kfac_factors(a, g)
    >>> A.tolist(), G.tolist()
    ([[2.5, 1.5], [1.5, 1.0]], [[5.0]])
    """
    from ..backend import array_namespace
    from ..kron.gram import gram_of_rows

    xp = array_namespace(a, g)
    if a.ndim == 3:  # a layer with positions (convolution): KFC
        from .kfc import kfc_factors

        return kfc_factors(a, g)
    N, K, dg = g.shape
    # symmetric rank-k updates with 1/N folded in (BLAS syrk for NumPy: half the flops
    # of a GEMM, no scaling pass)
    with np.errstate(over="ignore", invalid="ignore"):  # xp: NumPy warnings only; checked below
        A = gram_of_rows(a, 1.0 / N)
        G = gram_of_rows(xp.reshape(g, (N * K, dg)), 1.0 / N)
    from .._validation import check_finite_result

    hint = ("it overflowed from a finite factor batch: the inputs of the network are too "
            "large (rescale the data)")
    check_finite_result(A, "the KFAC factor A = (1/N) Σ ā ā ᵀ", hint)
    check_finite_result(G, "the KFAC factor G = (1/N) Σ g gᵀ", hint)
    return A, G


class KFAC(BlockDiagonalOperator):
    """KFAC approximation of the Fisher of a factor batch: ``blockdiag(A_l ⊗ G_l)``.

    Parameters
    ----------
    batch : FactorBatch
        The curvature batch (exact, Monte-Carlo or empirical vectors ``g``).

    Attributes
    ----------
    blocks : list of KroneckerOperator
        ``blocks[l].terms == [(A_l, G_l)]``.
    factors : list of (A, G)
        The same factors, for convenience.

    Notes
    -----
    ``solve(v, damping, rule)``: ``"factor"`` (default, K2), ``"pi"`` (K3), ``"exact"``
    (K4). KFAC equals the exact block for a single sample, and for a deep linear network
    with the Gaussian likelihood when the inputs and the back-propagated vectors are
    independent (see the tests).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 3, 2], activation="tanh", likelihood="categorical", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(16, 4))
    >>> K = fl.KFAC(fl.factor_batch(net, X, fisher="exact"))
    >>> [b.terms[0][0].shape for b in K.blocks]
    [(5, 5), (4, 4)]
    """

    method = "KFAC"

    def __init__(self, batch: FactorBatch):
        if not isinstance(batch, FactorBatch):
            raise TypeError(f"KFAC needs a FactorBatch, got {type(batch).__name__}")
        self.batch = batch
        self.factors = [kfac_factors(a, g) for a, g in zip(batch.a, batch.g)]
        super().__init__([KroneckerOperator([f]) for f in self.factors])
