"""Shared tiny objects of the fault suite (kept small: the whole suite runs in seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fimlab as fl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny():
    """A 3-4-3 classifier, its factor batch on 12 samples, the Fisher and KFAC."""
    net = fl.MLP([3, 4, 3], activation="tanh", likelihood="categorical", seed=0)
    X = np.random.default_rng(0).normal(size=(12, 3))
    y = np.arange(12) % 3
    b = fl.factor_batch(net, X, y, fisher="exact")
    return {"net": net, "X": X, "y": y, "b": b, "F": fl.FisherOperator(b), "K": fl.KFAC(b)}


def run_cli(*args, env=None, timeout=120, cwd=None):
    """``python -m fimlab ARGS`` with this checkout first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("FIMLAB_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fimlab", *map(str, args)], env=e,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
