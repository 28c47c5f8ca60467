"""``python -m benchmarks [--quick | --tiny | --full] ...`` (same as ``fimlab bench``)."""

import argparse
import sys

from .suite import add_arguments, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="fimlab's performance suite")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
