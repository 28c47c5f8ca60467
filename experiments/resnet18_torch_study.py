"""One study measurement on a PyTorch ResNet-18 through ``fimlab.torch``.

The two-level paper trains ResNets on CIFAR-10; 100-epoch runs are beyond a 2-core
machine, so this measures the approximations once, on the network at initialisation: a
ResNet-18 in its CIFAR form (3 × 3 stem, no stem pooling, four stages of two basic blocks,
64-128-256-512 channels, 11.2 M parameters; written here, torchvision is not needed), in
eval mode (batch-norm scales and shifts held fixed, running statistics), float64, on 3 ×
32 × 32 images: CIFAR-10 test images if ``--cifar PATH`` points to a local copy, else
scikit-learn's digits upsampled to 32 × 32 and repeated over three channels. The Fisher
is the Monte-Carlo one (one sampled label per image) of ``--n`` images.

    python experiments/resnet18_torch_study.py --n 16 --methods KFAC,EKFAC,Diagonal,LowRank \
        --out docs/results_data/resnet18

writes ``resnet18_e1.csv`` (E1 per block and for the whole network) and prints the table.
``--blocks 0,19,20`` measures those layer blocks only (no whole-network row; the
approximations are block-diagonal, so a block comes out the same) and ``--csv NAME`` names
the CSV; ``--list-blocks`` prints the block map (index, ``d_a`` x ``d_g``, positions) and
stops. ``--per-block`` measures one block at a time (printing each row as it comes, the
CSV rewritten after each block) and assembles the whole-network E1 from the block errors:
the approximations are block-diagonal, so
``‖F − F̃‖²_F = ‖F‖²_F − Σ_l ‖F_l‖²_F + Σ_l E1_l² ‖F_l‖²_F``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def resnet18(n_classes: int = 10):
    import torch.nn as nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))
            self.relu = nn.ReLU()

        def forward(self, x):
            out = self.relu(self.b1(self.c1(x)))
            out = self.b2(self.c2(out))
            return self.relu(out + (x if self.short is None else self.short(x)))

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, n_classes)]
    return nn.Sequential(*layers)


def images(n: int, cifar: str | None):
    if cifar:
        from fimlab.image_datasets import load_cifar10

        d = load_cifar10(cifar)
        return d.X_val[:n], d.y_val[:n], "CIFAR-10 test images"
    from fimlab.image_datasets import load_image_digits

    d = load_image_digits()
    X = np.repeat(np.kron(d.X_train[:n], np.ones((1, 1, 4, 4))), 3, axis=1)  # 8x8 -> 32x32
    return X, d.y_train[:n], "digits upsampled to 3 x 32 x 32"


def per_block(batch, methods: str, blocks, path: Path, t_batch: float) -> int:
    """Block by block (see the module notes); writes ``path`` after every block."""
    import fimlab as fl
    from fimlab.compare import ComparisonTable
    from fimlab.curvature import FisherBlock

    blocks = list(range(batch.n_layers)) if blocks is None else blocks
    rows, norms = [], {}
    print(f"factor batch {t_batch:.1f} s; blocks {blocks}", flush=True)
    for l in blocks:
        t0 = time.perf_counter()
        norms[l] = FisherBlock(batch, l).frobenius_norm_sq()
        t = fl.compare(batch, methods=methods, e2=False, blocks=[l])
        rows += t.rows
        ComparisonTable(rows, t.meta).to_csv(path)
        for r in t.rows:
            print(f"block {l:2d} ({batch.d_a[l]} x {batch.d_g[l]}, T = {batch.positions[l]}) "
                  f"{r['method']:15s} E1 {r['e1']:.4f}  build {r['build_time_s']:.1f} s",
                  flush=True)
        print(f"block {l:2d}: {time.perf_counter() - t0:.1f} s (build + E1)", flush=True)
    if sorted(blocks) == list(range(batch.n_layers)):
        total = fl.FisherOperator(batch).frobenius_norm_sq()
        diag = sum(norms.values())
        for m in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == m]
            err = total - diag + sum(r["e1"] ** 2 * norms[r["block"]] for r in mine)
            rows.append({"method": m, "solver": mine[0]["solver"], "block": "all",
                         "block_size": sum(r["block_size"] for r in mine),
                         "e1": (max(err, 0.0) / total) ** 0.5, "e2": float("nan"),
                         "build_time_s": sum(r["build_time_s"] for r in mine),
                         "converged": all(r["converged"] for r in mine)})
            print(f"whole network {m:15s} E1 {rows[-1]['e1']:.4f} (off-diagonal share of "
                  f"‖F‖²: {(total - diag) / total:.3f})", flush=True)
        ComparisonTable(rows, {}).to_csv(path)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16, help="images in the curvature batch")
    p.add_argument("--methods", default="KFAC,EKFAC,Diagonal,LowRank")
    p.add_argument("--fisher", default="mc", choices=["mc", "exact", "empirical"])
    p.add_argument("--cifar", help="local CIFAR-10 (cifar-10-batches-py/ or the .tar.gz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="fimlab-out/resnet18")
    p.add_argument("--blocks", help="comma-separated layer blocks to measure (default: all "
                   "and the whole network)")
    p.add_argument("--csv", default="resnet18_e1.csv", help="name of the CSV in --out")
    p.add_argument("--list-blocks", action="store_true", help="print the block map and stop")
    p.add_argument("--per-block", action="store_true", help="one block at a time, rows "
                   "printed as they come; the whole-network E1 from the block errors")
    a = p.parse_args(argv)

    import torch

    import fimlab as fl
    import fimlab.torch as flt

    torch.manual_seed(a.seed)
    model = resnet18().double().eval()
    X, y, what = images(a.n, a.cifar)
    n_params = sum(q.numel() for q in model.parameters())
    t0 = time.perf_counter()
    batch = flt.factor_batch(model, X, y, likelihood="categorical", fisher=a.fisher, rng=a.seed)
    t_batch = time.perf_counter() - t0
    if a.list_blocks:
        for l in range(batch.n_layers):
            print(f"block {l}: d_a = {batch.d_a[l]}, d_g = {batch.d_g[l]}, "
                  f"T = {batch.positions[l]}")
        return 0
    blocks = None if a.blocks is None else [int(b) for b in a.blocks.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.per_block:
        return per_block(batch, a.methods, blocks, out / a.csv, t_batch)
    t0 = time.perf_counter()
    table = fl.compare(batch, methods=a.methods, e2=False, blocks=blocks)
    t_cmp = time.perf_counter() - t0
    table.to_csv(out / a.csv)
    print(f"ResNet-18 (CIFAR form), {n_params:,} parameters ({sum(batch.d_a[l] * batch.d_g[l] for l in range(batch.n_layers)):,} "
          f"in {batch.n_layers} conv/linear blocks; batch norm held fixed), {a.n} {what}, "
          f"Fisher={a.fisher}: factor batch {t_batch:.1f} s, {a.methods} on "
          f"{'every block' if blocks is None else 'blocks ' + a.blocks} {t_cmp:.1f} s")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
