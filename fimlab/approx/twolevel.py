"""Two-level KFAC: a coarse-space correction on top of a block-diagonal fine level.

The fine level is any block-diagonal approximation ``M = blockdiag(M_i)`` of the Fisher
(KFAC, the KPSVD family, ...) applied as ``ζ_K = M⁻¹g = fine.solve(g, λ, rule)``. A coarse
space is a ``c × P`` matrix ``R₀`` whose rows are each supported on one layer (``r_i``,
shaped like ``W_i``) and scaled by their max-abs entry. With ``F_λ = F + λI`` (``F`` the
Fisher of the same factor batch), PAPERS.md:

- (T1) coarse matrix ``F_c = R₀ F_λ R₀ᵀ``, from the factor batch without forming ``F``:
  ``F_c[p,q] = (1/m) Σ_{n,k} u_{p,nk} u_{q,nk} + λ⟨r_p, r_q⟩``, ``u_{p,nk} = g_{i,nk}ᵀ r_p ā_{i,n}``;
- (T2) additive form ``ζ = ζ_K + R₀ᵀ F_c⁻¹ R₀ g``;
- (T3) residual (energy-minimising) form ``ζ = ζ_K + R₀ᵀβ*``, ``β* = F_c⁻¹R₀(g − F_λζ_K)``;
- (T4) energy ``𝔈(β) = ‖ζ_K + R₀ᵀβ − F_λ⁻¹g‖²_{F_λ}``;
  ``𝔈(β*) − 𝔈(0) = −(R₀r)ᵀF_c⁻¹(R₀r) ≤ 0``.

Coarse spaces (PAPERS.md table): :func:`nicolaides_space`, :func:`spectral_space`,
:func:`residual_space`, :func:`krylov_nicolaides_space`, :func:`krylov_residual_space`,
and "previous" (Tselepidis et al.: Nicolaides vectors with the cross-layer factor
approximation :func:`previous_coarse_matrix` of ``F_c``, additive form).

A coarse space is held as a :class:`CoarseSpace` (its rows stored per layer, never as a
dense ``c × P`` array); :func:`coarse_matrix` is (T1); :class:`TwoLevel` is the
preconditioner. It is linear and symmetric only in the additive form with a coarse
space that does not depend on ``g``; then :meth:`TwoLevel.as_operator` gives it as a
:class:`~fimlab.operators.CurvatureOperator` (the map ``g ↦ ζ``, an approximation of
``F_λ⁻¹``) so that matrix metrics apply.

Documented fallbacks
--------------------
- **Zero rows** (e.g. a layer whose residual ``r_i`` is exactly zero, as happens with a
  zero gradient on a layer that the batch does not reach): with ``zero_rows="drop"``
  (default) the row is removed from ``R₀`` (it spans nothing) and recorded in
  ``CoarseSpace.dropped``; a coarse space with no row left leaves the fine direction
  unchanged. ``zero_rows="raise"`` raises :class:`~fimlab.SingularMatrixError`.
- **Singular coarse matrix** (linearly dependent rows, e.g. a user ``R₀`` with a repeated
  row, or ``M_i⁻¹1_i ∥ 1_i``): with ``on_singular="pinv"`` (default) ``F_c`` is inverted
  on its range, after Jacobi scaling, discarding eigenvalues below ``rcond`` times the
  largest. Because ``F_c = R₀F_λR₀ᵀ``, the correction ``R₀ᵀF_c⁺R₀`` is then exactly the
  one of a basis of the row space of ``R₀`` (the direction is unchanged by dropping the
  redundant rows). ``on_singular="raise"`` raises :class:`~fimlab.SingularMatrixError`.
"""

from __future__ import annotations

import numpy as np

from .._errors import ShapeError, SingularMatrixError
from .._lanczos import lanczos
from .._validation import check_choice, check_damping, check_dense_memory, check_finite
from ..backend import array_namespace, device_of, dtype_eps
from ..batch import FactorBatch
from ..curvature import FisherOperator
from ..operators import CurvatureOperator, KroneckerOperator

__all__ = [
    "COARSE_SPACES",
    "FORMS",
    "CoarseSpace",
    "TwoLevel",
    "TwoLevelOperator",
    "build_coarse_space",
    "coarse_matrix",
    "krylov_nicolaides_space",
    "krylov_residual_space",
    "nicolaides_space",
    "previous_coarse_matrix",
    "residual_space",
    "spectral_space",
]

#: The coarse spaces of PAPERS.md, by name (a user ``R₀`` array is also accepted).
COARSE_SPACES = (
    "nicolaides",
    "spectral",
    "residual",
    "krylov-nicolaides",
    "krylov-residual",
    "previous",
)
#: The two forms of the correction: (T2) and (T3).
FORMS = ("additive", "residual")
#: Coarse spaces built from the residual ``r = g − F_λζ_K`` (they depend on ``g``).
RESIDUAL_BASED = ("residual", "krylov-residual")
ZERO_ROWS = ("drop", "raise")
ON_SINGULAR = ("pinv", "raise")


# --------------------------------------------------------------------------------------
# the coarse space R0, stored per layer
# --------------------------------------------------------------------------------------
class CoarseSpace:
    """The rows of ``R₀`` (``c × P``), stored per layer.

    Parameters
    ----------
    parts : sequence of (layer, V, rows)
        ``V`` of shape ``(n_layer, c_part)``: its columns are the rows ``rows`` of ``R₀``
        restricted to layer ``layer`` (vectors ``vec(r)``, column-major like ``θ``). In a
        coarse space of the paper each row appears in exactly one part.
    offsets : sequence of int
        Parameter offsets of the layers (``P = offsets[-1]``).
    n_rows : int
        ``c``.
    labels : sequence of str, optional
        One per row (e.g. ``"layer 1: nicolaides"``).
    dropped : sequence of str, optional
        Labels of rows removed because they were zero (see the module's fallbacks).

    Notes
    -----
    ``R₀v``, ``R₀ᵀβ``, ``R₀R₀ᵀ`` and ``U R₀ᵀ`` cost ``O(P·c)`` at most, never a dense
    ``c × P`` array; :meth:`to_dense` forms ``R₀`` for tests and small problems.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> R0 = fl.nicolaides_space(fl.KFAC(b))           # one row of ones per layer
    >>> R0.n_rows, R0.to_dense().shape
    (2, (2, 43))
    >>> v = np.arange(43.0)
    >>> bool(np.allclose(R0.apply(v), R0.to_dense() @ v))
    True
    """

    def __init__(self, parts, offsets, n_rows: int, labels=None, dropped=None, xp=None,
                 dtype=None, device=None):
        self.parts = [(int(l), V, [int(r) for r in rows]) for l, V, rows in parts]
        self.offsets = [int(o) for o in offsets]
        self.n_rows = int(n_rows)
        self.n_params = self.offsets[-1]
        self.labels = list(labels) if labels is not None else [f"row {p}" for p in range(n_rows)]
        self.dropped = list(dropped or [])
        if self.parts:
            V0 = self.parts[0][1]
            xp, dtype, device = array_namespace(V0), V0.dtype, device_of(V0)
        self.xp, self.dtype, self.device = xp, dtype, device
        self._sel = [self._selection(rows) for _, _, rows in self.parts]

    def _selection(self, rows):
        """One-hot ``(c, c_part)`` matrix scattering a part's rows into ``R₀``'s order."""
        S = np.zeros((self.n_rows, len(rows)))
        for j, r in enumerate(rows):
            S[r, j] = 1.0
        return self.xp.asarray(S, dtype=self.dtype, device=self.device) if self.n_rows else S

    @property
    def layer_of_row(self) -> list[int]:
        """The layer each row is supported on (``-1`` for a row on several layers)."""
        out: list[int] = [None] * self.n_rows  # type: ignore[list-item]
        for l, _, rows in self.parts:
            for r in rows:
                out[r] = l if out[r] is None else -1
        return out

    def __repr__(self) -> str:
        return f"<CoarseSpace c={self.n_rows} P={self.n_params} dropped={len(self.dropped)}>"

    def _split(self, X, l):
        return X[self.offsets[l] : self.offsets[l + 1], ...]

    def apply(self, v):
        """``R₀ v`` for ``v`` of shape ``(P,)`` or ``(P, k)``."""
        xp = self.xp
        vec_in = v.ndim == 1
        X = xp.reshape(v, (-1, 1)) if vec_in else v
        out = xp.zeros((self.n_rows, X.shape[1]), dtype=self.dtype, device=self.device)
        for (l, V, _), S in zip(self.parts, self._sel, strict=True):
            out = out + S @ (xp.matrix_transpose(V) @ self._split(X, l))
        return out[:, 0] if vec_in else out

    def apply_t(self, beta):
        """``R₀ᵀ β`` for ``β`` of shape ``(c,)`` or ``(c, k)``."""
        xp = self.xp
        vec_in = beta.ndim == 1
        B = xp.reshape(beta, (-1, 1)) if vec_in else beta
        k = B.shape[1]
        blocks = [None] * (len(self.offsets) - 1)
        for (l, V, _), S in zip(self.parts, self._sel, strict=True):
            y = V @ (xp.matrix_transpose(S) @ B)
            blocks[l] = y if blocks[l] is None else blocks[l] + y
        for l, b in enumerate(blocks):
            if b is None:
                n = self.offsets[l + 1] - self.offsets[l]
                blocks[l] = xp.zeros((n, k), dtype=self.dtype, device=self.device)
        out = xp.concat(blocks, axis=0)
        return out[:, 0] if vec_in else out

    def gram(self):
        """``R₀ R₀ᵀ`` (``c × c``)."""
        xp = self.xp
        out = xp.zeros((self.n_rows, self.n_rows), dtype=self.dtype, device=self.device)
        by_layer: dict[int, list] = {}
        for (l, V, _), S in zip(self.parts, self._sel, strict=True):
            by_layer.setdefault(l, []).append((V, S))
        for items in by_layer.values():
            for V1, S1 in items:
                for V2, S2 in items:
                    out = out + S1 @ (xp.matrix_transpose(V1) @ V2) @ xp.matrix_transpose(S2)
        return out

    def jacobian_products(self, F: FisherOperator):
        """``U R₀ᵀ`` reshaped ``(N, K, c)``: ``u_{p,nk} = Σ_i g_{i,nk}ᵀ r_{p,i} ā_{i,n}``
        (PAPERS.md T1), one layer's Jacobian rows at a time."""
        xp = self.xp
        b = F.batch
        out = xp.zeros((b.n_samples, b.n_vectors, self.n_rows), dtype=self.dtype,
                       device=self.device)
        for (l, V, _), S in zip(self.parts, self._sel, strict=True):
            out = out + F._U(V, layers=[l]) @ xp.matrix_transpose(S)
        return out

    def to_dense(self, max_bytes: int | None = None):
        """The dense ``R₀`` (``c × P``), memory-guarded."""
        check_dense_memory((self.n_rows, self.n_params), self.dtype, max_bytes,
                           "coarse space R0", "CoarseSpace.apply / apply_t")
        xp = self.xp
        I = xp.eye(self.n_rows, dtype=self.dtype, device=self.device)
        return xp.matrix_transpose(self.apply_t(I))


def _layer_info(fine) -> tuple[list, list[int]]:
    """The blocks and parameter offsets of a block-diagonal fine operator."""
    blocks = getattr(fine, "blocks", None)
    if blocks is None or not hasattr(fine, "solve"):
        raise TypeError(
            f"the fine level must be a block-diagonal operator with .blocks and "
            f".solve(v, damping, rule=...) (fl.KFAC, fl.KPSVD, fl.BlockDiagonalOperator, "
            f"...), got {type(fine).__name__}"
        )
    offsets = [0]
    for blk in blocks:
        offsets.append(offsets[-1] + int(blk.shape[0]))
    return list(blocks), offsets


def _assemble(vectors, offsets, zero_rows: str, xp, dtype, device) -> CoarseSpace:
    """Scale each ``(layer, label, v)`` by its max-abs entry (sign: that entry is +1),
    handle zero rows, and group the rows by layer."""
    check_choice(zero_rows, ZERO_ROWS, "zero_rows policy")
    kept: list[tuple[int, str, object]] = []
    dropped: list[str] = []
    for l, label, v in vectors:
        check_finite(v, f"coarse vector ({label})")
        i = int(xp.argmax(xp.abs(v)))
        m = float(v[i])
        if m == 0.0:
            if zero_rows == "raise":
                raise SingularMatrixError(
                    f"the coarse space has a zero row ({label}): the vector it is built "
                    "from is zero on that layer (a zero gradient or residual there). Use "
                    "zero_rows='drop' to remove such rows, or another coarse space"
                )
            dropped.append(label)
            continue
        kept.append((l, label, v / m))
    parts, labels = [], []
    by_layer: dict[int, list[int]] = {}
    for p, (l, label, _) in enumerate(kept):
        by_layer.setdefault(l, []).append(p)
        labels.append(label)
    for l, rows in sorted(by_layer.items()):
        parts.append((l, xp.stack([kept[p][2] for p in rows], axis=1), rows))
    return CoarseSpace(parts, offsets, len(kept), labels, dropped, xp=xp, dtype=dtype,
                       device=device)


def _ref(fine):
    blk = fine.blocks[0]
    xp = fine.xp if getattr(fine, "xp", None) is not None else blk.xp
    return xp, fine.dtype, blk._device()


def _block_solve(blk, v, damping, rule, kwargs):
    return blk.solve(v, damping, rule=rule, **kwargs)


# --------------------------------------------------------------------------------------
# the coarse spaces of the paper
# --------------------------------------------------------------------------------------
def nicolaides_space(fine) -> CoarseSpace:
    """Nicolaides coarse space: one row of ones per layer (PAPERS.md coarse-space table).

    Parameters
    ----------
    fine : block-diagonal operator
        Only its block sizes are used.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 2, 2], activation="tanh", seed=0)
    >>> K = fl.KFAC(fl.factor_batch(net, np.ones((4, 3))))
    >>> fl.nicolaides_space(K).to_dense().sum(axis=1).tolist()
    [8.0, 6.0]
    """
    blocks, offsets = _layer_info(fine)
    xp, dtype, dev = _ref(fine)
    vecs = [(l, f"layer {l}: nicolaides", xp.ones((int(b.shape[0]),), dtype=dtype, device=dev))
            for l, b in enumerate(blocks)]
    return _assemble(vecs, offsets, "raise", xp, dtype, dev)


def _dominant_kron_eigvec(blk: KroneckerOperator, damping: float, rule: str, xp):
    """Dominant eigenvector of a one-term Kronecker block's damped inverse.

    For ``"factor"`` (K2) and ``"pi"`` (K3) the inverse is ``(A+s_aI)⁻¹ ⊗ (G+s_gI)⁻¹``
    with positive shifts: its largest eigenvalue pairs the smallest eigenvalues of ``A``
    and ``G``, eigenvector ``q_a ⊗ q_g = vec(q_g q_aᵀ)``. For ``"exact"`` (K4) it is the
    smallest of ``λ_a λ_g + λ``.
    """
    A, G = blk.terms[0]
    wa, Qa = xp.linalg.eigh(0.5 * (A + xp.matrix_transpose(A)))
    wg, Qg = xp.linalg.eigh(0.5 * (G + xp.matrix_transpose(G)))
    if rule == "exact":
        D = xp.reshape(wa[:, None] * wg[None, :], (-1,)) + damping  # index (ia, ig)
        idx = int(xp.argmin(D))
        ia, ig = idx // int(wg.shape[0]), idx % int(wg.shape[0])
    else:
        ia, ig = int(xp.argmin(wa)), int(xp.argmin(wg))
    qa, qg = Qa[:, ia], Qg[:, ig]
    return xp.reshape(qa[:, None] * qg[None, :], (-1,))  # vec(q_g q_aᵀ) = q_a ⊗ q_g


def spectral_space(fine, damping: float, rule: str = "factor", *, tol: float = 1e-8,
                   max_steps: int | None = None, seed: int = 0, **solve_kwargs) -> CoarseSpace:
    """Spectral coarse space: per layer, the dominant eigenvector of ``M_i⁻¹``.

    ``M_i⁻¹`` is the fine block's damped inverse ``fine.blocks[i].solve(·, λ, rule)``
    (PAPERS.md coarse-space table). For a one-term Kronecker block (KFAC) under the
    rules ``"factor"`` (K2: ``(A+√λI)⁻¹ ⊗ (G+√λI)⁻¹``), ``"pi"`` (K3) and ``"exact"`` (K4)
    it is ``vec(q_g q_aᵀ)`` from the eigenpairs of the factors; for any other block it is
    found by Lanczos on ``M_i⁻¹`` (full reorthogonalisation, relative Ritz residual
    ``tol``; a :class:`~fimlab.ConvergenceWarning` if ``max_steps`` is reached).

    The vector is scaled so that its max-abs entry is ``+1``. When the top eigenvalue is
    repeated, any unit vector of its eigenspace is a dominant eigenvector; which one is
    returned is deterministic (``seed``) but unspecified.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> K = fl.KFAC(b)
    >>> r0 = fl.spectral_space(K, 1e-2).to_dense()[0, :25]     # the row of layer 0
    >>> A, G = K.blocks[0].terms[0]                             # (K2) with √λ = 0.1:
    >>> Minv = np.linalg.inv(np.kron(A + 0.1 * np.eye(5), G + 0.1 * np.eye(5)))
    >>> q = np.linalg.eigh(Minv)[1][:, -1]                      # its dominant eigenvector
    >>> bool(np.isclose(abs(q @ r0) / np.linalg.norm(r0), 1.0))
    True
    """
    lam = check_damping(damping)
    blocks, offsets = _layer_info(fine)
    xp, dtype, dev = _ref(fine)
    vecs = []
    for l, blk in enumerate(blocks):
        if (isinstance(blk, KroneckerOperator) and blk.rank == 1
                and rule in ("factor", "pi", "exact") and not solve_kwargs):
            v = _dominant_kron_eigvec(blk, lam, rule, xp)
        else:
            n = int(blk.shape[0])
            res = lanczos(
                lambda q, Mq, blk=blk: _block_solve(blk, q, lam, rule, solve_kwargs),
                n, xp=xp, dtype=dtype, device=dev, which="largest", tol=tol,
                max_steps=max_steps, seed=seed + l, want_vectors=True,
                what=f"spectral coarse space, layer {l}",
            )
            v = res.vectors[:, -1]
        vecs.append((l, f"layer {l}: spectral", v))
    return _assemble(vecs, offsets, "raise", xp, dtype, dev)


def _check_vector(v, P: int, name: str):
    if v.ndim != 1 or v.shape[0] != P:
        raise ShapeError(f"{name} must have shape ({P},), got {tuple(v.shape)}")
    check_finite(v, name)


def residual_space(fine, residual, damping: float, rule: str = "factor", *,
                   zero_rows: str = "drop", **solve_kwargs) -> CoarseSpace:
    """Residual coarse space: per layer ``M_i⁻¹ r_i``, ``r = g − F_λ ζ_K``.

    A layer whose residual is exactly zero gives a zero row: dropped (``zero_rows="drop"``,
    recorded in ``.dropped``) or an error (``"raise"``).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> r = np.random.default_rng(1).normal(size=43)
    >>> r[25:] = 0.0                                      # no residual on layer 1
    >>> R0 = fl.residual_space(fl.KFAC(b), r, 1e-2)
    >>> R0.n_rows, len(R0.dropped)
    (1, 1)
    """
    lam = check_damping(damping)
    blocks, offsets = _layer_info(fine)
    xp, dtype, dev = _ref(fine)
    _check_vector(residual, offsets[-1], "the residual")
    z = fine.solve(residual, lam, rule=rule, **solve_kwargs)
    vecs = [(l, f"layer {l}: residual", z[offsets[l]:offsets[l + 1]])
            for l in range(len(blocks))]
    return _assemble(vecs, offsets, zero_rows, xp, dtype, dev)


def krylov_nicolaides_space(fine, damping: float, rule: str = "factor",
                            **solve_kwargs) -> CoarseSpace:
    """Krylov-Nicolaides coarse space: per layer ``{1_i, M_i⁻¹ 1_i}`` (two rows).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> R0 = fl.krylov_nicolaides_space(fl.KFAC(b), 1e-2)
    >>> R0.n_rows, float(np.abs(R0.to_dense()).max(axis=1).min())   # rows scaled to max-abs 1
    (4, 1.0)
    """
    lam = check_damping(damping)
    blocks, offsets = _layer_info(fine)
    xp, dtype, dev = _ref(fine)
    ones = xp.ones((offsets[-1],), dtype=dtype, device=dev)
    z = fine.solve(ones, lam, rule=rule, **solve_kwargs)
    vecs = []
    for l in range(len(blocks)):
        s = slice(offsets[l], offsets[l + 1])
        vecs.append((l, f"layer {l}: ones", ones[s]))
        vecs.append((l, f"layer {l}: M⁻¹ones", z[s]))
    return _assemble(vecs, offsets, "raise", xp, dtype, dev)


def krylov_residual_space(fine, residual, damping: float, rule: str = "factor", *,
                          zero_rows: str = "drop", **solve_kwargs) -> CoarseSpace:
    """Krylov-residual coarse space: per layer ``{M_i⁻¹ r_i, M_i⁻² r_i}`` (two rows).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> r = np.random.default_rng(1).normal(size=43)
    >>> fl.krylov_residual_space(fl.KFAC(b), r, 1e-2).n_rows
    4
    """
    lam = check_damping(damping)
    blocks, offsets = _layer_info(fine)
    xp, dtype, dev = _ref(fine)
    _check_vector(residual, offsets[-1], "the residual")
    z1 = fine.solve(residual, lam, rule=rule, **solve_kwargs)
    z2 = fine.solve(z1, lam, rule=rule, **solve_kwargs)
    vecs = []
    for l in range(len(blocks)):
        s = slice(offsets[l], offsets[l + 1])
        vecs.append((l, f"layer {l}: M⁻¹r", z1[s]))
        vecs.append((l, f"layer {l}: M⁻²r", z2[s]))
    return _assemble(vecs, offsets, zero_rows, xp, dtype, dev)


def user_space(R0, offsets, *, zero_rows: str = "drop") -> CoarseSpace:
    """A coarse space from a user's dense ``R₀`` (``c × P``), kept as given (not rescaled).

    Rows may span several layers; each row is stored on the layers where it is non-zero.
    All-zero rows follow ``zero_rows``.
    """
    check_choice(zero_rows, ZERO_ROWS, "zero_rows policy")
    xp = array_namespace(R0)
    P = offsets[-1]
    if R0.ndim != 2 or R0.shape[1] != P:
        raise ShapeError(
            f"a user coarse space R0 must have shape (c, P) with P = {P}, got {tuple(R0.shape)}"
        )
    if not xp.isdtype(R0.dtype, "real floating"):
        raise TypeError(f"R0 has dtype {R0.dtype}; use a float array")
    check_finite(R0, "the coarse space R0")
    keep, dropped = [], []
    for p in range(R0.shape[0]):
        if float(xp.max(xp.abs(R0[p, :]))) == 0.0:
            if zero_rows == "raise":
                raise SingularMatrixError(
                    f"row {p} of the coarse space R0 is zero; remove it or use zero_rows='drop'"
                )
            dropped.append(f"row {p}")
        else:
            keep.append(p)
    parts = []
    for l in range(len(offsets) - 1):
        s = slice(offsets[l], offsets[l + 1])
        rows = [j for j, p in enumerate(keep) if float(xp.max(xp.abs(R0[p, s]))) > 0.0]
        if rows:
            V = xp.stack([R0[keep[j], s] for j in rows], axis=1)
            parts.append((l, V, rows))
    return CoarseSpace(parts, offsets, len(keep), [f"row {p}" for p in keep], dropped,
                       xp=xp, dtype=R0.dtype, device=device_of(R0))


def build_coarse_space(name, fine, damping: float, rule: str = "factor", residual=None, *,
                       zero_rows: str = "drop", **kwargs) -> CoarseSpace:
    """The coarse space ``name`` (a :data:`COARSE_SPACES` entry) of ``fine``.

    ``"previous"`` gives the Nicolaides rows (its coarse matrix is
    :func:`previous_coarse_matrix`). ``residual`` is required by the residual-based spaces.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> K = fl.KFAC(b)
    >>> [fl.build_coarse_space(name, K, 1e-2).n_rows
    ...  for name in ("nicolaides", "spectral", "krylov-nicolaides")]
    [2, 2, 4]
    >>> r = np.random.default_rng(1).normal(size=43)
    >>> fl.build_coarse_space("krylov-residual", K, 1e-2, residual=r).n_rows
    4
    """
    check_choice(name, COARSE_SPACES, "coarse space")
    if name in ("nicolaides", "previous"):
        return nicolaides_space(fine)
    if name == "spectral":
        return spectral_space(fine, damping, rule, **kwargs)
    if name == "krylov-nicolaides":
        return krylov_nicolaides_space(fine, damping, rule, **kwargs)
    if residual is None:
        raise ShapeError(f"the {name!r} coarse space is built from the residual: pass residual=")
    if name == "residual":
        return residual_space(fine, residual, damping, rule, zero_rows=zero_rows, **kwargs)
    return krylov_residual_space(fine, residual, damping, rule, zero_rows=zero_rows, **kwargs)


# --------------------------------------------------------------------------------------
# coarse matrices
# --------------------------------------------------------------------------------------
def _as_fisher(batch) -> FisherOperator:
    if isinstance(batch, FisherOperator):
        return batch
    if isinstance(batch, FactorBatch):
        return FisherOperator(batch)
    raise TypeError(
        f"expected the curvature batch (fl.FactorBatch) or its fl.FisherOperator, got "
        f"{type(batch).__name__}"
    )


def coarse_matrix(R0: CoarseSpace, batch, damping: float):
    """(T1) ``F_c = R₀ F_λ R₀ᵀ`` from the factor batch, without forming ``F``.

    ``F_c[p,q] = (1/m) Σ_{n,k} u_{p,nk} u_{q,nk} + λ⟨r_p, r_q⟩`` with
    ``u_{p,nk} = g_{i,nk}ᵀ r_p ā_{i,n}`` (PAPERS.md T1): one pass over each layer's factor
    batch per row, ``O(m·K·P·c/L)`` flops, ``O(m·K·c)`` memory.

    Parameters
    ----------
    R0 : CoarseSpace
    batch : FactorBatch or FisherOperator
        The curvature batch (the same as the fine level's).
    damping : float
        ``λ`` of ``F_λ = F + λI``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> R0 = fl.nicolaides_space(fl.KFAC(b))
    >>> Fc = fl.coarse_matrix(R0, b, 1e-2)
    >>> R = R0.to_dense(); Fl = fl.FisherOperator(b).to_dense() + 1e-2 * np.eye(43)
    >>> bool(np.allclose(Fc, R @ Fl @ R.T))             # (T1), without forming F
    True
    """
    lam = check_damping(damping)
    F = _as_fisher(batch)
    if R0.n_params != F.shape[0]:
        raise ShapeError(
            f"the coarse space acts on {R0.n_params} parameters, the batch has {F.shape[0]}"
        )
    xp = R0.xp
    b = F.batch
    U = xp.reshape(R0.jacobian_products(F), (b.n_samples * b.n_vectors, R0.n_rows))
    Fc = xp.matrix_transpose(U) @ U / b.n_samples + lam * R0.gram()
    return 0.5 * (Fc + xp.matrix_transpose(Fc))


def previous_coarse_matrix(batch, damping: float):
    """The Tselepidis et al. approximation of ``F_c`` for the Nicolaides space.

    ``F_c[i,j] ≈ sum(A_ij) · sum(G_ij) + λ n_i δ_ij`` (PAPERS.md coarse-space table) with the
    cross-layer factors ``A_ij = E[ā_i ā_jᵀ]`` and ``G_ij = E[Σ_k g_{i,k} g_{j,k}ᵀ]``;
    ``sum(A_ij) = (1/m) Σ_n (1ᵀā_{i,n})(1ᵀā_{j,n})`` and likewise for ``G``, so only the
    per-sample sums of each layer's factors are needed. ``n_i`` is the number of
    parameters of layer ``i`` (``λ⟨1_i, 1_i⟩``). The exact matrix (T1) is
    ``(1/m) Σ_{n,k} (1ᵀā_i)(1ᵀā_j)(1ᵀg_i)(1ᵀg_j)``: the approximation factorises the
    expectation of the product, as KFAC does on the diagonal blocks. Symmetric positive
    definite (a Hadamard product of two Gram matrices plus a positive diagonal).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> Fc_prev = fl.previous_coarse_matrix(b, 1e-2)
    >>> Fc_prev.shape, bool(np.all(np.linalg.eigvalsh(Fc_prev) > 0))
    ((2, 2), True)
    """
    lam = check_damping(damping)
    b = _as_fisher(batch).batch
    if any(getattr(b, "positional", ())):
        raise ShapeError(
            "the 'previous' coarse matrix (cross-layer factor sums) is defined for dense "
            "layers only; this batch has convolution layers (positions): use "
            "coarse_matrix(R0, batch, damping), the exact R0 (F + λI) R0ᵀ"
        )
    xp = b.xp
    N, K = b.n_samples, b.n_vectors
    Sa = xp.stack([xp.sum(a, axis=1) for a in b.a], axis=0)  # (L, N)
    Sg = xp.stack([xp.reshape(xp.sum(g, axis=2), (N * K,)) for g in b.g], axis=0)  # (L, NK)
    SA = Sa @ xp.matrix_transpose(Sa) / N
    SG = Sg @ xp.matrix_transpose(Sg) / N
    n = xp.asarray([float(s) for s in b.block_sizes], dtype=b.dtype, device=b.device)
    return SA * SG + lam * _diag(n, xp)


def _diag(v, xp):
    n = int(v.shape[0])
    return xp.eye(n, dtype=v.dtype, device=device_of(v)) * v[None, :]


class _CoarseInverse:
    """``F_c⁺`` applied to vectors: Jacobi scaling, eigendecomposition, truncation."""

    def __init__(self, Fc, on_singular: str, rcond: float | None):
        xp = array_namespace(Fc)
        c = int(Fc.shape[0])
        self.xp, self.c = xp, c
        self.rank = c
        self.singular = False
        if c == 0:
            return
        d = xp.linalg.diagonal(Fc)
        dmin = float(xp.min(d))
        if not dmin > 0:
            raise SingularMatrixError(
                f"the coarse matrix F_c has a non-positive diagonal entry ({dmin:.3e}); "
                "F_c = R0 (F + λI) R0ᵀ is positive definite for λ > 0 and non-zero rows — "
                "check the coarse space and the damping"
            )
        s = 1.0 / xp.sqrt(d)
        S = s[:, None] * Fc * s[None, :]
        w, Q = xp.linalg.eigh(0.5 * (S + xp.matrix_transpose(S)))
        wmax = float(xp.max(w))
        rc = (1e3 * c * dtype_eps(Fc.dtype)) if rcond is None else float(rcond)
        thr = rc * wmax
        wmin = float(xp.min(w))
        if wmin < -thr:
            raise SingularMatrixError(
                f"the coarse matrix is indefinite (Jacobi-scaled eigenvalues {wmin:.3e} .. "
                f"{wmax:.3e}); it must be R0 F_λ R0ᵀ or another positive definite matrix"
            )
        keep = w > thr
        self.rank = int(xp.sum(xp.astype(keep, xp.int64)))
        self.singular = self.rank < c
        if self.singular and on_singular == "raise":
            raise SingularMatrixError(
                f"the coarse matrix F_c ({c} × {c}) is singular to working precision "
                f"(numerical rank {self.rank}, Jacobi-scaled eigenvalues {wmin:.3e} .. "
                f"{wmax:.3e}): the coarse space has linearly dependent rows. Remove them, or "
                "use on_singular='pinv' (inverts F_c on its range; same direction)"
            )
        winv = xp.where(keep, 1.0 / xp.where(keep, w, xp.ones_like(w)), xp.zeros_like(w))
        self.s, self.Q, self.winv = s, Q, winv

    def __call__(self, rhs):
        xp = self.xp
        if self.c == 0:
            return rhs
        y = xp.matrix_transpose(self.Q) @ (self.s * rhs if rhs.ndim == 1 else
                                           self.s[:, None] * rhs)
        y = self.winv * y if rhs.ndim == 1 else self.winv[:, None] * y
        y = self.Q @ y
        return self.s * y if rhs.ndim == 1 else self.s[:, None] * y


# --------------------------------------------------------------------------------------
# the two-level preconditioner
# --------------------------------------------------------------------------------------
class TwoLevel:
    """Two-level correction of a block-diagonal fine level (PAPERS.md T1-T4).

    Parameters
    ----------
    fine : block-diagonal operator
        The fine level ``M = blockdiag(M_i)`` (``fl.KFAC(batch)``, the KPSVD family, any
        :class:`~fimlab.BlockDiagonalOperator`), applied as ``fine.solve(·, λ, rule)``.
    coarse_space : str or array
        One of :data:`COARSE_SPACES` — ``"nicolaides"``, ``"spectral"``, ``"residual"``,
        ``"krylov-nicolaides"``, ``"krylov-residual"``, ``"previous"`` — or a user ``R₀``
        of shape ``(c, P)`` (used as given) or a :class:`CoarseSpace`.
    batch : FactorBatch or FisherOperator
        The curvature batch; ``F`` is its Fisher (the same batch as the fine level's).
    form : {"additive", "residual"}
        (T2) ``ζ = ζ_K + R₀ᵀF_c⁻¹R₀g`` or (T3) ``ζ = ζ_K + R₀ᵀF_c⁻¹R₀(g − F_λζ_K)``.
    damping : float
        ``λ`` of ``F_λ = F + λI``, also the fine level's damping.
    rule : {"factor", "pi", "exact"}
        The fine level's damping rule (DESIGN.md); ``"factor"`` reproduces the papers.
    zero_rows : {"drop", "raise"}
        Zero rows of a coarse space (see the module's fallbacks).
    on_singular : {"pinv", "raise"}
        A singular coarse matrix (see the module's fallbacks).
    rcond : float, optional
        Relative eigenvalue threshold of the Jacobi-scaled ``F_c`` below which it counts
        as singular (default ``1e3·c·eps``).
    spectral_options : dict, optional
        Passed to :func:`spectral_space` (``tol``, ``max_steps``, ``seed``).

    Attributes
    ----------
    coarse : CoarseSpace
        ``R₀`` (for a residual-based space, the one of the last :meth:`solve`).
    coarse_matrix : array
        The ``c × c`` matrix inverted: ``R₀F_λR₀ᵀ`` (T1), or the factor approximation of
        :func:`previous_coarse_matrix` for ``"previous"``.
    beta : array
        The coarse coefficients of the last direction: ``F_c⁻¹R₀g`` (additive) or ``β*``
        (residual form).
    zeta_fine, residual : array
        ``ζ_K`` and ``r = g − F_λζ_K`` of the last solve (``residual`` is computed on
        demand in the additive form).
    energy_gain : float
        ``𝔈(ζ) − 𝔈(ζ_K)`` of the last direction (T4); for the residual form it equals
        ``−(R₀r)ᵀF_c⁻¹(R₀r) ≤ 0``.
    is_linear, is_symmetric : bool
        Whether ``g ↦ ζ`` is linear (coarse space independent of ``g``) and, moreover,
        symmetric (additive form).

    Notes
    -----
    Cost of one :meth:`solve`: one fine solve; for the residual form or a residual-based
    space one Fisher product (``F_λζ_K``) and, for the latter, one or two more fine solves
    and the coarse matrix (T1, ``O(m·K·P·c/L)``); the additive form with a fixed coarse
    space costs a fine solve and two thin products with ``R₀``. The coarse matrix of a
    fixed space is computed once, at construction.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(20, 4))
    >>> b = fl.factor_batch(net, X)
    >>> T = fl.TwoLevel(fl.KFAC(b), coarse_space="nicolaides", batch=b,
    ...                 form="residual", damping=1e-2)
    >>> g = np.random.default_rng(1).normal(size=b.n_params)
    >>> zeta = T.solve(g)
    >>> bool(T.energy_gain <= 0)
    True
    """

    def __init__(self, fine, coarse_space="nicolaides", batch=None, form: str = "residual",
                 damping: float | None = None, *, rule: str = "factor",
                 zero_rows: str = "drop", on_singular: str = "pinv",
                 rcond: float | None = None, spectral_options: dict | None = None):
        if batch is None:
            raise TypeError(
                "TwoLevel needs the curvature batch: TwoLevel(fine, coarse_space, batch=..., "
                "form=..., damping=...) — F_λ in the coarse matrix is its Fisher"
            )
        if damping is None:
            raise TypeError("TwoLevel needs damping=λ (the λ of F + λI and of the fine level)")
        self.damping = check_damping(damping)
        self.form = check_choice(form, FORMS, "two-level form")
        self.rule = rule
        self.zero_rows = check_choice(zero_rows, ZERO_ROWS, "zero_rows policy")
        self.on_singular = check_choice(on_singular, ON_SINGULAR, "on_singular policy")
        self.rcond = rcond
        self.F = _as_fisher(batch)
        self.batch = self.F.batch
        self.fine = fine
        blocks, offsets = _layer_info(fine)
        if offsets[-1] != self.batch.n_params or len(blocks) != self.batch.n_layers or any(
            int(bl.shape[0]) != s for bl, s in zip(blocks, self.batch.block_sizes, strict=False)
        ):
            raise ShapeError(
                f"the fine level's blocks {[int(bl.shape[0]) for bl in blocks]} do not match "
                f"the batch's layers {self.batch.block_sizes}; build both from the same batch"
            )
        self.offsets = offsets
        self.xp = self.batch.xp
        self.dtype = self.batch.dtype
        self.shape = (offsets[-1], offsets[-1])
        self._spectral_options = dict(spectral_options or {})
        if isinstance(coarse_space, str):
            self.name = check_choice(coarse_space, COARSE_SPACES, "coarse space")
        elif isinstance(coarse_space, CoarseSpace):
            self.name = "user"
            if coarse_space.n_params != offsets[-1]:
                raise ShapeError(
                    f"the coarse space acts on {coarse_space.n_params} parameters, the "
                    f"batch has {offsets[-1]}"
                )
        else:
            self.name = "user"
            coarse_space = user_space(coarse_space, offsets, zero_rows=self.zero_rows)
        self.depends_on_g = self.name in RESIDUAL_BASED
        self.is_linear = not self.depends_on_g
        self.is_symmetric = self.is_linear and self.form == "additive"
        self.coarse: CoarseSpace | None = None
        self.coarse_matrix = None
        self._cinv = None
        self._exact_Fc = None
        self.beta = self.zeta_fine = self._residual = self._g = self._d = None
        if not self.depends_on_g:
            if isinstance(coarse_space, CoarseSpace):
                R0 = coarse_space
            else:
                R0 = build_coarse_space(self.name, fine, self.damping, rule,
                                        **(self._spectral_options if self.name == "spectral"
                                           else {}))
            self._set_coarse(R0)

    # -- coarse level ------------------------------------------------------------------
    def _set_coarse(self, R0: CoarseSpace):
        self.coarse = R0
        self._exact_Fc = None
        if self.name == "previous":
            self.coarse_matrix = previous_coarse_matrix(self.F, self.damping)
        else:
            self.coarse_matrix = coarse_matrix(R0, self.F, self.damping)
            self._exact_Fc = self.coarse_matrix
        self._cinv = _CoarseInverse(self.coarse_matrix, self.on_singular, self.rcond)

    @property
    def coarse_rank(self) -> int:
        """Numerical rank of the coarse matrix (``< c`` when the pseudo-inverse fallback
        was used)."""
        return self._cinv.rank if self._cinv is not None else 0

    def _F_lambda(self, v):
        return self.F.matvec(v) + self.damping * v

    # -- the direction -----------------------------------------------------------------
    def solve(self, g):
        """The two-level direction ``ζ`` for the gradient ``g`` (T2 or T3).

        Parameters
        ----------
        g : array, shape (P,)

        Returns
        -------
        zeta : array, shape (P,)
        """
        xp = self.xp
        P = self.shape[0]
        if g.ndim != 1 or g.shape[0] != P:
            raise ShapeError(
                f"TwoLevel.solve takes one gradient of shape ({P},), got {tuple(g.shape)}; "
                "for a linear two-level map on several vectors use .as_operator()"
            )
        check_finite(g, "the gradient")
        lam = self.damping
        zK = self.fine.solve(g, lam, rule=self.rule)
        r = None
        if self.form == "residual" or self.depends_on_g:
            r = g - self._F_lambda(zK)
        if self.depends_on_g:
            R0 = build_coarse_space(self.name, self.fine, lam, self.rule, residual=r,
                                    zero_rows=self.zero_rows)
            self._set_coarse(R0)
        rhs = self.coarse.apply(r if self.form == "residual" else g)
        beta = self._cinv(rhs)
        d = self.coarse.apply_t(beta) if self.coarse.n_rows else xp.zeros_like(zK)
        self._g, self.zeta_fine, self._residual, self.beta, self._d = g, zK, r, beta, d
        return zK + d

    __call__ = solve

    def _need_solve(self):
        if self._g is None:
            raise RuntimeError("call .solve(g) first: this diagnostic is about the last direction")

    @property
    def residual(self):
        """``r = g − F_λ ζ_K`` of the last solve."""
        self._need_solve()
        if self._residual is None:
            self._residual = self._g - self._F_lambda(self.zeta_fine)
        return self._residual

    @property
    def energy_gain(self) -> float:
        """``𝔈(ζ) − 𝔈(ζ_K)`` of the last direction (PAPERS.md T4).

        With ``d = ζ − ζ_K`` and ``e = ζ_K − F_λ⁻¹g`` (so ``F_λe = −r``):
        ``‖e + d‖²_{F_λ} − ‖e‖²_{F_λ} = −2dᵀr + dᵀF_λd`` — one Fisher product, no solve.
        For the residual form it equals ``−(R₀r)ᵀF_c⁻¹(R₀r) = −(R₀r)ᵀβ* ≤ 0``.
        """
        self._need_solve()
        xp = self.xp
        d, r = self._d, self.residual
        return float(-2.0 * xp.sum(d * r) + xp.sum(d * self._F_lambda(d)))

    @property
    def optimal_energy_gain(self) -> float:
        """(T4) ``−(R₀r)ᵀ F_c⁻¹ (R₀r)`` with the exact coarse matrix (T1): the gain of the
        residual form, the best correction within the span of ``R₀``."""
        self._need_solve()
        if self.coarse.n_rows == 0:
            return 0.0
        xp = self.xp
        if self._exact_Fc is None:
            self._exact_Fc = coarse_matrix(self.coarse, self.F, self.damping)
        Rr = self.coarse.apply(self.residual)
        y = _CoarseInverse(self._exact_Fc, "pinv", self.rcond)(Rr)
        return float(-xp.sum(Rr * y))

    # -- the linear map as an operator ---------------------------------------------------
    def as_operator(self) -> TwoLevelOperator:
        """The map ``g ↦ ζ`` as a symmetric :class:`~fimlab.CurvatureOperator` — an
        approximation of ``F_λ⁻¹`` (the inverse, not ``F̃``) — for the additive form with a
        coarse space that does not depend on ``g``: ``M⁻¹ + R₀ᵀF_c⁻¹R₀``."""
        if not self.is_symmetric:
            why = ("its coarse space is built from the residual, so the map is not linear"
                   if self.depends_on_g else
                   "the residual form M⁻¹ + R₀ᵀF_c⁻¹R₀(I − F_λM⁻¹) is linear but not symmetric")
            raise ShapeError(
                f"TwoLevel({self.name!r}, form={self.form!r}) is not a symmetric linear map: "
                f"{why}. Matrix metrics need form='additive' with a fixed coarse space; the "
                "direction metrics (direction_angle, energy_error) apply to every form"
            )
        return TwoLevelOperator(self)

    def __repr__(self) -> str:
        return (f"<TwoLevel coarse_space={self.name!r} form={self.form!r} "
                f"damping={self.damping:g} rule={self.rule!r} P={self.shape[0]}>")


class TwoLevelOperator(CurvatureOperator):
    """``X ↦ M⁻¹X + R₀ᵀF_c⁻¹R₀X``: an additive two-level preconditioner with a fixed coarse
    space as a symmetric operator approximating ``F_λ⁻¹`` (see :meth:`TwoLevel.as_operator`).

    ``applies_inverse = True`` tells the metrics that products with this operator apply
    the method's inverse (``F̃_λ⁻¹``) directly.
    """

    applies_inverse = True

    def __init__(self, T: TwoLevel):
        self.T = T
        self.shape, self.dtype, self.xp = T.shape, T.dtype, T.xp
        self.damping = T.damping

    def _device(self):
        return self.T.batch.device

    def _matmat(self, X):
        T = self.T
        Y = T.fine.solve(X, T.damping, rule=T.rule)
        if T.coarse.n_rows:
            Y = Y + T.coarse.apply_t(T._cinv(T.coarse.apply(X)))
        return Y

    def solve(self, v, damping, rule: str = "exact", **kwargs):
        raise TypeError(
            "a TwoLevelOperator already applies an (approximate) damped inverse F̃_λ⁻¹; "
            "multiply by it (op @ v) instead of solving with it"
        )

