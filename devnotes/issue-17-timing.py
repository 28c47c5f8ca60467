"""Timings for issue 17 (printed as they go; best of R runs)."""
import os, sys, time, warnings
import numpy as np
from threadpoolctl import threadpool_limits
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fimlab as fl
from benchmarks.cases import make_problem, e1_all, _COMPARATORS
from benchmarks import peers

def best(f, r):
    ts = []
    for _ in range(r):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

def load():
    return os.getloadavg()[0]

what = sys.argv[1:] or ["blocks", "lowrank", "e1", "peer"]
with threadpool_limits(2):
    net, X, y, case = make_problem("ae", "float64")
    b = fl.factor_batch(net, X, y, fisher="mc", rng=0)
    if "blocks" in what:
        tot_p = tot_e = 0.0
        for l in range(b.n_layers):
            bl = b.layer(l)
            def parts(bl=bl):
                A, G = fl.kfac_factors(bl.a[0], bl.g[0]); return np.linalg.eigh(A), np.linalg.eigh(G)
            fl.EKFAC(bl); parts()
            tp = best(parts, 3); te = best(lambda: fl.EKFAC(bl), 3)
            tot_p += tp; tot_e += te
            print(f"block {l} {b.d_a[l]}x{b.d_g[l]}: parts {tp:.4f} s, EKFAC {te:.4f} s, ratio {te/tp:.2f}  load {load():.1f}", flush=True)
        print(f"all blocks: parts {tot_p:.3f} s, EKFAC {tot_e:.3f} s, ratio {tot_e/tot_p:.2f}", flush=True)
    if "lowrank" in what:
        tk = best(lambda: fl.KFAC(b), 2); tl = best(lambda: fl.LowRank(b, k=20), 2)
        print(f"KFAC {tk:.3f} s, LowRank(k=20) {tl:.3f} s, ratio {tl/tk:.2f}  P={b.n_params} load {load():.1f}", flush=True)
    if "e1" in what:
        t = time.perf_counter(); e = e1_all(net, X, y, list(_COMPARATORS)); t = time.perf_counter() - t
        print(f"E1 of {len(_COMPARATORS)} comparators on 8 blocks (built): {t:.2f} s load {load():.1f}", flush=True)
        for m, v in e.items(): print("  ", m, np.round(v, 4).tolist(), flush=True)
        for m in _COMPARATORS:
            t = time.perf_counter(); e1_all(net, X, y, [m]); print(f"   {m}: {time.perf_counter()-t:.2f} s", flush=True)
    if "peer" in what:
        mlp, Xm, ym, cm = make_problem("mlp", "float64")
        tw = peers.TorchTwin(mlp, Xm, ym, 2)
        ours = lambda: fl.EKFAC(fl.factor_batch(mlp, Xm, ym, fisher="mc", rng=0))
        theirs = tw.curvlinops_ekfac("mc")
        ours(); theirs()
        to = best(ours, 3); time.sleep(0.3); tt = best(theirs, 3)
        print(f"MLP 784-256-128-10 N=1000 MC: fimlab EKFAC {to:.3f} s, curvlinops {tt:.3f} s, ratio {tt/to:.2f} load {load():.1f}", flush=True)
