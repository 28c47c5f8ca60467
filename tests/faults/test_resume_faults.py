"""Interrupted and torn writes: ``fimlab train`` killed (SIGINT, SIGKILL) at seeded random
iterations resumes bit for bit; a torn or truncated checkpoint is refused clearly; a crash
while a checkpoint is written leaves the previous one intact; finished results are never
overwritten; a sweep interrupted by Ctrl-C on a local Dask cluster ends with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fimlab as fl
from fimlab.train import run_training

from .conftest import ROOT, run_cli

TINY = {"benchmark": "synthetic", "epochs": 4, "batch_size": 24, "damping": 1e-2,
        "lr": 0.05, "n_train": 120, "n_val": 24, "method": "KFAC", "stat_period": 2,
        "inverse_period": 3}  # 5 iterations per epoch, 20 in all

#: the kill points: drawn once from a fixed seed (iterations 1 .. 18)
KILL_AT = sorted(np.random.default_rng(15).choice(np.arange(1, 19), size=2, replace=False)
                 .tolist())


def _curve(res):
    return ([h["train_loss"] for h in res["history"]],
            [(e["train_loss"], e["val_loss"]) for e in res["epoch_history"]])


@pytest.fixture(scope="module")
def uninterrupted():
    return _curve(run_training(TINY))


def _killed_run(out, sig, at):
    """Run TINY into ``out`` in a child process that sends itself ``sig`` at iteration
    ``at`` (from the per-iteration callback: a kill at an arbitrary point of the loop)."""
    code = textwrap.dedent(f"""
        import os, signal
        from fimlab.train import run_training
        # Ctrl-C raises KeyboardInterrupt even when this test runs in the background,
        # where the shell started it with SIGINT ignored (inherited by this child)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        def cb(rec):
            if rec["iteration"] == {at}:
                os.kill(os.getpid(), signal.{sig})
        run_training({TINY!r}, {str(out)!r}, callback=cb)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("sig, at", [("SIGINT", KILL_AT[0]), ("SIGKILL", KILL_AT[1])])
def test_train_killed_at_a_random_point_resumes_bit_for_bit(tmp_path, sig, at, uninterrupted):
    proc = _killed_run(tmp_path, sig, at)
    assert proc.returncode != 0  # it was killed
    assert (tmp_path / "checkpoint.npz").is_file()
    assert not (tmp_path / "checkpoint.json").exists()  # one file, not two
    resumed = run_training({**TINY, "resume": True}, tmp_path)
    assert _curve(resumed) == uninterrupted


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch,
                                                                 uninterrupted):
    """A crash in the middle of a checkpoint write (here: the disk 'fills up' after half
    the bytes of the second checkpoint) leaves the first one whole: the resume is exact."""
    import fimlab._atomic as atomic

    real = np.savez
    calls = {"n": 0}

    def savez_then_crash(fh, **arrays):
        calls["n"] += 1
        if calls["n"] == 3:  # checkpoints at iterations 0, 5, then this one at 10
            real(fh, **arrays)
            fh.truncate(fh.tell() // 2)
            raise OSError(28, "No space left on device")
        return real(fh, **arrays)

    monkeypatch.setattr(atomic.np, "savez", savez_then_crash)
    with pytest.raises(OSError, match="No space"):
        run_training(TINY, tmp_path)
    monkeypatch.setattr(atomic.np, "savez", real)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was removed
    resumed = run_training({**TINY, "resume": True}, tmp_path)
    assert _curve(resumed) == uninterrupted


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_torn_checkpoint_is_refused_clearly(tmp_path, damage):
    run_training({**TINY, "epochs": 1}, tmp_path)
    ck = tmp_path / "checkpoint.npz"
    data = ck.read_bytes()
    ck.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64,
                    "empty": b""}[damage])
    with pytest.raises(fl.DataError, match="torn or truncated") as info:
        run_training({**TINY, "resume": True}, tmp_path)
    assert "checkpoint.npz" in str(info.value)


def test_finished_results_are_not_overwritten(tmp_path):
    res = run_training({**TINY, "epochs": 1}, tmp_path)
    before = (tmp_path / "result.json").read_text()
    with pytest.raises(fl.OutputExistsError, match="resume"):
        run_training({**TINY, "epochs": 1, "lr": 0.01}, tmp_path)
    assert (tmp_path / "result.json").read_text() == before
    assert json.loads(before)["final_train_loss"] == res["final_train_loss"]


def test_a_fresh_start_sets_an_interrupted_run_aside(tmp_path, uninterrupted):
    """Rerun without ``resume`` where a run was killed: the unfinished run's checkpoint and
    histories move to ``partial-1/`` (byte for byte), with a warning; nothing is lost."""
    proc = _killed_run(tmp_path, "SIGKILL", KILL_AT[0])
    assert proc.returncode != 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert "checkpoint.npz" in before
    with pytest.warns(UserWarning, match="partial-1"):
        fresh = run_training(TINY, tmp_path)
    assert _curve(fresh) == uninterrupted
    kept = tmp_path / "partial-1"
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before
    # and the kept run can still be continued where it stopped
    resumed = run_training({**TINY, "resume": True}, kept)
    assert _curve(resumed) == uninterrupted


def test_train_cli_refuses_a_finished_out_folder(tmp_path):
    args = ["train", "--benchmark", "synthetic", "--methods", "sgd", "--epochs", "1",
            "--n-train", "64", "--batch-size", "32", "--out", tmp_path, "--no-plot",
            "--no-progress"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    summary = (tmp_path / "summary.json").read_text()
    again = run_cli(*args)
    assert again.returncode == 3
    lines = again.stderr.strip().splitlines()
    assert lines[-1].startswith("fimlab train: error: ") and "--resume" in lines[-1]
    assert "Traceback" not in again.stderr
    assert (tmp_path / "summary.json").read_text() == summary
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0 and "already done" in resumed.stdout


def test_sweep_ctrl_c_on_a_local_cluster_is_one_line(tmp_path):
    """SIGINT to the sweep (not to its workers, as a terminal's Ctrl-C reaches the whole
    process group: the workers ignore it by design) ends with exit code 130 and no Dask
    traceback; the rerun completes the table."""
    pytest.importorskip("distributed")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[sweep]\nname = "ctrlc"\n[base]\nbenchmark = "synthetic"\nepochs = 6\n'
                   '[grid]\nmethod = ["sgd"]\nlr = [0.01, 0.02, 0.05, 0.1]\nseed = [0, 1]\n')
    out = tmp_path / "r.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fimlab", "sweep", str(cfg), "--workers", "2", "--results",
         str(out), "--no-progress"], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) >= 2:  # header + 1 row
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode == 0:
        pytest.skip("the sweep finished before the interrupt (a very fast machine)")
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    again = run_cli("sweep", cfg, "--workers", "1", "--results", out, "--no-progress",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    import csv

    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 8 and len({r["run_id"] for r in rows}) == 8


def test_an_old_two_file_checkpoint_is_refused_with_what_to_do(tmp_path):
    """A format-1 checkpoint (arrays in the .npz, the state in a .json beside it) is
    named as such, with the way out; a foreign .npz alone is 'not a fimlab checkpoint'."""
    import numpy as np

    from fimlab._atomic import load_checkpoint
    from fimlab._errors import DataError

    np.savez(tmp_path / "checkpoint.npz", W0=np.zeros((2, 2)))
    with pytest.raises(DataError, match="not a fimlab checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.npz")
    (tmp_path / "checkpoint.json").write_text('{"epoch": 1}')
    with pytest.raises(DataError, match=r"older fimlab \(format 1.*without --resume"):
        load_checkpoint(tmp_path / "checkpoint.npz")
