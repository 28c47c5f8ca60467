"""The benchmark section "conv" (benchmarks/conv.py) runs in its tiny configuration: its
rows are there, the peer rows are timed (not skipped) where PyTorch and curvlinops are
installed, and the two implementations agree on what they compute."""

from __future__ import annotations

import json

import pytest


def _run(tmp_path, use_peers):
    from benchmarks.suite import run_suite

    run_suite(mode="tiny", sections=["conv"], use_peers=use_peers, out=tmp_path / "b.json",
              log=lambda *a: None)
    return json.loads((tmp_path / "b.json").read_text())


def test_bench_conv_section_tiny_without_peers(tmp_path):
    data = _run(tmp_path, use_peers=False)
    rows = data["rows"]
    assert {r["section"] for r in rows} == {"conv forward+backward", "conv KFC factors",
                                            "conv Fisher matvec"}
    assert all(r["impl"].startswith("fimlab") and r["time_s"] > 0 for r in rows)
    assert {r["fisher"] for r in rows if r["section"] == "conv KFC factors"} == {"exact", "mc"}
    assert any("conv" in s["section"] for s in data["skipped"])


def test_bench_conv_section_times_the_peers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("curvlinops")
    rows = _run(tmp_path, use_peers=True)["rows"]
    peers = {(r["section"], r["impl"], r.get("fisher")): r for r in rows
             if not r["impl"].startswith("fimlab")}
    assert set(peers) == {
        ("conv forward+backward", "torch (CPU)", ""),
        ("conv KFC factors", "torch model via fimlab.torch", "exact"),
        ("conv KFC factors", "torch model via fimlab.torch", "mc"),
        ("conv Fisher matvec", "torch model via fimlab.torch (with the factor batch)", "exact"),
        ("conv KFC factors", "curvlinops KFAC (expand)", "exact"),
        ("conv KFC factors", "curvlinops KFAC (expand)", "mc"),
        ("conv Fisher matvec", "curvlinops GGN @ v", "exact"),
    }
    for r in peers.values():
        if r["impl"].startswith(("torch (CPU)", "curvlinops")):
            assert r["ratio"] > 0 and isinstance(r["met"], bool) and "target" in r["note"]
        else:
            assert r["time_s"] > 0
    # the compared computations are the same: gradient, KFC (expand), GGN product
    for key in [("conv forward+backward", "torch (CPU)", ""),
                ("conv KFC factors", "curvlinops KFAC (expand)", "exact"),
                ("conv Fisher matvec", "curvlinops GGN @ v", "exact")]:
        assert peers[key]["agreement"] < 1e-8, key
