"""`fimlab study --model` and `fimlab train --benchmark` on the CNN and deep batch-norm nets.

E1 rows of a study are checked against an E1 computed here from the dense Fisher of that
iteration's batch (explicit per-sample gradient matrices, explicit Kronecker products and
a dense SVD of the rearranged block), as tests/test_study.py does for the MLP.
"""

import csv
import json

import numpy as np
import pytest
from refs import independent_e1
from test_study import _record_factor_batches

import fimlab as fl
from fimlab import cli
from fimlab.study import run_study
from fimlab.study_models import NetworkNGD, build_network

pytestmark = pytest.mark.filterwarnings("error::fimlab.ConvergenceWarning")


def _per_sample_vecs(a, g):
    """``vec(J_nk)`` rows, ``J_nk = Σ_t g_nkt ā_ntᵀ`` by explicit outer products (dense
    layers: ``T = 1``)."""
    a, g = np.asarray(a, float), np.asarray(g, float)
    if a.ndim == 2:
        a, g = a[:, None, :], g[:, :, None, :]
    N, T, da = a.shape
    K, dg = g.shape[1], g.shape[3]
    rows = []
    for n in range(N):
        for k in range(K):
            J = np.zeros((dg, da))
            for t in range(T):
                J += np.outer(g[n, k, t], a[n, t])
            rows.append(J.ravel(order="F"))
    return np.array(rows)


def _reference_e1(batch):
    """E1 per (method, block) and whole network, from dense matrices."""
    N = batch.n_samples
    rows = [_per_sample_vecs(a, g) for a, g in zip(batch.a, batch.g)]
    Jall = np.concatenate(rows, axis=1)
    F = Jall.T @ Jall / N
    total = float(np.sum(F * F))
    out, errs, norms = {}, {}, []
    o = 0
    for l, (a, g) in enumerate(zip(batch.a, batch.g)):
        a, g = np.asarray(a, float), np.asarray(g, float)
        if a.ndim == 2:
            a, g = a[:, None, :], g[:, :, None, :]
        T, da, dg = a.shape[1], a.shape[2], g.shape[3]
        P = da * dg
        Fl = F[o:o + P, o:o + P]
        o += P
        # KFC factors by explicit sums
        A = sum(np.outer(a[n, t], a[n, t]) for n in range(N) for t in range(T)) / (N * T)
        G = sum(np.outer(g[n, k, t], g[n, k, t]) for n in range(N)
                for k in range(g.shape[1]) for t in range(T)) / N
        # rearrangement R[p*da+q, r*dg+s] = F[p*dg+r, q*dg+s]; symmetric part on both sides
        R = Fl.reshape(da, dg, da, dg).transpose(0, 2, 1, 3)
        R = (R + R.transpose(1, 0, 2, 3) + R.transpose(0, 1, 3, 2)
             + R.transpose(1, 0, 3, 2)) / 4
        R = R.reshape(da * da, dg * dg)
        U, s, Vt = np.linalg.svd(R, full_matrices=False)

        def term(u, v, sig, da=da, dg=dg):
            return sig * np.kron(u.reshape(da, da), v.reshape(dg, dg))

        D = R - np.outer(A.ravel(), G.ravel())
        Ud, sd, Vdt = np.linalg.svd(D, full_matrices=False)
        approx = {
            "KFAC": np.kron(A, G),
            "KPSVD": term(U[:, 0], Vt[0], s[0]),
            "Deflation": term(U[:, 0], Vt[0], s[0]) + term(U[:, 1], Vt[1], s[1]),
            "Lanczos": term(U[:, 0], Vt[0], s[0]) + term(U[:, 1], Vt[1], s[1]),
            "KFAC-corrected": np.kron(A, G) + term(Ud[:, 0], Vdt[0], sd[0]),
        }
        nl = float(np.sum(Fl * Fl))
        norms.append(nl)
        for m, Ft in approx.items():
            e = float(np.sum((Fl - Ft) ** 2))
            errs.setdefault(m, []).append(e)
            out[(m, l)] = np.sqrt(e / nl)
    for m, e in errs.items():
        out[(m, "all")] = np.sqrt((total - sum(norms) + sum(e)) / total)
    return out


def _check_rows(rows, refs, methods):
    checked = 0
    for r in rows:
        assert r["converged"] == "True", r
        block = r["block"] if r["block"] == "all" else int(r["block"])
        key = (r["method"], block)
        ref = refs[int(r["iteration"])]
        if key in ref:
            assert float(r["e1"]) == pytest.approx(ref[key], rel=1e-6, abs=1e-9), r
            checked += 1
    return checked


def test_reference_e1_agrees_with_refs_on_dense_layers():
    """The conv reference, on dense layers, equals tests/refs.py's QR route."""
    net = fl.MLP([5, 4, 3], activation="tanh", likelihood="categorical", seed=1)
    b = fl.factor_batch(net, np.random.default_rng(0).normal(size=(7, 5)), fisher="exact")
    mine, theirs = _reference_e1(b), independent_e1(b)
    for key, v in theirs.items():
        assert mine[key] == pytest.approx(v, rel=1e-7, abs=1e-10), key


@pytest.mark.parametrize("model", ["cuda-convnet-fast", "deep-bn-fast"])
def test_network_study_end_to_end(model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    seen = _record_factor_batches(monkeypatch)
    methods = "KFAC,KPSVD,KFAC-corrected,Deflation,Lanczos,LowRank"
    rc = cli.main(["study", "--model", model, "--iterations", "4", "--every", "2",
                   "--batch-size", "24", "--n-samples", "120", "--solver", "exact",
                   "--methods", methods, "--out", str(out), "--no-progress", "--no-plot"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "held fixed" in text and "block 0:" in text
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert sorted({int(r["iteration"]) for r in rows}) == [0, 2, 4]
    assert len(seen) == 3
    net_blocks = seen[0].n_layers
    assert {r["block"] for r in rows} == {str(b) for b in range(net_blocks)} | {"all"}
    if model == "cuda-convnet-fast":
        assert seen[0].positional[:3] == [True, True, True]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        refs = dict(zip([0, 2, 4], (_reference_e1(b) for b in seen)))
    assert _check_rows(rows, refs, methods) == 3 * (net_blocks + 1) * 5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == model and any("batchnorm" in s for s in cfg["architecture"])


def test_network_study_two_level_runs_on_conv():
    res = run_study({"model": "cuda-convnet-fast", "iterations": 0, "n_samples": 40,
                     "batch_size": 20, "methods": ["KFAC"], "two_level": True, "out": None},
                    progress=False, verbose=False)
    assert res.diverged is None
    spaces = {r["coarse_space"] for r in res.two_level_rows if r["coarse_space"]}
    assert "nicolaides" in spaces and "previous" not in spaces  # dense layers only
    # a two-level correction never increases the energy error of its fine level (T4)
    kfac = [r["e5"] for r in res.two_level_rows if r["method"] == "KFAC"][0]
    for r in res.two_level_rows:
        if r["kind"] == "two-level" and r["form"] == "residual":
            assert r["e5"] <= kfac * (1 + 1e-9), r


def test_method_without_conv_route_is_skipped(monkeypatch, capsys):
    from fimlab.approx import APPROXIMATIONS

    def no_conv(batch, solver="exact", **kw):
        if any(batch.positional):
            raise NotImplementedError("no convolution route")
        return fl.KFAC(batch)

    monkeypatch.setitem(APPROXIMATIONS, "NoConv", no_conv)
    res = run_study({"model": "cuda-convnet-fast", "iterations": 1, "every": 1,
                     "n_samples": 40, "batch_size": 20, "methods": ["KFAC", "NoConv"],
                     "out": None}, progress=False, verbose=True)
    text = capsys.readouterr().out
    assert "skipped NoConv (exact) on --model cuda-convnet-fast" in text
    assert "NotImplementedError: no convolution route" in text
    assert {r["method"] for r in res.rows} == {"KFAC"}
    assert len(res.rows) == 2 * 5  # two iterations x (4 blocks + whole)
    # on the deep batch-norm net (dense layers only) the same method runs
    res = run_study({"model": "deep-bn-fast", "iterations": 0, "n_samples": 40,
                     "batch_size": 20, "methods": ["NoConv"], "out": None},
                    progress=False, verbose=False)
    assert {r["method"] for r in res.rows} == {"NoConv"} and not res.skipped


def test_no_method_runs_is_an_error(monkeypatch):
    from fimlab.approx import APPROXIMATIONS

    def never(batch, solver="exact", **kw):
        raise NotImplementedError("never")

    monkeypatch.setitem(APPROXIMATIONS, "Never", never)
    with pytest.raises(fl.OptionError, match="no method of --methods runs"):
        run_study({"model": "cuda-convnet-fast", "iterations": 0, "n_samples": 20, "batch_size": 20,
                   "methods": ["Never"], "out": None}, progress=False, verbose=False)


@pytest.mark.parametrize("cfg, err, match", [
    ({"model": "vgg"}, fl.UnknownNameError, "model"),
    ({"model": "cuda-convnet", "dataset": "digits"}, fl.ShapeError, "at least 26"),
    ({"model": "cuda-convnet-fast", "sizes": [64, 10]}, fl.OptionError, "MLP only"),
    ({"model": "small-resnet", "activation": "tanh"}, fl.OptionError, "MLP only"),
    ({"model": "cuda-convnet-fast", "likelihood": "bernoulli"}, fl.OptionError,
     "categorical"),
    ({"model": "cuda-convnet-fast", "dataset": "synthetic"}, fl.ShapeError, "needs images"),
    ({"model": "deep-bn-fast", "dataset": "curves"}, fl.DataError, "no labels"),
])
def test_study_model_errors(cfg, err, match):
    with pytest.raises(err, match=match):
        run_study({**cfg, "out": None, "iterations": 0, "n_samples": 30}, progress=False,
                  verbose=False)


def test_cli_bad_model_is_one_line(capsys):
    assert cli.main(["study", "--model", "vgg", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "model" in err and "cuda-convnet-fast" in err and "Traceback" not in err


def test_build_network_errors():
    with pytest.raises(fl.ShapeError, match="needs images"):
        build_network("cuda-convnet-fast", (64,))
    with pytest.raises(fl.UnknownNameError):
        build_network("mlp", (64,))


# -- fimlab train -------------------------------------------------------------------------------
@pytest.mark.parametrize("bench", ["cuda-convnet-fast", "deep-bn-fast"])
def test_network_train_cli(bench, tmp_path):
    out = tmp_path / "t"
    rc = cli.main(["train", "--benchmark", bench, "--methods", "KFAC", "Deflation", "adam",
                   "--iterations", "4", "--n-train", "64", "--batch-size", "16",
                   "--out", str(out), "--no-progress", "--no-plot", "--threads", "1"])
    assert rc == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["label"] for r in rows] == ["KFAC", "Deflation", "Adam"]
    for r in rows:
        assert r["status"] == "ok" and np.isfinite(float(r["final_train_loss"]))
        assert int(r["iterations"]) == 4
    res = json.loads((out / "KFAC" / "seed0" / "result.json").read_text())
    assert res["n_params"] == build_network(bench, (1, 8, 8) if "conv" in bench
                                            else (64,)).n_params


def test_network_train_two_level(tmp_path):
    from fimlab.train import run_training

    res = run_training({"benchmark": "cuda-convnet-fast", "method": "KFAC", "iterations": 3,
                        "n_train": 48, "batch_size": 16,
                        "two_level": {"coarse_space": "nicolaides", "form": "residual"}})
    assert res["status"] == "ok" and len(res["history"]) == 3


def test_network_ngd_direction_vs_dense():
    """BN entries take the gradient; conv/dense entries the damped KFC solve, checked
    against explicit Kronecker factors of the train-mode curvature batch."""
    from fimlab.models.network import network_factor_batch

    net = build_network("cuda-convnet-fast", (1, 8, 8), seed=3).train()
    rng = np.random.default_rng(0)
    X, y = rng.random((16, 1, 8, 8)), rng.integers(0, 10, 16)
    lam = 0.05
    opt = NetworkNGD(net, "KFAC", lr=0.1, damping=lam, fisher="exact",
                     curvature_fraction=0.5, kl_clip=None, momentum=0.0, weight_decay=0.0)
    theta0 = net.get_flat()
    _, grads = net.loss_and_gradient(X, y, train=True)
    g = net.flatten(grads)
    opt.step_with_gradient(grads, X, y)
    z = (theta0 - net.get_flat()) / 0.1
    net.set_flat(theta0)
    b = network_factor_batch(net, X[:8], fisher="exact", train=True)
    o, ib = 0, 0
    for kind, (r, c) in zip(net.kinds(), net.shapes):
        P = r * c
        if kind == "batchnorm":
            np.testing.assert_allclose(z[o:o + P], g[o:o + P], rtol=1e-12)
        else:
            a, gg = np.asarray(b.a[ib], float), np.asarray(b.g[ib], float)
            if a.ndim == 2:
                a, gg = a[:, None, :], gg[:, :, None, :]
            N, T = a.shape[:2]
            A = np.einsum("nti,ntj->ij", a, a) / (N * T)
            G = np.einsum("nkti,nktj->ij", gg, gg) / N
            M = np.kron(A + np.sqrt(lam) * np.eye(len(A)), G + np.sqrt(lam) * np.eye(len(G)))
            np.testing.assert_allclose(z[o:o + P], np.linalg.solve(M, g[o:o + P]),
                                       rtol=1e-7, atol=1e-10)
            ib += 1
        o += P


@pytest.mark.parametrize("cfg, match", [
    ({"architecture": [64, 10]}, "fixed network"),
    ({"activation": "tanh"}, "fixed network"),
    ({"likelihood": "gaussian"}, "fixed network"),
])
def test_network_train_errors(cfg, match):
    from fimlab.train import run_training

    with pytest.raises(fl.OptionError, match=match):
        run_training({"benchmark": "cuda-convnet-fast", "method": "adam", "iterations": 1,
                      **cfg})


def test_network_train_resume_refused(tmp_path):
    from fimlab.train import run_training

    cfg = {"benchmark": "deep-bn-fast", "method": "adam", "iterations": 2, "n_train": 32,
           "batch_size": 16}
    run_training({**cfg, "max_seconds": 1e-9}, tmp_path)
    with pytest.raises(fl.OptionError, match="resume is not available"):
        run_training({**cfg, "resume": True}, tmp_path)


def test_small_resnet_study_e1(monkeypatch):
    """The residual CNN (batch norm inside the residual branches): E1 rows at
    initialisation vs the dense reference."""
    seen = _record_factor_batches(monkeypatch)
    res = run_study({"model": "small-resnet", "iterations": 0, "n_samples": 16,
                     "batch_size": 16, "methods": ["KFAC", "KPSVD"], "solver": "exact",
                     "out": None}, progress=False, verbose=False)
    assert len(seen) == 1 and seen[0].n_layers == 6  # 5 conv + 1 linear
    ref = _reference_e1(seen[0])
    assert len(res.rows) == 2 * 7
    for r in res.rows:
        assert r["e1"] == pytest.approx(ref[(r["method"], r["block"])], rel=1e-6, abs=1e-9)
