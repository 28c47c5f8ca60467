"""Markdown table of a ``fimlab train`` output folder: per method, mean ± std over the
seeds that finished (diverged runs are counted apart) of the training loss at a few epochs
and at the end, the final validation loss, and the seconds per epoch.

    python experiments/train_table.py fimlab-out/train-digits --epochs 10 30
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np


def _runs(folder: Path):
    for res in sorted(folder.glob("*/seed*/result.json")):
        r = json.loads(res.read_text())
        with open(res.parent / "epochs.csv") as fh:
            r["epochs_rows"] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        yield r


def table(folder, at_epochs=(10,)) -> str:
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    order = list(dict.fromkeys(r["label"] for r in summary["runs"]))
    by: dict = {}
    for r in _runs(folder):
        by.setdefault(r["label"], []).append(r)

    def ms(vals, fmt="{:.2f}"):
        v = np.asarray([x for x in vals if np.isfinite(x)], dtype=float)
        if v.size == 0:
            return "—"
        return fmt.format(v.mean()) + (f" ± {fmt.format(v.std(ddof=1))}" if v.size > 1 else "")

    head = (["method", "seeds"] + [f"train loss @ epoch {e}" for e in at_epochs]
            + ["final train loss", "final val loss", "s / epoch", "status"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab in order:
        allr = by.get(lab, [])
        rs = [r for r in allr if r["status"] != "diverged"]  # means over finished runs
        if not allr:
            continue
        nd = len(allr) - len(rs)
        cells = [lab, str(len(allr))]
        for e in at_epochs:
            cells.append(ms([next((row["train_loss"] for row in r["epochs_rows"]
                                   if abs(row["epoch"] - e) < 1e-9), np.nan) for r in rs]))
        cells += [ms([r["final_train_loss"] for r in rs]), ms([r["final_val_loss"] for r in rs]),
                  ms([r["seconds_per_epoch"] for r in rs], "{:.3g}"),
                  "ok" if nd == 0 else f"{nd} diverged (means over the other {len(rs)})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--epochs", nargs="+", type=int, default=[10])
    a = p.parse_args(argv)
    print(table(a.folder, a.epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
