"""Checks at the public boundary: shapes, finiteness, damping, memory."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ._errors import DampingError, DenseMemoryError, NonFiniteError, UnknownNameError
from .backend import array_namespace

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB


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
    shape = tuple(int(s) for s in shape)
    limit = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    need = nbytes_of(shape, dtype)
    if need > limit:
        raise DenseMemoryError(
            f"forming the dense {what} of shape {shape} would take {need:,} bytes "
            f"({_human(need)}), above the limit of {limit:,} bytes ({_human(limit)}). "
            f"Use the matrix-free {alternative} instead, or raise the limit explicitly "
            f"with max_bytes=... if you really have the memory."
        )
