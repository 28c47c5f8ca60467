"""Plotting helpers shared by the studies: one colour per method, one line style per solver.

Matplotlib is used with the non-interactive Agg backend when no display is set, so every
figure can be written to PNG on a headless machine.
"""

from __future__ import annotations

import os

import matplotlib

if not os.environ.get("DISPLAY") and os.environ.get("MPLBACKEND") is None:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["METHOD_COLORS", "SOLVER_STYLES", "method_color", "solver_style", "plt"]

#: Fixed colours, so that a method looks the same in every figure of the project.
METHOD_COLORS = {
    "KFAC": "#1f77b4",
    "KPSVD": "#ff7f0e",
    "KFAC-corrected": "#2ca02c",
    "Deflation": "#d62728",
    "Lanczos": "#9467bd",
    "KPSVD-r": "#8c564b",
    "exact": "#000000",
    "block-exact": "#7f7f7f",
    "SGD": "#bcbd22",
    "Adam": "#17becf",
    "two-level": "#e377c2",
    # the comparators (issue 17): an eigenvalue correction is a darker shade of its input
    "EKFAC": "#0b3d66",
    "EigenCorrected(KPSVD)": "#a64d00",
    "Diagonal": "#aec7e8",
    "BlockExact": "#7f7f7f",
    "LowRank": "#98df8a",
    "LowRank+Diagonal": "#c49c94",
}
_FALLBACK = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78"]

SOLVER_STYLES = {"exact": "-", "paper": "--"}


def method_color(name: str) -> str:
    """The colour of ``name`` (a stable fallback for names not in :data:`METHOD_COLORS`)."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    base = name.split("[")[0].split("(")[0].strip()
    if base in METHOD_COLORS:
        return METHOD_COLORS[base]
    return _FALLBACK[sum(map(ord, name)) % len(_FALLBACK)]


def solver_style(solver: str) -> str:
    """Line style of a solver (``"exact"`` solid, ``"paper"`` dashed)."""
    return SOLVER_STYLES.get(solver, ":")
