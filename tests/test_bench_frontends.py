"""The ``frontends`` benchmark section runs (tiny configuration) and its rows say what
they measured: fimlab.torch + KFAC against curvlinops' KFAC with the issue's targets,
the front-ends' factor batches against the NumPy MLP's on the same weights (and equal to
them: the agreement column is checked here, not only reported)."""

from __future__ import annotations

import json

import pytest

from benchmarks.frontends import KFAC_TARGET, batch_agreement


def _run(tmp_path, use_peers):
    from benchmarks.suite import run_suite

    run_suite(mode="tiny", sections=["frontends"], use_peers=use_peers, threads=1,
              out=tmp_path / "b.json", markdown=tmp_path / "b.md", log=lambda *a: None)
    return json.loads((tmp_path / "b.json").read_text())


def test_section_is_registered():
    from benchmarks.cases import SECTIONS
    from benchmarks.frontends import section_frontends

    assert SECTIONS["frontends"] is section_frontends


def test_batch_agreement_sees_a_difference():
    import numpy as np

    import fimlab as fl

    net = fl.MLP([3, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    X = np.random.default_rng(0).normal(size=(6, 3))
    b1 = fl.factor_batch(net, X)
    assert batch_agreement(b1, fl.factor_batch(net, X)) == 0.0
    assert batch_agreement(b1, fl.factor_batch(net, 1.1 * X)) > 1e-3


def test_frontends_section_tiny_with_the_curvlinops_peer(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("curvlinops")
    for mod in ("jax", "flax", "equinox"):
        pytest.importorskip(mod)
    data = _run(tmp_path, use_peers=True)
    rows = data["rows"]
    sections = {r["section"] for r in rows}
    assert sections == {"front-ends: KFAC from a PyTorch model",
                        "front-ends: overhead (PyTorch)", "front-ends: overhead (JAX)"}
    kfac = [r for r in rows if r["section"] == "front-ends: KFAC from a PyTorch model"]
    ours = {r["fisher"]: r for r in kfac if r["impl"] == "fimlab.torch"}
    peer = {r["fisher"]: r for r in kfac if r["impl"] == "curvlinops"}
    assert set(ours) == set(peer) == {"exact", "mc", "empirical"}
    for f, r in ours.items():
        assert r["ratio"] == pytest.approx(r["time_s"] / peer[f]["time_s"])
        assert r["target"] == KFAC_TARGET[f] and r["met"] == (r["ratio"] <= r["target"])
    assert ours["exact"]["agreement"] < 1e-10  # same KFAC factors as curvlinops
    for sec, n_ours in (("front-ends: overhead (PyTorch)", 1), ("front-ends: overhead (JAX)", 4)):
        for f in ("exact", "mc", "empirical"):
            rs = [r for r in rows if r["section"] == sec and r["fisher"] == f]
            ref = [r for r in rs if r["impl"] == "fimlab (NumPy MLP)"]
            fe = [r for r in rs if r["impl"] != "fimlab (NumPy MLP)"]
            assert len(ref) == 1 and len(fe) == n_ours, (sec, f)
            for r in fe:
                assert r["agreement"] < 1e-10, (sec, f, r["what"])  # the same batch
                assert r["ratio"] == pytest.approx(r["time_s"] / ref[0]["time_s"])
    md = (tmp_path / "b.md").read_text()
    assert "front-ends: KFAC from a PyTorch model" in md and "target ≤ 1.5" in md

