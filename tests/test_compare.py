"""fl.compare and ComparisonTable: every number against a dense NumPy computation; the
MLP's init schemes; fimlab study's --blocks and --smooth."""

from __future__ import annotations

import io

import numpy as np
import pytest

import fimlab as fl


@pytest.fixture(scope="module")
def batch():
    net = fl.MLP([5, 6, 4, 3], activation="tanh", likelihood="categorical", seed=1)
    return fl.factor_batch(net, np.random.default_rng(1).normal(size=(30, 5)), fisher="mc",
                           mc_samples=2, rng=3)


def dense_e1_e2(F, A):
    e1 = np.linalg.norm(F - A) / np.linalg.norm(F)
    s1 = np.sort(np.abs(np.linalg.eigvalsh(F)))[::-1]
    s2 = np.sort(np.abs(np.linalg.eigvalsh((A + A.T) / 2)))[::-1]
    return e1, np.linalg.norm(s1 - s2) / np.linalg.norm(s1)


def test_compare_against_dense(batch):
    table = fl.compare(batch, methods=["KFAC", "KPSVD", "Deflation"])
    assert isinstance(table, fl.ComparisonTable)
    assert len(table) == 3 * (batch.n_layers + 1)
    F = fl.FisherOperator(batch).to_dense()
    o = batch.offsets
    for r in table:
        A = table.approximations[(r["method"], r["solver"])].to_dense()
        if r["block"] == "all":
            assert r["e1"] == pytest.approx(np.linalg.norm(F - A) / np.linalg.norm(F),
                                            rel=1e-9)
            assert r["e2"] != r["e2"]  # not computed for the whole network
            assert r["block_size"] == batch.n_params
            continue
        s = slice(o[r["block"]], o[r["block"] + 1])
        e1, e2 = dense_e1_e2(F[s, s], A[s, s])
        assert r["e1"] == pytest.approx(e1, rel=1e-9)
        assert r["e2"] == pytest.approx(e2, rel=1e-7, abs=1e-12)
        assert r["build_time_s"] > 0 and r["converged"] is True
    # KFAC is exact for nothing here: the errors are not zero (the check can fail)
    assert table.get("KFAC", block=0)["e1"] > 1e-3


def test_selected_blocks_equal_the_full_run(batch):
    full = fl.compare(batch, methods="KFAC,KPSVD")
    part = fl.compare(batch, methods=["KFAC", "KPSVD"], blocks=[2])
    assert [r["block"] for r in part] == [2, 2]
    for r in part:
        ref = full.get(r["method"], block=2)
        assert r["e1"] == pytest.approx(ref["e1"], rel=1e-10)
        assert r["e2"] == pytest.approx(ref["e2"], rel=1e-8)
    with pytest.raises(KeyError):
        part.get("KFAC", block="all")
    with pytest.raises(fl.ShapeError, match=r"blocks \[7\] out of range"):
        fl.compare(batch, methods=["KFAC"], blocks=[7])
    with pytest.raises(fl.UnknownNameError, match="approximation"):
        fl.compare(batch, methods=["NotAMethod"])


def test_table_exports(batch):
    t = fl.compare(batch, methods=["KFAC"], solver="both")
    assert {r["solver"] for r in t} == {"exact"}  # KFAC: closed form, one solver
    text = t.to_csv()
    assert text.splitlines()[0] == ",".join(t.columns)
    df = t.to_pandas()
    assert list(df.columns) == t.columns and len(df) == len(t)
    pd = pytest.importorskip("pandas")
    back = pd.read_csv(io.StringIO(text))
    np.testing.assert_allclose(back["e1"].to_numpy(), df["e1"].to_numpy(), rtol=1e-15)
    rep = repr(t)
    assert "KFAC" in rep and "E1" in rep and f"N={batch.n_samples}" in rep


def test_mlp_init_schemes():
    sizes = [300, 200, 100]
    for init, var in [("xavier_uniform", 2 / 500), ("xavier_normal", 2 / 500),
                      ("normal", 0.05 ** 2)]:
        net = fl.MLP(sizes, init=init, init_bias=0.01, init_std=0.05, seed=0)
        W = net.params[0][:, :-1]
        assert np.all(net.params[0][:, -1] == 0.01)
        assert W.var() == pytest.approx(var, rel=0.03)  # 60,000 draws: ~0.6 % noise
        if init == "xavier_uniform":
            assert np.abs(W).max() <= np.sqrt(6 / 500)
    d = fl.MLP(sizes, seed=0)
    assert np.all(d.params[0][:, -1] == 0) and d.params[0][:, :-1].var() == pytest.approx(
        1 / 300, rel=0.03)
    with pytest.raises(fl.UnknownNameError, match="initialisation"):
        fl.MLP(sizes, init="kaiming")


def test_study_blocks_and_smoothing(tmp_path):
    from fimlab.study import run_study

    cfg = {"iterations": 4, "every": 1, "n_samples": 120, "batch_size": 40,
           "methods": ["KFAC"], "blocks": "1", "smooth": 2.0, "init": "xavier_uniform",
           "init_bias": 0.01, "e2_max_size": 10}
    res = run_study(cfg, out_dir=tmp_path, progress=False, verbose=False)
    assert {r["block"] for r in res.rows} == {1}
    assert len(res.rows) == 5
    assert (tmp_path / "study.png").is_file()
    with pytest.raises(fl.ShapeError, match="--two-level needs the whole network"):
        run_study({**cfg, "two_level": True}, progress=False, verbose=False)
