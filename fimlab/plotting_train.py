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

from .plotting import plt

__all__ = ["plot_training", "training_styles"]

_STYLES = ["-", "--", "-.", ":"]
#: Colours handed out, in order, to the labels whose own colour is taken (tab10, then the
#: light and dark halves of tab20b/tab20c that tab10 lacks).
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
            "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"]


def training_styles(labels: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Colour and line style of each training curve, distinct across the labels.

    ``labels`` holds ``(label, method)`` pairs in drawing order (``method`` the displayed
    method name, ``"Adam"``, ``"KFAC"``, ...). A label that is a name of
    :data:`fimlab.plotting.METHOD_COLORS` keeps its project colour; any other label takes
    its method's project colour when no label uses it, else the first palette colour no
    label uses; past the palette, colours repeat with the next line style. Returns
    ``label -> (hex colour, line style)``, injective over distinct labels.
    """
    from matplotlib.colors import to_hex

    from .plotting import METHOD_COLORS

    order = list(dict.fromkeys(label for label, _ in labels))
    method = {}
    for label, m in labels:
        method.setdefault(label, m)
    out: dict[str, tuple[str, str]] = {}
    for label in order:  # first the labels that have a colour of their own
        if label in METHOD_COLORS:
            c = (to_hex(METHOD_COLORS[label]), "-")
            if c not in out.values():
                out[label] = c
    for label in order:
        if label in out:
            continue
        taken = set(out.values())
        choice = None
        if method[label] in METHOD_COLORS:
            c = (to_hex(METHOD_COLORS[method[label]]), "-")
            choice = c if c not in taken else None
        if choice is None:
            choice = next(((c, ls) for ls in _STYLES for c in _PALETTE
                           if (c, ls) not in taken), None)
        if choice is None:  # more labels than palette x styles: dotted, ever sparser
            n = len(taken)
            choice = (_PALETTE[n % len(_PALETTE)], (0, (1, 1 + n // len(_PALETTE))))
        out[label] = choice
    return {label: out[label] for label in order}


def plot_training(results: list[dict], path, title: str | None = None) -> Path:
    """Draw the comparison of ``results`` (dicts from :func:`fimlab.train.run_training`)
    into ``path`` (PNG) and return the path."""
    path = Path(path)
    groups: dict = {}
    for r in results:
        if r.get("epoch_history"):
            groups.setdefault(r["label"], []).append(r)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    from .train_config import display_name

    styles = training_styles([(label, display_name(rs[0]["method"]))
                              for label, rs in groups.items()])
    for label, rs in groups.items():
        color, ls = styles[label]
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
                    ax.plot(x, np.nanmean(Y, axis=0), color=color, ls=ls, lw=1.6,
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
