"""The size policy under a real memory limit: a child process whose address space is
capped (``resource.setrlimit(RLIMIT_AS)``: what it has after importing fimlab, NumPy,
SciPy and Numba, plus a headroom for BLAS and the work) runs computations whose naive
route would need several times the cap. Each must either take a route that fits, or be
refused with a DenseMemoryError before allocating — never a raw MemoryError, never a
killed process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT

resource = pytest.importorskip("resource")

CHILD = textwrap.dedent("""
    import json, resource
    import numpy as np
    import fimlab as fl

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    cap = vm_bytes() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    fl.set_memory_budget(BUDGET)
    out = {"cap": cap}

    # the limit is real: a 2 GiB array does not fit
    try:
        np.ones(2 * 1024**3 // 8)
        out["limit_effective"] = False
    except MemoryError:
        out["limit_effective"] = True

    # N·K = 5,000 rows against P = 830 parameters: the Gram route of the solve would take
    # 5 (N·K)² doubles = 1 GB, the dense route 3 P² doubles = 17 MB
    net = fl.MLP([30, 20, 10], activation="tanh", likelihood="categorical", seed=0)
    X = np.random.default_rng(0).normal(size=(500, 30))
    F = fl.FisherOperator(fl.factor_batch(net, X, fisher="exact"))
    v = np.random.default_rng(1).normal(size=F.shape[0])
    x = F.solve(v, 1e-3)
    out["solve_route"] = F.last_solve_route
    out["solve_residual"] = float(np.linalg.norm(F @ x + 1e-3 * x - v) / np.linalg.norm(v))
    out["norm_auto"] = F.frobenius_norm_sq()
    out["norm_chunked"] = F.frobenius_norm_sq(route="chunked")

    def refused(call):
        try:
            call()
        except fl.DenseMemoryError as err:
            return "DenseMemoryError: " + str(err)
        except MemoryError as err:
            return "MemoryError: " + str(err)
        return "no error"

    out["gram_forced"] = refused(lambda: F.solve(v, 1e-3, route="gram"))
    out["absurd_mlp"] = refused(lambda: fl.MLP([100_000, 100_000, 10]))
    out["exact_fisher_big"] = refused(lambda: fl.exact_fisher(
        fl.MLP([3000, 3000, 10], seed=0), np.ones((2, 3000))))
    print(json.dumps(out))
""")


def test_size_policy_holds_under_an_address_space_limit():
    code = CHILD.replace("HEADROOM", str(768 * 1024**2)).replace("BUDGET", str(256 * 1024**2))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1"}
    env.pop("FIMLAB_MEMORY_BUDGET", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["limit_effective"]
    assert out["solve_route"] == "dense"
    assert out["solve_residual"] < 1e-8
    assert out["norm_auto"] == pytest.approx(out["norm_chunked"], rel=1e-10)
    for key in ("gram_forced", "absurd_mlp", "exact_fisher_big"):
        assert out[key].startswith("DenseMemoryError: "), (key, out[key])
        assert "bytes" in out[key]
    assert "route='cg'" in out["gram_forced"]
