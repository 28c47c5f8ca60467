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


# -- the comparators (eigenvalue-corrected, diagonal, block-exact, low-rank) ------------
from .blockexact import BlockExact  # noqa: E402
from .eigencorrected import EKFAC, DiagonalFisher, EigenCorrected  # noqa: E402
from .lowrank import LowRank, LowRankPlusDiagonal  # noqa: E402

__all__ += ["EigenCorrected", "EKFAC", "DiagonalFisher", "BlockExact", "LowRank",
            "LowRankPlusDiagonal", "FACTORLESS", "STUDY_DEFAULT", "CLOSED_FORM"]

def _unwrap_warm(kw: dict) -> dict:
    """A warm start given as the previous eigenvalue-corrected operator: its KPSVD input."""
    if kw.get("warm_start") is not None:
        kw = {**kw, "warm_start": getattr(kw["warm_start"], "base", kw["warm_start"])}
    return kw


APPROXIMATIONS.update({
    "EKFAC": lambda batch, solver="exact", **kw: EKFAC(batch),
    "EigenCorrected(KPSVD)": lambda batch, solver="exact", **kw: EigenCorrected(
        KPSVD(batch, rank=1, solver=solver, **_unwrap_warm(kw))),
    "Diagonal": lambda batch, solver="exact", **kw: DiagonalFisher(batch),
    "BlockExact": lambda batch, solver="exact", **kw: BlockExact(batch),
    "LowRank": lambda batch, solver="exact", k=20, **kw: LowRank(batch, k=k, clip=True),
    "LowRank+Diagonal": lambda batch, solver="exact", k=20, **kw: LowRankPlusDiagonal(
        batch, k=k, clip=True),
})

#: methods with no Kronecker factors to average (NGD's ema="auto" uses "none" for them)
FACTORLESS = ("Diagonal", "BlockExact", "LowRank", "LowRank+Diagonal")
#: closed forms: the ``solver`` option makes no difference (``fimlab study`` runs one)
CLOSED_FORM = ("KFAC", "EKFAC") + FACTORLESS
#: ``fimlab study``'s default set: the KPSVD family with KFAC, and the two eigenvalue
#: corrections (the other comparators on request, ``--methods``)
STUDY_DEFAULT = ["KFAC", "KPSVD", "KFAC-corrected", "Deflation", "Lanczos", "EKFAC",
                 "EigenCorrected(KPSVD)"]


def build_approximation(name: str, batch, solver: str = "exact", **options):
    """Build the approximation ``name`` (a key of :data:`APPROXIMATIONS`) on ``batch``."""
    from .._validation import check_choice

    check_choice(name, APPROXIMATIONS, "approximation")
    return APPROXIMATIONS[name](batch, solver=solver, **options)
