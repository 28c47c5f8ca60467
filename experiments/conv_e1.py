"""E1 of KFAC (KFC) and the KPSVD family on every block of the cuda-convnet along an Adam run.

Data that runs anywhere: scikit-learn's bundled 8×8 digits (1,797 images, 10 classes),
upsampled ×4 (nearest) to 32×32 and replicated to 3 channels, standardised. The network is
the two-level paper's cuda-convnet at full size (Conv 3→32 k3, ReLU, MaxPool 3, BN; Conv
32→32 k3, ReLU, MaxPool 3, BN; Conv 32→64 k2, ReLU; Flatten; Linear 64→10). Adam (lr 1e-3,
batch 128, batch norm in train mode). At each checkpoint: the exact Fisher of the conv and
linear blocks (eval mode, batch-norm parameters fixed) on a fixed curvature batch of
``--n-curv`` images, and E1 = ‖F_l − F̃_l‖_F / ‖F_l‖_F per block for every method (exact
solvers), with the time each method took to build.

    PYTHONPATH=$PWD python experiments/conv_e1.py --iters 0 10 30 60 --n-curv 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fimlab as fl
from fimlab.models.network import cuda_convnet, network_factor_batch


def digits_32(seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.images.astype(np.float64)
    X = np.kron(X, np.ones((1, 4, 4)))  # 8×8 -> 32×32, nearest
    X = (X - X.mean()) / X.std()
    X = np.repeat(X[:, None], 3, axis=1)
    rng = np.random.default_rng(seed)
    p = rng.permutation(len(X))
    return X[p], d.target[p]


METHODS = {
    "KFAC": lambda b: fl.KFAC(b),
    "KPSVD": lambda b: fl.KPSVD(b),
    "KFAC-corrected": lambda b: fl.KFACCorrected(b),
    "Deflation": lambda b: fl.Deflation(b),
    "Lanczos": lambda b: fl.Lanczos(b),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, nargs="+", default=[0, 10, 30, 60])
    ap.add_argument("--n-curv", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    X, y = digits_32(args.seed)
    Xc = X[: args.n_curv]
    net = cuda_convnet(seed=args.seed).train()
    opt = fl.Adam(net, lr=args.lr)
    rng = np.random.default_rng(args.seed)
    it = 0
    print(f"cuda-convnet on digits 32x32, {len(X)} images; curvature batch {args.n_curv}, "
          "exact Fisher (K = 10)")
    for target in sorted(args.iters):
        loss = None
        while it < target:
            idx = rng.choice(len(X), size=args.batch, replace=False)
            loss = opt.step(X[idx], y[idx])
            it += 1
        b = network_factor_batch(net, Xc, fisher="exact")
        F = fl.FisherOperator(b)
        names = [f"{k}{i}" for i, k in enumerate(net.kinds()) if k != "batchnorm"]
        print(f"\niteration {it}" + (f", last mini-batch loss {loss:.4f}" if loss else "")
              + f"; blocks {', '.join(f'{n} {s}' for n, s in zip(names, b.block_sizes))}")
        print("method          " + " ".join(f"{n:>10s}" for n in names) + "   build s")
        for name, make in METHODS.items():
            t0 = time.perf_counter()
            op = make(b)
            dt = time.perf_counter() - t0
            e = [fl.relative_frobenius_error(F, op, block=l) for l in range(b.n_layers)]
            print(f"{name:15s} " + " ".join(f"{v:10.4f}" for v in e) + f"   {dt:7.2f}")


if __name__ == "__main__":
    main()
