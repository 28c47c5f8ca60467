"""Timing, memory and machine description for the benchmark suite.

- :func:`measure` times callables *round-robin* (A, B, A, B, ...) after one warm-up call
  each, so that two implementations compared by a ratio see the same machine load;
  the best (minimum) time is the statistic of record, the median is reported beside it.
- :func:`peak_memory` runs a callable once more and reports the peak of the NumPy
  allocations it made (``tracemalloc``, exact for NumPy, blind to PyTorch) and the peak
  growth of the process's resident set (sampled every millisecond, sees everything).
- :func:`machine` describes the CPU (``lscpu``), the BLAS libraries and their kernels
  (``threadpoolctl``), the thread counts, the load average and the library versions.
- :func:`machine_limits` measures what the hardware allows: DGEMM/SGEMM GFLOP/s and
  memory bandwidth, the yardsticks the suite divides its rows by.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

__all__ = ["measure", "peak_memory", "machine", "machine_limits", "Budget"]


class Budget:
    """Repeat policy: at least ``min_repeats`` timed calls, more while the total stays
    under ``min_time`` seconds, never more than ``max_repeats``."""

    def __init__(self, min_repeats: int = 3, max_repeats: int = 20, min_time: float = 1.0):
        self.min_repeats, self.max_repeats, self.min_time = min_repeats, max_repeats, min_time


def measure(fns: dict[str, Callable[[], object]], budget: Budget, warmup: bool = True,
            gap: float = 0.05) -> dict[str, dict]:
    """Time each callable of ``fns`` round-robin; returns ``{name: {best, median, n}}``.

    ``gap`` seconds of sleep precede every timed call (untimed): OpenMP runtimes (PyTorch's,
    MKL's, Numba's) keep their worker threads spinning for a while after a parallel
    region, and on a two-core machine those spinning threads would steal the cores from
    whichever implementation is timed next. The suite also sets
    ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets it) for the same reason.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    if warmup:
        for f in fns.values():
            f()
    total = 0.0
    n = 0
    while n < budget.max_repeats and (n < budget.min_repeats or total < budget.min_time):
        for k, f in fns.items():
            gc.collect()
            if gap:  # let other libraries' worker threads stop spinning (see measure)
                time.sleep(gap)
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            times[k].append(dt)
            total += dt
        n += 1
    return {k: {"best": min(v), "median": statistics.median(v), "n": len(v)}
            for k, v in times.items()}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(f: Callable[[], object], trace_numpy: bool = True) -> dict:
    """Peak memory of one call of ``f``: ``alloc_mb`` (tracemalloc: NumPy and Python
    allocations made during the call, exact) and ``rss_mb`` (growth of the resident
    set, sampled every millisecond: includes BLAS and PyTorch buffers)."""
    gc.collect()
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            r = _rss_bytes()
            if r > peak[0]:
                peak[0] = r
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    if trace_numpy:
        tracemalloc.start()
    th.start()
    try:
        f()
    finally:
        stop.set()
        th.join()
        r = _rss_bytes()
        peak[0] = max(peak[0], r)
        alloc = None
        if trace_numpy:
            alloc = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return {"alloc_mb": None if alloc is None else alloc / 2**20,
            "rss_mb": (peak[0] - base) / 2**20}


def _lscpu() -> dict:
    out = {}
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return out
    keep = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
            "Socket(s)", "CPU max MHz", "BogoMIPS", "L1d cache", "L2 cache", "L3 cache",
            "Hypervisor vendor")
    for line in txt.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in keep:
            out[k.strip()] = v.strip()
    flags = next((ln.split(":", 1)[1] for ln in txt.splitlines() if ln.startswith("Flags")), "")
    out["SIMD"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in flags.split())
    return out


def machine() -> dict:
    """CPU, BLAS (threadpoolctl), threads, load and versions."""
    from threadpoolctl import threadpool_info

    try:  # load SciPy's BLAS too (it may be a second OpenBLAS) so that it is listed
        import scipy.linalg.blas  # noqa: F401
    except ImportError:  # pragma: no cover
        pass

    import fimlab

    info = {
        "cpu": _lscpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fimlab": fimlab.__version__,
        "threadpools": [
            {**{k: d.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                      "architecture", "num_threads", "threading_layer")},
             "library": os.path.basename(d.get("filepath") or ""),
             "filepath": d.get("filepath")}
            for d in threadpool_info()
        ],
        "env": {k: os.environ.get(k) for k in (
            "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
            "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS", "FIMLAB_NUMBA") if k in os.environ},
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
        info["numba_threading_layer"] = _numba_layer()
    except ImportError:  # pragma: no cover
        pass
    return info


def _numba_layer() -> str | None:
    import numba
    from numba import njit, prange

    @njit(parallel=True)
    def _touch(x):  # pragma: no cover - compiled
        for i in prange(x.shape[0]):
            x[i] = i

    try:
        _touch(np.empty(4))
        return numba.threading_layer()
    except Exception:  # noqa: BLE001
        return None


def machine_limits(n: int, budget: Budget, bw_mb: int = 512) -> dict:
    """Measured yardsticks: square GEMM GFLOP/s (float64 and float32, size ``n``) and
    memory bandwidth (a ``bw_mb`` MiB array copy: read + write bytes per second)."""
    rng = np.random.default_rng(0)
    out = {}
    for dt in ("float64", "float32"):
        A = rng.standard_normal((n, n)).astype(dt)
        B = rng.standard_normal((n, n)).astype(dt)
        C = np.empty((n, n), dtype=dt)
        t = measure({"gemm": lambda A=A, B=B, C=C: np.matmul(A, B, out=C)}, budget)["gemm"]
        out[f"gemm_{dt}_gflop_s"] = 2.0 * n**3 / t["best"] / 1e9
        out[f"gemm_{dt}_n"] = n
    m = bw_mb * 2**20 // 8
    src = np.ones(m)
    dst = np.empty(m)
    t = measure({"copy": lambda: np.copyto(dst, src)}, budget)["copy"]
    out["copy_gb_s"] = 2.0 * src.nbytes / t["best"] / 1e9
    return out
