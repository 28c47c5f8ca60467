"""The one error path of ``fimlab study | train | sweep``: one line
``fimlab COMMAND: error: ...`` naming the argument, an exit code per class (2 bad input,
3 data or file, 4 memory budget, 130 interrupted, 70 internal), the traceback only with
``--debug`` or ``FIMLAB_DEBUG=1``."""

from __future__ import annotations

import json
import os

import pytest

import fimlab as fl
from fimlab.cli import main

from .conftest import run_cli

FAST_STUDY = ["--iterations", "0", "--n-samples", "60", "--batch-size", "30", "--methods",
              "KFAC", "--no-plot", "--no-progress"]
TRAIN = ["train", "--benchmark", "synthetic", "--methods", "sgd", "--n-train", "64",
         "--batch-size", "32", "--no-plot", "--no-progress"]


def _one_line(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"fimlab {command}: error: "), err
    assert not any(line.startswith("Traceback") for line in err), err
    return err[-1]


def _study_toml(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


# (id, argv builder(tmp_path), exit code, words of the one line)
CASES = [
    ("study-n-samples-0", lambda t: ["study", "--n-samples", "0"], 2, "n_samples"),
    ("study-seed-negative", lambda t: ["study", "--seed", "-1"], 2, "seed"),
    ("study-threads-negative", lambda t: ["study", "--threads", "-2"], 2, "threads"),
    ("study-out-is-a-file", lambda t: ["study", *FAST_STUDY, "--out",
                                       (t / "f").write_text("x") and t / "f"], 3, "exists"),
    ("study-toml-malformed", lambda t: ["study", "--config",
                                        _study_toml(t, "iterations = [1\n")], 3,
     "not valid TOML"),
    ("study-toml-non-integer", lambda t: ["study", "--config",
                                          _study_toml(t, "iterations = 2.5\n")], 2,
     "iterations"),
    ("study-toml-string", lambda t: ["study", "--config",
                                     _study_toml(t, 'every = "often"\n')], 2, "every"),
    ("study-toml-unknown-key", lambda t: ["study", "--config",
                                          _study_toml(t, "iteratons = 5\n")], 2,
     "unknown study option"),
    ("train-epochs-0", lambda t: [*TRAIN, "--epochs", "0", "--out", t / "o"], 2, "epochs"),
    ("train-iterations-0", lambda t: [*TRAIN, "--iterations", "0", "--out", t / "o"], 2,
     "iterations"),
    ("train-threads-negative", lambda t: [*TRAIN, "--threads", "-1", "--out", t / "o"], 2,
     "--threads"),
    ("train-seed-negative", lambda t: [*TRAIN, "--seeds", "-1", "--out", t / "o"], 2, "seed"),
    ("train-toml-unknown-table", lambda t: [
        "train", "--config", _study_toml(t, '[common]\nbenchmark = "synthetic"\n[extra]\n'),
        "--out", t / "o"], 2, "unknown top-level"),
    ("train-toml-unknown-key", lambda t: [
        "train", "--config", _study_toml(t, '[common]\nbenchmark = "synthetic"\nepoch = 3\n'),
        "--out", t / "o"], 2, "unknown training option"),
    ("train-toml-malformed", lambda t: ["train", "--config", _study_toml(t, "[common\n"),
                                        "--out", t / "o"], 3, "not valid TOML"),
    ("sweep-name-escapes", lambda t: ["sweep", _study_toml(
        t, '[sweep]\nname = "../../x"\n[grid]\nlr = [0.1]\n')], 2, "name"),
    ("sweep-seed-negative", lambda t: ["sweep", _study_toml(
        t, '[sweep]\nseed = -4\n[grid]\nlr = [0.1]\n')], 2, "seed"),
    ("sweep-connect-timeout-negative", lambda t: [
        "sweep", _study_toml(t, '[grid]\nlr = [0.1]\n[base]\nbenchmark = "synthetic"\n'),
        "--results", t / "r.csv", "--connect-timeout", "-1", "--no-progress"], 2,
     "connect-timeout"),
    ("sweep-scheduler-malformed", lambda t: [
        "sweep", _study_toml(t, '[grid]\nlr = [0.1]\n[base]\nbenchmark = "synthetic"\n'),
        "--results", t / "r.csv", "--scheduler", "not a scheduler", "--connect-timeout",
        "0.5", "--no-progress"], 3, "scheduler"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line_is_one_line_with_its_exit_code(case, tmp_path, capsys,
                                                         monkeypatch):
    _, argv, code, words = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FIMLAB_DEBUG", raising=False)
    rc = main([str(a) for a in argv(tmp_path)])
    line = _one_line(capsys, argv(tmp_path)[0])
    assert rc == code, line
    assert words in line, line


@pytest.mark.parametrize("command, rest", [("study", []), ("train", []),
                                           ("sweep", ["config.toml"])])
def test_unknown_option_prints_the_subcommand_usage(command, rest, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, *rest, "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: fimlab {command}" in err and "--bogus" in err


@pytest.mark.parametrize("exc, code, words", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (RuntimeError("boom"), 70, "internal error RuntimeError: boom"),
    (fl.DenseMemoryError("too big"), 4, "too big"),
    (fl.DataError("bad file"), 3, "bad file"),
    (fl.UnknownNameError("no such thing"), 2, "no such thing"),
    (PermissionError(13, "Permission denied", "/root/x"), 3, "permission denied"),
])
def test_each_error_class_has_its_exit_code(exc, code, words, capsys, monkeypatch):
    import fimlab.study_cli as study_cli

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(study_cli, "run_study", boom)  # what `fimlab study` calls
    monkeypatch.delenv("FIMLAB_DEBUG", raising=False)
    assert main(["study"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_debug_prints_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("FIMLAB_DEBUG", raising=False)
    assert main(["study", "--n-samples", "0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("fimlab study: error")
    monkeypatch.setenv("FIMLAB_DEBUG", "1")
    assert main(["--debug", "study", "--n-samples", "0"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_memory_budget_from_the_environment_gives_exit_code_4(capsys, monkeypatch):
    monkeypatch.setenv("FIMLAB_MEMORY_BUDGET", "1KiB")
    assert main(["study", *FAST_STUDY, "--out", ""]) == 4
    line = _one_line(capsys, "study")
    assert "bytes" in line and "MLP" in line


def test_a_diverging_study_records_the_iteration_and_writes_its_summary(tmp_path, capsys):
    out = tmp_path / "st"
    rc = main(["study", "--lr", "1e300", "--iterations", "6", "--every", "2", "--n-samples",
               "200", "--batch-size", "50", "--methods", "KFAC", "--no-plot", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    div = json.loads((out / "diverged.json").read_text())
    assert div["iteration"] >= 1 and "diverged at iteration" in div["message"]
    assert (out / "summary.csv").is_file() and (out / "study.csv").is_file()
    assert "note: the run diverged" in capsys.readouterr().out


def test_study_batch_size_larger_than_the_data_is_recorded(tmp_path):
    out = tmp_path / "st"
    with pytest.warns(UserWarning, match="batch_size 500 is larger than the 60 samples"):
        main(["study", "--iterations", "0", "--n-samples", "60", "--batch-size", "500",
              "--methods", "KFAC", "--no-plot", "--no-progress", "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["batch_size"] == 60 and cfg["batch_size_requested"] == 500


def test_subprocess_exit_code_and_one_line():
    """The console entry point itself (not only main()): exit code and one line."""
    proc = run_cli("study", "--n-samples", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fimlab study: error: option n_samples must be an integer >= 1, got 0 (leave it "
        "out to use the whole data set)"]
    proc = run_cli("study", "--n-samples", "0", env={"FIMLAB_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out(tmp_path, capsys):  # pragma: no cover - not run as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["study", *FAST_STUDY, "--out", str(ro / "x")]) == 3
        assert "permission denied" in _one_line(capsys, "study")
    finally:
        ro.chmod(0o700)


def test_the_distributed_ctrl_c_race_is_filtered_and_nothing_else():
    """Ctrl-C inside ``distributed.utils.sync`` can make tornado log a NameError of its
    ``cancel`` callback with a traceback (seen once in CI: the sweep's own one-line message
    followed it). The filter drops exactly that record: a NameError raised in a function
    ``cancel`` of a file ``distributed/utils.py``; other records pass."""
    import logging
    import sys

    from fimlab._cli_errors import _SyncCancelRace, filter_dask_interrupt_race

    def record_from(filename, name):
        ns: dict = {}
        exec(compile(f"def {name}():\n    return future\n", filename, "exec"), ns)
        try:
            ns[name]()
        except NameError:
            info = sys.exc_info()
        return logging.LogRecord("tornado.application", logging.ERROR, __file__, 1,
                                 "Exception in callback", None, info)

    f = _SyncCancelRace()
    assert not f.filter(record_from("/site-packages/distributed/utils.py", "cancel"))
    assert f.filter(record_from("/site-packages/distributed/utils.py", "other"))
    assert f.filter(record_from("/site-packages/mine/utils.py", "cancel"))
    try:
        raise ValueError("x")
    except ValueError:
        info = sys.exc_info()
    assert f.filter(logging.LogRecord("t", logging.ERROR, __file__, 1, "m", None, info))
    assert f.filter(logging.LogRecord("t", logging.ERROR, __file__, 1, "m", None, None))
    log = logging.getLogger("tornado.application")
    before = list(log.filters)
    try:
        filter_dask_interrupt_race()
        filter_dask_interrupt_race()
        assert sum(isinstance(x, _SyncCancelRace) for x in log.filters) == 1
    finally:
        log.filters[:] = before
