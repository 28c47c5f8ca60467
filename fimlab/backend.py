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

from ._errors import BackendError

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
]

_KNOWN = ("numpy", "cupy", "array_api_strict")
_backend: str = os.environ.get("FIMLAB_BACKEND", "numpy").strip().lower() or "numpy"


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


def device_of(x):
    """The device of array ``x`` (``"cpu"`` for NumPy)."""
    return array_api_compat.device(x)


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any supported backend to a host NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (int, float, list, tuple, np.generic)):
        return np.asarray(x)
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return x.get()
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def asarray_on(x: Any, like: Any, dtype=None):
    """``x`` as an array of the namespace and device of ``like``."""
    xp = array_namespace(like)
    if not isinstance(x, np.ndarray) or is_numpy_namespace(xp):
        return xp.asarray(x, dtype=dtype, device=device_of(like))
    return from_host(x, xp, dtype=dtype, device=device_of(like))


def from_host(x: np.ndarray, xp=None, dtype=None, device=None):
    """Move a host NumPy array to namespace ``xp`` (default: the current backend)."""
    if xp is None:
        xp = default_namespace()
    if is_numpy_namespace(xp):
        return np.asarray(x, dtype=dtype)
    if array_api_compat.is_cupy_namespace(xp):
        import cupy

        return cupy.asarray(x, dtype=dtype)
    out = xp.asarray(np.ascontiguousarray(x))
    if dtype is not None:
        out = xp.astype(out, dtype)
    return out


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


def set_backend(name: str) -> None:
    """Set where *new* arrays are created: ``"numpy"`` (default), ``"cupy"``, or
    ``"array_api_strict"`` (for portability tests). Computations on existing arrays
    always follow their inputs, whatever this says."""
    global _backend
    name = str(name).strip().lower()
    if name not in _KNOWN:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(_KNOWN)}")
    _check_available(name)
    _backend = name


def get_backend() -> str:
    """The name of the current default backend."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: ``with use_backend("cupy"): ...`` sets the default temporarily."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def _check_available(name: str) -> None:
    if name == "cupy":
        try:
            import cupy
        except ImportError as exc:
            raise BackendError(
                "the CuPy backend was requested but CuPy is not installed; install it with "
                "pip install 'fimlab[gpu]' (needs an NVIDIA GPU and CUDA 12)"
            ) from exc
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001 - CUDA raises its own types
            raise BackendError(f"CuPy is installed but no GPU is usable: {exc}") from exc
        if n < 1:
            raise BackendError("CuPy is installed but no GPU is present")
    elif name == "array_api_strict":
        try:
            import array_api_strict  # noqa: F401
        except ImportError as exc:
            raise BackendError(
                "array_api_strict is not installed: pip install array-api-strict"
            ) from exc


def default_namespace():
    """The namespace where new arrays are created (see :func:`set_backend`)."""
    name = get_backend()
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0))
    _check_available(name)
    if name == "cupy":
        import array_api_compat.cupy as xp

        return xp
    import array_api_strict as xp

    return xp


def scipy_linalg(xp):
    """``scipy.linalg`` for NumPy, ``cupyx.scipy.linalg`` for CuPy, ``None`` otherwise."""
    if is_numpy_namespace(xp):
        import scipy.linalg

        return scipy.linalg
    if array_api_compat.is_cupy_namespace(xp):
        import cupyx.scipy.linalg

        return cupyx.scipy.linalg
    return None
