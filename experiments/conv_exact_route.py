"""Build time and E1 of the exact KPSVD family on each convolution block of the full-size
cuda-convnet (the curvature batch of ``experiments/conv_e1.py`` at iteration 0: digits
upsampled to 32×32, exact Fisher, K = 10), one block at a time.

    PYTHONPATH=$PWD python experiments/conv_exact_route.py --n-curv 8 --blocks 0 1 2 --iters 30

Each block is timed on its own one-layer factor batch (``FactorBatch.layer``), so the
numbers are the exact solver's cost on that block. ``--methods`` picks the methods.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fimlab as fl
from fimlab.models.network import cuda_convnet, network_factor_batch

METHODS = {
    "KPSVD": lambda b: fl.KPSVD(b),
    "KFAC-corrected": lambda b: fl.KFACCorrected(b),
    "Deflation": lambda b: fl.Deflation(b),
    "Lanczos": lambda b: fl.Lanczos(b),
}


def main(argv=None):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conv_e1 import digits_32

    ap = argparse.ArgumentParser()
    ap.add_argument("--n-curv", type=int, default=8)
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=0,
                    help="Adam steps first (lr 1e-3, batch 128, as conv_e1.py)")
    args = ap.parse_args(argv)
    X, y = digits_32(args.seed)
    net = cuda_convnet(seed=args.seed).train()
    opt = fl.Adam(net, lr=1e-3)
    rng = np.random.default_rng(args.seed)
    for _ in range(args.iters):
        idx = rng.choice(len(X), size=128, replace=False)
        opt.step(X[idx], y[idx])
    b = network_factor_batch(net, X[: args.n_curv], fisher="exact")
    print(f"fimlab from {fl.__file__}; iteration {args.iters}, curvature batch "
          f"{args.n_curv}, exact Fisher")
    for l in args.blocks:
        bl = b.layer(l)
        F = fl.FisherOperator(bl)
        print(f"block {l}: d_a = {bl.d_a[0]}, d_g = {bl.d_g[0]}, T = {bl.positions[0]}")
        for name in args.methods:
            t0 = time.perf_counter()
            op = METHODS[name](bl)
            dt = time.perf_counter() - t0
            e = fl.relative_frobenius_error(F, op, block=0)
            route = getattr(op.reports[0], "method", "?")
            print(f"  {name:15s} E1 {e:.8f}   {dt:8.2f} s   ({route})", flush=True)


if __name__ == "__main__":
    main()
