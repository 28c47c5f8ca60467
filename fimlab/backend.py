"""One backend switch: the array namespace comes from the input arrays.

Every numerical function of fimlab's linear-algebra core (factor batches onwards) starts
with ``xp = array_namespace(*inputs)`` and then calls only ``xp.*`` (the Python array API
standard), so the same code runs on NumPy, on CuPy (GPU) and on ``array_api_strict`` (the
test namespace that fails on anything non-portable). What the standard lacks is supplied
here, once, from standard functions: column-major ``vec``/``unvec``, a Kronecker product,
and the choice between ``scipy.linalg`` and ``cupyx.scipy.linalg``.

The one global default, :func:`set_backend` (or the context manager :func:`use_backend`,
or the environment variable ``FIMLAB_BACKEND``), says only where *new* arrays are
created: a model's parameters, loaded data, random draws (always drawn on the host from a
``numpy.random.Generator`` and moved, so a seed gives the same numbers everywhere).

Examples
--------
>>> import numpy as np
>>> from fimlab.backend import array_namespace, vec, unvec
>>> W = np.arange(6.0).reshape(2, 3)
>>> vec(W)                       # column-major: the columns stacked
array([0., 3., 1., 4., 2., 5.])
>>> bool((unvec(vec(W), 2, 3) == W).all())
True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

from ._errors import BackendError, ShapeError

__all__ = [
    "array_namespace",
    "is_numpy_namespace",
    "to_numpy",
    "asarray_on",
    "from_host",
    "vec",
    "unvec",
    "kron",
    "set_backend",
    "get_backend",
    "use_backend",
    "default_namespace",
    "scipy_linalg",
    "eye_like",
    "float_dtype",
    "dtype_eps",
    "device_of",
    "default_device",
    "is_cupy_namespace",
    "is_strict_namespace",
    "same_namespace",
    "library_name",
    "scipy_sparse_linalg",
    "einsum",
    "use_numba",
    "backend_info",
]

_KNOWN = ("numpy", "cupy", "array_api_strict")


def _parse_env(value: str) -> tuple[str, str | None]:
    """``FIMLAB_BACKEND="name"`` or ``"name:device"`` (e.g. ``"cupy:1"``)."""
    value = (value or "numpy").strip()
    name, _, dev = value.partition(":")
    return (name.strip().lower() or "numpy"), (dev.strip() or None)


_backend, _backend_device = _parse_env(os.environ.get("FIMLAB_BACKEND", "numpy"))


def array_namespace(*arrays: Any):
    """Return the array namespace (``xp``) shared by ``arrays``.

    NumPy arrays give ``array_api_compat.numpy`` (NumPy seen through the standard),
    CuPy arrays ``array_api_compat.cupy``, ``array_api_strict`` arrays that module.
    Python scalars and ``None`` are ignored. Mixing namespaces is an error.
    """
    arrs = [a for a in arrays if a is not None and not isinstance(a, (int, float, complex))]
    if not arrs:
        return array_api_compat.array_namespace(np.empty(0))
    try:
        return array_api_compat.array_namespace(*arrs)
    except TypeError as exc:
        raise BackendError(
            f"arrays from different array libraries were mixed ({exc}); move them to one "
            "backend first, e.g. with fimlab.backend.asarray_on(x, like=ref)"
        ) from exc


def is_numpy_namespace(xp) -> bool:
    """True when ``xp`` is NumPy (raw or through ``array_api_compat``)."""
    return array_api_compat.is_numpy_namespace(xp)


def is_cupy_namespace(xp) -> bool:
    """True when ``xp`` is CuPy (raw or through ``array_api_compat``)."""
    return array_api_compat.is_cupy_namespace(xp)


def is_strict_namespace(xp) -> bool:
    """True when ``xp`` is ``array_api_strict`` (the portability-test namespace)."""
    return array_api_compat.is_array_api_strict_namespace(xp)


def same_namespace(xp1, xp2) -> bool:
    """True when two namespaces are the same array library (raw or wrapped by
    ``array_api_compat``: ``numpy`` and ``array_api_compat.numpy`` are the same)."""
    if xp1 is xp2:
        return True
    for test in (is_numpy_namespace, is_cupy_namespace, is_strict_namespace):
        if test(xp1) and test(xp2):
            return True
    return False


def library_name(xp) -> str:
    """``"numpy"``, ``"cupy"``, ``"array_api_strict"`` or the module name of ``xp``."""
    for name, test in (("numpy", is_numpy_namespace), ("cupy", is_cupy_namespace),
                       ("array_api_strict", is_strict_namespace)):
        if test(xp):
            return name
    return getattr(xp, "__name__", str(xp))


def device_of(x):
    """The device of array ``x`` (``"cpu"`` for NumPy)."""
    return array_api_compat.device(x)


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any supported backend to a host NumPy array.

    NumPy arrays are returned as they are; CuPy arrays are copied from the GPU
    (``x.get()``); ``array_api_strict`` arrays are first moved to its CPU device.

    Examples
    --------
    >>> to_numpy([1.0, 2.0])
    array([1., 2.])
    """
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (bool, int, float, complex, list, tuple, np.generic)):
        return np.asarray(x)
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return x.get()
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    if mod.startswith("array_api_strict"):
        import array_api_strict

        cpu = array_api_strict.Device("CPU_DEVICE")
        if x.device != cpu:
            x = x.to_device(cpu)
    out = np.asarray(x)
    if out.dtype == object:
        raise BackendError(
            f"cannot convert an array of type {type(x).__module__}.{type(x).__name__} to "
            "NumPy; move it to the host with its library first"
        )
    return out


def _dtype_in(xp, dtype):
    """``dtype`` (a name, a NumPy dtype or a dtype of ``xp``) as a dtype of ``xp``."""
    if dtype is None or is_numpy_namespace(xp) or is_cupy_namespace(xp):
        return dtype
    if isinstance(dtype, (str, np.dtype, type)):
        return getattr(xp, np.dtype(dtype).name)
    return dtype


def asarray_on(x: Any, like: Any, dtype=None):
    """``x`` as an array of the namespace and device of ``like``."""
    xp = array_namespace(like)
    dev = device_of(like)
    if isinstance(x, np.ndarray) and not is_numpy_namespace(xp):
        return from_host(x, xp, dtype=dtype, device=dev)
    return xp.asarray(x, dtype=_dtype_in(xp, dtype), device=dev)


def from_host(x: np.ndarray, xp=None, dtype=None, device=None):
    """Move a host NumPy array to namespace ``xp`` on ``device``.

    Without ``xp``, the current default backend and device (see :func:`set_backend`);
    with ``xp`` but no ``device``, the default device when ``xp`` is the default
    backend's namespace, else that library's current device.
    """
    if xp is None:
        xp = default_namespace()
        if device is None:
            device = default_device()
    elif device is None and _same_library(xp, get_backend()):
        device = default_device()
    if is_numpy_namespace(xp):
        return np.asarray(x, dtype=dtype)
    if is_cupy_namespace(xp):
        import array_api_compat.cupy as cxp

        return cxp.asarray(np.asarray(x), dtype=dtype, device=device)
    out = xp.asarray(np.ascontiguousarray(x), device=device)
    if dtype is not None:
        out = xp.astype(out, _dtype_in(xp, dtype))
    return out


def _same_library(xp, name: str) -> bool:
    return {
        "numpy": is_numpy_namespace,
        "cupy": is_cupy_namespace,
        "array_api_strict": is_strict_namespace,
    }.get(name, lambda _: False)(xp)


def vec(W, xp=None):
    """Column-major ``vec``: ``W.ravel(order="F")`` from standard functions.

    For a stack ``W`` of shape ``(..., r, c)`` the last two axes are vectorised.
    """
    xp = xp or array_namespace(W)
    shp = W.shape
    return xp.reshape(xp.matrix_transpose(W), (*shp[:-2], shp[-2] * shp[-1]))


def unvec(v, rows: int, cols: int, xp=None):
    """Inverse of :func:`vec`: a length ``rows*cols`` vector (or ``(..., rows*cols)``
    stack) to the ``(rows, cols)`` matrix whose columns were stacked."""
    xp = xp or array_namespace(v)
    shp = v.shape
    return xp.matrix_transpose(xp.reshape(v, (*shp[:-1], cols, rows)))


def kron(A, B, xp=None):
    """Kronecker product ``A ⊗ B`` of two matrices (dense; for tests and small blocks)."""
    xp = xp or array_namespace(A, B)
    p, q = A.shape
    r, s = B.shape
    return xp.reshape(A[:, None, :, None] * B[None, :, None, :], (p * r, q * s))


def eye_like(n: int, ref):
    """Identity of size ``n`` with the dtype, namespace and device of ``ref``."""
    xp = array_namespace(ref)
    return xp.eye(n, dtype=ref.dtype, device=device_of(ref))


def float_dtype(x) -> Any:
    """The floating dtype of ``x``; integer/bool inputs give float64 of its namespace."""
    xp = array_namespace(x)
    if xp.isdtype(x.dtype, "real floating"):
        return x.dtype
    return xp.float64


def dtype_eps(dtype) -> float:
    """Machine epsilon of a floating dtype of any namespace."""
    name = str(dtype).rsplit(".", 1)[-1]
    return float(np.finfo(np.float32 if "32" in name else np.float64).eps)


def set_backend(name: str, device: Any = None) -> None:
    """Set where *new* arrays are created.

    Parameters
    ----------
    name : {"numpy", "cupy", "array_api_strict"}
        ``"numpy"`` (default), ``"cupy"`` (an NVIDIA GPU; ``pip install 'fimlab[gpu]'``)
        or ``"array_api_strict"`` (the portability-test namespace).
    device : optional
        The device of new arrays: a GPU number for CuPy (default: CuPy's current
        device; a number given here also becomes CuPy's current device, since CuPy
        creates arrays there); a device name (``"CPU_DEVICE"``, ``"device1"``, ``"device2"``) for
        ``array_api_strict``; ``None`` or ``"cpu"`` for NumPy.

    Raises
    ------
    BackendError
        For an unknown name or device, when CuPy is not installed, or when no GPU is
        usable.

    Notes
    -----
    Computations on existing arrays always follow their inputs, whatever this says: the
    default only decides where a model's parameters, loaded data and host random draws
    are put. The environment variable ``FIMLAB_BACKEND="name"`` or ``"name:device"``
    sets the default at import.

    Examples
    --------
    >>> import fimlab as fl
    >>> try:
    ...     fl.set_backend("tensorflow")
    ... except fl.BackendError as err:
    ...     print(err)
    unknown backend 'tensorflow'; choose one of numpy, cupy, array_api_strict
    """
    global _backend, _backend_device
    name = str(name).strip().lower()
    if name not in _KNOWN:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(_KNOWN)}")
    _check_available(name)
    dev = _resolve_device(name, device)  # validate now, not at the first array
    if name == "cupy" and device is not None:
        # array-api-compat's CuPy creation functions ignore device=: CuPy creates on
        # its current device, so make the chosen GPU current
        dev.use()
    _backend, _backend_device = name, device


def get_backend() -> str:
    """The name of the current default backend.

    Examples
    --------
    >>> import fimlab as fl
    >>> with fl.use_backend("numpy"):
    ...     fl.get_backend()
    'numpy'
    """
    return _backend


@contextlib.contextmanager
def use_backend(name: str, device: Any = None) -> Iterator[None]:
    """Context manager: ``with use_backend("cupy"): ...`` sets the default temporarily.

    Examples
    --------
    >>> import fimlab as fl
    >>> before = fl.get_backend()
    >>> with fl.use_backend("numpy"):
    ...     net = fl.MLP([2, 3, 1], likelihood="gaussian")
    >>> type(net.params[0]).__name__, fl.get_backend() == before
    ('ndarray', True)
    """
    old = (_backend, _backend_device)
    old_gpu = _cupy_current_device() if name == "cupy" else None
    set_backend(name, device)
    try:
        yield
    finally:
        _restore(*old)
        if old_gpu is not None:
            old_gpu.use()


def _cupy_current_device():
    try:
        import cupy

        return cupy.cuda.Device()
    except Exception:  # noqa: BLE001 - not installed or no GPU: set_backend will say
        return None


def _restore(name: str, device: Any) -> None:
    global _backend, _backend_device
    _backend, _backend_device = name, device


def _check_available(name: str) -> None:
    if name == "cupy":
        try:
            import cupy
        except ModuleNotFoundError as exc:
            if exc.name not in (None, "cupy"):  # CuPy is there, one of its parts is not
                raise _cupy_broken(exc) from exc
            raise BackendError(
                "the CuPy backend was requested but CuPy is not installed; install it with "
                "pip install 'fimlab[gpu]' (needs an NVIDIA GPU and CUDA 12)"
            ) from exc
        except ImportError as exc:
            raise _cupy_broken(exc) from exc
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001 - CUDA raises its own types
            raise BackendError(
                f"CuPy is installed but no GPU is usable ({type(exc).__name__}: {exc}); "
                "check the NVIDIA driver (nvidia-smi) or use set_backend('numpy')"
            ) from exc
        if n < 1:
            raise BackendError(
                "CuPy is installed but no GPU is present; use set_backend('numpy')"
            )
    elif name == "array_api_strict":
        try:
            import array_api_strict  # noqa: F401
        except ImportError as exc:
            raise BackendError(
                "array_api_strict is not installed: pip install array-api-strict"
            ) from exc


def _cupy_broken(exc: Exception) -> BackendError:
    first = str(exc).strip().splitlines()
    return BackendError(
        f"CuPy is installed but failed to import ({type(exc).__name__}: "
        f"{first[-1] if first else exc}); check that the cupy-cudaXX wheel matches the "
        "machine's CUDA (pip install 'fimlab[gpu]' installs cupy-cuda12x)"
    )


def _resolve_device(name: str, device: Any):
    """The device object of backend ``name`` for the user's ``device`` argument."""
    if name == "numpy":
        if device not in (None, "cpu"):
            raise BackendError(f"the NumPy backend has only the 'cpu' device, got {device!r}")
        return "cpu"
    if name == "cupy":
        import cupy

        if device is None:
            return cupy.cuda.Device()
        if isinstance(device, cupy.cuda.Device):
            return device
        try:
            idx = int(device)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"a CuPy device is a GPU number, got {device!r}") from exc
        n = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= idx < n:
            raise BackendError(f"GPU {idx} does not exist; this machine has {n} GPU(s)")
        return cupy.cuda.Device(idx)
    import array_api_strict

    if device is None:
        return array_api_strict.Device("CPU_DEVICE")
    if isinstance(device, array_api_strict.Device):
        return device
    try:
        return array_api_strict.Device(str(device))
    except ValueError as exc:
        raise BackendError(
            f"unknown array_api_strict device {device!r}: {exc}"
        ) from exc


def default_namespace():
    """The namespace where new arrays are created (see :func:`set_backend`)."""
    name = get_backend()
    if name not in _KNOWN:
        raise BackendError(
            f"unknown backend {name!r} (from the environment variable FIMLAB_BACKEND?); "
            f"choose one of {', '.join(_KNOWN)}"
        )
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0))
    _check_available(name)
    if name == "cupy":
        import array_api_compat.cupy as xp

        return xp
    import array_api_strict as xp

    return xp


def default_device():
    """The device where new arrays are created (see :func:`set_backend`)."""
    default_namespace()  # validates the name
    return _resolve_device(get_backend(), _backend_device)


def backend_info() -> dict:
    """The default backend, its device and library versions (for reports)."""
    info = {"backend": get_backend(), "device": str(default_device()),
            "numpy": np.__version__, "array_api_compat": array_api_compat.__version__}
    if get_backend() == "cupy":
        import cupy

        info["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(default_device().id)
        name = props.get("name", b"")
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    return info


def scipy_linalg(xp):
    """``scipy.linalg`` for NumPy, ``cupyx.scipy.linalg`` for CuPy, ``None`` otherwise
    (callers then use the standard ``xp.linalg``)."""
    if is_numpy_namespace(xp):
        import scipy.linalg

        return scipy.linalg
    if is_cupy_namespace(xp):
        import cupyx.scipy.linalg

        return cupyx.scipy.linalg
    return None


def scipy_sparse_linalg(xp):
    """``scipy.sparse.linalg`` for NumPy, ``cupyx.scipy.sparse.linalg`` for CuPy,
    ``None`` otherwise (callers then use fimlab's own iterative solvers, e.g.
    :func:`fimlab.kron.pcg`)."""
    if is_numpy_namespace(xp):
        import scipy.sparse.linalg

        return scipy.sparse.linalg
    if is_cupy_namespace(xp):
        import cupyx.scipy.sparse.linalg

        return cupyx.scipy.sparse.linalg
    return None


def use_numba(xp) -> bool:
    """Whether the Numba kernel may serve arrays of namespace ``xp``.

    Numba kernels are CPU-only: they run for NumPy inputs when Numba imports and the
    environment variable ``FIMLAB_NUMBA`` is not ``"0"``; on any other backend (CuPy,
    ``array_api_strict``) their twin written against ``xp`` runs instead.
    """
    if not is_numpy_namespace(xp) or os.environ.get("FIMLAB_NUMBA", "1") == "0":
        return False
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    return True


def einsum(subscripts: str, *operands, xp=None):
    """``einsum`` for any namespace: the library's own where it has one (NumPy, CuPy),
    else built from standard functions (``permute_dims``, broadcasting, ``sum``).

    The fallback supports explicit and implicit output, no ellipsis, and no label
    repeated within one operand (no traces/diagonals); it forms the broadcast product
    of all operands, so it is meant for small contractions (tests, strict namespaces).

    Examples
    --------
    >>> import numpy as np
    >>> A, B = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    >>> bool(np.allclose(einsum("ij,jk->ik", A, B), A @ B))
    True
    """
    xp = xp or array_namespace(*operands)
    native = getattr(xp, "einsum", None)
    if native is not None:
        return native(subscripts, *operands)
    return _einsum_fallback(subscripts, operands, xp)


def _einsum_fallback(subscripts: str, operands, xp):
    subs = subscripts.replace(" ", "")
    if "." in subs:
        raise ShapeError("einsum without a native implementation does not support '...'")
    ins, arrow, out = subs.partition("->")
    labels_in = ins.split(",")
    if len(labels_in) != len(operands):
        raise ShapeError(
            f"einsum: {len(labels_in)} operand label groups for {len(operands)} operands"
        )
    if not arrow:
        counts = {c: ins.count(c) for c in ins if c != ","}
        out = "".join(sorted(c for c, n in counts.items() if n == 1))
    order: list[str] = []
    sizes: dict[str, int] = {}
    for labels, op in zip(labels_in, operands, strict=True):
        if len(labels) != op.ndim:
            raise ShapeError(f"einsum: labels {labels!r} for an array of shape {op.shape}")
        if len(set(labels)) != len(labels):
            raise ShapeError(
                f"einsum: repeated label within {labels!r} (diagonal) is not supported here"
            )
        for c, n in zip(labels, op.shape, strict=True):
            if c in sizes and sizes[c] != n and 1 not in (sizes[c], n):
                raise ShapeError(f"einsum: label {c!r} has sizes {sizes[c]} and {n}")
            sizes[c] = max(sizes.get(c, n), n)
            if c not in order:
                order.append(c)
    if any(c not in order for c in out):
        raise ShapeError(f"einsum: output label not among the inputs in {subscripts!r}")
    prod = None
    for labels, op in zip(labels_in, operands, strict=True):
        present = [c for c in order if c in labels]
        t = xp.permute_dims(op, tuple(labels.index(c) for c in present))
        t = xp.reshape(t, tuple(op.shape[labels.index(c)] if c in labels else 1
                                for c in order))
        prod = t if prod is None else prod * t
    summed = tuple(i for i, c in enumerate(order) if c not in out)
    if summed:
        prod = xp.sum(prod, axis=summed)
    kept = [c for c in order if c in out]
    if not out:
        return prod
    return xp.permute_dims(prod, tuple(kept.index(c) for c in out))
