"""The sweep specification: the TOML/dict configuration, the grid and random
search expansion, run identities."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import FimlabError, UnknownNameError

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
def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


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
        return to_plain(spec[int(rng.integers(len(spec)))])
    (kind, (lo, hi)), = spec.items()
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    return int(rng.integers(int(lo), int(hi) + 1))


def to_plain(v):
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
    spec = SweepSpec(
        name=str(meta.get("name", Path(source).stem if source != "<dict>" else "sweep")),
        base=base, grids=grids, search=search,
        samples=int(samples) if search == "random" else 0,
        seed=int(meta.get("seed", 0)), runner=runner, fast=bool(fast),
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


