"""The four improvements of KFAC of the KPSVD paper, and rank-r KPSVD (docs/papers.md R1-R4,
the methods table, I1).

Each method approximates every diagonal block ``F_l = (1/N) Σ_n (ā_n ā_nᵀ) ⊗ G_n`` of
the Fisher by one or two Kronecker products, the solution of a Frobenius-norm problem
read off the rearranged block ``R(F_l)`` (R1, R3):

============== ==================================================== ===================
class          problem (Frobenius norm)                             terms per block
============== ==================================================== ===================
KPSVD(rank=r)  ``min ‖F_l − Σ_{j≤r} A_j ⊗ G_j‖`` (r = 1: the paper) r
KFACCorrected  ``min ‖F_l − A_K⊗G_K − A'⊗G'‖``, KFAC factors fixed   2
Deflation      rank 2, the terms one after the other                2
Lanczos        rank 2, both terms at once (Golub–Kahan)             2
============== ==================================================== ===================

Two solvers (``solver=``):

- ``"exact"`` (default): converged to a relative residual of 1e-10 (or exact), and
  correct whatever the spectral gap. ``R(F_l) = (1/N) Uᵀ V`` (rows ``vec(ā_n ā_nᵀ)``
  and ``vec(G_n)``) has the non-zero singular triplets of an ``m × m`` problem built
  from Gram matrices of the factor batch (:class:`fimlab.kron.RearrangedGram`, solved by
  Golub–Kahan in Gram coefficients with a dense fallback): KPSVD takes its leading
  triplets; KFAC-corrected the leading triplet of ``Uᵀ(I/m − 11ᵀ/m²)V = R(F_l) −
  vec(A_K)vec(G_K)ᵀ``; Deflation the two leading triplets (the second is the leading one
  of the deflated ``Uᵀ(I/m − w₁d₁ᵀ/σ₁)V``); Lanczos a Golub–Kahan bidiagonalisation of
  the small problem, grown until the two leading Ritz triplets have residual
  ≤ 1e-10·σ₁ (or the Krylov space is exhausted). So exact Deflation, exact Lanczos and
  rank-2 KPSVD are the same matrix (docs/papers.md; a test asserts it).
- ``"paper"``: the papers' algorithms and budgets: power SVD with tolerance
  ``tol=1e-6`` and at most ``maxiter=1000`` iterations, warm-started from
  ``warm_start`` (the previous operator) when given; Lanczos with ``steps=2`` and
  restarts from ``v₁ + v₂`` while the residual is above ``tol`` (at most
  ``max_restarts=100``). Not converging within the cap emits a
  :class:`~fimlab.ConvergenceWarning` with the residual reached, recorded in the
  block's report. The iterations run on ``products="gram"``: the isometric
  ``m``-dimensional coordinates of ``R(F_l)``
  (:class:`fimlab.kron.GramCoordinates`, ``O(N²)`` per product), or on
  ``products="matrix-free"``: the papers' ``d_a²``/``d_g²``-long vectors and the
  products of R3 (``O(N(d_a² + K d_g²))`` per product). Both see the same operator on
  its row and column spaces, so power iterations agree to round-off (a test checks
  it); the default is ``"gram"`` for the power-SVD methods and ``"matrix-free"`` for
  Lanczos, whose restarted recurrence amplifies rounding in the null space of
  ``R(F_l)`` — a floating-point effect the papers' runs had and the Gram coordinates
  lack (see :class:`Lanczos`).

  With two steps the restarted Krylov space ``span{x, RᵀRx}``, ``x = v₁ + v₂``,
  contains ``(RᵀR − σ₁²)v₂``, which amplifies the *smallest* singular directions: the
  papers' Lanczos finds ``σ₁`` but its second triplet drifts away from ``σ₂``, and its
  error stays close to rank-1 KPSVD's (it still warns, with the residual).

Every operator is a :class:`~fimlab.operators.BlockDiagonalOperator` of
:class:`~fimlab.operators.KroneckerOperator` blocks: ``op.blocks[l].terms`` is the list
of ``(A, G)`` pairs (leading term first, symmetric, the leading factors PSD by the sign
rule R4), ``op.blocks[l].report`` / ``op.reports[l]`` the
:class:`~fimlab.kron.ConvergenceReport`, and ``solve(v, damping, rule)`` applies the
damped inverses of docs/guide/conventions.rst (``"factor"``: K2 for one term, I1 for two, PCG for three
or more; ``"exact"``: K4 for one term, PCG otherwise).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._errors import ShapeError
from .._validation import check_choice
from ..backend import array_namespace, asarray_on, device_of, unvec, vec
from ..batch import FactorBatch
from ..kron._checks import check_solver_params
from ..kron.gram import GramCoordinates, RearrangedGram
from ..kron.krylov import lanczos_svd, power_svd
from ..kron.pairs import ConvergenceReport, deflate
from ..kron.rearrange import psd_sign
from ..kron.rearranged import RearrangedFisher
from ..operators import BlockDiagonalOperator, KroneckerOperator
from .kfac import kfac_factors

__all__ = ["KPSVD", "KFACCorrected", "Deflation", "Lanczos", "SOLVERS"]

SOLVERS = ("exact", "paper")
#: where the paper solver runs: the isometric Gram coordinates (default, O(N²) per
#: product) or the matrix-free d²-long vectors of the papers (O(N (d_a² + K d_g²)))
PRODUCTS = ("gram", "matrix-free")


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ShapeError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


class _MatrixFreeSpace:
    """The paper solver on the matrix-free products with ``R(F_l)`` (R3), the papers'
    own setting: vectors of length ``d_a²`` and ``d_g²``. Same interface as
    :class:`fimlab.kron.GramCoordinates`."""

    def __init__(self, a, g, kfac_residual: bool = False):
        self.xp = array_namespace(a, g)
        self.a = a
        if a.ndim == 3:  # a convolution block: R(F_l) = (1/N) Σ M_nk ⊗ M_nk
            from .conv_rearranged import RearrangedConvFisher

            self.R = RearrangedConvFisher(a, g)
        else:
            self.R = RearrangedFisher(a, g)
        self.d_a, self.d_g = self.R.d_a, self.R.d_g
        self.AK, self.GK = kfac_factors(a, g)
        op = self.R
        if kfac_residual:
            op = deflate(self.R, [(1.0, vec(self.AK, self.xp), vec(self.GK, self.xp))])
        self.op = op
        self.shape = op.shape
        self.matvec, self.rmatvec = op.matvec, op.rmatvec

    def right(self, G):
        xp = self.xp
        v = vec(asarray_on(G, self.a, dtype=self.a.dtype), xp)
        n = float(xp.linalg.vector_norm(v))
        return v / n if n > 0 else None

    def right_kfac(self):
        return self.right(self.GK)

    def random(self, rng):
        """A random unit vector of the row space of ``R(F_l)`` (``Rᵀ`` of a random
        vector): a random vector of ``R^{d_g²}`` would be almost all null space, which a
        Golub–Kahan basis keeps forever."""
        x = asarray_on(rng.standard_normal(self.shape[0]), self.a, dtype=self.a.dtype)
        y = self.op.rmatvec(x)
        n = float(self.xp.linalg.vector_norm(y))
        return y / n if n > 0 else y

    def term(self, sigma: float, u, v):
        """``(√σ unvec(u), √σ unvec(v))`` symmetrised and signed (R4)."""
        xp, d_a, d_g = self.xp, self.d_a, self.d_g
        if sigma <= 0:
            dev = device_of(u)
            return (xp.zeros((d_a, d_a), dtype=u.dtype, device=dev),
                    xp.zeros((d_g, d_g), dtype=u.dtype, device=dev))
        sq = math.sqrt(sigma)
        A = unvec(u, d_a, d_a, xp) * sq
        G = unvec(v, d_g, d_g, xp) * sq
        A = 0.5 * (A + xp.matrix_transpose(A))
        G = 0.5 * (G + xp.matrix_transpose(G))
        return psd_sign(A, G)


#: the exact conv route works in the span of the patches / vectors when it is at most
#: this fraction of ``d_a`` / ``d_g`` (``None`` turns the reduction off)
SPAN_REDUCTION = 0.75


def _span_basis(x, xp):
    """Orthonormal basis ``Q`` (``d × r``) of the span of the rows ``x[..., :]`` when
    their number ``r`` is at most :data:`SPAN_REDUCTION` ``· d``, else ``None``."""
    d = int(x.shape[-1])
    r = math.prod(int(s) for s in x.shape[:-1])
    if SPAN_REDUCTION is None or r > SPAN_REDUCTION * d:
        return None
    Q, _ = xp.linalg.qr(xp.matrix_transpose(xp.reshape(x, (r, d))))
    return Q


class _KPSVDFamily(BlockDiagonalOperator):
    """Shared construction: validation, warm starts, one block per layer, reports."""

    method = "?"
    n_terms = 2
    default_products = "gram"

    def __init__(self, batch: FactorBatch, *, solver: str = "exact", warm_start=None,
                 tol: float = 1e-6, maxiter: int = 1000, max_restarts: int = 100,
                 seed: int = 0, rank_rtol: float | None = None,
                 products: str | None = None):
        if not isinstance(batch, FactorBatch):
            raise TypeError(
                f"{type(self).__name__} needs a FactorBatch, got {type(batch).__name__}; "
                "build one with fl.factor_batch(net, X) or fl.FactorBatch(a=..., g=...)"
            )
        self.solver = check_choice(solver, SOLVERS, "KPSVD solver")
        self.products = check_choice(products if products is not None
                                     else self.default_products, PRODUCTS,
                                     "product representation")
        check_solver_params(tol=tol, maxiter=maxiter, max_restarts=max_restarts)
        self.tol, self.maxiter, self.max_restarts = float(tol), maxiter, max_restarts
        if rank_rtol is not None:
            from .._validation import check_real

            rank_rtol = check_real(rank_rtol, "rank_rtol", lo=0, hi=1, hi_open=True,
                                   hint="a tolerance relative to the largest singular value;"
                                   " terms below rank_rtol·σ₁ are dropped")
        from .._validation import check_seed

        self.seed, self.rank_rtol = check_seed(seed), rank_rtol
        self.batch = batch
        warm = self._warm_terms(warm_start, batch)
        rng = np.random.default_rng(seed)
        blocks, reports = [], []
        for l in range(batch.n_layers):
            t0 = time.perf_counter()
            self._layer = l
            a, g = batch.a[l], batch.g[l]
            if a.ndim == 3 and a.shape[1] == 1:
                # one position (a 1×1 output map): the block of a dense layer with inputs
                # ā_n0 and vectors g_nk0 (KFC = KFAC, R(F_l) = (1/N) Σ_n vec(ā āᵀ) vec(G_n)ᵀ
                # of rank ≤ N): the dense layers' N × N Gram route applies exactly
                a, g = a[:, 0, :], g[:, :, 0, :]
            if self.solver == "exact" and a.ndim == 3:
                terms, rep = self._exact_conv(a, g, rng)
            elif self.solver == "exact":
                terms, rep = self._exact(a, g)
            else:
                terms, rep = self._paper(a, g, warm[l] if warm else None, rng)
            rep.seconds = time.perf_counter() - t0
            block = KroneckerOperator(terms)
            block.report = rep
            blocks.append(block)
            reports.append(rep)
        super().__init__(blocks)
        #: one :class:`~fimlab.kron.ConvergenceReport` per block
        self.reports = reports

    # -- shared helpers --------------------------------------------------------------
    @property
    def terms(self) -> list[list[tuple]]:
        """``terms[l]`` = the Kronecker terms ``[(A, G), ...]`` of block ``l``."""
        return [b.terms for b in self.blocks]

    @property
    def converged(self) -> bool:
        """True when every block's solver met its tolerance."""
        return all(r.converged for r in self.reports)

    def _name(self, what: str) -> str:
        return f"{self.method} (solver='paper'), block {self._layer}: {what}"

    def _warm_terms(self, warm_start, batch):
        if warm_start is None:
            return None
        blocks = getattr(warm_start, "blocks", None)
        if blocks is None or len(blocks) != batch.n_layers:
            raise ShapeError(
                f"warm_start must be a block-diagonal Kronecker operator with "
                f"{batch.n_layers} blocks (e.g. the previous {self.method}), got "
                f"{type(warm_start).__name__}"
                + (f" with {len(blocks)} blocks" if blocks is not None else "")
            )
        out = []
        for l, b in enumerate(blocks):
            terms = getattr(b, "terms", None)
            if not terms:
                raise ShapeError(f"warm_start block {l} has no Kronecker terms")
            A, G = terms[0]
            if A.shape != (batch.d_a[l],) * 2 or G.shape != (batch.d_g[l],) * 2:
                raise ShapeError(
                    f"warm_start block {l} has factors of sizes {A.shape[0]} and "
                    f"{G.shape[0]}, the batch has d_a = {batch.d_a[l]} and d_g = "
                    f"{batch.d_g[l]}; warm-start from an operator of the same network"
                )
            out.append(terms)
        return out

    def _space(self, a, g, kfac_residual: bool = False):
        """Where the paper solver iterates (``products``): the matrix-free ``R(F_l)``
        or its isometric Gram coordinates; with ``kfac_residual``, the operator
        ``R(F_l) − vec(A_K)vec(G_K)ᵀ``. Convolution blocks always iterate on the
        matrix-free products (no ``m × m`` Gram problem represents them)."""
        if self.products == "gram" and a.ndim == 2:
            gram = self._gram(a, g)
            core = gram.kfac_residual_core() if kfac_residual else None
            return GramCoordinates(gram, core)
        return _MatrixFreeSpace(a, g, kfac_residual)

    def _gram(self, a, g):
        return RearrangedGram(a, g, rank_rtol=self.rank_rtol)

    def _zero_tol(self, scale: float) -> float:
        """Paper solver: singular values below this count as zero (the deflated
        operators keep a residue of size ``tol·σ₁`` from the inexact first term)."""
        rt = self.rank_rtol if self.rank_rtol is not None else 1e-8
        return max(10.0 * self.tol, rt) * scale

    def _exact(self, a, g):  # pragma: no cover - abstract
        raise NotImplementedError

    #: exact route on convolution blocks: (triplets wanted, of the KFAC residual?)
    def _conv_spec(self):
        return 2, False

    def _exact_conv(self, a, g, rng):
        """Exact solver on a convolution block: the leading triplets of ``R(F_l)`` (or of
        ``R(F_l) − vec(A_K)vec(G_K)ᵀ`` for KFAC-corrected) by a dense SVD or Golub–Kahan
        on the matrix-free products (:func:`fimlab.approx.conv_rearranged.conv_top_triplets`)."""
        xp = array_namespace(a, g)
        # R(F_l) lives on span{ā_nt} ⊗ span{ā_nt} and span{g_nkt} ⊗ span{g_nkt}: with
        # orthonormal bases Q_a, Q_g of these spans (when thinner than d_a, d_g), R(F_l) =
        # (Q_a ⊗ Q_a) R(F̃_l) (Q_g ⊗ Q_g)ᵀ for the batch ã = Q_aᵀā, g̃ = Q_gᵀg, so the
        # triplets come from the smaller problem and every factor lifts as Q X Qᵀ
        # (exactly; deep convolutions have d_a = 4,608 against N·T = 256 patches)
        Qa, Qg = _span_basis(a, xp), _span_basis(g, xp)
        if Qa is not None or Qg is not None:
            ac = a if Qa is None else a @ Qa
            gc = g if Qg is None else g @ Qg
            terms, rep = self._exact_conv_core(ac, gc, rng, a, g)

            def lift(X, Q):
                return X if Q is None else Q @ X @ xp.matrix_transpose(Q)

            return [(lift(A, Qa), lift(G, Qg)) for A, G in terms], rep
        return self._exact_conv_core(a, g, rng, a, g)

    def _exact_conv_core(self, a, g, rng, a0, g0):
        from .conv_rearranged import conv_top_triplets

        xp = array_namespace(a, g)
        sp = _MatrixFreeSpace(a, g)
        k, residual = self._conv_spec()
        defl = [(1.0, vec(sp.AK, xp), vec(sp.GK, xp))] if residual else []
        s, U, V, rep = conv_top_triplets(sp.R, k, defl, rng=rng,
                                         name=f"{self.method}, conv block {self._layer}")
        nrank = int(np.sum(np.asarray(s) > 0))  # xp: sigma is a host array
        if not residual and nrank == 0 and hasattr(self, "_zero_block"):
            return self._zero_block(a, g, rep.method)
        if not residual and nrank < k and hasattr(self, "_rank_error"):
            raise self._rank_error(nrank, a0, g0)
        terms = [sp.term(float(s[j]), U[:, j], V[:, j]) for j in range(k)]
        if residual:
            terms = [(sp.AK, sp.GK)] + terms
        rep.breakdown = rep.breakdown or nrank < k
        return terms, rep

    def _paper(self, a, g, warm, rng):  # pragma: no cover - abstract
        raise NotImplementedError


class KPSVD(_KPSVDFamily):
    """The Frobenius-optimal sum of ``rank`` Kronecker products on every diagonal block
    (docs/papers.md R2; ``rank=1`` is the paper's KPSVD method).

    Parameters
    ----------
    batch : FactorBatch
        The curvature batch.
    rank : int
        Number of Kronecker terms per block (Eckart–Young: the truncated Kronecker
        product SVD of ``F_l``); must not exceed the numerical rank of ``R(F_l)``.
    solver : {"exact", "paper"}
        ``"exact"``: the Gram route (converged to a relative residual of 1e-10 or
        exact; see :meth:`fimlab.kron.RearrangedGram.top`). ``"paper"``:
        power SVD (``tol``, ``maxiter``, warm start), one term after another (deflation)
        for ``rank > 1``.
    warm_start : BlockDiagonalOperator, optional
        The previous operator; its factors start the power iterations (paper solver).
    tol, maxiter : float, int
        Paper solver: relative residual ``‖R v − σ u‖/σ`` and iteration cap per term.
    seed : int
        Seed of the random start vectors (paper solver).
    rank_rtol : float, optional
        Relative threshold below which singular values of ``R(F_l)`` count as zero.
    products : {"gram", "matrix-free"}, optional
        Paper solver: run the iterations on the isometric Gram coordinates of
        ``R(F_l)`` (the default here; ``O(N²)`` per product) or on the matrix-free
        products with ``d_a²``/``d_g²``-long vectors as the papers did
        (``O(N(d_a² + K d_g²))``). Power iterations are the same in both (the map is
        an isometry on the row and column spaces of ``R(F_l)``, which is all the
        iteration sees after its first half step; a test checks they agree); see
        :class:`fimlab.kron.GramCoordinates`.

    Raises
    ------
    ShapeError
        ``rank < 1``, or ``rank`` above the numerical rank of some non-zero ``R(F_l)``
        (e.g. a one-output layer, ``d_g = 1``, has rank 1). A zero block (``F_l = 0``)
        gets ``rank`` zero terms, as with the other methods.

    Notes
    -----
    ``solve(v, damping, rule)``: ``"factor"`` uses (K2) for ``rank=1``, (I1) for
    ``rank=2`` and preconditioned CG for ``rank ≥ 3``; ``"exact"`` (K4) for rank 1 and
    PCG otherwise.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(32, 4)))
    >>> K1, K2 = fl.KPSVD(b), fl.KPSVD(b, rank=2)
    >>> F = fl.FisherOperator(b)
    >>> e = [fl.relative_frobenius_error(F, op, block=0) for op in (fl.KFAC(b), K1, K2)]
    >>> bool(e[2] <= e[1] <= e[0])
    True
    """

    method = "KPSVD"

    def _conv_spec(self):
        return self.rank, False

    def __init__(self, batch: FactorBatch, rank: int = 1, solver: str = "exact", *,
                 warm_start=None, tol: float = 1e-6, maxiter: int = 1000, seed: int = 0,
                 rank_rtol: float | None = None, products: str | None = None):
        self.rank = _check_int("rank", rank, 1)
        self.n_terms = self.rank
        super().__init__(batch, solver=solver, warm_start=warm_start, tol=tol,
                         maxiter=maxiter, seed=seed, rank_rtol=rank_rtol, products=products)

    def _rank_error(self, nrank: int, a, g):
        m, d_a, d_g = a.shape[0], a.shape[-1], g.shape[-1]
        bound = min(m, d_a * (d_a + 1) // 2, d_g * (d_g + 1) // 2)
        if a.ndim == 3:  # a conv block: each sample adds up to rank(J_nk)² terms
            bound = min(d_a * (d_a + 1) // 2, d_g * (d_g + 1) // 2)
        return ShapeError(
            f"KPSVD(rank={self.rank}): block {self._layer} has R(F_l) of numerical rank "
            f"{nrank} (at most min(m, d_a(d_a+1)/2, d_g(d_g+1)/2) = {bound} for m={m}, "
            f"d_a={d_a}, d_g={d_g}); ask for rank <= {nrank}"
        )

    def _zero_block(self, a, g, method):
        """``F_l = 0`` (e.g. a layer whose back-propagated vectors all vanish): every sum
        of Kronecker products is best at zero, as Deflation and the others return."""
        xp, dev = array_namespace(a, g), device_of(a)
        terms = [(xp.zeros((a.shape[-1], a.shape[-1]), dtype=a.dtype, device=dev),
                  xp.zeros((g.shape[-1], g.shape[-1]), dtype=a.dtype, device=dev))
                 for _ in range(self.rank)]
        return terms, ConvergenceReport(method, rank=0, sigma=(0.0,) * self.rank)

    def _exact(self, a, g):
        gram = self._gram(a, g)
        s, w, d = gram.top(self.rank)
        nrank = int(np.sum(s > 0))
        if nrank == 0:
            return self._zero_block(a, g, "gram")
        if nrank < self.rank:
            raise self._rank_error(nrank, a, g)
        rep = ConvergenceReport("gram", rank=nrank, sigma=tuple(float(x) for x in s))
        return gram.terms(s, w, d), rep

    def _paper(self, a, g, warm, rng):
        sp = self._space(a, g)
        parts, triplets, terms = [], [], []
        for j in range(self.rank):
            if warm is not None and j < len(warm):
                v0 = sp.right(warm[j][1])
            else:
                v0 = sp.right_kfac() if j == 0 else None
            target = sp if j == 0 else deflate(sp, triplets)
            zt = self._zero_tol(triplets[0][0]) if triplets else 0.0
            s, u, v, rep = power_svd(
                target, v0, tol=self.tol, maxiter=self.maxiter, rng=rng, zero_tol=zt,
                name=self._name(f"power SVD of term {j + 1}"),
            )
            parts.append(rep)
            if s <= 0 and j == 0:
                return self._zero_block(a, g, "power")
            if s <= 0:
                raise self._rank_error(j, a, g)
            triplets.append((s, u, v))
            terms.append(sp.term(s, u, v))
        sig = [t[0] for t in triplets]
        return terms, ConvergenceReport.combine("power", parts, sig, len(sig))


class KFACCorrected(_KPSVDFamily):
    """KFAC plus the leading Kronecker term of the residual ``F_l − A_K ⊗ G_K``
    (docs/papers.md methods table, "KFAC-corrected").

    ``min ‖F_l − A_K⊗G_K − A'⊗G'‖_F`` with the KFAC factors fixed: ``A'⊗G'`` is the
    leading KPSVD term of ``R(F_l) − vec(A_K)vec(G_K)ᵀ``. With ``solver="exact"`` this
    is the leading triplet of ``Uᵀ(I/m − 11ᵀ/m²)V`` (the KFAC term is the rank-one
    ``Uᵀ11ᵀV/m²``), read from the Gram problem; ``solver="paper"`` runs the power SVD on
    that operator (``products=``, see :class:`KPSVD`). Blocks have two terms ``[(A_K, G_K), (A', G')]``
    (``A', G'`` symmetric, indefinite in general); the second is zero when KFAC is
    already exact on the block (e.g. one sample).

    Parameters are those of :class:`KPSVD` (without ``rank``).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 6, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(32, 4)))
    >>> F = fl.FisherOperator(b)
    >>> e_kfac = fl.relative_frobenius_error(F, fl.KFAC(b), block=1)
    >>> bool(fl.relative_frobenius_error(F, fl.KFACCorrected(b), block=1) <= e_kfac)
    True
    """

    method = "KFAC-corrected"

    def _conv_spec(self):
        return 1, True

    def __init__(self, batch: FactorBatch, solver: str = "exact", *, warm_start=None,
                 tol: float = 1e-6, maxiter: int = 1000, seed: int = 0,
                 rank_rtol: float | None = None, products: str | None = None):
        super().__init__(batch, solver=solver, warm_start=warm_start, tol=tol,
                         maxiter=maxiter, seed=seed, rank_rtol=rank_rtol, products=products)

    def _exact(self, a, g):
        AK, GK = kfac_factors(a, g)
        gram = self._gram(a, g)
        s, w, d = gram.top(1, gram.kfac_residual_core())
        rep = ConvergenceReport("gram", rank=int(s[0] > 0), breakdown=bool(s[0] <= 0),
                                      sigma=(float(s[0]),))
        return [(AK, GK), gram.term(float(s[0]), w[:, 0], d[:, 0])], rep

    def _paper(self, a, g, warm, rng):
        xp = array_namespace(a, g)
        AK, GK = kfac_factors(a, g)
        scale = float(xp.linalg.vector_norm(AK)) * float(xp.linalg.vector_norm(GK))
        sp = self._space(a, g, kfac_residual=True)
        v0 = sp.right(warm[1][1]) if warm is not None and len(warm) > 1 else None
        s, u, v, rep = power_svd(
            sp, v0, tol=self.tol, maxiter=self.maxiter, rng=rng,
            zero_tol=self._zero_tol(scale),
            name=self._name("power SVD of the KFAC residual"),
        )
        rep.sigma = (float(s),)
        return [(AK, GK), sp.term(s, u, v)], rep


class Deflation(_KPSVDFamily):
    """Rank-2 approximation, the terms found one after the other (docs/papers.md methods
    table, "Deflation"): the KPSVD term ``σ₁ u₁ v₁ᵀ``, then the leading term of
    ``R(F_l) − σ₁u₁v₁ᵀ``.

    ``solver="exact"``: both leading triplets from the Gram problem, the second of the
    deflated core ``I/m − w₁d₁ᵀ/σ₁`` — the truncated rank-2 KPSVD (a theorem).
    ``solver="paper"``: two power SVDs (the second on the deflated operator), each
    warm-started from the previous operator's factor when given. The second term is zero when
    ``R(F_l)`` has rank one (e.g. ``d_g = 1``).

    Parameters are those of :class:`KPSVD` (without ``rank``).

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> D, K2 = fl.Deflation(b), fl.KPSVD(b, rank=2)      # exact solver: the same matrix
    >>> [len(blk.terms) for blk in D.blocks]
    [2, 2]
    >>> bool(np.allclose(D.to_dense(), K2.to_dense()))
    True
    """

    method = "Deflation"

    def __init__(self, batch: FactorBatch, solver: str = "exact", *, warm_start=None,
                 tol: float = 1e-6, maxiter: int = 1000, seed: int = 0,
                 rank_rtol: float | None = None, products: str | None = None):
        super().__init__(batch, solver=solver, warm_start=warm_start, tol=tol,
                         maxiter=maxiter, seed=seed, rank_rtol=rank_rtol, products=products)

    def _exact(self, a, g):
        # the leading triplet of the deflated R(F_l) − σ₁u₁v₁ᵀ is R(F_l)'s second one, so
        # both terms come from one solve of the Gram problem (one Golub–Kahan run, not
        # two; RearrangedGram.core([...]) is the explicit deflation, tested to agree)
        gram = self._gram(a, g)
        s, w, d = gram.top(2)
        sig = (float(s[0]), float(s[1]))
        rank = int(sig[0] > 0) + int(sig[1] > 0)
        rep = ConvergenceReport("gram", rank=rank, breakdown=rank < 2, sigma=sig)
        return [gram.term(sig[0], w[:, 0], d[:, 0]),
                gram.term(sig[1], w[:, 1], d[:, 1])], rep

    def _paper(self, a, g, warm, rng):
        sp = self._space(a, g)
        v0 = sp.right(warm[0][1]) if warm is not None else sp.right_kfac()
        s1, u1, v1, r1 = power_svd(sp, v0, tol=self.tol, maxiter=self.maxiter,
                                         rng=rng, name=self._name("power SVD of term 1"))
        v0 = sp.right(warm[1][1]) if warm is not None and len(warm) > 1 else None
        if s1 > 0:
            s2, u2, v2, r2 = power_svd(
                deflate(sp, [(s1, u1, v1)]), v0, tol=self.tol, maxiter=self.maxiter,
                rng=rng, zero_tol=self._zero_tol(s1),
                name=self._name("power SVD of term 2 (deflated)"),
            )
        else:
            s2, u2, v2, r2 = 0.0, u1, v1, ConvergenceReport("power", breakdown=True)
        rank = int(s1 > 0) + int(s2 > 0)
        rep = ConvergenceReport.combine("power", [r1, r2], (s1, s2), rank)
        rep.breakdown = rep.breakdown or rank < 2
        return [sp.term(s1, u1, v1), sp.term(s2, u2, v2)], rep


class Lanczos(_KPSVDFamily):
    """Rank-2 approximation with both terms at once by Golub–Kahan (Lanczos)
    bidiagonalisation of ``R(F_l)`` (docs/papers.md methods table, "Lanczos").

    Parameters
    ----------
    batch : FactorBatch
    steps : int
        Bidiagonalisation steps per (re)start of the paper solver (2 in the papers'
        code; at least 2). Steps beyond the rank of ``R(F_l)`` are clipped: a breakdown
        is an exact invariant subspace, not an error. Ignored by ``solver="exact"``,
        which grows the Krylov space of the Gram problem until the two leading Ritz
        triplets have residual ≤ 1e-12·σ₁ (or it is exhausted), and is the rank-2
        optimum whatever ``steps``.
    solver : {"exact", "paper"}
        ``"paper"``: ``steps``-step bidiagonalisation of the matrix-free ``R(F_l)``,
        SVD of the small bidiagonal, two triplets kept, restarts from ``v₁ + v₂`` while
        the residual is above ``tol`` (at most ``max_restarts``).
    warm_start : BlockDiagonalOperator, optional
        Paper solver: start from ``v₁ + v₂`` of the previous operator's factors.
    tol, max_restarts : float, int
    seed : int
    rank_rtol : float, optional
    products : {"matrix-free", "gram"}, optional
        See :class:`KPSVD`. The default here is ``"matrix-free"``, the papers' own
        setting: the restarted two-step recurrence amplifies rounding errors in the
        null space of ``R(F_l)`` (the bottom of its spectrum, where the second Ritz
        pair drifts), which the Gram coordinates do not have; so the two
        representations agree in exact arithmetic but not in floating point over
        many restarts. ``"gram"`` is ``O(N²)`` per product instead of
        ``O(N(d_a² + K d_g²))``: use it for speed on large blocks.

    Examples
    --------
    >>> import numpy as np, fimlab as fl
    >>> net = fl.MLP([4, 5, 3], activation="tanh", likelihood="categorical", seed=0)
    >>> b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(20, 4)))
    >>> F = fl.FisherOperator(b)
    >>> e_lanczos = fl.relative_frobenius_error(F, fl.Lanczos(b, steps=2), block=0)
    >>> e_rank2 = fl.relative_frobenius_error(F, fl.KPSVD(b, rank=2), block=0)
    >>> bool(abs(e_lanczos - e_rank2) < 1e-6)          # exact solver: the rank-2 optimum
    True
    """

    method = "Lanczos"
    default_products = "matrix-free"

    def __init__(self, batch: FactorBatch, steps: int = 2, solver: str = "exact", *,
                 warm_start=None, tol: float = 1e-6, max_restarts: int = 100,
                 seed: int = 0, rank_rtol: float | None = None, products: str | None = None):
        self.steps = _check_int("steps", steps, 2)
        super().__init__(batch, solver=solver, warm_start=warm_start, tol=tol,
                         max_restarts=max_restarts, seed=seed, rank_rtol=rank_rtol,
                         products=products)

    def _exact(self, a, g):
        gram = self._gram(a, g)
        s, w, d, rep = gram.lanczos(2, rng=np.random.default_rng(self.seed))
        rep.breakdown = rep.breakdown or rep.rank < 2
        return gram.terms(s, w, d), rep

    def _paper(self, a, g, warm, rng):
        xp = array_namespace(a, g)
        AK, GK = kfac_factors(a, g)
        scale = float(xp.linalg.vector_norm(AK)) * float(xp.linalg.vector_norm(GK))
        sp = self._space(a, g)
        if warm is not None:  # v₁ + v₂ of the previous factors
            starts = [v for v in (sp.right(G) for _, G in warm[:2]) if v is not None]
            v0 = starts[0] + starts[1] if len(starts) == 2 else (starts[0] if starts else None)
        else:  # the KFAC direction plus a random one (v₂ is unknown)
            v0 = 0.5 * sp.random(rng)
            vk = sp.right_kfac()
            v0 = v0 if vk is None else v0 + vk
        if v0 is not None and float(xp.linalg.vector_norm(v0)) == 0.0:
            v0 = None  # cancelled: a random start
        s, U, V, rep = lanczos_svd(
            sp, k=2, steps=self.steps, v0=v0, tol=self.tol, max_restarts=self.max_restarts,
            rng=rng, zero_tol=(self.rank_rtol or 1e-8) * scale,
            name=self._name(f"Lanczos ({self.steps} steps, restarts from v1+v2)"),
        )
        rep.breakdown = rep.breakdown or rep.rank < 2
        return [sp.term(float(s[j]), U[:, j], V[:, j]) for j in range(2)], rep
