"""``fimlab study``: how well does each approximation match the Fisher along training?

The papers' protocol (docs/papers.md, "Error metrics"): train the network with Adam and, every
``every`` iterations, take the current mini-batch, build its factor batch (Monte-Carlo
Fisher with targets sampled from the model by default, like the papers; ``exact`` or
``empirical`` on request), and measure each approximation against the Fisher *of that same
factor batch* (docs/guide/conventions.rst, "The reference of a study"):

- (E1) relative Frobenius error, per layer block and for the whole network (exact,
  matrix-free, through Gram identities: no block is ever formed);
- (E2) relative distance of the sorted singular values, per block (dense spectra; blocks
  larger than ``e2_max_size`` parameters are skipped, or computed from the Gram matrix of
  the Fisher block and the factor spectra of one-term Kronecker approximations).

Outputs, in ``out``: ``study.csv`` (every measurement), ``summary.csv``, ``study.png``
(E1 top, E2 bottom, averaged over blocks, per method and solver), ``study_blocks.png``
(the same per block), ``config.json``. Every option can come from a TOML file
(``--config``); explicit command-line options win.

Python API: :func:`run_study` takes a dict of the same options and returns a
:class:`StudyResult`. The command-line options are in :mod:`fimlab.study_cli`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._errors import FimlabError, ShapeError, UnknownNameError
from ._validation import check_choice

__all__ = ["DEFAULTS", "run_study", "StudyResult", "load_config"]

#: Default options of ``fimlab study`` (a fast run: about a minute on 2 cores).
DEFAULTS: dict = {
    "model": "mlp",  # or a CNN / deep batch-norm net (fimlab.study_models.MODELS)
    "batchnorm": "fixed",  # networks: batch-norm scales/shifts fixed, or "include"d as blocks
    "dataset": "digits",
    "data_path": None,  # a local copy of the original mnist / fashion-mnist / cifar10 / svhn
    "sizes": None,  # None: the dataset's default ([64, 32, 10] for digits)
    "activation": "tanh",
    "likelihood": None,  # None: the dataset's default (categorical for digits)
    "fisher": "mc",
    "mc_samples": 1,
    "iterations": 200,
    "every": 50,
    "batch_size": 128,
    "lr": 1e-2,
    "methods": None,  # None: fimlab.approx.STUDY_DEFAULT
    "solver": "both",
    "rank": 3,  # rank of the extra rank-r KPSVD when "KPSVD-r" is requested
    "e2_max_size": 2500,
    "seed": 0,
    "out": "fimlab-out/study",
    "plot": True,
    "n_samples": None,  # None: the whole data set (synthetic: 1000)
    # BLAS threads during the study (threadpoolctl). 1 by default: the blocks of the
    # default run are small, and with a second busy core two OpenBLAS threads made the
    # default run 10x slower here (284 s vs 27 s); 0 keeps the BLAS default.
    "threads": 1,
    "two_level": False,  # opt-in: E4/E5 of every method and of each two-level correction
    "damping": 1e-3,  # λ of F + λI in the E4/E5 measurements (two_level only)
    "spectra": False,  # opt-in: densities (fimlab.study_spectra); True, or iterations
    "spectra_probes": 4,
    "spectra_steps": 30,
    "blocks": None,  # None: every layer block and the whole network; else these blocks only
    "smooth": 0.0,  # σ (in iterations) of the Gaussian smoothing of the figure's curves
    "init": "default",  # MLP weight initialisation (fimlab.MLP init=)
    "init_bias": 0.0,  # MLP initial bias value
}

_SOLVERS = ("exact", "paper", "both")
_FISHERS = ("mc", "exact", "empirical")


# -- configuration ---------------------------------------------------------------------
def load_config(path: str | os.PathLike) -> dict:
    """Read a TOML configuration (keys are the option names, with underscores)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"configuration file {str(p)!r} does not exist")
    try:
        with p.open("rb") as fh:
            cfg = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        from ._errors import DataError

        raise DataError(f"configuration file {str(p)!r} is not valid TOML: {exc}") from exc
    cfg = cfg.get("study", cfg)  # accept a [study] table or top-level keys
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def _normalise(cfg: dict) -> dict:
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UnknownNameError(
            f"unknown study option(s) {unknown}; known options: {', '.join(sorted(DEFAULTS))}"
        )
    c = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    check_choice(c["fisher"], _FISHERS, "Fisher type")
    check_choice(c["solver"], _SOLVERS, "solver")
    from ._validation import check_int, check_seed

    c["threads"] = check_int(c["threads"], "option threads", lo=0)
    for key in ("iterations", "every", "batch_size", "mc_samples", "e2_max_size", "rank"):
        # iterations = 0: measure at initialisation only
        c[key] = check_int(c[key], f"option {key}", lo=0 if key == "iterations" else 1)
    if c["n_samples"] is not None:
        c["n_samples"] = check_int(c["n_samples"], "option n_samples", lo=1,
                                   hint="leave it out to use the whole data set")
    c["seed"] = check_seed(c["seed"], "option seed")
    if not (isinstance(c["lr"], (int, float)) and c["lr"] > 0 and math.isfinite(c["lr"])):
        raise ShapeError(f"option lr must be a positive number, got {c['lr']!r}")
    if isinstance(c["sizes"], str):
        c["sizes"] = [int(s) for s in c["sizes"].replace("-", ",").split(",") if s.strip()]
    if isinstance(c["methods"], str):
        c["methods"] = [m.strip() for m in c["methods"].split(",") if m.strip()]
    if isinstance(c["blocks"], (str, int)):
        c["blocks"] = [int(b) for b in str(c["blocks"]).split(",") if b.strip()]
    if c["blocks"] is not None and c["two_level"]:
        raise ShapeError("--blocks measures selected blocks only; --two-level needs the "
                         "whole network: use one or the other")
    if not (isinstance(c["smooth"], (int, float)) and c["smooth"] >= 0):
        raise ShapeError(f"option smooth must be a number >= 0, got {c['smooth']!r}")
    if c["blocks"] is not None and c["spectra"]:
        raise ShapeError("--blocks measures selected blocks only; --spectra needs the "
                         "whole network: use one or the other")
    if c["two_level"] or c["spectra"]:
        from ._validation import check_damping

        c["damping"] = check_damping(c["damping"])
    from .study_models import check_model
    from .study_spectra import check_options

    check_model(cfg, c)  # also the batchnorm option
    check_options(c)
    return c


# -- data --------------------------------------------------------------------------------
def _load_data(c: dict):
    """Return ``(X, y, default_sizes, default_likelihood)`` for the configured data set.

    ``digits``: scikit-learn's bundled 8×8 digits scaled to [0, 1] (1,797 samples) with
    their labels (categorical) — or, for a ``gaussian``/``bernoulli`` likelihood, the
    images themselves as targets (an auto-encoder). ``synthetic``: Gaussian blobs.
    """
    name = check_choice(c["dataset"], ("digits", "synthetic", "mnist", "curves")
                        + _FILE_ONLY, "dataset")
    lik = c.get("likelihood")
    rng = np.random.default_rng([c["seed"], 7])
    if c.get("data_path") is not None or name in _FILE_ONLY:
        X, labels = _load_image_files(c, name)
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        X, labels = d.data / 16.0, d.target
    elif name == "synthetic":
        n = c.get("n_samples") or 1000
        centers = rng.normal(size=(10, 20)) * 2.0
        labels = rng.integers(0, 10, size=n)
        X = centers[labels] + rng.normal(size=(n, 20))
    else:
        from . import datasets

        X, labels = datasets.load_for_study(name, seed=c["seed"], n=c.get("n_samples"))
    if c.get("n_samples"):
        X = X[: c["n_samples"]]
        labels = None if labels is None else labels[: c["n_samples"]]
    d_in = X.shape[1]
    if lik in (None, "categorical") and labels is not None:  # a classifier
        return X, labels.astype(np.int64), [d_in, 32, 10], "categorical"
    if lik == "categorical":
        raise ShapeError(f"dataset {name!r} has no labels: use the bernoulli or gaussian "
                         "likelihood (an auto-encoder)")
    lik = lik or "bernoulli"
    if lik == "bernoulli" and (X.min() < 0 or X.max() > 1):
        raise ShapeError(f"dataset {name!r} is not in [0, 1]: use the gaussian likelihood")
    return X, X.copy(), [d_in, 32, 8, 32, d_in], lik

#: image data sets read only from a user's copy of the original files (``data_path``)
_FILE_ONLY = ("fashion-mnist", "cifar10", "svhn")


def _load_image_files(c: dict, name: str):
    """``(X, labels)`` of the training split of an original image data set read from
    ``c["data_path"]`` (:func:`fimlab.study_models.file_image_dataset`, as ``fimlab train``
    reads them; images flattened row-major, their shape kept in ``c["image_shape"]``)."""
    from ._errors import DataError
    from .study_models import file_image_dataset

    if name not in ("mnist",) + _FILE_ONLY:
        raise DataError(f"--data-path reads the original files of mnist, fashion-mnist, "
                        f"cifar10 or svhn; dataset {name!r} reads none: drop --data-path "
                        "or choose one of those")
    if c.get("data_path") is None:
        raise DataError(f"dataset {name!r} is read from your copy of the original files: "
                        "pass --data-path DIR (fimlab never downloads data); bundled "
                        "alternatives: digits, mnist")
    data, shape = file_image_dataset(name, c["data_path"])
    c["image_shape"] = list(shape)
    n = c.get("n_samples")
    return data.X_train[:n], data.y_train[:n]


def _mlp(c: dict, X, y, sizes0, lik0):
    import fimlab as fl

    sizes = c["sizes"] or sizes0
    lik = c["likelihood"] or lik0
    c["sizes"], c["likelihood"] = sizes, lik
    if sizes[0] != X.shape[1]:
        raise ShapeError(
            f"the network's input size {sizes[0]} does not match the data's {X.shape[1]} "
            f"features (dataset {c['dataset']!r}); use sizes starting with {X.shape[1]}"
        )
    if lik == "categorical" and int(np.max(y)) >= sizes[-1]:
        raise ShapeError(
            f"the data has {int(np.max(y)) + 1} classes but the network has {sizes[-1]} outputs"
        )
    return fl.MLP(sizes, activation=c["activation"], likelihood=lik, seed=c["seed"],
                  init=c["init"], init_bias=c["init_bias"])


# -- the study --------------------------------------------------------------------------
@dataclass
class StudyResult:
    """Rows of measurements and where they were written."""

    config: dict
    rows: list = field(default_factory=list)
    out_dir: Path | None = None
    wall_time: float = 0.0
    not_converged: dict = field(default_factory=dict)
    two_level_rows: list = field(default_factory=list)  # filled by --two-level
    diverged: dict | None = None  # {"iteration", "message"} when the run diverged
    spectra: list = field(default_factory=list)  # filled by --spectra
    skipped: dict = field(default_factory=dict)  # methods with no route on the network

    def summary(self) -> list[dict]:
        """Per method, solver and block: E1/E2 at the last measurement and their means."""
        groups: dict = {}
        for r in self.rows:
            groups.setdefault((r["method"], r["solver"], r["block"]), []).append(r)
        out = []
        for (m, s, b), rs in groups.items():
            e1 = [r["e1"] for r in rs]
            e2 = [r["e2"] for r in rs if r["e2"] == r["e2"]]
            out.append({
                "method": m, "solver": s, "block": b,
                "e1_last": e1[-1], "e1_mean": float(np.mean(e1)),
                "e2_last": e2[-1] if e2 else float("nan"),
                "e2_mean": float(np.mean(e2)) if e2 else float("nan"),
                "build_time_s": float(np.mean([r["build_time_s"] for r in rs])),
            })
        return out


def _method_list(c: dict) -> list[tuple[str, str]]:
    from .approx import APPROXIMATIONS, STUDY_DEFAULT
    from .compare import method_pairs

    names = list(c["methods"]) if c["methods"] else [m for m in STUDY_DEFAULT
                                                       if m in APPROXIMATIONS]
    return method_pairs(names, c["solver"])


def run_study(config: dict | None = None, out_dir: str | os.PathLike | None = None,
              progress: bool = True, verbose: bool = True) -> StudyResult:
    """Run the approximation-quality study (see the module docstring).

    Parameters
    ----------
    config : dict, optional
        Options (keys of :data:`DEFAULTS`); missing keys take the defaults.
    out_dir : path, optional
        Overrides ``config["out"]``; ``None`` there and here writes nothing.
    progress : bool
        Show a progress bar (tqdm, on stderr).
    verbose : bool
        Print the summary table.

    Examples
    --------
    >>> from fimlab.study import run_study
    >>> res = run_study({"iterations": 0, "n_samples": 100, "batch_size": 50,
    ...                  "methods": ["KFAC"], "out": None}, progress=False, verbose=False)
    >>> sorted({r["block"] for r in res.rows}, key=str)
    [0, 1, 'all']
    """
    import contextlib

    c = _normalise(dict(config or {}))
    limit = contextlib.nullcontext()
    if c["threads"]:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=c["threads"])
    with limit:
        return _run_study(c, out_dir, progress, verbose)


def _run_study(c: dict, out_dir, progress: bool, verbose: bool) -> StudyResult:
    from .optim import Adam
    from .study_models import compare_or_skip, gradient_vector, study_factor_batch

    if out_dir is not None:
        c["out"] = str(out_dir)
    X, y, sizes0, lik0 = _load_data(c)
    if c["model"] != "mlp":  # a CNN or deep batch-norm net (fimlab.study_models)
        from .study_models import study_network

        net, X = study_network(c, X, y if lik0 == "categorical" else None)
    else:
        net = _mlp(c, X, y, sizes0, lik0)
    pairs = _method_list(c)
    out = Path(c["out"]) if c["out"] else None
    rng = np.random.default_rng(c["seed"])
    mc_rng = np.random.default_rng([c["seed"], 1])
    adam = Adam(net, c["lr"])  # the papers measured along an Adam run
    N = X.shape[0]
    bs = min(c["batch_size"], N)
    if bs < c["batch_size"]:  # clipped: say so, and record the size used
        warnings.warn(f"batch_size {c['batch_size']} is larger than the {N} samples; using "
                      f"{bs} (recorded as batch_size in config.json)", UserWarning, stacklevel=3)
        c["batch_size_requested"], c["batch_size"] = c["batch_size"], bs
    result = StudyResult(config=c, out_dir=out)

    writer = fh = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(c, indent=2, default=str))
        fh = (out / "study.csv").open("w", newline="")
        writer = csv.DictWriter(fh, fieldnames=[
            "iteration", "loss", "method", "solver", "block", "block_size", "e1", "e2",
            "build_time_s", "converged"])
        writer.writeheader()

    measure_at = set(range(0, c["iterations"] + 1, c["every"])) | {c["iterations"]}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=c["iterations"] + 1, desc="fimlab study", unit="it", file=sys.stderr,
                   mininterval=0.5)
    t_start = time.perf_counter()
    perm = rng.permutation(N)
    pos = 0
    warm: dict = {}
    not_converged: dict = {}
    skipped: dict = {}  # (method, solver) -> reason: no route on this network's blocks
    n_measure = len(measure_at)
    try:
        for it in range(c["iterations"] + 1):
            if pos + bs > N:
                perm, pos = rng.permutation(N), 0
            idx = perm[pos : pos + bs]
            pos += bs
            Xb, yb = X[idx], y[idx]
            try:
                loss, grads = net.loss_and_gradient(Xb, yb)
            except FimlabError as exc:  # e.g. weights that overflowed to inf
                loss, grads = float("nan"), None
                cause = f"{type(exc).__name__}: {exc}"
            else:
                cause = f"the training loss became {loss}"
            if not math.isfinite(loss):
                result.diverged = {"iteration": it, "message": (
                    f"the run diverged at iteration {it} ({cause}); lower lr (now "
                    f"{c['lr']}). The measurements up to there are kept")}
                break
            if it in measure_at:
                batch = study_factor_batch(net, Xb, yb, c, mc_rng)
                table = compare_or_skip(batch, pairs, skipped, c["model"], blocks=c["blocks"],
                                        e2_max_size=c["e2_max_size"], warm_start=warm,
                                        options={"KPSVD-r": {"rank": c["rank"]}})
                warm.update(table.approximations)
                for key in dict.fromkeys((r["method"], r["solver"]) for r in table.rows
                                         if not r["converged"]):
                    not_converged[key] = not_converged.get(key, 0) + 1
                for r in table.rows:
                    row = {"iteration": it, "loss": loss, **r}
                    result.rows.append(row)
                    if writer is not None:
                        writer.writerow(row)
                if c["spectra"]:
                    from .study_spectra import measure

                    measure(result, batch, pairs, warm, c, it, measure_at)
                if c["two_level"]:  # E4/E5 on the same mini-batch (docs/papers.md E4, E5, T1-T4)
                    _two_level_step(result, batch, gradient_vector(net, grads, c["batchnorm"]),
                                    warm, c, it, loss)
                if fh is not None:
                    fh.flush()
            if it < c["iterations"]:
                adam.step_with_gradient(grads)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
    except FimlabError as exc:
        # the state of the run (a Fisher that vanished or overflowed as the network
        # saturated, a singular block, ...) ends it like a divergence: recorded with its
        # iteration, the measurements so far and the summary are written. Bad input and
        # memory refusals are not the run's state: re-raised.
        from ._study_divergence import is_run_state_error

        if not is_run_state_error(exc):
            raise
        result.diverged = {"iteration": it, "message": (
            f"the run diverged at iteration {it} (loss {loss:.6g}): {type(exc).__name__}: "
            f"{exc}; lower lr (now {c['lr']}). The measurements up to there are kept")}
    finally:
        if bar is not None:
            bar.close()
        if fh is not None:
            fh.close()
    result.wall_time = time.perf_counter() - t_start

    summary = result.summary()
    if out is not None:
        if result.diverged is not None:
            (out / "diverged.json").write_text(json.dumps(result.diverged, indent=1))
        with (out / "summary.csv").open("w", newline="") as sfh:
            w = csv.DictWriter(sfh, fieldnames=list(summary[0]) if summary else [
                "method", "solver", "block", "e1_last", "e1_mean", "e2_last", "e2_mean",
                "build_time_s"])
            w.writeheader()
            w.writerows(summary)
        if c["plot"]:
            from .plotting_study import plot_study

            plot_study(result, out)
        if c["two_level"]:
            write_two_level(result, out, plot=c["plot"])
        if result.spectra:
            from .study_spectra import write_spectra

            write_spectra(result.spectra, out, plot=c["plot"])
    result.not_converged = not_converged
    result.skipped = skipped
    if verbose:
        print("\n".join(c.get("architecture", [])) + ("\n" if c["model"] != "mlp" else ""))
        print(format_summary(result))
        print("".join(f"note: {why}\n" for why in skipped.values()), end="")
        for (m, sv), cnt in not_converged.items():
            print(f"note: {m} (solver={sv}) stopped at its iteration budget in {cnt} of "
                  f"{n_measure} measurements (the papers' budget; the 'converged' column of "
                  f"study.csv says where) — solver='exact' is converged")
        if result.diverged is not None:
            print(f"note: {result.diverged['message']}")
        if c["two_level"]:
            print("\n" + format_two_level(result))
        if out is not None:
            print(f"\nwrote {out / 'study.csv'}, {out / 'summary.csv'}"
                  + (f", {out / 'study.png'}, {out / 'study_blocks.png'}" if c["plot"] else ""))
            if c["two_level"]:
                print(f"wrote {out / 'two_level.csv'}"
                      + (f", {out / 'two_level.png'}" if c["plot"] else ""))
        print(f"wall time: {result.wall_time:.1f} s")
    return result


def format_summary(result: StudyResult) -> str:
    """A plain-text table: per method and solver, E1 and E2 of each block at the end of
    the run (mean over the run in parentheses)."""
    c = result.config
    summ = result.summary()
    blocks = sorted({s["block"] for s in summ}, key=lambda b: (isinstance(b, str), b))
    head = (f"fimlab study: {c['dataset']} {'-'.join(map(str, c['sizes']))} {c['activation']} "
            f"{c['likelihood']}, Fisher={c['fisher']}, {c['iterations']} Adam iterations, "
            f"batch {c['batch_size']}\nrelative errors at the last measurement "
            f"(mean over the run)\n")
    cols = [f"E1 block {b}" if b != "all" else "E1 whole" for b in blocks]
    cols += [f"E2 block {b}" for b in blocks if b != "all"]
    w = 19
    lines = [head, f"{'method':<16}{'solver':<8}" + "".join(f"{h:>{w}}" for h in cols)]
    lines.append("-" * len(lines[-1]))
    index = {(s["method"], s["solver"], s["block"]): s for s in summ}
    pairs = list(dict.fromkeys((s["method"], s["solver"]) for s in summ))
    for m, sv in pairs:
        cells = []
        for b in blocks:
            s = index[(m, sv, b)]
            cells.append(f"{s['e1_last']:.4f} ({s['e1_mean']:.4f})")
        for b in blocks:
            if b == "all":
                continue
            s = index[(m, sv, b)]
            cells.append("n/a" if math.isnan(s["e2_last"])
                         else f"{s['e2_last']:.4f} ({s['e2_mean']:.4f})")
        lines.append(f"{m + ' ':<16}{sv:<8}" + "".join(f"{x:>{w}}" for x in cells))
    return "\n".join(lines)


# -- two-level corrections: E4 / E5 (opt-in, --two-level) --------------------------------
TWO_LEVEL_FORMS = ("additive", "residual")


def measure_directions(batch, g, damping: float, approximations: dict | None = None,
                       coarse_spaces=None, forms=TWO_LEVEL_FORMS, fine=None,
                       rule: str = "factor") -> tuple[list[dict], float]:
    """(E4) angle to ``F_λ⁻¹g`` and (E5) energy error of each method's direction on one
    factor batch, and the share of ``‖F‖²_F`` outside the diagonal blocks.

    Parameters
    ----------
    batch : FactorBatch
        The curvature batch; ``F`` is its Fisher (the reference, docs/guide/conventions.rst).
    g : array, shape (P,)
        The gradient.
    damping : float
        ``λ``.
    approximations : dict, optional
        ``label -> block-diagonal approximation`` (``approx.solve(g, λ, rule)``); KFAC of
        ``batch`` when ``None``.
    coarse_spaces : sequence of str, optional
        Two-level corrections of ``fine`` (default: every one of ``fl.COARSE_SPACES``),
        each in every form of ``forms``.
    fine : block-diagonal operator, optional
        The fine level of the two-level methods (default: KFAC of ``batch``).

    Returns
    -------
    rows : list of dict
        ``method``, ``kind`` (``"block-diagonal"`` or ``"two-level"``), ``coarse_space``,
        ``form``, ``e4_deg``, ``e5``, ``e5_best_step`` (E5 of the direction with its
        energy-optimal step length), ``energy_gain`` (T4: E5 of the two-level direction
        minus E5 of its fine level), ``time_s`` (block-diagonal: build + solve;
        two-level: the extra time over its fine level, whose factorisation is cached).
    offdiag_share : float
        ``1 − Σ_l ‖F_ll‖²_F / ‖F‖²_F``: what the block-diagonal methods drop.
    """
    import fimlab as fl

    F = fl.FisherOperator(batch)
    ref = F.solve(g, damping)
    norm2 = float(np.sum(np.asarray(ref) * np.asarray(g)))
    nF = F.frobenius_norm_sq()
    diag = sum(F.diagonal_block(l).frobenius_norm_sq() for l in range(batch.n_layers))
    offdiag = max(0.0, 1.0 - diag / nF) if nF > 0 else float("nan")
    if approximations is None:
        approximations = {"KFAC": fl.KFAC(batch)}
    fine = fine if fine is not None else approximations.get("KFAC", fl.KFAC(batch))
    coarse_spaces = fl.COARSE_SPACES if coarse_spaces is None else coarse_spaces

    def row(method, kind, cs, form, z, t, gain=float("nan")):
        return {"method": method, "kind": kind, "coarse_space": cs, "form": form,
                "e4_deg": fl.direction_angle(z, F, g, damping, reference=ref, degrees=True),
                "e5": fl.energy_error(z, F, g, damping, reference=ref),
                "e5_best_step": fl.energy_error(z, F, g, damping, reference=ref,
                                                rescale=True),
                "energy_gain": gain, "time_s": t}

    rows = []
    for label, A in approximations.items():
        t0 = time.perf_counter()
        z = A.solve(g, damping, rule=rule)
        rows.append(row(label, "block-diagonal", "", "", z, time.perf_counter() - t0))
    for cs in coarse_spaces:
        for form in forms:
            t0 = time.perf_counter()
            T = fl.TwoLevel(fine, coarse_space=cs, batch=batch, form=form, damping=damping,
                            rule=rule)
            z = T.solve(g)
            t = time.perf_counter() - t0
            gain = T.energy_gain / norm2 if norm2 > 0 else float("nan")
            rows.append(row(f"{cs}/{form}", "two-level", cs, form, z, t, gain))
    return rows, offdiag


def _two_level_step(result, batch, g, built: dict, c: dict, it: int, loss: float) -> None:
    """The ``--two-level`` measurements at one iteration (appended to ``result``)."""
    approx = {f"{m} ({s})" if m != "KFAC" else m: A for (m, s), A in built.items()}
    fine = built.get(("KFAC", "exact"))
    from .study_models import coarse_spaces_for

    rows, offdiag = measure_directions(batch, g, c["damping"], approx, fine=fine,
                                       coarse_spaces=coarse_spaces_for(batch))
    for r in rows:
        result.two_level_rows.append({"iteration": it, "loss": loss, **r,
                                      "offdiag_share": offdiag})


_TWO_LEVEL_FIELDS = ["iteration", "loss", "method", "kind", "coarse_space", "form",
                     "e4_deg", "e5", "e5_best_step", "energy_gain", "time_s",
                     "offdiag_share"]


def two_level_summary(result) -> list[dict]:
    """Per method: mean E4 (degrees), mean E5, and E5 relative to KFAC's on the same batch
    (geometric mean of the ratios), over the measured iterations."""
    rows = result.two_level_rows
    kfac = {r["iteration"]: r for r in rows if r["method"] == "KFAC"}
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        ratios = [r["e5"] / kfac[r["iteration"]]["e5"] for r in rs
                  if r["iteration"] in kfac and kfac[r["iteration"]]["e5"] > 0]
        out.append({
            "method": m, "kind": rs[0]["kind"],
            "e4_deg_mean": float(np.mean([r["e4_deg"] for r in rs])),
            "e5_mean": float(np.mean([r["e5"] for r in rs])),
            "e5_best_step_mean": float(np.mean([r["e5_best_step"] for r in rs])),
            "e5_vs_kfac": float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan"),
            "time_s": float(np.mean([r["time_s"] for r in rs])),
        })
    return out


def format_two_level(result) -> str:
    """Plain-text table of :func:`two_level_summary` and the off-diagonal share."""
    rows = result.two_level_rows
    c = result.config
    share = [r["offdiag_share"] for r in rows if r["method"] == "KFAC"]
    lines = [f"two-level corrections of KFAC (λ = {c['damping']:g}, rule factor), mean over "
             f"{len(share)} mini-batches; share of ‖F‖²_F outside the diagonal blocks: "
             f"{np.mean(share):.3f} (min {np.min(share):.3f}, max {np.max(share):.3f})",
             f"{'method':<30}{'E4 angle (deg)':>16}{'E5 energy':>12}{'E5 / KFAC':>11}"
             f"{'E5 best step':>14}{'time (ms)':>11}"]
    lines.append("-" * len(lines[-1]))
    for s in two_level_summary(result):
        lines.append(f"{s['method']:<30}{s['e4_deg_mean']:>16.3f}{s['e5_mean']:>12.4g}"
                     f"{s['e5_vs_kfac']:>11.4f}{s['e5_best_step_mean']:>14.4f}"
                     f"{1e3 * s['time_s']:>11.2f}")
    return "\n".join(lines)


def write_two_level(result, out: Path, plot: bool = True) -> None:
    """``two_level.csv`` (every measurement) and ``two_level.png`` (E4, E5 and the
    off-diagonal share along the run)."""
    with (out / "two_level.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_TWO_LEVEL_FIELDS)
        w.writeheader()
        w.writerows(result.two_level_rows)
    if not plot:
        return
    from .plotting import method_color, plt

    rows = result.two_level_rows
    its = sorted({r["iteration"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    styles = {"additive": "--", "residual": "-", "": "-"}
    cmap = plt.get_cmap("tab10")
    spaces = list(dict.fromkeys(r["coarse_space"] for r in rows if r["coarse_space"]))
    fig, axes = plt.subplots(3, 1, figsize=(8, 9.5), sharex=True)
    for m in methods:
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["iteration"])
        r0 = rs[0]
        if r0["kind"] == "two-level":
            col, lw = cmap(spaces.index(r0["coarse_space"]) % 10), 1.0
        else:
            col, lw = method_color(m), 2.2
        kw = {"color": col, "ls": styles[r0["form"]], "lw": lw, "marker": "o", "ms": 2.5,
              "label": m}
        axes[0].plot([r["iteration"] for r in rs], [r["e4_deg"] for r in rs], **kw)
        axes[1].semilogy([r["iteration"] for r in rs], [r["e5"] for r in rs], **kw)
    share = {r["iteration"]: r["offdiag_share"] for r in rows}
    axes[2].plot(its, [share[i] for i in its], color="k", marker="o", ms=3)
    axes[0].set_ylabel("E4: angle to F_λ⁻¹g (degrees)")
    axes[1].set_ylabel("E5: ‖ζ − F_λ⁻¹g‖²_F_λ / ‖F_λ⁻¹g‖²_F_λ")
    axes[2].set_ylabel("share of ‖F‖²_F outside\nthe diagonal blocks")
    axes[2].set_xlabel("Adam iteration")
    c = result.config
    axes[0].set_title(f"two-level KFAC: {c['dataset']} {'-'.join(map(str, c['sizes']))}, "
                      f"Fisher={c['fisher']}, λ={c['damping']:g} (dashed: additive, solid: "
                      f"residual)", fontsize=9)
    axes[0].legend(fontsize=6, ncol=3)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "two_level.png", dpi=120)
    plt.close(fig)
