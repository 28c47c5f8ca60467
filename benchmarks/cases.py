"""The measured rows: what is timed, on which network, and how its work is counted.

Each ``section_*`` function takes the run context (:class:`Context`) and returns a list
of row dictionaries (see :func:`row`). FLOP counts are the *useful* arithmetic of the
operation (a symmetric product ``UᵀU`` of an ``n × p`` matrix counts ``n·p²``, what a
``syrk`` performs), so GFLOP/s can be compared with the machine's GEMM rate measured in
the same run; memory-bound rows report GB/s of the array they produce instead.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import partial

import numpy as np

import fimlab as fl

from .conv import section_conv
from .frontends import section_frontends
from .harness import Budget, measure, peak_memory
from .pipeline import section_pipeline

__all__ = ["Context", "NETS", "MODES", "row"]

#: The networks. ``N`` is the batch; ``data`` says how inputs and targets are drawn.
NETS = {
    "tiny": dict(sizes=[12, 8, 4], activation="tanh", likelihood="categorical", N=16),
    "tiny-ae": dict(sizes=[16, 12, 6, 12, 16], activation="relu", likelihood="bernoulli",
                    N=16),
    "small": dict(sizes=[64, 32, 10], activation="tanh", likelihood="categorical", N=256),
    "dense-s": dict(sizes=[64, 64, 10], activation="tanh", likelihood="categorical", N=256),
    "dense": dict(sizes=[100, 100, 40, 10], activation="tanh", likelihood="categorical",
                  N=512),
    "mlp": dict(sizes=[784, 256, 128, 10], activation="tanh", likelihood="categorical",
                N=1000),
    "ae": dict(sizes=[784, 1000, 500, 250, 30, 250, 500, 1000, 784], activation="relu",
               likelihood="bernoulli", N=512),
}

#: Which networks each section uses, per mode; dtypes per mode.
MODES = {
    "tiny": dict(dtypes=["float64"], fb=["tiny", "tiny-ae"], kfac=["tiny", "tiny-ae"],
                 per_sample=["tiny"], dense=["tiny"], matvec=["tiny", "tiny-ae"],
                 woodbury=["tiny", "tiny-ae"], blocks="tiny-ae", train="tiny-ae",
                 kernel_sizes="tiny", gemm_n=256, bw_mb=8, budget=Budget(1, 2, 0.0),
                 slow_budget=Budget(1, 1, 0.0), memory=True, peer_dense_max_p=500,
                 pipeline=["tiny-ae"]),
    "quick": dict(dtypes=["float64"], fb=["small", "mlp", "ae"], kfac=["small", "mlp", "ae"],
                  per_sample=["mlp"], dense=["dense-s"], matvec=["mlp", "ae"],
                  woodbury=["ae", "mlp"], blocks="ae", train="mlp",
                  kernel_sizes="quick", gemm_n=2048, bw_mb=256, budget=Budget(3, 10, 0.5),
                  slow_budget=Budget(2, 3, 0.0), memory=False, peer_dense_max_p=5000,
                  pipeline=["mlp", "ae"]),
    "full": dict(dtypes=["float64", "float32"], fb=["small", "mlp", "ae"],
                 kfac=["small", "mlp", "ae"], per_sample=["mlp"], dense=["dense-s", "dense"],
                 matvec=["small", "mlp", "ae"], woodbury=["ae", "mlp"], blocks="ae",
                 train="ae", kernel_sizes="full", gemm_n=4096, bw_mb=512,
                 budget=Budget(5, 30, 1.0),
                 slow_budget=Budget(3, 5, 0.0), memory=True, peer_dense_max_p=5000,
                 pipeline=["mlp", "ae"]),
}

#: Materialising rows stay where they fit (the issue's limits).
DENSE_MAX_P = 15_000
WOODBURY_MAX_NK = 10_000
#: the exact Fisher back-propagates K = C vectors per sample; beyond this many floats in
#: the g arrays (e.g. the 784-output auto-encoder: 512·784·3,814 ≈ 1.5e9) it is skipped
FB_MAX_FLOATS = 2.5e8


_PEERS = ("curvlinops", "BackPACK", "torch")


def _is_peer(impl: str) -> bool:
    return impl.startswith(_PEERS)


def row(section: str, what: str, impl: str, case: dict, timing: dict | None, **extra) -> dict:
    """One result row (``timing`` from :func:`~benchmarks.harness.measure`)."""
    r = {"section": section, "what": what, "impl": impl, **case,
         "load": round(os.getloadavg()[0], 2)}
    if timing is not None:
        r.update(time_s=timing["best"], median_s=timing["median"], repeats=timing["n"])
    r.update(extra)
    gf = r.get("gflop")
    if gf and timing is not None and timing["best"] > 0:
        r["gflop_s"] = gf / timing["best"]
    gb = r.get("gb")
    if gb and timing is not None and timing["best"] > 0:
        r["gb_s"] = gb / timing["best"]
    return r


@dataclass
class Context:
    """What every section needs: mode settings, dtype list, thread count, peers."""

    mode: str
    threads: int
    peers: dict
    use_peers: bool
    log: object = print
    limits: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    sections: tuple | None = None

    @property
    def cfg(self) -> dict:
        return MODES[self.mode]

    def skip(self, section: str, message: str) -> None:
        self.skipped.append({"section": section, "message": message})
        self.log(f"  [skip] {section}: {message}")

    def peers_ok(self, *names: str) -> bool:
        return self.use_peers and all(self.peers.get(n) for n in names)

    def add_peer(self, fns: dict, label: str, make, section: str) -> bool:
        """Add the peer callable ``make()`` to ``fns`` under ``label`` after one trial
        call; a peer that refuses the problem is skipped with its own message."""
        try:
            f = make()
            f()
        except Exception as exc:  # noqa: BLE001 - any refusal of a peer is reported
            msg = str(exc).split("\n")[0][:200]
            self.skip(section, f"{label}: {type(exc).__name__}: {msg}")
            return False
        fns[label] = f
        return True

    def time(self, fns: dict, slow: bool = False) -> dict:
        """Time ``fns``: the NumPy-side implementations (names starting with "fimlab" or
        "NumPy", and anything else that is not a peer) round-robin together, then each
        PyTorch peer in a block of its own. Interleaving calls of different threading
        runtimes on two cores makes each pay for the other's spinning worker threads
        (OpenBLAS and OpenMP keep theirs busy-waiting after a call): measured, it moved
        the dense Fisher's ratio by up to 40 %."""
        budget = self.cfg["slow_budget"] if slow else self.cfg["budget"]
        ours = {k: f for k, f in fns.items() if not _is_peer(k)}
        out = measure(ours, budget) if ours else {}
        for k, f in fns.items():
            if _is_peer(k):
                time.sleep(0.3)  # let OpenBLAS's threads stop spinning
                out.update(measure({k: f}, budget))
                time.sleep(0.3)  # and PyTorch's
        return {k: out[k] for k in fns}

    def memory(self, f, numpy: bool = True) -> dict:
        if not self.cfg["memory"]:
            return {}
        m = peak_memory(f, trace_numpy=numpy)
        return {"alloc_mb": m["alloc_mb"], "rss_mb": m["rss_mb"]}

    def pct_gemm(self, r: dict) -> None:
        g = self.limits.get(f"gemm_{r.get('dtype')}_gflop_s")
        if g and r.get("gflop_s"):
            r["pct_of_gemm"] = 100.0 * r["gflop_s"] / g


# -- problem setup -------------------------------------------------------------------------
def make_problem(name: str, dtype: str, seed: int = 0):
    """``(net, X, y, case)`` for network ``name``: inputs uniform in [0, 1] (pixel-like);
    targets are random labels (categorical) or the binarised inputs (the auto-encoder)."""
    spec = NETS[name]
    net = fl.MLP(spec["sizes"], activation=spec["activation"],
                 likelihood=spec["likelihood"], seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    N = spec["N"]
    X = rng.random((N, spec["sizes"][0])).astype(dtype)
    if spec["likelihood"] == "categorical":
        y = rng.integers(0, spec["sizes"][-1], size=N)
    else:
        y = (X > 0.5).astype(dtype)
    case = {"net": name, "sizes": "-".join(map(str, spec["sizes"])), "N": N,
            "P": net.n_params, "dtype": dtype}
    return net, X, y, case


def _K(net, fisher: str, mc: int = 1) -> int:
    return net.layer_sizes[-1] if fisher == "exact" else (mc if fisher == "mc" else 1)


def _fb_fits(net, N: int, fisher: str) -> bool:
    return N * _K(net, fisher) * sum(net.layer_sizes[1:]) <= FB_MAX_FLOATS


def flops_factor_batch(net, N: int, K: int) -> float:
    """Forward ``2N Σ d_in·d_out`` plus back-propagation of ``K`` vectors through every
    layer but the first ``2NK Σ_{l≥1} d_out·d_in``."""
    s = net.layer_sizes
    fwd = sum(2.0 * N * (s[l] + 1) * s[l + 1] for l in range(len(s) - 1))
    bwd = sum(2.0 * N * K * s[l] * s[l + 1] for l in range(1, len(s) - 1))
    return fwd + bwd


def flops_kfac(b) -> float:
    """``Σ_l N·d_a² + N·K·d_g²`` (two symmetric products per layer)."""
    return float(sum(b.n_samples * da * da + b.n_samples * b.n_vectors * dg * dg
                     for da, dg in zip(b.d_a, b.d_g)))


def flops_matvec(b, k: int = 1) -> float:
    """``U`` and ``Uᵀ`` on ``k`` columns: ``Σ_l 4·N·d_a·d_g·k`` plus the small
    per-sample products ``4·N·K·d_g·k``."""
    return float(sum(4.0 * b.n_samples * da * dg * k + 4.0 * b.n_samples * b.n_vectors * dg * k
                     for da, dg in zip(b.d_a, b.d_g)))


# -- sections ---------------------------------------------------------------------------------
def section_factor_batch(ctx: Context) -> list:
    rows = []
    for dtype in ctx.cfg["dtypes"]:
        for name in ctx.cfg["fb"]:
            net, X, y, case = make_problem(name, dtype)
            for fisher in ("exact", "mc", "empirical"):
                K = _K(net, fisher)
                c = {**case, "fisher": fisher, "K": K}
                if not _fb_fits(net, case["N"], fisher):
                    ctx.skip("factor batch", f"{name} {fisher}: K = {K} vectors per sample "
                             f"would hold {case['N'] * K * sum(net.layer_sizes[1:]):.2e} "
                             "floats; the MC and empirical Fisher (K = 1) are measured")
                    continue

                def f(net=net, X=X, y=y, fisher=fisher):
                    return fl.factor_batch(net, X, y, fisher=fisher, rng=0)

                t = ctx.time({"fimlab": f})["fimlab"]
                r = row("forward + factor batch", "forward + factor batch", "fimlab", c, t,
                        gflop=flops_factor_batch(net, case["N"], K) / 1e9, **ctx.memory(f))
                ctx.pct_gemm(r)
                rows.append(r)
    return rows


def section_per_sample(ctx: Context) -> list:
    rows = []
    from . import peers

    for dtype in ctx.cfg["dtypes"]:
        for name in ctx.cfg["per_sample"]:
            net, X, y, case = make_problem(name, dtype)
            c = {**case, "fisher": "empirical", "K": 1}
            nbytes = case["N"] * case["P"] * np.dtype(dtype).itemsize

            def ours(net=net, X=X, y=y):
                return net.per_sample_gradients(X, y, max_bytes=8 * 2**30)

            fns = {"fimlab": ours}
            if ctx.peers_ok("torch", "backpack"):
                tw = peers.TorchTwin(net, X, y, ctx.threads)
                sec = "per-sample gradients (peers)"
                ctx.add_peer(fns, "BackPACK BatchGrad", tw.backpack_batch_grad, sec)
                ctx.add_peer(fns, "torch.func vmap(grad)", tw.torchfunc_per_sample, sec)
                agree = None
                if "BackPACK BatchGrad" in fns:
                    ref = np.asarray(ours())
                    got = sum(float((g.double() * case["N"]).pow(2).sum())
                              for g in fns["BackPACK BatchGrad"]())
                    agree = abs(math.sqrt(got) - np.linalg.norm(ref)) / np.linalg.norm(ref)
            else:
                ctx.skip("per-sample gradients (peers)", ctx.peers["message"])
                agree = None
            ts = ctx.time(fns)
            for impl, t in ts.items():
                r = row("per-sample gradients", f"per-sample gradients (N × P = "
                        f"{case['N']} × {case['P']})", impl, c, t, gb=nbytes / 1e9,
                        **ctx.memory(fns[impl], numpy=impl == "fimlab"))
                if impl != "fimlab":
                    r["ratio"] = t["best"] / ts["fimlab"]["best"]
                    r["ratio_meaning"] = "peer time / fimlab time"
                    r["agreement"] = agree
                    r["note"] = ("per-parameter tensors, not concatenated"
                                 if "BackPACK" in impl else "dict of per-parameter tensors")
                rows.append(r)
    return rows


def section_kfac(ctx: Context) -> list:
    rows = []
    from . import peers

    for dtype in ctx.cfg["dtypes"]:
        for name in ctx.cfg["kfac"]:
            net, X, y, case = make_problem(name, dtype)
            tw = None
            if ctx.peers_ok("torch", "curvlinops", "backpack"):
                tw = peers.TorchTwin(net, X, y, ctx.threads)
            for fisher in ("exact", "mc", "empirical"):
                K = _K(net, fisher)
                c = {**case, "fisher": fisher, "K": K}
                if not _fb_fits(net, case["N"], fisher):
                    ctx.skip("KFAC factors", f"{name} {fisher}: K = {K} vectors per sample "
                             "(see the factor-batch rows)")
                    continue

                def ours(net=net, X=X, y=y, fisher=fisher):
                    return fl.KFAC(fl.factor_batch(net, X, y, fisher=fisher, rng=0))

                b = fl.factor_batch(net, X, y, fisher=fisher, rng=0)
                fns = {"fimlab": ours, "fimlab (factors only)": lambda b=b: fl.KFAC(b)}
                agree = None
                if tw is not None:
                    sec = "KFAC factors (peers)"
                    ctx.add_peer(fns, "curvlinops", partial(tw.curvlinops_kfac, fisher), sec)
                    if fisher in ("exact", "mc"):
                        ctx.add_peer(fns, "BackPACK " + ("KFLR" if fisher == "exact" else "KFAC"),
                                     partial(tw.backpack_kfac, fisher), sec)
                    if fisher == "exact" and "curvlinops" in fns:
                        agree = _kfac_agreement(ours(), fns["curvlinops"]())
                elif ctx.use_peers:
                    ctx.skip("KFAC factors (peers)", ctx.peers["message"])
                ts = ctx.time(fns)
                for impl, t in ts.items():
                    what = ("KFAC factors from a factor batch" if impl.endswith("only)")
                            else "KFAC factors from the data (forward, back-prop, factors)")
                    gflop = flops_kfac(b) / 1e9
                    if not impl.endswith("only)"):
                        gflop += flops_factor_batch(net, case["N"], K) / 1e9
                    r = row("KFAC factors", what, impl, c, t, gflop=gflop,
                            **ctx.memory(fns[impl], numpy=impl.startswith("fimlab")))
                    if not impl.startswith("fimlab"):
                        r["ratio"] = t["best"] / ts["fimlab"]["best"]
                        r["ratio_meaning"] = "peer time / fimlab time (from the data)"
                        if impl == "curvlinops" and agree is not None:
                            r["agreement"] = agree
                        if impl.startswith("BackPACK"):
                            r["note"] = "bias as a separate Kronecker factor"
                    ctx.pct_gemm(r)
                    rows.append(r)
    return rows


def _kfac_agreement(ours, theirs) -> float:
    """Largest relative difference between fimlab's and curvlinops' factors (exact type)."""
    worst = 0.0
    ins = theirs._input_covariances
    gs = theirs._gradient_covariances
    for (A, G), key in zip(ours.factors, list(ins)):
        A2, G2 = ins[key].detach().double().numpy(), gs[key].detach().double().numpy()
        A, G = np.asarray(A, dtype=np.float64), np.asarray(G, dtype=np.float64)
        worst = max(worst, np.linalg.norm(A - A2) / np.linalg.norm(A),
                    np.linalg.norm(G - G2) / np.linalg.norm(G))
    return float(worst)


def section_dense(ctx: Context) -> list:
    rows = []
    from . import peers

    for dtype in ctx.cfg["dtypes"]:
        for name in ctx.cfg["dense"]:
            net, X, y, case = make_problem(name, dtype)
            if case["P"] > DENSE_MAX_P:
                ctx.skip("dense Fisher", f"{name}: P = {case['P']} > {DENSE_MAX_P}")
                continue
            b = fl.factor_batch(net, X, y, fisher="exact")
            K = b.n_vectors
            c = {**case, "fisher": "exact", "K": K}
            F = fl.FisherOperator(b)
            U = b.jacobian_matrix(max_bytes=8 * 2**30)
            gflop = b.n_samples * K * case["P"] ** 2 / 1e9
            fns = {"fimlab": lambda F=F: F.to_dense(max_bytes=8 * 2**30),
                   "NumPy U.T @ U (reference)": lambda U=U: U.T @ U}
            agree = None
            tw = None
            if ctx.peers_ok("torch", "backpack"):
                tw = peers.TorchTwin(net, X, y, ctx.threads)
                sec = "dense Fisher (peers)"
                bp = "BackPACK SqrtGGNExact + VᵀV"
                ctx.add_peer(fns, bp, tw.backpack_dense, sec)
                if case["P"] <= ctx.cfg["peer_dense_max_p"] and ctx.peers_ok("curvlinops"):
                    ctx.add_peer(fns, "curvlinops GGN @ I", tw.curvlinops_dense, sec)
                elif ctx.peers_ok("curvlinops"):
                    ctx.skip(sec, f"curvlinops GGN @ I: P = {case['P']} Fisher-vector products "
                             f"(one pass over the batch each); measured up to P = "
                             f"{ctx.cfg['peer_dense_max_p']}")
                if bp in fns:
                    D = np.asarray(fns["fimlab"]())
                    Db = fns[bp]().double().numpy()
                    # same matrix up to the parameter order: compare trace and Frobenius norm
                    agree = max(abs(np.trace(D) - np.trace(Db)) / abs(np.trace(D)),
                                abs(np.linalg.norm(D) - np.linalg.norm(Db)) / np.linalg.norm(D))
                    del D, Db
            elif ctx.use_peers:
                ctx.skip("dense Fisher (peers)", ctx.peers["message"])
            ts = ctx.time(fns, slow=True)
            for impl, t in ts.items():
                r = row("dense exact Fisher", f"dense exact Fisher (P = {case['P']}, "
                        f"N·K = {b.n_samples * K})", impl, c, t, gflop=gflop,
                        **ctx.memory(fns[impl], numpy=not impl[0].isupper() or
                                     impl.startswith("NumPy")))
                ctx.pct_gemm(r)
                if impl == "fimlab":
                    r["ratio"] = ts["NumPy U.T @ U (reference)"]["best"] / t["best"]
                    r["ratio_meaning"] = "throughput of fimlab / throughput of U.T @ U"
                elif not impl.startswith("NumPy"):
                    r["ratio"] = t["best"] / ts["fimlab"]["best"]
                    r["ratio_meaning"] = "peer time / fimlab time"
                    if agree is not None and impl.startswith("BackPACK"):
                        r["agreement"] = agree
                rows.append(r)
            del U, fns
    return rows


def section_matvec(ctx: Context) -> list:
    rows = []
    from . import peers

    for dtype in ctx.cfg["dtypes"]:
        for name in ctx.cfg["matvec"]:
            net, X, y, case = make_problem(name, dtype)
            fisher = "exact" if _fb_fits(net, case["N"], "exact") else "mc"
            b = fl.factor_batch(net, X, y, fisher=fisher, rng=0)
            c = {**case, "fisher": fisher, "K": b.n_vectors}
            F = fl.FisherOperator(b)
            v = np.random.default_rng(1).standard_normal(case["P"]).astype(dtype)

            def scratch(net=net, X=X, y=y, v=v, fisher=fisher):
                return fl.FisherOperator(fl.factor_batch(net, X, y, fisher=fisher, rng=0)) @ v

            fns = {"fimlab": lambda F=F, v=v: F @ v,
                   "fimlab (with the factor batch)": scratch}
            if fisher == "exact" and ctx.peers_ok("torch", "curvlinops"):
                tw = peers.TorchTwin(net, X, y, ctx.threads)
                ctx.add_peer(fns, "curvlinops GGN @ v", tw.curvlinops_matvec,
                             "Fisher matvec (peers)")
            elif fisher == "exact" and ctx.use_peers:
                ctx.skip("Fisher matvec (peers)", ctx.peers["message"])
            elif ctx.use_peers:
                ctx.skip("Fisher matvec (peers)", f"{name}: the exact Fisher of this network "
                         "does not fit as a factor batch; fimlab's MC-Fisher products are "
                         "measured, no peer row")
            ts = ctx.time(fns)
            for impl, t in ts.items():
                gflop = flops_matvec(b) / 1e9
                if "factor batch" in impl:
                    gflop += flops_factor_batch(net, case["N"], b.n_vectors) / 1e9
                r = row("Fisher matvec", f"{fisher} Fisher × vector", impl, c, t, gflop=gflop,
                        **ctx.memory(fns[impl], numpy=impl.startswith("fimlab")))
                if impl.startswith("curvlinops"):
                    r["ratio"] = t["best"] / ts["fimlab"]["best"]
                    r["ratio_meaning"] = ("peer time / fimlab time (fimlab's factor batch built "
                                          "once, as for any sequence of products)")
                    r["ratio_with_factor_batch"] = (
                        t["best"] / ts["fimlab (with the factor batch)"]["best"])
                ctx.pct_gemm(r)
                rows.append(r)
    return rows


def section_woodbury(ctx: Context) -> list:
    rows = []
    for dtype in ctx.cfg["dtypes"]:
        for name in ctx.cfg["woodbury"]:
            net, X, y, case = make_problem(name, dtype)
            fisher = "exact" if _fb_fits(net, case["N"], "exact") else "mc"
            b = fl.factor_batch(net, X, y, fisher=fisher, rng=0)
            NK = b.n_samples * b.n_vectors
            if NK > WOODBURY_MAX_NK:
                ctx.skip("Woodbury", f"{name}: m·K = {NK} > {WOODBURY_MAX_NK}")
                continue
            c = {**case, "fisher": fisher, "K": b.n_vectors}
            v = np.random.default_rng(2).standard_normal(case["P"]).astype(dtype)
            lam = 1e-3

            def fresh(b=b, v=v, lam=lam):
                return fl.FisherOperator(b).solve(v, lam)

            F = fl.FisherOperator(b)
            F.solve(v, lam)
            gram = float(sum(b.n_samples**2 * da + NK**2 * dg for da, dg in zip(b.d_a, b.d_g)))
            gflop_fresh = (gram + NK**3 / 3.0 + 2.0 * NK**2 + flops_matvec(b)) / 1e9
            fns = {"fimlab": fresh, "fimlab (factorisation cached)":
                   lambda F=F, v=v, lam=lam: F.solve(v, lam)}
            ts = ctx.time(fns, slow=NK > 4000)
            for impl, t in ts.items():
                gflop = gflop_fresh if impl == "fimlab" else (2.0 * NK**2 + flops_matvec(b)) / 1e9
                r = row("Woodbury natural gradient", f"(F + λI)⁻¹v by Woodbury (m·K = {NK})",
                        impl, c, t, gflop=gflop, **ctx.memory(fns[impl]))
                ctx.pct_gemm(r)
                rows.append(r)
    return rows


def _approximations():
    from fimlab.approx import APPROXIMATIONS

    return dict(APPROXIMATIONS)


def section_blocks(ctx: Context) -> list:
    """KPSVD-family methods per block (ratio to that block's KFAC factors) and E1 per
    block, on the auto-encoder with the Monte-Carlo Fisher (K = 1)."""
    rows = []
    apx = _approximations()
    methods = [m for m in apx if m != "KFAC" and m not in _COMPARATORS]
    if not methods:
        ctx.skip("KPSVD per block", "the KPSVD family is not in this checkout (only KFAC is "
                 "registered in fimlab.approx.APPROXIMATIONS); merge the kpsvd branch")
    name = ctx.cfg["blocks"]
    dtype = ctx.cfg["dtypes"][0]
    net, X, y, case = make_problem(name, dtype)
    b = fl.factor_batch(net, X, y, fisher="mc", rng=0)
    F = fl.FisherOperator(b)
    for l in range(b.n_layers):
        bl = b.layer(l)
        c = {**case, "fisher": "mc", "K": 1, "block": l, "d_a": b.d_a[l], "d_g": b.d_g[l]}
        fns = {"KFAC": lambda bl=bl: apx["KFAC"](bl)}
        for m in methods:
            fns[m] = (lambda bl=bl, m=m: apx[m](bl, solver="exact"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts = ctx.time(fns)
            built = {m: f() for m, f in fns.items()}
        for m, t in ts.items():
            r = row("KPSVD family per block", f"build block {l} ({b.d_a[l]}×{b.d_g[l]})", m,
                    c, t, rank=len(getattr(built[m].blocks[0], "terms", ())))
            if m != "KFAC":
                r["ratio"] = t["best"] / ts["KFAC"]["best"]
                r["ratio_meaning"] = "method time / KFAC factors time (same block)"
            rows.append(r)
        # E1 of each method on this block (Gram identities)
        Fb = F.diagonal_block(l)
        efns = {m: (lambda Fb=Fb, op=op: fl.relative_frobenius_error(Fb, op.blocks[0]))
                for m, op in built.items()}
        ets = ctx.time(efns)
        for m, t in ets.items():
            rows.append(row("E1 per block", f"E1 of block {l} ({b.d_a[l]}×{b.d_g[l]})", m, c,
                            t, e1=efns[m]()))
    return rows


def e1_all(net, X, y, methods, solver="exact"):
    """Every method on every block of ``net`` from one MC factor batch: build each
    approximation and compute E1 of every block (what the ≤ 10 s target times)."""
    apx = _approximations()
    b = fl.factor_batch(net, X, y, fisher="mc", rng=0)
    F = fl.FisherOperator(b)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in methods:
            op = apx[m](b, solver=solver) if m != "KFAC" else apx[m](b)
            out[m] = [fl.relative_frobenius_error(F, op, block=l) for l in range(b.n_layers)]
    return out


def section_e1_total(ctx: Context) -> list:
    name = ctx.cfg["blocks"]
    dtype = ctx.cfg["dtypes"][0]
    net, X, y, case = make_problem(name, dtype)
    methods = [m for m in _approximations() if m not in _COMPARATORS]
    c = {**case, "fisher": "mc", "K": 1}
    def f():
        return e1_all(net, X, y, methods)

    t = ctx.time({"fimlab": f}, slow=True)["fimlab"]
    e1 = f()
    return [row("E1 at full size", f"E1 of {len(methods)} method(s) on all "
                f"{net.n_layers} blocks, approximations built (m = {case['N']}, MC, K = 1)",
                "fimlab", c, t, methods=methods, e1=e1, **ctx.memory(f))]


def section_train(ctx: Context) -> list:
    """One optimizer iteration per method (natural gradient with every registered
    approximation, the exact natural gradient, SGD, Adam), curvature and inverse
    refreshed at every iteration (the costliest setting; the papers refresh every 100)."""
    try:
        from fimlab.optim import make_optimizer, optimizer_names
    except ImportError:
        ctx.skip("training iteration", "fimlab.optim (the train branch) is not in this "
                 "checkout")
        return []
    rows = []
    name = ctx.cfg["train"]
    dtype = ctx.cfg["dtypes"][0]
    for m in optimizer_names():
        net, X, y, case = make_problem(name, dtype)
        opts = {} if m in ("sgd", "adam") else dict(damping=1e-2, stat_period=1,
                                                   inverse_period=1, seed=0)
        try:
            opt = make_optimizer(m, net, lr=1e-3, **opts)
        except Exception as exc:  # noqa: BLE001 - a method this checkout cannot build
            ctx.skip("training iteration", f"{m}: {type(exc).__name__}: {exc}")
            continue
        t = ctx.time({m: (lambda opt=opt, X=X, y=y: opt.step(X, y))})[m]
        K = 1 if m not in ("sgd", "adam") else None
        r = row("training iteration", "one optimizer iteration (curvature and inverse "
                "refreshed)" if K else "one optimizer iteration", m,
                {**case, "fisher": "mc" if K else "", "K": K}, t)
        rows.append(r)
    return rows


KERNEL_SIZES = {
    "tiny": dict(sq=[(16, 3)], rowdot=[(16, 1, 20), (16, 3, 8)], sym=[64],
                 outer=[(16, 1, 9, 8)]),
    "quick": dict(sq=[(512, 10)], rowdot=[(512, 1, 1000), (1000, 10, 256)], sym=[4810],
                  outer=[(200, 1, 785, 256)]),
    "full": dict(sq=[(256, 10), (512, 10), (1000, 10)],
                 rowdot=[(512, 1, 31), (512, 1, 785), (512, 1, 1001), (512, 10, 100),
                         (1000, 10, 256)],
                 sym=[4810, 14550],
                 # (N, K, d_a, d_g): per-sample gradients of 784-256-128-10 (a sample
                 # slice), the dense exact Fisher of 100-100-40-10 (K = 10)
                 outer=[(200, 1, 785, 256), (1000, 1, 129, 10), (256, 10, 101, 100)]),
}


def section_kernels(ctx: Context) -> list:
    """Numba kernels against their NumPy twins at the sizes they serve."""
    from fimlab import _kernels
    from fimlab._kernels import numpy_impl

    if not _kernels.numba_enabled():
        ctx.skip("kernels", "Numba unavailable or disabled (FIMLAB_NUMBA=0)")
        return []
    from fimlab._kernels import numba_impl

    rows = []
    rng = np.random.default_rng(3)
    sizes = KERNEL_SIZES[ctx.mode]
    for dtype in ctx.cfg["dtypes"]:
        for N, K in sizes["sq"]:
            Gg = rng.standard_normal((N * K, N * K)).astype(dtype)
            o1, o2 = np.empty((N, N), dtype), np.empty((N, N), dtype)
            fns = {"numba": partial(numba_impl.sq_gram_reduce, Gg, K, o1),
                   "numpy twin": partial(numpy_impl.sq_gram_reduce, Gg, K, o2)}
            rows += _kernel_rows(ctx, "sq_gram_reduce", f"⟨G_n, G_n'⟩ from an N·K × N·K Gram "
                                 f"(N = {N}, K = {K}; exact Fisher, C = {K})", dtype, fns,
                                 Gg.nbytes, o1, o2)
        for N, K, d in sizes["rowdot"]:
            Xa = rng.standard_normal((N * K, d)).astype(dtype)
            Ya = rng.standard_normal((N * K, d)).astype(dtype)
            o1, o2 = np.empty(N, dtype), np.empty(N, dtype)
            fns = {"numba": partial(numba_impl.grouped_rowdot, Xa, Ya, K, o1),
                   "numpy twin": partial(numpy_impl.grouped_rowdot, Xa, Ya, K, o2)}
            rows += _kernel_rows(ctx, "grouped_rowdot", f"per-sample quadratic forms "
                                 f"(N = {N}, K = {K}, d = {d})", dtype, fns,
                                 Xa.nbytes + Ya.nbytes, o1, o2)
        for P in sizes["sym"]:
            M0 = np.tril(rng.standard_normal((P, P)).astype(dtype))
            M1, M2 = M0.copy(), M0.copy()
            fns = {"numba": partial(numba_impl.symmetrize_lower, M1),
                   "numpy twin": partial(numpy_impl.symmetrize_lower, M2)}
            rows += _kernel_rows(ctx, "symmetrize_lower", f"copy a triangle after syrk "
                                 f"(P = {P})", dtype, fns, M0.nbytes, M1, M2)
            del M0, M1, M2
        for N, K, da, dg in sizes["outer"]:
            a = rng.standard_normal((N, da)).astype(dtype)
            g = rng.standard_normal((N, K, dg)).astype(dtype)
            P = da * dg + 7
            # U is allocated inside each timed call, as FactorBatch.jacobian_matrix does
            # (its first-touch page faults are part of the work the kernel serves)

            def numba_fn(a=a, g=g, shape=(N * K, P)):
                U = np.empty(shape, dtype=a.dtype)
                numba_impl.outer_rows(a, g, U, 3)
                return U

            def twin(a=a, g=g, shape=(N * K, P)):
                U = np.empty(shape, dtype=a.dtype)
                numpy_impl.outer_rows(a, g, U, 3)
                return U

            def broadcast(a=a, g=g, shape=(N * K, P), N=N, K=K, da=da, dg=dg):
                # what FactorBatch.jacobian_matrix does without Numba: no temporary
                U = np.empty(shape, dtype=a.dtype)
                np.multiply(a[:, None, :, None], g[:, :, None, :],
                            out=U[:, 3:3 + da * dg].reshape(N, K, da, dg))
                return U

            fns = {"numba": numba_fn, "numpy twin": twin, "numpy broadcast into U": broadcast}
            U1, U2 = numba_fn(), twin()
            rows += _kernel_rows(ctx, "outer_rows", f"per-sample Jacobian rows ā_n ⊗ g_nk "
                                 f"into a new U (N = {N}, K = {K}, d_a = {da}, d_g = {dg})",
                                 dtype, fns, U1[:, 3:3 + da * dg].nbytes,
                                 U1[:, 3:3 + da * dg], U2[:, 3:3 + da * dg])
            del U1, U2
    return rows


def _kernel_rows(ctx, kernel, what, dtype, fns, nbytes, o1, o2):
    from fimlab import _kernels

    ts = ctx.time(fns)
    scale = float(np.max(np.abs(o2))) or 1.0
    diff = float(np.max(np.abs(o1.astype(np.float64) - o2.astype(np.float64)))) / scale
    out = []
    for impl, t in ts.items():
        r = row("Numba kernels", what, impl, {"kernel": kernel, "dtype": dtype}, t,
                gb=nbytes / 1e9)
        if impl == "numba":
            # against the fastest NumPy path timed (the twin, or the in-place fallback)
            r["ratio"] = min(v["best"] for k, v in ts.items() if k != "numba") / t["best"]
            r["ratio_meaning"] = ("speed-up of the Numba kernel over its NumPy twin (or "
                                  "the faster NumPy path, when one is timed)")
            r["agreement"] = diff
            r["served"] = _kernels.serves(kernel, dtype)
            if not r["served"]:
                r["note"] = (f"not served: the dispatcher keeps NumPy's broadcasting "
                             f"multiply for {dtype} (below 1.5×)")
        out.append(r)
    return out


#: the comparators of issue 17 (measured in their own section, not in "KPSVD per block")
_COMPARATORS = ("EKFAC", "EigenCorrected(KPSVD)", "Diagonal", "BlockExact", "LowRank",
                "LowRank+Diagonal")


def section_comparators(ctx: Context) -> list:
    """EKFAC per block of the auto-encoder against its unavoidable parts (the KFAC factors
    plus one symmetric eigendecomposition of each factor), EKFAC against curvlinops on the
    MLP, LowRank(k=20) of the whole auto-encoder against one KFAC build, and E1 of every
    comparator on every block."""
    from . import peers

    rows = []
    apx = _approximations()
    if "EKFAC" not in apx:
        ctx.skip("comparators", "EKFAC is not registered in this checkout")
        return rows
    dtype = ctx.cfg["dtypes"][0]
    name = ctx.cfg["blocks"]
    net, X, y, case = make_problem(name, dtype)
    b = fl.factor_batch(net, X, y, fisher="mc", rng=0)
    for l in range(b.n_layers):
        bl = b.layer(l)
        c = {**case, "fisher": "mc", "K": 1, "block": l, "d_a": b.d_a[l], "d_g": b.d_g[l]}

        def parts(bl=bl):
            A, G = fl.kfac_factors(bl.a[0], bl.g[0])
            return np.linalg.eigh(A), np.linalg.eigh(G)

        ts = ctx.time({"KFAC factors + eigh of each factor": parts,
                       "EKFAC": lambda bl=bl: fl.EKFAC(bl)})
        t0 = ts["KFAC factors + eigh of each factor"]
        for m, t in ts.items():
            r = row("EKFAC per block", f"build block {l} ({b.d_a[l]}×{b.d_g[l]})", m, c, t)
            if m == "EKFAC":
                r["ratio"] = t["best"] / t0["best"]
                r["ratio_meaning"] = "EKFAC time / (KFAC factors + eigh of both factors)"
            rows.append(r)
    # LowRank(k = 20) of the whole network vs one KFAC build, same factor batch
    c = {**case, "fisher": "mc", "K": 1}
    ts = ctx.time({"KFAC": lambda: fl.KFAC(b), "LowRank(k=20)": lambda: fl.LowRank(b, k=20, clip=True)},
                  slow=True)
    for m, t in ts.items():
        r = row("LowRank vs KFAC", f"build on the whole network (P = {b.n_params})", m, c, t)
        if m != "KFAC":
            r["ratio"] = t["best"] / ts["KFAC"]["best"]
            r["ratio_meaning"] = "LowRank time / KFAC time (same factor batch)"
        rows.append(r)
    # E1 of the comparators on all blocks (approximations built), one batch
    comp = [m for m in _COMPARATORS if m in apx]
    t = ctx.time({"fimlab": lambda: e1_all(net, X, y, comp)}, slow=True)["fimlab"]
    rows.append(row("E1 of the comparators", f"E1 of the {len(comp)} comparators on all "
                    f"{net.n_layers} blocks, approximations built (m = {case['N']}, MC)",
                    "fimlab", c, t, methods=comp, e1=e1_all(net, X, y, comp)))
    # EKFAC vs curvlinops on the MLP (N = 1000, MC Fisher, same threads and dtype)
    mlp, Xm, ym, cm = make_problem("tiny" if ctx.mode == "tiny" else "mlp", dtype)
    cm = {**cm, "fisher": "mc", "K": 1}
    fns = {"fimlab": lambda: fl.EKFAC(fl.factor_batch(mlp, Xm, ym, fisher="mc", rng=0))}
    if ctx.peers_ok("torch", "curvlinops"):
        tw = peers.TorchTwin(mlp, Xm, ym, ctx.threads)
        ctx.add_peer(fns, "curvlinops EKFAC", lambda: tw.curvlinops_ekfac("mc"), "EKFAC (peers)")
    else:
        ctx.skip("EKFAC (peers)", ctx.peers["message"])
    ts = ctx.time(fns)
    for impl, t in ts.items():
        r = row("EKFAC vs peers", "EKFAC from the network and batch (forward, backward, "
                "factors, eigenvectors, correction)", impl, cm, t)
        if impl != "fimlab":
            r["ratio"] = t["best"] / ts["fimlab"]["best"]
            r["ratio_meaning"] = "peer time / fimlab time"
        rows.append(r)
    return rows


SECTIONS = {
    "limits": None,  # handled by the suite (machine limits)
    "kernels": section_kernels,
    "factor_batch": section_factor_batch,
    "per_sample": section_per_sample,
    "kfac": section_kfac,
    "dense": section_dense,
    "matvec": section_matvec,
    "woodbury": section_woodbury,
    "blocks": section_blocks,
    "e1_total": section_e1_total,
    "train": section_train,
    "pipeline": section_pipeline,  # end-to-end rows (issue 20)
    "comparators": section_comparators,
    "conv": section_conv,  # convolution networks vs PyTorch and curvlinops (issue 18)
    "frontends": section_frontends,  # PyTorch / JAX front-ends (issue 16)
}


def now() -> float:
    return time.perf_counter()
