"""The BLAS libraries in the process, and one thread pool for SciPy's LAPACK calls.

NumPy and SciPy wheels each bundle their own OpenBLAS (two libraries, two thread pools;
``threadpoolctl`` lists both). OpenBLAS worker threads busy-wait for a while after each
call, so code that alternates between the two libraries pays, at every switch, for the
other pool's spinning threads: on this project's two-core machine SciPy's ``dsyrk`` on a
512 × 1001 matrix took 34 ms right after a NumPy GEMM against 16 ms for NumPy's own
``a.T @ a``. fimlab's products therefore go through NumPy (``@``, which also runs
``a.T @ a`` as a SYRK). The LAPACK routines NumPy does not expose (``potrf``/``pocon``/
``potri``, ``sygvd``) still come from SciPy; :func:`scipy_lapack_threads` runs them with
SciPy's pool at one thread when it is a different library from NumPy's, so that no
second pool spins up beside NumPy's (measured: 40 vs 56 ms for a damped 1001 × 1001
inverse after a NumPy GEMM).

Examples
--------
>>> from fimlab._blas import blas_libraries
>>> all("filepath" in d for d in blas_libraries())
True
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["blas_libraries", "scipy_lapack_threads", "two_pools_active"]

_STATE: dict = {}


def blas_libraries() -> list[dict]:
    """The BLAS libraries loaded in this process (``threadpoolctl.threadpool_info()``
    entries with ``user_api == "blas"``), each with the package that ships it
    (``"numpy"``, ``"scipy"`` or ``None``) under ``"owner"``."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a core dependency
        return []
    out = []
    for d in threadpool_info():
        if d.get("user_api") != "blas":
            continue
        path = str(d.get("filepath") or "")
        owner = next((p for p in ("numpy", "scipy") if f"{os.sep}{p}.libs{os.sep}" in path
                      or f"{os.sep}{p}{os.sep}" in path), None)
        out.append({**d, "owner": owner})
    return out


def two_pools_active() -> bool:
    """``True`` when two or more BLAS libraries each run more than one thread."""
    return sum(1 for d in blas_libraries() if (d.get("num_threads") or 1) > 1) >= 2


def _scipy_pool():
    """threadpoolctl's handle on SciPy's own OpenBLAS when it is not NumPy's, else
    ``None`` (cached; ``FIMLAB_SCIPY_LAPACK_THREADS=all`` turns the limit off)."""
    if "pool" not in _STATE:
        pool = None
        if os.environ.get("FIMLAB_SCIPY_LAPACK_THREADS", "1") != "all":
            try:
                import scipy.linalg.lapack  # noqa: F401 - loads SciPy's BLAS
                from threadpoolctl import ThreadpoolController

                libs = blas_libraries()
                sc = [d for d in libs if d["owner"] == "scipy"]
                np_ = [d for d in libs if d["owner"] == "numpy"]
                if sc and np_ and sc[0]["filepath"] != np_[0]["filepath"]:
                    pool = ThreadpoolController().select(filepath=sc[0]["filepath"])
            except Exception:  # noqa: BLE001 - no limit is the safe fallback
                pool = None
        _STATE["pool"] = pool
    return _STATE["pool"]


def scipy_lapack_threads():
    """Context manager: SciPy's OpenBLAS at one thread inside (when it is a library of
    its own beside NumPy's and has more threads), unchanged otherwise."""
    pool = _scipy_pool()
    if pool is None or not pool.lib_controllers:
        return contextlib.nullcontext()
    if all((lc.num_threads or 1) <= 1 for lc in pool.lib_controllers):
        return contextlib.nullcontext()
    return pool.limit(limits=1)
