"""The study figures: redrawn from a finished study's files (the same rows as the run
measured), at most four blocks a row, and a clear error when the files are missing."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

import fimlab as fl
from fimlab.plotting_study import replot_study
from fimlab.study import run_study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    run_study({"sizes": [64, 12, 8, 8, 8, 10], "iterations": 2, "every": 1, "n_samples": 60,
               "batch_size": 30, "methods": ["KFAC", "KPSVD"], "solver": "exact",
               "out": str(d)}, progress=False, verbose=False)
    return d


def test_replot_draws_every_block_four_a_row(study_dir, tmp_path):
    paths = replot_study(study_dir, tmp_path)
    assert [p.name for p in paths] == ["study.png", "study_blocks.png"]
    blocks = {r["block"] for r in csv.DictReader((study_dir / "study.csv").open())}
    n = len(blocks - {"all"})
    assert n == 5
    w, h = Image.open(paths[1]).size
    # four panels of 3.4 in a row at 110 dpi, two rows of pairs (E1 over E2) for 5 blocks,
    # and the legend: 2 labels in one row (0.2 in a row + 0.3 in)
    assert w == pytest.approx(4 * 3.4 * 110, abs=2)
    assert h == pytest.approx((5.2 * 2 + 0.2 + 0.3) * 110, abs=2)
    # the redraw of the run's own figure has the same size
    assert Image.open(study_dir / "study_blocks.png").size == (w, h)
    a = np.asarray(Image.open(paths[1]).convert("L"), dtype=float)
    b = np.asarray(Image.open(study_dir / "study_blocks.png").convert("L"), dtype=float)
    assert np.mean(np.abs(a - b)) < 1.0  # the same rows drawn again


def test_replot_missing_files_is_a_data_error(tmp_path):
    with pytest.raises(fl.DataError, match="study.csv and config.json"):
        replot_study(tmp_path)
