"""Front-end rows (issue 16): a user's own PyTorch or JAX model, from the data to KFAC.

On the 784-256-128-10 tanh MLP (``N = 1000``, float64, softmax cross-entropy; the tiny
network in ``--tiny`` mode), three groups of rows:

- *KFAC from a PyTorch model*: ``fimlab.torch.factor_batch`` + ``fl.KFAC`` on an
  ``nn.Sequential`` against curvlinops' ``KFACLinearOperator`` (built and its Kronecker
  factors computed) on the same model, batch, dtype and thread count, for the exact
  (type-2), Monte-Carlo and empirical Fisher. The issue's target: at most 1.5× curvlinops'
  time for MC and empirical, at most 1× for the exact type. The factors' agreement with
  curvlinops' is reported for the exact type.
- *front-end overhead, PyTorch*: ``fimlab.torch.factor_batch`` against
  ``fl.factor_batch`` of the NumPy :class:`fimlab.MLP` holding the same weights (hooks,
  autograd and the conversion to NumPy against fimlab's own forward and back-propagation).
- *front-end overhead, JAX*: ``fimlab.jax.factor_batch`` of a Flax linen MLP and of an
  Equinox MLP holding the same weights (float64: ``jax_enable_x64`` is switched on for the
  section and restored after), op by op (the default, ``jit=False``) and compiled
  (``jit=True``: the compilation is part of every call, the parameters being constants
  of the compiled program), against the NumPy MLP.

Each library is timed in a block of its own (PyTorch's, XLA's and OpenBLAS's worker
threads would otherwise steal the cores from each other; see ``Context.time``); the
ratio of two rows therefore compares calls made a few seconds apart, and the load
column says how busy the machine was. XLA's CPU thread pool is not limited by
``--threads``.
"""

from __future__ import annotations

import time

import numpy as np

import fimlab as fl

__all__ = ["section_frontends"]

#: the network of each mode (the issue's target is stated on "mlp")
_NET = {"tiny": "tiny", "quick": "mlp", "full": "mlp"}
#: the issue's targets: fimlab.torch + KFAC time / curvlinops KFAC time
KFAC_TARGET = {"exact": 1.0, "mc": 1.5, "empirical": 1.5}


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def batch_agreement(b1, b2) -> float:
    """Largest relative difference between the ``a`` and ``g`` arrays of two factor
    batches (same layers, same vectors)."""
    return max(_rel(x, y) for x, y in zip([*b1.a, *b1.g], [*b2.a, *b2.g]))


def _timed_apart(ctx, fns: dict, slow: bool = False) -> dict:
    """Time each callable of ``fns`` in a block of its own (one library at a time)."""
    out = {}
    for k, f in fns.items():
        time.sleep(0.3)  # let the previous library's worker threads stop spinning
        out.update(ctx.time({k: f}, slow=slow))
    return out


def _ratio(r: dict, t: dict, ref: dict, meaning: str) -> dict:
    r["ratio"] = t["best"] / ref["best"]
    r["ratio_median"] = t["median"] / ref["median"]
    r["ratio_meaning"] = meaning
    return r


def _torch_rows(ctx, net, X, y, case) -> list:
    import fimlab.torch as flt

    from . import peers

    rows = []
    tw = peers.TorchTwin(net, X, y, ctx.threads)  # same weights, torch.set_num_threads
    model, Xt, yt = tw.model, tw.X, tw.y
    loss = tw.loss  # the loss module matching the likelihood
    have_cl = ctx.peers_ok("torch", "curvlinops")
    if not have_cl:
        ctx.skip("front-ends: KFAC vs curvlinops", ctx.peers["message"])
    for fisher in ("exact", "mc", "empirical"):
        K = net.layer_sizes[-1] if fisher == "exact" else 1
        c = {**case, "fisher": fisher, "K": K}

        def fb_torch(fisher=fisher):
            return flt.factor_batch(model, Xt, yt, likelihood=loss, fisher=fisher, rng=0)

        def fb_numpy(fisher=fisher):
            return fl.factor_batch(net, X, y, fisher=fisher, rng=0)

        agree_fb = batch_agreement(fb_torch(), fb_numpy())
        fns = {"fimlab.torch factor batch + KFAC": lambda f=fb_torch: fl.KFAC(f())}
        agree = None
        if have_cl:
            from .cases import _kfac_agreement

            ok = ctx.add_peer(fns, "curvlinops KFAC", lambda f=fisher: tw.curvlinops_kfac(f),
                              "front-ends: KFAC vs curvlinops")
            if ok and fisher == "exact":
                agree = _kfac_agreement(fns["fimlab.torch factor batch + KFAC"](),
                                        fns["curvlinops KFAC"]())
        fns["fimlab.torch factor batch"] = fb_torch
        fns["fimlab factor batch (NumPy MLP, same weights)"] = fb_numpy
        ts = _timed_apart(ctx, fns)
        ours = ts["fimlab.torch factor batch + KFAC"]
        r = row_("front-ends: KFAC from a PyTorch model", "factor batch + KFAC factors from "
                 "an nn.Sequential", "fimlab.torch", c, ours)
        rows.append(r)
        if "curvlinops KFAC" in ts:
            t = ts["curvlinops KFAC"]
            r = row_("front-ends: KFAC from a PyTorch model", "KFACLinearOperator + "
                     "compute_kronecker_factors", "curvlinops", c, t)
            rows.append(r)
            rows[-2] = _ratio(rows[-2], ours, t, "fimlab.torch time / curvlinops time "
                              "(same run)")
            rows[-2]["target"] = KFAC_TARGET[fisher]
            rows[-2]["met"] = bool(rows[-2]["ratio"] <= KFAC_TARGET[fisher])
            rows[-2]["note"] = (f"target ≤ {KFAC_TARGET[fisher]}"
                                + (f"; factors agree to {agree:.1e}" if agree is not None
                                   else ""))
            if agree is not None:
                rows[-2]["agreement"] = agree
        tn = ts["fimlab factor batch (NumPy MLP, same weights)"]
        rows.append(row_("front-ends: overhead (PyTorch)", "factor batch", "fimlab (NumPy MLP)",
                         c, tn))
        r = row_("front-ends: overhead (PyTorch)", "factor batch of the nn.Sequential (hooks, "
                 "vmapped backward, to NumPy)", "fimlab.torch", c,
                 ts["fimlab.torch factor batch"], agreement=agree_fb)
        _ratio(r, ts["fimlab.torch factor batch"], tn, "fimlab.torch time / NumPy MLP time")
        r["note"] = f"same batch to {agree_fb:.1e}"
        rows.append(r)
    return rows


def _flax_twin(net):
    import flax.linen as nn
    import jax.numpy as jnp

    acts = {"tanh": jnp.tanh, "relu": nn.relu, "sigmoid": nn.sigmoid,
            "linear": lambda x: x}
    sizes, names = net.layer_sizes, net.activations

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for l in range(len(sizes) - 1):
                x = nn.Dense(sizes[l + 1], param_dtype=jnp.float64, dtype=jnp.float64,
                             name=f"Dense_{l}")(x)
                if l < len(sizes) - 2:
                    x = acts[names[l]](x)
            return x

    params = {"params": {f"Dense_{l}": {"kernel": jnp.asarray(np.asarray(W)[:, :-1].T),
                                        "bias": jnp.asarray(np.asarray(W)[:, -1])}
                         for l, W in enumerate(net.params)}}
    return MLP(), params


def _equinox_twin(net):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    acts = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid,
            "linear": lambda x: x}
    sizes = net.layer_sizes

    class MLP(eqx.Module):
        layers: list
        acts: tuple = eqx.field(static=True)

        def __call__(self, x):
            for l, lin in enumerate(self.layers):
                x = lin(x)
                if l < len(self.layers) - 1:
                    x = self.acts[l](x)
            return x

    key = jax.random.PRNGKey(0)
    layers = []
    for l, W in enumerate(net.params):
        W = np.asarray(W)
        lin = eqx.nn.Linear(sizes[l], sizes[l + 1], key=key, dtype=jnp.float64)
        lin = eqx.tree_at(lambda m: (m.weight, m.bias), lin,
                          (jnp.asarray(W[:, :-1]), jnp.asarray(W[:, -1])))
        layers.append(lin)
    return MLP(layers, tuple(acts[a] for a in net.activations))


def _jax_rows(ctx, net, X, y, case) -> list:
    import jax

    import fimlab.jax as flj

    rows = []
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        flax_model, params = _flax_twin(net)
        eqx_model = _equinox_twin(net)
        for fisher in ("exact", "mc", "empirical"):
            K = net.layer_sizes[-1] if fisher == "exact" else 1
            c = {**case, "fisher": fisher, "K": K}

            def fb_numpy(fisher=fisher):
                return fl.factor_batch(net, X, y, fisher=fisher, rng=0)

            def fb_flax(jit, fisher=fisher):
                return flj.factor_batch(flax_model, X, y, params=params,
                                        likelihood="categorical", fisher=fisher, rng=0,
                                        jit=jit)

            def fb_eqx(jit, fisher=fisher):
                return flj.factor_batch(eqx_model, X, y, likelihood="categorical",
                                        fisher=fisher, rng=0, jit=jit)

            ref = fb_numpy()
            fns = {"fimlab factor batch (NumPy MLP, same weights)": fb_numpy,
                   "fimlab.jax, Flax linen (jit)": lambda f=fb_flax: f(True),
                   "fimlab.jax, Flax linen (op by op)": lambda f=fb_flax: f(False),
                   "fimlab.jax, Equinox (jit)": lambda f=fb_eqx: f(True),
                   "fimlab.jax, Equinox (op by op)": lambda f=fb_eqx: f(False)}
            agree = {k: batch_agreement(f(), ref) for k, f in fns.items()
                     if k.startswith("fimlab.jax")}
            ts = _timed_apart(ctx, fns, slow=True)
            tn = ts["fimlab factor batch (NumPy MLP, same weights)"]
            rows.append(row_("front-ends: overhead (JAX)", "factor batch", "fimlab (NumPy MLP)",
                             c, tn))
            for k, t in ts.items():
                if not k.startswith("fimlab.jax"):
                    continue
                r = row_("front-ends: overhead (JAX)", "factor batch, " + k.split(", ")[1],
                         "fimlab.jax", c, t, agreement=agree[k])
                _ratio(r, t, tn, "fimlab.jax time / NumPy MLP time")
                r["note"] = f"same batch to {agree[k]:.1e}"
                rows.append(r)
    finally:
        jax.config.update("jax_enable_x64", x64)
    return rows


def row_(section, what, impl, case, timing, **extra) -> dict:
    from .cases import row

    return row(section, what, impl, case, timing, **extra)


def section_frontends(ctx) -> list:
    """The rows of this module (see its docstring); a missing framework is a skip."""
    from .cases import make_problem

    dtype = "float64"
    net, X, y, case = make_problem(_NET[ctx.mode], dtype)
    rows = []
    try:
        import torch  # noqa: F401
    except ImportError:
        ctx.skip("front-ends (PyTorch)", "PyTorch is not installed (pip install "
                 "'fimlab[torch]')")
    else:
        rows += _torch_rows(ctx, net, X, y, case)
    try:
        import equinox  # noqa: F401
        import flax  # noqa: F401
        import jax  # noqa: F401
    except ImportError:
        ctx.skip("front-ends (JAX)", "JAX, Flax or Equinox is not installed (pip install "
                 "'fimlab[jax]')")
    else:
        rows += _jax_rows(ctx, net, X, y, case)
    return rows
