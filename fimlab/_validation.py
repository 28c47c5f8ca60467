"""Checks at the public boundary: shapes, finiteness, damping, memory."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ._errors import (
    DampingError,
    DenseMemoryError,
    InputTypeError,
    NonFiniteError,
    OptionError,
    ShapeError,
    UnknownNameError,
)
from .backend import array_namespace

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: the cap of the default memory budget (_budget.py)


def check_finite(x, name: str) -> None:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or inf."""
    xp = array_namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        n_bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int64)))
        raise NonFiniteError(
            f"{name} contains {n_bad} non-finite value(s) (NaN or inf); "
            "clean or clip the input before passing it to fimlab"
        )


def check_damping(damping, *, allow_zero: bool = False) -> float:
    """Return ``damping`` as a float after checking that it is positive and finite."""
    try:
        lam = float(damping)
    except (TypeError, ValueError) as exc:
        raise DampingError(f"damping must be a positive number, got {damping!r}") from exc
    if not math.isfinite(lam) or lam < 0 or (lam == 0 and not allow_zero):
        raise DampingError(
            f"damping must be a positive finite number, got {damping!r}; the damped "
            "inverse (F + λI)⁻¹ needs λ > 0 (typical values 1e-4 .. 1e-1)"
        )
    return lam


def check_choice(value: str, choices: Iterable[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise UnknownNameError."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise UnknownNameError(
            f"unknown {what} {value!r}; choose one of: {', '.join(map(repr, choices))}"
        )
    return value


def nbytes_of(shape: Iterable[int], dtype) -> int:
    """Bytes taken by a dense array of ``shape`` and ``dtype`` (any namespace)."""
    name = str(dtype).rsplit(".", 1)[-1]
    item = 4 if "32" in name else 8
    return int(math.prod(int(s) for s in shape)) * item


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def check_dense_memory(
    shape: Iterable[int], dtype, max_bytes: int | None, what: str, alternative: str
) -> None:
    """Refuse to allocate a dense ``what`` larger than ``max_bytes``.

    The message gives the bytes needed and the matrix-free call to use instead.
    """
    from ._budget import get_memory_budget

    shape = tuple(int(s) for s in shape)
    limit = get_memory_budget() if max_bytes is None else int(max_bytes)
    need = nbytes_of(shape, dtype)
    if need > limit:
        raise DenseMemoryError(
            f"forming the dense {what} of shape {shape} would take {need:,} bytes "
            f"({_human(need)}), above the limit of {limit:,} bytes ({_human(limit)}). "
            f"Use the matrix-free {alternative} instead, or raise the limit explicitly "
            f"with max_bytes=... (or fimlab.set_memory_budget) if you really have the memory."
        )


# -- the validation layer: numbers, integers, arrays, names, indices, rngs, paths -------------
def check_real(value, name: str, *, lo=None, hi=None, lo_open: bool = False,
               hi_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float in the interval given, else a fimlab error naming
    ``name`` (:class:`InputTypeError` for a non-number, :class:`OptionError` otherwise)."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise InputTypeError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputTypeError(f"{name} must be a number, got {value!r}") from None
    bad = not math.isfinite(x)
    if lo is not None:
        bad |= x <= lo if lo_open else x < lo
    if hi is not None:
        bad |= x >= hi if hi_open else x > hi
    if bad:
        lb = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        ub = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        rng = (f" in {lb}, {ub}" if lo is not None and hi is not None
               else f" {'>' if lo_open else '>='} {lo:g}" if lo is not None
               else f" {'<' if hi_open else '<='} {hi:g}" if hi is not None else "")
        raise OptionError(f"{name} must be a finite number{rng}, got {value!r}"
                          + (f" ({hint})" if hint else ""))
    return x


def check_int(value, name: str, *, lo: int | None = None, hi: int | None = None,
              hint: str = "") -> int:
    """``value`` as an int (integral floats such as ``5.0`` accepted, ``5.7`` refused)
    within ``[lo, hi]``, else a fimlab error naming ``name``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be an integer, got {value!r}")
    try:
        ok = math.isfinite(float(value)) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise OptionError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        what = (f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
        raise OptionError(f"{name} must be an integer {what}, got {value!r}"
                          + (f" ({hint})" if hint else ""))
    return v


def check_index(value, n: int, name: str) -> int:
    """An index in ``[0, n)`` (negative indices refused: say which you mean)."""
    from ._errors import BadIndexError

    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InputTypeError(f"{name} must be an integer index, got {value!r}")
    i = int(value.__index__())
    if not 0 <= i < n:
        raise BadIndexError(f"{name} {i} is out of range: valid indices are 0 .. {n - 1}")
    return i


def check_options(options, allowed, what: str) -> dict:
    """A dict of keyword options whose keys are all in ``allowed``."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InputTypeError(f"{what} must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownNameError(
            f"unknown key(s) {unknown} in {what}; allowed: {', '.join(sorted(allowed))}")
    return dict(options)


def check_float_dtype(dtype, name: str = "dtype") -> str:
    """``"float32"`` or ``"float64"`` from a name, a NumPy dtype or scalar type."""
    import numpy as np

    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    s = str(dt) if dt is not None else str(dtype).rsplit(".", 1)[-1]
    if s not in ("float32", "float64"):
        raise UnknownNameError(
            f"{name} must be float64 or float32 (a name or a NumPy dtype), got {dtype!r}")
    return s


def check_rng(rng, name: str = "rng"):
    """A :class:`numpy.random.Generator` from ``None``, a non-negative int seed, a
    ``SeedSequence`` or a ``Generator``."""
    import numpy as np

    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)):
        raise InputTypeError(
            f"{name} must be None, a non-negative integer seed or a numpy.random.Generator,"
            f" got {rng!r}")
    if int(rng) < 0:
        raise OptionError(f"{name}: a seed must be a non-negative integer, got {rng!r}")
    return np.random.default_rng(int(rng))


def check_seed(seed, name: str = "seed") -> int:
    """A non-negative integer seed."""
    return check_int(seed, name, lo=0, hint="seeds are non-negative integers")


def as_array(x, name: str, *, like=None, ndim=None):
    """An array from ``x``: arrays of any array library pass through (converted to the
    namespace of ``like`` if it differs), pandas objects and lists become NumPy arrays;
    scalars, strings and object/string arrays are refused with a message naming ``name``.
    """
    import numpy as np

    if isinstance(x, (str, bytes)) or x is None:
        raise InputTypeError(f"{name} must be an array, got {type(x).__name__} {x!r}"[:200])
    if hasattr(x, "to_numpy") and not hasattr(x, "__array_namespace__"):  # pandas
        x = x.to_numpy()
    elif isinstance(x, (list, tuple)):
        x = np.asarray(x)  # xp: Python lists are host data; moved below if like= says so
    elif not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise InputTypeError(
            f"{name} must be an array, got {type(x).__name__}; wrap it with np.asarray")
    if isinstance(x, np.ndarray) and x.dtype.kind not in "biuf":
        raise InputTypeError(
            f"{name} has dtype {x.dtype}: fimlab takes numeric arrays (float32/float64 "
            "values, integer labels), not strings or Python objects")
    if like is not None:
        from .backend import asarray_on, device_of, to_numpy

        if array_namespace(x) is not array_namespace(like) or device_of(x) != device_of(like):
            x = asarray_on(to_numpy(x), like)
    if ndim is not None and x.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ShapeError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def check_name_component(value, what: str) -> str:
    """A name used as one path component (no separators, no ``..``, not empty)."""
    import re

    if not isinstance(value, str) or not value or value in (".", "..") or re.search(
            r"[/\\\x00]", value) or value.startswith("."):
        raise OptionError(
            f"{what} must be a plain name (letters, digits, '-', '_', '.'; no '/' or '..'),"
            f" got {value!r}: it names a file or folder")
    return value


def check_finite_result(Y, where: str, hint: str):
    """``Y`` if it is finite, else :class:`NonFiniteError` naming ``where`` (a non-finite
    intermediate computed from finite inputs: an overflow)."""
    xp = array_namespace(Y)
    if not bool(xp.all(xp.isfinite(Y))):
        raise NonFiniteError(f"{where} is not finite (NaN or inf): {hint}")
    return Y


def check_finite_scalar(x: float, where: str, hint: str) -> float:
    """A scalar result that must be finite (see :func:`check_finite_result`)."""
    if not math.isfinite(x):
        raise NonFiniteError(f"{where} came out {x} from finite inputs: {hint}")
    return x
