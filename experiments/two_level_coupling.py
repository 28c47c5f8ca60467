"""Where does layer coupling matter? Two-level KFAC on deep linear vs auto-encoder-like MLPs.

The two-level paper (PAPERS.md, "Two-level KFAC") concludes that restoring inter-layer
interactions with a coarse correction hardly helps KFAC in general, and that the one case
where it does is a very deep linear network. This script measures it directly, on the
mini-batches of a short Adam run, for four networks:

- ``deep-linear``: many narrow linear layers (8 units, 16 layers; Gaussian likelihood) on a
  synthetic linear regression — strongly coupled layers;
- ``deep-tanh``: the same architecture and data with tanh units — depth without linearity;
- ``autoencoder``: 64-32-16-8-16-32-64, ReLU, Bernoulli output, on the 8×8 digits (a
  scaled-down version of the papers' auto-encoders);
- ``mlp``: 64-32-10 tanh, categorical, on the digits (the default ``fimlab study`` MLP).

For each network, damping ``λ`` and mini-batch, :func:`fimlab.study.measure_directions`
gives, for KFAC and for each coarse space × form of the two-level correction of KFAC,
(E4) the angle to the exact damped natural gradient ``F_λ⁻¹g`` of the curvature batch and
(E5) the relative energy error (PAPERS.md E4, E5, T1-T4), plus the share of ``‖F‖²_F``
outside the diagonal blocks. Outputs (``--out``): ``two_level_coupling.csv`` (every
measurement), ``two_level_coupling.md`` (tables), ``two_level_coupling.png``.

Run::

    python experiments/two_level_coupling.py            # full: ~1 min on 2 cores
    python experiments/two_level_coupling.py --fast     # seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

import fimlab as fl
from fimlab.approx import APPROXIMATIONS, build_approximation
from fimlab.study import measure_directions

CASES = ("deep-linear", "deep-tanh", "autoencoder", "mlp")


def make_case(name: str, depth: int, seed: int):
    """``(net, X, y)`` of a case (data on the host, float64)."""
    if name in ("deep-linear", "deep-tanh"):
        rng = np.random.default_rng([seed, 11])
        D = 8
        X = rng.normal(size=(2000, D))
        W = rng.normal(size=(D, D)) / np.sqrt(D)
        y = X @ W + 0.1 * rng.normal(size=(2000, D))
        act = "linear" if name == "deep-linear" else "tanh"
        return fl.MLP([D] * (depth + 1), activation=act, likelihood="gaussian", seed=seed), X, y
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.data / 16.0
    if name == "autoencoder":
        return fl.MLP([64, 32, 16, 8, 16, 32, 64], activation="relu", likelihood="bernoulli",
                      seed=seed), X, X.copy()
    return fl.MLP([64, 32, 10], activation="tanh", likelihood="categorical", seed=seed), X, \
        d.target.astype(np.int64)


def run_case(name: str, args) -> list[dict]:
    net, X, y = make_case(name, args.depth, args.seed)
    rng = np.random.default_rng([args.seed, 1])
    mc_rng = np.random.default_rng([args.seed, 2])
    adam = fl.Adam(net, args.lr)
    m = args.batch_size
    for _ in range(args.adam_steps):
        idx = rng.choice(X.shape[0], m, replace=False)
        _, grads = net.loss_and_gradient(X[idx], y[idx])
        adam.step_with_gradient(grads)
    rows = []
    for k in range(args.batches):
        idx = rng.choice(X.shape[0], m, replace=False)
        loss, grads = net.loss_and_gradient(X[idx], y[idx])
        g = net.flatten(grads)
        batch = fl.factor_batch(net, X[idx], y[idx], fisher=args.fisher, rng=mc_rng)
        fine = build_approximation(args.fine, batch)
        for lam in args.dampings:
            res, offdiag = measure_directions(batch, g, lam, {args.fine: fine}, fine=fine)
            for r in res:
                rows.append({"case": name, "sizes": "-".join(map(str, net.layer_sizes)),
                             "fisher": args.fisher, "damping": lam, "batch": k, "loss": loss,
                             **r, "offdiag_share": offdiag})
    return rows


def summarise(rows: list[dict], base: str = "KFAC") -> list[dict]:
    """Per case, damping and method: means over the mini-batches; E5 relative to the fine
    level ``base`` as the geometric mean of the per-batch ratios; ΔE4 = E4 − E4(base), mean
    of differences."""
    out = []
    keys = list(dict.fromkeys((r["case"], r["damping"], r["method"]) for r in rows))
    kfac = {(r["case"], r["damping"], r["batch"]): r for r in rows if r["method"] == base}
    for case, lam, method in keys:
        rs = [r for r in rows if (r["case"], r["damping"], r["method"]) == (case, lam, method)]
        ks = [kfac[(case, lam, r["batch"])] for r in rs]
        out.append({
            "case": case, "damping": lam, "method": method, "kind": rs[0]["kind"],
            "e4_deg": float(np.mean([r["e4_deg"] for r in rs])),
            "d_e4_deg": float(np.mean([r["e4_deg"] - k["e4_deg"] for r, k in zip(rs, ks)])),
            "e5": float(np.mean([r["e5"] for r in rs])),
            "e5_vs_kfac": float(np.exp(np.mean([np.log(r["e5"] / k["e5"])
                                                for r, k in zip(rs, ks)]))),
            "e5_best_step": float(np.mean([r["e5_best_step"] for r in rs])),
            "offdiag_share": float(np.mean([r["offdiag_share"] for r in rs])),
            "n": len(rs),
        })
    return out


def markdown(summary: list[dict], args) -> str:
    cases = list(dict.fromkeys(s["case"] for s in summary))
    lams = list(dict.fromkeys(s["damping"] for s in summary))
    idx = {(s["case"], s["damping"], s["method"]): s for s in summary}
    methods = list(dict.fromkeys(s["method"] for s in summary))
    base = args.fine
    lines = [f"Fisher = {args.fisher}, {args.adam_steps} Adam steps (lr {args.lr:g}), "
             f"{args.batches} mini-batch(es) of {args.batch_size}, fine level {base} with the "
             "damping rule 'factor'. E4: angle to F_λ⁻¹g in degrees (mean); "
             f"E5 / {base}: geometric mean over the mini-batches of the ratio of energy "
             f"errors (< 1: the correction helps); the {base} rows give E4 and E5 "
             "themselves, and E5 of its direction with the energy-optimal step length.", ""]
    lines.append("| case | sizes | share of ‖F‖²_F off the diagonal blocks |")
    lines.append("|---|---|---|")
    for c in cases:
        s = idx[(c, lams[0], base)]
        sizes = next(r for r in args._rows if r["case"] == c)["sizes"]
        lines.append(f"| {c} | {sizes} | {s['offdiag_share']:.3f} |")
    for lam in lams:
        lines += ["", f"**λ = {lam:g}**", ""]
        head = "| method | " + " | ".join(f"{c}: E4 | {c}: E5 / {base}" for c in cases) + " |"
        lines.append(head)
        lines.append("|---" * (1 + 2 * len(cases)) + "|")
        for m in methods:
            cells = []
            for c in cases:
                s = idx[(c, lam, m)]
                if m == base:
                    cells += [f"{s['e4_deg']:.1f}",
                              f"E5 = {s['e5']:.3g} (best step {s['e5_best_step']:.3g})"]
                else:
                    cells += [f"{s['e4_deg']:.1f} ({s['d_e4_deg']:+.1f})",
                              f"{s['e5_vs_kfac']:.3f}"]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path, lam: float, base: str = "KFAC") -> None:
    from fimlab.plotting import plt

    cases = list(dict.fromkeys(s["case"] for s in summary))
    idx = {(s["case"], s["damping"], s["method"]): s for s in summary}
    methods = [s["method"] for s in summary
               if s["case"] == cases[0] and s["damping"] == lam and s["kind"] == "two-level"]
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), gridspec_kw={"height_ratios": [3, 3, 1.4]})
    x = np.arange(len(methods))
    w = 0.8 / len(cases)
    cmap = plt.get_cmap("tab10")
    for j, c in enumerate(cases):
        ratios = [idx[(c, lam, m)]["e5_vs_kfac"] for m in methods]
        d4 = [idx[(c, lam, m)]["d_e4_deg"] for m in methods]
        axes[0].bar(x + (j - (len(cases) - 1) / 2) * w, ratios, w, color=cmap(j), label=c)
        axes[1].bar(x + (j - (len(cases) - 1) / 2) * w, d4, w, color=cmap(j), label=c)
    axes[0].set_yscale("log")
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel(f"E5 two-level / E5 {base}\n(< 1: closer to F_λ⁻¹g in energy)")
    axes[1].axhline(0.0, color="k", lw=0.8)
    axes[1].set_ylabel(f"E4 two-level − E4 {base}\n(degrees; < 0: better)")
    for ax in axes[:2]:
        ax.set_xticks(x)
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"two-level corrections of {base}, λ = {lam:g}")
    shares = [idx[(c, lam, base)]["offdiag_share"] for c in cases]
    axes[2].barh(np.arange(len(cases)), shares, color=[cmap(j) for j in range(len(cases))])
    axes[2].set_yticks(np.arange(len(cases)))
    axes[2].set_yticklabels(cases, fontsize=8)
    axes[2].set_xlim(0, 1)
    axes[2].set_xlabel("share of ‖F‖²_F outside the diagonal blocks (what block-diagonal "
                       "methods drop)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--fast", action="store_true", help="a few seconds: 8 layers, 20 Adam "
                   "steps, one mini-batch, λ = 1e-2")
    p.add_argument("--out", default="fimlab-out/two_level_coupling")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--fisher", default="mc", choices=["mc", "exact", "empirical"])
    p.add_argument("--fine", default="KFAC", choices=list(APPROXIMATIONS),
                   help="the fine level (solver 'exact')")
    p.add_argument("--dampings", default="1e-3,1e-2,1e-1")
    p.add_argument("--depth", type=int, default=16, help="layers of the deep networks")
    p.add_argument("--adam-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--plot-damping", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.fast:
        args.depth, args.adam_steps, args.batches, args.dampings = 8, 20, 1, "1e-2"
        args.batch_size = 64
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in args.cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    args.dampings = [float(v) for v in args.dampings.split(",")]
    if args.plot_damping not in args.dampings:
        args.plot_damping = args.dampings[len(args.dampings) // 2]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for c in args.cases:
        rows += run_case(c, args)
        print(f"{c}: done ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    args._rows = rows
    with (out / "two_level_coupling.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows, args.fine)
    md = markdown(summary, args)
    cmd = "python experiments/two_level_coupling.py " + " ".join(argv if argv is not None
                                                                 else sys.argv[1:])
    (out / "two_level_coupling.md").write_text(f"Command: `{cmd.strip()}`\n\n" + md)
    plot(summary, out / "two_level_coupling.png", args.plot_damping, args.fine)
    print(md)
    print(f"wrote {out}/two_level_coupling.{{csv,md,png}} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
