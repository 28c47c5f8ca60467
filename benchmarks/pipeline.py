"""End-to-end rows (issue 20): the pipeline as a study or a training step runs it, back
to back in one call, beside the BLAS work it cannot avoid timed alone in the same run.

The per-piece rows of the other sections time each piece after a pause
(:func:`~benchmarks.harness.measure` sleeps before every call so that worker threads
stop spinning); a pipeline run by a user has no pauses, and one that alternates between
two BLAS libraries (NumPy's and SciPy's OpenBLAS, two thread pools) pays for the other
pool's spinning threads at every switch. These rows time the whole sequence:

- *GEMMs alone*: the forward and back-propagation GEMMs of the network (NumPy, fresh
  outputs, as ``a @ W.T`` writes them) — the yardstick of the factor batch;
- *BLAS work alone*: those GEMMs plus the KFAC factors' symmetric rank-``N`` products
  (``a.T @ a``) — the yardstick of Monte-Carlo KFAC from the data;
- *factor batch*, *MC KFAC from data* (factor batch → factors), *data → KFAC → solve*
  (→ damped inverse applied to a vector);
- *training BLAS/LAPACK work alone*: one forward, two back-propagations (gradient and
  Monte-Carlo vectors), the gradient GEMMs, the factor products and the two GEMMs per
  layer applying the inverses, plus (timed apart) a Cholesky inverse (``potrf`` +
  ``potri``) of every damped factor — the yardstick of
- *KFAC training iteration* (``fl.optim`` natural gradient, curvature and inverses
  refreshed at every iteration).
"""

from __future__ import annotations

import numpy as np

import fimlab as fl

__all__ = ["section_pipeline"]


def _shapes(net):
    """Forward operands ``(N×(d_in+1)) @ (d_in+1)×d_out`` and back-propagation operands
    ``(N×d_out) @ (d_out×d_in)`` for every layer, as the factor batch runs them."""
    return [(W.shape[1], W.shape[0]) for W in net.params]


def _blas_work(net, X, *, syrks: bool, train: bool = False, lapack_only: bool = False):
    """A callable doing the network's unavoidable BLAS work on arrays of the right shapes,
    outside fimlab (NumPy): forward and back-propagation GEMMs, with ``syrks`` the factor
    products, with ``train`` a second back-propagation, the gradient GEMMs and the two
    GEMMs per layer applying the inverses. ``lapack_only``: instead, the LAPACK work of an
    inverse refresh — ``potrf`` + ``potri`` of every damped factor (SciPy, its own thread
    settings), timed apart so that neither part pays for the other's threads."""
    rng = np.random.default_rng(7)
    N = X.shape[0]
    dt = X.dtype
    Ws = [np.asarray(W) for W in net.params]
    A = [rng.random((N, da), dtype=np.float64).astype(dt) for da, _ in _shapes(net)]
    G = [rng.standard_normal((N, dg)).astype(dt) for _, dg in _shapes(net)]
    if lapack_only:
        from scipy.linalg import lapack

        S = [np.asfortranarray(x.T @ x / N + 1e-1 * np.eye(x.shape[1], dtype=dt))
             for x in A + G]
        potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (S[0],))

        def inverses():
            for s in S:
                potri(potrf(s, lower=1, clean=0)[0], lower=1)
        return inverses
    V = [rng.standard_normal((dg, da)).astype(dt) for da, dg in _shapes(net)]
    Inv = [(np.eye(dg, dtype=dt), np.eye(da, dtype=dt)) for da, dg in _shapes(net)]

    def work():
        for a, W in zip(A, Ws):  # forward
            a @ W.T
        for _ in range(2 if train else 1):  # back-propagation (gradient and MC vectors)
            for g, W in zip(G[1:], Ws[1:]):
                g @ W[:, :-1]
        if train:  # gradient
            for a, g in zip(A, G):
                g.T @ a
        if syrks:
            for a, g in zip(A, G):
                a.T @ a
                g.T @ g
        if train:  # the inverses applied: G⁻¹ V A⁻¹
            for (Gi, Ai), v in zip(Inv, V):
                Gi @ v @ Ai
    return work


def section_pipeline(ctx) -> list:
    from .cases import flops_factor_batch, flops_kfac, make_problem, row

    rows = []
    dtype = ctx.cfg["dtypes"][0]
    for name in ctx.cfg.get("pipeline", []):
        net, X, y, case = make_problem(name, dtype)
        c = {**case, "fisher": "mc", "K": 1}
        b = fl.factor_batch(net, X, fisher="mc", rng=0)
        v = np.random.default_rng(3).standard_normal(net.n_params).astype(dtype)

        def fb(net=net, X=X):
            return fl.factor_batch(net, X, fisher="mc", rng=0)

        def kfac(net=net, X=X):
            return fl.KFAC(fl.factor_batch(net, X, fisher="mc", rng=0))

        def solve(net=net, X=X, v=v):
            return fl.KFAC(fl.factor_batch(net, X, fisher="mc", rng=0)).solve(v, 1e-3)

        fns = {"GEMMs alone": _blas_work(net, X, syrks=False),
               "BLAS work alone": _blas_work(net, X, syrks=True),
               "factor batch": fb, "KFAC from data": kfac, "KFAC from data + solve": solve}
        ts = ctx.time(fns)
        gf_fb = flops_factor_batch(net, case["N"], 1) / 1e9
        gf_k = gf_fb + flops_kfac(b) / 1e9
        what = {
            "GEMMs alone": ("forward + back-prop GEMMs alone (NumPy)", gf_fb, None),
            "BLAS work alone": ("unavoidable BLAS work alone: GEMMs + factor SYRKs (NumPy)",
                                gf_k, None),
            "factor batch": ("MC factor batch from data", gf_fb, "GEMMs alone"),
            "KFAC from data": ("MC KFAC from data (forward, back-prop, factors), end to end",
                               gf_k, "BLAS work alone"),
            "KFAC from data + solve": ("data → MC factor batch → KFAC → damped solve, end to "
                                       "end", None, "BLAS work alone"),
        }
        for k, t in ts.items():
            desc, gf, ref = what[k]
            impl = "NumPy (yardstick)" if k.endswith("alone") else "fimlab"
            r = row("end to end", desc, impl, c, t, gflop=gf, step=k)
            if ref:
                r["ratio"] = t["best"] / ts[ref]["best"]
                r["ratio_median"] = t["median"] / ts[ref]["median"]
                r["ratio_meaning"] = f"time / time of '{what[ref][0]}' (same run)"
            ctx.pct_gemm(r)
            rows.append(r)
        # a KFAC training iteration, curvature and inverses refreshed
        try:
            from fimlab.optim import make_optimizer
        except ImportError:  # pragma: no cover
            continue
        opt = make_optimizer("KFAC", net, lr=1e-3, damping=1e-2, stat_period=1,
                             inverse_period=1, seed=0)
        tfns = {"training BLAS alone": _blas_work(net, X, syrks=True, train=True),
                "training LAPACK alone": _blas_work(net, X, syrks=False, lapack_only=True),
                "KFAC training iteration": lambda opt=opt, X=X, y=y: opt.step(X, y)}
        tt = ctx.time(tfns, slow=True)
        alone = {k: tt["training BLAS alone"][k] + tt["training LAPACK alone"][k]
                 for k in ("best", "median")}
        alone["n"] = tt["training BLAS alone"]["n"]
        r0 = row("end to end", "training BLAS/LAPACK work alone: forward, 2 back-props, "
                 "gradient GEMMs, factor SYRKs, 2 GEMMs per layer applying the inverses "
                 f"({tt['training BLAS alone']['best'] * 1e3:.1f} ms) + potrf/potri of every "
                 f"damped factor ({tt['training LAPACK alone']['best'] * 1e3:.1f} ms), timed "
                 "apart", "NumPy/SciPy (yardstick)", c, alone, step="training work alone")
        r1 = row("end to end", "KFAC training iteration (curvature and inverses refreshed)",
                 "fimlab", c, tt["KFAC training iteration"], step="KFAC training iteration")
        r1["ratio"] = tt["KFAC training iteration"]["best"] / alone["best"]
        r1["ratio_median"] = tt["KFAC training iteration"]["median"] / alone["median"]
        r1["ratio_meaning"] = "time / time of the training BLAS/LAPACK work alone (same run)"
        rows += [r0, r1]
    return rows
