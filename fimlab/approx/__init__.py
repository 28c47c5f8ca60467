"""Approximations of the Fisher: KFAC, the KPSVD family, two-level corrections."""

from .kfac import KFAC, kfac_factors

__all__ = ["KFAC", "kfac_factors"]
