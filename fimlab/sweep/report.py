"""``fimlab sweep --report``: the tables and heat-maps of a results file, written to disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .plots import plot_heatmaps
from .results import open_results, read_results
from .spec import STATUS_OK, SweepSpec
from .tables import best_settings, group_keys


def report(
    results: str | os.PathLike,
    figures: str | os.PathLike | None = None,
    metric: str = "final_train_loss",
    axes: tuple[str, str] = ("lr", "damping"),
    by: Sequence[str] | None = None,
    spec: SweepSpec | None = None,
) -> tuple[str, list[Path]]:
    """Text table of the best setting per method, and the heat-maps (``--report``).

    Returns the text and the PNG paths (figures default to the results file's folder).
    """
    path = Path(results)
    if spec is not None and path.exists():
        open_results(path, spec, dry_run=True)  # refuse another config's table
    df = read_results(path)
    n_bad = int((df["status"] != STATUS_OK).sum())
    best = best_settings(df, metric, by)
    lines = [f"{path}: {len(df)} runs ({n_bad} failed or diverged); best setting by "
             f"{metric} (averaged over seeds):"]
    keys = group_keys(df, by)
    shown = [c for c in best.columns
             if c in keys or c in (metric, "runs") or df[c].nunique(dropna=False) > 1]
    lines.append(best[shown].to_string(index=False, na_rep="-") if len(best)
                 else "  (no successful run)")
    figdir = Path(figures) if figures is not None else path.parent
    pngs = plot_heatmaps(df, figdir, metric, x=axes[0], y=axes[1], by=by,
                         prefix=f"{path.stem}_heatmap")
    lines += ["heat-maps:"] + [f"  {p}" for p in pngs]
    return "\n".join(lines), pngs


