"""The ``batchnorm`` option of ``fimlab study`` and ``fimlab train`` (``"fixed"`` |
``"include"``).

References built here, independently of the factor batch:

- the study (eval mode): the dense Fisher ``(1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n`` with
  the per-sample Jacobians ``J_n`` of the logits by central differences over every
  parameter (batch-norm scales and shifts included) and the explicit softmax Hessian;
- training (train mode, batch statistics): the batch-norm rows by PyTorch autograd
  through an explicit forward pass with one scale/shift *per sample* (the gradient with
  respect to sample ``m``'s copy is row ``m`` of the coupled backward), then the dense
  damped solve of the block.
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_conv_batchnorm_blocks import _randomise_bn

import fimlab as fl
from fimlab import cli
from fimlab.models import network as nw
from fimlab.study import run_study
from fimlab.study_models import NetworkNGD, build_network, gradient_vector

pytestmark = pytest.mark.filterwarnings("error::fimlab.ConvergenceWarning")


def _record(monkeypatch):
    """Record ``(net copy, X, batch)`` of every network factor batch built."""
    seen = []
    real = nw.network_factor_batch

    def recording(net, X, *args, **kw):
        b = real(net, X, *args, **kw)
        seen.append((copy.deepcopy(net), np.array(X), b))
        return b

    monkeypatch.setattr(nw, "network_factor_batch", recording)
    return seen


def _fd_fisher(net, X, h=1e-6):
    """Eval-mode exact Fisher of all of θ: per-sample Jacobians of the logits by central
    differences, the softmax Hessian written out."""
    theta = net.get_flat().copy()
    z0 = net.forward(X, train=False)
    N, C = z0.shape
    J = np.zeros((N, C, theta.size))
    for p in range(theta.size):
        t = theta.copy()
        t[p] += h
        net.set_flat(t)
        zp = net.forward(X, train=False)
        t[p] -= 2 * h
        net.set_flat(t)
        J[:, :, p] = (zp - net.forward(X, train=False)) / (2 * h)
    net.set_flat(theta)
    e = np.exp(z0 - z0.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    F = np.zeros((theta.size, theta.size))
    for n in range(N):
        H = np.diag(prob[n]) - np.outer(prob[n], prob[n])
        F += J[n].T @ H @ J[n]
    return F / N


def _blocks(net, include):
    """(kind, offset, size) of each study block, in θ's order."""
    out, o = [], 0
    for kind, (r, c) in zip(net.kinds(), net.shapes):
        if kind != "batchnorm" or include:
            out.append((kind, o, r * c))
        o += r * c
    return out


def _rel(A, B):
    return float(np.linalg.norm(A - B) / np.linalg.norm(B))


def _study(tmp_path, name, bn, methods=("KFAC", "EKFAC", "Diagonal", "BlockExact")):
    out = tmp_path / name
    cfg = {"model": "deep-bn-fast", "iterations": 2, "every": 2, "n_samples": 60,
           "batch_size": 12, "fisher": "exact", "methods": list(methods), "solver": "exact",
           "out": str(out), "plot": False}
    if bn is not None:
        cfg["batchnorm"] = bn
    res = run_study(cfg, progress=False, verbose=False)
    return res, list(csv.DictReader((out / "study.csv").open()))


def test_study_include_bn_rows_against_a_dense_reference(tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    res, rows = _study(tmp_path, "inc", "include")
    assert res.config["batchnorm"] == "include" and len(seen) == 2  # iterations 0 and 2
    assert sum("batchnorm" in s and "block" in s for s in res.config["architecture"]) == 5
    for it, (net, X, b) in zip((0, 2), seen):
        blocks = _blocks(net, include=True)
        assert b.n_layers == len(blocks) == 11
        F = _fd_fisher(net, X)
        assert F.shape == (sum(s for _, _, s in blocks),) * 2  # every parameter of θ
        got = {(r["method"], r["block"]): float(r["e1"]) for r in rows
               if int(r["iteration"]) == it}
        bd = np.zeros_like(F)
        kfac = np.zeros_like(F)
        for l, (kind, o, s) in enumerate(blocks):
            Fl = F[o:o + s, o:o + s]
            bd[o:o + s, o:o + s] = Fl
            if kind == "batchnorm":
                # a Kronecker method on 1 ⊗ row: A = mean(1·1) = 1, G = the block itself.
                # E1 is matrix-free (‖Â‖² − 2⟨Â, F⟩ + ‖F‖²): exact 0 reads as ≲ √ε
                assert got[("KFAC", str(l))] < 1e-6
                assert got[("EKFAC", str(l))] < 1e-6
                off = Fl - np.diag(np.diag(Fl))
                assert got[("Diagonal", str(l))] == pytest.approx(
                    np.linalg.norm(off) / np.linalg.norm(Fl), rel=1e-5)
                kfac[o:o + s, o:o + s] = Fl
            else:  # explicit Kronecker factors of the recorded batch
                a = np.asarray(b.a[l])
                g = np.asarray(b.g[l])
                A = a.T @ a / a.shape[0]
                G = np.einsum("nki,nkj->ij", g, g) / a.shape[0]
                kfac[o:o + s, o:o + s] = np.kron(A, G)
                assert got[("KFAC", str(l))] == pytest.approx(_rel(np.kron(A, G), Fl),
                                                              rel=1e-5)
        # whole network: the cross terms between batch-norm and dense blocks count
        assert got[("BlockExact", "all")] == pytest.approx(_rel(bd, F), rel=1e-5)
        assert got[("KFAC", "all")] == pytest.approx(_rel(kfac, F), rel=1e-5)


def test_fixed_is_the_default_and_unchanged(tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    _, rows_default = _study(tmp_path, "default", None)
    _, rows_fixed = _study(tmp_path, "fixed", "fixed")
    _, rows_inc = _study(tmp_path, "inc", "include")
    drop = ("build_time_s",)
    strip = [{k: v for k, v in r.items() if k not in drop} for r in rows_default]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in rows_fixed]
    # the fixed batch is fl.factor_batch's, bit for bit (the path before the option)
    net, X, b = seen[0]
    ref = fl.factor_batch(net, X, fisher="exact")
    assert b.n_layers == 6
    for x, y in zip(b.a + b.g, ref.a + ref.g):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # with include, the dense blocks' rows are the same numbers, renumbered
    net_blocks = _blocks(net, include=True)
    renum = {str(i): str(j) for i, j in enumerate(
        j for j, (k, _, _) in enumerate(net_blocks) if k != "batchnorm")}
    inc = {(r["iteration"], r["method"], r["block"]): r["e1"] for r in rows_inc}
    for r in rows_fixed:
        if r["block"] != "all":
            assert inc[(r["iteration"], r["method"], renum[r["block"]])] == r["e1"]


def test_include_two_level_runs_and_gradient_covers_theta():
    res = run_study({"model": "deep-bn-fast", "iterations": 0, "n_samples": 40,
                     "batch_size": 20, "methods": ["KFAC"], "two_level": True,
                     "batchnorm": "include", "out": None, "plot": False},
                    progress=False, verbose=False)
    assert res.diverged is None
    spaces = {r["coarse_space"] for r in res.two_level_rows if r["coarse_space"]}
    assert {"nicolaides", "previous"} <= spaces  # dense and 1 ⊗ row blocks only
    kfac = [r["e5"] for r in res.two_level_rows if r["method"] == "KFAC"][0]
    for r in res.two_level_rows:  # a correction never increases the energy error (T4)
        if r["kind"] == "two-level" and r["form"] == "residual":
            assert r["e5"] <= kfac * (1 + 1e-9), r


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.integers(2, 5), min_size=2, max_size=4),
       n=st.integers(2, 7), seed=st.integers(0, 2**16))
def test_gradient_vector_lines_up_with_the_include_batch(widths, n, seed):
    """The identity E4/E5 rely on: the empirical-Fisher rows of the include batch average
    to the eval-mode loss gradient, block by block, in the order gradient_vector gives
    (batch-norm ``[γ; β]`` included); and KFAC equals the Fisher on every 1 ⊗ row block."""
    rng = np.random.default_rng(seed)
    net = nw.deep_bn_linear([3] + widths + [3], seed=seed)
    _randomise_bn(net, rng)
    X, y = rng.standard_normal((n, 3)), rng.integers(0, 3, n)
    b = nw.network_factor_batch(net, X, y, fisher="empirical", batchnorm="include")
    g = gradient_vector(net, net.gradient(X, y, train=False), "include")
    mean_rows = np.concatenate([  # (1/N) Σ_n vec(g_n a_nᵀ), K = 1
        (np.einsum("nki,nj->ij", np.asarray(gl), np.asarray(al)) / n).ravel(order="F")
        for al, gl in zip(b.a, b.g)])
    np.testing.assert_allclose(mean_rows, g, rtol=1e-9, atol=1e-12)
    bf = nw.network_factor_batch(net, X, fisher="exact", batchnorm="include")
    F, K = fl.FisherOperator(bf), fl.KFAC(bf)
    for l, lay in enumerate(net.param_layers):
        if lay.kind == "batchnorm":
            Fl = F.diagonal_block(l).to_dense()
            np.testing.assert_allclose(K.blocks[l].to_dense(), Fl, rtol=1e-9,
                                       atol=1e-12 * max(1.0, np.abs(Fl).max()))


# -- fimlab train ---------------------------------------------------------------------------
def _torch_bn_rows(net, X, V):
    """Train-mode rows ``[dγ; dβ]`` of every batch-norm layer of a deep linear BN net, by
    autograd with a per-sample copy of each layer's γ and β: ``{layer: (N, K, 2C)}``."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, dtype=torch.float64)
    N, K = V.shape[:2]
    rows = {}
    for k in range(K):
        h, leaves = x, {}
        for i, (lay, P) in enumerate(zip(net.param_layers, net.params)):
            P = torch.tensor(np.asarray(P), dtype=torch.float64)
            if lay.kind == "linear":
                h = h @ P[:, :-1].T + P[:, -1]
            else:
                mu = h.mean(0)
                var = ((h - mu) ** 2).mean(0)  # biased, as batch norm in train mode
                xh = (h - mu) / torch.sqrt(var + lay.eps)
                gam = P[:, 0].repeat(N, 1).requires_grad_(True)
                bet = P[:, 1].repeat(N, 1).requires_grad_(True)
                leaves[i] = (gam, bet)
                h = gam * xh + bet
        L = (torch.tensor(V[:, k]) * h).sum()
        grads = torch.autograd.grad(L, [t for pair in leaves.values() for t in pair])
        for j, i in enumerate(leaves):
            r = torch.cat([grads[2 * j], grads[2 * j + 1]], dim=1).numpy()
            rows.setdefault(i, np.zeros((N, K, r.shape[1])))[:, k] = r
    return rows


@pytest.mark.parametrize("rule", ["exact", "factor"])
def test_ngd_include_direction_on_bn_entries_is_the_dense_damped_solve(rule):
    net = build_network("deep-bn-fast", (64,), seed=3).train()
    rng = np.random.default_rng(0)
    theta = net.get_flat()
    net.set_flat(theta + 0.1 * rng.standard_normal(theta.shape))
    X, y = rng.random((16, 64)), rng.integers(0, 10, 16)
    lam, lr = 0.05, 0.1
    dirs = {}
    for bn in ("fixed", "include"):
        th0 = net.get_flat().copy()
        opt = NetworkNGD(net, "KFAC", lr=lr, damping=lam, damping_rule=rule, fisher="exact",
                         curvature_fraction=0.5, kl_clip=None, momentum=0.0,
                         weight_decay=0.0, batchnorm=bn)
        _, grads = net.loss_and_gradient(X, y, train=True)
        g = net.flatten(grads)
        opt.step_with_gradient(grads, X, y)
        dirs[bn] = (th0 - net.get_flat()) / lr
        net.set_flat(th0)
    # the curvature batch: the first half, train mode (its own batch statistics)
    Xc = X[:8]
    V = net.likelihood.sqrt_fisher(net.forward(Xc, train=True))
    rows = _torch_bn_rows(net, Xc, V)
    o = 0
    for i, (kind, (r, c)) in enumerate(zip(net.kinds(), net.shapes)):
        s = r * c
        zi, zf, gi = dirs["include"][o:o + s], dirs["fixed"][o:o + s], g[o:o + s]
        if kind == "batchnorm":
            R = rows[i].reshape(-1, s)
            Fl = R.T @ R / Xc.shape[0]
            if rule == "exact":  # (1 ⊗ F_l + λI)⁻¹ g
                M = Fl + lam * np.eye(s)
            else:  # (1 + √λ) ⊗ (F_l + √λ I)
                M = (1 + np.sqrt(lam)) * (Fl + np.sqrt(lam) * np.eye(s))
            # (atol: the direction is read back from θ₀ − η z, round-off ~ ε|θ|/η)
            np.testing.assert_allclose(zi, np.linalg.solve(M, gi), rtol=1e-6,
                                       atol=1e-9 * np.abs(zi).max())
            np.testing.assert_allclose(zf, gi, rtol=1e-9, atol=1e-13)  # fixed: gradient
        else:  # the dense blocks do not change with the option
            np.testing.assert_allclose(zi, zf, rtol=1e-9, atol=1e-13)
        o += s


def test_train_include_runs_end_to_end(tmp_path):
    out = tmp_path / "t"
    rc = cli.main(["train", "--benchmark", "deep-bn-fast", "--methods", "KFAC",
                   "--batchnorm", "include", "--iterations", "3", "--n-train", "64",
                   "--batch-size", "16", "--out", str(out), "--no-progress", "--no-plot",
                   "--threads", "1"])
    assert rc == 0
    r = list(csv.DictReader((out / "summary.csv").open()))[0]
    assert r["status"] == "ok" and np.isfinite(float(r["final_train_loss"]))
    import json

    cfg = json.loads((out / "KFAC" / "seed0" / "result.json").read_text())["config"]
    assert cfg["batchnorm"] == "include"


@pytest.mark.parametrize("bench", ["cuda-convnet-fast", "small-resnet"])
def test_train_include_two_level_and_residual_blocks(bench):
    """Two-level training goes through the same curvature batch (BN blocks included);
    batch norm inside residual blocks too."""
    from fimlab.train import run_training

    res = run_training({"benchmark": bench, "method": "KFAC", "iterations": 3, "n_train": 48,
                        "batch_size": 16, "batchnorm": "include",
                        "two_level": {"coarse_space": "nicolaides", "form": "residual"}})
    assert res["status"] == "ok" and len(res["history"]) == 3
    assert all(np.isfinite(h["train_loss"]) for h in res["history"])


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, match", [
    ({"model": "mlp", "batchnorm": "include"}, "mlp has none"),
    ({"batchnorm": "fixed"}, "has none"),  # --model mlp is the default
    ({"model": "deep-bn-fast", "batchnorm": "frozen"}, "'fixed'.*'include'"),
    ({"model": "deep-bn-fast", "batchnorm": 1}, "'fixed'.*'include'"),
])
def test_study_batchnorm_errors(cfg, match):
    with pytest.raises(fl.OptionError, match=match):
        run_study({**cfg, "out": None, "iterations": 0, "n_samples": 30}, progress=False,
                  verbose=False)


def test_study_cli_bad_batchnorm_is_one_line(capsys):
    assert cli.main(["study", "--model", "deep-bn-fast", "--batchnorm", "frozen",
                     "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "batchnorm" in err and "'include'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("cfg, match", [
    ({"benchmark": "digits", "batchnorm": "include"}, "has none"),
    ({"benchmark": "deep-bn-fast", "batchnorm": "frozen"}, "'fixed'.*'include'"),
])
def test_train_batchnorm_errors(cfg, match):
    from fimlab.train import run_training

    with pytest.raises(fl.OptionError, match=match):
        run_training({**cfg, "method": "KFAC", "iterations": 1})
    net = build_network("deep-bn-fast", (64,))
    with pytest.raises(fl.OptionError, match="batchnorm"):
        NetworkNGD(net, "KFAC", lr=0.1, batchnorm="frozen")
