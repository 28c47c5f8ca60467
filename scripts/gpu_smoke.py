#!/usr/bin/env python
"""GPU smoke test: fimlab's main computations on CuPy, checked against NumPy and timed.

Run on a machine with an NVIDIA GPU, from the repository root::

    pip install -e ".[gpu]"
    python scripts/gpu_smoke.py                  # MNIST-sized classifier, N = 1000
    python scripts/gpu_smoke.py --sizes 784,1000,500,250,30 --n 2000 --dtype float32

For each computation — the factor batch (exact and Monte-Carlo), Fisher products, the
Woodbury solve (PAPERS.md F3), KFAC and its three damped solves (K2-K4), the exact
Gram-route E1 (whole network and per block), and the KPSVD family and two-level
corrections where they exist in this checkout — it builds the same inputs on NumPy and
on the GPU (same seed, host draws moved to the device), runs both, and prints a table:
the median time of each (after a warm-up; the GPU synchronised; a single run when the
warm-up took over a second), the speed-up, and the
relative difference of the results (which must be round-off: ``--rtol``).

Exit status: 0 when every result agrees, 1 when one does not (or fails on the GPU),
2 when CuPy or a GPU is missing (with the reason). ``--backend array_api_strict`` runs
the same script on the CPU portability namespace: a check of the script itself on a
machine without a GPU (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import fimlab as fl  # noqa: E402
from fimlab import backend as B  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cupy", choices=["cupy", "array_api_strict"],
                   help="the backend to check against NumPy (default: cupy)")
    p.add_argument("--device", default=None, help="GPU number (CuPy) or device name")
    p.add_argument("--sizes", default="784,256,128,10",
                   help="MLP layer sizes, comma-separated (default: 784,256,128,10)")
    p.add_argument("--n", type=int, default=1000, help="samples in the batch (default 1000)")
    p.add_argument("--mc-samples", type=int, default=1, help="MC samples per input")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--damping", type=float, default=1e-3)
    p.add_argument("--repeat", type=int, default=5, help="timed runs (median reported)")
    p.add_argument("--rtol", type=float, default=None,
                   help="largest accepted relative difference (default 1e-8 for float64, "
                        "1e-3 for float32)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None,
                   help="run only the computations whose name matches this regex")
    return p.parse_args(argv)


# -- timing ------------------------------------------------------------------------------
def _synchronizer(backend: str) -> Callable[[], None]:
    if backend == "cupy":
        import cupy

        return lambda: cupy.cuda.get_current_stream().synchronize()
    return lambda: None


def timed(fn: Callable, sync: Callable, repeat: int, slow: float = 1.0):
    """``(result, median seconds)`` of ``repeat`` runs after one warm-up run (one run
    only when the warm-up took more than ``slow`` seconds)."""
    t0 = time.perf_counter()
    out = fn()
    sync()
    if time.perf_counter() - t0 > slow:
        repeat = 1
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def rel_diff(out, ref) -> float:
    """``‖out − ref‖ / ‖ref‖`` for arrays, factor batches, lists or scalars."""
    if isinstance(out, fl.FactorBatch):
        return max(max(rel_diff(a, b) for a, b in zip(out.a, ref.a, strict=True)),
                   max(rel_diff(a, b) for a, b in zip(out.g, ref.g, strict=True)))
    if isinstance(out, (list, tuple)):
        return max(rel_diff(a, b) for a, b in zip(out, ref, strict=True))
    o, r = np.asarray(B.to_numpy(out), dtype=np.float64), np.asarray(B.to_numpy(ref),
                                                                       dtype=np.float64)
    nr = float(np.linalg.norm(r))
    d = float(np.linalg.norm(o - r))
    return d / nr if nr > 0 else d


def check_on_backend(out, like) -> None:
    """Raise if an array result left the namespace or device of ``like``."""
    if isinstance(out, fl.FactorBatch):
        out = [*out.a, *out.g]
    if isinstance(out, (list, tuple)):
        for o in out:
            check_on_backend(o, like)
        return
    if isinstance(out, (bool, int, float)):
        return
    if B.array_namespace(out) is not B.array_namespace(like):
        raise TypeError(f"the result left the backend: {type(out).__module__}")
    if B.device_of(out) != B.device_of(like):
        raise TypeError(f"the result left the device: {B.device_of(out)}")


# -- the computations ------------------------------------------------------------------
class Side:
    """The inputs of one backend: model, data, batches, operators (built once)."""

    def __init__(self, args, backend: str, device=None):
        sizes = [int(s) for s in args.sizes.split(",")]
        rng = np.random.default_rng(args.seed)
        X_host = rng.normal(size=(args.n, sizes[0]))
        with B.use_backend(backend, device):
            self.net = fl.MLP(sizes, activation="tanh", likelihood="categorical",
                              seed=args.seed, dtype=args.dtype)
            self.X = B.from_host(X_host.astype(args.dtype))
        self.args = args
        self.b_exact = fl.factor_batch(self.net, self.X, fisher="exact")
        self.b_mc = self.mc_batch()
        self.F = fl.FisherOperator(self.b_mc)
        self.K = fl.KFAC(self.b_mc)
        like = self.net.params[0]
        v = np.random.default_rng(args.seed + 1).normal(size=(self.F.shape[0], 16))
        self.V = B.asarray_on(v.astype(args.dtype), like)
        self.v = self.V[:, 0]
        self.approx: dict = {}  # the KPSVD family, built once by their "build" rows

    def build(self, label: str, cls, kw):
        """Build an approximation, keep it for the later rows, return its factors."""
        K = self.approx[label] = cls(self.b_mc, **kw)
        return [M for blk in K.blocks for AG in blk.terms for M in AG]

    def mc_batch(self):
        return fl.factor_batch(self.net, self.X, fisher="mc", mc_samples=self.args.mc_samples,
                               rng=np.random.default_rng(self.args.seed + 2))


def fresh_blocks(K):
    """The same Kronecker terms in new operators: a solve then sets up its inverse
    again instead of reusing the cached one."""
    return fl.BlockDiagonalOperator([fl.KroneckerOperator(b.terms) for b in K.blocks])


def computations(args) -> list[tuple[str, Callable[[Side], object]]]:
    lam = args.damping
    rows: list[tuple[str, Callable[[Side], object]]] = [
        ("factor batch (exact, K=C)", lambda s: fl.factor_batch(s.net, s.X, fisher="exact")),
        (f"factor batch (MC, S={args.mc_samples})", lambda s: s.mc_batch()),
        ("Fisher matvec F v", lambda s: s.F @ s.v),
        ("Fisher matmat F V (k=16)", lambda s: s.F @ s.V),
        ("Fisher ‖F‖_F² (Gram)", lambda s: s.F.frobenius_norm_sq()),
        ("Woodbury solve (F+λI)⁻¹v (F3)",
         lambda s: fl.FisherOperator(s.b_mc).solve(s.v, lam)),  # fresh: no cache
        ("KFAC factors (K1)", lambda s: [M for AG in fl.KFAC(s.b_mc).factors for M in AG]),
        ("KFAC matvec", lambda s: s.K @ s.v),
    ]
    for rule in ("factor", "pi", "exact"):
        rows.append((f"KFAC solve rule={rule}",
                     lambda s, r=rule: fl.KFAC(s.b_mc).solve(s.v, lam, rule=r)))
    rows.append(("E1 Gram route, whole network",
                 lambda s: fl.relative_frobenius_error(s.F, s.K)))
    rows.append(("E1 Gram route, block 0",
                 lambda s: fl.relative_frobenius_error(s.F, s.K, block=0)))
    if getattr(fl, "spectral_error", None) is not None:
        rows.append(("E3 spectral error, last block (Lanczos)",
                     lambda s: fl.spectral_error(s.F, s.K, block=s.F.n_blocks - 1,
                                                 method="lanczos")))
    # the KPSVD family and two-level corrections, where this checkout has them
    for name, kw in (("KPSVD", {"rank": 1}), ("KPSVD", {"rank": 2}), ("KFACCorrected", {}),
                     ("Deflation", {}), ("Lanczos", {"steps": 2})):
        cls = getattr(fl, name, None)
        if cls is None:
            continue
        label = name + "".join(f" {k}={v}" for k, v in kw.items())
        rows.append((f"{label}: build (factors)",
                     lambda s, c=cls, k=kw, lb=label: s.build(lb, c, k)))
        rows.append((f"{label}: matvec", lambda s, lb=label: s.approx[lb] @ s.v))
        rows.append((f"{label}: solve (incl. inverse)",
                     lambda s, lb=label: fresh_blocks(s.approx[lb]).solve(s.v, lam)))
        rows.append((f"{label}: E1 Gram route",
                     lambda s, lb=label: fl.relative_frobenius_error(s.F, s.approx[lb])))
    if getattr(fl, "TwoLevel", None) is not None:
        for cs in ("nicolaides", "spectral"):
            rows.append((f"TwoLevel {cs}: build + solve",
                         lambda s, c=cs: fl.TwoLevel(s.K, coarse_space=c, batch=s.b_mc,
                                                     damping=lam).solve(s.v)))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    rtol = args.rtol if args.rtol is not None else (1e-8 if args.dtype == "float64" else 1e-3)
    try:
        fl.set_backend(args.backend, args.device)
        info = B.backend_info()
    except fl.BackendError as exc:
        print(f"gpu_smoke: cannot run on {args.backend!r}: {exc}", file=sys.stderr)
        return 2
    finally:
        fl.set_backend("numpy")
    sync = _synchronizer(args.backend)
    print(f"fimlab GPU smoke test: {args.backend} vs numpy  |  "
          + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"MLP {args.sizes}, N={args.n}, dtype={args.dtype}, λ={args.damping}, "
          f"median of {args.repeat} runs, rtol={rtol:g}\n")
    ref, dev = Side(args, "numpy"), Side(args, args.backend, args.device)
    sync()
    header = f"{'computation':<40} {'numpy ms':>10} {args.backend + ' ms':>12} " \
             f"{'speed-up':>9} {'rel. diff':>10}  ok"
    print(header)
    print("-" * len(header))
    rows, failed = [], 0
    t_start = time.perf_counter()
    todo = computations(args)
    if args.only:
        pattern = re.compile(args.only)
        chosen = [n for n, _ in todo if pattern.search(n)]
        # a KPSVD-family row needs its "build" row first
        todo = [(n, f) for n, f in todo if n in chosen or (
            n.endswith(": build (factors)")
            and any(c.startswith(n.split(":")[0] + ":") for c in chosen))]
    for name, fn in todo:
        out_ref, t_ref = timed(lambda f=fn: f(ref), lambda: None, args.repeat)
        try:
            out, t = timed(lambda f=fn: f(dev), sync, args.repeat)
            check_on_backend(out, dev.net.params[0])
            d = rel_diff(out, out_ref)
            ok = bool(d <= rtol)
            err = None
        except Exception as exc:  # noqa: BLE001 - report every failure in the table
            t, d, ok, err = float("nan"), float("nan"), False, f"{type(exc).__name__}: {exc}"
        failed += not ok
        print(f"{name:<40} {1e3 * t_ref:>10.2f} {1e3 * t:>12.2f} {t_ref / t:>8.1f}x "
              f"{d:>10.1e}  {'yes' if ok else 'NO'}")
        if err:
            print(f"    {err}")
        rows.append({"computation": name, "numpy_s": t_ref, f"{args.backend}_s": t,
                     "rel_diff": d, "ok": ok, "error": err})
    print(f"\n{len(rows) - failed}/{len(rows)} computations agree with NumPy "
          f"(rel. diff <= {rtol:g}); {time.perf_counter() - t_start:.0f} s in all.")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "args": vars(args),
                                               "rows": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
