"""One run of a sweep: resolve the runner, pin thread pools, record the outcome."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._errors import DivergenceError
from .spec import (
    RESULT_COLUMNS,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_OK,
    SweepSpec,
    expand_options,
    run_id,
    to_plain,
)


# ------------------------------------------------------------------ one run
def _resolve_runner(runner: str | Callable) -> Callable:
    if callable(runner):
        return runner
    module, _, name = runner.partition(":")
    return getattr(importlib.import_module(module), name)


def _runner_name(runner: str | Callable) -> str:
    if isinstance(runner, str):
        return runner
    return f"{runner.__module__}:{runner.__qualname__}"


def one_line(msg: str, limit: int = 2000) -> str:
    msg = " | ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _numba():
    """Numba (a fimlab dependency), imported now so that its thread count can be set
    before the run starts parallel kernels; None where it is not installed."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return numba


def thread_env(threads: int) -> dict[str, str]:
    return {k: str(int(threads)) for k in _THREAD_ENV}


def execute_run(
    runner: str | Callable,
    options: Mapping[str, Any],
    *,
    threads: int = 1,
    out_dir: str | None = None,
) -> dict:
    """Run one point and return its result columns; never raises on a failed run.

    The thread count of every BLAS / OpenMP library is pinned to ``threads`` for the
    duration of the run, so the numbers do not depend on where it was scheduled: the
    libraries already loaded through :mod:`threadpoolctl`, Numba's with
    ``numba.set_num_threads`` (up to ``NUMBA_NUM_THREADS``), and the ones that the run loads lazily (SciPy's own
    OpenBLAS, scikit-learn's OpenMP) through the environment variables they read when
    they load (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``), set
    for the run. (A library first loaded during a run keeps that thread count for the
    rest of the process.)

    Returns
    -------
    dict
        ``status`` (``"ok"``, ``"diverged"`` or ``"failed"``), the losses of
        :data:`RESULT_COLUMNS` (``None`` where absent), ``wall_time`` (seconds, measured
        here around the call) and ``error`` (``""``, or the exception's type and message
        on one line).
    """
    from threadpoolctl import threadpool_limits

    row: dict[str, Any] = {k: None for k in RESULT_COLUMNS}
    t0 = time.perf_counter()
    numba_prev = None
    env_prev = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update(thread_env(threads))
    try:
        fn = _resolve_runner(runner)
        with threadpool_limits(limits=threads):
            numba = _numba()
            if numba is not None:
                with contextlib.suppress(Exception):
                    numba_prev = numba.get_num_threads()
                    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            out = fn(dict(options), out_dir=out_dir)
    except DivergenceError as exc:
        row.update(status=STATUS_DIVERGED, error=one_line(f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # noqa: BLE001 - a failed run is data, not a crash
        row.update(status=STATUS_FAILED, error=one_line(f"{type(exc).__name__}: {exc}"))
    else:
        out = dict(out or {})
        row["final_train_loss"] = out.get("final_train_loss")
        row["best_val_loss"] = out.get("best_val_loss")
        row["final_val_loss"] = out.get("final_val_loss")
        row["epochs_done"] = out.get("epochs")
        status = str(out.get("status", STATUS_OK))
        err = one_line(out.get("error", "") or out.get("message", "") or "")
        if status == STATUS_OK and not _finite(row["final_train_loss"]):
            status = STATUS_DIVERGED
            err = err or f"final training loss is {row['final_train_loss']!r}"
        row.update(status=status, error=err)
    finally:
        for k, v in env_prev.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if numba_prev is not None:
            with contextlib.suppress(Exception):
                sys.modules["numba"].set_num_threads(numba_prev)
    row["wall_time"] = time.perf_counter() - t0
    for k in RESULT_COLUMNS:
        v = row[k]
        if v is not None and not isinstance(v, str):
            row[k] = float(v) if k != "epochs_done" else to_plain(v)
    return row


def check_runs(spec: SweepSpec, runner: str | Callable | None = None) -> list[tuple]:
    """Options of ``spec`` that the runner would reject, without running anything.

    Uses the runner module's ``resolve_config`` (``fimlab.train`` has one: it checks
    names and ranges); a runner without one is not checked.

    Returns
    -------
    list of (dict, str)
        Each rejected run's options and the runner's message (``[]``: all accepted).
    """
    runner = spec.runner if runner is None else runner
    if isinstance(runner, str):
        module = importlib.import_module(runner.partition(":")[0])
    else:
        module = sys.modules.get(getattr(runner, "__module__", ""), None)
    resolve = getattr(module, "resolve_config", None)
    if resolve is None:
        return []
    bad = []
    for opts in spec.runs():
        try:
            resolve(expand_options(opts))
        except Exception as exc:  # noqa: BLE001 - reported, as the run would be
            bad.append((opts, one_line(f"{type(exc).__name__}: {exc}")))
    return bad


def run_task(runner, options, threads, keep_dir):
    """The task shipped to a worker: one run, its output directory, its row."""
    out_dir = None
    if keep_dir:
        out_dir = str(Path(keep_dir) / run_id(options))
    return execute_run(runner, expand_options(options), threads=threads, out_dir=out_dir)


