"""Every class of bad input (non-finite, wrong type, wrong shape, out of range, oversize,
unknown name) fed to the public API: each gives a fimlab error whose message names the
argument (or a correct result, where the input can be taken as it is)."""

from __future__ import annotations

import numpy as np
import pytest

import fimlab as fl
from fimlab import kron


def _nan_vec(n):
    v = np.ones(n)
    v[1] = np.nan
    return v


def _batch(d_out=3, dtype="float64", fisher=None):
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(6, 4)).astype(dtype)]
    g = [rng.normal(size=(6, 2, d_out)).astype(dtype)]
    return fl.FactorBatch(a, g, fisher=fisher)


# (id, call(tiny), error class, words the message must contain)
CASES = [
    # out-of-range numeric options
    ("kpsvd-rank_rtol-2", lambda t: fl.KPSVD(t["b"], rank_rtol=2), fl.OptionError, "rank_rtol"),
    ("kpsvd-rank_rtol-nan", lambda t: fl.KPSVD(t["b"], rank_rtol=float("nan")),
     fl.OptionError, "rank_rtol"),
    ("kpsvd-rank_rtol-neg", lambda t: fl.KPSVD(t["b"], rank_rtol=-1), fl.OptionError,
     "rank_rtol"),
    ("kpsvd-rank_rtol-str", lambda t: fl.KPSVD(t["b"], rank_rtol="1e-3"), fl.InputTypeError,
     "rank_rtol"),
    ("twolevel-rcond-nan", lambda t: fl.TwoLevel(t["K"], "nicolaides", t["b"], damping=1e-2,
                                                 rcond=float("nan")), fl.OptionError, "rcond"),
    ("mlp-float-sizes", lambda t: fl.MLP([5.7, 3.2]), fl.OptionError, "layer_sizes[0]"),
    ("mlp-string-sizes", lambda t: fl.MLP("5,3"), fl.InputTypeError, "layer_sizes"),
    ("mlp-categorical-1-output", lambda t: fl.MLP([5, 1], likelihood="categorical"),
     fl.ShapeError, "categorical"),
    ("mlp-negative-seed", lambda t: fl.MLP([3, 2], seed=-1), fl.OptionError, "seed"),
    ("mlp-bad-dtype", lambda t: fl.MLP([3, 2], dtype=np.int32), fl.UnknownNameError, "dtype"),
    ("factorbatch-fisher-bogus", lambda t: _batch(fisher="bogus"), fl.UnknownNameError,
     "fisher"),
    ("factorbatch-d_out-0", lambda t: _batch(d_out=0), fl.ShapeError, "d_out"),
    ("factorbatch-float16", lambda t: _batch(dtype="float16"), fl.InputTypeError, "float16"),
    ("factorbatch-strings", lambda t: fl.FactorBatch([np.array([["a"]])], [np.ones((1, 1, 1))]),
     fl.InputTypeError, "a[0]"),
    # non-finite input
    ("fisher-matvec-nan", lambda t: t["F"] @ _nan_vec(t["F"].shape[0]), fl.NonFiniteError,
     "operand"),
    ("kfac-solve-nan", lambda t: t["K"].solve(_nan_vec(t["K"].shape[0]), 1e-2),
     fl.NonFiniteError, "operand"),
    ("kron-matvec-nan", lambda t: fl.KroneckerOperator([(np.eye(2), np.eye(3))])
     @ _nan_vec(6), fl.NonFiniteError, "operand"),
    ("kron-factor-nan", lambda t: fl.KroneckerOperator([(np.full((2, 2), np.nan), np.eye(3))]),
     fl.NonFiniteError, "factor"),
    ("fisher-solve-nan", lambda t: t["F"].solve(_nan_vec(t["F"].shape[0]), 1e-2),
     fl.NonFiniteError, "operand"),
    ("factor_batch-X-nan", lambda t: fl.factor_batch(t["net"], np.full((2, 3), np.nan)),
     fl.NonFiniteError, "X"),
    # a non-finite intermediate: named where it arose
    ("e1-overflow-1e200", lambda t: fl.relative_frobenius_error(
        *(lambda b: (fl.FisherOperator(b), fl.KFAC(b)))(
            fl.factor_batch(t["net"], np.vstack([t["X"], [[1e200, 0, 0]]])))),
     fl.NonFiniteError, "overflowed"),
    ("forward-overflow", lambda t: fl.factor_batch(_huge_net(), np.array([[1e200, 1e200]])),
     fl.NonFiniteError, "forward pass overflowed"),
    # indefinite systems
    ("rank2-exact-indefinite", lambda t: fl.KroneckerOperator(
        [(np.diag([1.0, 2.0, 3.0]), np.diag([1.0, 2.0])),
         (np.eye(3), np.diag([-3.0, 0.5]))]).solve(np.ones(6), 1e-2, rule="exact"),
     fl.SingularMatrixError, "positive definite"),
    ("rank1-exact-indefinite", lambda t: fl.KroneckerOperator(
        [(np.diag([1.0, 2.0, 3.0]), np.diag([-3.0, 1.0]))]).solve(np.ones(6), 1e-2,
                                                                  rule="exact"),
     fl.SingularMatrixError, "positive definite"),
    ("fisher-solve-tiny-damping", lambda t: t["F"].solve(np.ones(t["F"].shape[0]), 1e-300),
     fl.SingularMatrixError, "damping"),
    # shapes and samples
    ("twolevel-other-N", lambda t: fl.TwoLevel(fl.KFAC(t["b"].subset(slice(0, 6))),
                                               "nicolaides", t["b"], damping=1e-2),
     fl.ShapeError, "samples"),
    # wrong types
    ("matvec-scalar", lambda t: t["F"] @ 3.0, fl.InputTypeError, "array"),
    ("solve-list", lambda t: t["K"].solve([1.0, 2.0], 1e-2), fl.InputTypeError, "array"),
    ("rng-string", lambda t: fl.factor_batch(t["net"], t["X"], fisher="mc", rng="seed"),
     fl.InputTypeError, "rng"),
    ("rng-negative", lambda t: fl.factor_batch(t["net"], t["X"], fisher="mc", rng=-3),
     fl.OptionError, "rng"),
    ("block-float", lambda t: fl.relative_frobenius_error(t["F"], t["K"], block=1.0),
     fl.InputTypeError, "block"),
    ("block-out-of-range", lambda t: fl.relative_frobenius_error(t["F"], t["K"], block=7),
     fl.BadIndexError, "block"),
    ("labels-strings", lambda t: t["net"].loss(t["X"], np.array(["a"] * 12)),
     fl.InputTypeError, "targets"),
    ("labels-objects", lambda t: t["net"].loss(t["X"], np.array([object()] * 12)),
     fl.InputTypeError, "targets"),
    ("X-string", lambda t: t["net"].forward("abc"), fl.InputTypeError, "X"),
    ("subset-out-of-range", lambda t: t["b"].subset([0, 99]), fl.BadIndexError, "subset"),
    ("subset-float-index", lambda t: t["b"].subset(np.array([0.5])), fl.InputTypeError,
     "subset"),
    ("layer-out-of-range", lambda t: t["b"].layer(5), fl.BadIndexError, "layer"),
    ("layer-float", lambda t: t["b"].layer(1.0), fl.InputTypeError, "layer"),
    # unknown names
    ("spectral_options-unknown", lambda t: fl.TwoLevel(
        t["K"], "spectral", t["b"], damping=1e-2, spectral_options={"tolerance": 1e-3}),
     fl.UnknownNameError, "spectral_options"),
    ("solve-route-unknown", lambda t: t["F"].solve(np.ones(t["F"].shape[0]), 1e-2,
                                                   route="magic"),
     fl.UnknownNameError, "route"),
    # oversize
    ("mlp-absurd-size", lambda t: fl.MLP([10**6, 10**6, 10]), fl.DenseMemoryError, "MLP"),
    ("budget-bad-string", lambda t: fl.set_memory_budget("lots"), fl.OptionError,
     "memory budget"),
    ("spectrum-basis-over-budget", lambda t: fl.preconditioned_spectrum(
        t["F"], t["K"], 1e-2, max_bytes=1000), fl.DenseMemoryError, "Lanczos basis"),
    ("spectrum-max_seconds-neg", lambda t: fl.preconditioned_spectrum(
        t["F"], t["K"], 1e-2, max_seconds=-1), fl.OptionError, "max_seconds"),
]


def _huge_net():
    net = fl.MLP([2, 2, 2], activation="linear", seed=0)
    net.params = [np.full_like(W, 1e200) for W in net.params]
    return net


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_fimlab_error_naming_it(case, tiny):
    _, call, err, words = case
    # overflow warnings as a user sees them (the test settings turn them into errors)
    with pytest.raises(err) as info, np.errstate(all="ignore"):
        call(tiny)
    assert isinstance(info.value, fl.FimlabError)
    assert words in str(info.value), str(info.value)


def test_lists_and_pandas_are_taken_as_arrays(tiny):
    """Where an array is expected, lists and pandas objects give the same result."""
    pd = pytest.importorskip("pandas")
    F, net, X, y = tiny["F"], tiny["net"], tiny["X"], tiny["y"]
    v = np.random.default_rng(1).normal(size=F.shape[0])
    np.testing.assert_array_equal(F @ list(v), F @ v)
    np.testing.assert_array_equal(F @ pd.Series(v), F @ v)
    b1 = fl.factor_batch(net, pd.DataFrame(X), pd.Series(y), fisher="empirical")
    b2 = fl.factor_batch(net, X, y, fisher="empirical")
    np.testing.assert_array_equal(b1.g[0], b2.g[0])
    assert net.loss(X.tolist(), y.tolist()) == net.loss(X, y)


def test_numpy_dtypes_are_accepted():
    a = fl.MLP([3, 2], dtype=np.float32, seed=0)
    b = fl.MLP([3, 2], dtype="float32", seed=0)
    c = fl.MLP([3, 2], dtype=np.dtype("float32"), seed=0)
    assert a.dtype == b.dtype == c.dtype == np.float32
    np.testing.assert_array_equal(a.params[0], b.params[0])


def test_pcg_nan_residual_is_not_converged():
    """A NaN residual is not convergence: a ConvergenceWarning, not silence."""
    def op(X):
        return X * np.nan

    with pytest.warns(fl.ConvergenceWarning, match="non-finite residual"):
        kron.pcg(op, np.ones(4), None, tol=1e-10, maxiter=10)


def test_pcg_negative_curvature_is_refused():
    D = np.diag([1.0, -2.0, 3.0])
    with pytest.raises(fl.SingularMatrixError, match="negative curvature"):
        kron.pcg(lambda X: D @ X, np.ones(3), None, refuse_indefinite=True)


def test_product_overflow_is_named(tiny):
    """Finite operand, finite factors, an overflowing product: a NonFiniteError naming
    the product and the operator, not a NaN further down."""
    K = fl.KroneckerOperator([(np.full((2, 2), 1e200), np.full((2, 2), 1e200))])
    with pytest.raises(fl.NonFiniteError, match="F @ v with KroneckerOperator"), \
            np.errstate(all="ignore"):
        K @ np.ones(4)


@pytest.mark.parametrize("scale", [1e200, 1e150, 1e80])
def test_overflow_from_finite_inputs_is_one_clear_error_and_no_numpy_warning(scale):
    """Inputs that overflow inside the forward pass, the KFAC factors or the Frobenius
    terms: the user sees the fimlab error naming where, not NumPy RuntimeWarnings first
    (warnings are errors here, so one would fail the test)."""
    import warnings

    net = fl.MLP([5, 4, 3], seed=0, activation="relu")
    X = np.full((6, 5), scale)
    y = np.array([0, 1, 2, 0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(fl.NonFiniteError, match="overflow|too large") as info:
            b = fl.factor_batch(net, X, y, fisher="exact")
            fl.relative_frobenius_error(fl.FisherOperator(b), fl.KFAC(b))
    assert "rescale" in str(info.value)


_LANCZOS_METRICS = {
    "preconditioned_spectrum": lambda t, **kw: fl.preconditioned_spectrum(
        t["F"], t["K"], 1e-2, **kw)[-1],
    "preconditioner_distance": lambda t, **kw: fl.metrics.preconditioner_distance(
        t["F"], t["K"], 1e-2, **kw),
    "spectral_error": lambda t, **kw: fl.metrics.spectral_error(t["F"], t["K"], **kw),
}


@pytest.mark.parametrize("name", list(_LANCZOS_METRICS))
def test_lanczos_metrics_keep_a_time_budget_and_show_progress(name, tiny, capsys):
    """Each Lanczos-based metric stops past ``max_seconds`` with a ConvergenceError that
    says how far it got, draws a bar on request, and a generous budget changes nothing."""
    call = _LANCZOS_METRICS[name]
    with pytest.raises(fl.ConvergenceError, match=r"stopped after 1 of .*max_seconds"):
        call(tiny, max_seconds=1e-9, progress=False)
    ref = call(tiny)
    assert call(tiny, max_seconds=600, progress=True) == ref
    assert "Lanczos" in capsys.readouterr().err  # the bar's label on stderr
