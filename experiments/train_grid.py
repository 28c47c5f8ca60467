"""Grid search of the learning rate (and damping) of each method on a benchmark.

The papers chose a constant learning rate and damping per method by grid search; this
script does the same on the scaled-down benchmarks and prints the best pair per method
(smallest final training loss; diverged runs count as +inf).

    python experiments/train_grid.py --benchmark digits --epochs 30
    python experiments/train_grid.py --benchmark curves-small --epochs 10 --methods KFAC sgd

Writes ``<out>/grid.csv`` (one row per run). Uses :func:`fimlab.train.run_training`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
from pathlib import Path

GRIDS = {
    "sgd": {"lr": [3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1]},
    "adam": {"lr": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]},
    "ngd": {"lr": [0.1, 0.3, 1.0, 3.0], "damping": [1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]},
}


def main(argv=None) -> int:
    from fimlab.train import run_training

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="digits")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--methods", nargs="+", default=["KFAC", "sgd", "adam"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lrs", nargs="+", type=float, help="learning rates (replaces the grid's)")
    p.add_argument("--dampings", nargs="+", type=float, help="damping values (natural "
                   "gradient; replaces the grid's)")
    p.add_argument("--out", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra run option (VALUE: a number or a string)")
    a = p.parse_args(argv)
    extra = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            extra[k] = float(v) if "." in v or "e" in v else int(v)
        except ValueError:
            extra[k] = v
    out = Path(a.out or f"fimlab-out/grid-{a.benchmark}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in a.methods:
        fam = m.lower() if m.lower() in ("sgd", "adam") else "ngd"
        grid = dict(GRIDS[fam])
        if a.lrs:
            grid["lr"] = a.lrs
        if a.dampings and "damping" in grid:
            grid["damping"] = a.dampings
        keys = list(grid)
        best = None
        for vals in itertools.product(*(grid[k] for k in keys)):
            cfg = {"benchmark": a.benchmark, "method": m, "epochs": a.epochs,
                   "seed": a.seed, **dict(zip(keys, vals)), **extra}
            r = run_training(cfg)
            loss = r["final_train_loss"] if r["status"] == "ok" else math.inf
            row = {"method": m, **dict(zip(keys, vals)), "status": r["status"],
                   "final_train_loss": loss, "final_val_loss": r["final_val_loss"],
                   "seconds_per_epoch": r["seconds_per_epoch"]}
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if best is None or loss < best["final_train_loss"]:
                best = row
        print(f"BEST {m}: " + " ".join(f"{k}={v}" for k, v in best.items()), flush=True)
    with open(out / "grid.csv", "w", newline="") as fh:
        fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                        if k in rows[0] else 99)
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
