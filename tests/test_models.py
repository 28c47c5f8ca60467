"""The MLP: gradients against finite differences, parameter conventions, bad input."""

import numpy as np
import pytest

import fimlab as fl
from fimlab.models import ACTIVATIONS, LIKELIHOODS
from fimlab.testing import make_targets
from fimlab.testing.oracles import fd_gradient


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_gradient_matches_finite_differences(activation, likelihood, rng):
    net = fl.MLP([3, 4, 3, 2], activation=activation, likelihood=likelihood, seed=3)
    X = rng.normal(size=(7, 3))
    if activation == "relu":  # keep pre-activations away from the kink
        X = X + 0.05 * np.sign(X)
    y = make_targets(likelihood, 7, 2, rng)
    loss, grads = net.loss_and_gradient(X, y)
    theta = net.get_flat().copy()

    def f(t):
        net.set_flat(t)
        return net.loss(X, y)

    num = fd_gradient(f, theta)
    net.set_flat(theta)
    np.testing.assert_allclose(net.flatten(grads), num, rtol=1e-6, atol=1e-8)
    assert loss == pytest.approx(net.loss(X, y))


def test_flat_parameters_are_column_major_vec():
    net = fl.MLP([2, 3, 1], activation="tanh", likelihood="gaussian", seed=0)
    theta = net.get_flat()
    W0 = net.params[0]
    np.testing.assert_array_equal(theta[: W0.size], W0.ravel(order="F"))
    net.set_flat(theta * 2)
    np.testing.assert_array_equal(net.params[0], 2 * W0)
    assert net.n_params == theta.size == 3 * 3 + 1 * 4


def test_bias_is_last_column_and_init_is_deterministic():
    a = fl.MLP([5, 4, 3], seed=7)
    b = fl.MLP([5, 4, 3], seed=7)
    c = fl.MLP([5, 4, 3], seed=8)
    for Wa, Wb in zip(a.params, b.params):
        np.testing.assert_array_equal(Wa, Wb)
        np.testing.assert_array_equal(Wa[:, -1], 0.0)
    assert not np.array_equal(a.params[0], c.params[0])
    X = np.zeros((1, 5))
    np.testing.assert_allclose(a.forward(X), 0.0)  # zero input, zero bias -> zero output


def test_per_layer_activations_and_float32():
    net = fl.MLP([3, 4, 4, 2], activation=["relu", "sigmoid"], likelihood="bernoulli",
                 seed=1, dtype="float32")
    assert net.activations == ["relu", "sigmoid", "linear"]
    assert net.forward(np.ones((2, 3))).dtype == np.float32


def test_predict_is_probabilities_for_categorical(rng):
    net = fl.MLP([3, 5, 4], likelihood="categorical", seed=0)
    p = net.predict(rng.normal(size=(6, 3)))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(p > 0)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"activation": "swish"}, fl.UnknownNameError),
        ({"likelihood": "poisson"}, fl.UnknownNameError),
        ({"activation": ["relu"]}, fl.ShapeError),
        ({"dtype": "float16"}, fl.UnknownNameError),
    ],
)
def test_bad_model_options(kwargs, err):
    with pytest.raises(err) as exc:
        fl.MLP([3, 4, 4, 2], **kwargs)
    assert "choose one of" in str(exc.value) or "need" in str(exc.value) or "dtype" in str(exc.value)


def test_bad_layer_sizes():
    with pytest.raises(fl.ShapeError, match="at least an input and an output"):
        fl.MLP([3])
    with pytest.raises(fl.ShapeError):
        fl.MLP([3, 0, 2])


def test_bad_inputs_and_targets(rng):
    net = fl.MLP([3, 4, 2], likelihood="categorical", seed=0)
    with pytest.raises(fl.ShapeError, match=r"X must have shape \(N, 3\)"):
        net.forward(np.ones((2, 4)))
    X = np.ones((2, 3))
    X[0, 1] = np.nan
    with pytest.raises(fl.NonFiniteError, match="X contains 1 non-finite"):
        net.forward(X)
    with pytest.raises(fl.ShapeError, match=r"must lie in \[0, 1\]"):
        net.loss(np.ones((2, 3)), np.array([0, 2]))
    with pytest.raises(fl.ShapeError, match="integer class indices"):
        net.loss(np.ones((2, 3)), np.array([0.5, 1.0]))
    with pytest.raises(fl.NonFiniteError):
        net.loss(np.ones((2, 3)), np.array([0.0, np.nan]))
    gnet = fl.MLP([3, 2], likelihood="gaussian")
    with pytest.raises(fl.ShapeError, match=r"gaussian targets must have shape \(2, 2\)"):
        gnet.loss(np.ones((2, 3)), np.ones((2, 3)))
    bnet = fl.MLP([3, 2], likelihood="bernoulli")
    with pytest.raises(fl.ShapeError, match=r"\[0, 1\]"):
        bnet.loss(np.ones((2, 3)), 2 * np.ones((2, 2)))


def test_bad_params(rng):
    net = fl.MLP([3, 4, 2], seed=0)
    with pytest.raises(fl.ShapeError, match="W_0 must have shape"):
        net.params = [np.ones((4, 3)), net.params[1]]
    bad = [W.copy() for W in net.params]
    bad[1][0, 0] = np.inf
    with pytest.raises(fl.NonFiniteError, match="W_1"):
        net.params = bad
    with pytest.raises(fl.ShapeError, match="θ must have shape"):
        net.set_flat(np.ones(3))
