"""Seconds per training iteration of KFAC, the KPSVD family, two-level KFAC and Adam on a
network benchmark (the CNN or a deep batch-norm net), measured back to back.

Each method runs ``--iterations`` optimizer iterations (the benchmark's learning rates,
damping and refresh periods; one BLAS thread), interleaved over ``--repeats`` rounds so
that a change of the machine's load hits every method; the median seconds per iteration
(evaluations excluded) and the ratio to the first method are printed as a Markdown table
and written to ``--csv``. ``KFAC+<space>`` is KFAC with the residual-form coarse
correction of that coarse space (docs/papers.md T2-T3).

    python experiments/conv_timing.py --benchmark cuda-convnet-fast --iterations 40
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys


def _config(benchmark: str, method: str, iterations: int) -> dict:
    cfg = {"benchmark": benchmark, "iterations": iterations}
    if "+" in method:
        base, space = method.split("+", 1)
        return {**cfg, "method": base, "label": method,
                "two_level": {"coarse_space": space, "form": "residual"}}
    return {**cfg, "method": method}


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    from fimlab.train import run_training

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="cuda-convnet-fast")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=[
        "KFAC", "KPSVD", "KFAC-corrected", "Deflation", "KFAC+nicolaides", "KFAC+spectral",
        "adam"])
    p.add_argument("--csv", help="write the table here too")
    a = p.parse_args(argv)
    times: dict = {m: [] for m in a.methods}
    with threadpool_limits(limits=1):
        for _ in range(a.repeats):
            for m in a.methods:  # interleaved
                r = run_training(_config(a.benchmark, m, a.iterations))
                times[m].append(r["wall_time"] / max(1, r["iterations"]))
    ref = statistics.median(times[a.methods[0]])
    rows = [{"method": m, "s_per_iteration": statistics.median(times[m]),
             "ratio": statistics.median(times[m]) / ref,
             "all_s_per_iteration": " ".join(f"{t:.4g}" for t in times[m])}
            for m in a.methods]
    print(f"| method | s / iteration ({a.benchmark}, median of {a.repeats}) | ratio to "
          f"{a.methods[0]} |\n|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['s_per_iteration']:.4g} | {r['ratio']:.2f} |")
    if a.csv:
        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
