"""Growing Krylov bases: the rows of one array (symmetric Lanczos) and the column bases
of Golub–Kahan, allocated as the iteration needs them, within the memory budget."""

from __future__ import annotations

from .._budget import check_memory
from .._validation import nbytes_of
from ..backend import device_of


class RowBasis:
    """Krylov basis vectors as the rows of one array that grows by doubling (up to
    ``cap`` rows), so the vectors so far are a contiguous ``(j, n)`` block."""

    def __init__(self, v, cap: int, xp):
        self.xp, self.cap, self.n = xp, int(cap), 1
        self.data = xp.zeros((min(self.cap, 8), v.shape[0]), dtype=v.dtype,
                             device=device_of(v))
        self.data[0, ...] = v

    def append(self, v):
        if self.n == self.data.shape[0]:
            xp = self.xp
            grown = xp.zeros((min(self.cap, 2 * self.n), self.data.shape[1]),
                             dtype=self.data.dtype, device=device_of(self.data))
            grown[: self.n, ...] = self.data
            self.data = grown
        self.data[self.n, ...] = v
        self.n += 1

    def row(self, j: int):
        return self.data[j, ...]

    def rows(self):
        return self.data[: self.n, ...]


def grow_column_bases(xp, bases, lengths, old: int, cols: int, dtype, device):
    """Bases of ``cols`` columns holding the ``old`` columns of ``bases`` (``None``: new).

    Stored column by column (allocated transposed), so writing basis vector ``j`` touches
    its own memory only (row-major bases made every column write fault in the whole
    array). The caller grows them by doubling as its chain does: allocating the cap at
    once asked for 40 GiB on a ResNet-18 convolution block (16,384 × 331,776)."""
    check_memory(nbytes_of((cols, sum(lengths)), dtype),
                 f"Golub–Kahan bases ({cols} vectors of lengths {lengths[0]} and "
                 f"{lengths[1]})", "a smaller max_steps, or the dense SVD of a small R")
    out = []
    for B, n in zip(bases, lengths):
        new = xp.matrix_transpose(xp.zeros((cols, n), dtype=dtype, device=device))
        if B is not None:
            new[:, :old] = B
        out.append(new)
    return tuple(out)
