"""fimlab — the Fisher Information Matrix of neural networks and its approximations.

``import fimlab as fl`` gives the public API, grouped:

- models and factor batches: :class:`MLP`, :func:`factor_batch`, :class:`FactorBatch`
- the Fisher: :class:`FisherOperator`, :func:`exact_fisher`, :func:`empirical_fisher`
- approximations: :class:`KFAC` (and the KPSVD family, two-level corrections)
- operators: :class:`CurvatureOperator`, :class:`KroneckerOperator`,
  :class:`BlockDiagonalOperator`, :class:`DenseOperator`
- metrics: :func:`relative_frobenius_error`, :func:`singular_value_error`, ...
- backend: :func:`set_backend`, :func:`use_backend`, :func:`to_numpy`
- errors: :class:`FimlabError` and its subclasses

Python indices are 0-based: layer 0 is the first layer. Equations cited as ``PAPERS.md (K2)``
refer to the project's formula sheet (``docs/papers.md``).
"""

from . import kron
from ._errors import (
    BackendError,
    ConvergenceError,
    ConvergenceWarning,
    DampingError,
    DataError,
    DenseMemoryError,
    DivergenceError,
    FimlabError,
    NonFiniteError,
    ShapeError,
    SingularMatrixError,
    UnknownNameError,
)
from .approx import KFAC, KPSVD, Deflation, KFACCorrected, Lanczos, kfac_factors
from .backend import get_backend, set_backend, to_numpy, use_backend
from .batch import FactorBatch
from .curvature import FisherBlock, FisherOperator
from .metrics import relative_frobenius_error, singular_value_error
from .models import MLP, empirical_fisher, exact_fisher, factor_batch
from .operators import (
    BlockDiagonalOperator,
    CurvatureOperator,
    DenseOperator,
    KroneckerOperator,
)

__version__ = "0.1.0"

__all__ = [
    # models and factor batches
    "MLP", "factor_batch", "FactorBatch",
    # the Fisher
    "FisherOperator", "FisherBlock", "exact_fisher", "empirical_fisher",
    # approximations
    "KFAC", "kfac_factors", "KPSVD", "KFACCorrected", "Deflation", "Lanczos",
    # operators
    "CurvatureOperator", "KroneckerOperator", "BlockDiagonalOperator", "DenseOperator",
    # metrics
    "relative_frobenius_error", "singular_value_error",
    # Kronecker algebra (module)
    "kron",
    # backend
    "set_backend", "get_backend", "use_backend", "to_numpy",
    # errors
    "FimlabError", "ShapeError", "NonFiniteError", "DampingError", "UnknownNameError",
    "DenseMemoryError", "SingularMatrixError", "ConvergenceError", "ConvergenceWarning",
    "BackendError", "DataError", "DivergenceError",
]
