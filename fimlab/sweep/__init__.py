"""``fimlab sweep``: grid and random searches over training options, locally or on Dask.

The papers chose every learning rate and damping by grid search (4 x 4 grids of learning
rate and damping, per method and per data set, the papers' experiments), over several
seeds and batch sizes: hundreds of training runs. This module runs such a search, each
point one call of a *runner* (by default :func:`fimlab.train.run_training`), either

- in-process, one run after the other (``workers=1``, for debugging),
- on an embedded :class:`dask.distributed.LocalCluster` sized to the machine (the default:
  one worker *process* per core, one thread per worker), or
- on an existing Dask cluster (``scheduler="tcp://host:8786"``).

Each run pins its BLAS (and Numba) thread count with :mod:`threadpoolctl`, so a run gives
the same numbers whichever way it was scheduled.

Results stream to one CSV file, one row per run (its options, final and best losses, wall
time, status and error message), appended and flushed as each run finishes: killing a
sweep loses at most the runs in flight, and re-running the same command skips the points
already in the file (each row is keyed by a hash of the run's full option set). A run that
raises, or whose loss diverges, is recorded with its message and does not stop the sweep.
Every row carries the hash of the sweep's configuration, and a sidecar file
``<results>.sweep.json`` holds the configuration itself; a results file written by a
different configuration is refused, with the options that differ.

:func:`best_settings` and :func:`plot_heatmaps` (``fimlab sweep --report``) turn the table
into the papers' tables of best hyper-parameters and one heat-map per method (learning rate
x damping, colour = final loss).

The configuration file (TOML)::

    [sweep]
    name = "kpsvd-digits"        # names the default results file
    search = "grid"              # or "random"
    samples = 16                 # random search: points drawn per [[grid]] block
    seed = 0                     # random search: the generator's seed

    [base]                       # options shared by every run (fimlab train options)
    benchmark = "digits-small"
    epochs = 10

    [[grid]]                     # a block: the Cartesian product of its lists;
    method = ["kfac", "kpsvd"]   # several blocks are concatenated (e.g. the
    lr = [1e-3, 3e-3, 1e-2, 3e-2]   # first-order baselines have no damping)
    damping = [1e-3, 1e-2, 1e-1, 1.0]

    [[grid]]
    method = ["adam"]
    lr = [1e-4, 1e-3, 1e-2, 1e-1]

    [fast]                       # --fast: a tiny version, run by the test suite
    base = { epochs = 1 }        # merged into [base]
    grid = [{ method = ["kfac"], lr = [1e-2, 1e-1], damping = [1e-2, 1e-1] }]  # replaces

In random search a list means "choose uniformly" and a table draws from a distribution:
``{ log_uniform = [lo, hi] }``, ``{ uniform = [lo, hi] }``, ``{ int_uniform = [lo, hi] }``
(inclusive).

Layout: :mod:`~fimlab.sweep.spec` (the configuration and its expansion),
:mod:`~fimlab.sweep.execute` (one run), :mod:`~fimlab.sweep.results` (the results file
and resumption), :mod:`~fimlab.sweep.engine` (:func:`run_sweep`, in-process or on Dask),
:mod:`~fimlab.sweep.tables`, :mod:`~fimlab.sweep.plots`, :mod:`~fimlab.sweep.report`
(tables, heat-maps, ``--report``) and :mod:`~fimlab.sweep.cli`; every name is importable
from ``fimlab.sweep``.
"""

from __future__ import annotations

from .cli import (  # noqa: F401
    add_arguments,
    run,
)
from .engine import (  # noqa: F401
    SweepSummary,
    connect,
    machine_workers,
    run_sweep,
)
from .execute import (  # noqa: F401
    check_runs,
    execute_run,
)
from .plots import (  # noqa: F401
    plot_heatmaps,
)
from .report import (  # noqa: F401
    report,
)
from .results import (  # noqa: F401
    read_results,
)
from .spec import (  # noqa: F401
    DEFAULT_RUNNER,
    KEY_COLUMNS,
    RESULT_COLUMNS,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_OK,
    TAIL_COLUMNS,
    ResultsMismatchError,
    SchedulerUnreachableError,
    SweepConfigError,
    SweepSpec,
    default_results_path,
    expand_options,
    load_spec,
    parse_set,
    run_id,
    spec_from_dict,
)
from .tables import (  # noqa: F401
    best_settings,
    setting_table,
)

__all__ = [
    "SweepConfigError",
    "ResultsMismatchError",
    "SchedulerUnreachableError",
    "SweepSpec",
    "SweepSummary",
    "load_spec",
    "spec_from_dict",
    "run_id",
    "check_runs",
    "run_sweep",
    "read_results",
    "best_settings",
    "plot_heatmaps",
    "report",
    "add_arguments",
    "run",
]
