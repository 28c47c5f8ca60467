"""Coarse spaces ``R₀`` of the two-level preconditioner (:mod:`fimlab.approx.twolevel`).

A coarse space is a ``c × P`` matrix ``R₀`` whose rows are each supported on one layer
(``r_i``, shaped like ``W_i``) and scaled by their max-abs entry, held as a
:class:`CoarseSpace` (its rows stored per layer, never as a dense ``c × P`` array). The
builders, by name (see ``docs/papers.md``, two-level coarse spaces):
:func:`nicolaides_space`, :func:`spectral_space`, :func:`residual_space`,
:func:`krylov_nicolaides_space`, :func:`krylov_residual_space`, :func:`user_space` (a
user ``R₀``) and :func:`build_coarse_space` (dispatch by name).

Zero rows (e.g. a layer whose residual is exactly zero): with ``zero_rows="drop"``
(default) the row is removed and recorded in ``CoarseSpace.dropped``;
``zero_rows="raise"`` raises :class:`~fimlab.SingularMatrixError`.
"""

from __future__ import annotations

import numpy as np

from .._errors import ShapeError, SingularMatrixError
from .._validation import check_choice, check_damping, check_dense_memory, check_finite
from ..backend import array_namespace, device_of
from ..curvature import FisherOperator
from ..kron.krylov import lanczos
from ..operators import KroneckerOperator

__all__ = [
    "COARSE_SPACES",
    "RESIDUAL_BASED",
    "ZERO_ROWS",
    "CoarseSpace",
    "build_coarse_space",
    "krylov_nicolaides_space",
    "krylov_residual_space",
    "nicolaides_space",
    "residual_space",
    "spectral_space",
    "user_space",
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
#: Coarse spaces built from the residual ``r = g − F_λζ_K`` (they depend on ``g``).
RESIDUAL_BASED = ("residual", "krylov-residual")
ZERO_ROWS = ("drop", "raise")



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
            out = out + F.jacobian_rows(V, layers=[l]) @ xp.matrix_transpose(S)
        return out

    def to_dense(self, max_bytes: int | None = None):
        """The dense ``R₀`` (``c × P``), memory-guarded."""
        check_dense_memory((self.n_rows, self.n_params), self.dtype, max_bytes,
                           "coarse space R0", "CoarseSpace.apply / apply_t")
        xp = self.xp
        I = xp.eye(self.n_rows, dtype=self.dtype, device=self.device)
        return xp.matrix_transpose(self.apply_t(I))


def layer_info(fine) -> tuple[list, list[int]]:
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
    return xp, fine.dtype, blk.device


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
    blocks, offsets = layer_info(fine)
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
    blocks, offsets = layer_info(fine)
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
    blocks, offsets = layer_info(fine)
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
    blocks, offsets = layer_info(fine)
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
    blocks, offsets = layer_info(fine)
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
