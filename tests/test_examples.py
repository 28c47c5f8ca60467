"""Every tutorial ``examples/plot_*.py`` runs, in its fast mode, and draws a figure.

The tutorials are the teaching material of the docs (sphinx-gallery executes them in
their full mode at build time); here each one runs with ``FIMLAB_FAST=1`` and the Agg
backend, in-process so that NumPy, SciPy and fimlab are imported once.
"""

from __future__ import annotations

import runpy
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fimlab import ConvergenceWarning

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("plot_*.py"))


def test_there_are_tutorials():
    assert len(EXAMPLES) >= 3, f"expected the tutorials under examples/, found {EXAMPLES}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_tutorial_runs_in_fast_mode(path, monkeypatch, tmp_path):
    for extra, mods in (("torch", ("torch",)), ("jax", ("jax", "flax", "optax"))):
        if f"import fimlab.{extra}" in path.read_text(encoding="utf-8"):
            for mod in mods:  # a front-end tutorial needs its optional extra
                pytest.importorskip(mod, reason=f"needs fimlab[{extra}]")
    monkeypatch.setenv("FIMLAB_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)  # anything a tutorial writes lands in a temporary folder
    monkeypatch.setattr(sys, "argv", [str(path)])
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    plt.close("all")
    printoptions = np.get_printoptions()
    try:
        # tiny matrices: BLAS threads only add overhead (and oversubscribe a busy machine);
        # a tutorial may change global state (warning filters, rcParams, NumPy's print
        # options): it is restored, so that the tests after it see the defaults
        with threadpool_limits(1), warnings.catch_warnings(), matplotlib.rc_context():
            # a solver that misses its tolerance is an error here (issue 21); a tutorial
            # that shows the papers' fixed budgets silences them in its own scoped block
            warnings.simplefilter("error", ConvergenceWarning)
            runpy.run_path(str(path), run_name="__main__")
        assert plt.get_fignums(), f"{path.name} drew no figure"
    finally:
        plt.close("all")
        np.set_printoptions(**printoptions)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_tutorial_has_a_fast_mode_and_a_title(path):
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith('"""'), f"{path.name}: starts with a docstring title"
    assert "FIMLAB_FAST" in text, f"{path.name}: has no fast mode (FIMLAB_FAST)"
