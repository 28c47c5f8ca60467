"""Results that are never lost or overwritten: atomic writes, one-file checkpoints.

- :func:`atomic_write` writes a file as a unit: into a temporary file in the same folder,
  ``fsync``, then ``os.replace`` (atomic on POSIX and Windows) and an ``fsync`` of the
  folder, so that a crash leaves the old file or the new one, never a mix.
- :func:`save_checkpoint` / :func:`load_checkpoint`: a checkpoint is ONE ``.npz`` file
  holding the arrays and the JSON description of the state (key ``__state__``), written
  with :func:`atomic_write`. A torn or truncated file (a copy cut short, a disk that
  filled up) is refused with a :class:`~fimlab.DataError` that says so — never a raw
  ``BadZipFile``, never a resume from half a state.
- :func:`refuse_finished_results`: an output folder that holds finished results is not
  written over without ``resume``.
- :func:`set_aside_partial_results`: the files of an unfinished (interrupted or failed)
  run in a folder are moved into ``partial-<k>/`` beside it before a fresh start, not
  overwritten.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._errors import DataError, OutputExistsError

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "refuse_finished_results",
           "set_aside_partial_results", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 2
_STATE_KEY = "__state__"
#: statuses of a ``result.json`` that mean "this run finished"
FINISHED = ("ok", "diverged")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` as a unit: ``write(tmp)`` fills a temporary file beside it, which
    is flushed to disk and renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def save_checkpoint(path: str | os.PathLike, state: dict, arrays: dict) -> None:  # xp: host I/O
    """One atomic ``.npz``: ``arrays`` plus ``state`` (JSON-able, referring to them)."""
    payload = json.dumps({"format": CHECKPOINT_FORMAT, "state": state}, default=str)
    blob = np.frombuffer(payload.encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays, **{_STATE_KEY: blob})

    atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:  # xp: host I/O
    """``(state, arrays)`` of a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    DataError
        A missing, torn, truncated or foreign file (the message says which and what to do).
    """
    path = Path(path)
    advice = ("delete it (and resume from scratch) or restore a good copy; the results "
              "files beside it are not affected")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
    except FileNotFoundError as exc:
        raise DataError(f"no checkpoint at {str(path)!r}") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"the checkpoint {str(path)!r} is torn or truncated ({type(exc).__name__}: "
            f"{exc}); {advice}") from exc
    blob = arrays.pop(_STATE_KEY, None)
    if blob is None:
        if path.with_suffix(".json").exists():  # format 1: arrays here, the state beside
            raise DataError(
                f"{str(path)!r} is a checkpoint of an older fimlab (format 1: arrays in "
                f"{path.name}, the state in {path.with_suffix('.json').name}), which this "
                "version cannot resume (its two files could be torn apart by a crash); "
                "rerun without --resume: the old files are moved to partial-<k>/")
        raise DataError(f"{str(path)!r} is not a fimlab checkpoint (no state record); {advice}")
    try:
        doc = json.loads(bytes(blob.astype(np.uint8)).decode())
        state = doc["state"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"the checkpoint {str(path)!r} has a damaged state record ({exc}); "
                        f"{advice}") from exc
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"the checkpoint {str(path)!r} has format {doc.get('format')!r}, "
                        f"this fimlab reads format {CHECKPOINT_FORMAT}; {advice}")
    return state, arrays


def refuse_finished_results(folder: str | os.PathLike, what: str = "run",
                            hint: str = "resume=True") -> None:
    """Raise :class:`OutputExistsError` if ``folder/result.json`` records a finished run."""
    res = Path(folder) / "result.json"
    if not res.is_file():
        return
    try:
        status = json.loads(res.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = "unreadable"
    if status in FINISHED or status == "unreadable":
        raise OutputExistsError(
            f"{str(folder)!r} already holds the results of a finished {what} (result.json, "
            f"status {status!r}); nothing was overwritten. Pass {hint} to keep them and "
            "continue, or choose another output folder")


#: the files a run writes into its output folder (what :func:`set_aside_partial_results`
#: moves); anything else in the folder is the user's and is left where it is
RUN_FILES = ("result.json", "checkpoint.npz", "checkpoint.json", "iterations.csv",
             "epochs.csv")


def set_aside_partial_results(folder: str | os.PathLike) -> Path | None:
    """Move the files of an unfinished run in ``folder`` into ``folder/partial-<k>/``.

    Called before a run starts afresh (no ``resume``) in a folder where an earlier run was
    interrupted or failed: its checkpoint and partial histories are kept, not overwritten.
    Returns the new folder, or ``None`` when there was nothing to move. A folder holding
    a *finished* run is refused by :func:`refuse_finished_results` before this is called.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "iterations.csv").write_text("iteration,loss\\n0,1.0\\n")
    >>> set_aside_partial_results(d).name, sorted(p.name for p in d.iterdir())
    ('partial-1', ['partial-1'])
    >>> set_aside_partial_results(d) is None
    True
    """
    folder = Path(folder)
    found = [folder / f for f in RUN_FILES if (folder / f).is_file()]
    if not found:
        return None
    k = 1
    while (folder / f"partial-{k}").exists():
        k += 1
    dest = folder / f"partial-{k}"
    dest.mkdir()
    for f in found:
        os.replace(f, dest / f.name)
    _fsync_dir(folder)
    return dest
