import numpy as np, time, warnings, sys
import fimlab as fl
m = int(sys.argv[1]) if len(sys.argv) > 1 else 32
rng = np.random.default_rng(0)
d_a, d_g = 1001, 1000
a = rng.normal(size=(m, d_a)); a[:, -1] = 1.0
g = rng.normal(size=(m, 1, d_g))
b = fl.FactorBatch([a], [g], fisher="mc")
F = fl.FisherOperator(b)
for products in ("gram", "matrix-free"):
    for cls in (fl.KPSVD, fl.Deflation, fl.KFACCorrected, fl.Lanczos):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            op = cls(b, solver="paper", products=products)
        r = op.reports[0]
        print(f"{products:12s} {cls.__name__:14s} {time.perf_counter()-t0:7.2f}s  iters {r.iterations:4d} restarts {r.restarts:3d} res {r.residual:.1e}  E1 {fl.relative_frobenius_error(F, op, block=0):.6f}")
    if m > 100: break
