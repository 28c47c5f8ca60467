"""Time KFAC factors vs the KPSVD family (exact solver) on one large block."""
import sys, time, numpy as np
import fimlab as fl
from fimlab import kron as K
from fimlab.approx.kfac import kfac_factors

m, d_a, d_g = (int(x) for x in (sys.argv[1:4] if len(sys.argv) > 3 else (512, 1001, 1000)))
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 7
rng = np.random.default_rng(0)
a = rng.normal(size=(m, d_a)); a[:, -1] = 1.0
g = rng.normal(size=(m, 1, d_g)) / np.sqrt(d_g)
b = fl.FactorBatch([a], [g], fisher="mc")
methods = {
    "KFAC factors": lambda: kfac_factors(a, g),
    "KPSVD (rank 1)": lambda: fl.KPSVD(b),
    "KPSVD rank 2": lambda: fl.KPSVD(b, rank=2),
    "KFAC-corrected": lambda: fl.KFACCorrected(b),
    "Deflation": lambda: fl.Deflation(b),
    "Lanczos": lambda: fl.Lanczos(b),
}
times = {k: [] for k in methods}
cpu = {k: [] for k in methods}
for f in methods.values():
    f()  # warm up
for _ in range(reps):  # interleaved, so load changes hit every method alike
    for k, f in methods.items():
        c0 = time.process_time(); t0 = time.perf_counter(); f()
        times[k].append(time.perf_counter() - t0); cpu[k].append(time.process_time() - c0)
base = min(times["KFAC factors"]); cbase = min(cpu["KFAC factors"])
print(f"block d_a={d_a} d_g={d_g} m={m} K=1 (MC Fisher), min of {reps} interleaved runs")
for k, ts in times.items():
    print(f"  {k:16s} wall min {min(ts)*1e3:7.1f} ms (median {np.median(ts)*1e3:7.1f})  ratio {min(ts)/base:5.2f}   cpu min {min(cpu[k])*1e3:7.1f} ms  ratio {min(cpu[k])/cbase:5.2f}")
s = fl.Deflation(b).reports[0].sigma
print(f"  sigma2/sigma1 = {s[1]/s[0]:.4f}")
