"""The papers' training figure: loss against epochs and against time, one colour per method.

Top row: training loss (the whole training set, evaluated at every epoch end); bottom
row: validation loss. Left: against epochs; right: against training wall time. Log
scale on the loss. With several seeds, the line is the mean over the seeds that finished
and the band spans their minimum and maximum; a diverged run is drawn on its own, dashed,
up to its last evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plotting import method_color, plt

__all__ = ["plot_training"]

_STYLES = ["-", "--", "-.", ":"]


def _color(label: str, method: str, used: dict) -> str:
    base = label if label in used else label
    if base not in used:
        c = method_color(label)
        if c in used.values():
            c = method_color(method) if method_color(method) not in used.values() else None
        if c is None:
            cmap = plt.get_cmap("tab20")
            c = cmap(len(used) % 20)
        used[base] = c
    return used[base]


def plot_training(results: list[dict], path, title: str | None = None) -> Path:
    """Draw the comparison of ``results`` (dicts from :func:`fimlab.train.run_training`)
    into ``path`` (PNG) and return the path."""
    path = Path(path)
    groups: dict = {}
    for r in results:
        if r.get("epoch_history"):
            groups.setdefault(r["label"], []).append(r)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    used: dict = {}
    for label, rs in groups.items():
        from .train_config import display_name

        color = _color(label, display_name(rs[0]["method"]), used)
        ok = [r for r in rs if r["status"] != "diverged"]
        bad = [r for r in rs if r["status"] == "diverged"]
        note = (f" ({len(bad)}/{len(rs)} diverged)" if bad else "") + (
            f" [{len(rs)} seeds]" if len(rs) > 1 else "")
        first = True
        if ok:
            n = min(len(r["epoch_history"]) for r in ok)
            ep = np.array([e["epoch"] for e in ok[0]["epoch_history"][:n]])
            tm = np.mean([[e["wall_time"] for e in r["epoch_history"][:n]] for r in ok], axis=0)
            for row, key in enumerate(("train_loss", "val_loss")):
                Y = np.array([[e[key] for e in r["epoch_history"][:n]] for r in ok], dtype=float)
                if not np.isfinite(Y).any():
                    continue
                for col, x in enumerate((ep, tm)):
                    ax = axes[row, col]
                    ax.plot(x, np.nanmean(Y, axis=0), color=color, lw=1.6,
                            label=label + note if (first and row == 0 and col == 0) else None)
                    if len(ok) > 1:
                        ax.fill_between(x, np.nanmin(Y, axis=0), np.nanmax(Y, axis=0),
                                        color=color, alpha=0.15, lw=0)
            first = False
        for r in bad:  # each diverged run on its own, dashed, up to where it stopped
            eh = r["epoch_history"]
            for row, key in enumerate(("train_loss", "val_loss")):
                for col, xk in enumerate(("epoch", "wall_time")):
                    axes[row, col].plot([e[xk] for e in eh], [e[key] for e in eh], color=color,
                                        lw=1.0, ls="--", marker="x", ms=4,
                                        label=label + note if (first and row == 0 and col == 0)
                                        else None)
            first = False
    for row, what in enumerate(("training loss", "validation loss")):
        for col, xl in enumerate(("epoch", "training time (s)")):
            ax = axes[row, col]
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.set_ylabel(what)
    if groups:
        axes[0, 0].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
