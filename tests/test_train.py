"""``fimlab train`` and :func:`fimlab.train.run_training`: results, determinism, resume,
divergence, bad input, the command line and the experiment files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import fimlab as fl
from fimlab.cli import main
from fimlab.train import (
    BENCHMARKS,
    load_experiment,
    resolve_config,
    run_comparison,
    run_training,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

TINY = {"benchmark": "synthetic", "epochs": 2, "batch_size": 32, "damping": 1e-2,
        "lr": 0.05, "n_train": 128, "n_val": 32}


def _curve(res):
    return [h["train_loss"] for h in res["history"]], [
        (e["train_loss"], e["val_loss"]) for e in res["epoch_history"]]


def test_run_training_contract(tmp_path):
    res = run_training({**TINY, "method": "KFAC"}, out_dir=tmp_path)
    for key in ("final_train_loss", "best_val_loss", "final_val_loss", "wall_time", "epochs",
                "status", "history", "epoch_history", "seconds_per_epoch", "config"):
        assert key in res
    assert res["status"] == "ok" and res["message"] == ""
    assert res["epochs"] == 2 and res["iterations"] == len(res["history"]) == 8
    ep = res["epoch_history"]
    assert [e["iteration"] for e in ep] == [0, 4, 8]
    assert res["final_train_loss"] == ep[-1]["train_loss"] < ep[0]["train_loss"]
    assert res["best_val_loss"] == min(e["val_loss"] for e in ep)
    assert res["wall_time"] == res["history"][-1]["wall_time"] > 0
    rows = list(csv.DictReader(open(tmp_path / "iterations.csv")))
    assert [float(r["train_loss"]) for r in rows] == [h["train_loss"] for h in res["history"]]
    assert len(list(csv.DictReader(open(tmp_path / "epochs.csv")))) == 3
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("method", ["KFAC", "sgd"])
def test_same_seed_same_curve_bit_for_bit(method):
    a = run_training({**TINY, "method": method, "seed": 3})
    b = run_training({**TINY, "method": method, "seed": 3})
    assert _curve(a) == _curve(b)
    c = run_training({**TINY, "method": method, "seed": 4})
    assert _curve(c) != _curve(a)


@pytest.mark.parametrize("opts", [
    {"method": "KFAC", "stat_period": 2, "inverse_period": 3},
    {"method": "exact", "ema": "window", "window": 3, "stat_period": 3},
    {"method": "adam"},
])
def test_resume_gives_the_uninterrupted_curve(tmp_path, opts):
    cfg = {**TINY, **opts, "epochs": 4, "batch_size": 24}  # 5 iterations per epoch
    full = run_training(cfg)
    # (1) stop after 2 epochs, then continue to 4
    run_training({**cfg, "epochs": 2}, out_dir=tmp_path / "a")
    resumed = run_training({**cfg, "resume": True}, out_dir=tmp_path / "a")
    assert _curve(resumed) == _curve(full)
    # (2) Ctrl-C in the middle of epoch 3: the history so far stays on disk; resuming
    # restarts from the end of epoch 2, bit for bit
    def interrupt(rec):
        if rec["iteration"] == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, out_dir=tmp_path / "b", callback=interrupt)
    kept = json.loads((tmp_path / "b" / "result.json").read_text())
    assert kept["status"] == "interrupted" and kept["iterations"] == 13
    assert len(list(csv.DictReader(open(tmp_path / "b" / "iterations.csv")))) == 13
    resumed = run_training({**cfg, "resume": True}, out_dir=tmp_path / "b")
    assert _curve(resumed) == _curve(full)


def test_resume_refuses_a_different_configuration(tmp_path):
    run_training({**TINY, "method": "sgd", "epochs": 1}, out_dir=tmp_path)
    with pytest.raises(fl.DataError, match="lr"):
        run_training({**TINY, "method": "sgd", "lr": 0.01, "resume": True}, out_dir=tmp_path)


def test_divergence_stops_with_a_clear_message_and_keeps_results(tmp_path):
    cfg = {**TINY, "method": "KFAC", "lr": 1e6, "kl_clip": None, "momentum": 0.0,
           "benchmark": "synthetic", "likelihood": "gaussian", "activation": "linear"}
    res = run_training(cfg, out_dir=tmp_path)
    assert res["status"] == "diverged"
    msg = res["message"]
    assert "diverged at iteration" in msg and "damping" in msg and "learning rate" in msg
    it = int(msg.split("iteration ")[1].split(" ")[0])
    assert len(res["history"]) == it
    kept = json.loads((tmp_path / "result.json").read_text())
    assert kept["status"] == "diverged" and kept["message"] == msg
    with pytest.raises(fl.DivergenceError, match="diverged at iteration"):
        run_training({**cfg, "on_divergence": "raise"})
    res = run_training({**cfg, "method": "sgd", "lr": 1e9})
    assert res["status"] == "diverged" and "smaller learning rate" in res["message"]


def test_bad_configurations():
    with pytest.raises(fl.UnknownNameError, match="unknown training option"):
        resolve_config({"methd": "KFAC"})
    with pytest.raises(fl.UnknownNameError, match="method"):
        resolve_config({"method": "KFAC2"})
    with pytest.raises(fl.UnknownNameError, match="benchmark"):
        resolve_config({"benchmark": "imagenet"})
    for lr in (0, -0.1):
        with pytest.raises(fl.OptionError, match="learning rate"):
            resolve_config({"lr": lr})
    with pytest.raises(fl.DampingError):
        resolve_config({"method": "KFAC", "damping": 0})
    with pytest.raises(fl.OptionError):
        resolve_config({"epochs": -1})
    with pytest.raises(fl.DataError, match="data_path"):
        run_training({"benchmark": "faces", "method": "sgd", "epochs": 1})
    with pytest.raises(fl.OptionError, match="batch_size"):
        run_training({**TINY, "method": "sgd", "batch_size": 1000})


def test_benchmarks_have_the_papers_sizes():
    assert BENCHMARKS["mnist"]["architecture"] == [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    assert BENCHMARKS["curves"]["architecture"] == [784, 400, 200, 100, 50, 25, 6, 25, 50, 100,
                                                    200, 400, 784]
    assert BENCHMARKS["faces"]["architecture"] == [625, 2000, 1000, 500, 30, 500, 1000, 2000,
                                                   625]
    assert BENCHMARKS["faces"]["likelihood"] == "gaussian"
    c = resolve_config({"benchmark": "curves", "method": "KFAC"})
    assert c["activation"] == "relu" and c["likelihood"] == "bernoulli"


def test_cli_train_writes_results_figure_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--benchmark", "synthetic", "--methods", "KFAC,sgd", "adam",
            "--epochs", "1", "--n-train", "64", "--batch-size", "32", "--seeds", "0", "1",
            "--out", str(out), "--no-progress", "--set", "stat_period=2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "KFAC" in text and "SGD" in text and "Adam" in text
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 6 and {r["label"] for r in rows} == {"KFAC", "SGD", "Adam"}
    assert (out / "training.png").stat().st_size > 10_000
    assert (out / "KFAC" / "seed1" / "iterations.csv").is_file()
    assert json.loads((out / "KFAC" / "seed0" / "result.json").read_text())["config"][
        "stat_period"] == 2
    assert main(args + ["--resume"]) == 0
    assert "already done" in capsys.readouterr().out
    # the one CLI error path: one line, exit code 2 (bad input), no traceback
    assert main(["train", "--methods", "KFAX", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fimlab train: error: unknown method 'KFAX'")


def test_cli_methods_keep_their_settings_from_the_experiment_file(tmp_path):
    out = tmp_path / "d"
    assert main(["train", "--config", str(EXPERIMENTS / "train_kpsvd_digits.toml"),
                 "--benchmark", "synthetic", "--methods", "sgd", "--epochs", "1",
                 "--n-train", "64", "--batch-size", "32", "--out", str(out),
                 "--no-progress", "--no-plot"]) == 0
    cfg = json.loads((out / "SGD" / "seed0" / "result.json").read_text())["config"]
    exp = load_experiment(EXPERIMENTS / "train_kpsvd_digits.toml")
    assert cfg["lr"] == next(m["lr"] for m in exp["methods"] if m["method"] == "sgd")
    assert not (out / "training.png").exists()


def test_cli_ctrl_c_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    import fimlab.train as T

    calls = []
    real = T.run_training

    def flaky(cfg, out_dir=None, progress=False, **kw):
        calls.append(cfg["method"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, out_dir, progress, **kw)

    monkeypatch.setattr(T, "run_training", flaky)
    out = tmp_path / "r"
    assert main(["train", "--benchmark", "synthetic", "--methods", "sgd", "adam", "--epochs",
                 "1", "--n-train", "64", "--out", str(out), "--no-progress"]) == 130
    assert "--resume" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["label"] for r in rows] == ["SGD"]


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("train_*.toml")), ids=lambda p: p.stem)
def test_experiment_files_run_in_a_tiny_fast_form(path, tmp_path):
    exp = load_experiment(path, "fast")
    full = load_experiment(path, "full")
    assert exp["methods"] and full["methods"]
    from fimlab.train import _available

    for m in exp["methods"] + full["methods"]:  # every option is a known one
        if m.get("optional") and not _available(m):
            continue  # a method another module registers (KPSVD family, two-level)
        resolve_config({**exp["common"], **{k: v for k, v in m.items() if k != "optional"},
                        "seed": 0})
    if exp["common"].get("benchmark") == "faces":  # needs the original file
        with pytest.raises(fl.DataError, match="newfaces"):
            run_comparison(exp["common"], exp["methods"][:1], [0], tmp_path, progress=False,
                           plot=False, log=lambda *_: None)
        return
    tiny = {"benchmark": "synthetic", "epochs": 1, "n_train": 64, "n_val": 16,
            "batch_size": 32, "architecture": None, "dataset": None, "dataset_options": None,
            "batchnorm": None}  # the network-only option (checked above) off on the MLP
    res = run_comparison({**exp["common"], **tiny},
                         [{**m, **{k: v for k, v in tiny.items() if k in m}}
                          for m in exp["methods"]],
                         exp["seeds"][:1], tmp_path, progress=False, plot=False,
                         log=lambda *_: None)
    assert res and all(r["status"] in ("ok", "diverged") for r in res)
    assert all(np.isfinite(r["final_train_loss"]) for r in res if r["status"] == "ok")
