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

Python indices are 0-based: layer 0 is the first layer. Equations cited as ``docs/papers.md (K2)``
refer to the project's formula sheet (``docs/papers.md``).
"""

from . import datasets, image_datasets, kron
from ._budget import check_memory, get_memory_budget, memory_budget, set_memory_budget
from ._errors import (
    BackendError,
    BadIndexError,
    ConvergenceError,
    ConvergenceWarning,
    DampingError,
    DataError,
    DenseMemoryError,
    DivergenceError,
    FimlabError,
    InputTypeError,
    NonFiniteError,
    OutputExistsError,
    ShapeError,
    SingularMatrixError,
    UnknownNameError,
)
from .approx import KFAC, KPSVD, Deflation, KFACCorrected, Lanczos, kfac_factors
from .approx.twolevel import (
    COARSE_SPACES,
    CoarseSpace,
    TwoLevel,
    build_coarse_space,
    coarse_matrix,
    krylov_nicolaides_space,
    krylov_residual_space,
    nicolaides_space,
    previous_coarse_matrix,
    residual_space,
    spectral_space,
)
from .backend import get_backend, set_backend, to_numpy, use_backend
from .batch import FactorBatch
from .curvature import FisherBlock, FisherOperator
from .metrics import (
    direction_angle,
    energy_error,
    preconditioned_condition_number,
    preconditioned_spectrum,
    preconditioner_distance,
    relative_frobenius_error,
    singular_value_error,
    spectral_error,
)
from .models import MLP, empirical_fisher, exact_fisher, factor_batch
from .models.network import Network, cuda_convnet, deep_bn_linear, small_resnet
from .operators import (
    BlockDiagonalOperator,
    CurvatureOperator,
    DenseOperator,
    KroneckerOperator,
)
from .optim import NGD, SGD, Adam, OptionError, make_optimizer

__version__ = "0.1.0"

__all__ = [
    # models and factor batches
    "MLP", "factor_batch", "FactorBatch",
    # the Fisher
    "FisherOperator", "FisherBlock", "exact_fisher", "empirical_fisher",
    # approximations
    "KFAC", "kfac_factors", "KPSVD", "KFACCorrected", "Deflation", "Lanczos",
    # two-level corrections
    "TwoLevel", "CoarseSpace", "COARSE_SPACES", "build_coarse_space", "coarse_matrix",
    "previous_coarse_matrix", "nicolaides_space", "spectral_space", "residual_space",
    "krylov_nicolaides_space", "krylov_residual_space",
    # operators
    "CurvatureOperator", "KroneckerOperator", "BlockDiagonalOperator", "DenseOperator",
    # metrics
    "relative_frobenius_error", "singular_value_error", "spectral_error",
    "direction_angle", "energy_error", "preconditioned_spectrum",
    "preconditioned_condition_number", "preconditioner_distance",
    # Kronecker algebra (module)
    "kron",
    # backend
    "set_backend", "get_backend", "use_backend", "to_numpy",
    # errors
    "FimlabError", "ShapeError", "NonFiniteError", "DampingError", "UnknownNameError",
    "DenseMemoryError", "SingularMatrixError", "ConvergenceError", "ConvergenceWarning",
    "BackendError", "DataError", "DivergenceError",
    # training: optimizers, data (fimlab.datasets, fimlab.train)
    "NGD", "SGD", "Adam", "make_optimizer", "OptionError", "datasets",
    # the validation layer and the memory budget
    "InputTypeError", "OutputExistsError", "BadIndexError",
    "get_memory_budget", "set_memory_budget", "memory_budget", "check_memory",
    # layered networks: convolution, pooling, batch norm (fimlab.models.network)
    "Network", "cuda_convnet", "deep_bn_linear", "small_resnet",
    # labelled images for them: CIFAR-10, SVHN, (Fashion-)MNIST files, offline stand-ins
    "image_datasets", "load_image_dataset", "ImageDataset",
]
# comparators (issue 17): eigenvalue-corrected, diagonal, block-exact, low-rank; spectra
from . import spectral  # noqa: E402
from .approx import (  # noqa: E402
    EKFAC,
    BlockExact,
    DiagonalFisher,
    EigenCorrected,
    LowRank,
    LowRankPlusDiagonal,
)
from .image_datasets import ImageDataset, load_image_dataset  # noqa: E402
from .spectral import spectral_density  # noqa: E402

__all__ += [  # comparators: eigenvalue-corrected, diagonal, block-exact, low-rank; spectra
    "EigenCorrected", "EKFAC", "DiagonalFisher", "BlockExact", "LowRank",
    "LowRankPlusDiagonal", "spectral", "spectral_density",
]

# approximation-quality tables on any factor batch (fimlab.compare)
from .compare import ComparisonTable, compare  # noqa: E402

__all__ += ["compare", "ComparisonTable"]
