"""PyTorch front-end: the factor batch of a ``torch.nn.Module`` built from ``nn.Linear``
and ``nn.Conv2d`` layers (with batch norm, pooling, activations between them).

``fimlab.torch.factor_batch(model, X, y, likelihood=..., fisher=...)`` runs the model
once with forward hooks on its ``nn.Linear`` and ``nn.Conv2d`` layers (recording each
layer's input ``ā``; a convolution's is unfolded into patches, ``F.unfold``)
and back-propagates the ``K`` output-space vectors of the chosen Fisher to a zero
"probe" added to every layer's output, so the gradient reaching a probe is the vector
back-propagated to that layer's pre-activation: in one batched, vmapped backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``) for dense models, in ``K`` batched
backward passes for models with convolutions (PyTorch's vmapped convolution backward is
several times slower on the CPU). No per-sample loop, no loop over positions.

The parameter vector ``θ`` keeps fimlab's convention: one block per treated layer in the
order the forward pass calls them, each block ``vec([W | b])`` (column-major; ``vec(W)``
for a layer without bias; a convolution's ``W = weight.reshape(c_out, c_in·k_h·k_w)``).
Batch-norm scales and shifts are held fixed, as in
:func:`fimlab.models.network.network_factor_batch`, or with ``batchnorm="include"`` each
affine batch-norm module is a block ``[γ; β]`` of its own (``a`` a column of ones, ``g``
the rows ``[Σ_t δ ∘ x̂ ; Σ_t δ]``; the same keyword in :func:`flatten`,
:func:`unflatten`, :func:`layer_names`); :func:`to_torch` gives the PyTorch
twin of a :class:`fimlab.Network`. :func:`flatten` and :func:`unflatten` map between
``θ`` and the model's own ``{name: tensor}`` parameters.

Install with ``pip install "fimlab[torch]"``. On a machine without a GPU, install the
CPU build of PyTorch first (``pip install torch --index-url
https://download.pytorch.org/whl/cpu``) so that pip does not pull the multi-GB CUDA
build.

Examples
--------
>>> import torch, fimlab as fl, fimlab.torch as flt
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
...                             torch.nn.Linear(8, 3)).double()
>>> X = torch.randn(20, 4, dtype=torch.float64)
>>> batch = flt.factor_batch(model, X, likelihood=torch.nn.CrossEntropyLoss())
>>> batch
<FactorBatch N=20 K=3 layers=[5x8, 9x3] fisher='exact' dtype=float64>
>>> batch.layer_names
['0', '2']
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fimlab.torch needs PyTorch, which is not installed: pip install 'fimlab[torch]' "
        "(on a CPU-only machine first: pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu)"
    ) from _exc

from ._convert import ResidualBlock, to_torch
from ._core import (
    factor_batch,
    flatten,
    layer_names,
    resolve_likelihood,
    sample_targets,
    unflatten,
)

__all__ = ["factor_batch", "flatten", "unflatten", "layer_names", "resolve_likelihood",
           "sample_targets", "to_torch", "ResidualBlock"]
