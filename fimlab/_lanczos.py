"""Symmetric Lanczos (private; kept for code that imported it here).

The implementation lives in :mod:`fimlab.kron.krylov`, the one Krylov module of fimlab.
"""

from __future__ import annotations

from .kron.krylov import LanczosResult, lanczos

__all__ = ["LanczosResult", "lanczos"]
