"""Seconds per epoch of each method, measured back to back in one session.

Runs every method for a few epochs on a benchmark (one BLAS thread) and prints the
training seconds per epoch (evaluations excluded), the median over ``--repeats`` runs, and
the ratio to KFAC. The tuned learning rate and damping of the benchmark are used.

    python experiments/train_timing.py --benchmark curves-small --epochs 2
"""

from __future__ import annotations

import argparse
import statistics
import sys


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    from fimlab.train import run_training

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="digits")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=[
        "KFAC", "KPSVD", "KFAC-corrected", "Deflation", "Lanczos", "sgd", "adam"])
    a = p.parse_args(argv)
    times: dict = {m: [] for m in a.methods}
    with threadpool_limits(limits=1):
        for _ in range(a.repeats):
            for m in a.methods:  # interleaved, so that load changes hit every method
                r = run_training({"benchmark": a.benchmark, "method": m, "epochs": a.epochs})
                times[m].append(r["seconds_per_epoch"])
    ref = statistics.median(times[a.methods[0]])
    print(f"| method | s / epoch ({a.benchmark}, median of {a.repeats}) | ratio to "
          f"{a.methods[0]} |\n|---|---|---|")
    for m in a.methods:
        t = statistics.median(times[m])
        print(f"| {m} | {t:.3g} | {t / ref:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
