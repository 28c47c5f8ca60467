"""fimlab.jax: factor batches of Flax linen, Flax NNX and Equinox models, checked against
fimlab's own MLP and against a dense Fisher from jax.jacrev."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
lnn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import fimlab as fl  # noqa: E402
import fimlab.jax as flj  # noqa: E402

from conftest import make_targets  # noqa: E402

ACT = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}
CASES = [([4, 6, 5, 3], "tanh", "categorical"), ([3, 5, 4, 2], "relu", "gaussian"),
         ([5, 4, 3], "sigmoid", "bernoulli")]


# -- the same network in the three libraries, holding the weights of a fimlab MLP ---------
class LinenMLP(lnn.Module):
    sizes: tuple
    act: str

    @lnn.compact
    def __call__(self, x):
        for i, d in enumerate(self.sizes[1:]):
            x = lnn.Dense(d, param_dtype=jnp.float64)(x)
            if i < len(self.sizes) - 2:
                x = ACT[self.act](x)
        return x


def linen_copy(net):
    params = {f"Dense_{i}": {"kernel": jnp.asarray(W[:, :-1].T), "bias": jnp.asarray(W[:, -1])}
              for i, W in enumerate(net.params)}
    return LinenMLP(tuple(net.layer_sizes), net.activations[0]), {"params": params}


class NNXMLP(nnx.Module):
    def __init__(self, sizes, act):
        r = nnx.Rngs(0)
        self.act = act
        self.layers = nnx.List([nnx.Linear(a, b, rngs=r, param_dtype=jnp.float64)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = ACT[self.act](x)
        return x


def nnx_copy(net):
    m = NNXMLP(net.layer_sizes, net.activations[0])
    for layer, W in zip(m.layers, net.params):
        layer.kernel[...] = jnp.asarray(W[:, :-1].T)
        layer.bias[...] = jnp.asarray(W[:, -1])
    return m


def eqx_copy(net):
    L = net.n_layers
    m = eqx.nn.MLP(net.layer_sizes[0], net.layer_sizes[-1], net.layer_sizes[1], L - 1,
                   activation=ACT[net.activations[0]], key=jax.random.PRNGKey(0),
                   dtype=jnp.float64)
    for i, W in enumerate(net.params):
        m = eqx.tree_at(lambda t, i=i: (t.layers[i].weight, t.layers[i].bias), m,
                        (jnp.asarray(W[:, :-1]), jnp.asarray(W[:, -1])))
    return m


def same_batch(b1, b2, rtol=1e-12):
    assert b1.n_layers == b2.n_layers and b1.n_vectors == b2.n_vectors
    for x, y in zip(b1.a + b1.g, b2.a + b2.g):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max())


@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_factor_batch_as_mlp(case, fisher):
    sizes, act, lik = CASES[case]
    sizes = [sizes[0], sizes[1], sizes[1], sizes[-1]]  # eqx.nn.MLP: equal hidden widths
    net = fl.MLP(sizes, activation=act, likelihood=lik, seed=case)
    rng = np.random.default_rng(case)
    X = rng.normal(size=(13, sizes[0]))
    y = make_targets(lik, 13, sizes[-1], rng)
    ref = fl.factor_batch(net, X, y, fisher=fisher, mc_samples=3, rng=4)
    model, params = linen_copy(net)
    kw = dict(likelihood=lik, fisher=fisher, mc_samples=3, rng=4)
    b = flj.factor_batch(model, X, y, params=params, **kw)
    assert b.layer_names == ["Dense_0", "Dense_1", "Dense_2"]
    same_batch(b, ref)
    b = flj.factor_batch(nnx_copy(net), X, y, **kw)
    assert b.layer_names == ["layers.0", "layers.1", "layers.2"]
    same_batch(b, ref)
    b = flj.factor_batch(eqx_copy(net), jnp.asarray(X), y, **kw)
    assert b.layer_names == ["layers[0]", "layers[1]", "layers[2]"]
    same_batch(b, ref)
    if fisher == "mc":
        ys = net.likelihood.sample(net.forward(X), np.random.default_rng(4), 3)
        same_batch(flj.factor_batch(eqx_copy(net), X, likelihood=lik, fisher="mc",
                                    targets=ys), ref)


# -- not a chain: against jax.jacrev through the loss Hessian's square root ---------------
class Branches(lnn.Module):
    @lnn.compact
    def __call__(self, x):
        h = jnp.tanh(lnn.Dense(5, param_dtype=jnp.float64, name="a")(x))
        r = h + jax.nn.relu(lnn.Dense(5, use_bias=False, param_dtype=jnp.float64,
                                      name="res")(h))
        return (lnn.Dense(3, param_dtype=jnp.float64, name="out")(r)
                + jax.nn.sigmoid(lnn.Dense(3, param_dtype=jnp.float64, name="side")(x)))


def nll(z, t, lik):
    if lik == "categorical":
        return jax.nn.logsumexp(z) - z[t]
    if lik == "gaussian":
        return 0.5 * jnp.sum((z - t) ** 2)
    return jnp.sum(jax.nn.softplus(z) - t * z)


@pytest.mark.parametrize("lik", ["categorical", "gaussian", "bernoulli"])
def test_non_chain_linen_against_jacrev(lik):
    model = Branches()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 4))
    y = make_targets(lik, 7, 3, rng)
    params = model.init(jax.random.PRNGKey(1), jnp.asarray(X))
    b = flj.factor_batch(model, X, y, params=params, likelihood=lik, fisher="exact")
    assert b.layer_names == ["a", "res", "out", "side"]
    F = fl.FisherOperator(b).to_dense()

    def out(p, x):
        return model.apply(p, x[None])[0]

    Xj = jnp.asarray(X)
    J = jax.jit(jax.vmap(jax.jacrev(out), in_axes=(None, 0)))(params, Xj)["params"]
    cols = []
    for name in b.layer_names:  # (N, C, d_in, d_out) kernels -> column-major vec([W | b])
        blk = jnp.transpose(J[name]["kernel"], (0, 1, 3, 2))  # (N, C, d_out, d_in)
        if "bias" in J[name]:
            blk = jnp.concatenate([blk, J[name]["bias"][..., None]], axis=3)
        cols.append(jnp.swapaxes(blk, 2, 3).reshape(*blk.shape[:2], -1))
    Jn = np.asarray(jnp.concatenate(cols, axis=2))  # (N, C, P)
    Z = jax.vmap(out, in_axes=(None, 0))(params, Xj)
    H = np.asarray(jax.jit(jax.vmap(jax.hessian(nll), in_axes=(0, 0, None)),
                           static_argnums=2)(Z, jnp.asarray(y), lik))
    ev, Q = np.linalg.eigh(H)
    R = Q * np.sqrt(np.clip(ev, 0, None))[:, None, :]  # H_n = R_n R_nᵀ
    JR = np.einsum("ncp,nck->nkp", Jn, R)
    ref = np.einsum("nkp,nkq->pq", JR, JR) / 7
    np.testing.assert_allclose(F, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


# -- θ <-> pytree ------------------------------------------------------------------------
def test_flatten_unflatten_round_trip_all_libraries():
    net = fl.MLP([3, 4, 4, 2], activation="tanh", likelihood="categorical", seed=0)
    X = np.random.default_rng(0).normal(size=(5, 3))
    theta = np.random.default_rng(1).normal(size=net.n_params)
    model, params = linen_copy(net)
    flj.factor_batch(model, X, params=params)
    tree = flj.unflatten(model, theta, params=params)
    np.testing.assert_array_equal(flj.flatten(model, tree), theta)
    # a Flax kernel is Wᵀ: θ's first block is vec([W | b]) with W = kernelᵀ
    W = np.column_stack([tree["params"]["Dense_0"]["kernel"].T,
                         tree["params"]["Dense_0"]["bias"]])
    np.testing.assert_array_equal(theta[:W.size], W.ravel(order="F"))
    np.testing.assert_array_equal(flj.flatten(model, params), net.get_flat())
    m = nnx_copy(net)
    flj.factor_batch(m, X)
    np.testing.assert_array_equal(flj.flatten(m, flj.unflatten(m, theta)), theta)
    np.testing.assert_array_equal(flj.flatten(m, nnx.state(m, nnx.Param)), net.get_flat())
    e = eqx_copy(net)
    flj.factor_batch(e, X)
    np.testing.assert_array_equal(flj.flatten(e, flj.unflatten(e, theta)), theta)
    np.testing.assert_array_equal(flj.flatten(e, e), net.get_flat())
    with pytest.raises(fl.ShapeError, match=r"θ must have shape \(46,\)"):
        flj.unflatten(e, theta[:-1])


def test_a_fimlab_step_on_an_equinox_model_equals_the_step_on_the_mlp():
    net = fl.MLP([4, 6, 6, 3], activation="tanh", likelihood="categorical", seed=2)
    e = eqx_copy(net)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    lr, lam = 0.3, 1e-2
    step_np = fl.KFAC(fl.factor_batch(net, X)).solve(net.flatten(net.gradient(X, y)), lam)
    net.set_flat(net.get_flat() - lr * step_np)

    def loss(m):
        z = jax.vmap(m)(jnp.asarray(X))
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - z[jnp.arange(20), y])

    grads = eqx.filter_grad(loss)(e)
    b = flj.factor_batch(e, X)
    step = flj.unflatten(e, fl.KFAC(b).solve(flj.flatten(e, grads), lam))
    e = eqx.apply_updates(e, jax.tree_util.tree_map(lambda u: -lr * u,
                                                    eqx.filter(step, eqx.is_inexact_array)))
    np.testing.assert_allclose(flj.flatten(e, e), net.get_flat(), rtol=1e-11)


# -- errors ------------------------------------------------------------------------------
class WithNorm(lnn.Module):
    @lnn.compact
    def __call__(self, x):
        return lnn.Dense(2)(lnn.LayerNorm()(lnn.Dense(4)(x)))


class Shared(lnn.Module):
    @lnn.compact
    def __call__(self, x):
        d = lnn.Dense(3)
        return lnn.Dense(2)(d(d(x)))


class WithDropout(lnn.Module):
    @lnn.compact
    def __call__(self, x, train: bool = True):
        return lnn.Dense(2)(lnn.Dropout(0.5, deterministic=not train)(lnn.Dense(4)(x)))


X3 = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)


def test_linen_errors():
    m = WithNorm()
    p = m.init(jax.random.PRNGKey(0), X3)
    with pytest.raises(fl.ShapeError, match="'LayerNorm_0/bias' does not belong to an "
                                            "nn.Dense.*layers="):
        flj.factor_batch(m, X3, params=p)
    assert flj.factor_batch(m, X3, params=p, layers=["Dense_1"]).layer_names == ["Dense_1"]
    with pytest.raises(fl.ShapeError, match="needs its variables"):
        flj.factor_batch(m, X3)
    s = Shared()
    with pytest.raises(fl.ShapeError, match="'Dense_0' is called more than once"):
        flj.factor_batch(s, X3, params=s.init(jax.random.PRNGKey(0), X3))
    d = WithDropout()
    pd = d.init(jax.random.PRNGKey(0), X3, train=False)
    with pytest.raises(fl.ShapeError, match="Dropout 'Dropout_0'.*not deterministic"):
        flj.factor_batch(d, X3, params=pd)
    assert flj.factor_batch(d, X3, params=pd, apply_kwargs={"train": False}).n_layers == 2
    with pytest.raises(fl.UnknownNameError, match="were not called"):
        flj.factor_batch(m, X3, params=p, layers=["nope"])
    seq = np.random.default_rng(0).normal(size=(6, 2, 3)).astype(np.float32)
    with pytest.raises(fl.ShapeError, match=r"received inputs of shape \(6, 2, 3\)"):
        flj.factor_batch(m, seq, params=m.init(jax.random.PRNGKey(0), seq))


def test_nnx_and_equinox_errors():
    class Norm(nnx.Module):
        def __init__(self):
            r = nnx.Rngs(0)
            self.fc = nnx.Linear(3, 4, rngs=r)
            self.ln = nnx.LayerNorm(4, rngs=r)
            self.do = nnx.Dropout(0.5, rngs=r)
            self.head = nnx.Linear(4, 2, rngs=r)

        def __call__(self, x):
            return self.head(self.do(self.ln(self.fc(x))))

    m = Norm()
    with pytest.raises(fl.ShapeError, match="Dropout 'do'.*model.eval"):
        flj.factor_batch(m, X3, layers=["head"])
    m.eval()
    with pytest.raises(fl.ShapeError, match="'ln.(bias|scale)' belongs to a LayerNorm"):
        flj.factor_batch(m, X3)
    assert flj.factor_batch(m, X3, layers=["fc", "head"]).layer_names == ["fc", "head"]

    class EqNorm(eqx.Module):
        fc: eqx.nn.Linear
        ln: eqx.nn.LayerNorm

        def __call__(self, x):
            return self.ln(self.fc(x))

    e = EqNorm(eqx.nn.Linear(3, 4, key=jax.random.PRNGKey(0)), eqx.nn.LayerNorm(4))
    with pytest.raises(fl.ShapeError, match="'ln.weight' is a trainable leaf outside"):
        flj.factor_batch(e, X3)
    assert flj.factor_batch(e, X3, layers=["fc"]).n_layers == 1
    with pytest.raises(TypeError, match="takes a Flax linen Module"):
        flj.factor_batch(lambda x: x, X3)


def test_import_without_jax_names_the_extra():
    code = ("import sys; sys.modules['jax'] = None\n"
            "try:\n    import fimlab.jax\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'fimlab[jax]'" in out
