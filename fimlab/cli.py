"""The ``fimlab`` command line: ``fimlab study | train | sweep | bench``.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches (and imports the module lazily, so that
``fimlab --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "study": ("fimlab.study", "measure how well each approximation matches the Fisher along a training run"),
    "train": ("fimlab.train", "compare optimizers (natural gradient with each approximation, SGD, Adam)"),
    "sweep": ("fimlab.sweep", "grid/random search over training options, locally or on a Dask cluster"),
    "bench": ("benchmarks.suite", "the performance suite (time, GFLOP/s, ratios, peers)"),
}


def _available(module: str) -> bool:
    try:
        importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    return importlib.util.find_spec(module) is not None


def build_parser(argv=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fimlab",
        description="fimlab: the Fisher Information Matrix of neural networks, its KFAC, "
        "KPSVD and two-level approximations, measured and used for natural-gradient training.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fimlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    if argv:
        chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in SUBCOMMANDS.items():
        if not _available(module):
            continue
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if chosen == name:  # import only the module that will run
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    mod = importlib.import_module(args._module)
    return int(mod.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
