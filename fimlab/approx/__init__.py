"""Approximations of the Fisher: KFAC, the KPSVD family, two-level corrections.

``APPROXIMATIONS`` maps a method name (as used by ``fimlab study`` and ``fimlab train``)
to a builder ``f(batch, solver="exact", **options) -> CurvatureOperator``; each module
registers its methods here.
"""

from .kfac import KFAC, kfac_factors
from .kpsvd import KPSVD, Deflation, KFACCorrected, Lanczos
from .twolevel import (
    COARSE_SPACES,
    CoarseSpace,
    TwoLevel,
    TwoLevelOperator,
    build_coarse_space,
    coarse_matrix,
    krylov_nicolaides_space,
    krylov_residual_space,
    nicolaides_space,
    previous_coarse_matrix,
    residual_space,
    spectral_space,
)

__all__ = ["KFAC", "kfac_factors", "APPROXIMATIONS", "build_approximation",
           "KPSVD", "KFACCorrected", "Deflation", "Lanczos"]
__all__ += [  # two-level corrections (docs/papers.md T1-T4)
    "TwoLevel", "TwoLevelOperator", "CoarseSpace", "COARSE_SPACES", "build_coarse_space",
    "coarse_matrix", "previous_coarse_matrix", "nicolaides_space", "spectral_space",
    "residual_space", "krylov_nicolaides_space", "krylov_residual_space",
]

#: name -> builder(batch, solver="exact", **options); the order is the display order.
APPROXIMATIONS = {
    "KFAC": lambda batch, solver="exact", **kw: KFAC(batch),
    "KPSVD": lambda batch, solver="exact", rank=1, **kw: KPSVD(
        batch, rank=rank, solver=solver, **kw),
    "KFAC-corrected": lambda batch, solver="exact", **kw: KFACCorrected(
        batch, solver=solver, **kw),
    "Deflation": lambda batch, solver="exact", **kw: Deflation(batch, solver=solver, **kw),
    "Lanczos": lambda batch, solver="exact", steps=2, **kw: Lanczos(
        batch, steps=steps, solver=solver, **kw),
}


def build_approximation(name: str, batch, solver: str = "exact", **options):
    """Build the approximation ``name`` (a key of :data:`APPROXIMATIONS`) on ``batch``."""
    from .._validation import check_choice

    check_choice(name, APPROXIMATIONS, "approximation")
    return APPROXIMATIONS[name](batch, solver=solver, **options)
