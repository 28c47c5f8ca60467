"""fimlab's memory budget: one limit for every large working set.

Every computation whose working memory grows with the problem (a dense ``P × P`` Fisher,
the ``N·K × N·K`` Gram matrix of the Woodbury solve, a Lanczos basis, the weights of a
network) estimates its peak — its large temporaries together, not one allocation at a
time — and checks it against this budget *before* starting. A request above it raises
:class:`fimlab.DenseMemoryError` with the bytes needed and the call to use instead.

The budget is, in order of precedence:

1. what :func:`set_memory_budget` (or the :func:`memory_budget` context) set;
2. the environment variable ``FIMLAB_MEMORY_BUDGET`` (bytes, or with a unit:
   ``"512MiB"``, ``"4GB"``, ``"1.5GiB"``);
3. the default: the smaller of 2 GiB and half of the memory available when fimlab first
   asks (``MemAvailable`` on Linux).

A ``max_bytes=...`` argument of a single call overrides the budget for that call.

Examples
--------
>>> import fimlab as fl
>>> with fl.memory_budget("64MiB"):
...     fl.get_memory_budget()
67108864
>>> try:
...     fl.check_memory(2 * 1024**3, "a dense Fisher", "FisherOperator.matvec",
...                     max_bytes=1024**3)
... except fl.DenseMemoryError as err:
...     print(str(err)[:61])
a dense Fisher needs 2,147,483,648 bytes (2.0 GiB) of working
"""

from __future__ import annotations

import contextlib
import math
import os
import re

from ._errors import DenseMemoryError, OptionError

__all__ = ["get_memory_budget", "set_memory_budget", "memory_budget", "check_memory",
           "available_memory", "human_bytes", "ENV_VAR", "DEFAULT_CAP"]

#: environment variable read when no budget was set in the program
ENV_VAR = "FIMLAB_MEMORY_BUDGET"
#: upper end of the default budget
DEFAULT_CAP = 2 * 1024**3

_set_budget: int | None = None
_default_cache: int | None = None

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def parse_bytes(value, what: str = "memory budget") -> int:
    """Bytes from an int, a float or a string with a unit (``"4GiB"``, ``"512 MB"``)."""
    if isinstance(value, bool):
        raise OptionError(f"{what} must be a number of bytes, got {value!r}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise OptionError(
                f"{what} must be a number of bytes, optionally with a unit (B, KiB, MiB, "
                f"GiB, TiB, or kB, MB, GB, TB), got {value!r}")
        x = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise OptionError(f"{what} must be a number of bytes, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise OptionError(f"{what} must be a positive finite number of bytes, got {value!r}")
    return int(x)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; ``None`` if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - other POSIX systems
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def _default_budget() -> int:
    global _default_cache
    if _default_cache is None:
        avail = available_memory()
        _default_cache = DEFAULT_CAP if avail is None else int(min(DEFAULT_CAP, avail // 2))
    return _default_cache


def get_memory_budget() -> int:
    """The memory budget in bytes (see the module documentation for where it comes from).

    Examples
    --------
    >>> import fimlab as fl
    >>> fl.get_memory_budget() > 0
    True
    """
    if _set_budget is not None:
        return _set_budget
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env, f"the environment variable {ENV_VAR}")
    return _default_budget()


def set_memory_budget(nbytes) -> int | None:
    """Set the memory budget (bytes, or a string such as ``"4GiB"``); ``None`` restores
    the default (or ``FIMLAB_MEMORY_BUDGET``). Returns the previous setting.

    Examples
    --------
    >>> import fimlab as fl
    >>> old = fl.set_memory_budget("1GiB"); fl.get_memory_budget()
    1073741824
    >>> _ = fl.set_memory_budget(old)
    """
    global _set_budget
    old = _set_budget
    _set_budget = None if nbytes is None else parse_bytes(nbytes)
    return old


@contextlib.contextmanager
def memory_budget(nbytes):
    """Context manager: the budget is ``nbytes`` inside the ``with`` block.

    Examples
    --------
    >>> import fimlab as fl
    >>> with fl.memory_budget(1000):
    ...     fl.get_memory_budget()
    1000
    """
    old = set_memory_budget(nbytes)
    try:
        yield
    finally:
        set_memory_budget(old)


def check_memory(need: int, what: str, alternative: str, max_bytes: int | None = None) -> None:
    """Refuse a working set of ``need`` bytes above the budget (or ``max_bytes``).

    Parameters
    ----------
    need : int
        Peak bytes of the working set (its large temporaries together).
    what, alternative : str
        What would be allocated, and what to use instead (both quoted in the message).
    max_bytes : int, optional
        The limit of this one call (else the budget).

    Raises
    ------
    DenseMemoryError
        With the bytes needed, the limit, where the limit comes from, and ``alternative``.

    Examples
    --------
    >>> import fimlab as fl
    >>> fl.check_memory(10, "a small array", "nothing", max_bytes=100)  # fits: no error
    """
    limit = get_memory_budget() if max_bytes is None else int(max_bytes)
    need = int(need)
    if need > limit:
        src = ("max_bytes=..." if max_bytes is not None else
               "fimlab.set_memory_budget(...) or the environment variable " + ENV_VAR)
        raise DenseMemoryError(
            f"{what} needs {need:,} bytes ({human_bytes(need)}) of working memory, above "
            f"the limit of {limit:,} bytes ({human_bytes(limit)}). Use {alternative} "
            f"instead, or raise the limit with {src} if you really have the memory.")
