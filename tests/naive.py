"""Moved to the public :mod:`fimlab.testing.oracles` (issue 14); this shim keeps
``from naive import ...`` working for test modules written before the move."""

from fimlab.testing.oracles import (  # noqa: F401
    fd_gradient,
    output_hessians,
    output_jacobians,
    per_sample_loss_gradients,
    rearrange,
)
