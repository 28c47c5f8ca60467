"""Heat-maps of a sweep (learning rate x damping, colour = a loss)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .spec import SweepConfigError
from .tables import group_keys, option_columns, setting_table


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def plot_heatmaps(
    df,
    out_dir: str | os.PathLike,
    metric: str = "final_train_loss",
    x: str = "lr",
    y: str = "damping",
    by: Sequence[str] | None = None,
    average_over: Sequence[str] = ("seed",),
    prefix: str = "heatmap",
) -> list[Path]:
    """One PNG per group (method, data set): ``x`` by ``y``, colour = ``metric``.

    Each cell is the best (lowest) seed-averaged ``metric`` over the other varied
    options; a cell whose runs all failed or diverged is grey and marked x; the best
    cell is outlined. A group without ``y`` (e.g. Adam has no damping) gets one row.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    table = setting_table(df, metric, average_over)
    if x not in table:
        raise SweepConfigError(
            f"cannot draw heat-maps over {x!r}: the sweep does not vary it (columns: "
            f"{', '.join(option_columns(df))}); choose the axes with --axes X,Y"
        )
    keys = [k for k in group_keys(df, by) if k in table]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = table.groupby(keys, dropna=False, sort=True) if keys else [((), table)]
    paths = []
    for gkey, sub in groups:
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        has_y = y in sub and sub[y].notna().any()
        xs = sorted(sub[x].dropna().unique())
        ys = sorted(sub[y].dropna().unique()) if has_y else [None]
        Z = np.full((len(ys), len(xs)), np.nan)
        tried = np.zeros_like(Z, dtype=bool)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                m = sub[x] == xv
                if has_y:
                    m &= sub[y] == yv
                vals = sub.loc[m, metric]
                tried[i, j] = bool(m.any())
                if vals.notna().any():
                    Z[i, j] = vals.min()
        fig, ax = plt.subplots(figsize=(1.3 * len(xs) + 2.2, 0.9 * len(ys) + 1.8))
        finite = Z[np.isfinite(Z)]
        # the colour range stops at 1000 x the best loss, so that one nearly divergent
        # cell does not wash out the differences that matter (the text gives the value)
        lo = finite.min() if finite.size else 0.0
        hi = min(finite.max(), 1e3 * lo) if finite.size else 1.0
        clipped = bool(finite.size and finite.max() > hi)
        norm = (LogNorm(lo, hi) if finite.size and lo > 0 and hi > 10 * lo
                else Normalize(lo, hi if hi > lo else lo + 1.0))
        cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="0.8")
        im = ax.imshow(np.ma.masked_invalid(Z), cmap=cmap, norm=norm, aspect="auto",
                       origin="lower")
        for i in range(len(ys)):
            for j in range(len(xs)):
                txt = (_fmt(Z[i, j]) if np.isfinite(Z[i, j])
                       else ("x" if tried[i, j] else ""))
                dark = np.isfinite(Z[i, j]) and norm(min(Z[i, j], hi)) > 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                        color="white" if dark else ("black" if np.isfinite(Z[i, j])
                                                    else "0.3"))
        if finite.size:
            bi, bj = np.unravel_index(np.nanargmin(Z), Z.shape)
            ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys] if has_y else ["-"])
        ax.set_xlabel(x)
        ax.set_ylabel(y if has_y else "")
        gkey = tuple("none" if _isnan(v) else v for v in gkey)
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, gkey, strict=True)) or "all runs"
        n_seeds = [f"mean of {int(sub['runs'].max())} runs" if sub["runs"].max() > 1
                   else ""]
        notes = ", ".join(n for n in n_seeds + [
            "grey x: failed or diverged" if (tried & ~np.isfinite(Z)).any() else ""] if n)
        ax.set_title(f"{label}\n{metric}" + (f" ({notes})" if notes else ""), fontsize=9)
        if finite.size:
            cb = fig.colorbar(im, ax=ax, label=metric,
                              extend="max" if clipped else "neither")
            if not isinstance(norm, LogNorm):
                cb.formatter = matplotlib.ticker.ScalarFormatter(useOffset=False)
                cb.update_ticks()
        fig.tight_layout()
        stem = "_".join(str(v) for v in gkey) or "all"
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
        p = out_dir / f"{prefix}_{safe}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


