"""The backend switch (fimlab/backend.py): defaults, errors, conversions, helpers."""

from __future__ import annotations

import sys
import types

import array_api_strict as xs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fimlab as fl
from fimlab import BackendError
from fimlab import backend as B

DEV1 = xs.Device("device1")


@pytest.fixture(autouse=True)
def _restore_default():
    """Every test leaves the default backend as it found it."""
    old = (B._backend, B._backend_device)
    B._restore("numpy", None)  # these tests start from the documented default
    yield
    B._restore(*old)


# -- choosing the default --------------------------------------------------------------
def test_default_is_numpy():
    assert fl.get_backend() == "numpy"
    assert B.is_numpy_namespace(B.default_namespace())
    assert B.default_device() == "cpu"


def test_unknown_backend_name():
    with pytest.raises(BackendError, match="unknown backend 'jax'.*numpy, cupy, array_api_strict"):
        fl.set_backend("jax")
    assert fl.get_backend() == "numpy"
    assert issubclass(BackendError, RuntimeError) and issubclass(BackendError, fl.FimlabError)


def test_unknown_name_from_environment(monkeypatch):
    monkeypatch.setattr(B, "_backend", "tpu")
    with pytest.raises(BackendError, match="FIMLAB_BACKEND"):
        B.default_namespace()


def test_environment_variable_syntax():
    assert B._parse_env("cupy:1") == ("cupy", "1")
    assert B._parse_env(" Array_API_Strict ") == ("array_api_strict", None)
    assert B._parse_env("") == ("numpy", None)


def test_cupy_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(BackendError, match=r"CuPy is not installed.*fimlab\[gpu\]"):
        fl.set_backend("cupy")
    with pytest.raises(BackendError, match="not installed"):
        with fl.use_backend("cupy"):
            pass  # pragma: no cover
    assert fl.get_backend() == "numpy"


def _fake_cupy(count=None, error=None):
    mod = types.ModuleType("cupy")

    def get_device_count():
        if error is not None:
            raise error
        return count

    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return mod


def test_cupy_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(error=RuntimeError("cudaErrorNoDevice")))
    with pytest.raises(BackendError, match="no GPU is usable.*cudaErrorNoDevice"):
        fl.set_backend("cupy")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count=0))
    with pytest.raises(BackendError, match="no GPU is present"):
        fl.set_backend("cupy")
    assert fl.get_backend() == "numpy"


def test_use_backend_restores_even_on_error():
    with pytest.raises(ZeroDivisionError):
        with fl.use_backend("array_api_strict", device="device1"):
            assert fl.get_backend() == "array_api_strict"
            assert B.default_device() == DEV1
            1 / 0  # noqa: B018
    assert fl.get_backend() == "numpy" and B.default_device() == "cpu"


def test_devices_are_checked():
    with pytest.raises(BackendError, match="not a valid choice"):
        fl.set_backend("array_api_strict", device="device9")
    with pytest.raises(BackendError, match="only the 'cpu' device"):
        fl.set_backend("numpy", device="gpu0")
    assert fl.get_backend() == "numpy"


def test_new_arrays_follow_the_default_computations_follow_inputs():
    with fl.use_backend("array_api_strict", device="device1"):
        net = fl.MLP([3, 4, 2], seed=0)
        x_host = B.from_host(np.ones(3))
        # an existing NumPy array stays NumPy whatever the default
        F = fl.FisherOperator(fl.FactorBatch([np.ones((2, 3))], [np.ones((2, 1, 2))]))
        out = F @ np.ones(6)
    assert all(W.device == DEV1 and B.array_namespace(W) is xs for W in net.params)
    assert x_host.device == DEV1
    assert isinstance(out, np.ndarray)
    assert net.xp is xs  # the model keeps its namespace after the context
    assert fl.factor_batch(net, np.ones((2, 3))).device == DEV1


# -- conversions -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "bool"])
@pytest.mark.parametrize("device", [None, "device1"])
def test_to_numpy_round_trip(dtype, device):
    host = (np.arange(12).reshape(3, 4) % 5).astype(dtype)
    x = B.from_host(host, xs, device=None if device is None else xs.Device(device))
    assert B.array_namespace(x) is xs and str(x.dtype).endswith(dtype)
    back = fl.to_numpy(x)
    assert isinstance(back, np.ndarray) and back.dtype == host.dtype
    np.testing.assert_array_equal(back, host)


def test_to_numpy_numpy_and_scalars():
    a = np.arange(3.0)
    assert fl.to_numpy(a) is a
    assert fl.to_numpy(2.5) == np.asarray(2.5)
    np.testing.assert_array_equal(fl.to_numpy([1, 2]), [1, 2])


def test_to_numpy_unknown_object():
    with pytest.raises(BackendError, match="cannot convert"):
        fl.to_numpy(object())


def test_from_host_dtype_and_asarray_on():
    x = B.from_host(np.arange(4), xs, dtype="float32", device=DEV1)
    assert x.dtype == xs.float32 and x.device == DEV1
    y = B.asarray_on(np.ones(2), like=x, dtype=np.float64)
    assert y.dtype == xs.float64 and y.device == DEV1
    z = B.asarray_on([1.0, 2.0], like=x)
    assert z.device == DEV1
    n = B.asarray_on([1.0, 2.0], like=np.zeros(1))
    assert isinstance(n, np.ndarray)


def test_mixed_libraries_are_refused():
    with pytest.raises(BackendError, match="different array libraries"):
        B.array_namespace(np.ones(2), xs.asarray([1.0]))


# -- helpers ---------------------------------------------------------------------------
def test_library_choice():
    import scipy.linalg
    import scipy.sparse.linalg

    npx = B.array_namespace(np.ones(1))
    assert B.scipy_linalg(npx) is scipy.linalg
    assert B.scipy_sparse_linalg(npx) is scipy.sparse.linalg
    assert B.scipy_linalg(xs) is None and B.scipy_sparse_linalg(xs) is None
    assert B.is_strict_namespace(xs) and not B.is_cupy_namespace(xs)


def test_same_namespace_and_library_name():
    import array_api_compat.numpy as cnp

    assert B.same_namespace(np, cnp) and B.same_namespace(xs, xs)
    assert not B.same_namespace(np, xs)
    assert [B.library_name(x) for x in (np, cnp, xs)] == ["numpy", "numpy", "array_api_strict"]


def test_use_numba(monkeypatch):
    npx = B.array_namespace(np.ones(1))
    assert B.use_numba(npx) is True
    assert B.use_numba(xs) is False  # CPU-only kernels: the xp twin runs elsewhere
    monkeypatch.setenv("FIMLAB_NUMBA", "0")
    assert B.use_numba(npx) is False


def test_small_helpers_on_strict():
    x = xs.asarray([[1.0, 2.0]], device=DEV1)
    I = B.eye_like(3, x)
    assert I.device == DEV1 and I.dtype == xs.float64
    assert B.float_dtype(xs.asarray([1], device=DEV1)) == xs.float64
    assert B.dtype_eps(xs.float32) == float(np.finfo(np.float32).eps)
    assert B.dtype_eps(xs.float64) == float(np.finfo(np.float64).eps)
    info = B.backend_info()
    assert info["backend"] == "numpy" and info["device"] == "cpu"


@given(r=st.integers(1, 5), c=st.integers(1, 5), p=st.integers(1, 3), q=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_vec_unvec_kron_on_strict(r, c, p, q, seed):
    rng = np.random.default_rng(seed)
    W, A = rng.normal(size=(r, c)), rng.normal(size=(p, q))
    Wx, Ax = xs.asarray(W, device=DEV1), xs.asarray(A, device=DEV1)
    v = B.vec(Wx)
    np.testing.assert_array_equal(fl.to_numpy(v), W.ravel(order="F"))
    np.testing.assert_array_equal(fl.to_numpy(B.unvec(v, r, c)), W)
    np.testing.assert_array_equal(fl.to_numpy(B.kron(Ax, Wx)), np.kron(A, W))
    stack = np.stack([W, 2 * W])
    np.testing.assert_array_equal(fl.to_numpy(B.vec(xs.asarray(stack))),
                                  np.stack([W.ravel(order="F"), 2 * W.ravel(order="F")]))


EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 2)]),
    ("nij,njk->nik", [(2, 3, 4), (2, 4, 5)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("ij->ji", [(3, 4)]),
    ("i,j->ij", [(3,), (2,)]),
    ("nk,nkd,nd->n", [(5, 2), (5, 2, 3), (5, 3)]),
    ("ba,ab", [(3, 2), (2, 3)]),  # implicit output: no free labels -> scalar
    ("ij,jk", [(2, 3), (3, 4)]),  # implicit output "ik"
    ("ij,kj->ik", [(2, 1), (3, 4)]),  # broadcasting size-1 label
]


@pytest.mark.parametrize("subs,shapes", EINSUMS, ids=[s for s, _ in EINSUMS])
def test_einsum_fallback_matches_numpy(subs, shapes):
    rng = np.random.default_rng(0)
    ops = [rng.normal(size=s) for s in shapes]
    ref = np.einsum(subs, *ops)
    got = B.einsum(subs, *[xs.asarray(o, device=DEV1) for o in ops])
    assert got.device == DEV1
    np.testing.assert_allclose(fl.to_numpy(got), ref, rtol=1e-12)
    # NumPy inputs use NumPy's own einsum
    np.testing.assert_allclose(B.einsum(subs, *ops), ref, rtol=1e-12)


@pytest.mark.parametrize("subs,shapes,msg", [
    ("...i,i->...", [(2, 3), (3,)], "'...'"),
    ("ii->i", [(3, 3)], "repeated label"),
    ("ij,jk->ik", [(3, 4)], "2 operand label groups"),
    ("ijk->i", [(3, 4)], "labels"),
    ("ij,jk->iq", [(3, 4), (4, 2)], "output label"),
    ("ij,jk->ik", [(3, 4), (5, 2)], "sizes"),
])
def test_einsum_fallback_errors(subs, shapes, msg):
    ops = [xs.asarray(np.ones(s)) for s in shapes]
    with pytest.raises(fl.ShapeError, match=msg):
        B.einsum(subs, *ops)


def test_cupy_installed_but_broken(monkeypatch):
    """An ImportError raised inside CuPy is not reported as 'not installed'."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy":
            raise ModuleNotFoundError("No module named 'cuda'", name="cuda")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(BackendError, match="installed but failed to import.*'cuda'"):
        fl.set_backend("cupy")


def _fake_cupy_gpus(n: int):
    """A stand-in CuPy with ``n`` GPUs: enough for device selection, no arrays."""

    class Device:
        current = 0

        def __init__(self, device=None):
            self.id = Device.current if device is None else int(device)

        def use(self):
            Device.current = self.id

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(Device=Device,
                                     runtime=types.SimpleNamespace(getDeviceCount=lambda: n))
    return mod, Device


def test_cupy_device_selection(monkeypatch):
    mod, Device = _fake_cupy_gpus(2)
    monkeypatch.setitem(sys.modules, "cupy", mod)
    with pytest.raises(BackendError, match="GPU 5 does not exist; this machine has 2"):
        fl.set_backend("cupy", device=5)
    with pytest.raises(BackendError, match="GPU number"):
        fl.set_backend("cupy", device="first")
    fl.set_backend("cupy", device=1)
    assert fl.get_backend() == "cupy" and Device.current == 1  # new arrays go to GPU 1
    with fl.use_backend("cupy", device=0):
        assert Device.current == 0
    assert Device.current == 1 and B._backend_device == 1  # restored


# -- the GPU smoke script, exercised on the CPU portability namespace -------------------
def _smoke_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_smoke_script_without_cupy(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert _smoke_module().main([]) == 2
    assert "CuPy is not installed" in capsys.readouterr().err
    assert fl.get_backend() == "numpy"


@pytest.mark.filterwarnings("ignore::fimlab.ConvergenceWarning")
def test_gpu_smoke_script_on_strict(tmp_path, capsys):
    import json

    out = tmp_path / "smoke.json"
    rc = _smoke_module().main(["--backend", "array_api_strict", "--device", "device1",
                               "--sizes", "5,4,3", "--n", "12", "--repeat", "1",
                               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = json.loads(out.read_text())["rows"]
    names = {r["computation"] for r in rows}
    assert {"Woodbury solve (F+λI)⁻¹v (F3)", "KFAC solve rule=exact",
            "E1 Gram route, whole network"} <= names
    assert all(r["ok"] and r["rel_diff"] <= 1e-8 for r in rows)
    assert f"{len(rows)}/{len(rows)} computations agree" in text
    assert fl.get_backend() == "numpy"
