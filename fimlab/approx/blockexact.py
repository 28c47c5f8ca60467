"""The exact block-diagonal Fisher ``blockdiag(F_00, …, F_{L−1,L−1})`` as an approximation.

Each block is the layer's Fisher (docs/papers.md F1), matrix-free; its damped inverse is
Woodbury on the layer's ``N·K`` rows (F3). What it drops is exactly the off-diagonal
blocks, so its whole-network E1 is the square root of the off-diagonal share
``1 − Σ_l ‖F_ll‖²_F / ‖F‖²_F``.
"""

from __future__ import annotations

from .._validation import check_damping
from ..batch import FactorBatch
from ..curvature import FisherBlock
from ..operators import BlockDiagonalOperator
from .eigencorrected import check_rule

__all__ = ["BlockExact", "ExactBlock"]


class ExactBlock(FisherBlock):
    """A layer's exact Fisher block used as an approximation (``fisher_inner`` for E1)."""

    def fisher_inner(self, Fb) -> float | None:
        """``⟨F'_l, F_l⟩_F`` with another Fisher block: ``‖F_l‖²`` for the same batch, else
        ``(1/(N N')) Σ_{n,m} (ā_nᵀā'_m)² Σ_{k,k'} (g_nkᵀ g'_mk')²`` (Gram matrices; for a
        positional layer ``(1/(N N')) Σ ⟨J_nk, J'_mk'⟩²_F`` from the rows ``vec(J_nk)``)."""
        if not isinstance(Fb, FisherBlock) or Fb.shape != self.shape:
            return None
        if Fb.a is self.a and Fb.g is self.g:
            return self.frobenius_norm_sq()
        xp = self.xp
        N, K = self.a.shape[0], self.g.shape[1]
        N2, K2 = Fb.a.shape[0], Fb.g.shape[1]
        if self.a.ndim == 3 or Fb.a.ndim == 3:  # positional: ⟨J_nk, J'_mk'⟩ from the rows
            G = self.batch.jacobian(self.l) @ xp.matrix_transpose(Fb.batch.jacobian(Fb.l))
            return float(xp.sum(G * G)) / (N * N2)
        Ga = self.a @ xp.matrix_transpose(Fb.a)
        gf = xp.reshape(self.g, (N * K, self.d_g))
        gf2 = xp.reshape(Fb.g, (N2 * K2, self.d_g))
        Gg = gf @ xp.matrix_transpose(gf2)
        Gg = xp.sum(xp.reshape(Gg * Gg, (N, K, N2, K2)), axis=(1, 3))
        return float(xp.sum(Ga * Ga * Gg)) / (N * N2)

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(F_l + λI)⁻¹ v`` by Woodbury, exact whatever ``rule``."""
        check_rule(rule)
        return super().solve(v, damping, rule="exact", **kwargs)


class BlockExact(BlockDiagonalOperator):
    """The exact diagonal blocks of the Fisher of a factor batch.

    Parameters
    ----------
    batch : FactorBatch

    Notes
    -----
    ``solve(v, λ)`` is ``(F_ll + λI)⁻¹`` block by block by Woodbury (one Cholesky of a
    layer's ``N·K × N·K`` matrix per ``λ``, cached); ``rule`` does not apply (any rule
    name means this exact inverse). E1 per block is 0; for the whole network it is
    ``√(1 − Σ_l ‖F_ll‖² / ‖F‖²)``, from Gram matrices.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.factor_batch(fl.MLP([3, 4, 2], seed=0), np.random.default_rng(0).normal(size=(8, 3)))
    >>> F, B = fl.FisherOperator(b), fl.BlockExact(b)
    >>> bool(np.allclose(B.to_dense(), F.block_diagonal().to_dense()))
    True
    """

    method = "BlockExact"

    def __init__(self, batch: FactorBatch):
        if not isinstance(batch, FactorBatch):
            raise TypeError(f"BlockExact needs a FactorBatch, got {type(batch).__name__}")
        self.batch = batch
        super().__init__([ExactBlock(batch, l) for l in range(batch.n_layers)])

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """Block-by-block ``(F_ll + λI)⁻¹ v`` (Woodbury; ``rule`` does not apply)."""
        check_damping(damping)
        check_rule(rule)
        return super().solve(v, damping, rule="exact", **kwargs)
