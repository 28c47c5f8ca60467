"""The exceptions and warnings fimlab raises.

Every error raised at fimlab's public boundary is a :class:`FimlabError`, and also
subclasses the built-in exception that fits (``ValueError`` for bad values,
``MemoryError`` for dense requests beyond the memory limit, ...), so that code which
catches the built-in keeps working. Messages say what was wrong and how to fix it.

Examples
--------
>>> import numpy as np, fimlab as fl
>>> net = fl.MLP([3, 2], likelihood="gaussian")
>>> try:
...     net.forward(np.ones((4, 5)))
... except ValueError as err:                     # fl.ShapeError is a ValueError
...     print(type(err).__name__, "-", err)
ShapeError - X must have shape (N, 3) for this network, got (4, 5)
>>> issubclass(fl.DenseMemoryError, MemoryError), issubclass(fl.DampingError, fl.FimlabError)
(True, True)
"""

from __future__ import annotations

__all__ = [
    "FimlabError",
    "ShapeError",
    "NonFiniteError",
    "DampingError",
    "UnknownNameError",
    "DenseMemoryError",
    "SingularMatrixError",
    "ConvergenceError",
    "ConvergenceWarning",
    "BackendError",
    "DataError",
    "DivergenceError",
    "OptionError",
    "InputTypeError",
    "OutputExistsError",
    "BadIndexError",
]


class FimlabError(Exception):
    """Base class of every fimlab error."""


class ShapeError(FimlabError, ValueError):
    """Arrays whose shapes do not fit together (or do not fit the network)."""


class NonFiniteError(FimlabError, ValueError):
    """NaN or infinite values where finite ones are required."""


class DampingError(FimlabError, ValueError):
    """A damping that is not a positive finite number, or an unknown damping rule."""


class UnknownNameError(FimlabError, ValueError):
    """An unknown option name (activation, likelihood, Fisher type, method, ...)."""


class DenseMemoryError(FimlabError, MemoryError):
    """A dense matrix was requested that would exceed the memory limit."""


class SingularMatrixError(FimlabError, ArithmeticError):
    """A matrix that must be inverted is singular or numerically singular."""


class ConvergenceError(FimlabError, RuntimeError):
    """An iterative method did not reach its tolerance within its iteration cap."""


class ConvergenceWarning(UserWarning):
    """An iterative method stopped at its cap; the result is reported with its residual."""


class BackendError(FimlabError, RuntimeError):
    """An array backend that is unknown, not installed, or has no device."""


class DataError(FimlabError, ValueError):
    """A data file that is missing or malformed."""


class DivergenceError(FimlabError, FloatingPointError):
    """A training run whose loss became non-finite."""


class OptionError(FimlabError, ValueError):
    """An option with a value out of its range (a learning rate <= 0, a tolerance outside
    (0, 1), a non-integer size, a period < 1, a fraction outside (0, 1], ...)."""


class InputTypeError(FimlabError, TypeError):
    """An argument of the wrong kind: a string where a number or array is expected, an
    array of strings or objects, a float where an index is expected, ..."""


class OutputExistsError(FimlabError, FileExistsError):
    """An output folder or file that already holds results which would be overwritten."""


class BadIndexError(FimlabError, IndexError):
    """An index (layer, block, sample) out of range."""
