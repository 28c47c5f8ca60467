"""``fimlab sweep``: grid and random searches over training options, locally or on Dask.

The papers chose every learning rate and damping by grid search (4 x 4 grids of learning
rate and damping, per method and per data set, PAPERS.md "The experiments"), over several
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
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import DivergenceError, FimlabError, UnknownNameError

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

DEFAULT_RUNNER = "fimlab.train:run_training"

#: the columns a runner's result fills (besides the options and the bookkeeping columns)
RESULT_COLUMNS = ("final_train_loss", "best_val_loss", "final_val_loss", "epochs_done")
#: bookkeeping columns, first in each row
KEY_COLUMNS = ("run_id", "config_hash")
#: last columns of each row
TAIL_COLUMNS = ("status", *RESULT_COLUMNS, "wall_time", "error")

STATUS_OK, STATUS_DIVERGED, STATUS_FAILED = "ok", "diverged", "failed"
_DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform")


# --------------------------------------------------------------------------- errors
class SweepConfigError(FimlabError, ValueError):
    """A sweep configuration that cannot be run (empty grid, malformed table, ...)."""


class ResultsMismatchError(FimlabError, ValueError):
    """A results file written by a different sweep configuration (or not by a sweep)."""


class SchedulerUnreachableError(FimlabError, ConnectionError):
    """The Dask scheduler address given with ``--scheduler`` did not answer."""


# --------------------------------------------------------------------- the spec
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:n]


def run_id(options: Mapping[str, Any]) -> str:
    """Hash of a run's full option set: the key by which a sweep resumes.

    Two runs with the same options (same values *and* types: ``1`` is not ``1.0``) have the
    same id, whatever order the options were written in, and whether a nested option is
    written as a table or by its dotted name (the id hashes :func:`expand_options`).
    """
    return _digest(expand_options(options))


@dataclass(frozen=True)
class SweepSpec:
    """A resolved sweep: fixed options, the grid blocks, how to search them.

    Build it with :func:`load_spec` (from a TOML file) or :func:`spec_from_dict`.

    Attributes
    ----------
    name : str
        Names the default results file.
    base : dict
        Options shared by every run.
    grids : list of dict
        Blocks ``{option: [values...]}`` (random search: values may be distributions).
    search : {"grid", "random"}
    samples : int
        Random search: points drawn per block.
    seed : int
        Random search: seed of the ``numpy.random.Generator`` that draws them.
    runner : str
        ``"module:function"`` called for each run; default ``fimlab.train:run_training``.
    fast : bool
        Whether the ``[fast]`` overrides were applied.
    results : str or None
        The results file named by the configuration, if any.
    """

    name: str
    base: dict
    grids: list
    search: str = "grid"
    samples: int = 0
    seed: int = 0
    runner: str = DEFAULT_RUNNER
    fast: bool = False
    results: str | None = None
    source: str = field(default="<dict>", compare=False)
    overrides: dict = field(default_factory=dict, compare=False)

    # identity -------------------------------------------------------------
    def identity(self) -> dict:
        """What the configuration hash covers (everything that changes the runs)."""
        out = {"base": self.base, "grids": self.grids, "search": self.search,
               "runner": self.runner}
        if self.search == "random":
            out.update(samples=self.samples, seed=self.seed)
        return out

    @property
    def config_hash(self) -> str:
        """Hash of :meth:`identity`; carried by every row of the results file."""
        return _digest(self.identity())

    # points ---------------------------------------------------------------
    def points(self) -> list[dict]:
        """The varied options of each run, in a fixed order, duplicates removed."""
        pts: list[dict] = []
        if self.search == "grid":
            for block in self.grids:
                keys = list(block)
                for values in itertools.product(*(block[k] for k in keys)):
                    pts.append(dict(zip(keys, values, strict=True)))
        else:
            import numpy as np

            rng = np.random.default_rng(self.seed)
            for block in self.grids:
                for _ in range(self.samples):
                    pts.append({k: _draw(v, rng) for k, v in block.items()})
        seen, unique = set(), []
        for p in pts:
            rid = run_id({**self.base, **p})
            if rid not in seen:
                seen.add(rid)
                unique.append(p)
        return unique

    def runs(self) -> list[dict]:
        """The full option set of each run: ``base`` updated by the point."""
        return [{**self.base, **p} for p in self.points()]

    def varied_keys(self) -> list[str]:
        """Options that some block varies, in first-seen order."""
        keys: list[str] = []
        for block in self.grids:
            keys += [k for k in block if k not in keys]
        return keys

    def option_columns(self) -> list[str]:
        """The option columns of the results table: varied options, then fixed ones."""
        varied = self.varied_keys()
        return varied + [k for k in self.base if k not in varied]

    def columns(self) -> list[str]:
        """Every column of the results table, in order."""
        return [*KEY_COLUMNS, *self.option_columns(), *TAIL_COLUMNS]


def _draw(spec, rng):
    if isinstance(spec, list):
        return _plain(spec[int(rng.integers(len(spec)))])
    (kind, (lo, hi)), = spec.items()
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    return int(rng.integers(int(lo), int(hi) + 1))


def _plain(v):
    """numpy scalars -> Python scalars (so hashing and JSON see the same thing)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def _check_distribution(key: str, spec: Any, where: str) -> None:
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise SweepConfigError(
            f"{where}: option {key!r} must be a list of values"
            + (" or a distribution table such as { log_uniform = [1e-4, 1e-1] }"
               if where.startswith("random") else "")
            + f", got {spec!r}"
        )
    (kind, bounds), = spec.items()
    if kind not in _DISTRIBUTIONS:
        raise SweepConfigError(
            f"{where}: option {key!r} uses unknown distribution {kind!r}; choose one of "
            + ", ".join(map(repr, _DISTRIBUTIONS)) + f" (to vary the nested option "
            f"{key}.{kind}, quote its dotted name: \"{key}.{kind}\" = [...])"
        )
    ok = (isinstance(bounds, list) and len(bounds) == 2
          and all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
          and bounds[0] <= bounds[1])
    if ok and kind == "log_uniform":
        ok = bounds[0] > 0
    if not ok:
        raise SweepConfigError(
            f"{where}: option {key!r}: {kind} needs [low, high] with finite low <= high"
            + (" and low > 0" if kind == "log_uniform" else "") + f", got {bounds!r}"
        )


def _is_distribution(v: Any, random: bool) -> bool:
    """A distribution table: ``{log_uniform = [lo, hi]}``.

    In random search any one-entry table whose value is a pair of numbers counts (so that
    a misspelt distribution is reported, not taken for a nested option).
    """
    if not (isinstance(v, dict) and len(v) == 1):
        return False
    (name, val), = v.items()
    if name in _DISTRIBUTIONS:
        return True
    return random and isinstance(val, list) and len(val) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in val)


def _flatten_block(block: Mapping[str, Any], random: bool, prefix: str = "") -> dict:
    """``{"two_level": {"coarse_space": [...]}}`` -> ``{"two_level.coarse_space": [...]}``.

    TOML turns a dotted key (``two_level.coarse_space = [...]``) into nested tables; a
    grid varies a nested option through its dotted name. Distribution tables stay.
    """
    out: dict = {}
    for key, v in block.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict) and v and not _is_distribution(v, random):
            out.update(_flatten_block(v, random, name + "."))
        else:
            out[name] = v
    return out


def expand_options(options: Mapping[str, Any]) -> dict:
    """The runner's config: dotted option names become nested dicts.

    ``{"two_level": {"form": "residual"}, "two_level.coarse_space": "spectral"}`` ->
    ``{"two_level": {"form": "residual", "coarse_space": "spectral"}}``.
    """
    out: dict = {}
    for key, v in options.items():
        if "." not in key:
            out[key] = _deep_merge(out.get(key), v)
    for key, v in options.items():
        if "." in key:
            head, *rest = key.split(".")
            node = out.setdefault(head, {})
            if not isinstance(node, dict):
                node = out[head] = {}
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = v
    return out


def _deep_merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _deep_merge(a.get(k), v) for k, v in b.items()}}
    return b if not isinstance(b, dict) else dict(b)


def spec_from_dict(
    config: Mapping[str, Any],
    *,
    fast: bool = False,
    valid_keys: Iterable[str] | None = None,
    source: str = "<dict>",
    overrides: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """Resolve and check a sweep configuration given as a dict (the parsed TOML).

    Parameters
    ----------
    config : mapping
        Tables ``sweep``, ``base``, ``grid`` (a table or a list of tables), ``fast``.
    fast : bool
        Apply the ``[fast]`` overrides: ``fast.base`` is merged into ``base`` and
        ``fast.grid``, if present, replaces ``grid``.
    valid_keys : iterable of str, optional
        The options the runner accepts. Default: the configuration keys of
        :func:`fimlab.train.run_training` when the runner is the default one, else no
        check.
    source : str
        Where the configuration came from (for messages).
    overrides : mapping, optional
        Fixed options set last (``--set KEY=VALUE``): merged into ``base`` and removed from
        the grid blocks (so ``--set benchmark=digits`` runs one data set of a sweep over
        several); they are part of the configuration (and its hash).

    Raises
    ------
    SweepConfigError
        Malformed tables, an empty grid, an option both fixed and varied.
    UnknownNameError
        An option that the runner does not accept (the message lists the valid ones).
    """
    config = dict(config)
    unknown_tables = set(config) - {"sweep", "base", "grid", "fast"}
    if unknown_tables:
        raise SweepConfigError(
            f"{source}: unknown table(s) {sorted(unknown_tables)}; a sweep configuration "
            "has [sweep], [base], [grid] (or [[grid]] blocks) and [fast]"
        )
    meta = dict(config.get("sweep", {}))
    base = dict(config.get("base", {}))
    grids = config.get("grid")
    if fast:
        fast_tab = dict(config.get("fast", {}))
        extra = set(fast_tab) - {"base", "grid"}
        if extra:
            raise SweepConfigError(
                f"{source}: unknown key(s) {sorted(extra)} in [fast]; it takes 'base' "
                "(merged into [base]) and 'grid' (replaces [grid])"
            )
        base.update(fast_tab.get("base", {}))
        if "grid" in fast_tab:
            grids = fast_tab["grid"]
    overrides = dict(overrides or {})
    base.update(overrides)
    allowed_meta = {"name", "search", "samples", "seed", "runner", "results"}
    if set(meta) - allowed_meta:
        raise SweepConfigError(
            f"{source}: unknown key(s) {sorted(set(meta) - allowed_meta)} in [sweep]; "
            f"allowed: {sorted(allowed_meta)}"
        )
    search = meta.get("search", "grid")
    if search not in ("grid", "random"):
        raise SweepConfigError(
            f"{source}: [sweep] search must be 'grid' or 'random', got {search!r}"
        )
    samples = meta.get("samples", 0 if search == "grid" else 10)
    if search == "random" and (not isinstance(samples, int) or samples < 1):
        raise SweepConfigError(
            f"{source}: random search needs [sweep] samples = a positive integer "
            f"(points drawn per [[grid]] block), got {samples!r}"
        )

    if grids is None:
        grids = []
    if isinstance(grids, dict):
        grids = [grids]
    if not isinstance(grids, list) or not all(isinstance(b, dict) for b in grids):
        raise SweepConfigError(
            f"{source}: [grid] must be a table or a list of tables ([[grid]] blocks)"
        )
    grids = [_flatten_block(b, search == "random") for b in grids]
    # --set KEY=VALUE fixes KEY for every run, also where the grid varies it
    grids = [{k: v for k, v in b.items() if k not in overrides} for b in grids]
    if overrides:
        grids = [b for b in grids if b] or grids
    if not grids or all(not b for b in grids):
        raise SweepConfigError(
            f"{source}: the grid is empty: nothing to sweep. Add a [grid] table with at "
            "least one option and its values, e.g. lr = [1e-3, 1e-2]"
            + (" (in fast mode, [fast] grid replaces it)" if fast else "")
        )
    for i, block in enumerate(grids):
        where = f"{source}: grid block {i}" if len(grids) > 1 else f"{source}: [grid]"
        if not block:
            raise SweepConfigError(f"{where} is empty; give it at least one option")
        for key, values in block.items():
            if isinstance(values, list):
                if not values:
                    raise SweepConfigError(
                        f"{where}: option {key!r} has no values (an empty list makes "
                        "the grid empty); give at least one value or remove it"
                    )
            elif search == "random":
                _check_distribution(key, values, "random search " + where)
            else:
                hint = (" (a distribution table needs [sweep] search = 'random')"
                        if isinstance(values, dict) else
                        f"; to fix it for all runs put {key} = {values!r} in [base]")
                raise SweepConfigError(
                    f"{where}: option {key!r} must be a list of values, got {values!r}"
                    + hint
                )
            if key in base:
                raise SweepConfigError(
                    f"{where}: option {key!r} is both fixed in [base] and varied in the "
                    "grid; remove it from one of them"
                )
    runner = meta.get("runner", DEFAULT_RUNNER)
    if not isinstance(runner, str) or ":" not in runner:
        raise SweepConfigError(
            f"{source}: [sweep] runner must be 'module:function', got {runner!r}"
        )
    from ._validation import check_name_component, check_seed

    spec = SweepSpec(
        name=check_name_component(
            str(meta.get("name", Path(source).stem if source != "<dict>" else "sweep")),
            f"{source}: [sweep] name"),
        base=base, grids=grids, search=search,
        samples=int(samples) if search == "random" else 0,
        seed=check_seed(meta.get("seed", 0), f"{source}: [sweep] seed"), runner=runner, fast=bool(fast),
        results=meta.get("results"), source=source, overrides=dict(overrides or {}),
    )
    if valid_keys is None and runner == DEFAULT_RUNNER:
        valid_keys = _train_config_keys()
    if valid_keys is not None:
        _check_keys(spec, set(valid_keys))
    clash = set(spec.option_columns()) & set(KEY_COLUMNS + TAIL_COLUMNS)
    if clash:
        raise SweepConfigError(
            f"{source}: option name(s) {sorted(clash)} clash with result columns of the "
            "sweep table"
        )
    return spec


def _check_keys(spec: SweepSpec, valid: set[str]) -> None:
    import difflib

    for where, keys in [("[base]", spec.base)] + [
        (f"[grid] block {i}", b) for i, b in enumerate(spec.grids)
    ]:
        for name in keys:
            key = name.split(".", 1)[0]
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=3)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise UnknownNameError(
                    f"{spec.source}: unknown option {key!r} in {where}: it is not an option "
                    f"of the runner {spec.runner}.{hint} Valid options: "
                    + ", ".join(sorted(valid))
                )


def _train_config_keys() -> set[str]:
    """The options :func:`fimlab.train.run_training` accepts."""
    train = importlib.import_module("fimlab.train")
    for attr in ("CONFIG_KEYS", "DEFAULT_CONFIG", "DEFAULTS"):
        keys = getattr(train, attr, None)
        if keys is not None:
            return set(keys)
    raise SweepConfigError(  # pragma: no cover - depends on fimlab.train's contract
        "cannot validate sweep options: fimlab.train exposes no CONFIG_KEYS/DEFAULT_CONFIG"
    )


def load_spec(
    path: str | os.PathLike,
    *,
    fast: bool = False,
    valid_keys: Iterable[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """Read a sweep configuration from a TOML file (see the module docstring).

    Raises
    ------
    SweepConfigError
        The file is missing, is not valid TOML, or describes no runnable sweep.
    UnknownNameError
        An option unknown to the runner.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SweepConfigError(
            f"sweep configuration {str(path)!r} not found; see experiments/sweep_*.toml "
            "for examples"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SweepConfigError(f"{path}: not valid TOML: {exc}") from exc
    return spec_from_dict(data, fast=fast, valid_keys=valid_keys, source=str(path),
                          overrides=overrides)


def parse_set(items: Sequence[str]) -> dict:
    """``["epochs=2", "benchmark=digits"]`` -> ``{"epochs": 2, "benchmark": "digits"}``.

    Each value is read as a TOML value (``2``, ``1e-3``, ``true``, ``[1, 2]``,
    ``"text"``), and as a plain string when it is not one.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SweepConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def default_results_path(spec: SweepSpec) -> Path:
    """``[sweep] results`` if given, else ``sweeps/<name>[-fast][-<hash>].csv``.

    The path is relative to the working directory; ``<hash>`` (the configuration's) is
    added when ``--set`` changed options, so that each variant has its own file.
    """
    if spec.results and not spec.overrides:
        return Path(spec.results)
    stem = spec.name + ("-fast" if spec.fast else "")
    if spec.overrides:
        stem += f"-{spec.config_hash[:8]}"
    if spec.results:
        p = Path(spec.results)
        return p.with_name(f"{p.stem}-{spec.config_hash[:8]}{p.suffix}")
    return Path("sweeps") / f"{stem}.csv"


# ------------------------------------------------------------------ one run
def _resolve_runner(runner: str | Callable) -> Callable:
    if callable(runner):
        return runner
    module, _, name = runner.partition(":")
    return getattr(importlib.import_module(module), name)


def _runner_name(runner: str | Callable) -> str:
    if isinstance(runner, str):
        return runner
    return f"{runner.__module__}:{runner.__qualname__}"


def _one_line(msg: str, limit: int = 2000) -> str:
    msg = " | ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _numba():
    """Numba (a fimlab dependency), imported now so that its thread count can be set
    before the run starts parallel kernels; None where it is not installed."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return numba


def _thread_env(threads: int) -> dict[str, str]:
    return {k: str(int(threads)) for k in _THREAD_ENV}


def execute_run(
    runner: str | Callable,
    options: Mapping[str, Any],
    *,
    threads: int = 1,
    out_dir: str | None = None,
) -> dict:
    """Run one point and return its result columns; never raises on a failed run.

    The thread count of every BLAS / OpenMP library is pinned to ``threads`` for the
    duration of the run, so the numbers do not depend on where it was scheduled: the
    libraries already loaded through :mod:`threadpoolctl`, Numba's with
    ``numba.set_num_threads`` (up to ``NUMBA_NUM_THREADS``), and the ones that the run loads lazily (SciPy's own
    OpenBLAS, scikit-learn's OpenMP) through the environment variables they read when
    they load (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``), set
    for the run. (A library first loaded during a run keeps that thread count for the
    rest of the process.)

    Returns
    -------
    dict
        ``status`` (``"ok"``, ``"diverged"`` or ``"failed"``), the losses of
        :data:`RESULT_COLUMNS` (``None`` where absent), ``wall_time`` (seconds, measured
        here around the call) and ``error`` (``""``, or the exception's type and message
        on one line).
    """
    from threadpoolctl import threadpool_limits

    row: dict[str, Any] = {k: None for k in RESULT_COLUMNS}
    t0 = time.perf_counter()
    numba_prev = None
    env_prev = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update(_thread_env(threads))
    try:
        fn = _resolve_runner(runner)
        with threadpool_limits(limits=threads):
            numba = _numba()
            if numba is not None:
                with contextlib.suppress(Exception):
                    numba_prev = numba.get_num_threads()
                    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            out = fn(dict(options), out_dir=out_dir)
    except DivergenceError as exc:
        row.update(status=STATUS_DIVERGED, error=_one_line(f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # noqa: BLE001 - a failed run is data, not a crash
        row.update(status=STATUS_FAILED, error=_one_line(f"{type(exc).__name__}: {exc}"))
    else:
        out = dict(out or {})
        row["final_train_loss"] = out.get("final_train_loss")
        row["best_val_loss"] = out.get("best_val_loss")
        row["final_val_loss"] = out.get("final_val_loss")
        row["epochs_done"] = out.get("epochs")
        status = str(out.get("status", STATUS_OK))
        err = _one_line(out.get("error", "") or out.get("message", "") or "")
        if status == STATUS_OK and not _finite(row["final_train_loss"]):
            status = STATUS_DIVERGED
            err = err or f"final training loss is {row['final_train_loss']!r}"
        row.update(status=status, error=err)
    finally:
        for k, v in env_prev.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if numba_prev is not None:
            with contextlib.suppress(Exception):
                sys.modules["numba"].set_num_threads(numba_prev)
    row["wall_time"] = time.perf_counter() - t0
    for k in RESULT_COLUMNS:
        v = row[k]
        if v is not None and not isinstance(v, str):
            row[k] = float(v) if k != "epochs_done" else _plain(v)
    return row


def check_runs(spec: SweepSpec, runner: str | Callable | None = None) -> list[tuple]:
    """Options of ``spec`` that the runner would reject, without running anything.

    Uses the runner module's ``resolve_config`` (``fimlab.train`` has one: it checks
    names and ranges); a runner without one is not checked.

    Returns
    -------
    list of (dict, str)
        Each rejected run's options and the runner's message (``[]``: all accepted).
    """
    runner = spec.runner if runner is None else runner
    if isinstance(runner, str):
        module = importlib.import_module(runner.partition(":")[0])
    else:
        module = sys.modules.get(getattr(runner, "__module__", ""), None)
    resolve = getattr(module, "resolve_config", None)
    if resolve is None:
        return []
    bad = []
    for opts in spec.runs():
        try:
            resolve(expand_options(opts))
        except Exception as exc:  # noqa: BLE001 - reported, as the run would be
            bad.append((opts, _one_line(f"{type(exc).__name__}: {exc}")))
    return bad


def _run_task(runner, options, threads, keep_dir):
    """The task shipped to a worker: one run, its output directory, its row."""
    out_dir = None
    if keep_dir:
        out_dir = str(Path(keep_dir) / run_id(options))
    return execute_run(runner, expand_options(options), threads=threads, out_dir=out_dir)


# ---------------------------------------------------------- the results file
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return _canonical(v)
    return str(v)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sweep.json")


def _diff_identity(old: Mapping, new: Mapping) -> list[str]:
    out = []
    for part in ("runner", "search", "samples", "seed"):
        if old.get(part) != new.get(part):
            out.append(f"[sweep] {part} is {old.get(part)!r} there, {new.get(part)!r} here")
    ob, nb = old.get("base", {}), new.get("base", {})
    for k in sorted(set(ob) | set(nb)):
        if ob.get(k, "<unset>") != nb.get(k, "<unset>"):
            out.append(f"option {k!r} is {ob.get(k, '<unset>')!r} there, "
                       f"{nb.get(k, '<unset>')!r} here")
    if old.get("grids") != new.get("grids"):
        out.append(f"the grid is {old.get('grids')!r} there, {new.get('grids')!r} here")
    return out


def _repair_tail(path: Path) -> int:
    """Drop a partial last line (a sweep killed mid-write); return bytes dropped."""
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
        return len(data) - keep


def _open_results(path: Path, spec: SweepSpec, dry_run: bool = False) -> dict[str, str]:
    """Check an existing results file against ``spec``; return run_id -> status."""
    columns = spec.columns()
    meta = {"config_hash": spec.config_hash, "config": spec.identity(),
            "name": spec.name, "fast": spec.fast, "columns": columns}
    how_to = (f"Write this sweep elsewhere (--results OTHER.csv) or delete {path} "
              f"(and {_sidecar(path).name}) to start over.")
    if not path.exists() or path.stat().st_size == 0:
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            _sidecar(path).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerow(columns)
        return {}
    if not dry_run:
        _repair_tail(path)
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        rows = list(reader)
    if header is None or header[: len(KEY_COLUMNS)] != list(KEY_COLUMNS):
        raise ResultsMismatchError(
            f"{path} is not a fimlab sweep results file (its header does not start with "
            f"{', '.join(KEY_COLUMNS)}). {how_to}"
        )
    rows = [r for r in rows if len(r) == len(header)]  # a partial last line is no row
    hashes = {r[1] for r in rows}
    if header != columns or hashes - {spec.config_hash}:
        other = next(iter(hashes - {spec.config_hash}), None)
        why: list[str] = []
        side = _sidecar(path)
        if side.exists():
            with contextlib.suppress(ValueError, OSError):
                old = json.loads(side.read_text())
                other = other or old.get("config_hash")
                why = _diff_identity(old.get("config", {}), spec.identity())
        if not why and header != columns:
            why = [f"its columns are {header} there, {columns} here"]
        raise ResultsMismatchError(
            f"refusing to mix results: {path} was written by a different sweep "
            f"configuration (config hash {other}) than {spec.source} "
            f"(config hash {spec.config_hash}{', fast mode' if spec.fast else ''}): "
            + ("; ".join(why) if why else "the configurations differ")
            + f". {how_to}"
        )
    done: dict[str, str] = {}
    status_col = header.index("status")
    for r in rows:
        done[r[0]] = r[status_col]
    return done


def read_results(path: str | os.PathLike):
    """Read a results file into a :class:`pandas.DataFrame` (last row per run wins).

    Raises
    ------
    ResultsMismatchError
        The file is missing or not a sweep results file.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ResultsMismatchError(
            f"no results file at {path}; run the sweep first (fimlab sweep CONFIG), or "
            "point --results at the file it wrote"
        )
    df = pd.read_csv(path, keep_default_na=True)
    if list(df.columns[: len(KEY_COLUMNS)]) != list(KEY_COLUMNS) or "status" not in df:
        raise ResultsMismatchError(f"{path} is not a fimlab sweep results file")
    return df.drop_duplicates("run_id", keep="last").reset_index(drop=True)


# ------------------------------------------------------------------ the engine
@dataclass
class SweepSummary:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    path : pathlib.Path
        The results file.
    total : int
        Points in the sweep.
    skipped : int
        Points already in the results file (not run again).
    ran : int
        Runs finished and written this time.
    failed, diverged : int
        Of those, how many failed or diverged.
    wall_time : float
        Seconds for this call (cluster start-up included).
    interrupted : bool
        Whether the sweep was stopped (Ctrl-C) before the end.
    workers : int
        Worker processes used (1: in-process).
    """

    path: Path
    total: int
    skipped: int
    ran: int = 0
    failed: int = 0
    diverged: int = 0
    wall_time: float = 0.0
    interrupted: bool = False
    workers: int = 1
    run_ids: list = field(default_factory=list)

    def __str__(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        return (f"sweep {state}: {self.total} points, {self.skipped} already in "
                f"{self.path}, {self.ran} run now ({self.failed} failed, {self.diverged} "
                f"diverged) on {self.workers} worker(s) in {self.wall_time:.1f} s")


def machine_workers(threads_per_run: int = 1) -> int:
    """Worker processes that fit the machine: usable cores // threads per run."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads_per_run))


def connect(address: str, timeout: float = 5.0):
    """A :class:`distributed.Client` on the scheduler at ``address``, or a clear error.

    Raises
    ------
    SchedulerUnreachableError
        Nothing answered at ``address`` within ``timeout`` seconds.
    """
    from distributed import Client

    from ._validation import check_real

    check_real(timeout, "--connect-timeout (connect_timeout)", lo=0, lo_open=True)
    if not isinstance(address, str) or not address.strip():
        raise SchedulerUnreachableError(f"--scheduler must be an address such as "
                                        f"tcp://HOST:8786, got {address!r}")
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise SchedulerUnreachableError(
            f"no Dask scheduler answered at {address!r} within {timeout:g} s ({exc}). "
            "Check the address (tcp://HOST:PORT, as printed by `dask scheduler`) and that "
            "the scheduler is running and reachable, or leave out --scheduler to run on "
            "this machine"
        ) from exc


def _local_cluster(n_workers: int, threads_per_run: int = 1):
    """A LocalCluster of ``n_workers`` processes, one task at a time each, whose BLAS
    libraries start with ``threads_per_run`` threads (environment set at spawn)."""
    from distributed import Client, LocalCluster

    from ._cli_errors import sigint_ignored

    with sigint_ignored():  # Ctrl-C reaches this process only; it stops the workers
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True,
            dashboard_address=":0", silence_logs=40, env=_thread_env(threads_per_run),
        )
    return cluster, Client(cluster, set_as_default=False)


def run_sweep(
    spec: SweepSpec,
    results: str | os.PathLike | None = None,
    *,
    runner: str | Callable | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    threads_per_run: int = 1,
    connect_timeout: float = 5.0,
    retry_failed: bool = False,
    keep_runs: str | os.PathLike | None = None,
    progress: bool = False,
    on_result: Callable[[dict], None] | None = None,
    dry_run: bool = False,
) -> SweepSummary:
    """Run every point of ``spec`` not yet in ``results``; stream each row to it.

    Parameters
    ----------
    spec : SweepSpec
    results : path, optional
        The CSV file; default :func:`default_results_path`.
    runner : callable or "module:function", optional
        Called as ``runner(options: dict, out_dir=str | None) -> dict`` with at least
        ``final_train_loss``, ``best_val_loss``, ``final_val_loss``, ``epochs``,
        ``status``. Default: ``spec.runner`` (:func:`fimlab.train.run_training`).
        With Dask it must be importable on the workers (or picklable).
    workers : int, optional
        ``1`` runs in-process, one run after the other; ``n > 1`` starts a
        :class:`~distributed.LocalCluster` of ``n`` processes with one thread each.
        Default: :func:`machine_workers`.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); overrides
        ``workers``.
    client : distributed.Client, optional
        An existing client to use (the caller keeps it open).
    threads_per_run : int
        BLAS threads per run, pinned with threadpoolctl (serial and parallel alike).
    connect_timeout : float
        Seconds to wait for ``scheduler`` before raising.
    retry_failed : bool
        Run again the points recorded as failed or diverged.
    keep_runs : path, optional
        Give each run the output directory ``keep_runs/<run_id>`` (else none).
    progress : bool
        Show a progress bar (one tick per finished run).
    on_result : callable, optional
        Called with each row once it is on disk.
    dry_run : bool
        Count the points to run and return without running (nothing written).

    Returns
    -------
    SweepSummary

    Raises
    ------
    ResultsMismatchError
        ``results`` was written by a different configuration.
    SchedulerUnreachableError
        ``scheduler`` did not answer within ``connect_timeout``.
    """
    t0 = time.perf_counter()
    path = Path(results) if results is not None else default_results_path(spec)
    runner = spec.runner if runner is None else runner
    done = _open_results(path, spec, dry_run=True)  # check only: nothing written yet
    finished = {rid for rid, st in done.items()
                if not (retry_failed and st in (STATUS_FAILED, STATUS_DIVERGED))}
    todo = [opts for opts in spec.runs() if run_id(opts) not in finished]
    summary = SweepSummary(path=path, total=len(spec.points()),
                           skipped=len(spec.points()) - len(todo))
    if dry_run or not todo:
        summary.wall_time = time.perf_counter() - t0
        return summary
    threads = int(threads_per_run)
    if threads < 1:
        raise SweepConfigError(f"threads_per_run must be >= 1, got {threads_per_run!r}")
    from ._validation import check_real

    check_real(connect_timeout, "--connect-timeout (connect_timeout)", lo=0, lo_open=True)
    keep = str(keep_runs) if keep_runs is not None else None
    columns = spec.columns()
    opt_cols = spec.option_columns()

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), disable=not progress, desc=spec.name, unit="run",
               file=sys.stderr)

    def write(fh, writer, opts, res):
        row = {"run_id": run_id(opts), "config_hash": spec.config_hash,
               **{k: opts.get(k) for k in opt_cols}, **res}
        writer.writerow([_cell(row.get(c)) for c in columns])
        fh.flush()
        os.fsync(fh.fileno())
        summary.ran += 1
        summary.run_ids.append(row["run_id"])
        summary.failed += res["status"] == STATUS_FAILED
        summary.diverged += res["status"] == STATUS_DIVERGED
        bar.update(1)
        bar.set_postfix_str(f"{res['status']} {row['run_id'][:8]}", refresh=False)
        if on_result is not None:
            on_result(row)

    if client is None and scheduler is None:
        n = machine_workers(threads) if workers is None else int(workers)
        if n < 1:
            raise SweepConfigError(f"workers must be >= 1, got {workers!r}")
        n = min(n, len(todo))
    else:
        n = 0
    own_client = own_cluster = None
    if client is None and scheduler is not None:  # fail fast, before touching the file
        own_client = client = connect(scheduler, connect_timeout)
    try:
        _open_results(path, spec)  # create it (header, sidecar) or repair a partial line
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if n == 1:  # in-process
                summary.workers = 1
                for opts in todo:
                    write(fh, writer, opts, _run_task(runner, opts, threads, keep))
            else:
                from distributed import as_completed

                if client is None:
                    own_cluster, own_client = _local_cluster(n, threads)
                    client = own_client
                summary.workers = len(client.scheduler_info().get("workers", {})) or n
                futures = {}
                for opts in todo:
                    fut = client.submit(_run_task, runner, opts, threads, keep,
                                        key=f"fimlab-run-{spec.config_hash}-{run_id(opts)}",
                                        pure=False)
                    futures[fut] = opts
                try:
                    for fut in as_completed(futures, loop=client.loop):
                        try:
                            res = fut.result()
                        except Exception as exc:  # noqa: BLE001 - worker lost, etc.
                            res = {k: None for k in RESULT_COLUMNS}
                            res.update(status=STATUS_FAILED, wall_time=None,
                                       error=_one_line(f"{type(exc).__name__}: {exc}"))
                        write(fh, writer, futures[fut], res)
                finally:
                    client.cancel(list(futures))
    except KeyboardInterrupt:
        summary.interrupted = True
        from ._cli_errors import quiet_dask_logs

        quiet_dask_logs()
    finally:
        bar.close()
        if own_client is not None:
            with contextlib.suppress(Exception):
                own_client.close()
        if own_cluster is not None:
            with contextlib.suppress(Exception):
                own_cluster.close()
        summary.wall_time = time.perf_counter() - t0
    return summary


# ------------------------------------------------------------------- report
def _group_keys(df, by: Sequence[str] | None) -> list[str]:
    """What a best setting / heat-map is given *per*.

    Default: ``method``, then every other varied option whose values are not numbers
    (data set, coarse space, damping rule, ...); numeric options are hyper-parameters to
    choose, not groups.
    """
    if by is not None:
        missing = [k for k in by if k not in df]
        if missing:
            raise SweepConfigError(
                f"cannot group by {missing}: no such column; the option columns are "
                + ", ".join(_option_columns(df))
            )
        return list(by)
    keys = ["method"] if "method" in df else []
    for k in _option_columns(df):
        if (k not in keys and df[k].nunique(dropna=False) > 1
                and not _is_numeric_column(df[k])):
            keys.append(k)
    return keys


def _is_numeric_column(col) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(col)) and not pd.api.types.is_bool_dtype(col)


def _option_columns(df) -> list[str]:
    cols = list(df.columns)
    start, stop = len(KEY_COLUMNS), cols.index("status")
    return cols[start:stop]


def setting_table(
    df,
    metric: str = "final_train_loss",
    average_over: Sequence[str] = ("seed",),
):
    """Mean of ``metric`` per setting (the options except ``average_over``), ok runs only.

    A setting where any run failed or diverged gets ``NaN`` (it is not a candidate).
    Returns a DataFrame with the setting's option columns, ``metric`` and ``runs`` (how
    many runs, e.g. seeds, the mean is over).
    """
    import numpy as np

    if metric not in df:
        raise SweepConfigError(
            f"unknown metric {metric!r}; choose one of {', '.join(RESULT_COLUMNS[:3])}"
        )
    opts = [c for c in _option_columns(df) if c not in average_over]
    d = df.copy()
    d["_value"] = d[metric].where(d["status"] == STATUS_OK, np.nan)
    g = d.groupby(opts, dropna=False, sort=True)
    out = g["_value"].agg(lambda s: s.mean() if s.notna().all() else np.nan)
    out = out.rename(metric).to_frame()
    out["runs"] = g.size()
    return out.reset_index()


def best_settings(
    df,
    metric: str = "final_train_loss",
    by: Sequence[str] | None = None,
    average_over: Sequence[str] = ("seed",),
):
    """The best setting per group (default: per method and data set): the papers' tables.

    The metric is averaged over ``average_over`` (seeds) first; a setting with a failed or
    diverged run is not a candidate; ties go to the first setting in sorted order.

    Returns
    -------
    pandas.DataFrame
        One row per group: the group keys, the best setting's options, ``metric``,
        ``runs``.
    """
    table = setting_table(df, metric, average_over)
    keys = [k for k in _group_keys(df, by) if k in table]
    cand = table[table[metric].notna()]
    if keys:
        idx = cand.groupby(keys, dropna=False, sort=True)[metric].idxmin()
        return cand.loc[idx.to_numpy()].reset_index(drop=True)
    return cand.loc[[cand[metric].idxmin()]].reset_index(drop=True) if len(cand) else cand


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def plot_heatmaps(
    df,
    out_dir: str | os.PathLike,
    metric: str = "final_train_loss",
    x: str = "lr",
    y: str = "damping",
    by: Sequence[str] | None = None,
    average_over: Sequence[str] = ("seed",),
    prefix: str = "heatmap",
) -> list[Path]:
    """One PNG per group (method, data set): ``x`` by ``y``, colour = ``metric``.

    Each cell is the best (lowest) seed-averaged ``metric`` over the other varied
    options; a cell whose runs all failed or diverged is grey and marked x; the best
    cell is outlined. A group without ``y`` (e.g. Adam has no damping) gets one row.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    table = setting_table(df, metric, average_over)
    if x not in table:
        raise SweepConfigError(
            f"cannot draw heat-maps over {x!r}: the sweep does not vary it (columns: "
            f"{', '.join(_option_columns(df))}); choose the axes with --axes X,Y"
        )
    keys = [k for k in _group_keys(df, by) if k in table]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = table.groupby(keys, dropna=False, sort=True) if keys else [((), table)]
    paths = []
    for gkey, sub in groups:
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        has_y = y in sub and sub[y].notna().any()
        xs = sorted(sub[x].dropna().unique())
        ys = sorted(sub[y].dropna().unique()) if has_y else [None]
        Z = np.full((len(ys), len(xs)), np.nan)
        tried = np.zeros_like(Z, dtype=bool)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                m = sub[x] == xv
                if has_y:
                    m &= sub[y] == yv
                vals = sub.loc[m, metric]
                tried[i, j] = bool(m.any())
                if vals.notna().any():
                    Z[i, j] = vals.min()
        fig, ax = plt.subplots(figsize=(1.3 * len(xs) + 2.2, 0.9 * len(ys) + 1.8))
        finite = Z[np.isfinite(Z)]
        # the colour range stops at 1000 x the best loss, so that one nearly divergent
        # cell does not wash out the differences that matter (the text gives the value)
        lo = finite.min() if finite.size else 0.0
        hi = min(finite.max(), 1e3 * lo) if finite.size else 1.0
        clipped = bool(finite.size and finite.max() > hi)
        norm = (LogNorm(lo, hi) if finite.size and lo > 0 and hi > 10 * lo
                else Normalize(lo, hi if hi > lo else lo + 1.0))
        cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="0.8")
        im = ax.imshow(np.ma.masked_invalid(Z), cmap=cmap, norm=norm, aspect="auto",
                       origin="lower")
        for i in range(len(ys)):
            for j in range(len(xs)):
                txt = (_fmt(Z[i, j]) if np.isfinite(Z[i, j])
                       else ("x" if tried[i, j] else ""))
                dark = np.isfinite(Z[i, j]) and norm(min(Z[i, j], hi)) > 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                        color="white" if dark else ("black" if np.isfinite(Z[i, j])
                                                    else "0.3"))
        if finite.size:
            bi, bj = np.unravel_index(np.nanargmin(Z), Z.shape)
            ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2))
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys] if has_y else ["-"])
        ax.set_xlabel(x)
        ax.set_ylabel(y if has_y else "")
        gkey = tuple("none" if _isnan(v) else v for v in gkey)
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, gkey, strict=True)) or "all runs"
        n_seeds = [f"mean of {int(sub['runs'].max())} runs" if sub["runs"].max() > 1
                   else ""]
        notes = ", ".join(n for n in n_seeds + [
            "grey x: failed or diverged" if (tried & ~np.isfinite(Z)).any() else ""] if n)
        ax.set_title(f"{label}\n{metric}" + (f" ({notes})" if notes else ""), fontsize=9)
        if finite.size:
            cb = fig.colorbar(im, ax=ax, label=metric,
                              extend="max" if clipped else "neither")
            if not isinstance(norm, LogNorm):
                cb.formatter = matplotlib.ticker.ScalarFormatter(useOffset=False)
                cb.update_ticks()
        fig.tight_layout()
        stem = "_".join(str(v) for v in gkey) or "all"
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
        p = out_dir / f"{prefix}_{safe}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def report(
    results: str | os.PathLike,
    figures: str | os.PathLike | None = None,
    metric: str = "final_train_loss",
    axes: tuple[str, str] = ("lr", "damping"),
    by: Sequence[str] | None = None,
    spec: SweepSpec | None = None,
) -> tuple[str, list[Path]]:
    """Text table of the best setting per method, and the heat-maps (``--report``).

    Returns the text and the PNG paths (figures default to the results file's folder).
    """
    path = Path(results)
    if spec is not None and path.exists():
        _open_results(path, spec, dry_run=True)  # refuse another config's table
    df = read_results(path)
    n_bad = int((df["status"] != STATUS_OK).sum())
    best = best_settings(df, metric, by)
    lines = [f"{path}: {len(df)} runs ({n_bad} failed or diverged); best setting by "
             f"{metric} (averaged over seeds):"]
    keys = _group_keys(df, by)
    shown = [c for c in best.columns
             if c in keys or c in (metric, "runs") or df[c].nunique(dropna=False) > 1]
    lines.append(best[shown].to_string(index=False, na_rep="-") if len(best)
                 else "  (no successful run)")
    figdir = Path(figures) if figures is not None else path.parent
    pngs = plot_heatmaps(df, figdir, metric, x=axes[0], y=axes[1], by=by,
                         prefix=f"{path.stem}_heatmap")
    lines += ["heat-maps:"] + [f"  {p}" for p in pngs]
    return "\n".join(lines), pngs


# ----------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fimlab sweep``."""
    parser.add_argument("config", help="sweep configuration (TOML, see experiments/"
                        "sweep_*.toml); with --report also a results CSV")
    parser.add_argument("--fast", action="store_true",
                        help="apply the configuration's [fast] overrides (a tiny grid)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a training option for every run (repeatable; part of "
                        "the configuration, so its results go to their own file)")
    parser.add_argument("--results", default=None,
                        help="results CSV; if not given, [sweep] results, else "
                        "sweeps/NAME[-fast].csv")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the local Dask cluster; 1 runs "
                        "in-process; if not given, cores // threads-per-run")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on an existing Dask cluster (tcp://HOST:PORT)")
    parser.add_argument("--connect-timeout", type=float, default=5.0,
                        help="seconds to wait for --scheduler")
    parser.add_argument("--threads-per-run", type=int, default=1,
                        help="BLAS threads per run (pinned with threadpoolctl)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run failed/diverged points again")
    parser.add_argument("--keep-runs", default=None, metavar="DIR",
                        help="keep each run's own output under DIR/RUN_ID")
    parser.add_argument("--dry-run", action="store_true",
                        help="say how many points would run and check their options "
                        "with the runner (exit 1 if it rejects some), run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: print the best setting per method and draw "
                        "a heat-map per method")
    parser.add_argument("--metric", default="final_train_loss",
                        choices=["final_train_loss", "best_val_loss", "final_val_loss"],
                        help="what --report minimises and colours")
    parser.add_argument("--axes", default="lr,damping", metavar="X,Y",
                        help="the heat-map axes")
    parser.add_argument("--by", default=None, metavar="KEY,...",
                        help="--report: give the best setting and a heat-map per these "
                        "options; if not given, method and the other varied non-numeric "
                        "options, such as the data set")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="where --report writes the PNGs; if not given, next to the "
                        "results file")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fimlab sweep``."""
    try:
        if args.report:
            axes = tuple(a.strip() for a in args.axes.split(","))
            if len(axes) != 2:
                raise SweepConfigError(f"--axes takes X,Y, got {args.axes!r}")
            spec = None
            if args.config.endswith(".csv"):
                results = Path(args.config)
            else:
                spec = load_spec(args.config, fast=args.fast,
                                 overrides=parse_set(args.set))
                results = Path(args.results) if args.results else default_results_path(spec)
            by = [k.strip() for k in args.by.split(",")] if args.by else None
            text, _ = report(results, args.figures, args.metric, axes, by=by, spec=spec)
            print(text)
            return 0
        spec = load_spec(args.config, fast=args.fast, overrides=parse_set(args.set))
        summary = run_sweep(
            spec, args.results, workers=args.workers, scheduler=args.scheduler,
            threads_per_run=args.threads_per_run, connect_timeout=args.connect_timeout,
            retry_failed=args.retry_failed, keep_runs=args.keep_runs,
            progress=not args.no_progress, dry_run=args.dry_run,
        )
    except FimlabError as exc:
        from ._cli_errors import report_error

        return report_error("sweep", exc)  # the one error path of the commands
    if args.dry_run:
        print(f"{summary.total} points, {summary.skipped} already in {summary.path}, "
              f"{summary.total - summary.skipped} to run")
        bad = check_runs(spec)
        if bad:
            msgs = sorted({m for _, m in bad})
            print(f"{len(bad)} of them would fail, the runner rejects their options:")
            for m in msgs[:5]:
                print(f"  {m}")
            if len(msgs) > 5:
                print(f"  ... and {len(msgs) - 5} other message(s)")
            return 1
        return 0
    print(summary)
    if summary.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
