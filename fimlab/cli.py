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
    "study": ("fimlab.study_cli", "measure how well each approximation matches the Fisher along a training run"),
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
    parser.add_argument("--debug", action="store_true", default=False,
                        help="print the full traceback of an error (also FIMLAB_DEBUG=1)")
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
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="print the full traceback of an error (also FIMLAB_DEBUG=1)")
        p.set_defaults(_module=module, _parser=p)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        return 0
    if extra:  # the usage of the subcommand, not the top-level one
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    del args._parser
    from ._cli_errors import debug_enabled, run_command

    debug = debug_enabled(args)
    if hasattr(args, "debug"):
        del args.debug  # not an option of the subcommand itself

    def _run(a):
        return importlib.import_module(a._module).run(a)

    return run_command(args.command, _run, args, debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
