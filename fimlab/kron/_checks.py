"""Argument checks shared by the modules of :mod:`fimlab.kron` (private helper module)."""

from __future__ import annotations

import math

from .._errors import ShapeError
from ..backend import array_namespace

__all__ = ["check_layer", "check_solver_params"]


def check_layer(a, g):
    """Validate one layer of a factor batch; return ``(xp, m, K, d_a, d_g)``."""
    xp = array_namespace(a, g)
    if a.ndim != 2:
        raise ShapeError(f"a must have shape (m, d_a), got {tuple(a.shape)}")
    if g.ndim != 3:
        raise ShapeError(
            f"g must have shape (m, K, d_g), got {tuple(g.shape)}; for one vector per "
            "sample use g[:, None, :]"
        )
    if a.shape[0] != g.shape[0]:
        raise ShapeError(
            f"a has {a.shape[0]} samples but g has {g.shape[0]}; they must hold the same "
            "samples"
        )
    if a.shape[0] == 0 or g.shape[1] == 0:
        raise ShapeError("a factor-batch layer needs at least one sample and one vector")
    return xp, int(a.shape[0]), int(g.shape[1]), int(a.shape[1]), int(g.shape[2])


def check_solver_params(*, tol=None, maxiter=None, steps=None, max_restarts=None):
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0
                                and math.isfinite(tol)):
        raise ShapeError(f"tol must be a positive finite number, got {tol!r}")
    for name, val, lo in (("maxiter", maxiter, 1), ("steps", steps, 1),
                          ("max_restarts", max_restarts, 0)):
        if val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ShapeError(f"{name} must be an integer >= {lo}, got {val!r}")
