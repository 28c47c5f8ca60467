"""Tests of ``fimlab sweep``: the grid, the engine (serial and Dask), resume, the report.

Every run here is a real (tiny) training run through :func:`fimlab.train.run_training`.
One Dask ``LocalCluster`` (2 processes, 1 thread each) serves the whole module.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fimlab as fl
from fimlab import sweep as sw
from fimlab.cli import main as cli_main
from fimlab.train import run_training

# the tiny problem every run trains (a few iterations of a small synthetic auto-encoder)
TINY_BASE = {"benchmark": "synthetic", "epochs": 1}
NGD = "exact"  # a natural-gradient method (uses the damping)

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(grid, base=None, **meta):
    cfg = {"sweep": {"name": "tiny", **meta}, "base": {**TINY_BASE, **(base or {})},
           "grid": grid}
    return sw.spec_from_dict(cfg)


def _logging_runner(log, config, out_dir=None):
    """run_training, logging each call (one JSON line; O_APPEND is safe across processes)."""
    with open(log, "a") as fh:
        fh.write(json.dumps(config, sort_keys=True) + "\n")
    return run_training(config, out_dir=out_dir)


def _thread_probe_runner(log, config, out_dir=None):
    """run_training, then log the thread counts of every BLAS/OpenMP library and Numba
    as the run left them (still inside the sweep's limits)."""
    import numba
    from threadpoolctl import threadpool_info

    out = run_training(config, out_dir=out_dir)
    with open(log, "a") as fh:
        fh.write(json.dumps({"libs": {f'{i["internal_api"]}:{Path(i["filepath"]).name}':
                                      i["num_threads"] for i in threadpool_info()},
                             "numba": numba.get_num_threads()}) + "\n")
    return out


def _logged(log):
    p = Path(log)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=40)
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


# ------------------------------------------------------------------- the grid
def test_grid_points_are_the_cartesian_product_of_each_block():
    spec = tiny_spec([
        {"method": [NGD, "sgd"], "lr": [0.1, 0.01], "damping": [1e-3, 1e-2, 1e-1]},
        {"method": ["adam"], "lr": [1e-3, 1e-2]},
    ])
    expected = [
        {"method": m, "lr": lr, "damping": d}
        for m in (NGD, "sgd") for lr in (0.1, 0.01) for d in (1e-3, 1e-2, 1e-1)
    ] + [{"method": "adam", "lr": 1e-3}, {"method": "adam", "lr": 1e-2}]
    assert spec.points() == expected
    assert spec.runs()[0] == {**TINY_BASE, **expected[0]}
    assert spec.option_columns() == ["method", "lr", "damping", *TINY_BASE]
    # run ids: one per distinct option set, independent of the order of the options
    ids = [sw.run_id(r) for r in spec.runs()]
    assert len(set(ids)) == len(ids)
    r = spec.runs()[3]
    assert sw.run_id(dict(reversed(list(r.items())))) == ids[3]
    assert sw.run_id({**r, "lr": 1}) != sw.run_id({**r, "lr": 1.0})


def test_duplicate_points_across_blocks_run_once():
    spec = tiny_spec([{"lr": [0.1, 0.2]}, {"lr": [0.2, 0.3]}])
    assert [p["lr"] for p in spec.points()] == [0.1, 0.2, 0.3]


def test_nested_options_by_dotted_name_or_table_are_the_same_run():
    # TOML parses two_level.coarse_space = [...] into nested tables; both spellings agree
    a = sw.spec_from_dict({"base": TINY_BASE, "grid": {
        "two_level": {"coarse_space": ["nicolaides", "spectral"]}, "lr": [0.1]}})
    b = sw.spec_from_dict({"base": TINY_BASE, "grid": {
        "two_level.coarse_space": ["nicolaides", "spectral"], "lr": [0.1]}})
    assert a.points() == b.points()
    assert a.varied_keys() == ["two_level.coarse_space", "lr"]
    run = sw.expand_options(a.runs()[1])
    assert run["two_level"] == {"coarse_space": "spectral"}
    assert sw.run_id(a.runs()[1]) == sw.run_id(run)
    merged = sw.expand_options({"two_level": {"form": "residual"},
                                "two_level.coarse_space": "spectral"})
    assert merged == {"two_level": {"form": "residual", "coarse_space": "spectral"}}


def test_random_search_is_seeded_and_stays_in_its_bounds():
    cfg = {"sweep": {"search": "random", "samples": 50, "seed": 3}, "base": TINY_BASE,
           "grid": {"method": ["sgd", "adam"], "lr": {"log_uniform": [1e-4, 1e-1]},
                    "batch_size": {"int_uniform": [8, 16]},
                    "momentum": {"uniform": [0.5, 0.9]}}}
    a, b = sw.spec_from_dict(cfg), sw.spec_from_dict(cfg)
    pa = a.points()
    assert pa == b.points() and len(pa) == 50
    lrs = np.array([p["lr"] for p in pa])
    assert np.all((lrs >= 1e-4) & (lrs <= 1e-1))
    # log-uniform: the log spreads over the decades
    assert np.log10(lrs).min() < -3.3 and np.log10(lrs).max() > -1.7
    assert {p["method"] for p in pa} == {"sgd", "adam"}
    assert {p["batch_size"] for p in pa} <= set(range(8, 17))
    assert all(isinstance(p["batch_size"], int) for p in pa)
    assert all(0.5 <= p["momentum"] <= 0.9 for p in pa)
    cfg["sweep"]["seed"] = 4
    other = sw.spec_from_dict(cfg)
    assert other.points() != pa and other.config_hash != a.config_hash


def test_fast_mode_and_set_overrides():
    cfg = {"base": {**TINY_BASE, "epochs": 5}, "grid": {"lr": [1e-3, 1e-2, 1e-1]},
           "fast": {"base": {"epochs": 1}, "grid": {"lr": [1e-2]}}}
    full, fast = sw.spec_from_dict(cfg), sw.spec_from_dict(cfg, fast=True)
    assert [r["epochs"] for r in full.runs()] == [5, 5, 5]
    assert fast.runs() == [{**TINY_BASE, "epochs": 1, "lr": 1e-2}]
    assert full.config_hash != fast.config_hash
    assert sw.default_results_path(fast).name == "sweep-fast.csv"
    over = sw.spec_from_dict(cfg, fast=True, overrides=sw.parse_set(["epochs=2"]))
    assert over.runs()[0]["epochs"] == 2
    assert sw.default_results_path(over).name == f"sweep-fast-{over.config_hash[:8]}.csv"
    # --set also fixes an option that the grid varies
    cfg["grid"] = {"lr": [1e-3, 1e-2], "benchmark": ["synthetic", "digits"]}
    one = sw.spec_from_dict(cfg, overrides={"benchmark": "synthetic"})
    assert one.runs() == [{**TINY_BASE, "epochs": 5, "lr": 1e-3},
                          {**TINY_BASE, "epochs": 5, "lr": 1e-2}]
    assert sw.parse_set(["a=1e-3", "b=true", "c=[1, 2]", "d=digits"]) == {
        "a": 1e-3, "b": True, "c": [1, 2], "d": "digits"}


# ------------------------------------------------------------------ bad input
def test_unknown_option_is_refused_naming_the_valid_ones():
    with pytest.raises(fl.UnknownNameError, match=r"'lerning_rate'.*Valid options:"):
        tiny_spec({"lerning_rate": [0.1]})
    with pytest.raises(fl.UnknownNameError, match=r"'dampng'.*Did you mean 'damping'"):
        tiny_spec({"lr": [0.1], "dampng": [1e-3]})
    with pytest.raises(fl.UnknownNameError, match=r"in \[base\]"):
        tiny_spec({"lr": [0.1]}, base={"epoch": 1})
    with pytest.raises(fl.UnknownNameError):  # dotted name: its head is checked
        tiny_spec({"twolevel.coarse_space": ["spectral"]})


@pytest.mark.parametrize("grid, msg", [
    (None, "the grid is empty"),
    ({}, "the grid is empty"),
    ([], "the grid is empty"),
    ({"lr": []}, "option 'lr' has no values"),
    ([{"lr": [0.1]}, {}], "grid block 1 is empty"),
    ({"lr": 0.1}, r"must be a list of values.*put lr = 0.1 in \[base\]"),
    ({"lr": {"log_uniform": [1e-3, 1e-1]}}, "needs \\[sweep\\] search = 'random'"),
    ({"epochs": [1, 2]}, "both fixed .* and varied"),
])
def test_bad_grids_are_refused_with_a_reason(grid, msg):
    cfg = {"base": TINY_BASE}
    if grid is not None:
        cfg["grid"] = grid
    with pytest.raises(sw.SweepConfigError, match=msg):
        sw.spec_from_dict(cfg)
    assert issubclass(sw.SweepConfigError, ValueError)


@pytest.mark.parametrize("sweep, grid, msg", [
    ({"search": "bayes"}, {"lr": [0.1]}, "must be 'grid' or 'random'"),
    ({"search": "random", "samples": 0}, {"lr": [0.1]}, "samples = a positive"),
    ({"search": "random"}, {"lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
    ({"search": "random"}, {"lr": {"log_uniform": [0, 1]}}, "low > 0"),
    ({"search": "random"}, {"lr": {"uniform": [1, 0]}}, "low <= high"),
    ({"colour": "red"}, {"lr": [0.1]}, r"unknown key\(s\) \['colour'\] in \[sweep\]"),
])
def test_bad_sweep_tables_are_refused(sweep, grid, msg):
    with pytest.raises(sw.SweepConfigError, match=msg):
        sw.spec_from_dict({"sweep": sweep, "base": TINY_BASE, "grid": grid})


def test_bad_config_files(tmp_path):
    with pytest.raises(sw.SweepConfigError, match="not found"):
        sw.load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nlr = [")
    with pytest.raises(sw.SweepConfigError, match="not valid TOML"):
        sw.load_spec(bad)
    with pytest.raises(sw.SweepConfigError, match="--set takes KEY=VALUE"):
        sw.parse_set(["epochs"])


def test_unreachable_scheduler_fails_fast_with_a_clear_error(tmp_path):
    spec = tiny_spec({"method": ["sgd"], "lr": [0.1]})
    t0 = time.perf_counter()
    with pytest.raises(sw.SchedulerUnreachableError,
                       match=r"no Dask scheduler answered at 'tcp://127.0.0.1:9' within 1 s"):
        sw.run_sweep(spec, tmp_path / "r.csv", scheduler="tcp://127.0.0.1:9",
                     connect_timeout=1.0)
    assert time.perf_counter() - t0 < 10
    assert issubclass(sw.SchedulerUnreachableError, ConnectionError)
    # nothing was written: no results file, no sidecar
    assert list(tmp_path.iterdir()) == []


def test_results_of_another_config_are_refused_saying_why(tmp_path):
    out = tmp_path / "r.csv"
    a = tiny_spec({"method": ["sgd"], "lr": [0.1]})
    sw.run_sweep(a, out, workers=1)
    assert len(_rows(out)) == 1
    b = tiny_spec({"method": ["sgd"], "lr": [0.1]}, base={"seed": 1})
    with pytest.raises(sw.ResultsMismatchError,
                       match=r"refusing to mix.*option 'seed' is '<unset>' there, 1 here"):
        sw.run_sweep(b, out, workers=1)
    c = tiny_spec({"method": ["sgd"], "lr": [0.1, 0.2]})
    with pytest.raises(sw.ResultsMismatchError, match=r"the grid is .* there"):
        sw.run_sweep(c, out, workers=1)
    # without the sidecar the hash alone still refuses
    (tmp_path / "r.csv.sweep.json").unlink()
    with pytest.raises(sw.ResultsMismatchError, match=a.config_hash):
        sw.run_sweep(b, out, workers=1)
    # a CSV that is not a sweep's
    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2\n")
    with pytest.raises(sw.ResultsMismatchError, match="not a fimlab sweep results file"):
        sw.run_sweep(a, other, workers=1)
    assert len(_rows(out)) == 1  # nothing was added by the refused sweeps


# ------------------------------------------------------------ the engine
GRID = {"method": [NGD, "sgd"], "lr": [0.05, 0.2], "damping": [1e-2, 1e-1],
        "seed": [0, 1]}


def _compare_rows(a_path, b_path):
    a = pd.read_csv(a_path).sort_values("run_id").reset_index(drop=True)
    b = pd.read_csv(b_path).sort_values("run_id").reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for col in a.columns:
        if col == "wall_time":
            continue
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(),
                                       rtol=1e-12, atol=0, equal_nan=True, err_msg=col)
        else:
            pd.testing.assert_series_equal(a[col], b[col], check_names=False)
    return a


def test_local_cluster_gives_the_same_rows_as_serial(tmp_path, client):
    spec = tiny_spec(GRID)
    s1 = sw.run_sweep(spec, tmp_path / "serial.csv", workers=1)
    s2 = sw.run_sweep(spec, tmp_path / "dask.csv", client=client)
    assert s1.ran == s2.ran == 16 and s2.workers == 2
    df = _compare_rows(tmp_path / "serial.csv", tmp_path / "dask.csv")
    assert (df["status"] == "ok").all()
    assert df["config_hash"].eq(spec.config_hash).all()
    # each row is the training run of its options
    r = df.iloc[5]
    opts = {"method": r["method"], "lr": float(r["lr"]), "damping": float(r["damping"]),
            "seed": int(r["seed"]), **TINY_BASE}
    assert sw.run_id(opts) == r["run_id"]
    direct = run_training(opts)
    assert direct["final_train_loss"] == pytest.approx(r["final_train_loss"], rel=1e-12)
    assert direct["best_val_loss"] == pytest.approx(r["best_val_loss"], rel=1e-12)


def test_every_run_has_one_blas_thread_serial_or_on_the_cluster(tmp_path, client):
    spec = tiny_spec({"method": ["KFAC", "sgd"], "lr": [0.1]}, base={"benchmark": "digits",
                                                                    "iterations": 2})
    for where, kw in [("serial", {"workers": 1}), ("dask", {"client": client})]:
        log = tmp_path / f"{where}.jsonl"
        runner = functools.partial(_thread_probe_runner, str(log))
        sw.run_sweep(spec, tmp_path / f"{where}.csv", runner=runner, **kw)
        probes = _logged(log)
        assert len(probes) == 2
        for p in probes:
            # numpy's, SciPy's (loaded lazily during the run) and OpenMP libraries alike
            assert any("scipy" in k or "openmp" in k for k in p["libs"]), p
            assert set(p["libs"].values()) == {1} and p["numba"] == 1, (where, p)


def test_a_raising_or_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path, client):
    spec = tiny_spec({"method": ["sgd"], "lr": [0.1, -1.0, 1e6]})
    for where, kw in [("serial", {"workers": 1}), ("dask", {"client": client})]:
        out = tmp_path / f"{where}.csv"
        s = sw.run_sweep(spec, out, **kw)
        assert (s.ran, s.failed, s.diverged) == (3, 1, 1)
        rows = {float(r["lr"]): r for r in _rows(out)}
        assert rows[0.1]["status"] == "ok" and rows[0.1]["error"] == ""
        assert math.isfinite(float(rows[0.1]["final_train_loss"]))
        bad = rows[-1.0]
        assert bad["status"] == "failed" and bad["final_train_loss"] == ""
        with pytest.raises(Exception) as direct:  # the runner's own message, one line
            run_training({**TINY_BASE, "method": "sgd", "lr": -1.0})
        assert bad["error"] == f"{type(direct.value).__name__}: {direct.value}".replace(
            "\n", " | ")
        # the runner's own diagnosis of the divergence (it names the iteration)
        assert rows[1e6]["status"] == "diverged"
        assert "diverged at iteration" in rows[1e6]["error"]
    # a recorded failure is not run again, unless asked
    log = tmp_path / "calls.jsonl"
    runner = functools.partial(_logging_runner, str(log))
    s = sw.run_sweep(spec, tmp_path / "serial.csv", workers=1, runner=runner)
    assert s.ran == 0 and s.skipped == 3 and _logged(log) == []
    s = sw.run_sweep(spec, tmp_path / "serial.csv", workers=1, runner=runner,
                     retry_failed=True)
    assert s.ran == 2 and sorted(c["lr"] for c in _logged(log)) == [-1.0, 1e6]
    df = sw.read_results(tmp_path / "serial.csv")
    assert len(df) == 3  # the last row per run wins


def test_resume_after_interruption_runs_only_the_missing_points(tmp_path):
    spec = tiny_spec(GRID)
    out, log = tmp_path / "r.csv", tmp_path / "calls.jsonl"
    runner = functools.partial(_logging_runner, str(log))
    seen = []

    def stop_after_five(row):
        seen.append(row["run_id"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    s = sw.run_sweep(spec, out, workers=1, runner=runner, on_result=stop_after_five)
    assert s.interrupted and s.ran == 5
    first = _rows(out)
    assert [r["run_id"] for r in first] == seen
    # a sweep killed while writing leaves a partial last line: it is dropped on resume
    with open(out, "a") as fh:
        fh.write("deadbeef,12")
    log.unlink()
    s = sw.run_sweep(spec, out, workers=1, runner=runner)
    assert not s.interrupted and (s.skipped, s.ran) == (5, 11)
    rerun = {sw.run_id(c) for c in _logged(log)}
    assert len(rerun) == 11 and not rerun & set(seen)
    final = _rows(out)
    assert final[:5] == first
    assert sorted(r["run_id"] for r in final) == sorted(sw.run_id(r) for r in spec.runs())
    # nothing left to do
    log.unlink()
    s = sw.run_sweep(spec, out, workers=1, runner=runner)
    assert (s.skipped, s.ran) == (16, 0) and _logged(log) == []


def test_resume_on_the_cluster_after_interruption(tmp_path, client):
    spec = tiny_spec(GRID)
    out, log = tmp_path / "r.csv", tmp_path / "calls.jsonl"
    runner = functools.partial(_logging_runner, str(log))

    def stop(row):
        raise KeyboardInterrupt

    s = sw.run_sweep(spec, out, client=client, runner=runner, on_result=stop)
    assert s.interrupted and s.ran == 1
    done = {r["run_id"] for r in _rows(out)}
    # (the runs in flight at the interruption may still finish on the workers, logging
    # to the first log; the resumed sweep logs to its own)
    log = tmp_path / "calls-resumed.jsonl"
    runner = functools.partial(_logging_runner, str(log))
    s = sw.run_sweep(spec, out, client=client, runner=runner)
    assert (s.skipped, s.ran) == (1, 15)
    rerun = [sw.run_id(c) for c in _logged(log)]
    assert sorted(rerun) == sorted(set(rerun)) and not set(rerun) & done
    ids = [r["run_id"] for r in _rows(out)]
    assert sorted(ids) == sorted(sw.run_id(r) for r in spec.runs())  # none lost, no dup
    _compare_rows(out, out)  # parses cleanly


def test_resume_after_the_sweep_process_is_killed(tmp_path):
    """SIGKILL the CLI (and its local cluster) mid-way; the rerun completes the table."""
    import os
    import signal
    import subprocess
    import sys

    cfg = tmp_path / "kill.toml"
    cfg.write_text('[sweep]\nname = "kill"\n[base]\nbenchmark = "synthetic"\n'
                   'epochs = 8\n[grid]\nmethod = ["KFAC"]\nlr = [0.05, 0.1, 0.2]\n'
                   'damping = [1e-3, 1e-2]\nseed = [0, 1]\n')
    out = tmp_path / "r.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fimlab", "sweep", str(cfg), "--workers", "2",
         "--results", str(out), "--no-progress"],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(_rows(out)) >= 2:
                break
            time.sleep(0.05)
    finally:  # the whole session this test started: the CLI, its scheduler and workers
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _rows(out)
    spec = sw.load_spec(cfg)
    total = len(spec.points())
    assert 2 <= len(before) < total, "the sweep was not killed mid-way"
    log = tmp_path / "calls.jsonl"
    s = sw.run_sweep(spec, out, workers=1,
                     runner=functools.partial(_logging_runner, str(log)))
    assert (s.skipped, s.ran) == (len(before), total - len(before))
    assert not {sw.run_id(c) for c in _logged(log)} & {r["run_id"] for r in before}
    after = _rows(out)
    assert after[: len(before)] == before
    assert sorted(r["run_id"] for r in after) == sorted(sw.run_id(r) for r in spec.runs())
    assert all(r["status"] == "ok" for r in after)


# ------------------------------------------------------------------ report
def test_report_best_settings_match_a_direct_pandas_computation(tmp_path):
    spec = tiny_spec([GRID, {"method": ["adam"], "lr": [1e-3, 1e-2], "seed": [0, 1]},
                      {"method": ["sgd"], "lr": [-1.0], "damping": [1e-2], "seed": [0]}])
    out = tmp_path / "r.csv"
    sw.run_sweep(spec, out, workers=1)
    df = pd.read_csv(out)
    assert (df["status"] == "failed").sum() == 1
    best = sw.best_settings(sw.read_results(out))
    # direct: mean over seeds of ok runs, settings with any failure excluded, argmin
    expected = {}
    for method, sub in df.groupby("method"):
        means = {}
        for (lr, damp), g in sub.groupby(["lr", "damping"], dropna=False):
            if (g["status"] == "ok").all():
                means[(lr, damp)] = g["final_train_loss"].mean()
        expected[method] = min(means, key=means.get), min(means.values())
    assert sorted(best["method"]) == sorted(expected)
    for _, row in best.iterrows():
        (lr, damp), value = expected[row["method"]]
        assert row["lr"] == lr
        assert (math.isnan(damp) and math.isnan(row["damping"])) or row["damping"] == damp
        assert row["final_train_loss"] == pytest.approx(value, rel=1e-12)
        assert row["runs"] == 2

    # the CLI report: the same table as text, and one heat-map per method
    figs = tmp_path / "figs"
    rc = cli_main(["sweep", str(out), "--report", "--figures", str(figs)])
    assert rc == 0
    pngs = sorted(p.name for p in figs.glob("*.png"))
    assert pngs == [f"r_heatmap_{m}.png" for m in sorted(expected)]
    for p in figs.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_heatmap_cells_are_the_best_seed_mean_per_lr_and_damping(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    spec = tiny_spec({"method": [NGD], "lr": [0.05, 0.2], "damping": [1e-2, 1e-1],
                      "seed": [0, 1]})
    out = tmp_path / "r.csv"
    sw.run_sweep(spec, out, workers=1)
    df = pd.read_csv(out)
    table = sw.setting_table(df)
    expected = df.groupby(["lr", "damping"])["final_train_loss"].mean()
    got = table.set_index(["lr", "damping"])["final_train_loss"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(),
                                   check_names=False, rtol=1e-12)
    captured = {}
    real_imshow = plt.Axes.imshow

    def spy(self, Z, *a, **k):
        captured["Z"] = np.ma.filled(Z, np.nan)
        return real_imshow(self, Z, *a, **k)

    plt.Axes.imshow = spy
    try:
        [png] = sw.plot_heatmaps(df, tmp_path)
    finally:
        plt.Axes.imshow = real_imshow
    Z = captured["Z"]  # rows: damping ascending, columns: lr ascending
    for i, d in enumerate([1e-2, 1e-1]):
        for j, lr in enumerate([0.05, 0.2]):
            assert Z[i, j] == pytest.approx(expected[(lr, d)], rel=1e-12)
    assert png.name == f"heatmap_{NGD}.png"


# ---------------------------------------------------------------------- CLI
def test_cli_runs_resumes_and_reports(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        '[sweep]\nname = "tiny"\n'
        f'[base]\nbenchmark = "{TINY_BASE["benchmark"]}"\nepochs = {TINY_BASE["epochs"]}\n'
        f'[grid]\nmethod = ["{NGD}"]\nlr = [0.05, 0.2]\ndamping = [1e-2]\n'
    )
    res = tmp_path / "out" / "r.csv"
    argv = ["sweep", str(cfg), "--results", str(res), "--workers", "1", "--no-progress"]
    assert cli_main([*argv, "--dry-run"]) == 0
    assert "2 points, 0 already in" in capsys.readouterr().out
    assert not res.exists()
    assert cli_main(argv) == 0
    assert "2 run now (0 failed, 0 diverged)" in capsys.readouterr().out
    assert cli_main(argv) == 0
    assert "2 already in" in capsys.readouterr().out
    assert cli_main(["sweep", str(cfg), "--results", str(res), "--report"]) == 0
    text = capsys.readouterr().out
    assert "best setting by final_train_loss" in text and f"heatmap_{NGD}.png" in text
    # errors: a message and exit code 2, no traceback
    assert cli_main([*argv, "--set", "seed=3"]) == 2
    assert "refusing to mix" in capsys.readouterr().err
    cfg.write_text('[base]\nbenchmark = "synthetic"\n[grid]\nlr = []\n')
    assert cli_main(argv) == 2
    assert "has no values" in capsys.readouterr().err


# -------------------------------------------------------------- experiments
EXPERIMENTS = sorted((REPO / "experiments").glob("sweep_*.toml"))
KPSVD_FAMILY = {"KPSVD", "KFAC-corrected", "Deflation", "Lanczos"}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_the_papers_sweep_configs_are_valid():
    assert {p.name for p in EXPERIMENTS} >= {"sweep_kpsvd.toml", "sweep_twolevel.toml"}
    for path in EXPERIMENTS:
        full = sw.load_spec(path)
        fast = sw.load_spec(path, fast=True)
        lr_damp = [b for b in full.grids if "damping" in b]
        assert lr_damp and all(len(b["lr"]) == 4 and len(b["damping"]) == 4
                               for b in lr_damp), path.name
        assert len(fast.points()) <= 8 < len(full.points()), path.name
        assert sw.check_runs(fast) == [], path.name
        # every option of every full-grid run is accepted by fimlab.train, except the
        # KPSVD family's method names while that family is not installed
        bad = sw.check_runs(full)
        if _has("fimlab.approx.kpsvd"):
            assert bad == [], (path.name, bad[:1])
        else:
            assert {o["method"] for o, _ in bad} <= KPSVD_FAMILY, (path.name, bad[:1])
            assert all("unknown method" in m for _, m in bad)


def test_dry_run_reports_the_points_the_runner_would_reject(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[base]\nbenchmark = "synthetic"\n[grid]\nmethod = ["sgd", "nosuch"]\n'
                   'lr = [0.1, -1.0]\n')
    assert cli_main(["sweep", str(cfg), "--dry-run", "--results", str(tmp_path / "r.csv")]) == 1
    out = capsys.readouterr().out
    assert "4 points, 0 already in" in out and "3 of them would fail" in out
    assert "unknown method 'nosuch'" in out
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_papers_sweeps_run_in_fast_mode_on_two_workers(path, tmp_path, client):
    spec = sw.load_spec(path, fast=True)
    s = sw.run_sweep(spec, tmp_path / "r.csv", client=client)
    assert s.ran == len(spec.points()) and s.workers == 2
    df = sw.read_results(tmp_path / "r.csv")
    two_level = df.filter(like="two_level.").notna().any(axis=1)
    if _has("fimlab.approx.twolevel") or not two_level.any():
        assert s.failed == 0 and (df["status"] == "ok").all(), df["error"].dropna().tolist()
    else:  # two-level points need fimlab.approx.twolevel: recorded, with the reason
        assert (df.loc[two_level, "status"] == "failed").all()
        assert df.loc[two_level, "error"].str.contains("fimlab.approx.twolevel").all()
        assert (df.loc[~two_level, "status"] == "ok").all()
    best = sw.best_settings(df)
    assert len(best) >= 1 and best["final_train_loss"].notna().all()
