"""Two-level KFAC in training: does the residual form suffer from the moving average?

Trains the digits auto-encoder for 42 iterations (3 epochs) with KFAC and with the
Nicolaides two-level correction (residual and additive forms), with and without the papers'
moving average of the fine level's factors, with the curvature batch a quarter of the
mini-batch (the papers') or all of it, and prints the training loss and the mean
KL-clipping factor ν of the last 10 steps.

    python experiments/train_twolevel_check.py
"""

from __future__ import annotations

import numpy as np

import fimlab as fl
from fimlab.train_config import build_optimizer, load_dataset, resolve_config


def main() -> None:
    print(f"{'ema':<8}{'two-level':<24}{'curv. frac.':>12}{'train loss':>12}{'mean nu':>10}")
    for ema in ("none", "papers"):
        for tl in (None, {"coarse_space": "nicolaides", "form": "residual"},
                   {"coarse_space": "nicolaides", "form": "additive"}):
            for frac in (0.25, 1.0):
                c = resolve_config({"benchmark": "digits", "method": "KFAC", "two_level": tl,
                                    "damping": 0.01, "lr": 1.0, "ema": ema,
                                    "curvature_fraction": frac})
                X = load_dataset(c).X_train
                net = fl.MLP(c["architecture"], activation="relu", likelihood="bernoulli",
                             seed=0)
                opt = build_optimizer(c, net)
                nus = []
                for it in range(42):
                    Xb = X[(it % 14) * 100:(it % 14 + 1) * 100]
                    opt.step(Xb, Xb)
                    nus.append(opt.last_nu)
                name = "KFAC" if tl is None else f"nicolaides/{tl['form']}"
                print(f"{ema:<8}{name:<24}{frac:>12}{net.loss(X, X):>12.2f}"
                      f"{np.mean(nus[-10:]):>10.4f}")


if __name__ == "__main__":
    main()
