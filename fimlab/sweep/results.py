"""The results file: one CSV row per run, its sidecar configuration, resumption."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .spec import KEY_COLUMNS, ResultsMismatchError, SweepSpec, canonical


# ---------------------------------------------------------- the results file
def format_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return canonical(v)
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


def open_results(path: Path, spec: SweepSpec, dry_run: bool = False) -> dict[str, str]:
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


