"""What a ``fimlab train`` run leaves on disk: CSV/JSON files written atomically and
the checkpoint (``checkpoint.npz`` + ``checkpoint.json``) that ``resume`` continues from."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ._errors import DataError
from .train_config import RESUMABLE_KEYS


# -- state serialisation -------------------------------------------------------------------
def _pack(obj, arrays: dict):
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__nd__": key}
    if isinstance(obj, dict):
        return {str(k): _pack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _unpack(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__nd__"}:
            return np.array(arrays[obj["__nd__"]])
        return {k: _unpack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    return obj


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


ITER_FIELDS = ("iteration", "epoch", "train_loss", "wall_time")
EPOCH_FIELDS = ("epoch", "iteration", "train_loss", "val_loss", "wall_time")


def write_csv(path: Path, rows: list[dict], fields) -> None:
    def w(tmp):
        with open(tmp, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(fields)
            for r in rows:
                wr.writerow([repr(r[f]) if isinstance(r[f], float) else r[f] for f in fields])
    _atomic_write(path, w)


def write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, default=str)
    _atomic_write(path, w)




def save_checkpoint(out: Path, c, net, opt, data_rng, history, epoch_history, wall, it, perm):
    from .backend import to_numpy

    arrays: dict = {}
    state = {
        "format": 1, "config": c, "iteration": it, "wall_time": wall,
        "params": [np.array(to_numpy(W)) for W in net.params],
        "optimizer": opt.state_dict(),
        "data_rng": data_rng.bit_generator.state,
        "perm": None if perm is None else np.asarray(perm),
        "epoch_history": epoch_history,
        "history": {f: np.array([r[f] for r in history], dtype=float if f != "iteration" else np.int64)
                    for f in ITER_FIELDS},
    }
    tree = _pack(state, arrays)
    _atomic_write(out / "checkpoint.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    write_json(out / "checkpoint.json", tree)


def load_checkpoint(out: Path, c: dict) -> dict:
    try:
        tree = json.loads((out / "checkpoint.json").read_text())
        with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the checkpoint in {str(out)!r}: {exc}; delete it or "
                        "drop resume") from exc
    state = _unpack(tree, arrays)
    old = state["config"]
    diff = sorted(k for k in set(old) | set(c) if k not in RESUMABLE_KEYS
                  and json.dumps(old.get(k), default=str) != json.dumps(c.get(k), default=str))
    if diff:
        raise DataError(
            f"the checkpoint in {str(out)!r} was made with a different configuration "
            f"(differs in {diff}); use another output folder or drop resume")
    h = state["history"]
    n = len(h["iteration"])
    state["history"] = [{"iteration": int(h["iteration"][i]), "epoch": float(h["epoch"][i]),
                         "train_loss": float(h["train_loss"][i]),
                         "wall_time": float(h["wall_time"][i])} for i in range(n)]
    return state


