"""JAX front-end: factor batches of Flax (linen and NNX) and Equinox models.

``fimlab.jax.factor_batch(model, X, y, params=..., likelihood=..., fisher=...)`` finds the
fully connected layers without changing the model's code — Flax linen ``nn.Dense`` by
method interception (``flax.linen.intercept_methods``), Flax NNX ``nnx.Linear`` and
Equinox ``eqx.nn.Linear`` by wrapping their calls — records each layer's input ``ā``,
adds a zero "probe" to each layer's output, and pulls the ``K`` output-space vectors of
the chosen Fisher back to the probes with one ``jax.vmap`` of one ``jax.vjp``: the
gradient reaching a probe is the vector back-propagated to that layer's pre-activation.

``θ`` keeps fimlab's convention (layers in call order, each ``vec([W | b])``
column-major; a Flax kernel is ``Wᵀ``, an Equinox weight is ``W``). :func:`flatten` and
:func:`unflatten` map between ``θ`` and the model's parameter pytree.

Install with ``pip install "fimlab[jax]"`` (CPU JAX; see JAX's documentation for GPU).

Examples
--------
>>> import jax, jax.numpy as jnp, flax.linen as nn, numpy as np
>>> import fimlab.jax as flj
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         return nn.Dense(3)(nn.tanh(nn.Dense(8)(x)))
>>> X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
>>> params = Net().init(jax.random.PRNGKey(0), X)
>>> batch = flj.factor_batch(Net(), X, params=params, likelihood="categorical")
>>> batch
<FactorBatch N=20 K=3 layers=[5x8, 9x3] fisher='exact' dtype=float32>
>>> batch.layer_names        # call order (Dense(3) was created first, called last)
['Dense_1', 'Dense_0']
"""

from __future__ import annotations

try:
    import jax as _jax  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fimlab.jax needs JAX (and Flax or Equinox for the model), which is not "
        "installed: pip install 'fimlab[jax]'"
    ) from _exc

from ._core import factor_batch, flatten, unflatten

__all__ = ["factor_batch", "flatten", "unflatten"]
