"""Error metrics between the Fisher and an approximation (docs/papers.md E1-E5).

- (E1) :func:`relative_frobenius_error` — ``‖F − F̃‖_F / ‖F‖_F``, per block or for the
  whole network. For a Fisher operator (or block) against Kronecker-structured
  approximations it is computed *exactly and matrix-free* from Gram identities::

      ‖F_l‖²_F      = (1/N²) Σ_{n,n'} (ā_nᵀā_n')² Σ_{k,k'} (g_nkᵀ g_n'k')²
      ⟨F_l, A⊗G⟩_F  = (1/N) Σ_n (ā_nᵀ A ā_n) (Σ_k g_nkᵀ G g_nk)
      ‖A⊗G‖²_F      = ‖A‖²_F ‖G‖²_F

  so no block is ever formed; any other pair of operators goes through their dense forms
  (memory-guarded). The Gram route computes ``‖F‖² − 2⟨F, F̃⟩ + ‖F̃‖²``, so its *absolute*
  accuracy is about ``√eps`` (1e-8 in float64): errors below that read as ~1e-8, not 0.
- (E2) :func:`singular_value_error` — ``‖σ(F) − σ(F̃)‖₂ / ‖σ(F)‖₂`` with sorted singular
  values (dense; symmetric matrices, so ``σ = |eigenvalues|``).
"""

from __future__ import annotations

import math

import numpy as np

from ._errors import ShapeError
from ._validation import check_choice
from .backend import array_namespace, device_of
from .curvature import FisherBlock, FisherOperator
from .operators import BlockDiagonalOperator, CurvatureOperator, KroneckerOperator

__all__ = ["relative_frobenius_error", "singular_value_error", "frobenius_terms"]

_METHODS = ("auto", "gram", "dense")


def _as_block(op, block: int | None):
    """The operator restricted to diagonal block ``block`` (or ``op`` if ``None``)."""
    if block is None:
        return op
    from ._validation import check_index

    n = getattr(op, "n_blocks", None)
    block = check_index(block, n if n is not None else 1 << 62, "block")
    if isinstance(op, FisherOperator):
        return op.diagonal_block(block)
    if isinstance(op, BlockDiagonalOperator):
        if not 0 <= block < op.n_blocks:
            raise IndexError(f"block {block} out of range for {op.n_blocks} blocks")
        return op.blocks[block]
    if hasattr(op, "diagonal_block") and hasattr(op, "fisher_inner"):  # e.g. fl.LowRank
        return op.diagonal_block(block)
    if isinstance(op, (FisherBlock, KroneckerOperator)) or hasattr(op, "fisher_inner"):
        raise ShapeError(
            f"block={block} was given, but {type(op).__name__} is already a single block"
        )
    return _DenseSlice(op, block)


class _DenseSlice:
    """Marker for 'take the dense diagonal block of a generic operator'."""

    def __init__(self, op, block):
        self.op, self.block = op, block


def _gram_able(F, Ft) -> bool:
    if isinstance(F, (FisherBlock, FisherOperator)) and _has_inner(F, Ft):
        return True
    if isinstance(F, FisherBlock) and isinstance(Ft, KroneckerOperator):
        return True
    if isinstance(F, FisherOperator) and isinstance(Ft, BlockDiagonalOperator):
        return all(isinstance(b, KroneckerOperator) for b in Ft.blocks) and (
            Ft.n_blocks == F.n_blocks
        )
    return False


def _has_inner(F, Ft) -> bool:
    """Structural test for :func:`_inner_terms` (no arithmetic)."""
    if hasattr(Ft, "fisher_inner"):
        return True
    return (isinstance(F, FisherOperator) and isinstance(Ft, BlockDiagonalOperator)
            and Ft.n_blocks == F.n_blocks
            and any(hasattr(b, "fisher_inner") for b in Ft.blocks)
            and all(hasattr(b, "fisher_inner") or isinstance(b, KroneckerOperator)
                    for b in Ft.blocks))


def _inner_terms(F, Ft):
    """``(⟨F, F̃⟩, ‖F̃‖²)`` for approximations exposing ``fisher_inner`` and
    ``frobenius_norm_sq`` (eigenvalue-corrected, diagonal, block-exact, low-rank blocks;
    block-diagonal operators of them, mixed with Kronecker blocks), else ``None``."""
    if hasattr(Ft, "fisher_inner"):
        inner = Ft.fisher_inner(F)
        return None if inner is None else (inner, Ft.frobenius_norm_sq())
    if not (isinstance(F, FisherOperator) and isinstance(Ft, BlockDiagonalOperator)
            and Ft.n_blocks == F.n_blocks):
        return None
    if not any(hasattr(b, "fisher_inner") for b in Ft.blocks):
        return None
    inner = nFt = 0.0
    for l, b in enumerate(Ft.blocks):
        Fl = F.diagonal_block(l)
        if isinstance(b, KroneckerOperator):
            inner += Fl.inner_kron(b.terms)
        elif hasattr(b, "fisher_inner"):
            t = b.fisher_inner(Fl)
            if t is None:
                return None
            inner += t
        else:
            return None
        nFt += b.frobenius_norm_sq()
    return inner, nFt


def frobenius_terms(F, Ft) -> tuple[float, float, float]:
    """``(‖F‖², ⟨F, F̃⟩, ‖F̃‖²)`` by Gram identities (Fisher vs Kronecker-structured, or
    an approximation with ``fisher_inner``)."""
    with np.errstate(over="ignore", invalid="ignore"):  # xp: NumPy warnings only; checked below
        return _frobenius_terms(F, Ft)


def _frobenius_terms(F, Ft) -> tuple[float, float, float]:
    from ._validation import check_finite_scalar

    terms = _inner_terms(F, Ft)
    if terms is not None:
        terms = (F.frobenius_norm_sq(),) + terms
    elif _has_inner(F, Ft):
        raise ShapeError(f"{type(Ft).__name__} has no Gram identity against "
                         f"{type(F).__name__}; use method='dense'")
    elif isinstance(F, FisherBlock):
        terms = F.frobenius_norm_sq(), F.inner_kron(Ft.terms), Ft.frobenius_norm_sq()
    else:
        nF = F.frobenius_norm_sq()
        inner = sum(F.diagonal_block(l).inner_kron(b.terms) for l, b in enumerate(Ft.blocks))
        nFt = sum(b.frobenius_norm_sq() for b in Ft.blocks)
        terms = nF, inner, nFt
    for name, t in zip(("‖F‖²_F", "⟨F, F̃⟩", "‖F̃‖²_F"), terms, strict=True):
        check_finite_scalar(t, f"{name} in the Gram route of the Frobenius error",
                            "it overflowed: the factor batch holds values too large "
                            "(rescale the inputs of the network)")
    return terms


def _dense(op, block, max_bytes):
    if isinstance(op, _DenseSlice):
        D = op.op.to_dense(max_bytes=max_bytes)
        offs = getattr(op.op, "offsets", None)
        if offs is None:
            raise ShapeError("block= needs an operator with block structure (offsets)")
        s = slice(offs[op.block], offs[op.block + 1])
        return D[s, s]
    if isinstance(op, CurvatureOperator):
        return op.to_dense(max_bytes=max_bytes)
    xp = array_namespace(op)
    return xp.asarray(op, device=device_of(op))


def relative_frobenius_error(F, Ft, block: int | None = None, method: str = "auto",
                             max_bytes: int | None = None) -> float:
    """(E1) relative Frobenius error ``‖F − F̃‖_F / ‖F‖_F``.

    Parameters
    ----------
    F : FisherOperator, FisherBlock, CurvatureOperator or dense array
        The reference (usually the Fisher of the curvature batch).
    Ft : CurvatureOperator or dense array
        The approximation (KFAC, KPSVD, ...), built from the same factor batch.
    block : int, optional
        Compare diagonal block ``block`` only; ``None`` compares whole matrices (for a
        block-diagonal ``Ft`` this counts the dropped off-diagonal blocks of ``F``).
    method : {"auto", "gram", "dense"}
        ``"auto"`` takes the exact matrix-free Gram route when ``F`` is a Fisher operator
        (or block) and ``Ft`` is Kronecker-structured, dense otherwise.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 3)))
    >>> F, K = fl.FisherOperator(b), fl.KFAC(b)
    >>> e_gram = fl.relative_frobenius_error(F, K, block=0)
    >>> e_dense = fl.relative_frobenius_error(F, K, block=0, method="dense")
    >>> bool(abs(e_gram - e_dense) < 1e-10)
    True
    """
    check_choice(method, _METHODS, "metric method")
    Fb, Ftb = _as_block(F, block), _as_block(Ft, block)
    if isinstance(Fb, CurvatureOperator) and isinstance(Ftb, CurvatureOperator):
        if Fb.shape != Ftb.shape:
            raise ShapeError(f"cannot compare operators of shapes {Fb.shape} and {Ftb.shape}")
    if method != "dense" and _gram_able(Fb, Ftb):
        nF, inner, nFt = frobenius_terms(Fb, Ftb)
        if nF <= 0:
            raise ShapeError("the reference matrix is zero: the relative error is undefined")
        return math.sqrt(max(nF - 2.0 * inner + nFt, 0.0) / nF)
    if method == "gram":
        raise ShapeError(
            f"the Gram route needs a Fisher operator/block and a Kronecker-structured "
            f"approximation; got {type(Fb).__name__} and {type(Ftb).__name__}"
        )
    D1, D2 = _dense(Fb, block, max_bytes), _dense(Ftb, block, max_bytes)
    if D1.shape != D2.shape:
        raise ShapeError(f"cannot compare matrices of shapes {D1.shape} and {D2.shape}")
    xp = array_namespace(D1, D2)
    nF = float(xp.linalg.vector_norm(D1))
    if nF <= 0:
        raise ShapeError("the reference matrix is zero: the relative error is undefined")
    return float(xp.linalg.vector_norm(D1 - D2)) / nF


def singular_value_error(F, Ft, block: int | None = None,
                         max_bytes: int | None = None) -> float:
    """(E2) ``‖σ(F) − σ(F̃)‖₂ / ‖σ(F)‖₂`` with singular values sorted in decreasing order.

    Dense (the spectrum of each matrix is needed); memory-guarded.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> M = np.diag([3.0, 1.0]); N = np.diag([1.0, 3.0])
    >>> fl.singular_value_error(M, N)   # same spectrum
    0.0
    """
    Fb, Ftb = _as_block(F, block), _as_block(Ft, block)
    D1, D2 = _dense(Fb, block, max_bytes), _dense(Ftb, block, max_bytes)
    if D1.shape != D2.shape:
        raise ShapeError(f"cannot compare matrices of shapes {D1.shape} and {D2.shape}")
    xp = array_namespace(D1, D2)
    s1 = xp.flip(xp.sort(xp.abs(xp.linalg.eigvalsh(0.5 * (D1 + xp.matrix_transpose(D1))))))
    s2 = xp.flip(xp.sort(xp.abs(xp.linalg.eigvalsh(0.5 * (D2 + xp.matrix_transpose(D2))))))
    n1 = float(xp.linalg.vector_norm(s1))
    if n1 <= 0:
        raise ShapeError("the reference matrix is zero: the relative error is undefined")
    return float(xp.linalg.vector_norm(s1 - s2)) / n1


# ======================================================================================
# (E4) and (E5): the quality of a preconditioner / of a direction
# ======================================================================================
__all__ += [
    "direction_angle",
    "energy_error",
    "preconditioned_spectrum",
    "preconditioned_condition_number",
    "preconditioner_distance",
]


def _exact_direction(F, g, damping, reference):
    """``F_λ⁻¹g`` (``reference`` if given) with shape checks."""
    from ._validation import check_damping, check_finite

    lam = check_damping(damping)
    if not isinstance(F, CurvatureOperator):
        raise TypeError(
            f"F must be the Fisher as an operator (fl.FisherOperator(batch), or "
            f"fl.DenseOperator(F)), got {type(F).__name__}"
        )
    P = F.shape[0]
    if g.ndim != 1 or g.shape[0] != P:
        raise ShapeError(f"the gradient must have shape ({P},), got {tuple(g.shape)}")
    check_finite(g, "the gradient")
    if reference is None:
        reference = F.solve(g, lam)
    elif reference.ndim != 1 or reference.shape[0] != P:
        raise ShapeError(f"reference must have shape ({P},), got {tuple(reference.shape)}")
    return lam, reference


def _check_direction(zeta, P):
    from ._validation import check_finite

    if zeta.ndim != 1 or zeta.shape[0] != P:
        raise ShapeError(f"the direction must have shape ({P},), got {tuple(zeta.shape)}")
    check_finite(zeta, "the direction")


def direction_angle(zeta, F, g, damping: float, *, reference=None,
                    degrees: bool = False) -> float:
    """(E4) the angle between a direction ``ζ`` and the exact natural gradient ``F_λ⁻¹g``.

    Parameters
    ----------
    zeta : array, shape (P,)
        A method's direction (e.g. ``K.solve(g, λ)`` or ``TwoLevel(...).solve(g)``).
    F : CurvatureOperator
        The Fisher of the curvature batch (``fl.FisherOperator(batch)``: ``F_λ⁻¹g`` by
        Woodbury, docs/papers.md F3), or any operator whose ``solve(v, λ)`` is ``(F+λI)⁻¹v``.
    g : array, shape (P,)
        The gradient.
    damping : float
        ``λ``.
    reference : array, optional
        ``F_λ⁻¹g`` if already computed (saves one solve when comparing many methods).
    degrees : bool
        Return degrees instead of radians.

    Returns
    -------
    float
        ``arccos(ζᵀζ* / (‖ζ‖‖ζ*‖))`` in ``[0, π]``, computed as
        ``2·atan2(‖u − w‖, ‖u + w‖)`` with the unit vectors ``u, w`` (accurate for small
        angles, where ``arccos`` loses half the digits).

    Raises
    ------
    ShapeError
        A zero direction or zero gradient (the angle is undefined).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> F = fl.DenseOperator(np.diag([1.0, 3.0]))
    >>> g = np.array([2.0, 4.0])
    >>> fl.direction_angle(F.solve(g, 1.0), F, g, 1.0)
    0.0
    """
    lam, ref = _exact_direction(F, g, damping, reference)
    _check_direction(zeta, F.shape[0])
    xp = array_namespace(zeta, ref)
    nz, nr = float(xp.linalg.vector_norm(zeta)), float(xp.linalg.vector_norm(ref))
    if not (nz > 0 and nr > 0):
        raise ShapeError(
            "the angle is undefined for a zero direction or a zero gradient "
            f"(‖ζ‖ = {nz:g}, ‖F_λ⁻¹g‖ = {nr:g})"
        )
    u, w = zeta / nz, ref / nr  # Kahan's formula: accurate near 0 and π, unlike arccos
    ang = 2.0 * math.atan2(float(xp.linalg.vector_norm(u - w)),
                           float(xp.linalg.vector_norm(u + w)))
    return math.degrees(ang) if degrees else ang


def energy_error(zeta, F, g, damping: float, *, reference=None,
                 relative: bool = True, rescale: bool = False) -> float:
    """(E5) the energy error ``‖ζ − F_λ⁻¹g‖²_{F_λ} / ‖F_λ⁻¹g‖²_{F_λ}`` of a direction.

    The energy norm is the one the residual two-level form minimises (docs/papers.md T4): for
    ``TwoLevel(..., form="residual")`` the drop from the fine level's energy error is the
    T4 gain divided by ``‖F_λ⁻¹g‖²_{F_λ} = gᵀF_λ⁻¹g``. One Fisher product and (unless
    ``reference`` is given) one exact solve.

    Parameters
    ----------
    zeta, F, g, damping, reference
        As in :func:`direction_angle`.
    relative : bool
        ``False`` returns the energy ``‖ζ − F_λ⁻¹g‖²_{F_λ}`` itself.
    rescale : bool
        Measure ``αζ`` with the energy-optimal step ``α = ζᵀg / ζᵀF_λζ`` instead of ``ζ``
        (a learning rate or KL-clipping rescales the direction anyway). The relative error
        is then ``1 − (ζᵀg)² / (ζᵀF_λζ · gᵀF_λ⁻¹g)``: the squared sine of the angle between
        ``ζ`` and ``F_λ⁻¹g`` in the ``F_λ`` inner product, in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> F = fl.DenseOperator(np.diag([1.0, 3.0]))
    >>> g = np.array([2.0, 4.0])
    >>> fl.energy_error(np.zeros(2), F, g, 1.0)   # the zero direction: error 1
    1.0
    """
    lam, ref = _exact_direction(F, g, damping, reference)
    _check_direction(zeta, F.shape[0])
    xp = array_namespace(zeta, ref)
    if rescale:
        zF = float(xp.sum(zeta * (F.matvec(zeta) + lam * zeta)))
        if not zF > 0:
            raise ShapeError("rescale=True needs a non-zero direction")
        zeta = (float(xp.sum(zeta * g)) / zF) * zeta
    e = zeta - ref
    num = float(xp.sum(e * (F.matvec(e) + lam * e)))
    if not relative:
        return num
    den = float(xp.sum(ref * (F.matvec(ref) + lam * ref)))
    if not den > 0:
        raise ShapeError("the relative energy error is undefined for a zero gradient")
    return num / den


# -- matrix metrics of symmetric linear methods ------------------------------------------
def _inverse_map(approx, damping: float, rule: str):
    """``X ↦ F̃_λ⁻¹X`` for a block-diagonal approximation (its ``solve``), a two-level
    method (additive, fixed coarse space), an operator that applies an inverse, or a
    callable."""
    from .approx.twolevel import TwoLevel

    if isinstance(approx, TwoLevel):
        if abs(approx.damping - damping) > 1e-12 * max(abs(damping), 1.0):
            from ._errors import DampingError

            raise DampingError(
                f"the TwoLevel method was built with damping {approx.damping:g}, the metric "
                f"was asked for {damping:g}; rebuild it with the same λ"
            )
        op = approx.as_operator()
        return op.matmat, approx.shape
    if getattr(approx, "applies_inverse", False):
        return approx.matmat, approx.shape
    if isinstance(approx, CurvatureOperator):
        return (lambda X: approx.solve(X, damping, rule=rule)), approx.shape
    if callable(approx):
        return approx, None
    raise TypeError(
        "approx must be a block-diagonal approximation (fl.KFAC, ...), a linear "
        "fl.TwoLevel, an operator applying F̃_λ⁻¹, or a callable X ↦ F̃_λ⁻¹X; got "
        f"{type(approx).__name__}"
    )


_ALGORITHMS = ("lanczos", "dense")


def _spectrum(F, approx, damping, rule, algorithm, steps, tol, seed, max_bytes, which,
              max_seconds=None, progress=None):
    from ._validation import check_damping, check_dense_memory
    from .kron.krylov import lanczos

    lam = check_damping(damping)
    check_choice(algorithm, _ALGORITHMS, "spectrum algorithm")
    apply, shp = _inverse_map(approx, lam, rule)
    P = F.shape[0]
    if shp is not None and tuple(shp) != tuple(F.shape):
        raise ShapeError(f"the method has shape {tuple(shp)}, the Fisher {tuple(F.shape)}")
    xp, dtype = F.xp, F.dtype

    def as_mat(v):
        return xp.reshape(v, (-1, 1))

    if algorithm == "dense":
        check_dense_memory((P, P), dtype, max_bytes, "preconditioned Fisher",
                           "algorithm='lanczos'")
        I = xp.eye(P, dtype=dtype, device=F.device)
        Fl = F.to_dense(max_bytes=max_bytes) + lam * I
        Pm = apply(I)
        Pm = 0.5 * (Pm + xp.matrix_transpose(Pm))
        L = xp.linalg.cholesky(0.5 * (Fl + xp.matrix_transpose(Fl)))
        S = xp.matrix_transpose(L) @ Pm @ L  # similar to P F_λ, symmetric
        return xp.linalg.eigvalsh(0.5 * (S + xp.matrix_transpose(S))), None

    def Fl_apply(v):
        return F.matvec(v) + lam * v

    from ._budget import check_memory
    from ._progress import StepBudget

    m = min(P, 300) if steps is None else max(1, min(int(steps), P))
    # the basis Q and M·Q (m vectors of P each) and their stacked copies, per step
    check_memory(4 * m * P * (4 if "32" in str(dtype) else 8),
                 f"the Lanczos basis of the preconditioned spectrum ({m} steps × P = {P:,})",
                 "fewer steps (steps=...)", max_bytes)
    op = StepBudget(lambda v, Mv: apply(as_mat(Mv))[:, 0], "preconditioned spectrum (Lanczos)",
                    m, max_seconds, progress)
    try:
        res = lanczos(op, P, xp=xp, dtype=dtype, device=F.device,
                      M=Fl_apply, which=which, tol=tol, max_steps=steps, seed=seed,
                      what="preconditioned spectrum")
    finally:
        op.close()
    return res.values, res


def preconditioned_spectrum(F, approx, damping: float, *, rule: str = "factor",
                            algorithm: str = "lanczos", steps: int | None = None,
                            tol: float = 1e-8, seed: int = 0,
                            max_bytes: int | None = None, max_seconds: float | None = None,
                            progress: bool | None = None):
    """(E4) eigenvalues of ``F̃_λ⁻¹ F_λ`` for a method that is a symmetric linear map.

    ``F̃_λ⁻¹F_λ`` is self-adjoint in the ``F_λ`` inner product, so its eigenvalues are real
    and Lanczos in that inner product finds them matrix-free: one product with ``F`` and
    one application of ``F̃_λ⁻¹`` per step (full reorthogonalisation). The extreme Ritz
    values converge first (to ``tol``); with ``steps ≥ P`` every distinct eigenvalue is
    found. ``algorithm="dense"`` forms ``Lᵀ F̃_λ⁻¹ L`` (``F_λ = LLᵀ``), memory-guarded.

    Parameters
    ----------
    F : FisherOperator
        The Fisher of the curvature batch.
    approx : approximation, TwoLevel, operator or callable
        A block-diagonal approximation applied as ``approx.solve(X, λ, rule)``; a
        ``fl.TwoLevel`` in the additive form with a fixed coarse space (its
        :meth:`~fimlab.TwoLevel.as_operator`; other forms are not symmetric linear maps
        and raise :class:`~fimlab.ShapeError`); an operator with ``applies_inverse``; or a
        callable ``X ↦ F̃_λ⁻¹X`` (trusted to be symmetric).
    damping : float
    rule : str
        The damping rule of ``approx.solve``.
    algorithm : {"lanczos", "dense"}
    steps : int, optional
        Lanczos steps cap (default ``min(P, 300)``); the basis (``4·steps·P`` numbers
        with its copies) is checked against the memory budget before starting.
    max_seconds : float, optional
        Time budget: past it the run stops with :class:`~fimlab.ConvergenceError`.
    progress : bool, optional
        A progress bar on stderr: ``None`` (default) shows one when the run takes more
        than two seconds, ``True`` always, ``False`` never.

    Returns
    -------
    array
        Ascending eigenvalues (dense) or Ritz values (Lanczos; the extremes are the
        converged ones).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> F = fl.DenseOperator(np.diag([1.0, 3.0]))
    >>> fl.preconditioned_spectrum(F, lambda X: X, 1.0).round(6).tolist()
    [2.0, 4.0]
    """
    vals, _ = _spectrum(F, approx, damping, rule, algorithm, steps, tol, seed, max_bytes,
                        "both", max_seconds, progress)
    return vals


def preconditioned_condition_number(F, approx, damping: float, **kwargs) -> float:
    """(E4) ``κ(F̃_λ⁻¹F_λ) = μ_max / μ_min`` (see :func:`preconditioned_spectrum`).

    ``inf`` when the smallest eigenvalue is not positive (an indefinite preconditioner).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> F = fl.DenseOperator(np.diag([1.0, 3.0]))
    >>> round(fl.preconditioned_condition_number(F, lambda X: X, 1.0), 6)   # (3+1)/(1+1)
    2.0
    """
    xp_vals = preconditioned_spectrum(F, approx, damping, **kwargs)
    lo, hi = float(xp_vals[0]), float(xp_vals[-1])
    return hi / lo if lo > 0 else math.inf


_NORMS = ("2", "energy")


def preconditioner_distance(F, approx, damping: float, *, norm: str = "2",
                            rule: str = "factor", algorithm: str = "lanczos",
                            steps: int | None = None, tol: float = 1e-8, seed: int = 0,
                            max_bytes: int | None = None, max_seconds: float | None = None,
                            progress: bool | None = None) -> float:
    """(E4) ``‖I − F̃_λ⁻¹F_λ‖`` for a method that is a symmetric linear map.

    Parameters
    ----------
    norm : {"2", "energy"}
        ``"2"``: the Euclidean spectral norm — ``E = I − F̃_λ⁻¹F_λ`` is not symmetric, so
        this is ``√λ_max(EᵀE)``, by Lanczos on ``EᵀE = (I − F_λF̃_λ⁻¹)(I − F̃_λ⁻¹F_λ)`` (two
        products with ``F`` and two applications of ``F̃_λ⁻¹`` per step) or densely.
        ``"energy"``: the ``F_λ``-norm, ``max_i |1 − μ_i|`` over the spectrum of
        :func:`preconditioned_spectrum` — the contraction factor of the preconditioned
        Richardson iteration in the energy norm of (E5).
    max_seconds, progress
        Time budget and progress bar of the Lanczos run, as in
        :func:`preconditioned_spectrum`.
    Other parameters as in :func:`preconditioned_spectrum`.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> F = fl.DenseOperator(np.diag([1.0, 3.0]))
    >>> round(fl.preconditioner_distance(F, lambda X: 0.25 * X, 1.0), 6)
    0.5
    """
    from ._validation import check_damping, check_dense_memory
    from .kron.krylov import lanczos

    check_choice(norm, _NORMS, "norm")
    if norm == "energy":
        vals = preconditioned_spectrum(F, approx, damping, rule=rule, algorithm=algorithm,
                                       steps=steps, tol=tol, seed=seed, max_bytes=max_bytes,
                                       max_seconds=max_seconds, progress=progress)
        return max(abs(1.0 - float(vals[0])), abs(1.0 - float(vals[-1])))
    lam = check_damping(damping)
    check_choice(algorithm, _ALGORITHMS, "spectrum algorithm")
    apply, shp = _inverse_map(approx, lam, rule)
    if shp is not None and tuple(shp) != tuple(F.shape):
        raise ShapeError(f"the method has shape {tuple(shp)}, the Fisher {tuple(F.shape)}")
    P, xp, dtype = F.shape[0], F.xp, F.dtype
    if algorithm == "dense":
        check_dense_memory((P, P), dtype, max_bytes, "I − F̃_λ⁻¹F_λ", "algorithm='lanczos'")
        I = xp.eye(P, dtype=dtype, device=F.device)
        E = I - apply(F.to_dense(max_bytes=max_bytes) + lam * I)
        return float(xp.linalg.matrix_norm(E, ord=2))

    def EtE(v, Mv):
        X = xp.reshape(v, (-1, 1))
        Y = X - apply(F.matmat(X) + lam * X)
        Z = apply(Y)
        return (Y - (F.matmat(Z) + lam * Z))[:, 0]

    from ._progress import StepBudget

    cap = min(P, 300) if steps is None else max(1, min(int(steps), P))
    op = StepBudget(EtE, "‖I − F̃_λ⁻¹F_λ‖₂ (Lanczos)", cap, max_seconds, progress)
    try:
        res = lanczos(op, P, xp=xp, dtype=dtype, device=F.device, which="largest", tol=tol,
                      max_steps=steps, seed=seed, what="‖I − F̃_λ⁻¹F_λ‖₂")
    finally:
        op.close()
    return math.sqrt(max(float(res.values[-1]), 0.0))


# -- (E3) relative spectral error, matrix-free ------------------------------------------------
def _lanczos_extreme(op, n: int, dtype, xp, *, tol: float, maxiter: int, seed: int,
                     max_bytes, device=None, max_seconds=None, progress=None,
                     what: str = "spectral error (Lanczos)"):
    """Largest ``|λ|`` of the symmetric operator ``op`` (a function ``X -> op @ X`` on
    ``(n, 1)`` arrays) by the symmetric Lanczos of :func:`fimlab.kron.krylov.lanczos`
    (full reorthogonalisation).

    Stops when the Ritz value of largest magnitude has residual ``|β_k s_k| ≤ tol·|θ|``
    (its error is then below ``tol·|θ|``, and usually far below: ``r²/gap``), when the
    Krylov space is exhausted (an invariant subspace: exact), or at ``maxiter`` steps
    (a :class:`~fimlab.ConvergenceWarning` with the residual reached). Returns
    ``(|θ|, info)``.
    """
    import warnings

    import numpy as np

    from ._errors import ConvergenceWarning
    from ._validation import check_dense_memory
    from .kron.krylov import lanczos

    m = max(1, min(int(maxiter), n))
    check_dense_memory((m + 1, n), dtype, max_bytes, "Lanczos basis",
                       "spectral_error(..., maxiter=smaller)")
    from ._progress import StepBudget

    step = StepBudget(lambda v, Mv: op(xp.reshape(v, (n, 1)))[:, 0], what, m, max_seconds,
                      progress)
    try:
        res = lanczos(step, n, xp=xp, dtype=dtype, device=device, which="magnitude",
                      tol=tol, max_steps=m, seed=seed, warn=False)
    finally:
        step.close()
    j = int(np.argmax(np.abs(res.values)))
    theta, r = float(abs(res.values[j])), float(res.residuals[j])
    info = {"iterations": res.steps, "residual": r, "converged": res.converged}
    if not res.converged:
        warnings.warn(
            f"Lanczos did not reach tol={tol:g} in {m} steps (residual {r:.3g} of |θ| = "
            f"{theta:.6g}); raise maxiter for a tighter estimate",
            ConvergenceWarning, stacklevel=3,
        )
    return theta, info


def _fisher_spectral_norm(Fb, xp):
    """``‖F‖₂`` of a Fisher operator or block from its ``N·K × N·K`` Gram matrix (the
    non-zero eigenvalues of ``UᵀU/N`` are those of ``UUᵀ/N``)."""
    b = Fb.batch.layer(Fb.l) if isinstance(Fb, FisherBlock) else Fb.batch
    ev = xp.linalg.eigvalsh(b.gram())
    return float(xp.max(xp.abs(ev))) / b.n_samples


__all__ += ["spectral_error"]


def spectral_error(F, Ft, block: int | None = None, method: str = "auto", *,
                   tol: float = 1e-8, maxiter: int = 300, seed: int = 0,
                   max_bytes: int | None = None, max_seconds: float | None = None,
                   progress: bool | None = None) -> float:
    """(E3) relative spectral error ``‖F − F̃‖₂ / ‖F‖₂`` (docs/papers.md E3).

    Parameters
    ----------
    F : FisherOperator, FisherBlock, CurvatureOperator or dense array
        The reference.
    Ft : CurvatureOperator or dense array
        The approximation, built from the same factor batch.
    block : int, optional
        Compare diagonal block ``block`` only (as in :func:`relative_frobenius_error`).
    method : {"auto", "lanczos", "dense"}
        ``"lanczos"`` (what ``"auto"`` takes for operators): matrix-free, Lanczos with
        full reorthogonalisation on ``F − F̃`` using only products with ``F`` and ``F̃``
        (two GEMMs each for Fisher and Kronecker blocks), and ``‖F‖₂`` from the
        ``N·K × N·K`` Gram matrix of a Fisher operator (Lanczos otherwise).
        ``"dense"``: symmetric eigenvalues of the dense matrices (memory-guarded; the
        reference the tests compare with). Dense arrays always go the dense way.
    tol : float
        Relative residual of the extreme Ritz value at which Lanczos stops.
    maxiter : int
        Lanczos steps at most (the basis holds ``maxiter`` vectors of the block's size:
        memory-guarded by ``max_bytes``).
    seed : int
        Seed of the Lanczos start vector (results are deterministic).
    max_seconds : float, optional
        Time budget of each Lanczos run: past it the run stops with
        :class:`~fimlab.ConvergenceError` (the error says how many steps were taken).
    progress : bool, optional
        A progress bar on stderr: ``None`` (default) shows one when a run takes more than
        two seconds, ``True`` always, ``False`` never.

    Returns
    -------
    float

    Notes
    -----
    ``F − F̃`` is symmetric and, in general, indefinite: its 2-norm is its eigenvalue of
    largest magnitude, which Lanczos finds from both ends of the spectrum at once.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 3)))
    >>> F, K = fl.FisherOperator(b), fl.KFAC(b)
    >>> e = fl.metrics.spectral_error(F, K, block=0)
    >>> bool(abs(e - fl.metrics.spectral_error(F, K, block=0, method="dense")) < 1e-8)
    True
    """
    from .operators import SumOperator

    check_choice(method, ("auto", "lanczos", "dense"), "spectral-error method")
    Fb, Ftb = _as_block(F, block), _as_block(Ft, block)
    ops = isinstance(Fb, CurvatureOperator) and isinstance(Ftb, CurvatureOperator)
    if method == "lanczos" and not ops:
        raise ShapeError(
            f"the Lanczos route needs two operators (or a block of block-structured ones); "
            f"got {type(Fb).__name__} and {type(Ftb).__name__}: use method='dense'"
        )
    if ops and Fb.shape != Ftb.shape:
        raise ShapeError(f"cannot compare operators of shapes {Fb.shape} and {Ftb.shape}")
    if ops and method != "dense":
        xp = Fb.xp
        n = Fb.shape[0]
        D = SumOperator(Fb, -1.0 * Ftb)
        kw = dict(tol=tol, maxiter=maxiter, seed=seed, max_bytes=max_bytes,
                  device=Fb.device, max_seconds=max_seconds, progress=progress)
        dnorm, _ = _lanczos_extreme(D.matmat, n, Fb.dtype, xp, **kw)
        if isinstance(Fb, (FisherOperator, FisherBlock)):
            fnorm = _fisher_spectral_norm(Fb, xp)
        else:
            fnorm, _ = _lanczos_extreme(Fb.matmat, n, Fb.dtype, xp, **kw)
        if fnorm <= 0:
            raise ShapeError("the reference matrix is zero: the relative error is undefined")
        return dnorm / fnorm
    D1, D2 = _dense(Fb, block, max_bytes), _dense(Ftb, block, max_bytes)
    if D1.shape != D2.shape:
        raise ShapeError(f"cannot compare matrices of shapes {D1.shape} and {D2.shape}")
    xp = array_namespace(D1, D2)
    E = D1 - D2
    e = float(xp.max(xp.abs(xp.linalg.eigvalsh(0.5 * (E + xp.matrix_transpose(E))))))
    f = float(xp.max(xp.abs(xp.linalg.eigvalsh(0.5 * (D1 + xp.matrix_transpose(D1))))))
    if f <= 0:
        raise ShapeError("the reference matrix is zero: the relative error is undefined")
    return e / f
