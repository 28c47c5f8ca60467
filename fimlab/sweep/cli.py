"""``fimlab sweep`` on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._errors import FimlabError
from .engine import run_sweep
from .execute import check_runs
from .report import report
from .spec import SweepConfigError, default_results_path, load_spec, parse_set


# ----------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fimlab sweep``."""
    parser.add_argument("config", help="sweep configuration (TOML, see experiments/"
                        "sweep_*.toml); with --report also a results CSV")
    parser.add_argument("--fast", action="store_true",
                        help="apply the configuration's [fast] overrides (a tiny grid)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a training option for every run (repeatable; part of "
                        "the configuration, so its results go to their own file)")
    parser.add_argument("--results", default=None,
                        help="results CSV; if not given, [sweep] results, else "
                        "sweeps/NAME[-fast].csv")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the local Dask cluster; 1 runs "
                        "in-process; if not given, cores // threads-per-run")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on an existing Dask cluster (tcp://HOST:PORT)")
    parser.add_argument("--connect-timeout", type=float, default=5.0,
                        help="seconds to wait for --scheduler")
    parser.add_argument("--threads-per-run", type=int, default=1,
                        help="BLAS threads per run (pinned with threadpoolctl)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run failed/diverged points again")
    parser.add_argument("--keep-runs", default=None, metavar="DIR",
                        help="keep each run's own output under DIR/RUN_ID")
    parser.add_argument("--dry-run", action="store_true",
                        help="say how many points would run and check their options "
                        "with the runner (exit 1 if it rejects some), run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: print the best setting per method and draw "
                        "a heat-map per method")
    parser.add_argument("--metric", default="final_train_loss",
                        choices=["final_train_loss", "best_val_loss", "final_val_loss"],
                        help="what --report minimises and colours")
    parser.add_argument("--axes", default="lr,damping", metavar="X,Y",
                        help="the heat-map axes")
    parser.add_argument("--by", default=None, metavar="KEY,...",
                        help="--report: give the best setting and a heat-map per these "
                        "options; if not given, method and the other varied non-numeric "
                        "options, such as the data set")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="where --report writes the PNGs; if not given, next to the "
                        "results file")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fimlab sweep``."""
    try:
        if args.report:
            axes = tuple(a.strip() for a in args.axes.split(","))
            if len(axes) != 2:
                raise SweepConfigError(f"--axes takes X,Y, got {args.axes!r}")
            spec = None
            if args.config.endswith(".csv"):
                results = Path(args.config)
            else:
                spec = load_spec(args.config, fast=args.fast,
                                 overrides=parse_set(args.set))
                results = Path(args.results) if args.results else default_results_path(spec)
            by = [k.strip() for k in args.by.split(",")] if args.by else None
            text, _ = report(results, args.figures, args.metric, axes, by=by, spec=spec)
            print(text)
            return 0
        spec = load_spec(args.config, fast=args.fast, overrides=parse_set(args.set))
        summary = run_sweep(
            spec, args.results, workers=args.workers, scheduler=args.scheduler,
            threads_per_run=args.threads_per_run, connect_timeout=args.connect_timeout,
            retry_failed=args.retry_failed, keep_runs=args.keep_runs,
            progress=not args.no_progress, dry_run=args.dry_run,
        )
    except FimlabError as exc:
        print(f"fimlab sweep: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"{summary.total} points, {summary.skipped} already in {summary.path}, "
              f"{summary.total - summary.skipped} to run")
        bad = check_runs(spec)
        if bad:
            msgs = sorted({m for _, m in bad})
            print(f"{len(bad)} of them would fail, the runner rejects their options:")
            for m in msgs[:5]:
                print(f"  {m}")
            if len(msgs) > 5:
                print(f"  ... and {len(msgs) - 5} other message(s)")
            return 1
        return 0
    print(summary)
    if summary.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
