"""Which errors met during a study are the state of the run (a divergence to record) and
which are the caller's input or the machine's limits (to raise)."""

from __future__ import annotations

from ._errors import (
    BackendError,
    DataError,
    DenseMemoryError,
    InputTypeError,
    OptionError,
    UnknownNameError,
)

#: raised as they are: nothing about the run's state, the user must act
_INPUT_ERRORS = (DenseMemoryError, UnknownNameError, InputTypeError, OptionError, DataError,
                 BackendError)


def is_run_state_error(exc: BaseException) -> bool:
    """``True`` for an error that the diverging run caused (a vanished or non-finite
    Fisher, a singular block, a non-finite loss), ``False`` for bad input or memory."""
    return not isinstance(exc, _INPUT_ERRORS)
