#!/usr/bin/env bash
# Reproduce the training figures and tables of docs/results.md (scaled-down benchmarks).
#   bash experiments/train_results.sh   # digits (full), CURVES-like (fast, 3 seeds), two-level
#                                       # digits (full), tables, timing, checks: ~1 hour here
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
python -m fimlab train --config experiments/train_twolevel_digits.toml --mode full \
    --threads 1 --no-progress --out "$OUT/train-twolevel-digits"
cp "$OUT/train-twolevel-digits/training.png" docs/figures/train_twolevel_digits.png
for d in train-digits train-curves-small train-twolevel-digits; do
    python experiments/train_table.py "$OUT/$d" --epochs 10 30
done
python experiments/train_timing.py --benchmark curves-small --epochs 2
python experiments/train_timing.py --benchmark digits --epochs 10 \
    --methods KFAC KPSVD KFAC-corrected Deflation Lanczos sgd adam block-exact exact
python experiments/train_twolevel_check.py
python experiments/train_klclip_check.py
