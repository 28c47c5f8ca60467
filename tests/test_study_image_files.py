"""`fimlab study` and `fimlab train` on a user's copy of the original image data sets
(CIFAR-10, Fashion-MNIST, MNIST IDX; `data_path`): files written here in each original
format, the pixels the study and the training run see checked against the bytes written
(the formats' index formulas), the networks built for the files' image shape, and the
one-line errors."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
from test_image_datasets import _cifar_batches, _write_idx_dir

import fimlab as fl
from fimlab import cli
from fimlab.study import _load_data, _normalise, run_study
from fimlab.study_models import build_network


def _write_cifar(tmp_path, n=4):
    batches = _cifar_batches(n=n)
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for nm, (X, y) in batches.items():
        (py / nm).write_bytes(pickle.dumps({b"data": X, b"labels": y}, protocol=2))
    return batches


def test_study_reads_cifar10_pixels_from_the_files(tmp_path):
    batches = _write_cifar(tmp_path)
    c = _normalise({"model": "cuda-convnet-fast", "dataset": "cifar10",
                    "data_path": str(tmp_path)})
    X, y, _, lik = _load_data(c)
    assert lik == "categorical" and X.shape == (20, 3 * 32 * 32)
    assert c["image_shape"] == [3, 32, 32]
    rows, labels = batches["data_batch_3"]
    img = X.reshape(-1, 3, 32, 32)
    for n, ch, i, j in [(0, 0, 0, 0), (2, 1, 17, 5), (3, 2, 31, 31)]:
        # a CIFAR row: 1,024 red values, then green, then blue, each row-major 32 x 32
        assert img[8 + n, ch, i, j] == rows[n, ch * 1024 + i * 32 + j] / 255.0
    np.testing.assert_array_equal(y[8:12], labels)


def test_study_runs_the_cnn_on_cifar10_files(tmp_path):
    _write_cifar(tmp_path)
    out = tmp_path / "out"
    res = run_study({"model": "cuda-convnet-fast", "dataset": "cifar10",
                     "data_path": str(tmp_path), "iterations": 1, "every": 1,
                     "batch_size": 8, "methods": ["KFAC"], "solver": "exact",
                     "plot": False, "out": str(out)}, progress=False, verbose=False)
    # the network was built for 3 x 32 x 32 inputs: its first conv block sees
    # 3·3·3 + 1 = 28 patch entries at 32 x 32 positions (padding 1)
    net = build_network("cuda-convnet-fast", (3, 32, 32))
    assert net.shapes[0] == (8, 28)
    assert any("conv 8x28" in line for line in res.config["architecture"])
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert rows and all(0 < float(r["e1"]) < 1.5 for r in rows)
    assert {r["block"] for r in rows} >= {"0", "1", "2", "3"}


def test_study_fashion_mnist_deep_bn(tmp_path):
    arrays = _write_idx_dir(tmp_path, n_train=9, n_test=3)
    c = _normalise({"model": "deep-bn-fast", "dataset": "fashion-mnist",
                    "data_path": str(tmp_path), "n_samples": 6})
    X, y, _, _ = _load_data(c)
    assert X.shape == (6, 784)
    np.testing.assert_array_equal(X[4].reshape(28, 28),
                                  arrays["train-images-idx3-ubyte"][4] / 255.0)
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"][:6])


@pytest.mark.parametrize("cfg, err, match", [
    ({"dataset": "cifar10"}, fl.DataError, "--data-path"),
    ({"dataset": "svhn", "model": "small-resnet"}, fl.DataError, "never downloads"),
    ({"dataset": "digits", "data_path": "/nowhere"}, fl.DataError, "reads none"),
    ({"dataset": "imagenet", "data_path": "/nowhere"}, fl.UnknownNameError, "imagenet"),
])
def test_study_image_file_errors(cfg, err, match):
    with pytest.raises(err, match=match):
        run_study({**cfg, "out": None, "iterations": 0}, progress=False, verbose=False)


def test_study_cli_missing_files_is_one_line(tmp_path, capsys):
    rc = cli.main(["study", "--model", "cuda-convnet", "--dataset", "cifar10",
                   "--data-path", str(tmp_path / "none"), "--no-progress"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_deep_bn_fashion64_reads_the_idx_files(tmp_path):
    arrays = _write_idx_dir(tmp_path, n_train=24, n_test=6)
    out = tmp_path / "t"
    rc = cli.main(["train", "--benchmark", "deep-bn-fashion64", "--methods", "KFAC",
                   "--iterations", "2", "--batch-size", "8", "--data-path", str(tmp_path),
                   "--out", str(out), "--no-progress", "--no-plot", "--threads", "1"])
    assert rc == 0
    r = list(csv.DictReader((out / "summary.csv").open()))[0]
    assert r["status"] == "ok" and np.isfinite(float(r["final_train_loss"]))
    res = json.loads((out / "KFAC" / "seed0" / "result.json").read_text())
    assert res["config"]["dataset"] == "fashion-mnist"
    assert res["n_params"] == build_network("deep-bn-fashion64", (784,)).n_params
    from fimlab.study_models import file_image_dataset

    data, shape = file_image_dataset("fashion-mnist", tmp_path)
    assert shape == (1, 28, 28) and data.image_shape == (28, 28)
    np.testing.assert_array_equal(data.X_val[5].reshape(28, 28),
                                  arrays["t10k-images-idx3-ubyte"][5] / 255.0)
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])


def test_train_cuda_convnet_on_cifar10_files(tmp_path):
    _write_cifar(tmp_path, n=3)
    from fimlab.train import run_training

    res = run_training({"benchmark": "cuda-convnet", "method": "KFAC", "iterations": 1,
                        "batch_size": 5, "data_path": str(tmp_path)})
    assert res["status"] == "ok"
    assert res["n_params"] == build_network("cuda-convnet", (3, 32, 32)).n_params


@pytest.mark.parametrize("cfg, match", [
    ({"benchmark": "cuda-convnet", "dataset": "cifar10"}, "give data_path too"),
    ({"benchmark": "cuda-convnet-fast", "data_path": "/x"}, "name the data set"),
    ({"benchmark": "cuda-convnet", "data_path": "/x", "dataset": "imagenet"}, "imagenet"),
    ({"benchmark": "deep-bn-fast", "architecture": [64, 10]}, "fixed network"),
])
def test_train_image_file_errors(cfg, match):
    from fimlab.train import run_training

    with pytest.raises(fl.FimlabError, match=match):
        run_training({**cfg, "method": "KFAC", "iterations": 1})
