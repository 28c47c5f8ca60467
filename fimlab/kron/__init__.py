"""Kronecker algebra as plain functions (backend-agnostic, matrix-free where it matters).

Conventions: ``vec`` is column-major, so for ``V`` of shape ``(d_g, d_a)``
``(A ⊗ G) vec(V) = vec(G V Aᵀ)``. A stack of ``k`` such vectors is an array ``X`` of
shape ``(d_a·d_g, k)``; reshaped (row-major) to ``(d_a, d_g, k)`` its entry
``[j, i, c]`` is ``V_c[i, j]`` — the "grid" layout used below, which needs no transpose.

Layout
------
One idea per module; every name below is importable from ``fimlab.kron``.

- :mod:`fimlab.kron.algebra` — vec/Kronecker algebra, damped inverses, PCG;
- :mod:`fimlab.kron.rearrange` — the rearrangement ``R`` and the KPSVD of a dense matrix;
- :mod:`fimlab.kron.rearranged` — matrix-free products with ``R(F_i)``;
- :mod:`fimlab.kron.krylov` — the Krylov solvers (power SVD, Golub–Kahan, restarted
  Lanczos for singular triplets and for symmetric eigenvalues); every Lanczos user of
  fimlab calls this module;
- :mod:`fimlab.kron.pairs` — product pairs, deflation, the solvers' convergence report;
- :mod:`fimlab.kron.gram` — the Gram route (:class:`RearrangedGram`).

Contents
--------
- :func:`vec`, :func:`unvec`, :func:`kron` (dense, for tests and teaching);
- :func:`kron_matmat` — ``(A ⊗ G) X`` by two GEMMs;
- :func:`kron_sum_inner` — ``⟨Σ A_r⊗G_r, Σ B_s⊗C_s⟩_F`` from factor inner products;
- :func:`kron_sum_inverse` / :func:`kron_sum_solve` — the damped inverses
  (K2, K3, K4 for one term; I1 for two; preconditioned CG for any number);
- :func:`rearrange`, :func:`rearrange_inverse`, :func:`kpsvd`, :func:`nearest_kronecker`,
  :func:`psd_sign` — the rearrangement and the Kronecker product SVD of a dense matrix
  (R1, R2, R4), for tests and teaching;
- :func:`rearranged_matvec`, :func:`rearranged_rmatvec`, :class:`RearrangedFisher` — the
  products with ``R(F_i)`` of a factor-batch layer, matrix-free (R3);
- :class:`RearrangedGram` — the exact route to the leading singular triplets of
  ``R(F_i)`` through an ``m × m`` problem built from Gram matrices (Golub–Kahan in Gram
  coefficients, or the dense eigenproblem; :func:`gram_of_rows`, :func:`weighted_gram`
  build the factors by symmetric rank-k updates);
- :func:`power_svd`, :func:`golub_kahan`, :func:`lanczos_svd`, :func:`deflate` — the
  papers' iterative solvers on any product pair, with convergence reports.
"""

from __future__ import annotations

from ..backend import kron, unvec, vec

# The private names imported below are kept importable from ``fimlab.kron`` for code
# written against the single module it used to be; fimlab's own modules import what they
# need from the submodules.
from ._checks import check_layer as _check_layer  # noqa: F401  (compat)
from ._checks import check_solver_params as _check_solver_params  # noqa: F401
from .algebra import (  # noqa: F401
    DAMPING_RULES,
    _inv_spd,
    _simultaneous_diagonalisation,
    kron_matmat,
    kron_sum_inner,
    kron_sum_inverse,
    kron_sum_solve,
    pcg,
)
from .gram import (
    GramCoordinates,
    RearrangedGram,
    _psd_factor,  # noqa: F401
    gram_of_rows,
    weighted_gram,
)
from .krylov import (
    LanczosResult,
    _bidiag_top_svd,  # noqa: F401
    golub_kahan,
    lanczos,
    lanczos_svd,
    power_svd,
)
from .pairs import ConvergenceReport, DeflatedProductPair, as_product_pair, deflate
from .rearrange import (
    KronSVD,
    kpsvd,
    nearest_kronecker,
    psd_sign,
    rearrange,
    rearrange_inverse,
)
from .rearranged import RearrangedFisher, rearranged_matvec, rearranged_rmatvec

__all__ = [
    "vec",
    "unvec",
    "kron",
    "kron_matmat",
    "kron_sum_inner",
    "kron_sum_inverse",
    "kron_sum_solve",
    "DAMPING_RULES",
    # rearrangement and KPSVD of dense matrices (R1, R2, R4)
    "rearrange",
    "rearrange_inverse",
    "kpsvd",
    "nearest_kronecker",
    "psd_sign",
    "KronSVD",
    # matrix-free products with R(F_i) (R3) and the exact Gram route
    "rearranged_matvec",
    "rearranged_rmatvec",
    "RearrangedFisher",
    "RearrangedGram",
    "GramCoordinates",
    "weighted_gram",
    "gram_of_rows",
    # iterative SVD on product pairs
    "as_product_pair",
    "deflate",
    "DeflatedProductPair",
    "power_svd",
    "golub_kahan",
    "lanczos_svd",
    "ConvergenceReport",
    # symmetric Lanczos (eigenvalues of self-adjoint operators)
    "lanczos",
    "LanczosResult",
    "pcg",
]

