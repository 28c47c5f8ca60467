"""One error path for every ``fimlab`` command.

An error ends the command with ONE line on stderr, ``fimlab COMMAND: error: MESSAGE``,
and an exit code that says which class of error it was:

====  ==========================================================================
code  class
====  ==========================================================================
0     success
1     the command ran but reports a failure (e.g. ``sweep --dry-run`` found runs
      whose options the runner rejects)
2     bad input: an unknown option or name, a value out of range, a wrong type
      (also argparse's usage errors)
3     data or file error: a missing or malformed data/configuration file, an output
      folder that cannot be written or already holds finished results, a torn
      checkpoint, an unreachable scheduler
4     memory budget: the request needs more memory than the budget allows (the
      message says how much and what to use instead)
130   interrupted (Ctrl-C); what was written is kept, the message says how to resume
70    internal error: a bug in fimlab (please report it with the traceback)
====  ==========================================================================

``--debug`` (before or after the command name) or the environment variable
``FIMLAB_DEBUG=1`` print the full traceback as well.
"""

from __future__ import annotations

import os
import sys
import traceback

from ._errors import (
    DataError,
    DenseMemoryError,
    FimlabError,
    OutputExistsError,
)

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_DATA", "EXIT_MEMORY",
           "EXIT_INTERRUPTED", "EXIT_INTERNAL", "exit_code", "report_error", "run_command",
           "debug_enabled"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DATA = 3
EXIT_MEMORY = 4
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70


def debug_enabled(args=None) -> bool:
    """``--debug`` given, or ``FIMLAB_DEBUG`` set to something other than ``0``/empty."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get("FIMLAB_DEBUG", "").strip() not in ("", "0", "false", "no")


def exit_code(exc: BaseException) -> int:
    """The exit code of the class of ``exc`` (see the module documentation)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (DenseMemoryError, MemoryError)):
        return EXIT_MEMORY
    if isinstance(exc, (DataError, OutputExistsError, ConnectionError)):
        return EXIT_DATA
    if isinstance(exc, FimlabError):
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError):  # an --out that cannot be written, a missing file
        return EXIT_DATA
    return EXIT_INTERNAL


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; what was written so far is kept (rerun with --resume, or " \
               "for a sweep the same command, to continue)"
    if isinstance(exc, FimlabError):
        msg = str(exc)
    elif isinstance(exc, MemoryError):
        msg = ("out of memory" + (f" ({exc})" if str(exc) else "")
               + "; lower the problem size or use the matrix-free route")
    elif isinstance(exc, OSError):
        what = {FileExistsError: "exists and is not a folder",
                NotADirectoryError: "has a file where a folder is needed",
                PermissionError: "cannot be written (permission denied)",
                IsADirectoryError: "is a folder where a file is needed",
                FileNotFoundError: "does not exist"}.get(type(exc))
        name = exc.filename if exc.filename is not None else ""
        if what and name:
            msg = f"{str(name)!r} {what}; choose another path (e.g. another --out)"
        else:
            msg = f"{type(exc).__name__}: {exc}"
    else:
        msg = (f"internal error {type(exc).__name__}: {exc} (a bug in fimlab: please report "
               "it with the traceback that --debug or FIMLAB_DEBUG=1 prints)")
    return " ".join(msg.split())  # one line


def report_error(command: str, exc: BaseException, debug: bool | None = None) -> int:
    """Print ``fimlab COMMAND: error: ...`` (one line; the traceback first with debug)
    and return the exit code of the error's class."""
    if debug is None:
        debug = debug_enabled()
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    label = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
    print(f"fimlab {command}: {label}: {_message(exc)}", file=sys.stderr)
    return exit_code(exc)


def run_command(command: str, fn, args, debug: bool | None = None) -> int:
    """``fn(args)`` with every error turned into one line and its exit code."""
    debug = debug_enabled(args) if debug is None else debug
    try:
        return int(fn(args) or 0)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place errors reach the user
        return report_error(command, exc, debug)


class sigint_ignored:
    """Context manager: SIGINT ignored while child processes are started inside it, so
    that they inherit "ignore" and a Ctrl-C reaches only this process, which then stops
    them cleanly (no worker tracebacks). A no-op outside the main thread."""

    def __enter__(self):
        import signal
        import threading

        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class _SyncCancelRace:
    """Logging filter that drops one known race of ``distributed``: Ctrl-C during
    ``distributed.utils.sync`` schedules its ``cancel`` callback before the future it
    cancels exists, and tornado logs the callback's ``NameError`` with a traceback (the
    interrupt itself is handled: fimlab prints its one line). Every other record passes."""

    def filter(self, record) -> bool:  # noqa: A003 - logging's name
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, NameError):
            return True
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_name == "cancel" and code.co_filename.replace("\\", "/").endswith(
                    "distributed/utils.py"):
                return False
            tb = tb.tb_next
        return True


def filter_dask_interrupt_race() -> None:
    """Install :class:`_SyncCancelRace` on tornado's callback logger (once)."""
    import logging

    log = logging.getLogger("tornado.application")
    if not any(isinstance(f, _SyncCancelRace) for f in log.filters):
        log.addFilter(_SyncCancelRace())


def quiet_dask_logs() -> None:
    """Silence the Dask loggers (used once a sweep was interrupted: shutting the cluster
    down then logs cancelled tasks and closed comms that are expected, not errors)."""
    import logging

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
