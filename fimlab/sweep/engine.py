"""The sweep engine: runs in-process or on Dask (embedded LocalCluster or a
scheduler), skipping what the results file already holds."""

from __future__ import annotations

import contextlib
import csv
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .execute import one_line, run_task, thread_env
from .results import format_cell, open_results
from .spec import (
    RESULT_COLUMNS,
    STATUS_DIVERGED,
    STATUS_FAILED,
    SchedulerUnreachableError,
    SweepConfigError,
    SweepSpec,
    default_results_path,
    run_id,
)


# ------------------------------------------------------------------ the engine
@dataclass
class SweepSummary:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    path : pathlib.Path
        The results file.
    total : int
        Points in the sweep.
    skipped : int
        Points already in the results file (not run again).
    ran : int
        Runs finished and written this time.
    failed, diverged : int
        Of those, how many failed or diverged.
    wall_time : float
        Seconds for this call (cluster start-up included).
    interrupted : bool
        Whether the sweep was stopped (Ctrl-C) before the end.
    workers : int
        Worker processes used (1: in-process).
    """

    path: Path
    total: int
    skipped: int
    ran: int = 0
    failed: int = 0
    diverged: int = 0
    wall_time: float = 0.0
    interrupted: bool = False
    workers: int = 1
    run_ids: list = field(default_factory=list)

    def __str__(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        return (f"sweep {state}: {self.total} points, {self.skipped} already in "
                f"{self.path}, {self.ran} run now ({self.failed} failed, {self.diverged} "
                f"diverged) on {self.workers} worker(s) in {self.wall_time:.1f} s")


def machine_workers(threads_per_run: int = 1) -> int:
    """Worker processes that fit the machine: usable cores // threads per run."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads_per_run))


def connect(address: str, timeout: float = 5.0):
    """A :class:`distributed.Client` on the scheduler at ``address``, or a clear error.

    Raises
    ------
    SchedulerUnreachableError
        Nothing answered at ``address`` within ``timeout`` seconds.
    """
    from distributed import Client

    from .._cli_errors import filter_dask_interrupt_race
    from .._validation import check_real

    filter_dask_interrupt_race()

    check_real(timeout, "--connect-timeout (connect_timeout)", lo=0, lo_open=True)
    if not isinstance(address, str) or not address.strip():
        raise SchedulerUnreachableError(f"--scheduler must be an address such as "
                                        f"tcp://HOST:8786, got {address!r}")
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise SchedulerUnreachableError(
            f"no Dask scheduler answered at {address!r} within {timeout:g} s ({exc}). "
            "Check the address (tcp://HOST:PORT, as printed by `dask scheduler`) and that "
            "the scheduler is running and reachable, or leave out --scheduler to run on "
            "this machine"
        ) from exc


def _local_cluster(n_workers: int, threads_per_run: int = 1):
    """A LocalCluster of ``n_workers`` processes, one task at a time each, whose BLAS
    libraries start with ``threads_per_run`` threads (environment set at spawn)."""
    from distributed import Client, LocalCluster

    from .._cli_errors import filter_dask_interrupt_race, sigint_ignored

    filter_dask_interrupt_race()  # a Ctrl-C race inside distributed logs a traceback

    with sigint_ignored():  # Ctrl-C reaches this process only; it stops the workers
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True,
            dashboard_address=":0", silence_logs=40, env=thread_env(threads_per_run),
        )
    return cluster, Client(cluster, set_as_default=False)


def run_sweep(
    spec: SweepSpec,
    results: str | os.PathLike | None = None,
    *,
    runner: str | Callable | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    threads_per_run: int = 1,
    connect_timeout: float = 5.0,
    retry_failed: bool = False,
    keep_runs: str | os.PathLike | None = None,
    progress: bool = False,
    on_result: Callable[[dict], None] | None = None,
    dry_run: bool = False,
) -> SweepSummary:
    """Run every point of ``spec`` not yet in ``results``; stream each row to it.

    Parameters
    ----------
    spec : SweepSpec
    results : path, optional
        The CSV file; default :func:`default_results_path`.
    runner : callable or "module:function", optional
        Called as ``runner(options: dict, out_dir=str | None) -> dict`` with at least
        ``final_train_loss``, ``best_val_loss``, ``final_val_loss``, ``epochs``,
        ``status``. Default: ``spec.runner`` (:func:`fimlab.train.run_training`).
        With Dask it must be importable on the workers (or picklable).
    workers : int, optional
        ``1`` runs in-process, one run after the other; ``n > 1`` starts a
        :class:`~distributed.LocalCluster` of ``n`` processes with one thread each.
        Default: :func:`machine_workers`.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); overrides
        ``workers``.
    client : distributed.Client, optional
        An existing client to use (the caller keeps it open).
    threads_per_run : int
        BLAS threads per run, pinned with threadpoolctl (serial and parallel alike).
    connect_timeout : float
        Seconds to wait for ``scheduler`` before raising.
    retry_failed : bool
        Run again the points recorded as failed or diverged.
    keep_runs : path, optional
        Give each run the output directory ``keep_runs/<run_id>`` (else none).
    progress : bool
        Show a progress bar (one tick per finished run).
    on_result : callable, optional
        Called with each row once it is on disk.
    dry_run : bool
        Count the points to run and return without running (nothing written).

    Returns
    -------
    SweepSummary

    Raises
    ------
    ResultsMismatchError
        ``results`` was written by a different configuration.
    SchedulerUnreachableError
        ``scheduler`` did not answer within ``connect_timeout``.
    """
    t0 = time.perf_counter()
    path = Path(results) if results is not None else default_results_path(spec)
    runner = spec.runner if runner is None else runner
    done = open_results(path, spec, dry_run=True)  # check only: nothing written yet
    finished = {rid for rid, st in done.items()
                if not (retry_failed and st in (STATUS_FAILED, STATUS_DIVERGED))}
    todo = [opts for opts in spec.runs() if run_id(opts) not in finished]
    summary = SweepSummary(path=path, total=len(spec.points()),
                           skipped=len(spec.points()) - len(todo))
    if dry_run or not todo:
        summary.wall_time = time.perf_counter() - t0
        return summary
    threads = int(threads_per_run)
    if threads < 1:
        raise SweepConfigError(f"threads_per_run must be >= 1, got {threads_per_run!r}")
    from .._validation import check_real

    check_real(connect_timeout, "--connect-timeout (connect_timeout)", lo=0, lo_open=True)
    keep = str(keep_runs) if keep_runs is not None else None
    columns = spec.columns()
    opt_cols = spec.option_columns()

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), disable=not progress, desc=spec.name, unit="run",
               file=sys.stderr)

    def write(fh, writer, opts, res):
        row = {"run_id": run_id(opts), "config_hash": spec.config_hash,
               **{k: opts.get(k) for k in opt_cols}, **res}
        writer.writerow([format_cell(row.get(c)) for c in columns])
        fh.flush()
        os.fsync(fh.fileno())
        summary.ran += 1
        summary.run_ids.append(row["run_id"])
        summary.failed += res["status"] == STATUS_FAILED
        summary.diverged += res["status"] == STATUS_DIVERGED
        bar.update(1)
        bar.set_postfix_str(f"{res['status']} {row['run_id'][:8]}", refresh=False)
        if on_result is not None:
            on_result(row)

    if client is None and scheduler is None:
        n = machine_workers(threads) if workers is None else int(workers)
        if n < 1:
            raise SweepConfigError(f"workers must be >= 1, got {workers!r}")
        n = min(n, len(todo))
    else:
        n = 0
    own_client = own_cluster = None
    if client is None and scheduler is not None:  # fail fast, before touching the file
        own_client = client = connect(scheduler, connect_timeout)
    try:
        open_results(path, spec)  # create it (header, sidecar) or repair a partial line
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if n == 1:  # in-process
                summary.workers = 1
                for opts in todo:
                    write(fh, writer, opts, run_task(runner, opts, threads, keep))
            else:
                from distributed import as_completed

                if client is None:
                    own_cluster, own_client = _local_cluster(n, threads)
                    client = own_client
                summary.workers = len(client.scheduler_info().get("workers", {})) or n
                futures = {}
                for opts in todo:
                    fut = client.submit(run_task, runner, opts, threads, keep,
                                        key=f"fimlab-run-{spec.config_hash}-{run_id(opts)}",
                                        pure=False)
                    futures[fut] = opts
                try:
                    for fut in as_completed(futures, loop=client.loop):
                        try:
                            res = fut.result()
                        except Exception as exc:  # noqa: BLE001 - worker lost, etc.
                            res = {k: None for k in RESULT_COLUMNS}
                            res.update(status=STATUS_FAILED, wall_time=None,
                                       error=one_line(f"{type(exc).__name__}: {exc}"))
                        write(fh, writer, futures[fut], res)
                finally:
                    client.cancel(list(futures))
    except KeyboardInterrupt:
        summary.interrupted = True
        from .._cli_errors import quiet_dask_logs

        quiet_dask_logs()
    finally:
        bar.close()
        if own_client is not None:
            with contextlib.suppress(Exception):
                own_client.close()
        if own_cluster is not None:
            with contextlib.suppress(Exception):
                own_cluster.close()
        summary.wall_time = time.perf_counter() - t0
    return summary


