"""Eigenvalue-corrected Kronecker approximations (EKFAC; George et al., NeurIPS 2018) and
the diagonal Fisher (docs/papers.md EK1-EK2).

A block that is diagonal in a Kronecker eigenbasis ``Q = Q_A ⊗ Q_G``::

    E_l = Q diag(s) Qᵀ,    s = diag(Qᵀ F_l Q) = (1/N) Σ_n Σ_k (Q_Aᵀ ā_n)∘² ⊗ (Q_Gᵀ g_nk)∘²   (EK1)

``s`` is the orthogonal projection of ``F_l`` (in the Frobenius inner product) onto the
matrices diagonal in the basis ``Q``; that space contains ``A ⊗ G`` when ``Q_A, Q_G`` are
the eigenbases of ``A`` and ``G``. Hence (EK2)::

    ‖F_l − E_l‖²_F = ‖F_l‖²_F − ‖s‖²  ≤  ‖F_l − A ⊗ G‖²_F.

``s`` is one GEMM of the projected factor batch: with ``P_A = (ā Q_A)∘²`` (``N × d_a``)
and ``P_G = Σ_k (g_k Q_G)∘²`` (``N × d_g``), ``S = P_Aᵀ P_G / N`` (``d_a × d_g``, and
``s = vec`` of it in the row order of θ). With ``Q_A = I`` and ``Q_G = I`` the same GEMM
gives the exact diagonal of ``F_l``: :class:`DiagonalFisher`.
"""

from __future__ import annotations

from .._errors import ShapeError
from .._validation import check_choice, check_damping, check_dense_memory
from ..backend import array_namespace, device_of
from ..batch import FactorBatch
from ..operators import BlockDiagonalOperator, CurvatureOperator, KroneckerOperator

__all__ = ["EigenbasisBlock", "EigenCorrected", "EKFAC", "DiagonalFisher",
           "projected_second_moments"]


def check_rule(rule: str) -> None:
    from ..kron import DAMPING_RULES

    check_choice(rule, DAMPING_RULES, "damping rule")


def projected_second_moments(a, g, QA=None, QG=None):
    """``S = (1/N) Σ_n Σ_k (Q_Aᵀ ā_n)∘² (Q_Gᵀ g_nk)∘²ᵀ`` of shape ``(d_a, d_g)`` (EK1).

    One GEMM of the projected factor batch (no per-sample loop); ``None`` bases mean the
    identity (then ``S`` holds the exact diagonal of the block, in θ's order). For a
    positional layer (``a (N, T, d_a)``, ``g (N, K, T, d_g)``) the per-sample matrices
    ``J_nk = Σ_t g_nkt ā_ntᵀ`` are rotated and squared entrywise,
    ``S = (1/N) Σ_{n,k} (Q_Aᵀ J_nkᵀ Q_G)∘²`` (batched GEMMs over chunks of samples).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, g = rng.normal(size=(5, 3)), rng.normal(size=(5, 2, 2))
    >>> J = (a[:, None, :, None] * g[:, :, None, :]).reshape(10, 6)   # rows ā ⊗ g
    >>> S = projected_second_moments(a, g)
    >>> bool(np.allclose(S.reshape(-1), np.diag(J.T @ J) / 5))
    True
    """
    xp = array_namespace(a, g)
    N = a.shape[0]
    if a.ndim not in (2, 3) or g.ndim != a.ndim + 1 or g.shape[0] != N or (
            a.ndim == 3 and g.shape[2] != a.shape[1]):
        raise ShapeError(
            f"projected_second_moments needs a (N, d_a) and g (N, K, d_g), or a (N, T, d_a) "
            f"and g (N, K, T, d_g); got {tuple(a.shape)} and {tuple(g.shape)}")
    for name, Q, d in (("QA", QA, a.shape[-1]), ("QG", QG, g.shape[-1])):
        if Q is not None and tuple(Q.shape) != (d, d):
            raise ShapeError(f"{name} must have shape ({d}, {d}), got {tuple(Q.shape)}")
    if a.ndim == 3:
        return _positional_second_moments(a, g, QA, QG, xp)
    PA = a * a if QA is None else a @ QA
    if QA is not None:
        PA *= PA  # in place: the projection is a fresh array
    K = g.shape[1]
    if K == 1:  # one vector per sample (MC, empirical): no sum over k
        PG = xp.reshape(g, (N, g.shape[2]))
        PG = PG * PG if QG is None else PG @ QG
        if QG is not None:
            PG *= PG
    else:
        pg = g if QG is None else g @ QG
        PG = xp.sum(pg * pg, axis=1)  # (N, d_g)
    return (xp.matrix_transpose(PA) @ PG) / N


#: memory budget (bytes) of one chunk of rotated per-sample matrices of a conv block
POSITIONAL_CHUNK_BYTES = 64 * 1024**2


def _positional_second_moments(a, g, QA, QG, xp):
    """(EK1) for a layer with ``T`` positions: ``J_nk = Σ_t g_nkt ā_ntᵀ`` is not a rank-one
    matrix, so the square is taken after the position sum::

        S = (1/N) Σ_{n,k} (Q_Aᵀ J_nkᵀ Q_G)∘²,    Q_Aᵀ J_nkᵀ Q_G = Σ_t (Q_Aᵀ ā_nt)(Q_Gᵀ g_nkt)ᵀ

    Rotate ``ā`` and ``g`` (two GEMMs), form the rotated ``J_nkᵀ`` of a chunk of samples
    with one batched GEMM ``(n, 1, d_a, T) @ (n, K, T, d_g)``, square and sum. Chunks of
    samples keep the ``n·K·d_a·d_g`` temporary within :data:`POSITIONAL_CHUNK_BYTES`.
    """
    from ..batch import c_order

    N, T, da = (int(s) for s in a.shape)
    K, dg = int(g.shape[1]), int(g.shape[3])
    itemsize = 4 if str(a.dtype).endswith("float32") else 8
    per_sample = K * da * dg * itemsize + T * (da + K * dg) * itemsize
    step = max(1, min(N, POSITIONAL_CHUNK_BYTES // max(per_sample, 1)))
    S = None
    for s0 in range(0, N, step):  # chunks of samples (one chunk unless the batch is large)
        ac, gc = a[s0:s0 + step, ...], g[s0:s0 + step, ...]
        pa = ac if QA is None else ac @ QA  # (n, T, d_a)
        pg = gc if QG is None else gc @ QG  # (n, K, T, d_g)
        M = xp.matmul(c_order(xp.matrix_transpose(pa), xp)[:, None, ...], c_order(pg, xp))
        n = int(M.shape[0])
        Mf = xp.reshape(M * M, (n * K, da * dg))
        term = xp.reshape(xp.sum(Mf, axis=0), (da, dg))
        S = term if S is None else S + term
    return S / N


class EigenbasisBlock(CurvatureOperator):
    """``Q diag(s) Qᵀ`` with ``Q = Q_A ⊗ Q_G`` (orthogonal; ``None`` = identity).

    Parameters
    ----------
    QA : array (d_a, d_a) or None
    QG : array (d_g, d_g) or None
    S : array, shape (d_a, d_g)
        The diagonal ``s`` as a grid: ``s[i_a·d_g + i_g] = S[i_a, i_g]`` (θ's order).
    source : tuple (a, g), optional
        The factor batch of the layer ``S`` was computed from (for the exact E1 identity).

    Notes
    -----
    Products cost four GEMMs (``(Q_A ⊗ Q_G)`` by the vec trick), the damped inverse
    ``(E + λI)⁻¹ = Q diag(1/(s+λ)) Qᵀ`` the same: exact, whatever ``rule`` (the Kronecker
    damping rules do not apply to a matrix with no Kronecker factors; every rule name is
    accepted and means this exact inverse).
    """

    def __init__(self, QA, QG, S, source=None):
        xp = array_namespace(S)
        if S.ndim != 2:
            raise ShapeError(f"S must be a (d_a, d_g) grid, got shape {tuple(S.shape)}")
        self.QA, self.QG, self.S = QA, QG, S
        self.d_a, self.d_g = int(S.shape[0]), int(S.shape[1])
        for name, Q, d in (("QA", QA, self.d_a), ("QG", QG, self.d_g)):
            if Q is not None and tuple(Q.shape) != (d, d):
                raise ShapeError(f"{name} must have shape ({d}, {d}), got {tuple(Q.shape)}")
        self.xp, self.dtype = xp, S.dtype
        n = self.d_a * self.d_g
        self.shape = (n, n)
        self.source = source

    def _device(self):
        return device_of(self.S)

    @property
    def diagonal_values(self):
        """``s`` as a vector of length ``d_a·d_g`` (θ's order)."""
        return self.xp.reshape(self.S, (-1,))

    def _rotate(self, X, transpose: bool):
        from ..kron import kron_matmat

        xp = self.xp
        if self.QA is None and self.QG is None:
            return X
        QA = self.QA if self.QA is not None else xp.eye(self.d_a, dtype=self.dtype,
                                                        device=self._device())
        QG = self.QG if self.QG is not None else xp.eye(self.d_g, dtype=self.dtype,
                                                        device=self._device())
        if transpose:
            QA, QG = xp.matrix_transpose(QA), xp.matrix_transpose(QG)
        return kron_matmat(QA, QG, X)

    def apply_diagonal(self, X, d):
        """``Q diag(d) Qᵀ X`` for any diagonal ``d`` in this block's basis."""
        Y = self._rotate(X, transpose=True)
        Y = Y * self.xp.reshape(d, (-1, 1))
        return self._rotate(Y, transpose=False)

    def _matmat(self, X):
        return self.apply_diagonal(X, self.diagonal_values)

    def to_dense(self, max_bytes: int | None = None):
        check_dense_memory(self.shape, self.dtype, max_bytes, "eigenbasis block",
                           "matvec/matmat")
        xp = self.xp
        return self._matmat(xp.eye(self.shape[0], dtype=self.dtype, device=self._device()))

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(E + λI)⁻¹ v = Q diag(1/(s + λ)) Qᵀ v``, exact (``rule`` does not apply)."""
        lam = check_damping(damping)
        check_rule(rule)
        self._check_operand(v, (1, 2))
        xp = self.xp
        X = xp.reshape(v, (-1, 1)) if v.ndim == 1 else v
        d = self.diagonal_values + lam
        Y = self.apply_diagonal(X, 1.0 / d)
        return Y[:, 0] if v.ndim == 1 else Y

    def frobenius_norm_sq(self) -> float:
        """``‖Q diag(s) Qᵀ‖²_F = ‖s‖²``."""
        return float(self.xp.sum(self.S * self.S))

    def trace(self) -> float:
        return float(self.xp.sum(self.S))

    def fisher_inner(self, Fb) -> float | None:
        """``⟨F_l, E⟩_F = Σ_i s_i (Qᵀ F_l Q)_ii`` for a Fisher block ``F_l`` (one GEMM;
        ``‖s‖²`` when ``F_l`` is the block ``s`` was built from, EK2)."""
        from ..curvature import FisherBlock

        if not isinstance(Fb, FisherBlock) or Fb.shape != self.shape:
            return None
        if self.source is not None and Fb.a is self.source[0] and Fb.g is self.source[1]:
            return self.frobenius_norm_sq()
        SF = projected_second_moments(Fb.a, Fb.g, self.QA, self.QG)
        return float(self.xp.sum(SF * self.S))


def _eigh_basis(M, xp):
    M = 0.5 * (M + xp.matrix_transpose(M))
    _, Q = xp.linalg.eigh(M)
    return Q


class EigenCorrected(BlockDiagonalOperator):
    """The eigenvalue correction of a one-term Kronecker approximation (docs/papers.md EK1).

    For each block with Kronecker term ``A ⊗ G`` (``A = Q_A Λ_A Q_Aᵀ``,
    ``G = Q_G Λ_G Q_Gᵀ``), keep the eigenbasis ``Q = Q_A ⊗ Q_G`` and replace the
    eigenvalues ``Λ_A ⊗ Λ_G`` by the Frobenius-optimal diagonal
    ``s = diag(Qᵀ F_l Q)``: the second moments of the per-sample gradients projected on
    ``Q``. ``EigenCorrected(fl.KFAC(b))`` is EKFAC (George et al., 2018);
    ``EigenCorrected(fl.KPSVD(b))`` uses the eigenbasis of the KPSVD factors.

    Parameters
    ----------
    approx : BlockDiagonalOperator of KroneckerOperator
        An approximation with exactly one Kronecker term per block (KFAC, KPSVD rank 1).
    batch : FactorBatch, optional
        The batch whose Fisher is projected (default: ``approx.batch``).

    Raises
    ------
    ShapeError
        ``approx`` is not block-diagonal with Kronecker blocks, a block has no term or
        several (for a sum of Kronecker products the eigenbasis of the first term is not
        the right basis, and the correction can be worse than the input), or the batch
        does not match the blocks.

    Notes
    -----
    E1 is exact: ``‖F_l − E_l‖²_F = ‖F_l‖²_F − ‖s_l‖²`` (EK2), never above E1 of the
    input. ``solve(v, λ)`` is ``(E + λI)⁻¹v`` exactly in the eigenbasis; the damping
    ``rule`` of the Kronecker approximations does not apply (any rule name means this).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(32, 4)))
    >>> F, K = fl.FisherOperator(b), fl.KFAC(b)
    >>> E = fl.EigenCorrected(K)                      # = fl.EKFAC(b)
    >>> e_k, e_e = (fl.relative_frobenius_error(F, M, block=0) for M in (K, E))
    >>> bool(e_e <= e_k)
    True
    """

    method = "EigenCorrected"
    eigen_corrected = True

    def __init__(self, approx, batch: FactorBatch | None = None):
        blocks = getattr(approx, "blocks", None)
        if not isinstance(approx, BlockDiagonalOperator) or not all(
                isinstance(b, KroneckerOperator) for b in blocks):
            raise ShapeError(
                "EigenCorrected needs a block-diagonal Kronecker approximation with one term "
                f"per block (fl.KFAC, fl.KPSVD(rank=1)); got {type(approx).__name__}")
        for l, blk in enumerate(blocks):
            if len(blk.terms) != 1:
                raise ShapeError(
                    f"EigenCorrected needs exactly one Kronecker term per block; block {l} "
                    f"of {type(approx).__name__} has {len(blk.terms)}. For a sum of "
                    "Kronecker products the first term's eigenbasis is not the right basis "
                    "and the correction can be worse than the input: correct KFAC or "
                    "rank-1 KPSVD")
        batch = getattr(approx, "batch", None) if batch is None else batch
        if not isinstance(batch, FactorBatch):
            raise TypeError(
                "EigenCorrected needs the factor batch (pass batch=...; approximations built "
                f"by fimlab carry it as .batch), got {type(batch).__name__}")
        if batch.n_layers != len(blocks) or any(
                (blk.d_a, blk.d_g) != (batch.d_a[l], batch.d_g[l])
                for l, blk in enumerate(blocks)):
            raise ShapeError("the batch's layer sizes do not match the approximation's blocks")
        self.base = approx
        self.batch = batch
        self.basis = [(_eigh_basis(blk.terms[0][0], blk.xp), _eigh_basis(blk.terms[0][1], blk.xp))
                      for blk in blocks]
        super().__init__(self._blocks_for(batch))

    def _blocks_for(self, batch):
        return [EigenbasisBlock(QA, QG, projected_second_moments(a, g, QA, QG), source=(a, g))
                for (QA, QG), a, g in zip(self.basis, batch.a, batch.g)]

    @classmethod
    def from_terms(cls, terms, batch: FactorBatch):
        """Eigenbasis of the given per-block terms ``[[(A, G)], ...]`` (e.g. moving
        averages of KFAC factors), scalings from ``batch``."""
        return cls(BlockDiagonalOperator([KroneckerOperator(t) for t in terms]), batch=batch)

    def rescaled(self, batch: FactorBatch, rho: float = 0.0):
        """The same eigenbasis with scalings ``ρ·s + (1 − ρ)·s(batch)`` (the moving average
        of the scalings of George et al.; ``ρ = 0``: the scalings of ``batch``)."""
        if not isinstance(batch, FactorBatch) or batch.n_layers != len(self.basis) or any(
                (batch.d_a[l], batch.d_g[l]) != (b.d_a, b.d_g) for l, b in enumerate(self.blocks)):
            raise ShapeError("rescaled() needs a FactorBatch with the layer sizes of the basis")
        blocks = self._blocks_for(batch)
        if rho:
            blocks = [EigenbasisBlock(b.QA, b.QG, rho * o.S + (1.0 - rho) * b.S)
                      for b, o in zip(blocks, self.blocks)]
        return self._with_blocks(batch, blocks)

    def with_scalings(self, scalings):
        """The same eigenbases with the given per-block scalings ``s`` (``(d_a, d_g)``
        each, as :attr:`EigenbasisBlock.S`): restores a moving average of the scalings,
        e.g. from a training checkpoint."""
        scalings = list(scalings)
        if len(scalings) != len(self.blocks) or any(
                tuple(S.shape) != tuple(b.S.shape) for S, b in zip(scalings, self.blocks)):
            raise ShapeError(
                f"with_scalings() needs one (d_a, d_g) array per block, shapes "
                f"{[tuple(b.S.shape) for b in self.blocks]}; got "
                f"{[tuple(getattr(S, 'shape', ())) for S in scalings]}")
        return self._with_blocks(self.batch, [EigenbasisBlock(b.QA, b.QG, S)
                                              for b, S in zip(self.blocks, scalings)])

    def _with_blocks(self, batch, blocks):
        new = object.__new__(type(self))
        new.base, new.batch, new.basis = self.base, batch, self.basis
        BlockDiagonalOperator.__init__(new, blocks)
        return new

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(E + λI)⁻¹ v``, exact in each block's eigenbasis (``rule`` does not apply)."""
        return super().solve(v, damping, rule=rule, **kwargs)


class EKFAC(EigenCorrected):
    """EKFAC: the eigenvalue-corrected KFAC of a factor batch, ``EigenCorrected(KFAC(batch))``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.factor_batch(fl.MLP([3, 4, 2], seed=0), np.random.default_rng(0).normal(size=(8, 3)))
    >>> E = fl.EKFAC(b)
    >>> bool(np.allclose(E.to_dense(), fl.EigenCorrected(fl.KFAC(b)).to_dense()))
    True
    """

    method = "EKFAC"

    def __init__(self, batch: FactorBatch):
        from .kfac import KFAC

        super().__init__(KFAC(batch), batch)


class DiagonalFisher(BlockDiagonalOperator):
    """The exact diagonal of the Fisher, ``diag(F)``, from the factor batch.

    ``diag(F_l) = (1/N) Σ_n Σ_k ā_n∘² ⊗ g_nk∘²`` (one GEMM per layer). E1 is exact:
    ``‖F − diag F‖²_F = ‖F‖²_F − ‖diag F‖²`` (the diagonal is the Frobenius projection
    onto diagonal matrices). ``solve`` is ``(diag F + λI)⁻¹``, whatever ``rule``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> b = fl.factor_batch(fl.MLP([3, 4, 2], seed=0), np.random.default_rng(0).normal(size=(8, 3)))
    >>> D = fl.DiagonalFisher(b)
    >>> bool(np.allclose(D.diagonal(), np.diag(fl.FisherOperator(b).to_dense())))
    True
    """

    method = "Diagonal"

    def __init__(self, batch: FactorBatch):
        if not isinstance(batch, FactorBatch):
            raise TypeError(f"DiagonalFisher needs a FactorBatch, got {type(batch).__name__}")
        self.batch = batch
        super().__init__([EigenbasisBlock(None, None, projected_second_moments(a, g),
                                          source=(a, g)) for a, g in zip(batch.a, batch.g)])

    def diagonal(self):
        """``diag(F)`` as a vector of length ``P``."""
        return self.xp.concat([b.diagonal_values for b in self.blocks], axis=0)

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        """``(diag F + λI)⁻¹ v`` (``rule`` does not apply)."""
        return super().solve(v, damping, rule=rule, **kwargs)
