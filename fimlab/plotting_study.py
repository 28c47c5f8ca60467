"""Figures of ``fimlab study``: ``study.png`` (E1 and E2 per method, mean over blocks) and
``study_blocks.png`` (per block, at most four blocks a row), and :func:`replot_study` to
redraw them from a finished study's files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = ["plot_study", "replot_study"]


def plot_study(result, out: Path) -> None:
    """Write ``study.png`` (E1 top, E2 bottom; mean over blocks) and ``study_blocks.png``
    into ``out``; ``result`` is a :class:`fimlab.study.StudyResult` (its ``rows`` and
    ``config`` are used)."""
    from .plotting import method_color, plt, solver_style

    rows = result.rows
    pairs = list(dict.fromkeys((r["method"], r["solver"]) for r in rows))
    blocks = sorted({r["block"] for r in rows if r["block"] != "all"})
    c = result.config

    def series(m, s, key, block=None):
        its = sorted({r["iteration"] for r in rows})
        ys = []
        for it in its:
            vals = [r[key] for r in rows if r["method"] == m and r["solver"] == s
                    and r["iteration"] == it and r["block"] != "all"
                    and (block is None or r["block"] == block)]
            vals = [v for v in vals if v == v]
            ys.append(np.mean(vals) if vals else np.nan)
        if c.get("smooth") and len(its) > 1 and not np.isnan(ys).any():
            from scipy.ndimage import gaussian_filter1d

            step = (its[-1] - its[0]) / (len(its) - 1)  # σ in iterations -> in points
            ys = list(gaussian_filter1d(np.asarray(ys, float), c["smooth"] / step,
                                        mode="nearest"))
        return its, ys

    fig, axes = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    for m, s in pairs:
        for ax, key in zip(axes, ("e1", "e2")):
            its, ys = series(m, s, key)
            ax.plot(its, ys, color=method_color(m), ls=solver_style(s), marker="o", ms=3,
                    label=f"{m} ({s})")
    axes[0].set_ylabel("E1: ‖F − F̃‖_F / ‖F‖_F\n(mean over blocks)")
    axes[1].set_ylabel("E2: ‖σ(F) − σ(F̃)‖ / ‖σ(F)‖\n(mean over blocks)")
    axes[1].set_xlabel("Adam iteration")
    axes[0].set_title(f"{c['dataset']} {'-'.join(map(str, c['sizes']))}, Fisher={c['fisher']}")
    axes[0].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=120)
    plt.close(fig)

    # per block: E1 above E2, at most four blocks a row (readable at page width), one legend
    per_row = min(4, max(len(blocks), 1))
    n_rows = -(-len(blocks) // per_row)
    # one legend below, as many columns as fit the width (a label is about 2.1 in wide)
    n_labels = len(pairs)
    ncol = max(1, min(4, n_labels, int(3.4 * per_row // 2.1)))
    legend_h = 0.2 * -(-n_labels // ncol) + 0.3  # inches
    height = 5.2 * n_rows + legend_h
    fig, axes = plt.subplots(2 * n_rows, per_row, figsize=(3.4 * per_row, height),
                             squeeze=False, sharex=True)
    for j, b in enumerate(blocks):
        r0, col = 2 * (j // per_row), j % per_row
        for m, s in pairs:
            for i, key in enumerate(("e1", "e2")):
                its, ys = series(m, s, key, block=b)
                axes[r0 + i, col].plot(its, ys, color=method_color(m), ls=solver_style(s),
                                       marker="o", ms=2, label=f"{m} ({s})")
        axes[r0, col].set_title(f"block {b}")
        axes[r0, col].set_ylabel("E1" if col == 0 else "")
        axes[r0 + 1, col].set_ylabel("E2" if col == 0 else "")
        axes[r0 + 1, col].set_xlabel("Adam iteration")
        for ax in axes[r0:r0 + 2, col]:
            ax.grid(alpha=0.3)
    for j in range(len(blocks), n_rows * per_row):  # empty slots of the last row
        for i in range(2):
            axes[2 * (n_rows - 1) + i, j % per_row].set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    fig.savefig(out / "study_blocks.png", dpi=110)
    plt.close(fig)


def replot_study(out_dir, dest=None) -> list[Path]:
    """Redraw ``study.png`` and ``study_blocks.png`` from a finished study's ``study.csv``
    and ``config.json`` (no measurement is repeated) into ``dest`` (default ``out_dir``).

    Examples
    --------
    >>> import tempfile, fimlab.study as st
    >>> from fimlab.plotting_study import replot_study
    >>> d = tempfile.mkdtemp()
    >>> res = st.run_study({"iterations": 2, "every": 1, "n_samples": 60, "batch_size": 30,
    ...                     "methods": ["KFAC"], "solver": "exact", "out": d},
    ...                    progress=False, verbose=False)
    >>> [p.name for p in replot_study(d, tempfile.mkdtemp())]
    ['study.png', 'study_blocks.png']
    """
    import csv
    import json

    from ._errors import DataError

    src = Path(out_dir)
    try:
        config = json.loads((src / "config.json").read_text())
        with (src / "study.csv").open(newline="") as fh:
            raw = list(csv.DictReader(fh))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot redraw the study in {str(src)!r}: {exc} (it needs the "
                        "study.csv and config.json a finished study writes)") from exc
    rows = []
    for r in raw:
        rows.append({**r, "iteration": int(r["iteration"]), "e1": float(r["e1"]),
                     "e2": float(r["e2"]) if r.get("e2") not in (None, "") else float("nan"),
                     "block": r["block"] if r["block"] == "all" else int(r["block"])})
    dest = Path(dest) if dest is not None else src
    dest.mkdir(parents=True, exist_ok=True)
    plot_study(SimpleNamespace(config=config, rows=rows), dest)
    return [dest / "study.png", dest / "study_blocks.png"]
