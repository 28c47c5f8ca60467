"""Implementation of :mod:`fimlab.jax` (see its docstring)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ShapeError, UnknownNameError
from .._frontend import concat_batches, output_vectors
from .._validation import check_choice
from ..batch import FactorBatch
from ..models.likelihoods import get_likelihood
from ..models.mlp import FISHER_TYPES

__all__ = ["factor_batch", "flatten", "unflatten"]

_HINT = ("fimlab's factor batches model the parameters of fully connected layers only: pass "
         "layers=[...] naming the layers to treat (every other parameter then counts as "
         "fixed)")
_ORDER: dict = {}  # id(model) -> call order seen by the last factor_batch


def _kind(model) -> str:
    try:
        import flax.linen as lnn

        if isinstance(model, lnn.Module):
            return "linen"
    except ImportError:  # pragma: no cover
        pass
    try:
        from flax import nnx

        if isinstance(model, nnx.Module):
            return "nnx"
    except ImportError:  # pragma: no cover
        pass
    try:
        import equinox as eqx

        if isinstance(model, eqx.Module):
            return "equinox"
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(
        f"fimlab.jax takes a Flax linen Module (with params=), a Flax NNX Module or an "
        f"Equinox Module; got {type(model).__name__}"
    )


def _np(x):
    return np.asarray(x)


def _remember(model, order):
    try:
        key = id(model)
        weakref.finalize(model, _ORDER.pop, key, None)
        _ORDER[key] = list(order)
    except TypeError:  # not weak-referenceable: no cache
        pass


class _Rec:
    """What a forward pass saw: treated layers in call order, their shapes."""

    def __init__(self, N, selected):
        self.N, self.selected = N, selected
        self.names, self.bias, self.d_out, self.inputs = [], [], [], []
        self.probes = None

    def enter(self, name, x, per_sample=False):
        if name in self.names:
            raise ShapeError(
                f"layer {name!r} is called more than once in one forward pass (weight "
                "sharing); fimlab's factor batches need one call per layer: pass "
                "layers=[...] without it (it then counts as fixed)"
            )
        ok = x.ndim == 1 if per_sample else (x.ndim == 2 and x.shape[0] == self.N)
        if not ok:
            want = "(d_in,) per sample" if per_sample else f"(N, d_in) with N = {self.N}"
            raise ShapeError(
                f"layer {name!r} received inputs of shape {tuple(x.shape)}, not {want}: a "
                "layer applied along a sequence or spatial axis shares its weights across "
                "positions, which fimlab's factor batches do not model; pass layers=[...] "
                "without it"
            )
        self.names.append(name)
        self.inputs.append(x)
        return len(self.names) - 1

    def leave(self, i, out, has_bias):
        self.bias.append(has_bias)
        self.d_out.append(out.shape[-1])
        if self.probes is not None:
            out = out + self.probes[i]
        return out


# -- Flax linen ------------------------------------------------------------------------
def _linen_forward(model, variables, X, rec, apply_kwargs):
    import flax.linen as lnn

    def icpt(next_fun, args, kwargs, ctx):
        mod = ctx.module
        if ctx.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(mod, lnn.Dropout) and mod.rate > 0:
            det = kwargs.get("deterministic", args[1] if len(args) > 1 else None)
            det = mod.deterministic if det is None else det
            if not det:
                raise ShapeError(
                    f"Dropout {'/'.join(mod.scope.path)!r} (rate {mod.rate}) is not "
                    "deterministic: the Fisher of random dropout masks is not defined per "
                    "sample; pass apply_kwargs={...} that switch it off (e.g. "
                    "{'train': False})"
                )
        if not isinstance(mod, lnn.Dense):
            return next_fun(*args, **kwargs)
        name = "/".join(mod.scope.path)
        if rec.selected is not None and name not in rec.selected:
            return next_fun(*args, **kwargs)
        i = rec.enter(name, args[0])
        return rec.leave(i, next_fun(*args, **kwargs), bool(mod.use_bias))

    with lnn.intercept_methods(icpt):
        return model.apply(variables, X, **apply_kwargs)


def _linen_check_params(variables, names, layers):
    if layers is not None:
        return
    params = variables.get("params", {}) if hasattr(variables, "get") else {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(k, "key", getattr(k, "name", k)) for k in path]
        owner = "/".join(str(k) for k in keys[:-1])
        if owner not in names or keys[-1] not in ("kernel", "bias"):
            raise ShapeError(
                f"the parameter {'/'.join(str(k) for k in keys)!r} does not belong to an "
                f"nn.Dense layer called in the forward pass; {_HINT}"
            )


# -- Flax NNX --------------------------------------------------------------------------
def _nnx_layers(model):
    from flax import nnx

    return {tuple(p): node for p, node in nnx.graph.iter_graph(model)
            if isinstance(node, nnx.Linear)}


def _nnx_name(path):
    return ".".join(str(p) for p in path)


def _nnx_check(model, names, layers, dropout_only=False):
    from flax import nnx

    for path, node in nnx.graph.iter_graph(model):
        if dropout_only and not isinstance(node, nnx.Dropout):
            continue
        if isinstance(node, nnx.Dropout) and node.rate > 0 and not node.deterministic:
            raise ShapeError(
                f"Dropout {_nnx_name(path)!r} (rate {node.rate}) is in train mode: the "
                "Fisher of random dropout masks is not defined per sample; call "
                "model.eval() first"
            )
        if layers is None and isinstance(node, nnx.Param):
            owner = _nnx_name(path[:-1])
            if owner not in names:
                raise ShapeError(
                    f"the parameter {_nnx_name(path)!r} belongs to a "
                    f"{type(_node_at_nnx(model, path[:-1])).__name__}, not an nnx.Linear "
                    f"called in the forward pass; {_HINT}"
                )


def _node_at_nnx(model, path):
    node = model
    for p in path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def _nnx_forward(model, X, rec):
    from flax import nnx

    ids = {id(node): _nnx_name(p) for p, node in _nnx_layers(model).items()}
    orig = nnx.Linear.__call__

    def patched(self, x, *args, **kwargs):
        name = ids.get(id(self))
        if name is None or (rec.selected is not None and name not in rec.selected):
            return orig(self, x, *args, **kwargs)
        i = rec.enter(name, x)
        return rec.leave(i, orig(self, x, *args, **kwargs), self.bias is not None)

    nnx.Linear.__call__ = patched
    try:
        return model(X)
    finally:
        nnx.Linear.__call__ = orig


# -- Equinox ---------------------------------------------------------------------------
def _eqx_linears(model):
    import equinox as eqx

    flat = jax.tree_util.tree_flatten_with_path(
        model, is_leaf=lambda x: isinstance(x, eqx.nn.Linear))[0]
    return flat


def _eqx_name(path):
    return jax.tree_util.keystr(path).lstrip(".")


def _eqx_forward_factory(model, rec):
    """The model with each treated eqx.nn.Linear wrapped (tree surgery)."""
    import equinox as eqx

    class _Probed(eqx.Module):
        linear: eqx.nn.Linear
        name: str = eqx.field(static=True)

        def __call__(self, x, *, key=None):
            i = rec.enter(self.name, x, per_sample=True)
            return rec.leave(i, self.linear(x), self.linear.bias is not None)

    paths, nodes = [], []
    for path, leaf in _eqx_linears(model):
        if isinstance(leaf, eqx.nn.Linear):
            name = _eqx_name(path)
            if rec.selected is None or name in rec.selected:
                paths.append(path)
                nodes.append(_Probed(leaf, name))

    def where(m):
        return [_get_path(m, p) for p in paths]

    return eqx.tree_at(where, model, nodes) if paths else model


def _get_path(obj, path):
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            obj = getattr(obj, k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            obj = obj[k.idx]
        elif isinstance(k, jax.tree_util.DictKey):
            obj = obj[k.key]
        else:  # pragma: no cover
            raise TypeError(f"unsupported pytree key {k!r}")
    return obj


def _eqx_check(model, names, layers, dropout_only=False):
    import equinox as eqx

    drop = jax.tree_util.tree_flatten_with_path(
        model, is_leaf=lambda x: isinstance(x, eqx.nn.Dropout))[0]
    for path, leaf in drop:
        if isinstance(leaf, eqx.nn.Dropout) and leaf.p > 0 and not leaf.inference:
            raise ShapeError(
                f"Dropout {_eqx_name(path)!r} (p={leaf.p}) is in train mode: the Fisher of "
                "random dropout masks is not defined per sample; use "
                "eqx.nn.inference_mode(model) first")
    if layers is not None or dropout_only:
        return
    for path, leaf in _eqx_linears(model):
        if isinstance(leaf, eqx.nn.Linear):
            if _eqx_name(path) not in names:
                raise ShapeError(f"eqx.nn.Linear {_eqx_name(path)!r} is not called in the "
                                 f"forward pass; {_HINT}")
        elif eqx.is_inexact_array(leaf):
            raise ShapeError(
                f"the array {_eqx_name(path)!r} is a trainable leaf outside an "
                f"eqx.nn.Linear; {_HINT} (or make it a non-array / static field)")


# -- the factor batch ------------------------------------------------------------------
def factor_batch(model, X, y=None, *, params=None, likelihood="categorical",
                 fisher: str = "exact", mc_samples: int = 1, rng=None, targets=None,
                 layers=None, apply_kwargs=None, max_bytes: int | None = None,
                 jit: bool = False) -> FactorBatch:
    """The factor batch of a Flax (linen or NNX) or Equinox model on inputs ``X``.

    Parameters
    ----------
    model : flax.linen.Module, flax.nnx.Module or equinox.Module
        Linen: applied as ``model.apply(params, X, **apply_kwargs)``; NNX: called as
        ``model(X)`` on the batch; Equinox: called per sample, ``jax.vmap(model)(X)``.
        Every trainable parameter must sit in a fully connected layer (``nn.Dense``,
        ``nnx.Linear``, ``eqx.nn.Linear``) called once, on ``(N, d_in)`` inputs (Equinox:
        ``(d_in,)`` per sample). The output ``z`` ``(N, C)`` is the likelihood's input.
    X : array, shape (N, d_0), or an iterable of ``(X, y)`` batches
    y : array, optional
        Targets, for ``fisher="empirical"``.
    params : pytree
        The linen model's variables (``{"params": ...}``); not used for NNX / Equinox.
    likelihood : {"categorical", "gaussian", "bernoulli"}
        Softmax cross-entropy, unit-variance Gaussian, independent Bernoulli on logits.
    fisher, mc_samples, rng, targets
        As in :func:`fimlab.torch.factor_batch` (same Monte-Carlo draws as
        :func:`fimlab.factor_batch` for the same ``rng``).
    layers : list of str, optional
        Names of the layers to treat (as in ``batch.layer_names``); others count as fixed.
    apply_kwargs : dict, optional
        Extra keyword arguments of ``model.apply`` (linen), e.g. ``{"train": False}``.
    max_bytes : int, optional
        Memory limit for concatenating a data loader.
    jit : bool
        Run the forward pass and the vmapped VJP op by op (default), or compile each with
        ``jax.jit``. The compiled programs are not reused between calls (the parameters
        enter as their constants), so compiling costs more than it saves in one call:
        on the 784-256-128-10 MLP with N = 1,000 (float64, 2 cores, quiet), 195–263 ms
        compiled against 39–106 ms op by op and 17–39 ms for the NumPy MLP holding the
        same weights (``python -m benchmarks --quick --sections frontends``).

    Returns
    -------
    FactorBatch
        NumPy arrays in the model's dtype; ``layer_names`` in ``θ`` (call) order.
    """
    check_choice(fisher, FISHER_TYPES, "Fisher type")
    lik = get_likelihood(likelihood)
    kind = _kind(model)
    if kind == "linen" and params is None:
        raise ShapeError("a Flax linen model needs its variables: params=model.init(...)")
    if not isinstance(X, (np.ndarray, jax.Array)) and isinstance(X, Iterable):
        if y is not None:
            raise ShapeError("with a data loader the targets come from its batches: "
                             "leave y=None")
        X, y = concat_batches(X, _np, max_bytes)
    selected = None if layers is None else set(layers)
    dtype = _param_dtype(model, params, kind)
    Xj = jnp.asarray(np.asarray(X), dtype=dtype)
    N = Xj.shape[0]
    apply_kwargs = dict(apply_kwargs or {})

    def forward(rec, Xj=Xj):  # X an argument: a jitted caller passes it as one
        if kind == "linen":
            return _linen_forward(model, params, Xj, rec, apply_kwargs)
        if kind == "nnx":
            return _nnx_forward(model, Xj, rec)
        probed = _eqx_forward_factory(model, rec)
        P = rec.probes

        def one(x, p):  # per sample: the recorded inputs leave vmap as outputs
            rec.names, rec.bias, rec.d_out, rec.inputs = [], [], [], []
            rec.probes = p
            return probed(x), tuple(rec.inputs)

        z, ins = jax.vmap(one)(Xj, P)
        rec.inputs = list(ins)
        return z

    if kind == "nnx":  # before any call: a train-mode dropout would draw random masks
        _nnx_check(model, None, layers, dropout_only=True)
    elif kind == "equinox":
        _eqx_check(model, None, layers, dropout_only=True)
    # discovery: names, call order, shapes (abstract evaluation, no computation)
    rec0 = _Rec(N, selected)
    zs = jax.eval_shape(lambda: forward(rec0))
    names = list(rec0.names)
    if layers is not None:
        missing = sorted(set(layers) - set(names))
        if missing:
            raise UnknownNameError(
                f"layers=: {missing} were not called as fully connected layers; called: "
                f"{names}")
    if not names:
        raise ShapeError(f"{type(model).__name__}: no fully connected layer to treat was "
                         "called in the forward pass")
    if kind == "linen":
        _linen_check_params(params, names, layers)
    elif kind == "nnx":
        _nnx_check(model, names, layers)
    else:
        _eqx_check(model, names, layers)
    if len(zs.shape) != 2 or zs.shape[0] != N:
        raise ShapeError(f"the model's output must have shape (N, C) = ({N}, C), got "
                         f"{tuple(zs.shape)}")
    d_out = list(rec0.d_out)

    def f(probes, Xa=Xj):
        rec = _Rec(N, selected)
        rec.probes = list(probes)
        z = forward(rec, Xa)
        return z, tuple(rec.inputs)

    zeros = tuple(jnp.zeros((N, d), dtype=zs.dtype) for d in d_out)
    # jit: two compiled programs (forward; forward + vmapped VJP) instead of op by op. X
    # enters as an argument, not a constant: XLA would otherwise constant-fold the first
    # layer's product X·W at compile time (minutes on a 1000 × 784 batch)
    if jit:
        z, inputs = jax.jit(lambda Xa: f(zeros, Xa))(Xj)
    else:
        z, vjp_fn, inputs = jax.vjp(f, zeros, has_aux=True)
    V = output_vectors(lik, np.asarray(z), fisher, y=None if y is None else _np(y),
                       mc_samples=mc_samples, rng=rng,
                       targets=None if targets is None else _np(targets))
    Vk = jnp.asarray(np.moveaxis(V, 1, 0), dtype=z.dtype)  # (K, N, C)
    if jit:
        def pull(V, Xa):
            _, fn, _ = jax.vjp(lambda p: f(p, Xa), zeros, has_aux=True)
            return jax.vmap(fn)(V)[0]

        grads = jax.jit(pull)(Vk, Xj)
    else:
        (grads,) = jax.vmap(vjp_fn)(Vk)  # one vmapped VJP for the K vectors
    a_list, g_list = [], []
    for x, g, hb in zip(inputs, grads, rec0.bias):
        x = np.asarray(x)
        if hb:
            x = np.concatenate([x, np.ones((N, 1), dtype=x.dtype)], axis=1)
        a_list.append(x)
        g_list.append(np.ascontiguousarray(np.moveaxis(np.asarray(g), 0, 1)))
    batch = FactorBatch(a_list, g_list, fisher=fisher)
    batch.layer_names = names
    if layers is None:
        _remember(model, names)
    return batch


def _param_dtype(model, params, kind):
    if kind == "linen":
        leaves = jax.tree_util.tree_leaves(params)
    elif kind == "nnx":
        from flax import nnx

        leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    else:
        import equinox as eqx

        leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    for leaf in leaves:
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


# -- θ <-> parameter pytree ------------------------------------------------------------
def _order(model, layers, kind=None, tree=None):
    """Layer names in θ order: ``layers``, else the call order of the last factor_batch
    on this model object, else the order of the layers in the model's pytree."""
    if layers is not None:
        return list(layers)
    key = id(model)
    if key in _ORDER:
        return list(_ORDER[key])
    kind = kind or _kind(model)
    if kind == "nnx":
        return [_nnx_name(p) for p in _nnx_layers(model)]
    if kind == "equinox":
        import equinox as eqx

        return [_eqx_name(p) for p, leaf in _eqx_linears(model)
                if isinstance(leaf, eqx.nn.Linear)]
    names = []

    def walk(node, prefix):
        if hasattr(node, "items"):
            if "kernel" in node:
                names.append("/".join(prefix))
                return
            for k, v in node.items():
                walk(v, [*prefix, str(k)])

    if tree is not None:
        walk(tree.get("params", tree) if hasattr(tree, "get") else tree, [])
    if not names:
        raise ShapeError("the layer order is unknown: pass layers=batch.layer_names")
    return names


def _linen_get(tree, name):
    node = tree.get("params", tree) if hasattr(tree, "get") else tree
    for k in name.split("/"):
        node = node[k]
    return node


def _layer_arrays(model, tree, name, kind):
    """``(W (d_out, d_in), b or None)`` of layer ``name`` in the pytree ``tree``."""
    if kind == "linen":
        node = _linen_get(tree, name)
        return np.asarray(node["kernel"]).T, (np.asarray(node["bias"]) if "bias" in node
                                              else None)
    if kind == "nnx":
        node = _nnx_pure(tree)
        for k in name.split("."):
            node = node[int(k) if k.isdigit() and int(k) in node else k]
        return np.asarray(node["kernel"]).T, (np.asarray(node["bias"])
                                              if node.get("bias") is not None else None)
    lin = _eqx_get(tree, name)
    return np.asarray(lin.weight), (None if lin.bias is None else np.asarray(lin.bias))


def _nnx_pure(tree):
    from flax import nnx

    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    return tree


def _eqx_get(tree, name):
    for path, leaf in _eqx_linears(tree):
        if _eqx_name(path) == name:
            return leaf
    raise UnknownNameError(f"no eqx.nn.Linear {name!r} in the pytree")


def flatten(model, grads, layers=None, params=None):
    """``θ``-ordered vector ``[vec([W_0 | b_0]); …]`` from a parameter-shaped pytree.

    Parameters
    ----------
    model : flax.linen.Module, flax.nnx.Module or equinox.Module
    grads : pytree
        Shaped like the parameters: linen ``{"params": ...}`` (or its ``"params"``
        part), NNX ``nnx.State`` / pure dict of ``nnx.Param``s, Equinox a model-shaped
        pytree (as ``eqx.filter_grad`` returns).
    layers : list of str, optional
        Layer names in ``θ`` order (``batch.layer_names``); default: the call order of
        the last :func:`factor_batch` on this model object, else the order of the layers
        in the parameter pytree (which can differ from the call order: pass ``layers``).

    Returns
    -------
    numpy.ndarray
    """
    kind = _kind(model)
    parts = []
    for name in _order(model, layers, kind, grads):
        W, b = _layer_arrays(model, grads, name, kind)
        if b is not None:
            W = np.concatenate([W, b.reshape(-1, 1)], axis=1)
        parts.append(W.ravel(order="F"))
    return np.concatenate(parts)


def unflatten(model, theta, layers=None, params=None):
    """The pytree of a ``θ``-shaped vector, shaped like the model's parameters.

    Linen: a ``{"params": ...}`` dict like ``params`` (required) with each treated
    layer's ``kernel`` (``Wᵀ``) and ``bias`` from ``θ``, other leaves zero; NNX: a pure
    dict like ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (apply it with
    ``nnx.replace_by_pure_dict``); Equinox: a model-shaped pytree with the linear
    layers' ``weight``/``bias`` from ``θ`` and every other array zero (apply it with
    ``eqx.apply_updates``).
    """
    kind = _kind(model)
    order = _order(model, layers, kind, params)
    theta = np.asarray(theta)
    if kind == "linen":
        if params is None:
            raise ShapeError("unflatten of a linen model needs params= (the variables)")
        tree = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), params)
    elif kind == "nnx":
        tree = jax.tree_util.tree_map(lambda a: np.zeros(np.shape(a), np.asarray(a).dtype),
                                      _nnx_pure(model))
    else:
        import equinox as eqx

        tree = jax.tree_util.tree_map(
            lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, model)
    shapes = [_layer_arrays(model, model if kind != "linen" else params, n, kind)
              for n in order]
    total = sum(W.size + (0 if b is None else b.size) for W, b in shapes)
    if theta.ndim != 1 or theta.shape[0] != total:
        raise ShapeError(f"θ must have shape ({total},) for these layers, got {theta.shape}")
    o = 0
    for name, (W0, b0) in zip(order, shapes):
        r, c = W0.shape
        cols = c + (b0 is not None)
        blk = theta[o:o + r * cols].reshape(cols, r).T.astype(W0.dtype)
        o += r * cols
        W, b = blk[:, :c], (blk[:, c] if b0 is not None else None)
        if kind == "linen":
            node = _linen_get(tree, name)
            node["kernel"] = np.ascontiguousarray(W.T)
            if b is not None:
                node["bias"] = b
        elif kind == "nnx":
            node = tree
            for k in name.split("."):
                node = node[int(k) if k.isdigit() and int(k) in node else k]
            node["kernel"] = np.ascontiguousarray(W.T)
            if b is not None:
                node["bias"] = b
        else:
            import equinox as eqx

            lin = _eqx_get(tree, name)
            new = eqx.tree_at(lambda m: m.weight, lin, jnp.asarray(W))
            if b is not None:
                new = eqx.tree_at(lambda m: m.bias, new, jnp.asarray(b))
            tree = _eqx_replace(tree, name, new)
    return tree


def _eqx_replace(tree, name, new):
    import equinox as eqx

    for path, _leaf in _eqx_linears(tree):
        if _eqx_name(path) == name:
            return eqx.tree_at(lambda m, path=path: _get_path(m, path), tree, new)
    raise UnknownNameError(f"no eqx.nn.Linear {name!r} in the pytree")  # pragma: no cover
