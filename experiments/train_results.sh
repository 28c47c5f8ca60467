#!/usr/bin/env bash
# Reproduce the training figures and tables of docs/results.md (scaled-down benchmarks).
#   bash experiments/train_results.sh            # digits full mode + CURVES-like fast mode
# Uses one BLAS thread per run (steady timings when other jobs share the cores).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-fimlab-out}
python -m fimlab train --config experiments/train_kpsvd_digits.toml --mode full \
    --threads 1 --no-progress --out "$OUT/train-digits"
python -m fimlab train --config experiments/train_kpsvd_curves.toml --mode fast \
    --seeds 0 1 2 --threads 1 --no-progress --out "$OUT/train-curves-small"
mkdir -p docs/figures
cp "$OUT/train-digits/training.png" docs/figures/train_digits.png
cp "$OUT/train-curves-small/training.png" docs/figures/train_curves_small.png
