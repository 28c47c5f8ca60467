"""Benchmark rows for convolution networks (issue 18, "Performance"): the cuda-convnet.

Three comparisons, each on the same network (PyTorch twin by :func:`fimlab.torch.to_torch`:
copied weights), batch, dtype and thread count:

- **forward + backward** (loss and gradient, batch norm on batch statistics, as in
  training): fimlab's NumPy layers against PyTorch CPU; target: fimlab within 2×;
- **KFC factors from the data** (forward, back-propagation of the Fisher's vectors, the
  factors): ``fl.KFAC(fl.factor_batch(net, ...))`` against curvlinops'
  ``KFACLinearOperator(kfac_approx="expand")`` + ``compute_kronecker_factors()`` (the same
  matrix, see tests/test_conv_fisher.py); target: within 1.5×;
- **exact Fisher × vector**: ``FisherOperator(batch) @ v`` (factor batch built once, as for
  any sequence of products; the time with the factor batch is reported too) against
  curvlinops' ``GGNLinearOperator @ v`` (the exact Fisher is the GGN for the categorical
  likelihood; operator built once); target: within 2×.

The curvature rows also time fimlab's route from the PyTorch model ("torch model via
fimlab.torch": :func:`fimlab.torch.factor_batch` on the twin, then fimlab's KFC or
product), since the factor batch dominates and PyTorch's convolution backward is faster
than the NumPy layers'.

``ratio`` is peer time / fimlab time (as in the other sections): a target "fimlab within
c×" is met when ``ratio ≥ 1/c``. The exact rows also report ``agreement``: the relative
difference between the two results (products with the same vector, in PyTorch's
parameter order).
"""

from __future__ import annotations

import numpy as np

import fimlab as fl

__all__ = ["section_conv", "CONV_CASES", "ConvTwin"]

#: per mode: network size, batch for forward+backward (``N_fb``) and for the curvature
#: rows (``N_curv``; the exact Fisher back-propagates K = 10 vectors per sample)
CONV_CASES = {
    "tiny": dict(input_shape=(3, 26, 26), channels=(4, 4, 8), N_fb=8, N_curv=8),
    "quick": dict(input_shape=(3, 32, 32), channels=(32, 32, 64), N_fb=256, N_curv=64),
    "full": dict(input_shape=(3, 32, 32), channels=(32, 32, 64), N_fb=256, N_curv=256),
}

#: the fimlab route from a PyTorch model (timed in a block of its own, as the peers)
FT = "torch model via fimlab.torch"

#: the issue's targets: fimlab time / peer time at most this
TARGETS = {"fb": 2.0, "kfc": 1.5, "matvec": 2.0}


def _problem(spec, N, dtype, seed=0):
    net = fl.cuda_convnet(input_shape=spec["input_shape"], channels=spec["channels"],
                          seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    X = rng.random((N,) + tuple(spec["input_shape"])).astype(dtype)
    y = rng.integers(0, net.output_size, size=N)
    net.update_running_stats(X)  # non-trivial running statistics for the eval-mode rows
    case = {"net": "cuda-convnet", "sizes": "x".join(map(str, spec["input_shape"]))
            + " ch " + "-".join(map(str, spec["channels"])), "N": N, "P": net.n_params,
            "dtype": dtype}
    return net, X, y, case


class ConvTwin:
    """A fimlab :class:`~fimlab.Network` and its data in PyTorch (same weights)."""

    def __init__(self, net, X, y, threads: int):
        import torch
        from torch import nn

        import fimlab.torch as flt

        torch.set_num_threads(int(threads))
        self.torch, self.nn = torch, nn
        self.net = net
        self.model = flt.to_torch(net)
        self.X = torch.from_numpy(np.ascontiguousarray(X))
        self.y = torch.from_numpy(np.asarray(y)).long()
        self.N = int(X.shape[0])
        self.loss = nn.CrossEntropyLoss()
        # the treated (conv, linear) parameters; batch norm's are held fixed, as fimlab
        self.params = [p for m in self.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                       for p in m.parameters(recurse=False)]
        self.n_params = sum(p.numel() for p in self.params)

    def forward_backward(self):
        model, loss, X, y = self.model, self.loss, self.X, self.y

        def run():
            model.train()
            model.zero_grad(set_to_none=True)
            loss(model(X), y).backward()
            return [p.grad for p in model.parameters()]

        return run

    def curvlinops_kfc(self, fisher: str):
        from curvlinops import KFACLinearOperator

        ftype = {"exact": "type-2", "mc": "mc", "empirical": "empirical"}[fisher]
        self.model.eval()

        def run():
            K = KFACLinearOperator(
                self.model, self.loss, self.params, [(self.X, self.y)], fisher_type=ftype,
                kfac_approx="expand", check_deterministic=False,
                separate_weight_and_bias=False, num_data=self.N)
            K.compute_kronecker_factors()
            return K

        return run

    def fimlab_torch_kfc(self, fisher: str):
        """fimlab's KFC from the PyTorch model (fimlab.torch factor batch, NumPy factors)."""
        import fimlab.torch as flt

        self.model.eval()

        def run():
            return fl.KFAC(flt.factor_batch(self.model, self.X, self.y,
                                            likelihood="categorical", fisher=fisher, rng=0))

        return run

    def fimlab_torch_matvec(self, v):
        import fimlab.torch as flt

        self.model.eval()
        return lambda: lambda: fl.FisherOperator(flt.factor_batch(
            self.model, self.X, likelihood="categorical")) @ v

    def curvlinops_ggn(self):
        from curvlinops import GGNLinearOperator

        self.model.eval()
        return GGNLinearOperator(self.model, self.loss, self.params, [(self.X, self.y)],
                                 check_deterministic=False, num_data=self.N)

    def torch_order(self):
        """Index map θ_torch = θ_fimlab[perm] over the conv and linear blocks."""
        perm, o = [], 0
        for lay in self.net.param_layers:
            if lay.kind not in ("conv", "linear"):
                continue
            r, c = lay.params.shape
            idx = np.arange(r * c).reshape((r, c), order="F") + o
            perm += [idx[:, :-1].ravel(), idx[:, -1]]
            o += r * c
        return np.concatenate(perm)


def _target_note(ratio: float, key: str) -> tuple[str, bool]:
    c = TARGETS[key]
    met = ratio >= 1.0 / c
    return f"fimlab {1 / ratio:.2f}× the peer's time; target ≤ {c:g}×: " + \
        ("met" if met else "NOT met"), met


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def section_conv(ctx) -> list:
    """cuda-convnet: forward+backward vs PyTorch, KFC vs curvlinops KFAC (expand), exact
    Fisher product vs curvlinops GGN product."""
    from .cases import row

    spec = CONV_CASES[ctx.mode]
    dtype = ctx.cfg["dtypes"][0]
    peers_ok = ctx.peers_ok("torch")
    rows = []

    # -- forward + backward, batch statistics (training) --------------------------------
    net, X, y, case = _problem(spec, spec["N_fb"], dtype)
    c = {**case, "fisher": "", "K": ""}
    fns = {"fimlab": lambda: net.loss_and_gradient(X, y, train=True)}
    twin = None
    if peers_ok:
        twin = ConvTwin(net, X, y, ctx.threads)
        ctx.add_peer(fns, "torch (CPU)", twin.forward_backward, "conv forward+backward")
    else:
        ctx.skip("conv forward+backward (peers)", ctx.peers.get("message", "peers left out"))
    ts = ctx.time(fns)
    for impl, t in ts.items():
        r = row("conv forward+backward", "loss and gradient (train mode, batch statistics)",
                impl, c, t)
        if impl != "fimlab":
            r["ratio"] = t["best"] / ts["fimlab"]["best"]
            r["ratio_meaning"] = "peer time / fimlab time"
            r["note"], r["met"] = _target_note(r["ratio"], "fb")
            if twin is not None:
                g_t = twin.forward_backward()()
                _, g_f = net.loss_and_gradient(X, y, train=True)
                flat_t = np.concatenate([gi.detach().numpy().ravel() for gi in g_t])
                flat_f = np.concatenate([x for G, lay in zip(g_f, net.param_layers) for x in (
                    (G[:, 0], G[:, 1]) if lay.kind == "batchnorm"
                    else (G[:, :-1].ravel(), G[:, -1]))])
                r["agreement"] = _rel(flat_f, flat_t)
        rows.append(r)

    # -- KFC factors and the exact Fisher product -----------------------------------------
    net, X, y, case = _problem(spec, spec["N_curv"], dtype, seed=1)
    twin = ConvTwin(net, X, y, ctx.threads) if ctx.peers_ok("torch", "curvlinops") else None
    if twin is None:
        ctx.skip("conv KFC / matvec (peers)", ctx.peers.get("message", "peers left out"))
    v = np.random.default_rng(2).standard_normal(sum(
        lay.params.size for lay in net.param_layers if lay.kind != "batchnorm")).astype(dtype)
    for fisher in ("exact", "mc"):
        b = fl.factor_batch(net, X, y, fisher=fisher, rng=0)
        c = {**case, "fisher": fisher, "K": b.n_vectors}

        def ours(fisher=fisher):
            return fl.KFAC(fl.factor_batch(net, X, y, fisher=fisher, rng=0))

        fns = {"fimlab": ours, "fimlab (factors only)": lambda b=b: fl.KFAC(b)}
        if twin is not None:
            ctx.add_peer(fns, FT, lambda fisher=fisher: twin.fimlab_torch_kfc(fisher),
                         "conv KFC (fimlab.torch)")
            ctx.add_peer(fns, "curvlinops KFAC (expand)",
                         lambda fisher=fisher: twin.curvlinops_kfc(fisher), "conv KFC (peers)")
        ts = ctx.time(fns, slow=True)
        agree = None
        if fisher == "exact" and "curvlinops KFAC (expand)" in fns:
            perm = twin.torch_order()
            K_t = fns["curvlinops KFAC (expand)"]()
            got = (ours() @ v)[perm]
            ref = (K_t @ twin.torch.from_numpy(np.ascontiguousarray(v[perm]))).detach()
            agree = _rel(got, ref.numpy())
        for impl, t in ts.items():
            what = ("KFC factors from a factor batch" if impl.endswith("only)")
                    else "KFC factors from the data (forward, back-prop, factors)")
            r = row("conv KFC factors", what, impl, c, t)
            if impl.startswith("curvlinops"):
                r["ratio"] = t["best"] / ts["fimlab"]["best"]
                r["ratio_meaning"] = "peer time / fimlab time (from the data)"
                r["note"], r["met"] = _target_note(r["ratio"], "kfc")
                if agree is not None:
                    r["agreement"] = agree
                if FT in ts:
                    r["ratio_fimlab_torch"] = t["best"] / ts[FT]["best"]
                    note, r["met_fimlab_torch"] = _target_note(r["ratio_fimlab_torch"], "kfc")
                    r["note"] += "; via fimlab.torch: " + note.split("; ")[0] + \
                        (" (met)" if r["met_fimlab_torch"] else " (NOT met)")
            rows.append(r)

    # exact Fisher (= GGN) × vector
    b = fl.factor_batch(net, X, y, fisher="exact")
    F = fl.FisherOperator(b)
    c = {**case, "fisher": "exact", "K": b.n_vectors}

    def scratch():
        return fl.FisherOperator(fl.factor_batch(net, X, y, fisher="exact")) @ v

    fns = {"fimlab": lambda: F @ v, "fimlab (with the factor batch)": scratch}
    G = None
    if twin is not None:
        G = twin.curvlinops_ggn()
        perm = twin.torch_order()
        vt = twin.torch.from_numpy(np.ascontiguousarray(v[perm]))
        ctx.add_peer(fns, FT + " (with the factor batch)", twin.fimlab_torch_matvec(v),
                     "conv matvec (fimlab.torch)")
        ctx.add_peer(fns, "curvlinops GGN @ v", lambda: lambda: G @ vt, "conv matvec (peers)")
    ts = ctx.time(fns)
    for impl, t in ts.items():
        r = row("conv Fisher matvec", "exact Fisher × vector", impl, c, t)
        if impl.startswith("curvlinops"):
            r["ratio"] = t["best"] / ts["fimlab"]["best"]
            r["ratio_meaning"] = ("peer time / fimlab time (fimlab's factor batch built once, "
                                  "as for any sequence of products)")
            r["ratio_with_factor_batch"] = t["best"] / ts["fimlab (with the factor batch)"]["best"]
            r["note"], r["met"] = _target_note(r["ratio"], "matvec")
            r["agreement"] = _rel((F @ v)[perm], (G @ vt).detach().numpy())
        rows.append(r)
    return rows
