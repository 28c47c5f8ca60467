"""``fimlab study --spectra``: spectral densities of the Fisher, of each approximation and
of each preconditioned Fisher, per block and for the whole network (stochastic Lanczos
quadrature, :func:`fimlab.spectral_density`).

Writes ``spectra.csv`` (one row per grid point: iteration, block, method, kind, log10 λ,
density), ``spectra.json`` (per curve: zero mass, exact zero mass and outliers of the
Fisher, moments, or the reason a preconditioned density was left out) and
``spectra_it<k>.png`` (rows: blocks then the whole network; left: the Fisher and the
approximations; right: ``F̃_λ^{-1/2} F_λ F̃_λ^{-1/2}`` for each approximation that is a
symmetric positive definite linear map).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ._errors import ShapeError

__all__ = ["spectra_step", "plot_spectra", "write_spectra", "measure", "check_options",
           "add_argument"]


def check_options(c: dict) -> None:
    """Validate the study options ``spectra``, ``spectra_probes``, ``spectra_steps``."""
    s = c["spectra"]
    if not (isinstance(s, bool) or (isinstance(s, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in s))):
        raise ShapeError(f"option spectra must be true/false or a list of iterations, got {s!r}")
    for key in ("spectra_probes", "spectra_steps"):
        if isinstance(c[key], bool) or not isinstance(c[key], int) or c[key] < 1:
            raise ShapeError(f"option {key} must be a positive integer, got {c[key]!r}")


def add_argument(p) -> None:
    """``--spectra [ITERATIONS]`` of ``fimlab study``."""
    p.add_argument("--spectra", nargs="?", const=True, default=None,
                   type=lambda v: [int(x) for x in v.split(",")],
                   help="draw spectral densities (stochastic Lanczos quadrature) of the "
                   "Fisher, each approximation and each preconditioned Fisher (λ = "
                   "--damping), per block and for the whole network, at the last "
                   "measurement or at the given comma-separated iterations; writes "
                   "spectra.csv, spectra.json and spectra_it<k>.png")


def measure(result, batch, pairs, warm, c: dict, it: int, measure_at) -> None:
    """The study's hook: densities at iteration ``it`` if it is one of the chosen ones
    (``spectra=True``: the last measurement), appended to ``result.spectra``."""
    at = {max(measure_at)} if c["spectra"] is True else set(c["spectra"]) & set(measure_at)
    if it not in at:
        return
    ops: dict = {}
    for n, sv in pairs:  # one operator per method (the first solver)
        ops.setdefault(n, warm[(n, sv)])
    result.spectra += spectra_step(batch, ops, iteration=it, damping=c["damping"],
                                   probes=c["spectra_probes"], steps=c["spectra_steps"],
                                   seed=c["seed"])


def _block_of(op, l):
    if l == "all":
        return op
    if hasattr(op, "diagonal_block"):
        return op.diagonal_block(l)
    return op.blocks[l]


def spectra_step(batch, approximations: dict, *, iteration: int, damping: float,
                 probes: int, steps: int, seed: int, outliers: int = 5) -> list[dict]:
    """Densities for one measurement: returns one record per curve."""
    from .curvature import FisherOperator
    from .spectral import spectral_density

    F = FisherOperator(batch)
    records = []
    blocks = list(range(batch.n_layers)) + ["all"]
    rng = np.random.default_rng([seed, iteration, 0x5350])
    for l in blocks:
        Fl = _block_of(F, l)
        st = min(steps, Fl.shape[0])
        d = spectral_density(Fl, probes=probes, steps=st, rng=rng, outliers=outliers)
        records.append(_record(d, iteration, l, "Fisher", "density"))
        for name, op in approximations.items():
            opl = _block_of(op, l)
            d = spectral_density(opl, probes=probes, steps=st, rng=rng)
            records.append(_record(d, iteration, l, name, "density"))
            try:
                d = spectral_density(Fl, probes=probes, steps=st, rng=rng, preconditioner=opl,
                                     damping=damping, rule="exact")
            except ShapeError as exc:
                records.append({"iteration": iteration, "block": l, "method": name,
                                "kind": "preconditioned", "skipped": str(exc)})
                continue
            records.append(_record(d, iteration, l, name, "preconditioned"))
    return records


def _record(  # xp: host results written to JSON
        d, it, block, method, kind):
    return {"iteration": it, "block": block, "method": method, "kind": kind,
            "grid": d.grid.tolist(), "density": d.density.tolist(),
            "zero_mass": d.zero_mass, "exact_zero_mass": d.exact_zero_mass,
            "outliers": None if d.outliers is None else d.outliers.tolist(),
            "moment1": d.moment(1), "moment2": d.moment(2),
            "lambda_min": float(np.min(d.nodes)), "lambda_max": float(np.max(d.nodes)),
            "inner_product": d.inner_product, "probes": d.info["probes"],
            "steps": d.info["steps"]}


def write_spectra(records: list[dict], out: Path, plot: bool = True) -> list[Path]:
    """``spectra.csv``, ``spectra.json`` and one PNG per iteration into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "spectra.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["iteration", "block", "method", "kind", "log10_lambda", "density"])
        for r in records:
            for x, y in zip(r.get("grid", []), r.get("density", [])):
                w.writerow([r["iteration"], r["block"], r["method"], r["kind"], f"{x:.6g}",
                            f"{y:.6g}"])
    summary = [{k: v for k, v in r.items() if k not in ("grid", "density")} for r in records]
    (out / "spectra.json").write_text(json.dumps(summary, indent=1, default=str))
    paths = [out / "spectra.csv", out / "spectra.json"]
    if plot:
        for it in sorted({r["iteration"] for r in records}):
            p = out / f"spectra_it{it}.png"
            plot_spectra([r for r in records if r["iteration"] == it], p)
            paths.append(p)
    return paths


def plot_spectra(  # xp: plotting host arrays
        records: list[dict], path) -> None:
    """One row per block (then the whole network): densities (left), preconditioned
    densities (right); the Fisher in black, the approximations in their fixed colours."""
    from .plotting import method_color, plt

    blocks = list(dict.fromkeys(r["block"] for r in records))
    fig, axes = plt.subplots(len(blocks), 2, figsize=(11, 2.2 * len(blocks)), squeeze=False)
    for i, bl in enumerate(blocks):
        for j, kind in enumerate(("density", "preconditioned")):
            ax = axes[i, j]
            for r in records:
                if r["block"] != bl or r["kind"] != kind or "grid" not in r:
                    continue
                col = "k" if r["method"] == "Fisher" else method_color(r["method"])
                lab = r["method"]
                if r["method"] == "Fisher" and r["zero_mass"] > 0.005:
                    lab += f" (zero mass {r['zero_mass']:.2f})"
                ax.plot(r["grid"], r["density"], color=col, lw=2.0 if col == "k" else 1.2,
                        label=lab)
                if r.get("outliers"):
                    ax.plot(np.log10(np.maximum(r["outliers"], 1e-300)),
                            np.zeros(len(r["outliers"])), "k|", ms=10)
            ax.set_yscale("symlog", linthresh=1e-3)
            name = "whole network" if bl == "all" else f"block {bl}"
            ax.set_title(f"{name}: " + ("spectral density" if kind == "density" else
                                        "F̃_λ^{-1/2} F_λ F̃_λ^{-1/2}"), fontsize=9)
            ax.set_xlabel("log10 eigenvalue", fontsize=8)
            if i == 0:
                ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
