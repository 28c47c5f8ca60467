"""Implementation of :mod:`fimlab.torch` (see its docstring)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .._errors import ShapeError, UnknownNameError
from .._frontend import concat_batches, output_vectors
from .._validation import check_choice
from ..batch import FactorBatch
from ..models.likelihoods import Likelihood, get_likelihood
from ..models.mlp import FISHER_TYPES

__all__ = ["factor_batch", "flatten", "unflatten", "layer_names", "resolve_likelihood",
           "sample_targets"]

# the call order of the treated (nn.Linear, nn.Conv2d) layers, as factor_batch last saw it per model
_CALL_ORDER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# with batchnorm="include": {tuple(sorted treated names): call order of treated and BN} per model
_CALL_ORDER_BN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BATCHNORM = ("fixed", "include")

_TREATED = (nn.Linear, nn.Conv2d)
_BN = nn.modules.batchnorm._BatchNorm
_SUPPORTED = (
    "supported: nn.Linear and nn.Conv2d (groups=1; stride, padding, dilation) are the "
    "treated layers (one parameter block each), nn.BatchNorm1d/2d/3d parameters are held "
    "fixed (as fimlab.Network's factor batch does; batchnorm='include' makes each a block "
    "of its own), and any parameter-free module "
    "(pooling, Flatten, ReLU, ...) is differentiated through"
)
_UNSUPPORTED_HINT = (
    "freeze it (p.requires_grad_(False)), or pass layers=[...] naming the nn.Linear / "
    "nn.Conv2d modules to treat (every other parameter then counts as fixed)"
)


def _kind(m: nn.Module) -> str:
    return "conv" if isinstance(m, nn.Conv2d) else "linear"


def _bn_included(m: nn.Module) -> bool:
    """An affine batch-norm module with trainable ``[γ | β]`` (a block with "include")."""
    return (isinstance(m, _BN) and m.weight is not None
            and any(p.requires_grad for p in m.parameters(recurse=False)))


def _select_bn(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the batch-norm blocks of ``batchnorm="include"``."""
    out = {}
    for n, m in model.named_modules():
        if _bn_included(m):
            if not all(p.requires_grad for p in m.parameters(recurse=False)):
                raise ShapeError(
                    f"{type(m).__name__} {n!r} has a trainable and a frozen parameter; "
                    "with batchnorm='include' its [γ | β] is one block: freeze both or "
                    "neither, or pass batchnorm='fixed'"
                )
            out[n] = m
    return out


def _check_conv(n: str, m: nn.Conv2d) -> None:
    if m.groups != 1:
        raise ShapeError(
            f"nn.Conv2d {n!r} has groups={m.groups}: grouped and depthwise convolutions "
            f"have no Kronecker-factored block in fimlab; {_SUPPORTED}; or pass "
            "layers=[...] without it (its parameters then count as fixed)"
        )


# -- likelihood -----------------------------------------------------------------------
def resolve_likelihood(likelihood) -> Likelihood:
    """fimlab likelihood for a name, a fimlab likelihood or a PyTorch loss module.

    ``nn.CrossEntropyLoss`` -> categorical, ``nn.MSELoss`` -> gaussian (unit variance),
    ``nn.BCEWithLogitsLoss`` -> bernoulli, with any ``reduction``: the factor batch is
    always the Fisher of the per-sample negative log-likelihood averaged over samples
    (``F = (1/N) Σ_n J_nᵀ H_n J_n``). A loss's ``reduction="mean"`` rescales the loss,
    not the model's Fisher: PyTorch's ``MSELoss`` is ``(1/(N·C)) Σ (z − y)²``, whose
    Hessian is ``2/C`` times fimlab's Gaussian one; ``BCEWithLogitsLoss(mean)`` also
    averages over the ``C`` outputs (``1/C`` times fimlab's).

    Options fimlab's likelihoods do not model (``weight``, ``pos_weight``,
    ``ignore_index``, ``label_smoothing``) raise :class:`fimlab.UnknownNameError`.
    """
    if likelihood is None:
        raise UnknownNameError(
            "pass likelihood=: 'categorical', 'gaussian', 'bernoulli', or your loss module "
            "(nn.CrossEntropyLoss(), nn.MSELoss(), nn.BCEWithLogitsLoss())"
        )
    if isinstance(likelihood, (str, Likelihood)):
        return get_likelihood(likelihood)
    if isinstance(likelihood, nn.CrossEntropyLoss):
        bad = []
        if likelihood.weight is not None:
            bad.append("weight")
        if likelihood.ignore_index != -100:
            bad.append(f"ignore_index={likelihood.ignore_index}")
        if getattr(likelihood, "label_smoothing", 0.0):
            bad.append(f"label_smoothing={likelihood.label_smoothing}")
        _refuse(likelihood, bad)
        return get_likelihood("categorical")
    if isinstance(likelihood, nn.MSELoss):
        return get_likelihood("gaussian")
    if isinstance(likelihood, nn.BCEWithLogitsLoss):
        bad = []
        if likelihood.weight is not None:
            bad.append("weight")
        if likelihood.pos_weight is not None:
            bad.append("pos_weight")
        _refuse(likelihood, bad)
        return get_likelihood("bernoulli")
    raise UnknownNameError(
        f"fimlab.torch does not know the loss {type(likelihood).__name__}; use "
        "nn.CrossEntropyLoss, nn.MSELoss or nn.BCEWithLogitsLoss (on logits: no sigmoid "
        "or softmax layer at the end of the model), or likelihood='categorical' | "
        "'gaussian' | 'bernoulli'"
    )


def _refuse(loss, bad):
    if bad:
        raise UnknownNameError(
            f"{type(loss).__name__} with {', '.join(bad)} has no fimlab likelihood (the "
            "Fisher of a weighted / smoothed / masked loss is not modelled); pass the loss "
            "without these options, or drop the samples to ignore from X and y"
        )


# -- layers ---------------------------------------------------------------------------
def _select_layers(model: nn.Module, layers, train: bool = False) -> dict[str, nn.Module]:
    """``{name: module}`` of the nn.Linear / nn.Conv2d layers to treat; checks the others."""
    named = dict(model.named_modules())
    if layers is None:
        chosen = {n: m for n, m in named.items() if isinstance(m, _TREATED)
                  and any(p.requires_grad for p in m.parameters(recurse=False))}
        for n, m in named.items():
            for pn, p in m.named_parameters(recurse=False):
                if not p.requires_grad or isinstance(m, _BN):
                    continue
                if not isinstance(m, _TREATED):
                    where = f"{n}.{pn}" if n else pn
                    raise ShapeError(
                        f"the trainable parameter {where!r} belongs to a "
                        f"{type(m).__name__} ({n or 'the model'}), which fimlab.torch does "
                        f"not model ({_SUPPORTED}); {_UNSUPPORTED_HINT}"
                    )
                if not all(q.requires_grad for q in m.parameters(recurse=False)):
                    raise ShapeError(
                        f"{type(m).__name__} {n!r} has a trainable and a frozen parameter; "
                        "fimlab treats a layer's [W | b] as one block: freeze both or "
                        "neither, or pass layers=[...] without it"
                    )
    else:
        chosen = {}
        by_id = {id(m): n for n, m in named.items()}
        for item in layers:
            if isinstance(item, str):
                if item not in named:
                    raise UnknownNameError(f"layers=: the model has no module {item!r}")
                n, m = item, named[item]
            elif isinstance(item, nn.Module) and id(item) in by_id:
                n, m = by_id[id(item)], item
            else:
                raise UnknownNameError(
                    f"layers= takes module names or nn.Linear / nn.Conv2d modules of the "
                    f"model, got {item!r}"
                )
            if not isinstance(m, _TREATED):
                raise ShapeError(
                    f"layers=: {n!r} is a {type(m).__name__}, not an nn.Linear or "
                    f"nn.Conv2d; {_SUPPORTED}")
            chosen[n] = m
    if not chosen:
        raise ShapeError(
            f"{type(model).__name__} has no trainable nn.Linear or nn.Conv2d layer: "
            "nothing to treat")
    for n, m in chosen.items():
        if isinstance(m, nn.Conv2d):
            _check_conv(n, m)
    for n, m in named.items():
        if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ShapeError(
                f"module {n!r} ({type(m).__name__}, p={m.p}) is in train mode: the Fisher "
                "of a network with random dropout masks is not defined per sample; call "
                "model.eval() first"
            )
        if isinstance(m, _BN) and not train and (m.training or m.running_mean is None):
            why = ("is in train mode" if m.training else
                   "has no running statistics (track_running_stats=False)")
            raise ShapeError(
                f"module {n!r} ({type(m).__name__}) {why}, where samples interact through "
                "the batch statistics; call model.eval() first for the per-sample Fisher "
                "(running statistics), or pass train=True for the vectors a batched "
                "backward through the batch statistics gives (what KFAC sees in training)"
            )
    return chosen


def layer_names(model: nn.Module, layers=None, batchnorm: str = "fixed") -> list[str]:
    """Names of the blocks in ``θ`` order: the call order seen by the last :func:`factor_batch` on
    this model, else their registration order.

    ``batchnorm="fixed"`` (default): the treated ``nn.Linear`` / ``nn.Conv2d`` layers.
    ``batchnorm="include"``: those and the affine, trainable batch-norm modules, in the
    call order of the last ``factor_batch(..., batchnorm="include")`` with the same
    ``layers``, else in registration order.
    """
    check_choice(batchnorm, _BATCHNORM, "batchnorm")
    if batchnorm == "include":
        chosen = _select_layers(model, layers, train=True)
        bn = _select_bn(model)
        seen = _CALL_ORDER_BN.get(model, {}).get(tuple(sorted(chosen)))
        if seen is not None and set(seen) == set(chosen) | set(bn):
            return list(seen)
        return [n for n, _ in model.named_modules() if n in chosen or n in bn]
    if layers is not None:
        return list(_select_layers(model, layers, train=True))
    seen = _CALL_ORDER.get(model)
    if seen is not None:
        return list(seen)
    return list(_select_layers(model, None, train=True))


# -- data -----------------------------------------------------------------------------
def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _model_dtype_device(model, mods):
    p = next(iter(mods.values())).weight
    return p.dtype, p.device


def _as_tensor(x, dtype, device):
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


# -- the factor batch -----------------------------------------------------------------
def factor_batch(model: nn.Module, X, y=None, *, likelihood=None, fisher: str = "exact",
                 mc_samples: int = 1, rng=None, targets=None, layers=None,
                 train: bool = False, batchnorm: str = "fixed", to: str = "numpy",
                 max_bytes: int | None = None) -> FactorBatch:
    """The factor batch of a PyTorch model on inputs ``X``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module whose trainable parameters all sit in ``nn.Linear`` layers (called on
        ``(N, d_in)`` inputs), ``nn.Conv2d`` layers (``groups=1``; any stride, padding,
        dilation, padding mode; on ``(N, C, H, W)`` inputs) and batch-norm layers, each
        treated layer called once per forward pass (``Sequential`` or a custom
        ``forward``: skip connections, branches, ``ModuleList`` are fine; parameter-free
        modules such as pooling, ``Flatten``, activations are differentiated through).
        Its output ``z`` of shape ``(N, C)`` is the likelihood's input (logits or means).
        Batch-norm scales and shifts are held fixed (not in the batch) unless
        ``batchnorm="include"``, as in :func:`fimlab.models.network.network_factor_batch`.
    X : tensor or array, shape (N, ...), or an iterable of ``(X, y)`` batches
        Inputs; a ``DataLoader`` (or any iterable of ``(X, y)`` / ``X``) is
        concatenated (within ``max_bytes``).
    y : tensor or array, optional
        Targets, needed for ``fisher="empirical"``: class indices (categorical),
        ``(N, C)`` values (gaussian, bernoulli).
    likelihood : str, fimlab likelihood, or loss module
        ``"categorical"`` / ``"gaussian"`` / ``"bernoulli"``, or
        ``nn.CrossEntropyLoss()`` / ``nn.MSELoss()`` / ``nn.BCEWithLogitsLoss()`` (any
        ``reduction``; see :func:`resolve_likelihood` for the scaling).
    fisher : {"exact", "mc", "empirical"}
        As in :func:`fimlab.factor_batch`.
    mc_samples : int
        Sampled targets per input for ``"mc"``.
    rng : numpy.random.Generator or int, optional
        Source of the Monte-Carlo draws (``None``: seed 0). The draws are those of
        :func:`fimlab.factor_batch` on the same outputs.
    targets : array, optional
        The sampled Monte-Carlo targets themselves (``(N, S)`` class indices, or
        ``(N, S, C)``), instead of drawing them; see :func:`sample_targets`.
    layers : list of str or nn.Module, optional
        The ``nn.Linear`` / ``nn.Conv2d`` layers to treat (others count as fixed);
        default: all with trainable parameters, and then every trainable parameter must
        be in one (or in a batch-norm layer).
    train : bool
        ``False`` (default): batch norm must run on its running statistics (the module
        in eval mode; otherwise :class:`fimlab.ShapeError`): the per-sample Fisher.
        ``True``: every batch-norm module runs on the batch statistics for this call
        (its mode and running statistics are restored afterwards) and the ``K`` vector
        sets are back-propagated through them, each set separately — the vectors a
        batched backward gives (what KFAC sees in training), as
        ``network_factor_batch(..., train=True)``; samples are coupled there, so these are
        not per-sample gradients.
    batchnorm : {"fixed", "include"}
        ``"fixed"`` (default): batch-norm scales and shifts are held fixed and have no
        block. ``"include"``: every affine batch-norm module with trainable parameters
        (``nn.BatchNorm1d/2d/3d``; ``affine=False`` or frozen ones have none) is a block
        of its own, in call order among the treated layers, with ``a`` a column of ones
        ``(N, 1)`` and ``g`` the rows ``[Σ_t δ_nkt ∘ x̂_nt ; Σ_t δ_nkt]`` ``(N, K, 2C)``
        (``δ`` the vector back-propagated to the module's output, ``x̂ = (x − μ)/√(σ² +
        eps)`` its normalised input on the running statistics, or on the batch
        statistics with ``train=True``; ``t`` over the positions): its block is
        ``[γ; β]`` (``vec([γ | β])``), as ``network_factor_batch(..., batchnorm=
        "include")``. Use the same keyword in :func:`flatten`, :func:`unflatten` and
        :func:`layer_names`. ``layers=`` still names only treated layers; the batch-norm
        blocks are always all of them.
    to : {"numpy", "torch"}
        ``"numpy"`` (default): NumPy arrays in the model's dtype. ``"torch"``: torch
        tensors on the model's device (fimlab's core runs on them through the array API).
    max_bytes : int, optional
        Memory limit for concatenating a data loader (default 2 GiB).

    Returns
    -------
    FactorBatch
        With ``layer_names``: the treated layers' names in ``θ`` order (call order). An
        ``nn.Linear`` gives ``a (N, d_in [+1])``, ``g (N, K, d_out)``; an ``nn.Conv2d``
        the patches ``a (N, T, c_in·k_h·k_w [+1])`` (``F.unfold`` order, so its block is
        ``vec([weight.reshape(c_out, -1) | bias])``) and ``g (N, K, T, c_out)`` over the
        ``T = H_out·W_out`` output positions (row-major).

    Raises
    ------
    ShapeError
        For a trainable parameter outside the supported modules (the message names the
        module and what is supported), an ``nn.Conv2d`` with ``groups > 1``, a treated
        layer called twice or on inputs of the wrong rank, dropout in train mode, batch
        norm in train mode without ``train=True``, an output that is not ``(N, C)``.
    UnknownNameError
        For an unknown Fisher type or likelihood, a loss option fimlab does not model.

    Examples
    --------
    >>> import torch, fimlab as fl, fimlab.torch as flt
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(),
    ...                             torch.nn.Linear(5, 2, bias=False)).double()
    >>> X = torch.randn(10, 3, dtype=torch.float64)
    >>> y = torch.randint(0, 2, (10,))
    >>> b = flt.factor_batch(model, X, y, likelihood="categorical", fisher="empirical")
    >>> [a.shape for a in b.a], [g.shape for g in b.g]
    ([(10, 4), (10, 5)], [(10, 1, 5), (10, 1, 2)])
    """
    check_choice(fisher, FISHER_TYPES, "Fisher type")
    check_choice(to, ("numpy", "torch"), "array library (to=)")
    check_choice(batchnorm, _BATCHNORM, "batchnorm")
    if not isinstance(model, nn.Module):
        raise TypeError(f"factor_batch needs a torch.nn.Module, got {type(model).__name__}")
    lik = resolve_likelihood(likelihood)
    mods = _select_layers(model, layers, train=bool(train))
    bn_mods = _select_bn(model) if batchnorm == "include" else {}
    dtype, device = _model_dtype_device(model, mods)
    if not isinstance(X, (torch.Tensor, np.ndarray)) and isinstance(X, Iterable):
        if y is not None:
            raise ShapeError("with a data loader the targets come from its batches: "
                             "leave y=None")
        X, y = concat_batches(X, _np, max_bytes)
    Xt = _as_tensor(X, dtype, device)
    N = Xt.shape[0]

    names = {id(m): n for n, m in mods.items()}
    names.update({id(m): n for n, m in bn_mods.items()})
    records: list = []  # (name, module, input, probe) in call order; x̂ for batch norm
    calls: dict = {}

    def hook(mod, inp, out):
        n = names[id(mod)]
        calls[n] = calls.get(n, 0) + 1
        kind = type(mod).__name__
        if calls[n] > 1:
            raise ShapeError(
                f"{kind} {n!r} is called more than once in one forward pass (weight "
                "sharing); fimlab's factor batches need one call per layer: pass "
                "layers=[...] without it (it then counts as fixed)"
            )
        x = inp[0]
        if isinstance(mod, _BN):
            return _bn_hook(mod, n, x, out, N, records)
        want = 4 if isinstance(mod, nn.Conv2d) else 2
        if x.ndim != want or x.shape[0] != N:
            form = "(N, C, H, W)" if want == 4 else "(N, d_in)"
            raise ShapeError(
                f"{kind} {n!r} received inputs of shape {tuple(x.shape)}, not {form} "
                f"with N = {N}"
                + ("" if want == 4 else
                   ": a layer applied along a sequence or spatial axis shares its weights "
                   "across positions, which fimlab's factor batches model for nn.Conv2d "
                   "only")
                + "; pass layers=[...] without it"
            )
        probe = torch.zeros_like(out, requires_grad=True)
        records.append((n, mod, x.detach(), probe))
        return out + probe

    bns = [m for m in model.modules() if isinstance(m, _BN)] if train else []
    saved = [(m, m.training, {k: v.clone() for k, v in m.named_buffers(recurse=False)})
             for m in bns]
    handles = [m.register_forward_hook(hook) for m in (*mods.values(), *bn_mods.values())]
    try:
        for m in bns:  # batch statistics; modes and running statistics restored below
            m.train(True)
        z, grads, K = _run(model, Xt, N, {**mods, **bn_mods}, calls, records, handles, lik,
                           fisher, y, mc_samples, rng, targets)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for m, mode, bufs in saved:
                m.train(mode)
                for k, v in bufs.items():
                    getattr(m, k).copy_(v)
    a_list, g_list = [], []
    for (_n, mod, x, probe), g in zip(records, grads):
        if g is None:  # the layer does not reach the output
            shape = probe.shape[1:] if isinstance(mod, _BN) else _positions(probe).shape[1:]
            g = torch.zeros((N, K, *shape), dtype=probe.dtype, device=probe.device)
        if isinstance(mod, _BN):  # x is x̂ here; rows [Σ_t δ ∘ x̂ ; Σ_t δ] = 1 ⊗ row
            g = g.detach()
            dims = tuple(range(3, g.ndim))
            xh = x[:, None]
            dg = (g * xh).sum(dim=dims) if dims else g * xh
            db = g.sum(dim=dims) if dims else g
            a_list.append(torch.ones((N, 1), dtype=g.dtype, device=g.device))
            g_list.append(torch.cat([dg, db], dim=2).contiguous())
            continue
        if isinstance(mod, nn.Conv2d):
            a = _conv_patches(mod, x)
        else:
            a = x
            if mod.bias is not None:
                a = torch.cat([x, torch.ones((N, 1), dtype=x.dtype, device=x.device)], dim=1)
        a_list.append(a)
        g_list.append(g.detach())
    if to == "numpy":
        a_list = [t.cpu().numpy() for t in a_list]
        g_list = [t.cpu().numpy() for t in g_list]
    batch = FactorBatch(a_list, g_list, fisher=fisher)
    order = [r[0] for r in records]
    batch.layer_names = order
    if batchnorm == "include":
        _CALL_ORDER_BN.setdefault(model, {})[tuple(sorted(mods))] = order
        if layers is None:
            _CALL_ORDER[model] = [n for n in order if n in mods]
    elif layers is None:
        _CALL_ORDER[model] = order
    return batch


def _bn_hook(mod, n, x, out, N, records):
    """Record a batch-norm module's normalised input ``x̂`` and add its output probe."""
    if x.ndim < 2 or x.shape[0] != N:
        raise ShapeError(
            f"{type(mod).__name__} {n!r} received inputs of shape {tuple(x.shape)}, not "
            f"(N, C, ...) with N = {N}; pass batchnorm='fixed'"
        )
    with torch.no_grad():
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if mod.training or mod.running_mean is None:  # the batch statistics it used
            dims = (0, *range(2, x.ndim))
            mu = x.mean(dim=dims, keepdim=True)
            var = x.var(dim=dims, unbiased=False, keepdim=True)
        else:
            mu = mod.running_mean.reshape(shape)
            var = mod.running_var.reshape(shape)
        xhat = (x.detach() - mu) / torch.sqrt(var + mod.eps)
    probe = torch.zeros_like(out, requires_grad=True)
    records.append((n, mod, xhat, probe))
    return out + probe


def _run(model, Xt, N, mods, calls, records, handles, lik, fisher, y, mc_samples, rng,
         targets):
    """Forward pass (hooks recording), output vectors, one batched backward."""
    with torch.enable_grad():
        z = model(Xt)
    for h in handles:
        h.remove()
    missing = [n for n in mods if n not in calls]
    if missing:
        raise ShapeError(f"the forward pass did not call the treated layer(s) {missing}")
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] != N:
        raise ShapeError(
            f"the model's output must be a tensor of shape (N, C) = ({N}, C), got "
            f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}"
        )
    zn = z.detach().cpu().numpy()
    yn = None if y is None else _np(y)
    V = output_vectors(lik, zn, fisher, y=yn, mc_samples=mc_samples, rng=rng,
                       targets=None if targets is None else _np(targets))
    K = V.shape[1]
    Vt = torch.as_tensor(np.ascontiguousarray(np.moveaxis(V, 1, 0)), dtype=z.dtype,
                         device=z.device)  # (K, N, C)
    probes = [r[3] for r in records]
    # One vmapped backward for the K vectors, except through convolutions: PyTorch's
    # batching rule for the convolution backward is slow on the CPU (measured on the
    # cuda-convnet, N = 64, K = 10, one thread: 3.45 s vmapped, 0.41 s as K backwards)
    if not any(isinstance(r[1], nn.Conv2d) for r in records):
        try:
            gb = torch.autograd.grad(z, probes, grad_outputs=Vt, is_grads_batched=True,
                                     allow_unused=True)
            return z, [None if g is None else g.detach().movedim(0, 1).contiguous()
                       for g in gb], K
        except RuntimeError:  # an operation without a batching rule: K backwards
            pass
    # K backwards, each written straight into the (N, K, [T,] d_out) layout
    grads = [None] * len(probes)
    for k in range(K):
        gk = torch.autograd.grad(z, probes, grad_outputs=Vt[k], retain_graph=k < K - 1,
                                 allow_unused=True)
        for i, gi in enumerate(gk):
            if gi is None:
                continue
            if not isinstance(records[i][1], _BN):
                gi = _positions(gi)
            if grads[i] is None:
                grads[i] = torch.empty((gi.shape[0], K, *gi.shape[1:]), dtype=gi.dtype,
                                       device=gi.device)
            grads[i][:, k] = gi
    return z, grads, K


def _positions(g):
    """A layer-output gradient as ``(N, d_out)`` or, for a convolution's ``(N, c_out, H_o,
    W_o)``, ``(N, T, c_out)`` (a view)."""
    return g if g.ndim == 2 else g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)


def _conv_patches(mod: nn.Conv2d, x: torch.Tensor):
    """Patches ``ā`` ``(N, T, c_in·k_h·k_w [+1])`` (``F.unfold``: PyTorch's weight order,
    positions row-major)."""
    N = x.shape[0]
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        x = torch.nn.functional.pad(x, mod._reversed_padding_repeated_twice, mode=mode)
        pad = 0
    else:
        pad = mod.padding
    p = torch.nn.functional.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=pad,
                                   stride=mod.stride)  # (N, d, T)
    if mod.bias is None:
        return p.transpose(1, 2).contiguous()
    a = torch.empty((N, p.shape[2], p.shape[1] + 1), dtype=x.dtype, device=x.device)
    a[:, :, :-1] = p.transpose(1, 2)
    a[:, :, -1] = 1.0
    return a


def sample_targets(model_output, likelihood, mc_samples: int = 1, rng=None):
    """Targets sampled from the model, as :func:`factor_batch` draws them: ``(N, S)``
    class indices (categorical) or ``(N, S, C)`` (NumPy), from the output ``z``."""
    from .._frontend import as_rng, check_mc_samples

    lik = resolve_likelihood(likelihood)
    return lik.sample(_np(model_output), as_rng(rng), check_mc_samples(mc_samples))


# -- θ <-> model parameters -----------------------------------------------------------
def _layer_params(model, layers, batchnorm="fixed"):
    named = dict(model.named_modules())
    out = []
    for n in layer_names(model, layers, batchnorm):
        m = named[n]
        out.append((n, m))
    return out


def flatten(model: nn.Module, grads=None, layers=None, batchnorm: str = "fixed"):
    """``θ``-ordered vector of per-parameter tensors: ``[vec([W_0 | b_0]); …]``.

    Parameters
    ----------
    model : torch.nn.Module
    grads : mapping ``{name: tensor}``, optional
        Tensors shaped like the parameters (``"fc.weight"``, ``"fc.bias"``); default:
        each parameter's ``.grad``.
    layers : list, optional
        The layers and their order; default :func:`layer_names`.
    batchnorm : {"fixed", "include"}
        As in :func:`factor_batch`: with ``"include"`` each affine batch-norm module adds
        its block ``[γ; β]`` (``"<bn>.weight"`` then ``"<bn>.bias"``) in call order.

    Returns
    -------
    numpy.ndarray
        In the model's dtype, the layout of :func:`factor_batch`'s ``θ``.

    Examples
    --------
    >>> import torch, fimlab.torch as flt
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3))
    >>> theta = flt.flatten(m, dict(m.named_parameters()))
    >>> theta.shape
    (9,)
    >>> sorted(flt.unflatten(m, theta))
    ['0.bias', '0.weight']
    """
    if grads is None:
        grads = {}
        for n, p in model.named_parameters():
            grads[n] = p.grad if p.grad is not None else torch.zeros_like(p)
    elif not isinstance(grads, Mapping):
        raise TypeError("grads must be a mapping {parameter name: tensor}")
    parts = []
    for n, m in _layer_params(model, layers, batchnorm):
        pre = f"{n}." if n else ""
        if isinstance(m, _BN):
            for k in ("weight", "bias"):
                v = _np(grads[pre + k])
                if tuple(v.shape) != (m.num_features,):
                    raise ShapeError(f"{pre}{k}: expected shape ({m.num_features},), got "
                                     f"{tuple(v.shape)}")
                parts.append(v.ravel())
            continue
        W = _np(grads[pre + "weight"])
        if tuple(W.shape) != tuple(m.weight.shape):
            raise ShapeError(f"{pre}weight: expected shape {tuple(m.weight.shape)}, got "
                             f"{tuple(W.shape)}")
        W = W.reshape(W.shape[0], -1)  # a convolution's (c_out, c_in·k_h·k_w)
        if m.bias is not None:
            b = _np(grads[pre + "bias"]).reshape(-1, 1)
            W = np.concatenate([W, b], axis=1)
        parts.append(W.ravel(order="F"))
    return np.concatenate(parts)


def unflatten(model: nn.Module, theta, layers=None, batchnorm: str = "fixed") -> dict:
    """Split ``θ`` into ``{name: tensor}`` in the model's shapes, dtype and device.

    Inverse of :func:`flatten`: each layer's block ``vec([W | b])`` becomes
    ``"<layer>.weight"`` ``(d_out, d_in)`` (a convolution's ``(c_out, c_in, k_h, k_w)``) and ``"<layer>.bias"`` ``(d_out,)``. Use it to
    apply a fimlab direction: ``p.data -= lr * step[name]``. With ``batchnorm="include"``
    a batch-norm block ``[γ; β]`` becomes ``"<bn>.weight"`` and ``"<bn>.bias"`` ``(C,)``.
    """
    pairs = _layer_params(model, layers, batchnorm)
    total = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                for _, m in pairs)
    if isinstance(theta, torch.Tensor):
        theta = theta.detach()
        th = theta
    else:
        th = torch.as_tensor(np.asarray(theta))
    if th.ndim != 1 or th.shape[0] != total:
        raise ShapeError(f"θ must have shape ({total},) for these layers, got "
                         f"{tuple(th.shape)}")
    out, o = {}, 0
    for n, m in pairs:
        pre = f"{n}." if n else ""
        if isinstance(m, _BN):
            C = m.num_features
            for k in ("weight", "bias"):
                out[pre + k] = th[o:o + C].to(dtype=m.weight.dtype,
                                              device=m.weight.device).clone()
                o += C
            continue
        r, c = m.weight.shape[0], m.weight[0].numel()
        cols = c + (1 if m.bias is not None else 0)
        blk = th[o:o + r * cols].reshape(cols, r).T.to(dtype=m.weight.dtype,
                                                       device=m.weight.device)
        o += r * cols
        out[pre + "weight"] = blk[:, :c].reshape(m.weight.shape).contiguous()
        if m.bias is not None:
            out[pre + "bias"] = blk[:, c].contiguous()
    return out
