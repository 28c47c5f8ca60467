"""How often does the papers' KL-clipping act? Fraction of the first 60 iterations with
ν < 1 and the median ν, for KFAC and KFAC-corrected at each benchmark's tuned settings.

    python experiments/train_klclip_check.py
"""

from __future__ import annotations

import numpy as np

import fimlab as fl
from fimlab.train_config import build_optimizer, load_dataset, resolve_config


def main() -> None:
    for bench in ("digits", "curves-small"):
        for method in ("KFAC", "KFAC-corrected"):
            c = resolve_config({"benchmark": bench, "method": method})
            X = load_dataset(c).X_train
            net = fl.MLP(c["architecture"], activation="relu", likelihood="bernoulli", seed=0)
            opt = build_optimizer(c, net)
            rng = np.random.default_rng(0)
            nus = []
            for _ in range(60):
                idx = rng.permutation(len(X))[: c["batch_size"]]
                opt.step(X[idx], X[idx])
                nus.append(opt.last_nu)
            nus = np.array(nus)
            print(f"{bench:<14}{method:<16} lr {c['lr']:<5} λ {c['damping']:<5} clipped "
                  f"{(nus < 1).mean():.0%}  median ν {np.median(nus):.4f}")


if __name__ == "__main__":
    main()
